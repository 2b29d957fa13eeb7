"""Attention masks: causal, padding, windows, documents, ALiBi, combining, conversion from PyTorch.

The convention everywhere in `mha`: a **boolean mask is True where a query
may attend to a key**, the same as
`torch.nn.functional.scaled_dot_product_attention`. A floating-point
mask is *added* to the attention scores (0 keeps, `-inf` blocks).

`torch.nn.MultiheadAttention` uses the opposite boolean convention
(True = blocked). [`from_torch_masks`][mha.masks.from_torch_masks] converts explicitly; nothing in
`mha` ever inverts a mask silently.

Shape letters are those of [`mha`][mha].
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mha import _checks

__all__ = [
    "causal_mask",
    "padding_mask",
    "sliding_window_mask",
    "document_mask",
    "alibi_bias",
    "alibi_slopes",
    "combine_masks",
    "to_additive",
    "from_torch_masks",
]
# `_causal`, `_band`, `_runs`, `_slopes`, ... are internal: the helpers without their checks, for the core,
# which checked its arguments at its entry.


def causal_mask(s_q: int, s_kv: int | None = None, *, device: torch.device | str | None = None) -> Tensor:
    """A boolean causal mask, aligned bottom-right.

    Query `i` may attend to key `j` when `j <= i + (s_kv - s_q)`: the
    queries are taken to be the *last* `s_q` positions of the key sequence,
    which is what a decoder continuing a cached prefix needs. For
    `s_q == s_kv` this is the usual lower-triangular mask.

    Args:
        s_q: query length (0 gives an empty mask).
        s_kv: key/value length; defaults to `s_q`.
        device: where to create the mask.

    Returns:
        A bool tensor, True where attention is allowed.

    Shape:
        output: `(s_q, s_kv)`

    Examples:
        >>> from mha.masks import causal_mask
        >>> causal_mask(2, 4).int()
        tensor([[1, 1, 1, 0],
                [1, 1, 1, 1]], dtype=torch.int32)
    """
    return _causal(*_lengths(s_q, s_kv), device)


def _lengths(s_q: object, s_kv: object) -> tuple[int, int]:
    """A mask helper's `s_q` and `s_kv` (which defaults to `s_q`), checked."""
    s_q = _checks.nonnegative_int("s_q", s_q)
    return s_q, (s_q if s_kv is None else _checks.nonnegative_int("s_kv", s_kv))


def _causal(s_q: int, s_kv: int, device: torch.device | str | None) -> Tensor:
    """`causal_mask` without argument checks: sizes may be symbolic under tracing."""
    rows = torch.arange(s_q, device=device).unsqueeze(-1)  # (s_q, 1)
    cols = torch.arange(s_kv, device=device)  # (s_kv,)
    return cols <= rows + (s_kv - s_q)


def sliding_window_mask(
    s_q: int, s_kv: int | None = None, *, window: int, device: torch.device | str | None = None
) -> Tensor:
    """A boolean band: each query sees the keys less than `window` positions away.

    Positions are aligned bottom-right, as in [`causal_mask`][mha.masks.causal_mask]:
    query `i` sits at position `p = i + (s_kv - s_q)`, and may attend to key
    `j` when `|p - j| < window`. Combined with a causal mask
    (`is_causal=True`), that is `p - window < j <= p`: the last `window`
    positions, the query's own included, as Transformers' Mistral
    (`sliding_window`) and FlashAttention (`window_size=(window - 1, 0)`)
    count them.

    Args:
        s_q: query length.
        s_kv: key/value length; defaults to `s_q`.
        window: `w >= 1`; `window=1` lets a query see itself only.
        device: where to create the mask.

    Returns:
        A bool tensor, True where attention is allowed.

    Shape:
        output: `(s_q, s_kv)`

    Examples:
        >>> from mha.masks import causal_mask, sliding_window_mask
        >>> (sliding_window_mask(4, window=2) & causal_mask(4)).int()
        tensor([[1, 0, 0, 0],
                [1, 1, 0, 0],
                [0, 1, 1, 0],
                [0, 0, 1, 1]], dtype=torch.int32)
    """
    s_q, s_kv = _lengths(s_q, s_kv)
    window = _checks.positive_int("window", window)
    return _band(s_q, s_kv, window, device)


