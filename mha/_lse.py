"""Fused attention that also returns its log-sum-exp, and the matching backward.

`torch.nn.functional.scaled_dot_product_attention` hides the log-sum-exp of
each query row, `lse = log Σ_j exp(s_j)`; the kernels underneath compute it
anyway and return it when called directly (the flash kernel on CPU, the
memory-efficient kernel on CUDA). With it, a result over some keys can be
merged with more keys (ring attention, `mha.parallel.ring`) or with a learned
sink logit (`mha._sinks`) exactly, without a score matrix.

The backward takes the *final* output and log-sum-exp of each row (after a
merge or a sink): the kernels' backward then computes the gradients of that
final softmax, which is what makes both uses exact.

Shape letters are those of [`mha`][mha]; `d_v` is the value head width.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from mha._kernels import fold_groups, repeat_kv

__all__: list[str] = []  # internal

LSE_ROWS = 32  # CUDA's memory-efficient kernel pads its log-sum-exp rows to a multiple of this
HEAD_DIM_ALIGNMENT = 8  # and has no kernel for float32 head dims that are not a multiple of this
BIAS_ALIGNMENT = 16  # and wants the rows of an attention bias aligned to this many elements


def _block_forward(
    q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: float | None, mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Attention and its log-sum-exp: `(b, n_h, s_q, d_v)` and `(b, n_h, s_q)` (float32, float64 for float64).

    `mask` is additive, in the query's dtype, broadcastable to `(b, n_h, s_q, s_kv)`;
    `causal` is the kernels' top-left aligned causal flag.
    """
    scale, d_v = _scale(q, scale), v.shape[-1]
    if q.device.type == "cpu":
        # The CPU kernel wants one head width for q, k and v, and reads any strides
        # (keys and values shared by stride 0 stay views, see `_by_kv_head`).
        q, k, v = _same_width(q, k, v, 1, contiguous=False)
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, causal, attn_mask=mask, scale=scale
        )
        return out[..., :d_v], lse
    out, lse, _, _ = torch.ops.aten._scaled_dot_product_efficient_attention(
        *_same_width(q, k, v, HEAD_DIM_ALIGNMENT), _bias(mask, q, k), True, 0.0, causal, scale=scale
    )
    return out[..., :d_v], lse[..., : q.shape[2]]  # the CUDA kernel pads the rows to a multiple of its tile


