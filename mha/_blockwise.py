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
# Documents of different lengths are padded into one batch of documents (one kernel call) while
# count * longest² stays within PAD_RATIO * Σ len²: a batched call runs faster than the same
# documents one call each (1.6x at 16 x 1,024, benchmarks/local_attention.py), which repays
# that much padding; beyond it the padded work costs more than the calls it saves.
PAD_RATIO = 1.25
# Causal ALiBi alone, without autograd: blocks of ALIBI_BLOCK queries, each against the keys
# before it (no mask) and its own square (the kernel's causal flag), merged by log-sum-exp
# (see _alibi_merged). Each run of ALIBI_CENTRE queries gets its own centre, so the added
# scores stay as small as in blocks of that size (the rounding bound of _alibi_features).
# Each centre is one more feature, and the kernel's time grows with the width (d = 64: 68
# with the 4 centres of a block of 1024, 80 with the 16 of 4096); smaller blocks cost more
# calls and merges. Medians of 5 interleaved calls at 16k on a quiet 2-core machine, against
# plain causal: blocks of 4096 1.22x (float32) and 1.23x (bfloat16), 2048 1.23x and 1.16x,
# 1024 1.18x and 1.12x; at 4k all three within 1.21-1.28x.
ALIBI_BLOCK = 1024
ALIBI_CENTRE = 256

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
    how = "each block of queries goes to the fused kernel with the keys it can reach"
    if pattern.alibi and is_causal:
        how += ", ALiBi as one more query/key feature (no bias tensor)"
        if pattern.window is None and pattern.documents is None:
            how += (
                f"; without autograd, blocks of {ALIBI_BLOCK} queries see the keys before them unmasked"
                " and their own square causal, merged by log-sum-exp (no mask)"
            )
    elif pattern.alibi:
        how += ", with its block of the ALiBi bias"
    if pattern.documents is not None and pattern.window is None and not pattern.alibi:
        how = "documents of similar length padded into one batch of documents, one fused call per batch"
    return Plan("blockwise", f"blockwise: {' + '.join(w for w in what if w)} at s_kv={s_kv} >= {MIN_LENGTH}: {how}")


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
    slopes = masks._slopes(num_heads, q_pos.device).to(dtype)[:, None, None]  # (n_h, 1, 1)
    bias = slopes * -distance.abs()  # (b|1, n_h, s_q, s_kv); -distance: no -0.0
    return bias if allowed is None else bias.masked_fill(~allowed, float("-inf"))


def _mask_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def dense_mask(
    pattern: Pattern,
    s_q: int,
    s_kv: int,
    *,
    is_causal: bool,
    num_heads: int,
    dtype: torch.dtype,
    device: torch.device,
) -> Tensor | None:
    """[`position_mask`][mha._blockwise.position_mask] for queries at the last `s_q` of `s_kv` positions."""
    k_pos = torch.arange(s_kv, device=device)[None]  # (1, s_kv)
    q_pos = torch.arange(s_kv - s_q, s_kv, device=device)[None]  # (1, s_q), negative when s_q > s_kv
    docs = None if pattern.documents is None else masks._runs(pattern.documents)  # (b, s_kv)
    return position_mask(
        pattern,
        q_pos,
        k_pos,
        is_causal=is_causal,
        num_heads=num_heads,
        dtype=_mask_dtype(dtype),
        q_doc=None if docs is None else docs[:, s_kv - s_q :],
        k_doc=docs,
    )


def _spans(
    pattern: Pattern, start: int, end: int, lo: int, hi: int, is_causal: bool, block: int
) -> Iterator[tuple[int, int, int, int]]:
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