def _band(s_q: int, s_kv: int, window: int, device: torch.device | str | None) -> Tensor:
    """`sliding_window_mask` without argument checks."""
    rows = torch.arange(s_q, device=device).unsqueeze(-1) + (s_kv - s_q)  # (s_q, 1) positions
    distance = rows - torch.arange(s_kv, device=device)  # (s_q, s_kv)
    return distance.abs() < window


def document_mask(document_ids: Tensor, s_q: int | None = None) -> Tensor:
    """A boolean block diagonal: each query sees the keys of its own document only.

    A document is a run of equal consecutive ids in a row of `document_ids`
    (so `[0, 0, 1, 1, 0]` holds three documents). Queries are the last
    `s_q` positions, as for [`causal_mask`][mha.masks.causal_mask]; combine
    with `causal_mask` for causal attention within each document.

    Args:
        document_ids: integer ids, one per key position.
        s_q: query length; defaults to `s_kv`.

    Returns:
        A bool tensor, True where query and key lie in the same document.

    Shape:
        document_ids: `(b, s_kv)`; output: `(b, 1, s_q, s_kv)`

    Examples:
        >>> import torch
        >>> from mha.masks import document_mask
        >>> document_mask(torch.tensor([[7, 7, 3]]))[0, 0].int()
        tensor([[1, 1, 0],
                [1, 1, 0],
                [0, 0, 1]], dtype=torch.int32)
    """
    document_ids = _check_document_ids("document_ids", document_ids)
    s_kv = document_ids.shape[1]
    s_q = s_kv if s_q is None else _checks.nonnegative_int("s_q", s_q)
    if s_q > s_kv:
        raise ValueError(f"s_q must be <= s_kv={s_kv} (queries are the last positions), got {s_q}")
    index = _runs(document_ids)  # (b, s_kv)
    return (index[:, s_kv - s_q :, None] == index[:, None, :])[:, None]  # (b, 1, s_q, s_kv)


def _check_document_ids(name: str, value: object) -> Tensor:
    """Raise unless `value` is an integer `(b, s)` tensor."""
    value = _checks.tensor(name, value)
    if value.ndim != 2 or value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
        raise ValueError(
            f"{name} must be an integer tensor of shape (b, s_kv), got dtype {value.dtype} "
            f"and shape {_checks.sizes(value)}"
        )
    return value


def _runs(document_ids: Tensor) -> Tensor:
    """The index of each position's document, counting runs of equal ids from 0: `(b, s)` long."""
    change = document_ids[:, 1:] != document_ids[:, :-1]  # (b, s - 1)
    return torch.cat((torch.zeros_like(change[:, :1]), change), dim=1).long().cumsum(dim=1)


