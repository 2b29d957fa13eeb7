r"""The attention math: weights, context, and which kernel computes them.

Scaled dot-product attention for one head is

$$
\operatorname{Attention}(Q, K, V) = \operatorname{softmax}\!\left(\frac{QK^\top}{\sqrt{d}} + M\right) V
$$

where $M$ is 0 where a query may attend to a key and $-\infty$
where it may not. Two paths compute it:

* `"fused"` calls `torch.nn.functional.scaled_dot_product_attention`,
  which picks a flash, memory-efficient or math kernel and never needs an
  `s_q x s_kv` tensor of weights;
* `"math"` spells the formula out, returns the weights, and is the
  reference the fused path is tested against.

[`choose_path`][mha.functional.choose_path] says which one runs and why. A query row that may attend
to nothing gets zero weights and a zero context on both paths (the plain
formula would divide 0 by 0).

Shape letters are those of [`mha`][mha].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from mha import _blockwise, _checks, masks
from mha._blockwise import Pattern

__all__ = ["Backend", "Dispatch", "choose_path", "attention_weights", "attention"]

Backend = Literal["auto", "fused", "math"]
BACKENDS: tuple[str, ...] = ("auto", "fused", "math")
SCORE_BUDGET_MIB = 64  # the soft-capped math path's scores per chunk of queries (mha._chunked)


@dataclass(frozen=True)
class Dispatch:
    """Which attention path runs, and why.

    Attributes:
        path: `"fused"` (`torch.nn.functional.scaled_dot_product_attention`)
            or `"math"` (the explicit formula).
        reason: one sentence saying why that path was chosen.
        layout: for a sliding window, documents or ALiBi, `"dense"` (one
            masked call) or `"blockwise"` (blocks of queries, each with the
            keys it can reach); `"dense"` otherwise.
    """

    path: Literal["fused", "math"]
    reason: str
    layout: Literal["dense", "blockwise"] = field(default="dense", repr=False)


def choose_path(
    *,
    need_weights: bool = False,
    backend: Backend = "auto",
    softcap: float | None = None,
    sinks: bool = False,
    dropout: bool = False,
) -> Dispatch:
    """Decide between the fused kernel and the explicit math path.

    Args:
        need_weights: whether the caller wants the attention weights back.
        backend: `"auto"`, or `"fused"`/`"math"` to force a path.
        softcap: the soft-cap of the scores, if any: no fused kernel applies
            it, so the math path runs, in chunks of queries.
        sinks: whether a sink logit per head takes part in the softmax: the
            fused path rescales the kernel's output by its log-sum-exp.
        dropout: whether dropout will be applied (in training): with sinks,
            the math path runs (the kernels do not return their dropout mask,
            which the sink's backward would need).

    Returns:
        The chosen path and the reason.

    Raises:
        ValueError: when `backend="fused"` is combined with `need_weights=True`
            (the fused kernels do not return weights), with `softcap`, or with
            sinks and dropout; or when `backend` is unknown.

    Examples:
        >>> from mha.functional import choose_path
        >>> choose_path(need_weights=True)
        Dispatch(path='math', reason='need_weights=True: the fused kernels do not return attention weights')
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    special = _special_path(backend, softcap, sinks, dropout)
    if special is not None:
        return special
    if backend == "math":
        return Dispatch("math", 'backend="math" was requested')
    if need_weights:
        if backend == "fused":
            raise ValueError(
                'backend="fused" cannot return attention weights; got need_weights=True (use backend="auto" or "math")'
            )
        return Dispatch("math", "need_weights=True: the fused kernels do not return attention weights")
    if backend == "fused":
        return _with_sinks(Dispatch("fused", 'backend="fused" was requested'), sinks)
    return _with_sinks(
        Dispatch(
            "fused",
            "no weights requested: torch.nn.functional.scaled_dot_product_attention "
            "picks its flash, memory-efficient or math kernel",
        ),
        sinks,
    )


def _special_path(backend: str, softcap: float | None, sinks: bool, dropout: bool) -> Dispatch | None:
    """The math path that soft-capping, or sinks with dropout, need; `None` when neither applies."""
    if softcap is not None:
        why = (
            f"softcap={softcap}: no fused kernel applies tanh to the scores; math path in query chunks "
            f"of at most {SCORE_BUDGET_MIB} MiB of scores each"
        )
    elif sinks and dropout:
        why = "sinks with dropout: the fused kernels do not return their dropout mask, which the sinks' backward needs"
    else:
        return None
    if backend == "fused":
        raise ValueError(f'backend="fused" cannot run this call: {why} (use backend="auto" or "math")')
    return Dispatch("math", why + ("" if sinks is False else "; the sink joins the softmax as one more column"))


def _with_sinks(dispatch: Dispatch, sinks: bool) -> Dispatch:
    if not sinks:
        return dispatch
    return Dispatch(
        dispatch.path,
        dispatch.reason + "; sinks: the kernel's output is rescaled by sigmoid(lse - sink), from its log-sum-exp",
    )


def _check_heads(query: object, key: object, value: object | None, mask: object | None) -> None:
    """Shapes of split heads: q (b, n_h, s_q, d), k (b, n_kv, s_kv, d), v (b, n_kv, s_kv, d_v)."""
    for name, t in (("query", query), ("key", key), ("value", value)):
        _checks.not_nested(name, t)
    query = _checks.floating("query", _checks.tensor("query", query))
    if query.ndim != 4:
        raise ValueError(f"query must have shape (b, n_h, s_q, d), got {_checks.sizes(query)}")
    b, n_h, s_q, d = query.shape
    key = _checks.shape("key", key, (b, None, None, d), lambda: f"(b={b}, n_kv, s_kv, d={d})")
    _checks.same_dtype("key", key, "query", query)
    n_kv, s_kv = key.shape[1], key.shape[2]
    if n_kv == 0 or n_h % n_kv:
        raise ValueError(f"query's heads n_h={n_h} must be a multiple of key's heads n_kv={n_kv}")
    if value is not None:
        value = _checks.shape("value", value, (b, n_kv, s_kv, None), lambda: f"(b={b}, n_kv={n_kv}, s_kv={s_kv}, d_v)")
        _checks.same_dtype("value", value, "query", query)
    for name, t in (("key", key), ("value", value)):
        if t is not None:
            _checks.same_device(name, t, "query", query.device)
    if mask is not None:
        mask = _checks.mask("mask", mask, (b, n_h, s_q, s_kv), "(b, n_h, s_q, s_kv)")
        _checks.same_device("mask", mask, "query", query.device)


def path_for(need_weights: bool, backend: str) -> str:
    """The path `choose_path` would pick, without checking its arguments (for internal callers).

    Soft-capping, and sinks with dropout, run on the math path whatever this
    says: [`attend`][mha.functional.attend] sends them there.
    """
    return "math" if need_weights or backend == "math" else "fused"


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half types overflow and lose mass in a softmax; accumulate in float32.
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _repeat_kv(x: Tensor, group: int) -> Tensor:
    """Repeat each key/value head `group` times: (b, n_kv, s, d) -> (b, n_kv * group, s, d)."""
    if group == 1:
        return x
    b, n_kv, s, d = x.shape
    return x[:, :, None].expand(b, n_kv, group, s, d).reshape(b, n_kv * group, s, d)


def _fold_groups(x: Tensor, group: int) -> Tensor:
    """`(b, n_kv * g, s, ...)` -> `(b, n_kv, g * s, ...)`: the `g` query heads of a key/value head as one sequence.

    Without a mask between them, those queries attend to the same keys, so a
    kernel can run them as one head's queries and read each key once.
    """
    return x.reshape(x.shape[0], x.shape[1] // group, group * x.shape[2], *x.shape[3:])


def _fit_mask(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
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


class _Mask(NamedTuple):
    """A call's mask, ready for either path (see `_prepare_mask`)."""

    mask: Tensor | None
    kernel_causal: bool
    keep: Tensor | None
    blocked: Tensor | None


def _prepare_mask(
    mask: Tensor | None,
    is_causal: bool,
    *,
    s_q: int,
    s_kv: int,
    scale: float | None,
    guard: bool,
    n_kv: int,
    device: torch.device,
) -> _Mask:
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
        return _Mask(None, True, None, None)
    # A causal mask alone lets the last query see every key: nothing to guard.
    guard = guard and mask is not None
    if is_causal:
        mask = masks._combine(mask, masks.causal(s_q, s_kv, device))
    if mask is None:
        return _Mask(None, False, None, None)
    if mask.ndim < 4:
        # (s_kv,), (s_q, s_kv), ... broadcast like a (b, n_h, s_q, s_kv) mask; the
        # fused kernel, the one-query grouped path and the row guard need all four.
        mask = mask.reshape((1,) * (4 - mask.ndim) + tuple(mask.shape))
    blocked = _blocked_columns(mask, n_kv) if guard else None
    if mask.dtype == torch.bool:
        keep = mask.any(dim=-1, keepdim=True)
        # A row that blocks everything is opened fully, so the softmax stays
        # finite in forward and backward; `keep` zeroes that row afterwards.
        return _Mask(mask | ~keep, False, keep, blocked)
    keep = ~torch.isneginf(mask).all(dim=-1, keepdim=True)
    return _Mask(mask.masked_fill(~keep, 0.0), False, keep, blocked)


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


def _zero_blocked(x: Tensor, blocked: Tensor | None) -> Tensor:
    """`x` `(b, n_kv, s_kv, d)` with zeros at `blocked` positions, so inf or NaN there cannot leak.

    Blocked keys get no weight, but the kernels still compute `q . k` (inf
    plus the mask's -inf is NaN) and `0 * v` (NaN for an infinite value).
    """
    return x if blocked is None else x.masked_fill(blocked, 0.0)


def attention_weights(
    query: Tensor,
    key: Tensor,
    *,
    mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
) -> Tensor:
    """Per-head attention weights `softmax(q kᵀ · scale + mask)`.

    Key heads are shared by `n_h // n_kv` query heads each (grouped-query
    attention). Rows that may attend to nothing are all zeros. For float16
    and bfloat16 inputs the softmax is computed in float32.

    Args:
        query: queries, split into heads.
        key: keys, split into heads.
        mask: bool (True = may attend) or additive float, broadcastable to
            `(b, n_h, s_q, s_kv)`.
        is_causal: also apply [`mha.masks.causal_mask`][mha.masks.causal_mask] (bottom-right aligned).
        scale: multiplies the scores; defaults to `1 / sqrt(d)`.

    Returns:
        Weights in the query's dtype; each row sums to 1 (or is all zeros).

    Shape:
        query: `(b, n_h, s_q, d)`; key: `(b, n_kv, s_kv, d)`;
        output: `(b, n_h, s_q, s_kv)`

    Examples:
        >>> import torch
        >>> from mha.functional import attention_weights
        >>> q = k = torch.eye(2).view(1, 1, 2, 2)
        >>> attention_weights(q, k, scale=0.0)
        tensor([[[[0.5000, 0.5000],
                  [0.5000, 0.5000]]]])
    """
    _check_heads(query, key, None, mask)
    _checks.flag("is_causal", is_causal)
    if scale is not None:
        _checks.finite_number("scale", scale)
    prepared = _prepare_mask(
        mask,
        is_causal,
        s_q=query.shape[-2],
        s_kv=key.shape[-2],
        scale=scale,
        guard=True,
        n_kv=key.shape[-3],
        device=query.device,
    )
    return _weights(query, _zero_blocked(key, prepared.blocked), prepared, scale)


def _weights(query: Tensor, key: Tensor, prepared: _Mask, scale: float | None) -> Tensor:
    """`attention_weights` without argument checks, for a prepared mask."""
    mask, keep = _fit_mask(prepared.mask, query.dtype), prepared.keep
    if prepared.kernel_causal:
        mask = masks.causal(query.shape[-2], key.shape[-2], query.device)
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    acc = _accumulation_dtype(query.dtype)
    key = _repeat_kv(key, query.shape[-3] // key.shape[-3])
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


def attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    dropout_p: float = 0.0,
    need_weights: bool = False,
    backend: Backend = "auto",
    sinks: Tensor | None = None,
    softcap: float | None = None,
    sliding_window: int | None = None,
    alibi: bool = False,
    document_ids: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Scaled dot-product attention over heads, on the path [`choose_path`][mha.functional.choose_path] picks.

    Queries are the last `s_q` of the `s_kv` positions (as for `is_causal`)
    for `sliding_window`, `alibi` and `document_ids`. With any of them, long
    sequences are computed blockwise, at a cost that follows the allowed
    keys (see the masks guide); `mha._blockwise.plan` says when.

    Args:
        query: queries, split into heads.
        key: keys, split into heads; `n_h` must be a multiple of `n_kv`.
        value: values, split into heads.
        mask: bool (True = may attend) or additive float, broadcastable to
            `(b, n_h, s_q, s_kv)`.
        is_causal: apply a causal mask aligned bottom-right (queries are the
            last `s_q` positions).
        scale: multiplies the scores; defaults to `1 / sqrt(d)`.
        dropout_p: dropout on the attention weights (pass 0 in eval).
        need_weights: also return the weights (forces the math path).
        backend: `"auto"`, `"fused"` or `"math"`.
        sinks: one learned logit per query head that joins each row's
            softmax and takes its share of the probability without a value
            (gpt-oss): the weights over the keys then sum to less than 1.
            On the fused path the kernel's output is rescaled by
            `sigmoid(lse - sink)`, from its log-sum-exp.
        softcap: `c > 0` bounds the scores to `c · tanh(scores / c)`, before
            the mask (Gemma 2). Runs on the math path, in chunks of queries.
        sliding_window: `w`: a query at position `p` sees keys `j` with
            `|p - j| < w`; with `is_causal`, `p - w < j <= p` (the last `w`
            positions, its own included, as in Mistral); see
            [`mha.masks.sliding_window_mask`][mha.masks.sliding_window_mask].
        alibi: add ALiBi's `-m_h · |p - j|` to the scores
            ([`mha.masks.alibi_bias`][mha.masks.alibi_bias]).
        document_ids: `(b, s_kv)` integers; a query sees the keys of its own
            document only (a run of equal ids), as
            [`mha.masks.document_mask`][mha.masks.document_mask].

    Returns:
        `(context, weights)`; `weights` is `None` unless requested. The
        returned weights are those that multiplied the values, i.e. after dropout.

    Raises:
        ValueError: on shapes that do not fit, a non-positive `softcap`, or
            `backend="fused"` with what it cannot do (see `choose_path`).
        TypeError: on a non-tensor input, a wrong dtype or a non-bool flag.

    Shape:
        query: `(b, n_h, s_q, d)`; key: `(b, n_kv, s_kv, d)`; value: `(b, n_kv, s_kv, d_v)`;
        sinks: `(n_h,)`; context: `(b, n_h, s_q, d_v)`; weights: `(b, n_h, s_q, s_kv)`

    Examples:
        >>> import torch
        >>> from mha.functional import attention
        >>> q, k, v = torch.randn(2, 4, 3, 8), torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8)
        >>> fused, _ = attention(q, k, v)
        >>> math, weights = attention(q, k, v, need_weights=True)
        >>> torch.allclose(fused, math, atol=1e-6), tuple(weights.shape)
        (True, (2, 4, 3, 5))

        A sink per head takes part of each row's weight:

        >>> sinks = torch.tensor([0.0, 1.0, 2.0, 3.0])
        >>> fused, _ = attention(q, k, v, sinks=sinks)
        >>> math, weights = attention(q, k, v, sinks=sinks, need_weights=True)
        >>> torch.allclose(fused, math, atol=1e-6), bool((weights.sum(-1) < 1).all())
        (True, True)
    """
    _check_heads(query, key, value, mask)
    for name, value_ in (("is_causal", is_causal), ("need_weights", need_weights)):
        _checks.flag(name, value_)
    if scale is not None:
        _checks.finite_number("scale", scale)
    _checks.probability("dropout_p", dropout_p)
    if sinks is not None:
        n_h = query.shape[1]
        sinks = _checks.shape("sinks", sinks, (n_h,), lambda: f"(n_h={n_h},)")
        _checks.floating("sinks", sinks)
        _checks.same_device("sinks", sinks, "query", query.device)
    if softcap is not None:
        softcap = _checks.positive_number("softcap", softcap)
    pattern = check_pattern(
        sliding_window, alibi, document_ids, query.shape[0], query.shape[-2], key.shape[-2], query.device
    )
    path = choose_path(
        need_weights=need_weights, backend=backend, softcap=softcap, sinks=sinks is not None, dropout=dropout_p > 0
    ).path
    context, weights = attend(
        query, key, value, mask, is_causal, scale, dropout_p, path, sinks=sinks, softcap=softcap, pattern=pattern
    )
    return context, (weights if need_weights else None)


def check_pattern(
    sliding_window: object, alibi: object, document_ids: object, b: int, s_q: int, s_kv: int, device: torch.device
) -> Pattern | None:
    """Check the options of a `mha._blockwise.Pattern`; `None` when none is set."""
    if sliding_window is not None:
        _checks.positive_int("sliding_window", sliding_window)
    _checks.flag("alibi", alibi)
    if document_ids is not None:
        document_ids = masks.check_document_ids("document_ids", document_ids)
        if document_ids.shape != (b, s_kv):
            raise ValueError(f"document_ids must have shape (b={b}, s_kv={s_kv}), got {_checks.sizes(document_ids)}")
        _checks.same_device("document_ids", document_ids, "query", device)
        if s_q > s_kv:
            raise ValueError(
                f"document_ids needs s_q <= s_kv (queries are the last positions), got s_q={s_q} and s_kv={s_kv}"
            )
    if sliding_window is None and not alibi and document_ids is None:
        return None
    return Pattern(sliding_window, alibi, document_ids)  # type: ignore[arg-type]


def attend_token(query: Tensor, key: Tensor, value: Tensor, scale: float | None) -> Tensor:
    """[`attend`][mha.functional.attend] for one query per head, without mask or dropout: a decoding step.

    The `g` query heads that share a key/value head are given to the kernel
    as `g` queries of that one head, so it reads each key once (as
    `attend` does for this case); and there is nothing else to decide.

    Shape:
        query: `(b, n_h, d)`; key, value: `(b, n_kv, s_kv, d)` with `s_kv >= 1`;
        output: `(b, n_h, d)`.
    """
    b, n_h, d = query.shape
    n_kv = key.shape[1]
    context = F.scaled_dot_product_attention(query.view(b, n_kv, n_h // n_kv, d), key, value, scale=scale)
    return context.view(b, n_h, value.shape[-1])


def attend(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    mask: Tensor | None,
    is_causal: bool,
    scale: float | None,
    dropout_p: float,
    path: str,
    *,
    guard: bool = True,
    sinks: Tensor | None = None,
    softcap: float | None = None,
    pattern: Pattern | None = None,
) -> tuple[Tensor, Tensor | None]:
    """[`attention`][mha.functional.attention] without argument checks, on a chosen path.

    For the package's modules, which check their arguments once where a call
    enters. Returns `(context, weights)`; `weights` is `None` on the fused path.
    `guard=False` skips zeroing the key/value positions the mask blocks for
    every query, for a caller that knows they hold finite numbers (the KV
    cache's empty and padding slots hold zeros).
    `softcap`, or `sinks` with `dropout_p > 0`, run on the math path in
    chunks of queries whatever `path` says (no fused kernel does them);
    `sinks` alone run fused, rescaled by the kernel's log-sum-exp.
    A `pattern` (window, documents, ALiBi) runs blockwise or as one dense
    mask, as `mha._blockwise.plan` chooses.
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
            return _blockwise.attend(
                query, key, value, mask, is_causal, scale, dropout_p, pattern, attend, **options
            ), None
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
            mask,
            is_causal,
            scale,
            dropout_p,
            softcap=softcap,
            sinks=sinks,
            need_weights=path == "math",
            guard=guard,
        )
    prepared = _prepare_mask(
        mask, is_causal, s_q=s_q, s_kv=s_kv, scale=scale, guard=guard, n_kv=key.shape[-3], device=query.device
    )
    if prepared.blocked is not None:
        key, value = _zero_blocked(key, prepared.blocked), _zero_blocked(value, prepared.blocked)
    if sinks is not None:
        return _attend_with_sinks(query, key, value, prepared, scale, sinks), None
    mask, kernel_causal, keep = prepared.mask, prepared.kernel_causal, prepared.keep
    if path == "math":
        weights = _weights(query, key, prepared, scale)
        if dropout_p > 0.0:
            weights = F.dropout(weights, p=dropout_p)
        context = weights @ _repeat_kv(value, query.shape[-3] // value.shape[-3])
        # A row with nothing to attend to is zero even next to an inf value (0 * inf).
        return (context if keep is None else context.masked_fill(~keep, 0.0)), weights

    # Head counts may be symbolic under torch.compile(dynamic=True); the kernel
    # wants a plain bool, which a Python branch gives (Dynamo guards on it).
    enable_gqa = True if query.shape[-3] != key.shape[-3] else False  # noqa: SIM210
    if mask is not None and mask.dtype != torch.bool:
        mask = _fit_mask(mask, query.dtype)
        mask = None if mask is None else mask.to(query.dtype)  # the kernel takes a bool mask or the query's dtype
    group = query.shape[-3] // key.shape[-3]
    if group > 1 and s_q == 1 and not kernel_causal and (mask is None or mask.shape[-3] == 1):
        # One query per head, as in decoding: the g query heads that share a
        # key/value head are g queries of that one head. The kernel then reads
        # each key once, without expanding them per head (seen: 2.2x faster
        # than enable_gqa at 4,096 float32 keys on CPU).
        context = F.scaled_dot_product_attention(
            _fold_groups(query, group),
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


def _attend_with_sinks(
    query: Tensor, key: Tensor, value: Tensor, prepared: _Mask, scale: float | None, sinks: Tensor
) -> Tensor:
    """The fused path with a sink logit per head: the kernel's output rescaled by its log-sum-exp."""
    from mha import _sinks  # imports this module

    mask, keep = prepared.mask, prepared.keep
    if mask is not None:
        # The kernels that return their log-sum-exp take an additive mask in the query's dtype.
        mask = masks._additive(mask, query.dtype) if mask.dtype == torch.bool else _fit_mask(mask, query.dtype)
        mask = None if mask is None else mask.to(query.dtype)
    context = _sinks.fused_with_sinks(query, key, value, sinks, mask, prepared.kernel_causal, scale)
    return context if keep is None else context.masked_fill(~keep, 0.0)