def _block_size(pattern: Pattern, num_heads: int, s_kv: int, features: bool) -> int:
    if pattern.window is None and not pattern.alibi:
        return s_kv  # documents only: each one whole, in one call
    if pattern.alibi and pattern.window is None and not features:
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

    `kernel(q, k, v, mask=..., is_causal=..., scale=..., dropout_p=..., path=...)` is
    `mha._kernels.attend_unchecked`: each block runs on the fused
    path with its own small mask, and a row with no allowed key gets zeros
    there. `mask` is the caller's, 4-D or `None`. `options` go to every
    block's kernel call: per-row options (a sink logit, soft-capping) stay
    exact, since each query's row lies whole in one block.

    Causal ALiBi adds no bias: see [`_alibi_features`][mha._blockwise._alibi_features].
    Documents alone, without a caller's mask or options, go to the kernel
    as padded batches of documents ([`_padded_documents`][mha._blockwise._padded_documents]).

    Shape:
        query: `(b, n_h, s_q, d)`; key, value: `(b, n_kv, s_kv, d)`;
        output: `(b, n_h, s_q, d_v)`.
    """
    b, n_h, s_q = query.shape[:3]
    s_kv = key.shape[2]
    offset = s_kv - s_q  # query i sits at position i + offset
    # Causal ALiBi as features; soft-capping must see the scores without the bias, so not with it.
    features = pattern.alibi and is_causal and "softcap" not in options
    block = _block_size(pattern, n_h, s_kv, features)
    dtype = _mask_dtype(query.dtype)
    out = query.new_empty(b, n_h, s_q, value.shape[-1])
    plain = pattern.window is None and not pattern.alibi  # documents only
    if pattern.documents is None:
        groups: list[tuple[slice, int, int]] = [(slice(0, b), 0, s_kv)]
    else:
        groups = list(_documents(pattern.documents))
        if plain and mask is None and not options:
            groups = _padded_documents(query, key, value, out, groups, offset, is_causal, scale, dropout_p)
    if scale is None:
        scale = query.shape[-1] ** -0.5  # the features below widen d: the scale must not follow
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
    if features and pattern.window is None and pattern.documents is None and mask is None and not options:
        if not grad and dropout_p == 0.0:
            _alibi_merged(query, key, value, out, offset=offset, scale=scale)
            return out
    # Consecutive blocks of the same shape and offset (a window's) share one mask: keep the
    # last one only, so memory stays one block's (ALiBi's blocks all differ).
    local_masks: dict[tuple[int, int, int], Tensor | None] = {}
    additive: dict[tuple[int, int, int], Tensor] = {}
    group = n_h // key.shape[1]
    reuse = None
    if features and not grad:
        # Without autograd, the features are written once into whole-length copies, the keys' column in
        # place for each block: no per-block copies of the keys (seen: half the time of a 4k call).
        reuse = _AlibiBuffers(query, key, value, scale=scale, row_constant="sinks" in options)
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
                if geometry not in local_masks and features and pattern.window is None:
                    local_masks.clear()  # causal only: a triangle, cheaper than position_mask's distances
                    local_masks[geometry] = torch.ones(e - a, ke - ka, dtype=torch.bool, device=query.device).tril(
                        a - ka
                    )
                elif geometry not in local_masks:
                    local_masks.clear()
                    q_pos = torch.arange(a, e, device=query.device)[None]
                    k_pos = torch.arange(ka, ke, device=query.device)[None]
                    # Within one document no document mask is needed.
                    local_masks[geometry] = position_mask(
                        Pattern(pattern.window, pattern.alibi and not features),
                        q_pos,
                        k_pos,
                        is_causal=is_causal,
                        num_heads=n_h,
                        dtype=dtype,
                    )
                local, causal = local_masks[geometry], False
            if features and reuse is not None:
                q_blk, k_blk, v_blk = reuse.block(rows, a, e, ka, ke, offset)
            elif features:
                q_blk, k_blk, v_blk = _alibi_features(
                    q_blk, k_blk, v_blk, a, ka, scale=scale, row_constant="sinks" in options
                )
            if user is None and not options:
                # Each query's own position is among its keys, so no row is empty:
                # straight to the kernel, without the guard for empty rows.
                if local is not None and geometry not in additive:
                    # The kernel takes an additive mask in the query's dtype: convert once per
                    # geometry (a window's blocks share one), not in every call.
                    additive.clear()
                    additive[geometry] = (
                        torch.zeros(local.shape, dtype=query.dtype, device=query.device).masked_fill(
                            ~local, float("-inf")
                        )
                        if local.dtype == torch.bool
                        else local.to(query.dtype)
                    )
                if local is not None:
                    local = additive[geometry]
                context = F.scaled_dot_product_attention(
                    q_blk,
                    k_blk,
                    v_blk,
                    attn_mask=local,
                    dropout_p=dropout_p,
                    is_causal=causal,
                    scale=scale,
                    enable_gqa=group > 1,
                )
            else:
                block_mask = masks._combine(local, user)  # ALiBi's float32 first
                context, _ = kernel(
                    q_blk,
                    k_blk,
                    v_blk,
                    mask=block_mask,
                    is_causal=causal,
                    scale=scale,
                    dropout_p=dropout_p,
                    path="fused",
                    **options,
                )
            out[rows, :, a - offset : e - offset] = context[..., : out.shape[-1]]
    return out


def _alibi_features(
    q: Tensor, k: Tensor, v: Tensor, a: int, ka: int, *, scale: float, row_constant: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Causal ALiBi for queries at positions `a, a+1, ...` and keys at `ka, ka+1, ...`, with no bias tensor.

    Under a causal mask ALiBi's `-m_h · (p - j)` is `m_h · j` plus a
    constant per row, which softmax ignores. So each query gets one more
    feature `m_h / scale` and each key `j - c`, with `c` the middle of
    the block of queries: `scale · (q' · k') = scale · q · k + m_h · (j - c)`.
    The kernel stays a plain fused call over `d + 1` features. Keeping
    `c` near the queries keeps the added scores small where the weights
    are not: the rounding of `j - c` (exact in float32 below 2^24; in
    bfloat16 relative 2^-9, as a bfloat16 bias `m_h · |p - j|` would be)
    errs by at most `m_h · |j - c| · 2^-9`, on keys whose weight is about
    `e^(-m_h · (p - j))`.

    With `row_constant` (a sink logit joins the softmax, so the row's
    constant matters) queries get a second feature `-m_h · (p - c) / scale`
    against a key feature of 1, which makes the sum `-m_h · (p - j)` exactly.
    Values are padded with zeros to the same width (the CPU flash kernel
    takes one head dim for queries, keys and values); the caller drops it.

    Shape:
        q: `(b, n_h, s_q, d)`; k: `(b, n_kv, s_k, d)`; v: `(b, n_kv, s_k, d_v)`;
        outputs `(.., d')` with `d' = max(d + 1 + row_constant, d_v)`.
    """
    n_h, s_q = q.shape[1], q.shape[2]
    c = a + s_q // 2
    slopes = masks._slopes(n_h, q.device).to(torch.float64)  # (n_h,)
    q_extra = [(slopes / scale)[:, None].expand(n_h, s_q)]  # (n_h, s_q)
    k_pos = torch.arange(ka, ka + k.shape[2], device=q.device, dtype=torch.float64) - c  # (s_k,)
    k_extra = [k_pos]
    if row_constant:
        q_pos = torch.arange(a, a + s_q, device=q.device, dtype=torch.float64) - c
        q_extra.append(-(slopes[:, None] * q_pos[None]) / scale)
        k_extra.append(torch.ones_like(k_pos))
    q_feat = torch.stack(q_extra, -1).to(q.dtype).expand(q.shape[0], n_h, s_q, len(q_extra))
    k_feat = torch.stack(k_extra, -1).to(k.dtype).expand(*k.shape[:2], k.shape[2], len(k_extra))
    width = max(q.shape[-1] + len(q_extra), v.shape[-1])
    q2 = F.pad(torch.cat([q, q_feat], -1), (0, width - q.shape[-1] - len(q_extra)))
    k2 = F.pad(torch.cat([k, k_feat], -1), (0, width - k.shape[-1] - len(k_extra)))
    return q2, k2, F.pad(v, (0, width - v.shape[-1]))


