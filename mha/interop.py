"""Interop with `torch.nn.MultiheadAttention`, both ways.

* [`from_torch`][mha.interop.from_torch] / [`to_torch`][mha.interop.to_torch] copy weights between the two classes.
* [`TorchMultiheadAttention`][mha.TorchMultiheadAttention] is a drop-in module: PyTorch's call
  signature and mask convention (boolean True = *blocked*), computed by
  `mha`.
* [`replace_torch_attention`][mha.replace_torch_attention] swaps every `nn.MultiheadAttention` inside
  a model (`nn.Transformer`, `nn.TransformerEncoderLayer`, your own) for
  the drop-in.

Shape letters are those of [`mha`][mha]; `E` is PyTorch's `embed_dim` (= `h`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mha import _checks, masks
from mha.attention import MultiHeadAttention

__all__ = ["from_torch", "to_torch", "TorchMultiheadAttention", "replace_torch_attention"]


def _check_torch_module(module: object) -> nn.MultiheadAttention:
    if not isinstance(module, nn.MultiheadAttention):
        raise TypeError(f"module must be a torch.nn.MultiheadAttention, got {type(module).__name__}")
    if module.bias_k is not None:
        raise ValueError(
            "module was built with add_bias_kv=True, got bias_k of shape "
            f"{tuple(module.bias_k.shape)}; mha has no learned extra key/value "
            "(expected add_bias_kv=False)"
        )
    if module.add_zero_attn:
        raise ValueError(
            "module was built with add_zero_attn=True; mha never appends a zero "
            "key/value (expected add_zero_attn=False)"
        )
    return module


def from_torch(module: nn.MultiheadAttention) -> MultiHeadAttention:
    """Build a [`mha.MultiHeadAttention`][mha.MultiHeadAttention] with the same weights.

    Works with packed (`in_proj_weight`) and separate
    (`q/k/v_proj_weight`) layouts, with or without bias. The result is
    batch-first whatever `module.batch_first` says; the training flag is
    copied.

    Args:
        module: the PyTorch module.

    Returns:
        An equivalent module on the same device and dtype.

    Raises:
        TypeError: if `module` is not an `nn.MultiheadAttention`.
        ValueError: if it uses `add_bias_kv` or `add_zero_attn`.

    Examples:
        >>> import torch
        >>> from mha import from_torch
        >>> theirs = torch.nn.MultiheadAttention(16, 4, batch_first=True)
        >>> ours = from_torch(theirs)
        >>> x = torch.randn(2, 5, 16)
        >>> torch.allclose(ours(x), theirs(x, x, x, need_weights=False)[0], atol=1e-6)
        True
    """
    module = _check_torch_module(module)
    weight = module.out_proj.weight
    ours = MultiHeadAttention(
        module.embed_dim,
        module.num_heads,
        module.dropout,
        bias=module.in_proj_bias is not None,
        kdim=module.kdim,
        vdim=module.vdim,
        device=weight.device,
        dtype=weight.dtype,
    )
    if module._qkv_same_embed_dim:
        wq, wk, wv = module.in_proj_weight.chunk(3)  # (E, E) each
    else:
        wq, wk, wv = module.q_proj_weight, module.k_proj_weight, module.v_proj_weight
    with torch.no_grad():
        for proj, w in zip((ours.q_proj, ours.k_proj, ours.v_proj), (wq, wk, wv), strict=True):
            proj.weight.copy_(w)
        ours.out_proj.weight.copy_(module.out_proj.weight)
        if module.in_proj_bias is not None:
            for proj, b in zip((ours.q_proj, ours.k_proj, ours.v_proj), module.in_proj_bias.chunk(3), strict=True):
                proj.bias.copy_(b)
            ours.out_proj.bias.copy_(module.out_proj.bias)
    return ours.train(module.training)


def to_torch(module: MultiHeadAttention, *, batch_first: bool = True) -> nn.MultiheadAttention:
    """Build a `torch.nn.MultiheadAttention` with the same weights.

    Args:
        module: the `mha` module.
        batch_first: the layout of the PyTorch module to build.

    Returns:
        An equivalent PyTorch module.

    Raises:
        ValueError: for features PyTorch's class lacks: grouped-query heads,
            a custom scale, rotary positions.

    Examples:
        >>> import torch
        >>> from mha import MultiHeadAttention, to_torch
        >>> ours = MultiHeadAttention(16, 4)
        >>> theirs = to_torch(ours)
        >>> x = torch.randn(2, 5, 16)
        >>> torch.allclose(ours(x), theirs(x, x, x, need_weights=False)[0], atol=1e-6)
        True
    """
    if not isinstance(module, MultiHeadAttention):
        raise TypeError(f"module must be a mha.MultiHeadAttention, got {type(module).__name__}")
    unsupported = {
        "num_kv_heads": (module.num_kv_heads, module.num_heads),
        "scale": (module.attention.scale, None),
        "positional": (module.attention.positional, None),
    }
    for name, (got, expected) in unsupported.items():
        if got != expected:
            raise ValueError(
                f"nn.MultiheadAttention has no equivalent of {name}={got!r} "
                f"(expected {name}={expected!r})"
            )
    weight = module.out_proj.weight
    bias = module.out_proj.bias is not None
    theirs = nn.MultiheadAttention(
        module.hidden_size,
        module.num_heads,
        dropout=module.attention.dropout,
        bias=bias,
        kdim=module.kdim,
        vdim=module.vdim,
        batch_first=batch_first,
        device=weight.device,
        dtype=weight.dtype,
    )
    projections = (module.q_proj, module.k_proj, module.v_proj)
    with torch.no_grad():
        if theirs._qkv_same_embed_dim:
            theirs.in_proj_weight.copy_(torch.cat([p.weight for p in projections]))
        else:
            theirs.q_proj_weight.copy_(module.q_proj.weight)
            theirs.k_proj_weight.copy_(module.k_proj.weight)
            theirs.v_proj_weight.copy_(module.v_proj.weight)
        theirs.out_proj.weight.copy_(module.out_proj.weight)
        if bias:
            theirs.in_proj_bias.copy_(torch.cat([p.bias for p in projections]))
            theirs.out_proj.bias.copy_(module.out_proj.bias)
    return theirs.train(module.training)


class TorchMultiheadAttention(nn.Module):
    """A drop-in for `torch.nn.MultiheadAttention` that runs on `mha`.

    Same call signature, same return value `(output, weights or None)`,
    same mask convention (boolean True = *blocked*; float masks are added),
    same `batch_first` handling. Differences, all deliberate:

    * a query that may attend to nothing gets a zero output and zero weights
      instead of NaN;
    * `is_causal=True` without an `attn_mask` applies a causal mask
      (PyTorch raises there); with an `attn_mask` the mask is used as given,
      `is_causal` being PyTorch's hint that it is causal.

    PyTorch's Transformer layers read `_qkv_same_embed_dim` and
    `in_proj_weight`/`in_proj_bias` to decide whether to skip
    `self_attn.forward` and run their own fused kernel on packed weights.
    This module holds no packed weights (its projections live in `.inner`),
    so it reports `False`/`None`, and the layers call `forward`.

    Args:
        inner: the [`mha.MultiHeadAttention`][mha.MultiHeadAttention] that computes.
        batch_first: the layout of inputs and outputs, as in PyTorch.

    Examples:
        >>> import torch
        >>> from mha import TorchMultiheadAttention
        >>> theirs = torch.nn.MultiheadAttention(16, 4)
        >>> ours = TorchMultiheadAttention.from_torch(theirs)
        >>> x = torch.randn(5, 2, 16)  # (s, b, E): batch_first=False
        >>> pad = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
        >>> a, _ = ours(x, x, x, key_padding_mask=pad)
        >>> b, _ = theirs(x, x, x, key_padding_mask=pad)
        >>> torch.allclose(a, b, atol=1e-6)
        True
    """

    _qkv_same_embed_dim = False
    in_proj_weight = None
    in_proj_bias = None

    def __init__(self, inner: MultiHeadAttention, *, batch_first: bool = False) -> None:
        super().__init__()
        if not isinstance(inner, MultiHeadAttention):
            raise TypeError(f"inner must be a mha.MultiHeadAttention, got {type(inner).__name__}")
        self.inner = inner
        self.batch_first = bool(batch_first)

    @classmethod
    def from_torch(cls, module: nn.MultiheadAttention) -> TorchMultiheadAttention:
        """The drop-in for `module`, with its weights and `batch_first`."""
        return cls(from_torch(module), batch_first=module.batch_first)

    # Read by code written for nn.MultiheadAttention.
    @property
    def embed_dim(self) -> int:
        return self.inner.hidden_size

    @property
    def num_heads(self) -> int:
        return self.inner.num_heads

    @property
    def kdim(self) -> int:
        return self.inner.kdim

    @property
    def vdim(self) -> int:
        return self.inner.vdim

    @property
    def dropout(self) -> float:
        return self.inner.attention.dropout

    @property
    def out_proj(self) -> nn.Linear:
        return self.inner.out_proj

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Attention with `nn.MultiheadAttention`'s arguments and conventions.

        Shape:
            query: `(s_q, b, E)`, or `(b, s_q, E)` with `batch_first`,
            or `(s_q, E)` unbatched; key, value likewise with `s_kv`;
            key_padding_mask: `(b, s_kv)`; attn_mask: `(s_q, s_kv)` or
            `(b * n_h, s_q, s_kv)`; weights: `(b, s_q, s_kv)` averaged
            over heads, else `(b, n_h, s_q, s_kv)`.
        """
        for name, t in (("query", query), ("key", key), ("value", value)):
            _checks.tensor(name, t)
        unbatched = query.ndim == 2
        if unbatched:
            query, key, value = (t.unsqueeze(0) for t in (query, key, value))
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))  # (b, s, E)
        mask = masks.from_torch_masks(attn_mask, key_padding_mask, num_heads=self.num_heads)
        result = self.inner(
            query,
            key,
            value,
            mask=mask,
            is_causal=is_causal and attn_mask is None,
            need_weights=need_weights,
        )
        output, weights = result if need_weights else (result, None)
        if weights is not None and average_attn_weights:
            weights = weights.mean(dim=1)  # (b, s_q, s_kv)
        if unbatched:
            output = output.squeeze(0)
            weights = None if weights is None else weights.squeeze(0)
        elif not self.batch_first:
            output = output.transpose(0, 1)  # (s_q, b, E)
        return output, weights