def _block_backward(
    grad: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    causal: bool,
    scale: float | None,
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of one block, given the *final* output and log-sum-exp of its rows.

    With the final `out` and `lse`, the block's softmax is already normalised
    over everything its rows attend to (all ranks' keys, or the keys and a
    sink), so the gradients are those of the final softmax.
    """
    scale, d, d_v = _scale(q, scale), q.shape[-1], v.shape[-1]
    if q.device.type == "cpu":
        width = max(d, d_v)
        grad, out = _pad_to(grad, width).contiguous(), _pad_to(out, width).contiguous()
        q, k, v = _same_width(q, k, v, 1)
        dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            grad, q, k, v, out, lse, 0.0, causal, attn_mask=mask, scale=scale
        )
        return dq[..., :d], dk[..., :d], dv[..., :d_v]
    if q.dtype != torch.float32:
        # Seen on an H200 with torch 2.11: the kernel's 16-bit backward is right with
        # its own forward's output and log-sum-exp, but wrong (by 0.7 in bfloat16)
        # with the ones merged over several blocks; its float32 backward is exact.
        grads = _block_backward(
            grad.float(),
            q.float(),
            k.float(),
            v.float(),
            out.float(),
            lse,
            causal,
            scale,
            None if mask is None else mask.float(),
        )
        return grads[0].to(q.dtype), grads[1].to(k.dtype), grads[2].to(v.dtype)
    no_seed = torch.zeros((), dtype=torch.int64, device=q.device)
    lse = F.pad(lse, (0, -q.shape[2] % LSE_ROWS))  # back to the kernel's padded layout
    width = max(d, d_v) + -max(d, d_v) % HEAD_DIM_ALIGNMENT
    bias = _bias(mask, q, k)
    q, k, v = _same_width(q, k, v, HEAD_DIM_ALIGNMENT)
    grad, out = _pad_to(grad, width).contiguous(), _pad_to(out, width).contiguous()
    dq, dk, dv, _ = torch.ops.aten._scaled_dot_product_efficient_attention_backward(
        grad,
        q,
        k,
        v,
        bias,
        out,
        lse.contiguous(),
        no_seed,
        no_seed,
        0.0,
        [True, True, True, False],
        causal,
        scale=scale,
    )
    return dq[..., :d], dk[..., :d], dv[..., :d_v]


def _scale(q: Tensor, scale: float | None) -> float:
    return q.shape[-1] ** -0.5 if scale is None else scale  # of the true head dim, before any padding


def _pad_to(t: Tensor, width: int) -> Tensor:
    pad = width - t.shape[-1]
    return F.pad(t, (0, pad)) if pad else t


def _same_width(
    q: Tensor, k: Tensor, v: Tensor, alignment: int, *, contiguous: bool = True
) -> tuple[Tensor, Tensor, Tensor]:
    """Contiguous (or only unit-stride rows), with the head dims zero-padded to one width that divides by `alignment`.

    Zero columns add nothing to `q kᵀ` and give zero output columns, which
    are cut off again; the scale is that of the true head dim.
    """
    width = max(q.shape[-1], v.shape[-1])
    width += -width % alignment

    def fit(t: Tensor) -> Tensor:
        t = _pad_to(t, width)
        return t.contiguous() if contiguous or t.stride(-1) != 1 else t

    return fit(q), fit(k), fit(v)


def _bias(mask: Tensor | None, q: Tensor, k: Tensor) -> Tensor | None:
    """An additive mask as the CUDA kernel takes it: full size, rows aligned (views of a padded tensor)."""
    if mask is None:
        return None
    b, n_h, s_q, s_kv = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    mask = mask.expand(b, n_h, s_q, s_kv)
    pad = -s_kv % BIAS_ALIGNMENT
    return F.pad(mask, (0, pad))[..., :s_kv] if pad else mask.contiguous()


def _attend_block(
    q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: float | None, mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """`_block_forward` for `n_h` query heads over `n_kv` key/value heads.

    Without a mask, the query heads that share a key/value head are folded
    into one longer sequence, so the keys and values are never copied per
    head. A causal block or a mask needs each head's own positions: on CPU
    each key/value head becomes a batch entry of `g` heads that all view it
    (stride 0, no copy); elsewhere, or with a mask that differs per batch
    entry and head, they are repeated.
    """
    group = q.shape[1] // k.shape[1]
    if group == 1:
        return _block_forward(q, k, v, causal, scale, mask)
    if causal or mask is not None:
        grouped = _grouped_mask(mask, q, group) if q.device.type == "cpu" else None
        if grouped is None:
            return _block_forward(q, repeat_kv(k, group), repeat_kv(v, group), causal, scale, mask)
        out, lse = _block_forward(
            _by_kv_head(q, group), _by_kv_head(k, 1, group), _by_kv_head(v, 1, group), causal, scale, grouped[0]
        )
        return out.reshape(*q.shape[:3], v.shape[-1]), lse.reshape(q.shape[:3])
    out, lse = _block_forward(fold_groups(q, group), k, v, False, scale)
    return out.reshape(*q.shape[:3], v.shape[-1]), lse.reshape(q.shape[:3])


def _by_kv_head(x: Tensor, group: int, expand: int = 1) -> Tensor:
    """`(b, n_kv * group, s, d)` -> `(b * n_kv, group * expand, s, d)`, a view; `expand` > 1 repeats by stride 0.

    Measured on CPU (s = 1024, 16 query heads over 4): the repeated copies of
    the keys and values cost a sixth of the kernel's time; views cost nothing,
    and the kernel's output is bit for bit the same.
    """
    b, n, s, d = x.shape
    x = x.reshape(b * n // group, group, s, d)
    return x if expand == 1 else x.expand(-1, expand, s, d)


def _grouped_mask(mask: Tensor | None, q: Tensor, group: int) -> tuple[Tensor | None] | None:
    """The mask for `_by_kv_head`'s layout, in a 1-tuple; `None` where it would need a copy per head."""
    if mask is not None and mask.ndim < 4:
        mask = mask.view((1,) * (4 - mask.ndim) + tuple(mask.shape))
    if mask is None or mask.shape[0] == mask.shape[1] == 1:
        return (mask,)  # broadcasts over the new batch and head dims as it did over the old
    if q.shape[0] != 1:
        return None
    return (mask.expand(1, q.shape[1], *mask.shape[2:]).reshape(q.shape[1] // group, group, *mask.shape[2:]),)


def _attend_block_backward(
    grad: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    causal: bool,
    scale: float | None,
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """`_block_backward` for grouped heads, as in `_attend_block`; key/value gradients per key/value head."""
    group = q.shape[1] // k.shape[1]
    if group == 1:
        return _block_backward(grad, q, k, v, out, lse, causal, scale, mask)
    if causal or mask is not None:
        dq, dk, dv = _block_backward(grad, q, repeat_kv(k, group), repeat_kv(v, group), out, lse, causal, scale, mask)
        # The query heads of a group share a key/value head: sum their gradients.
        return dq, dk.unflatten(1, (-1, group)).sum(2), dv.unflatten(1, (-1, group)).sum(2)
    grad, folded_q, out, lse = (fold_groups(t, group) for t in (grad, q, out, lse))
    dq, dk, dv = _block_backward(grad, folded_q, k, v, out, lse, False, scale)
    return dq.reshape(q.shape), dk, dv
