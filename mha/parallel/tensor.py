"""Tensor-parallel attention on PyTorch's own engine (`torch.distributed.tensor`).

Megatron-style sharding over a 1-D device mesh of `t` ranks: the query,
key and value projections are split column-wise, so each rank computes
`n_h / t` query heads and `n_kv / t` key/value heads entirely locally; the
output projection is split row-wise, and one all-reduce sums the partial
outputs. [`parallelize`][mha.parallel.tensor.parallelize] records the split on each
[`mha.Attention`][mha.Attention] (`shards = t`, shown in its `repr`), which then expects
`1/t` of the widths; a module that was not parallelized rejects them.

Shape letters are those of [`mha`][mha].
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from mha.attention import MultiHeadAttention

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.tensor.parallel import ParallelStyle

__all__ = ["plan", "parallelize"]


def plan(prefix: str = "") -> dict[str, ParallelStyle]:
    """The tensor-parallel plan of one [`mha.MultiHeadAttention`][mha.MultiHeadAttention].

    Args:
        prefix: the module's dotted path inside a bigger model, e.g.
            `"layers.0.attn"`; empty for the module itself.

    Returns:
        A dict for `torch.distributed.tensor.parallel.parallelize_module`,
        to use as is or to merge into a bigger model's plan.

    Examples:
        >>> from mha.parallel import plan
        >>> sorted(plan("blocks.0.attn"))
        ['blocks.0.attn.k_proj', 'blocks.0.attn.out_proj', 'blocks.0.attn.q_proj', 'blocks.0.attn.v_proj']
    """
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
    dot = f"{prefix}." if prefix else ""
    return {
        f"{dot}q_proj": ColwiseParallel(),
        f"{dot}k_proj": ColwiseParallel(),
        f"{dot}v_proj": ColwiseParallel(),
        f"{dot}out_proj": RowwiseParallel(),
    }


def _check_divisible(name: str, module: MultiHeadAttention, world_size: int) -> None:
    for attr in ("num_heads", "num_kv_heads"):
        heads = getattr(module, attr)
        if heads % world_size:
            raise ValueError(
                f"{name or 'module'}.{attr}={heads} must be divisible by the device "
                f"mesh size {world_size} to shard heads evenly"
            )


def parallelize(
    module: nn.Module, device_mesh: DeviceMesh, *, extra: dict[str, ParallelStyle] | None = None
) -> nn.Module:
    """Shard a [`mha.MultiHeadAttention`][mha.MultiHeadAttention], or every one inside `module`.

    Args:
        module: a `MultiHeadAttention` or a model containing some; changed in place.
        device_mesh: a 1-D `torch.distributed.device_mesh.DeviceMesh` (on a
            2-D mesh, its tensor-parallel dimension, e.g. `mesh["tp"]`).
        extra: styles for the model's other layers (an MLP's `ColwiseParallel`
            and `RowwiseParallel`, say), keyed by their dotted paths and
            applied in the same call.

    Returns:
        `module`, with projection weights turned into DTensors.

    Raises:
        ValueError: if the mesh is not 1-D, a head count does not divide by
            its size, or `module` holds no `MultiHeadAttention`.
    """
    from torch.distributed.tensor.parallel import parallelize_module

    if device_mesh.ndim != 1:
        raise ValueError(f"device_mesh must be 1-D, got a {device_mesh.ndim}-D mesh")
    world_size = device_mesh.size()
    targets = {name: m for name, m in module.named_modules() if isinstance(m, MultiHeadAttention)}
    if not targets:
        raise ValueError(
            f"module must be or contain a mha.MultiHeadAttention, got {type(module).__name__} with none inside"
        )
    full_plan: dict[str, ParallelStyle] = dict(extra or {})
    for name, attn in targets.items():
        _check_divisible(name, attn, world_size)
        full_plan.update(plan(name))
    module = parallelize_module(module, device_mesh, full_plan)
    for attn in targets.values():
        attn.attention.shards = world_size
        _shard_sinks(attn, device_mesh)
    return module


def _shard_sinks(module: MultiHeadAttention, device_mesh: DeviceMesh) -> None:
    """Split the sink logits `(n_h,)` with the heads: each rank keeps its heads' (a DTensor, `Shard(0)`).

    The q/k-norm weights are per head width, the same for every head, so they stay whole.
    """
    sinks = module.attention.sinks
    if sinks is None:
        return
    from torch.distributed.tensor import Shard, distribute_tensor

    sharded = distribute_tensor(sinks.detach(), device_mesh, [Shard(0)])
    module.attention.sinks = nn.Parameter(sharded, requires_grad=sinks.requires_grad)
