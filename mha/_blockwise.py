"""Sliding windows, packed documents and ALiBi, at a cost that follows the work.

A window of `w` over `s` positions, or documents packed into one sequence,
leave most of an `s x s` score matrix blocked. A dense mask makes the
kernel visit every entry anyway (and is itself `s²` numbers; ALiBi's bias
`n_h · s²`). Here the queries are cut into blocks, and each block is given
to the fused kernel with the keys it can reach only, under a small mask
built for that block: time and memory grow with `s · w` for a window and
with `Σ len²` for documents.

[`plan`][mha._blockwise.plan] chooses between this and one dense mask:
the dense call is faster for short sequences, and the only one that
`torch.compile` and `torch.export` can trace for every length in one graph
(the blocks are a Python loop over the length). Shape letters are those of
[`mha`][mha].
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from mha import masks

__all__ = ["Pattern", "Plan", "plan", "dense_mask", "position_mask", "attend"]

# The shortest key length at which blocks pay off on CPU: below it, one
# dense call is faster than several small ones (see "Cost" in the masks
# guide, measured with benchmarks/local_attention.py). Tests lower it.
MIN_LENGTH = 2048
# Query block size for windows and documents; ALiBi without a window uses
# smaller blocks so that a block's bias (n_h, block, s_kv) stays small.
BLOCK = 256
BIAS_ELEMENTS = 1 << 22  # the most numbers one block's ALiBi bias may hold (16 MiB in float32)

Kernel = Callable[..., tuple[Tensor, "Tensor | None"]]


@dataclass(frozen=True)
class Pattern:
    """Which keys a query may see, besides a mask and `is_causal`.

    Attributes:
        window: `w`: keys less than `w` positions away (with `is_causal`, the
            last `w` positions including the query's own), or `None`.
        alibi: add `-m_h · |p - j|` to the scores (slopes of
            [`mha.masks.alibi_slopes`][mha.masks.alibi_slopes]).
        documents: `(b, s_kv)` ids of each key position's document (runs of
            equal ids), or `None`. Queries are the last `s_q` positions.
    """

    window: int | None = None
    alibi: bool = False
    documents: Tensor | None = None


@dataclass(frozen=True)
class Plan:
    """How a pattern is computed: `"dense"` (one masked call) or `"blockwise"`, and why."""

    layout: Literal["dense", "blockwise"]
    reason: str


def plan(pattern: Pattern, s_q: int, s_kv: int, *, is_causal: bool, path: str) -> Plan:
    """Choose between one dense masked call and blocks of queries.

    Examples:
        >>> from mha._blockwise import Pattern, plan
        >>> plan(Pattern(window=512), 16384, 16384, is_causal=True, path="fused").layout
        'blockwise'
        >>> plan(Pattern(window=512), 1024, 1024, is_causal=True, path="fused").reason
        'dense: at s_kv=1024 < 2048 one masked call is faster than blocks'
    """
    if path != "fused":
        return Plan("dense", "dense: the math path computes every weight (s_q x s_kv) anyway")
    if torch.compiler.is_compiling():
        return Plan("dense", "dense: under torch.compile/export one masked call traces every length in one graph")
    if s_q > s_kv:
        return Plan("dense", f"dense: s_q={s_q} > s_kv={s_kv} puts queries before the first key")
    if s_kv < MIN_LENGTH:
        return Plan("dense", f"dense: at s_kv={s_kv} < {MIN_LENGTH} one masked call is faster than blocks")
    if pattern.window is not None and pattern.documents is None and not pattern.alibi:
        reach = BLOCK + pattern.window * (1 if is_causal else 2)  # keys one block of queries can reach
        if 2 * reach > s_kv:
            return Plan(
                "dense", f"dense: sliding_window={pattern.window} reaches most of s_kv={s_kv}; blocks would save little"
            )
    what = [
        f"sliding_window={pattern.window}" if pattern.window is not None else "",
        "documents" if pattern.documents is not None else "",
        "alibi" if pattern.alibi else "",
    ]
    return Plan(
        "blockwise",
        f"blockwise: {' + '.join(w for w in what if w)} at s_kv={s_kv} >= {MIN_LENGTH}: each block of "
        "queries goes to the fused kernel with the keys it can reach",
    )


def position_mask(
    pattern: Pattern,
    q_pos: Tensor,
    k_pos: Tensor,
    *,
    is_causal: bool,
    num_heads: int,
    dtype: torch.dtype,
    q_doc: Tensor | None = None,
    k_doc: Tensor | None = None,
) -> Tensor | None:
    """The mask of `pattern` (and `is_causal`) between query and key positions.

    Args:
        q_pos: `(b or 1, s_q)` positions of the queries.
        k_pos: `(b or 1, s_kv)` positions of the keys.
        q_doc, k_doc: document run indices, like the positions; `None` for no documents.
        dtype: of the ALiBi bias (float32 or wider: half types would round the distances).

    Returns:
        A bool mask, or a float one with ALiBi, `(b or 1, 1 or n_h, s_q, s_kv)`.
    """
    distance = q_pos[:, None, :, None] - k_pos[:, None, None, :]  # (b|1, 1, s_q, s_kv)
    if pattern.alibi:
        distance = distance.to(dtype)  # one conversion here rather than in every product below
    allowed: Tensor | None = None
    if is_causal:
        allowed = distance >= 0
    if pattern.window is not None:
        # With is_causal, 0 <= p - j < w: the last w positions, the query's own included.
        band = distance < pattern.window if is_causal else distance.abs() < pattern.window
        allowed = band if allowed is None else allowed & band
    if q_doc is not None and k_doc is not None:
        same = q_doc[:, None, :, None] == k_doc[:, None, None, :]
        allowed = same if allowed is None else allowed & same
    if not pattern.alibi:
        return allowed
    slopes = masks.slopes(num_heads, q_pos.device).to(dtype)[:, None, None]  # (n_h, 1, 1)
    bias = slopes * -distance.abs()  # (b|1, n_h, s_q, s_kv); -distance: no -0.0
    return bias if allowed is None else bias.masked_fill(~allowed, float("-inf"))


def _mask_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def dense_mask(
    pattern: Pattern, s_q: int, s_kv: int, *, is_causal: bool, num_heads: int, dtype: torch.dtype,
    device: torch.device,
) -> Tensor | None:
    """[`position_mask`][mha._blockwise.position_mask] for queries at the last `s_q` of `s_kv` positions."""
    k_pos = torch.arange(s_kv, device=device)[None]  # (1, s_kv)
    q_pos = torch.arange(s_kv - s_q, s_kv, device=device)[None]  # (1, s_q), negative when s_q > s_kv
    docs = None if pattern.documents is None else masks.runs(pattern.documents)  # (b, s_kv)
    return position_mask(
        pattern, q_pos, k_pos, is_causal=is_causal, num_heads=num_heads, dtype=_mask_dtype(dtype),
        q_doc=None if docs is None else docs[:, s_kv - s_q :], k_doc=docs,
    )


def _spans(pattern: Pattern, start: int, end: int, lo: int, hi: int, is_causal: bool, block: int) -> Iterator[
    tuple[int, int, int, int]
]:
    """Query blocks `[a, e)` of positions `[start, end)`, each with the keys `[ka, ke)` it can reach in `[lo, hi)`."""
    w = pattern.window
    for a in range(start, end, block):
        e = min(a + block, end)
        ka = lo if w is None else max(lo, a - w + 1)
        if is_causal:
            ke = e
        else:
            ke = hi if w is None else min(hi, e - 1 + w)
        yield a, e, ka, min(ke, hi)


def _block_size(pattern: Pattern, num_heads: int, s_kv: int) -> int:
    if pattern.window is None and not pattern.alibi:
        return s_kv  # documents only: each one whole, in one call
    if pattern.alibi and pattern.window is None:
        # A block's bias is (n_h, block, keys): keep it under BIAS_ELEMENTS.
        return max(16, min(BLOCK, BIAS_ELEMENTS // (num_heads * s_kv)))
    return BLOCK


def _slice(mask: Tensor | None, rows: slice, qa: int, qe: int, ka: int, ke: int) -> Tensor | None:
    """The part of a 4-D mask for batch `rows`, queries `[qa, qe)` and keys `[ka, ke)` (broadcast dims kept)."""
    if mask is None:
        return None
    if mask.shape[0] > 1:
        mask = mask[rows]
    if mask.shape[2] > 1:
        mask = mask[:, :, qa:qe]
    if mask.shape[3] > 1:
        mask = mask[:, :, :, ka:ke]
    return mask


def attend(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    mask: Tensor | None,
    is_causal: bool,
    scale: float | None,
    dropout_p: float,
    pattern: Pattern,
    kernel: Kernel,
    **options: object,
) -> Tensor:
    """The context of `pattern`, one block of queries at a time.

    `kernel(q, k, v, mask, is_causal, scale, dropout_p, path)` is
    [`mha.functional.attend`][mha.functional.attend]: each block runs on the fused
    path with its own small mask, and a row with no allowed key gets zeros
    there. `mask` is the caller's, 4-D or `None`. `options` go to every
    block's kernel call: per-row options (a sink logit, soft-capping) stay
    exact, since each query's row lies whole in one block.

    Shape:
        query: `(b, n_h, s_q, d)`; key, value: `(b, n_kv, s_kv, d)`;
        output: `(b, n_h, s_q, d_v)`.
    """
    b, n_h, s_q = query.shape[:3]
    s_kv = key.shape[2]
    offset = s_kv - s_q  # query i sits at position i + offset
    block = _block_size(pattern, n_h, s_kv)
    dtype = _mask_dtype(query.dtype)
    out = query.new_empty(b, n_h, s_q, value.shape[-1])
    plain = pattern.window is None and not pattern.alibi  # documents only
    if pattern.documents is None:
        groups: list[tuple[slice, int, int]] = [(slice(0, b), 0, s_kv)]
    else:
        groups = list(_documents(pattern.documents))
    # Consecutive blocks of the same shape and offset (a window's) share one mask: keep the
    # last one only, so memory stays one block's (ALiBi's blocks all differ).
    local_masks: dict[tuple[int, int, int], Tensor | None] = {}
    group = n_h // key.shape[1]
    for rows, lo, hi in groups:
        first = max(lo, offset)  # the document's first query position
        for a, e, ka, ke in _spans(pattern, first, hi, lo, hi, is_causal, block):
            user = _slice(mask, rows, a - offset, e - offset, ka, ke)
            q_blk, k_blk, v_blk = query[rows, :, a - offset : e - offset], key[rows, :, ka:ke], value[rows, :, ka:ke]
            if plain and user is None and a == ka:
                # A whole document from its start, nothing else to mask: the kernel's
                # own causal flag (or none) is exact and skips the blocked half.
                local, causal = None, is_causal
            else:
                geometry = (e - a, ke - ka, a - ka)
                if geometry not in local_masks:
                    local_masks.clear()
                    q_pos = torch.arange(a, e, device=query.device)[None]
                    k_pos = torch.arange(ka, ke, device=query.device)[None]
                    # Within one document no document mask is needed.
                    local_masks[geometry] = position_mask(
                        Pattern(pattern.window, pattern.alibi), q_pos, k_pos, is_causal=is_causal, num_heads=n_h,
                        dtype=dtype,
                    )
                local, causal = local_masks[geometry], False
            if user is None and not options:
                # Each query's own position is among its keys, so no row is empty:
                # straight to the kernel, without the guard for empty rows.
                if local is not None and local.dtype != torch.bool:
                    local = local.to(query.dtype)  # the kernel takes a float mask in the query's dtype
                context = F.scaled_dot_product_attention(
                    q_blk, k_blk, v_blk, attn_mask=local, dropout_p=dropout_p, is_causal=causal, scale=scale,
                    enable_gqa=group > 1,
                )
            else:
                block_mask = masks._combine(local, user)  # ALiBi's float32 first
                context, _ = kernel(q_blk, k_blk, v_blk, block_mask, causal, scale, dropout_p, "fused", **options)
            out[rows, :, a - offset : e - offset] = context
    return out


def _documents(documents: Tensor) -> Iterator[tuple[slice, int, int]]:
    """`(rows, start, end)` for each document of each batch row (read on the host: eager only)."""
    ids = documents.tolist()
    for r, row in enumerate(ids):
        start = 0
        for i in range(1, len(row) + 1):
            if i == len(row) or row[i] != row[i - 1]:
                yield slice(r, r + 1), start, i
                start = i
