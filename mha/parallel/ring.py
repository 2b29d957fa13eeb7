"""Ring attention: exact attention over key/value blocks that travel around a ring of ranks.

Each of `W` ranks holds one shard of the queries, keys and values. In `W`
steps every rank attends from its queries to each rank's key/value block in
turn, while the next block is already on its way (point-to-point sends on
`torch.distributed`). The partial results are merged by their log-sum-exp,
which the fused kernels return, so the result is softmax over all keys, not
an average of local softmaxes. The backward pass sends the keys and values
around once more, with their gradients travelling beside them, and reuses
the merged output and log-sum-exp (Liu et al., 2023, "Ring Attention with
Blockwise Transformers", [arXiv:2310.01889](https://arxiv.org/abs/2310.01889)).

Which rows attend to which block, and whether causally, is the layout's
business: the ring receives it as a `blocks(source, length, causal)` function. Shape
letters are those of [`mha`][mha]; `s` is a rank's local length.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import Tensor

from mha._lse import _attend_block, _attend_block_backward

__all__: list[str] = []  # internal: used by mha.parallel.context

# (query rows, key/value rows, causal within the block) for one block of work.
Block = tuple[slice, slice, bool]
# (source rank, local query length, causal) -> the blocks of work with that rank's keys and values.
Blocks = Callable[[int, int, bool], list[Block]]

SUPPORTED_DEVICES = ("cpu", "cuda")


def _merge(out: Tensor, lse: Tensor, block_out: Tensor, block_lse: Tensor) -> None:
    """Fold one block's result into the running `out` and `lse` (float32 or wider), in place."""
    merged = torch.logaddexp(lse, block_lse)
    out.mul_((lse - merged).exp().unsqueeze(-1))
    out.add_(block_out.to(out.dtype) * (block_lse - merged).exp().unsqueeze(-1))
    lse.copy_(merged)


class Ring:
    """The ranks of a process group arranged in a ring, and the two passes of ring attention.

    Args:
        group: the process group of the sequence shards.
        blocks: for the rank whose keys and values are being visited, the
            blocks of work this rank does with them.
    """

    def __init__(self, group: dist.ProcessGroup, blocks: Blocks) -> None:
        self.group = group
        self.rank = dist.get_rank(group)
        self.size = dist.get_world_size(group)
        self.blocks = blocks
        self._next = dist.get_global_rank(group, (self.rank + 1) % self.size)
        self._previous = dist.get_global_rank(group, (self.rank - 1) % self.size)

    def _pass_on(self, tensor: Tensor) -> tuple[list[Any], Tensor]:
        """Start sending `tensor` to the next rank and receiving the previous rank's."""
        if self.size == 1:
            return [], tensor
        received = torch.empty_like(tensor)
        requests = dist.batch_isend_irecv(
            [
                dist.P2POp(dist.isend, tensor, self._next, self.group),
                dist.P2POp(dist.irecv, received, self._previous, self.group),
            ]
        )
        return requests, received

    def _visits(self, kv: Tensor) -> Any:
        """Yield `(source rank, its keys and values)` for every rank, the next one already in flight."""
        for step in range(self.size):
            requests, incoming = ([], kv) if step == self.size - 1 else self._pass_on(kv)
            yield (self.rank - step) % self.size, kv
            for request in requests:
                request.wait()
            kv = incoming

    def forward(self, q: Tensor, kv: Tensor, causal: bool, scale: float | None) -> tuple[Tensor, Tensor]:
        """`(b, n_h, s, d)` queries, `(2, b, n_kv, s, d)` stacked keys and values -> output and log-sum-exp.

        The log-sum-exp is float32, or float64 for float64 inputs."""
        accumulate = torch.promote_types(q.dtype, torch.float32)  # the kernels' log-sum-exp dtype
        out = q.new_zeros(q.shape, dtype=accumulate)
        lse = q.new_full(q.shape[:3], float("-inf"), dtype=accumulate)
        for source, visiting in self._visits(kv):
            for rows, cols, block_causal in self.blocks(source, q.shape[2], causal):
                block_k, block_v = visiting[0][:, :, cols], visiting[1][:, :, cols]
                block_out, block_lse = _attend_block(q[:, :, rows], block_k, block_v, block_causal, scale)
                _merge(out[:, :, rows], lse[:, :, rows], block_out, block_lse)
        return out.to(q.dtype), lse

    def backward(
        self, grad: Tensor, q: Tensor, kv: Tensor, out: Tensor, lse: Tensor, causal: bool, scale: float | None
    ) -> tuple[Tensor, Tensor]:
        """Gradients of this rank's queries and of its stacked keys and values."""
        grad = grad.contiguous()
        dq = torch.zeros_like(q, dtype=lse.dtype)
        # The key/value gradients travel one step behind their keys and values:
        # each rank adds its share and passes the sum on; after the full round,
        # every rank receives the gradients of its own shard.
        requests: list[Any] = []
        travelling: Tensor | None = None
        for source, visiting in self._visits(kv):
            dkv = torch.zeros_like(visiting, dtype=lse.dtype)
            for rows, cols, block_causal in self.blocks(source, q.shape[2], causal):
                block_dq, block_dk, block_dv = _attend_block_backward(
                    grad[:, :, rows],
                    q[:, :, rows],
                    visiting[0][:, :, cols],
                    visiting[1][:, :, cols],
                    out[:, :, rows],
                    lse[:, :, rows],
                    block_causal,
                    scale,
                )
                dq[:, :, rows] += block_dq
                dkv[0][:, :, cols] += block_dk
                dkv[1][:, :, cols] += block_dv
            for request in requests:
                request.wait()
            if travelling is not None:
                dkv += travelling
            requests, travelling = self._pass_on(dkv)
        for request in requests:
            request.wait()
        dkv = cast(Tensor, travelling)  # the ring has at least one rank, so one step ran
        return dq.to(q.dtype), dkv.to(kv.dtype)


class RingAttention(torch.autograd.Function):
    """`Ring.forward` with `Ring.backward` as its gradient."""

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, ring: Ring, causal: bool, scale: float | None) -> Tensor:
        kv = torch.stack([k, v])  # one tensor to send around the ring, in both passes
        out, lse = ring.forward(q, kv, causal, scale)
        ctx.save_for_backward(q, kv, out, lse)
        ctx.ring, ctx.causal, ctx.scale = ring, causal, scale
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        q, kv, out, lse = ctx.saved_tensors
        dq, dkv = ctx.ring.backward(grad, q, kv, out, lse, ctx.causal, ctx.scale)
        return dq, dkv[0], dkv[1], None, None, None
