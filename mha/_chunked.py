r"""The math path in query chunks, for what no fused kernel computes: soft-capped scores, sinks with dropout.

Soft-capping (Gemma 2) bounds each score before the mask and the softmax:

$$
s \mapsto c \tanh(s / c).
$$

No fused kernel of `torch.nn.functional.scaled_dot_product_attention`
applies a function to the scores, so the formula is spelled out; to keep its
memory bounded at long sequences the queries are taken a chunk at a time, each
chunk's scores `(b, n_h, rows, s_kv)` within [`SCORE_BUDGET`][mha._chunked.SCORE_BUDGET]
bytes. Under `torch.compile` one chunk covers every query (a Python loop over
symbolic sizes would pin them); in training autograd keeps each chunk's weights
for the backward, as the unchunked math path does.

Shape letters are those of [`mha`][mha]; `d_v` is the value head width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mha import _kernels, functional, masks
from mha._sinks import sink_softmax

__all__: list[str] = []  # internal: used by mha.functional

# Bytes of scores per chunk: 256 rows of 16 heads x 4,096 float32 keys.
SCORE_BUDGET = functional.SCORE_BUDGET_MIB * 2**20


def _tracing() -> bool:
    """Under `torch.compile` or `torch.export` (whose default, non-strict mode Dynamo does not see)."""
    # torch.compiler.is_exporting is torch >= 2.6; before it, export traced strictly, through Dynamo.
    exporting = getattr(torch.compiler, "is_exporting", None)
    return torch.compiler.is_compiling() or (exporting is not None and exporting())


def chunk_rows(b: int, n_h: int, s_q: int, s_kv: int, dtype: torch.dtype) -> int:
    """How many query rows one chunk takes, so its scores fit in `SCORE_BUDGET` bytes."""
    if _tracing():
        return s_q
    itemsize = torch.empty((), dtype=_kernels.accumulation_dtype(dtype)).element_size()
    return max(1, min(s_q, SCORE_BUDGET // max(1, b * n_h * s_kv * itemsize)))


def attend(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    mask: Tensor | None,
    is_causal: bool,
    scale: float | None,
    dropout_p: float,
    softcap: float | None,
    sinks: Tensor | None,
    need_weights: bool,
    guard: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """`mha._kernels.attend_unchecked` on the math path, one chunk of queries at a time.

    `guard=False` skips zeroing the key/value positions the mask blocks for
    every query of the call (as `mha._kernels.attend_unchecked`'s `guard`).
    Returns `(context, weights)`; `weights` (all rows) only when `need_weights`.
    """
    b, n_h, s_q = query.shape[:3]
    s_kv = key.shape[-2]
    if mask is not None and mask.ndim < 4:
        mask = mask.reshape((1,) * (4 - mask.ndim) + tuple(mask.shape))
    rows = chunk_rows(b, n_h, s_q, s_kv, query.dtype)
    if guard and mask is not None:
        # Once for the whole call, not per chunk: a position blocked for every query
        # holds anything (inf, NaN) and must not reach any row's scores or context.
        blocked = _blocked_columns(mask, is_causal, s_q, s_kv, key.shape[1], rows)
        key, value = _kernels.zero_blocked(key, blocked), _kernels.zero_blocked(value, blocked)
    if _tracing():
        # One chunk: a loop over symbolic sizes would pin them in the graph.
        context, w = _rows(query, key, value, mask, is_causal, 0, s_q, scale, dropout_p, softcap, sinks)
        return context, (w if need_weights else None)
    contexts, weights = [], []
    for start in range(0, s_q, rows):
        stop = min(start + rows, s_q)
        context, w = _rows(query, key, value, mask, is_causal, start, stop, scale, dropout_p, softcap, sinks)
        contexts.append(context)
        if need_weights:
            weights.append(w)
    if len(contexts) == 1:
        return contexts[0], (weights[0] if need_weights else None)
    return torch.cat(contexts, dim=2), (torch.cat(weights, dim=2) if need_weights else None)


def _blocked_columns(mask: Tensor, is_causal: bool, s_q: int, s_kv: int, n_kv: int, rows: int) -> Tensor:
    """Key/value positions no query of the call may see, `(b|1, n_kv|1, s_kv, 1)` bool, a chunk of rows at a time.

    `mask` is 4-D; with `is_causal` its chunks are combined with the causal
    mask's, so memory stays one chunk's mask.
    """
    step = s_q if _tracing() else rows
    seen = torch.zeros((), dtype=torch.bool, device=mask.device)
    for start in range(0, s_q, step):
        chunk = _chunk_mask(mask, is_causal, start, min(start + step, s_q), s_q, s_kv, mask.device)
        allowed = chunk if chunk.dtype == torch.bool else ~torch.isneginf(chunk)
        seen = seen | allowed.any(dim=-2)  # (b|1, n_h|1, s_kv)
    if seen.shape[1] != 1 and seen.shape[1] != n_kv:
        seen = seen.unflatten(1, (n_kv, -1)).any(dim=2)  # the query heads of a group share their keys
    return ~seen.unsqueeze(-1)


def _chunk_mask(
    mask: Tensor, is_causal: bool, start: int, stop: int, s_q: int, s_kv: int, device: torch.device
) -> Tensor:
    """The rows `start:stop` of a 4-D mask, combined with those of the causal mask."""
    chunk_mask = mask if mask.shape[-2] == 1 else mask[..., start:stop, :]
    combined = masks._combine(chunk_mask, _causal_rows(start, stop, s_q, s_kv, device)) if is_causal else None
    return chunk_mask if combined is None else combined


def _causal_rows(start: int, stop: int, s_q: int, s_kv: int, device: torch.device) -> Tensor:
    """Rows `start:stop` of the bottom-right causal mask: query i is position i + s_kv - s_q among the keys."""
    return torch.arange(s_kv, device=device) <= (torch.arange(start, stop, device=device)[:, None] + (s_kv - s_q))


def _rows(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    mask: Tensor | None,
    is_causal: bool,
    start: int,
    stop: int,
    scale: float | None,
    dropout_p: float,
    softcap: float | None,
    sinks: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """`_chunk` for query rows `start:stop`, with their rows of the mask and of the causal mask."""
    s_q, s_kv = query.shape[2], key.shape[2]
    if mask is not None:
        chunk_mask: Tensor | None = _chunk_mask(mask, is_causal, start, stop, s_q, s_kv, query.device)
    else:
        chunk_mask = _causal_rows(start, stop, s_q, s_kv, query.device) if is_causal else None
    rows = query if start == 0 and stop == s_q else query[:, :, start:stop]  # no slice to trace when compiled
    return _chunk(rows, key, value, chunk_mask, scale, dropout_p, softcap, sinks)


def _chunk(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    mask: Tensor | None,
    scale: float | None,
    dropout_p: float,
    softcap: float | None,
    sinks: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """Context and weights of some query rows, all keys: `(b, n_h, rows, d_v)` and `(b, n_h, rows, s_kv)`."""
    b, n_h, rows, d = query.shape
    n_kv, s_kv = key.shape[1], key.shape[2]
    group = n_h // n_kv
    prepared = _kernels.prepare_mask(
        mask, False, s_q=rows, s_kv=s_kv, scale=scale, guard=False, n_kv=n_kv, device=query.device
    )
    mask, keep = _kernels.fit_mask(prepared.mask, query.dtype), prepared.keep
    acc = _kernels.accumulation_dtype(query.dtype)
    scale = d**-0.5 if scale is None else scale
    if _tracing():
        # Folding the heads' rows together traces into size guards that pin the length
        # (seen with torch.export): under tracing the keys are repeated per head instead.
        key, value = _kernels.repeat_kv(key, group), _kernels.repeat_kv(value, group)
        group = 1
    # The g query heads of a key/value head as one longer sequence: keys are never copied per head.
    folded = _kernels.fold_groups(query.to(acc), group)  # (b, n_kv, g * rows, d)
    scores = (folded @ key.to(acc).transpose(-2, -1)).reshape(b, n_h, rows, s_kv) * scale
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap  # before the mask, as Gemma 2 does
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.to(acc)
    weights = torch.softmax(scores, dim=-1) if sinks is None else sink_softmax(scores, sinks)
    if keep is not None:
        weights = weights * keep
    weights = weights.to(query.dtype)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    context = _kernels.fold_groups(weights, group) @ value  # (b, n_kv, g * rows, d_v)
    return context.reshape(b, n_h, rows, value.shape[-1]), weights
