r"""Learned attention sinks: one logit per head that takes probability mass and has no value.

With a sink logit $z$ for the head, query row $i$ is weighted by

$$
p_{ij} = \frac{e^{s_{ij}}}{\sum_{j'} e^{s_{ij'}} + e^{z}},
$$

so its weights over the keys sum to less than 1 (gpt-oss; Xiao et al.,
2023, "Efficient Streaming Language Models with Attention Sinks").

With the row's log-sum-exp over the keys $L_i$, that is the plain softmax's
output times $\sigma(L_i - z) = 1 / (1 + e^{z - L_i})$: the fused kernels give
$L_i$ (`mha._lse`), so the fused path rescales their output and never builds
a score matrix. The backward hands the kernels' own backward the final output
and the final log-sum-exp $\log(e^{L_i} + e^{z})$, which makes its
gradients those of the softmax with the sink (see `mha._lse`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mha import _lse

__all__: list[str] = []  # internal: used by mha.functional


def sink_softmax(scores: Tensor, sinks: Tensor) -> Tensor:
    """`softmax([scores, sink])` without the sink's column: weights over the keys that sum to less than 1.

    Shape:
        scores: `(b, n_h, s_q, s_kv)`; sinks: `(n_h,)`; output like `scores`.
    """
    sink = sinks.to(scores.dtype).view(-1, 1, 1)  # (n_h, 1, 1) against (b, n_h, s_q, 1)
    lse = torch.logaddexp(torch.logsumexp(scores, dim=-1, keepdim=True), sink)
    return torch.exp(scores - lse)


class _FusedWithSinks(torch.autograd.Function):
    """The fused kernel's output rescaled by `sigmoid(lse - sink)`, with the gradients of the softmax with sink."""

    @staticmethod
    def forward(
        q: Tensor, k: Tensor, v: Tensor, sinks: Tensor, mask: Tensor | None, causal: bool, scale: float | None
    ) -> tuple[Tensor, Tensor]:
        out, lse = _lse._attend_block(q, k, v, causal, scale, mask)  # lse: (b, n_h, s_q), float32 or wider
        # e^L / (e^L + e^z) = sigmoid(L - z): two small ops on (b, n_h, s_q); the
        # final log-sum-exp log(e^L + e^z) is left to the backward, which alone needs it.
        # In place on the kernel's fresh output: no second output-sized tensor; a
        # half-precision output is multiplied in float32 and rounded once.
        context = out.mul_(torch.sigmoid(lse - sinks.to(lse.dtype).view(-1, 1)).unsqueeze(-1))
        return context, lse

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
        q, k, v, sinks, mask, causal, scale = inputs
        context, lse = output
        ctx.save_for_backward(q, k, v, sinks, mask, context, lse)
        ctx.causal, ctx.scale = causal, scale
        ctx.mark_non_differentiable(lse)

    @staticmethod
    def backward(ctx: Any, grad: Tensor, _grad_lse: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, sinks, mask, context, lse = ctx.saved_tensors
        sink = sinks.to(lse.dtype).view(-1, 1)
        final = torch.logaddexp(lse, sink)  # log(Σ e^s + e^z)
        grad = grad.contiguous()
        dq, dk, dv = _lse._attend_block_backward(grad, q, k, v, context, final, ctx.causal, ctx.scale, mask)
        # d context_i / d z = -p_sink,i context_i, with p_sink,i = e^(z - final_i) = sigmoid(z - L_i).
        p_sink = torch.sigmoid(sink - lse)  # (b, n_h, s_q)
        row = (grad.to(lse.dtype) * context.to(lse.dtype)).sum(-1)  # (b, n_h, s_q)
        dsinks = -(p_sink * row).sum(dim=(0, 2)).to(sinks.dtype)
        return dq, dk, dv, dsinks, None, None, None


def fused_with_sinks(
    q: Tensor, k: Tensor, v: Tensor, sinks: Tensor, mask: Tensor | None, causal: bool, scale: float | None
) -> Tensor:
    """Attention with one sink logit per query head, on the fused kernels.

    Args:
        q, k, v: split heads, `n_h` a multiple of `n_kv`.
        sinks: `(n_h,)` logits.
        mask: additive, in the query's dtype, or `None`; no row fully blocked.
        causal: the kernels' top-left causal flag.
        scale: multiplies the scores; `None` for `1 / sqrt(d)`.

    Returns:
        The context `(b, n_h, s_q, d_v)`.
    """
    context, _ = _FusedWithSinks.apply(q, k, v, sinks, mask, causal, scale)
    return context