def _document_positions(document_ids: Tensor) -> Tensor:
    """Each position's offset from the start of its document: `(b, s)` long, for rotary embeddings."""
    s = document_ids.shape[1]
    index = torch.arange(s, device=document_ids.device).expand_as(document_ids)
    start = torch.ones_like(document_ids, dtype=torch.bool)
    start[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    first = torch.where(start, index, torch.zeros_like(index)).cummax(dim=1).values  # each run's first index
    return index - first


def alibi_slopes(num_heads: int, *, device: torch.device | str | None = None) -> Tensor:
    """The per-head slopes of ALiBi (Press et al., 2022), for any head count.

    For `n` a power of two they are `2^(-8k/n)`, `k = 1..n`. Otherwise,
    as in the paper's code and BLOOM: the `p = 2^floor(log2 n)` slopes of
    `p` heads, then every other slope of `2p` heads (`k = 1, 3, 5, ...`)
    for the remaining `n - p` heads.

    Returns:
        float32 slopes, shape `(n_h,)`.

    Examples:
        >>> from mha.masks import alibi_slopes
        >>> alibi_slopes(4)
        tensor([0.2500, 0.0625, 0.0156, 0.0039])
        >>> alibi_slopes(6)[4:]  # 8 heads' slopes 1 and 3
        tensor([0.5000, 0.1250])
    """
    return _slopes(_checks.positive_int("num_heads", num_heads), device)


def _slopes(num_heads: int, device: torch.device | str | None) -> Tensor:
    """`alibi_slopes` without argument checks."""
    power = 2 ** math.floor(math.log2(num_heads))
    exponents = [-8.0 * k / power for k in range(1, power + 1)]
    exponents += [-8.0 * k / (2 * power) for k in range(1, 2 * (num_heads - power), 2)]
    return torch.tensor([2.0**e for e in exponents], dtype=torch.float32, device=device)


def alibi_bias(
    num_heads: int,
    s_q: int,
    s_kv: int | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """The ALiBi bias: `-m_h · |p - j|` for head `h`, query position `p`, key `j`.

    Queries are the last `s_q` positions (`p = i + s_kv - s_q`). Under a
    causal mask this is the paper's `-m_h (p - j)`; BLOOM adds `m_h j`
    instead, which differs by a constant per row, and softmax ignores that.
    Add it to the scores as a float mask. It holds `n_h · s_q · s_kv`
    numbers: the `alibi=True` option of the layers never builds it whole
    for long sequences.

    Args:
        num_heads: `n_h`; the slopes are [`alibi_slopes`][mha.masks.alibi_slopes].
        s_q: query length.
        s_kv: key length; defaults to `s_q`.
        dtype: of the bias.
        device: where to create it.

    Returns:
        The additive bias.

    Shape:
        output: `(n_h, s_q, s_kv)`

    Examples:
        >>> from mha.masks import alibi_bias
        >>> alibi_bias(2, 3)[0]
        tensor([[ 0.0000, -0.0625, -0.1250],
                [-0.0625,  0.0000, -0.0625],
                [-0.1250, -0.0625,  0.0000]])
    """
    num_heads = _checks.positive_int("num_heads", num_heads)
    s_q, s_kv = _lengths(s_q, s_kv)
    rows = torch.arange(s_q, device=device).unsqueeze(-1) + (s_kv - s_q)
    distance = (rows - torch.arange(s_kv, device=device)).abs()  # (s_q, s_kv)
    return (_slopes(num_heads, device)[:, None, None].double() * -distance).to(dtype)  # -distance: no -0.0


def padding_mask(lengths: Tensor, s_kv: int | None = None) -> Tensor:
    """A boolean key-padding mask from per-sequence lengths.

    Sequence `i` of the batch has `lengths[i]` real tokens followed by
    padding; keys at positions `>= lengths[i]` are blocked.

    Args:
        lengths: integer lengths, one per sequence.
        s_kv: padded key length; defaults to `lengths.max()`.

    Returns:
        A bool tensor, True at real (attendable) key positions, shaped to
        broadcast against `(b, n_h, s_q, s_kv)`.

    Shape:
        lengths: `(b,)`; output: `(b, 1, 1, s_kv)`

    Examples:
        >>> import torch
        >>> from mha.masks import padding_mask
        >>> padding_mask(torch.tensor([3, 1]), 4).squeeze(1).squeeze(1).int()
        tensor([[1, 1, 1, 0],
                [1, 0, 0, 0]], dtype=torch.int32)
    """
    lengths = _checks.tensor("lengths", lengths)
    if lengths.ndim != 1 or lengths.is_floating_point() or lengths.dtype == torch.bool:
        raise ValueError(
            f"lengths must be a 1-D integer tensor of shape (b,), got shape "
            f"{_checks.sizes(lengths)} and dtype {lengths.dtype}"
        )
    if s_kv is None:
        s_kv = int(lengths.max())
    s_kv = _checks.positive_int("s_kv", s_kv)
    if lengths.numel() and (int(lengths.min()) < 0 or int(lengths.max()) > s_kv):
        raise ValueError(f"lengths must be in [0, s_kv={s_kv}], got {lengths.tolist()}")
    positions = torch.arange(s_kv, device=lengths.device)  # (s_kv,)
    return (positions < lengths.unsqueeze(-1))[:, None, None, :]  # (b, 1, 1, s_kv)


def to_additive(mask: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Turn a boolean mask into an additive float mask (0 where allowed, -inf where blocked).

    A float mask is returned unchanged except for its dtype.

    Examples:
        >>> import torch
        >>> from mha.masks import to_additive
        >>> to_additive(torch.tensor([True, False]))
        tensor([0., -inf])
    """
    return _additive(_checks.tensor("mask", mask), dtype)


def _additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """`to_additive` without its check, for the core, which checked its masks at the entry."""
    if mask.dtype != torch.bool:
        return mask.to(dtype)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))


def combine_masks(*masks: Tensor | None) -> Tensor | None:
    """Combine masks so that a key is allowed only where every mask allows it.

    `None` entries are skipped. Boolean masks are joined with logical AND;
    if any mask is a float mask, the boolean ones are turned into additive
    masks ([`to_additive`][mha.masks.to_additive]) and everything is summed. Shapes broadcast.

    Returns:
        The combined mask, or `None` when every entry is `None`.

    Examples:
        >>> import torch
        >>> from mha.masks import causal_mask, combine_masks, padding_mask
        >>> m = combine_masks(causal_mask(3), padding_mask(torch.tensor([2]), 3))
        >>> m[0, 0].int()
        tensor([[1, 0, 0],
                [1, 1, 0],
                [1, 1, 0]], dtype=torch.int32)
    """
    for i, m in enumerate([m for m in masks if m is not None]):
        _checks.tensor(f"masks[{i}]", m)
    return _combine(*masks)


def _combine(*masks: Tensor | None) -> Tensor | None:
    """`combine_masks` without its checks, for the core, which checked its masks at the entry."""
    present = [m for m in masks if m is not None]
    if not present:
        return None
    float_dtypes = [m.dtype for m in present if m.is_floating_point()]
    if not float_dtypes:
        combined = present[0]
        for m in present[1:]:
            combined = combined & m
        return combined
    dtype = float_dtypes[0]
    combined = _additive(present[0], dtype)
    for m in present[1:]:
        combined = combined + _additive(m, dtype)
    return combined


def from_torch_masks(
    attn_mask: Tensor | None = None,
    key_padding_mask: Tensor | None = None,
    *,
    num_heads: int | None = None,
) -> Tensor | None:
    """Convert `torch.nn.MultiheadAttention`'s masks to `mha`'s convention.

    PyTorch's boolean masks mean True = *blocked*; they are inverted here, on
    purpose and in one documented place. Float masks are additive in both
    conventions and pass through.

    Args:
        attn_mask: `(s_q, s_kv)` or `(b * n_h, s_q, s_kv)`, as PyTorch takes it.
        key_padding_mask: `(b, s_kv)`, True (or `-inf`) at padding.
        num_heads: needed to unflatten a 3-D `attn_mask`.

    Returns:
        One mask broadcastable to `(b, n_h, s_q, s_kv)`, or `None`.

    Raises:
        TypeError: if a mask is not a bool or float tensor (PyTorch's two
            kinds: an integer mask has no convention to convert).
        ValueError: if a mask's shape is not one of those above.

    Examples:
        >>> import torch
        >>> from mha.masks import from_torch_masks
        >>> pad = torch.tensor([[False, False, True]])  # PyTorch: True = padding
        >>> from_torch_masks(key_padding_mask=pad).flatten()
        tensor([ True,  True, False])
    """
    converted = []
    if attn_mask is not None:
        attn_mask = _torch_convention("attn_mask", attn_mask)
        if attn_mask.ndim == 3:
            if num_heads is None:
                raise ValueError(
                    "num_heads is required to convert a 3-D attn_mask of shape "
                    f"(b * n_h, s_q, s_kv), got attn_mask of shape {_checks.sizes(attn_mask)}"
                )
            if attn_mask.shape[0] % num_heads:
                raise ValueError(
                    f"attn_mask's first dimension must be b * num_heads (num_heads="
                    f"{num_heads}), got shape {_checks.sizes(attn_mask)}"
                )
            attn_mask = attn_mask.view(-1, num_heads, *attn_mask.shape[1:])
        elif attn_mask.ndim != 2:
            raise ValueError(
                f"attn_mask must have shape (s_q, s_kv) or (b * n_h, s_q, s_kv), got {_checks.sizes(attn_mask)}"
            )
        converted.append(~attn_mask if attn_mask.dtype == torch.bool else attn_mask)
    if key_padding_mask is not None:
        key_padding_mask = _torch_convention("key_padding_mask", key_padding_mask)
        if key_padding_mask.ndim != 2:
            raise ValueError(f"key_padding_mask must have shape (b, s_kv), got {_checks.sizes(key_padding_mask)}")
        kpm = key_padding_mask[:, None, None, :]  # (b, 1, 1, s_kv)
        converted.append(~kpm if kpm.dtype == torch.bool else kpm)
    return _combine(*converted)


def _torch_convention(name: str, mask: object) -> Tensor:
    """`mask` if it is a bool or float tensor, as `nn.MultiheadAttention` takes them; else `TypeError`."""
    mask = _checks.tensor(name, mask)
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise TypeError(
            f"{name} must be a bool tensor (PyTorch's convention: True = not allowed to attend) or a float "
            f"tensor (added to the scores), got dtype {mask.dtype}"
        )
    return mask
