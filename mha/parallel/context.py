"""Context parallelism: one sequence sharded over the ranks of a 1-D mesh.

Tensor parallelism splits heads; it does not help when one sequence is too
long for one device. Context parallelism splits the *sequence*: each of `W`
ranks holds `s / W` tokens of every layer's input, and attention passes the
key/value shards around a ring ([`mha.parallel.ring`][mha.parallel.ring]), so each
rank's queries still see every key.

The layout is **zig-zag**: the sequence is cut into `2W` chunks and rank `r`
holds chunks `r` and `2W - 1 - r`. Under a causal mask an early chunk has
little to attend to and a late one a lot; pairing them gives every rank the
same work. [`shard_sequence`][mha.parallel.context.shard_sequence] and
[`unshard_sequence`][mha.parallel.context.unshard_sequence] apply and undo
the layout, and rotary positions are the tokens' global ones.

Shape letters are those of [`mha`][mha]; `W` is the mesh size, `s` the full
sequence length and `s / W` a rank's local length.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from mha import _checks
from mha.attention import Attention
from mha.parallel.ring import SUPPORTED_DEVICES, Block, Ring, RingAttention

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

__all__ = ["ContextParallel", "context_parallel", "shard_sequence", "unshard_sequence"]


def _mesh_rank_and_size(mesh: object, name: str = "mesh") -> tuple[int, int]:
    from torch.distributed.device_mesh import DeviceMesh

    if not isinstance(mesh, DeviceMesh):
        raise TypeError(f"{name} must be a torch.distributed DeviceMesh, got {type(mesh).__name__}")
    if mesh.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got a {mesh.ndim}-D mesh; pass the context-parallel dimension")
    return mesh.get_local_rank(), mesh.size()


def _chunk_dim(x: object, dim: object, name: str) -> tuple[Tensor, int]:
    x = _checks.tensor(name, x)
    if isinstance(dim, bool) or not isinstance(dim, int) or not -x.ndim <= dim < x.ndim:
        raise ValueError(f"dim must be an int in [{-x.ndim}, {x.ndim}) for a {x.ndim}-D {name}, got {dim!r}")
    return x, dim % x.ndim


def shard_sequence(x: Tensor, mesh: DeviceMesh, *, dim: int = 1) -> Tensor:
    """This rank's zig-zag shard of a full sequence.

    Args:
        x: the whole sequence, the same on every rank.
        mesh: the 1-D context-parallel mesh of `W` ranks.
        dim: the sequence dimension.

    Returns:
        Chunks `r` and `2W - 1 - r` of `x`'s `2W` equal chunks along `dim`,
        concatenated; differentiable.

    Raises:
        ValueError: if the length along `dim` does not divide by `2W`.

    Shape:
        x: `(b, s, h)` with `dim=1`; returns `(b, s / W, h)`.
    """
    rank, size = _mesh_rank_and_size(mesh)
    x, dim = _chunk_dim(x, dim, "x")
    length = x.shape[dim]
    if length % (2 * size):
        raise ValueError(
            f"x.shape[{dim}]={length} must divide by 2 x the mesh size = {2 * size}: the zig-zag "
            f"layout gives each rank two equal chunks (pad the sequence to a multiple of {2 * size})"
        )
    chunks = x.chunk(2 * size, dim)
    return torch.cat([chunks[rank], chunks[2 * size - 1 - rank]], dim)


def unshard_sequence(y: Tensor, mesh: DeviceMesh, *, dim: int = 1) -> Tensor:
    """The full sequence from every rank's zig-zag shard (all-gather); differentiable.

    The inverse of [`shard_sequence`][mha.parallel.context.shard_sequence]:
    `unshard_sequence(shard_sequence(x, mesh), mesh)` equals `x` on every rank.
    Its gradient sums what every rank sends back, as an all-gather's does: if
    every rank computes the same loss on the full sequence, divide it by `W`
    (or compute the loss on the local shard, as training usually does).

    Shape:
        y: `(b, s / W, h)` with `dim=1`; returns `(b, s, h)`.
    """
    _mesh_rank_and_size(mesh)
    y, dim = _chunk_dim(y, dim, "y")
    if y.shape[dim] % 2:
        raise ValueError(f"y.shape[{dim}]={y.shape[dim]} must be even: a zig-zag shard holds two equal chunks")
    pieces = [piece.chunk(2, dim) for piece in _AllGather.apply(y, mesh.get_group())]
    # Rank r's piece holds chunks r and 2W - 1 - r: firsts in rank order, then seconds reversed.
    return torch.cat([first for first, _ in pieces] + [second for _, second in reversed(pieces)], dim)


class _AllGather(torch.autograd.Function):
    """Every rank's tensor, in rank order; the gradient of a rank's tensor sums every rank's."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor, group: dist.ProcessGroup) -> tuple[Tensor, ...]:
        pieces = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
        dist.all_gather(pieces, tensor.contiguous(), group=group)
        ctx.group = group
        return tuple(pieces)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor, None]:
        # Gloo has no reduce-scatter: sum all of them, keep this rank's.
        stacked = torch.stack(grads)
        dist.all_reduce(stacked, group=ctx.group)
        return stacked[dist.get_rank(ctx.group)], None


