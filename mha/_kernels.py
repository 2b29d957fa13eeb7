"""The attention kernels behind every path, without argument checks.

`mha.functional` checks its arguments and calls these;
so do the modules (`Attention`, the Transformers backend, the parallel
layers), which check once where a call enters. Each name says what
differs from the public function it stands for:

* `attend_unchecked`: `mha.functional.attention` without checks, on a
  path already chosen (`requested_path`), returning weights only on the
  math path; options by keyword.
* `attend_one_query`: the decoding step, one query per head, no mask,
  no dropout: nothing left to decide.
* `prepared_weights`: `mha.functional.attention_weights` on a mask that
  `prepare_mask` made ready for either path.

Shape letters are those of [`mha`][mha].
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from mha import _blockwise, masks
from mha._blockwise import Pattern

__all__ = [
    "attend_unchecked",
    "attend_one_query",
    "requested_path",
    "prepare_mask",
    "PreparedMask",
    "prepared_weights",
    "zero_blocked",
    "fit_mask",
    "repeat_kv",
    "fold_groups",
    "accumulation_dtype",
]


def requested_path(need_weights: bool, backend: str) -> str:
    """The path `choose_path` would pick, without checking its arguments (for internal callers).

    Soft-capping, and sinks with dropout, run on the math path whatever this
    says: `attend_unchecked` sends them there.
    """
    return "math" if need_weights or backend == "math" else "fused"


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half types overflow and lose mass in a softmax; accumulate in float32.
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def repeat_kv(x: Tensor, group: int) -> Tensor:
    """Repeat each key/value head `group` times: (b, n_kv, s, d) -> (b, n_kv * group, s, d)."""
    if group == 1:
        return x
    b, n_kv, s, d = x.shape
    return x[:, :, None].expand(b, n_kv, group, s, d).reshape(b, n_kv * group, s, d)


def fold_groups(x: Tensor, group: int) -> Tensor:
    """`(b, n_kv * g, s, ...)` -> `(b, n_kv, g * s, ...)`: the `g` query heads of a key/value head as one sequence.

    Without a mask between them, those queries attend to the same keys, so a
    kernel can run them as one head's queries and read each key once.
    """
    return x.reshape(x.shape[0], x.shape[1] // group, group * x.shape[2], *x.shape[3:])


def fit_mask(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """Clamp a float mask's finite values into `dtype`'s range, keeping -inf.

    The fused kernel needs the mask in the query's dtype: cast to float16, a
    finite -1e9 would become -inf (a fully blocked row would then come out as
    zeros on one path and as a softmax on the other). Clamped on both paths,
    the two agree, and a value at the bottom of the range still gives a key
    no weight next to an allowed one.
    """
    if mask is None or mask.dtype == torch.bool or dtype not in (torch.float16, torch.bfloat16):
        return mask
    info = torch.finfo(dtype)
    return torch.where(torch.isneginf(mask), mask, mask.clamp(min=info.min, max=info.max))


class PreparedMask(NamedTuple):
    """A call's mask, ready for either path (see `prepare_mask`)."""

    mask: Tensor | None
    kernel_causal: bool
    keep: Tensor | None
    blocked: Tensor | None


def prepare_mask(
    mask: Tensor | None,
    is_causal: bool,
    *,
    s_q: int,
    s_kv: int,
    scale: float | None,
    guard: bool,
    n_kv: int,
    device: torch.device,
) -> PreparedMask:
    """Fold `is_causal` into the mask, guard rows that may attend to nothing and positions no query sees.

    Args:
        guard: find the key/value positions the mask blocks for every query
            (only where the caller cannot vouch that they hold finite numbers).

    Returns:
        `mask`: 4-D `(b|1, n_h|1, s_q|1, s_kv)` or `None`. `kernel_causal`:
        True when the fused kernel's own (top-left aligned) causal flag is
        exact, so no mask needs to be built. `keep`: `(..., s_q, 1)`, True for
        rows with at least one allowed key, or `None` if every row has one.
        `blocked`: `(b|1, n_kv|1, s_kv, 1)`, True at key/value positions that
        no query may see, or `None` (no mask, or `guard=False`).
    """
    if is_causal and mask is None and s_q == s_kv and (scale is None or scale > 0):
        # The kernel's causal flag multiplies its -inf by the scale: NaN at
        # scale 0, +inf (the future wins) for a negative scale. Those get a mask.
        return PreparedMask(None, True, None, None)
    # A causal mask alone lets the last query see every key: nothing to guard.
    guard = guard and mask is not None
    if is_causal:
        mask = masks._combine(mask, masks._causal(s_q, s_kv, device))
    if mask is None:
        return PreparedMask(None, False, None, None)
    if mask.ndim < 4:
        # (s_kv,), (s_q, s_kv), ... broadcast like a (b, n_h, s_q, s_kv) mask; the
        # fused kernel, the one-query grouped path and the row guard need all four.
        mask = mask.reshape((1,) * (4 - mask.ndim) + tuple(mask.shape))
    blocked = _blocked_columns(mask, n_kv) if guard else None
    if mask.dtype == torch.bool:
        keep = mask.any(dim=-1, keepdim=True)
        # A row that blocks everything is opened fully, so the softmax stays
        # finite in forward and backward; `keep` zeroes that row afterwards.
        return PreparedMask(mask | ~keep, False, keep, blocked)
    keep = ~torch.isneginf(mask).all(dim=-1, keepdim=True)
    return PreparedMask(mask.masked_fill(~keep, 0.0), False, keep, blocked)