def replace_torch_attention(model: nn.Module) -> nn.Module:
    """Swap every `nn.MultiheadAttention` in `model` for [`TorchMultiheadAttention`][mha.TorchMultiheadAttention].

    Weights, `batch_first` and training mode carry over, so the model
    computes the same function. `nn.TransformerEncoder` containers get
    `use_nested_tensor = False`: their nested-tensor shortcut only works
    together with PyTorch's fused layer kernel, which would bypass the new
    modules.

    Args:
        model: any module; changed in place. It may itself be an
            `nn.MultiheadAttention`.

    Returns:
        `model`, or the drop-in when `model` itself was an `nn.MultiheadAttention`.

    Examples:
        >>> import torch
        >>> from mha import TorchMultiheadAttention, replace_torch_attention
        >>> layer = torch.nn.TransformerEncoderLayer(16, 4, batch_first=True).eval()
        >>> x = torch.randn(2, 5, 16)
        >>> before = layer(x)
        >>> layer = replace_torch_attention(layer)
        >>> isinstance(layer.self_attn, TorchMultiheadAttention)
        True
        >>> torch.allclose(layer(x), before, atol=1e-5)
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, nn.MultiheadAttention):
        return TorchMultiheadAttention.from_torch(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.MultiheadAttention):
                setattr(parent, name, TorchMultiheadAttention.from_torch(child))
        if isinstance(parent, nn.TransformerEncoder):
            parent.use_nested_tensor = False
    return model
