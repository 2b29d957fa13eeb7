"""Attention masks: causal, padding, combining, and conversion from PyTorch.

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

import torch
from torch import Tensor

from mha import _checks

__all__ = ["causal_mask", "padding_mask", "combine_masks", "to_additive", "from_torch_masks"]
# `causal` is internal: causal_mask without its checks, for callers that checked already.


def causal_mask(
    s_q: int, s_kv: int | None = None, *, device: torch.device | str | None = None
) -> Tensor:
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
    s_q = _checks.nonnegative_int("s_q", s_q)
    s_kv = s_q if s_kv is None else _checks.nonnegative_int("s_kv", s_kv)
    return causal(s_q, s_kv, device)


def causal(s_q: int, s_kv: int, device: torch.device | str | None) -> Tensor:
    """`causal_mask` without argument checks: sizes may be symbolic under tracing."""
    rows = torch.arange(s_q, device=device).unsqueeze(-1)  # (s_q, 1)
    cols = torch.arange(s_kv, device=device)  # (s_kv,)
    return cols <= rows + (s_kv - s_q)


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
        raise ValueError(
            f"lengths must be in [0, s_kv={s_kv}], got {lengths.tolist()}"
        )
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
    mask = _checks.tensor("mask", mask)
    if mask.dtype != torch.bool:
        return mask.to(dtype)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
        ~mask, float("-inf")
    )


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
    present = [m for m in masks if m is not None]
    for i, m in enumerate(present):
        _checks.tensor(f"masks[{i}]", m)
    if not present:
        return None
    float_dtypes = [m.dtype for m in present if m.is_floating_point()]
    if not float_dtypes:
        combined = present[0]
        for m in present[1:]:
            combined = combined & m
        return combined
    dtype = float_dtypes[0]
    combined = to_additive(present[0], dtype)
    for m in present[1:]:
        combined = combined + to_additive(m, dtype)
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

    Examples:
        >>> import torch
        >>> from mha.masks import from_torch_masks
        >>> pad = torch.tensor([[False, False, True]])  # PyTorch: True = padding
        >>> from_torch_masks(key_padding_mask=pad).flatten()
        tensor([ True,  True, False])
    """
    converted = []
    if attn_mask is not None:
        attn_mask = _checks.tensor("attn_mask", attn_mask)
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
                "attn_mask must have shape (s_q, s_kv) or (b * n_h, s_q, s_kv), "
                f"got {_checks.sizes(attn_mask)}"
            )
        converted.append(~attn_mask if attn_mask.dtype == torch.bool else attn_mask)
    if key_padding_mask is not None:
        key_padding_mask = _checks.tensor("key_padding_mask", key_padding_mask)
        if key_padding_mask.ndim != 2:
            raise ValueError(
                "key_padding_mask must have shape (b, s_kv), "
                f"got {_checks.sizes(key_padding_mask)}"
            )
        kpm = key_padding_mask[:, None, None, :]  # (b, 1, 1, s_kv)
        converted.append(~kpm if kpm.dtype == torch.bool else kpm)
    return combine_masks(*converted)