def _blocked_columns(mask: Tensor, n_kv: int) -> Tensor:
    """Key/value positions that `mask` blocks for every query: `(b|1, n_kv|1, s_kv, 1)` bool.

    `mask` is 4-D, before fully blocked rows are opened. A key/value head's
    position counts as blocked when every query of every query head that
    shares it is blocked from it.
    """
    allowed = mask if mask.dtype == torch.bool else ~torch.isneginf(mask)
    seen = allowed.any(dim=-2)  # (b|1, n_h|1, s_kv)
    if seen.shape[1] != 1 and seen.shape[1] != n_kv:
        seen = seen.unflatten(1, (n_kv, -1)).any(dim=2)  # (b|1, n_kv, s_kv): the heads of a group
    return ~seen.unsqueeze(-1)


def zero_blocked(x: Tensor, blocked: Tensor | None) -> Tensor:
    """`x` `(b, n_kv, s_kv, d)` with zeros at `blocked` positions, so inf or NaN there cannot leak.

    Blocked keys get no weight, but the kernels still compute `q . k` (inf
    plus the mask's -inf is NaN) and `0 * v` (NaN for an infinite value).
    """
    return x if blocked is None else x.masked_fill(blocked, 0.0)


def prepared_weights(query: Tensor, key: Tensor, prepared: PreparedMask, scale: float | None) -> Tensor:
    """`attention_weights` without argument checks, for a prepared mask."""
    mask, keep = fit_mask(prepared.mask, query.dtype), prepared.keep
    if prepared.kernel_causal:
        mask = masks._causal(query.shape[-2], key.shape[-2], query.device)
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    acc = accumulation_dtype(query.dtype)
    key = repeat_kv(key, query.shape[-3] // key.shape[-3])
    scores = (query.to(acc) @ key.to(acc).transpose(-2, -1)) * scale  # (b, n_h, s_q, s_kv)
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask.to(acc)
    weights = torch.softmax(scores, dim=-1)
    if keep is not None:
        weights = weights.masked_fill(~keep, 0.0)
    return weights.to(query.dtype)


def attend_one_query(query: Tensor, key: Tensor, value: Tensor, scale: float | None) -> Tensor:
    """`attend_unchecked` for one query per head, without mask or dropout: a decoding step.

    The `g` query heads that share a key/value head are given to the kernel
    as `g` queries of that one head, so it reads each key once (as
    `attend_unchecked` does for this case); and there is nothing else to decide.

    Shape:
        query: `(b, n_h, d)`; key: `(b, n_kv, s_kv, d)`, value: `(b, n_kv, s_kv, d_v)`,
        with `s_kv >= 1`; output: `(b, n_h, d_v)`.
    """
    b, n_h, d = query.shape
    n_kv = key.shape[1]
    context = F.scaled_dot_product_attention(query.view(b, n_kv, n_h // n_kv, d), key, value, scale=scale)
    return context.view(b, n_h, value.shape[-1])


def attend_unchecked(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    mask: Tensor | None,
    is_causal: bool,
    scale: float | None,
    dropout_p: float,
    path: str,
    guard: bool = True,
    sinks: Tensor | None = None,
    softcap: float | None = None,
    pattern: Pattern | None = None,
    need_weights: bool | None = None,
) -> tuple[Tensor, Tensor | None]:
    """`mha.functional.attention` without argument checks, on a chosen path, weights only on the math path.

    For the package's modules, which check their arguments once where a call
    enters. Returns `(context, weights)`; `weights` is `None` on the fused path.
    `guard=False` skips zeroing the key/value positions the mask blocks for
    every query, for a caller that knows they hold finite numbers (the KV
    cache's empty and padding slots hold zeros).
    `softcap`, or `sinks` with `dropout_p > 0`, run on the math path in
    chunks of queries whatever `path` says (no fused kernel does them);
    `sinks` alone run fused, rescaled by the kernel's log-sum-exp.
    A `pattern` (window, documents, ALiBi) runs blockwise or as one dense
    mask, as `mha._blockwise.plan` chooses. `need_weights` (default: whether
    `path` is `"math"`) says whether the chunked math path keeps every
    chunk's weights: soft-capping runs there on any path, and all its
    weights at once are `(b, n_h, s_q, s_kv)`, what the chunks avoid.
    """
    b, n_h, s_q = query.shape[:3]
    s_kv = key.shape[-2]
    if s_q == 0 or s_kv == 0:
        # Empty in, empty out; with no keys, every query attends to nothing: zeros.
        context = query.new_zeros(b, n_h, s_q, value.shape[-1])
        return context, (query.new_zeros(b, n_h, s_q, s_kv) if path == "math" else None)
    if pattern is not None:
        if mask is not None and mask.ndim < 4:
            mask = mask.reshape((1,) * (4 - mask.ndim) + tuple(mask.shape))
        if _blockwise.plan(pattern, s_q, s_kv, is_causal=is_causal, path=path).layout == "blockwise":
            # Per-row options stay exact per block: each query's row lies whole in one block.
            options = {k: v for k, v in (("sinks", sinks), ("softcap", softcap)) if v is not None}
            context = _blockwise.attend(
                query,
                key,
                value,
                mask=mask,
                is_causal=is_causal,
                scale=scale,
                dropout_p=dropout_p,
                pattern=pattern,
                kernel=attend_unchecked,
                **options,
            )
            return context, None
        local = _blockwise.dense_mask(
            pattern, s_q, s_kv, is_causal=is_causal, num_heads=n_h, dtype=query.dtype, device=query.device
        )
        mask, is_causal = masks._combine(local, mask), False  # ALiBi's float32 first: it sets the dtype
    if softcap is not None or (sinks is not None and (path == "math" or dropout_p > 0.0)):
        from mha import _chunked  # imports this module

        return _chunked.attend(
            query,
            key,
            value,
            mask=mask,
            is_causal=is_causal,
            scale=scale,
            dropout_p=dropout_p,
            softcap=softcap,
            sinks=sinks,
            need_weights=path == "math" if need_weights is None else need_weights,
            guard=guard,
        )
    prepared = prepare_mask(
        mask, is_causal, s_q=s_q, s_kv=s_kv, scale=scale, guard=guard, n_kv=key.shape[-3], device=query.device
    )
    if prepared.blocked is not None:
        key, value = zero_blocked(key, prepared.blocked), zero_blocked(value, prepared.blocked)
    if sinks is not None:
        return _fused_with_sinks(query, key, value, prepared, scale, sinks), None
    mask, kernel_causal, keep = prepared.mask, prepared.kernel_causal, prepared.keep
    if path == "math":
        weights = prepared_weights(query, key, prepared, scale)
        if dropout_p > 0.0:
            weights = F.dropout(weights, p=dropout_p)
        context = weights @ repeat_kv(value, query.shape[-3] // value.shape[-3])
        # A row with nothing to attend to is zero even next to an inf value (0 * inf).
        return (context if keep is None else context.masked_fill(~keep, 0.0)), weights

    # Head counts may be symbolic under torch.compile(dynamic=True); the kernel
    # wants a plain bool, which a Python branch gives (Dynamo guards on it).
    enable_gqa = True if query.shape[-3] != key.shape[-3] else False  # noqa: SIM210
    if mask is not None and mask.dtype != torch.bool:
        mask = fit_mask(mask, query.dtype)
        mask = None if mask is None else mask.to(query.dtype)  # the kernel takes a bool mask or the query's dtype
    group = query.shape[-3] // key.shape[-3]
    if group > 1 and s_q == 1 and not kernel_causal and (mask is None or mask.shape[-3] == 1):
        # One query per head, as in decoding: the g query heads that share a
        # key/value head are g queries of that one head. The kernel then reads
        # each key once, without expanding them per head (seen: 2.2x faster
        # than enable_gqa at 4,096 float32 keys on CPU).
        context = F.scaled_dot_product_attention(
            fold_groups(query, group),
            key,
            value,
            attn_mask=mask,
            dropout_p=dropout_p,
            scale=scale,
        ).reshape(b, n_h, 1, value.shape[-1])
    else:
        context = F.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=mask,
            dropout_p=dropout_p,
            is_causal=kernel_causal,
            scale=scale,
            enable_gqa=enable_gqa,
        )
    if keep is not None:
        context = context.masked_fill(~keep, 0.0)  # where, not a product: 0 * NaN would stay NaN
    return context, None


def _fused_with_sinks(
    query: Tensor, key: Tensor, value: Tensor, prepared: PreparedMask, scale: float | None, sinks: Tensor
) -> Tensor:
    """The fused path with a sink logit per head: the kernel's output rescaled by its log-sum-exp."""
    from mha import _sinks  # imports this module

    mask, keep = prepared.mask, prepared.keep
    if mask is not None:
        # The kernels that return their log-sum-exp take an additive mask in the query's dtype.
        mask = masks._additive(mask, query.dtype) if mask.dtype == torch.bool else fit_mask(mask, query.dtype)
        mask = None if mask is None else mask.to(query.dtype)
    context = _sinks.fused_with_sinks(query, key, value, sinks, mask, prepared.kernel_causal, scale)
    return context if keep is None else context.masked_fill(~keep, 0.0)