def _alibi_merged(query: Tensor, key: Tensor, value: Tensor, out: Tensor, *, offset: int, scale: float) -> None:
    """Causal ALiBi with no mask: per block, the keys before it and its own causal square, merged.

    For queries at positions `[a, e)` the keys `[0, a)` are all visible (one
    unmasked call) and the keys `[a, e)` form the square that the kernel's
    own causal flag masks. Each call returns its rows' log-sum-exp, which
    weighs the two results into the softmax over all `e` keys. The bias
    comes as features ([`_centred_features`][mha._blockwise._centred_features]),
    written in place into one widened copy of the keys. Writes `out`;
    forward only (the kernels' log-sum-exp has no autograd).
    """
    d, d_v, s_kv = query.shape[-1], value.shape[-1], key.shape[2]
    slopes = masks._slopes(query.shape[1], query.device).to(torch.float64) / scale  # (n_h,)
    runs = -(-min(ALIBI_BLOCK, query.shape[2]) // ALIBI_CENTRE)  # features of the widest block
    width = max(d + runs, d_v)
    keys = F.pad(key, (0, width - d))  # (b, n_kv, s_kv, width): feature columns rewritten per block
    values = F.pad(value, (0, width - d_v))
    for a in range(offset, s_kv, ALIBI_BLOCK):
        e = min(a + ALIBI_BLOCK, s_kv)
        q_feat, k_feat = _centred_features(e - a, e, a, slopes)  # (n_h, e - a, f), (e, f)
        f = q_feat.shape[-1]
        keys[:, :, :e, d : d + f] = k_feat.to(keys.dtype)
        q = F.pad(query[:, :, a - offset : e - offset], (0, width - d))  # (b, n_h, e - a, width)
        q[..., d : d + f] = q_feat.to(q.dtype)
        context, lse = _flash(q, keys[:, :, a:e], values[:, :, a:e], causal=True, scale=scale)
        if a > 0:
            past, past_lse = _flash(q, keys[:, :, :a], values[:, :, :a], causal=False, scale=scale)
            top = torch.maximum(lse, past_lse)  # (b, n_h, e - a), float32
            mine, theirs = (lse - top).exp_()[..., None], (past_lse - top).exp_()[..., None]
            wide = torch.promote_types(context.dtype, lse.dtype)  # merge 16-bit results in float32
            context = (context.to(wide) * mine + past.to(wide) * theirs) / (mine + theirs)
        out[:, :, a - offset : e - offset] = context[..., :d_v]


# The CPU flash kernel of torch 2.13 reads grouped key/value heads as they are; torch 2.5's
# silently read past them (NaN, inf: tests/package/test_local.py at the floor). Versions in
# between are not tested, so they get the keys and values expanded per query head.
_CPU_FLASH_READS_GROUPS = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 13)


