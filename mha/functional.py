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
from typing import Literal

import torch
from torch import Tensor

from mha import _blockwise, _checks, _kernels, masks

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
    prepared = _kernels.prepare_mask(
        mask,
        is_causal,
        s_q=query.shape[-2],
        s_kv=key.shape[-2],
        scale=scale,
        guard=True,
        n_kv=key.shape[-3],
        device=query.device,
    )
    return _kernels.prepared_weights(query, _kernels.zero_blocked(key, prepared.blocked), prepared, scale)


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
    b, s_q, s_kv = query.shape[0], query.shape[-2], key.shape[-2]
    pattern = _check_pattern(sliding_window, alibi, document_ids, b=b, s_q=s_q, s_kv=s_kv, device=query.device)
    path = choose_path(
        need_weights=need_weights, backend=backend, softcap=softcap, sinks=sinks is not None, dropout=dropout_p > 0
    ).path
    context, weights = _kernels.attend_unchecked(
        query,
        key,
        value,
        mask=mask,
        is_causal=is_causal,
        scale=scale,
        dropout_p=dropout_p,
        path=path,
        sinks=sinks,
        softcap=softcap,
        pattern=pattern,
        need_weights=need_weights,
    )
    return context, (weights if need_weights else None)


def _check_pattern(
    sliding_window: object, alibi: object, document_ids: object, *, b: int, s_q: int, s_kv: int, device: torch.device
) -> _blockwise.Pattern | None:
    """Check the options of a `mha._blockwise.Pattern`; `None` when none is set."""
    if sliding_window is not None:
        _checks.positive_int("sliding_window", sliding_window)
    _checks.flag("alibi", alibi)
    if document_ids is not None:
        document_ids = masks._check_document_ids("document_ids", document_ids)
        if document_ids.shape != (b, s_kv):
            raise ValueError(f"document_ids must have shape (b={b}, s_kv={s_kv}), got {_checks.sizes(document_ids)}")
        _checks.same_device("document_ids", document_ids, "query", device)
        if s_q > s_kv:
            raise ValueError(
                f"document_ids needs s_q <= s_kv (queries are the last positions), got s_q={s_q} and s_kv={s_kv}"
            )
    if sliding_window is None and not alibi and document_ids is None:
        return None
    return _blockwise.Pattern(sliding_window, alibi, document_ids)  # type: ignore[arg-type]