class ContextParallel:
    """The zig-zag layout over a 1-D mesh, and the ring attention that goes with it.

    [`context_parallel`][mha.parallel.context.context_parallel] gives one to each
    [`mha.Attention`][mha.Attention] (its `context_parallel` attribute), which then
    takes its rotary positions and its attention from here. All the layers of
    a model share one.

    Args:
        mesh: the 1-D context-parallel mesh.

    Attributes:
        rank: this rank's index in the mesh.
        size: `W`, the number of ranks.
    """

    def __init__(self, mesh: DeviceMesh) -> None:
        self.rank, self.size = _mesh_rank_and_size(mesh)
        if mesh.device_type not in SUPPORTED_DEVICES:
            raise ValueError(
                f"context parallelism runs on {' and '.join(SUPPORTED_DEVICES)} meshes, got device_type "
                f"{mesh.device_type!r}"
            )
        self.mesh = mesh
        self.ring = Ring(mesh.get_group(), self._blocks)

    def __deepcopy__(self, memo: dict[int, Any]) -> ContextParallel:
        return self  # a copied model talks over the same ranks

    def _blocks(self, source: int, length: int, causal: bool) -> list[Block]:
        """What this rank's `length` queries attend to in `source`'s keys.

        Without a mask, everything. Causally, rank `r` holds chunks
        `(r, 2W-1-r)`: against its own chunks the mask is causal within the
        block; for `source < r`, chunk `source` lies before both query chunks
        and chunk `2W-1-source` after both; for `source > r`, only the later
        query chunk sees anything, and it sees both of `source`'s chunks.
        """
        everything = slice(None)
        if not causal:
            return [(everything, everything, False)]
        first, second = slice(0, length // 2), slice(length // 2, None)
        if source == self.rank:
            return [(everything, everything, True)]
        if source < self.rank:
            return [(everything, first, False)]
        return [(second, everything, False)]

    def check(self, s_q: int, s_kv: int, *, is_causal: bool, rotary: bool) -> None:
        """Raise if the local lengths cannot be zig-zag shards of one sequence."""
        if s_q == 0 or s_kv == 0:
            raise ValueError(f"context parallelism needs tokens on every rank, got s_q={s_q}, s_kv={s_kv}")
        if not (is_causal or rotary):
            return  # any lengths: every query attends to every rank's keys
        if s_q != s_kv:
            what = "is_causal=True" if is_causal else "rotary positions"
            raise ValueError(
                f"{what} under context parallelism needs the queries and keys to be shards of one "
                f"sequence (s_q == s_kv), got s_q={s_q} and s_kv={s_kv}"
            )
        if s_q % 2:
            raise ValueError(
                f"a zig-zag shard holds two equal chunks, so its length must be even, got {s_q}; "
                "split inputs with mha.parallel.shard_sequence"
            )

    def positions(self, length: int, device: torch.device) -> Tensor:
        """The global positions of this rank's `length` local tokens."""
        half = length // 2
        first = torch.arange(self.rank * half, (self.rank + 1) * half, device=device)
        return torch.cat([first, first + (2 * self.size - 1 - 2 * self.rank) * half])

    def attend(self, q: Tensor, k: Tensor, v: Tensor, *, is_causal: bool, scale: float | None) -> Tensor:
        """Ring attention of local `(b, n_h, s/W, d)` queries over every rank's keys and values."""
        return RingAttention.apply(q, k, v, self.ring, is_causal, scale)

    def __repr__(self) -> str:
        return f"ContextParallel(rank={self.rank}, size={self.size}, layout='zig-zag')"


def context_parallel(module: nn.Module, mesh: DeviceMesh) -> nn.Module:
    """Make every [`mha.Attention`][mha.Attention] in `module` attend across sequence shards.

    After this, each rank passes its shard of the sequence
    ([`shard_sequence`][mha.parallel.context.shard_sequence]) through the model and
    gets its shard of the output; attention is exact over the whole sequence,
    forward and backward. Parameter gradients are this rank's share: sum them
    over the mesh (FSDP or DDP over the same ranks does that).

    Supported: self- and cross-attention, `is_causal`, grouped-query heads,
    rotary positions (global), float32/float16/bfloat16. Refused with an
    error, because they cannot be exact here: the math backend,
    `need_weights`, masks, dropout in training, the KV cache.

    Args:
        module: an `Attention`, a `MultiHeadAttention`, or a model holding some;
            changed in place.
        mesh: a 1-D `DeviceMesh` of `cpu` or `cuda` ranks.

    Returns:
        `module`.

    Raises:
        ValueError: if the mesh is not 1-D, `module` holds no `Attention`, or
            one of them has `backend="math"` or dynamic rotary scaling.

    Examples:
        One process here, so the mesh has one rank; under `torchrun` every
        rank runs the same lines (see the scaling-out guide's script).

        >>> import torch, torch.distributed as dist
        >>> from torch.distributed.device_mesh import init_device_mesh
        >>> from mha import MultiHeadAttention
        >>> from mha.parallel import context_parallel, shard_sequence, unshard_sequence
        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> mesh = init_device_mesh("cpu", (1,))
        >>> _ = torch.manual_seed(0)
        >>> plain = MultiHeadAttention(32, 4, num_kv_heads=2)
        >>> sharded = context_parallel(MultiHeadAttention(32, 4, num_kv_heads=2), mesh)
        >>> sharded.load_state_dict(plain.state_dict())
        <All keys matched successfully>
        >>> x = torch.randn(2, 16, 32)
        >>> out = unshard_sequence(sharded(shard_sequence(x, mesh), is_causal=True), mesh)
        >>> torch.allclose(out, plain(x, is_causal=True), atol=1e-6)
        True
        >>> try:
        ...     sharded(x, need_weights=True)
        ... except ValueError as error:
        ...     print(str(error).split(":")[0])
        need_weights=True is not supported under context parallelism
        >>> dist.destroy_process_group()
    """
    targets = {name: m for name, m in module.named_modules() if isinstance(m, Attention)}
    if not targets:
        raise ValueError(f"module must be or contain a mha.Attention, got {type(module).__name__} with none inside")
    for name, attention in targets.items():
        if attention.backend == "math":
            raise ValueError(
                f"{name or 'module'} has backend='math', which computes full score matrices; "
                "context parallelism needs the fused kernel (backend='auto' or 'fused')"
            )
        rope = attention.positional
        if rope is not None and rope.dynamic:
            # Each rank would grow the base from the positions it holds, not the whole sequence's.
            raise ValueError(
                f"{name or 'module'} has rotary scaling rope_type 'dynamic', whose frequencies depend on the "
                "longest sequence seen; under context parallelism each rank sees only its shard"
            )
    layout = ContextParallel(mesh)
    for attention in targets.values():
        attention.context_parallel = layout
    return module