def _flash(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float) -> tuple[Tensor, Tensor]:
    """Attention and log-sum-exp for `n_h` query heads over `n_kv` key/value heads, one head width.

    The CPU flash kernel reads grouped heads and strided keys as they are
    (no copies); other devices go through [`mha._lse`][mha._lse].
    """
    if q.device.type == "cpu":
        if not _CPU_FLASH_READS_GROUPS and q.shape[1] != k.shape[1]:
            group = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, scale=scale)
        return out, lse
    from mha._lse import _attend_block  # mha._lse imports mha.functional, which imports this module

    return _attend_block(q, k, v, causal, scale)


def _centred_features(s_q: int, s_k: int, a: int, slopes: Tensor) -> tuple[Tensor, Tensor]:
    """[`_alibi_features`][mha._blockwise._alibi_features] with one centre per run of `ALIBI_CENTRE` queries.

    Run `r` of the queries (positions from `a + r · ALIBI_CENTRE`) has
    `m_h / scale` in feature `r` and zeros in the others; key `j` has
    `j - c_r` in feature `r`, `c_r` the middle of run `r`. A query's score
    thus gains `m_h · (j - c_r)` from its own run's centre only (the zeros
    add exactly nothing), so one call covers many runs at the rounding of
    one run: the bound of `_alibi_features` with blocks of `ALIBI_CENTRE`.

    Args:
        s_q: queries, at positions `a, a+1, ...`.
        s_k: keys, at positions `0, 1, ...`.
        slopes: `(n_h,)` float64, already divided by the scale.

    Returns:
        The queries' features `(n_h, s_q, f)` and the keys' `(s_k, f)`, float64, `f` runs.
    """
    f = -(-s_q // ALIBI_CENTRE)
    run = torch.arange(s_q, device=slopes.device) // ALIBI_CENTRE  # (s_q,)
    one_hot = run[:, None] == torch.arange(f, device=slopes.device)[None]  # (s_q, f)
    centres = a + ALIBI_CENTRE * torch.arange(f, device=slopes.device, dtype=torch.float64) + ALIBI_CENTRE // 2
    k_feat = torch.arange(s_k, device=slopes.device, dtype=torch.float64)[:, None] - centres[None]  # (s_k, f)
    return slopes[:, None, None] * one_hot, k_feat


class _AlibiBuffers:
    """[`_alibi_features`][mha._blockwise._alibi_features] for a whole call without autograd.

    Queries and values are widened once; each block writes its own `j - c`
    (and with `row_constant` its queries' constant) in place and reads views.
    """

    def __init__(self, query: Tensor, key: Tensor, value: Tensor, *, scale: float, row_constant: bool) -> None:
        s_q, s_kv = query.shape[2], key.shape[2]
        self.q, self.k, self.v = _alibi_features(
            query, key, value, s_kv - s_q, 0, scale=scale, row_constant=row_constant
        )
        self.d = query.shape[-1]
        self.slopes = masks._slopes(query.shape[1], query.device).to(torch.float64)[:, None] / scale  # (n_h, 1)
        self.row_constant = row_constant

    def block(self, rows: slice, a: int, e: int, ka: int, ke: int, offset: int) -> tuple[Tensor, Tensor, Tensor]:
        c = a + (e - a) // 2
        positions = torch.arange(ka - c, ke - c, device=self.k.device, dtype=torch.float64)
        self.k[rows, :, ka:ke, self.d] = positions.to(self.k.dtype)
        if self.row_constant:
            q_pos = torch.arange(a - c, e - c, device=self.q.device, dtype=torch.float64)
            self.q[rows, :, a - offset : e - offset, self.d + 1] = (-self.slopes * q_pos).to(self.q.dtype)
        return self.q[rows, :, a - offset : e - offset], self.k[rows, :, ka:ke], self.v[rows, :, ka:ke]


def _padded_documents(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    out: Tensor,
    groups: list[tuple[slice, int, int]],
    offset: int,
    is_causal: bool,
    scale: float | None,
    dropout_p: float,
) -> list[tuple[slice, int, int]]:
    """Documents queried whole, padded into batches of documents: one fused call per batch.

    Writes their context into `out` and returns the documents left for the
    block loop (the one whose queries start inside it, when `s_q < s_kv`).
    Documents are sorted by length and joined to the batch of the longest
    while `count · longest² <= PAD_RATIO · Σ len²`. Padding sits on the right
    and holds zeros: under `is_causal` no real query reaches it, so no mask
    is needed at all; without it a key-padding mask blocks it. Padded rows
    are dropped.
    """
    whole = [g for g in groups if g[1] >= offset]
    rest = [g for g in groups if g[1] < offset]
    whole.sort(key=lambda g: g[2] - g[1], reverse=True)
    batches: list[list[tuple[slice, int, int]]] = []
    for g in whole:
        batch = batches[-1] if batches else None
        if batch is not None:
            longest = batch[0][2] - batch[0][1]
            squares = sum((h - lo) ** 2 for _, lo, h in batch) + (g[2] - g[1]) ** 2
            if (len(batch) + 1) * longest**2 <= PAD_RATIO * squares:
                batch.append(g)
                continue
        batches.append([g])
    group = query.shape[1] // key.shape[1]
    for batch in batches:
        longest = batch[0][2] - batch[0][1]

        def padded(
            t: Tensor, shift: int, batch: list[tuple[slice, int, int]] = batch, longest: int = longest
        ) -> Tensor:
            # (n_docs, heads, longest, d): each document's positions, then zeros.
            return torch.cat(
                [F.pad(t[rows, :, lo - shift : hi - shift], (0, 0, 0, longest - (hi - lo))) for rows, lo, hi in batch]
            )

        if _tiled(batch, longest):
            # Equal documents side by side in one row: views, no copies (the batch a caller would build).
            rows, start, n = batch[0][0], batch[0][1], len(batch)
            context = F.scaled_dot_product_attention(
                _tile(query, rows, start - offset, n, longest),
                _tile(key, rows, start, n, longest),
                _tile(value, rows, start, n, longest),
                dropout_p=dropout_p,
                is_causal=is_causal,
                scale=scale,
                enable_gqa=group > 1,
            )
            _tile(out, rows, start - offset, n, longest).copy_(context)
            continue
        keep = None
        if not is_causal and any(hi - lo < longest for _, lo, hi in batch):
            lengths = torch.tensor([hi - lo for _, lo, hi in batch], device=query.device)
            keep = (torch.arange(longest, device=query.device) < lengths[:, None])[:, None, None]  # (n, 1, 1, L)
        context = F.scaled_dot_product_attention(
            padded(query, offset),
            padded(key, 0),
            padded(value, 0),
            attn_mask=keep,
            dropout_p=dropout_p,
            is_causal=is_causal,
            scale=scale,
            enable_gqa=group > 1,
        )
        for i, (rows, lo, hi) in enumerate(batch):
            out[rows, :, lo - offset : hi - offset] = context[i : i + 1, :, : hi - lo]
    return rest


def _tiled(batch: list[tuple[slice, int, int]], length: int) -> bool:
    """Whether `batch` is documents of one `length`, consecutive in one batch row, in order."""
    first_rows, first = batch[0][0], batch[0][1]
    return all(
        rows == first_rows and lo == first + i * length and hi - lo == length for i, (rows, lo, hi) in enumerate(batch)
    )


def _tile(t: Tensor, rows: slice, start: int, n: int, length: int) -> Tensor:
    """`n` documents of `length` from `start` in one batch row, as a view `(n, heads, length, d)`."""
    return t[rows, :, start : start + n * length].unflatten(2, (n, length))[0].transpose(0, 1)


def _documents(documents: Tensor) -> Iterator[tuple[slice, int, int]]:
    """`(rows, start, end)` for each document of each batch row (read on the host: eager only)."""
    ids = documents.tolist()
    for r, row in enumerate(ids):
        start = 0
        for i in range(1, len(row) + 1):
            if i == len(row) or row[i] != row[i - 1]:
                yield slice(r, r + 1), start, i
                start = i
