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
    _check_expressible(module)
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


_TORCH_WEIGHTS = ("in_proj_weight", "in_proj_bias", "q_proj_weight", "k_proj_weight", "v_proj_weight")


class TorchMultiheadAttention(nn.Module):
    """A drop-in for `torch.nn.MultiheadAttention` that runs on `mha`.

    Same call signature, same return value `(output, weights or None)`,
    same mask convention (boolean True = *blocked*; float masks are added),
    same mask shapes (what PyTorch rejects is rejected), same `batch_first`
    handling, and the same `state_dict`: `in_proj_weight`, `in_proj_bias`,
    `out_proj.weight`, `out_proj.bias` (`q/k/v_proj_weight` when `kdim` or
    `vdim` differ), so checkpoints load both ways. Differences, all deliberate:

    * a query that may attend to nothing gets a zero context and zero weights
      instead of NaN, so its output is `out_proj.bias` (zero without bias);
    * `is_causal=True` without an `attn_mask` applies a causal mask
      (PyTorch raises there); with an `attn_mask` the mask is used as given,
      `is_causal` being PyTorch's hint that it is causal;
    * assigning `in_proj_weight` (or another of PyTorch's weights) copies the
      values into the projections, which stay the module's parameters;
    * TorchScript is refused with a clear error (it is deprecated upstream;
      use `torch.compile` or `torch.export`).

    PyTorch's Transformer layers read `_qkv_same_embed_dim` to decide whether
    to skip `self_attn.forward` and run their own fused kernel on packed
    weights. This module reports `False`, so the layers call `forward`.

    Args:
        inner: the [`mha.MultiHeadAttention`][mha.MultiHeadAttention] that computes; it must
            be one `nn.MultiheadAttention` can express (no grouped-query
            heads, custom scale or rotary positions).
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
        >>> sorted(ours.state_dict()) == sorted(theirs.state_dict())
        True
    """

    _qkv_same_embed_dim = False

    def __init__(self, inner: MultiHeadAttention, *, batch_first: bool = False) -> None:
        super().__init__()
        if not isinstance(inner, MultiHeadAttention):
            raise TypeError(f"inner must be a mha.MultiHeadAttention, got {type(inner).__name__}")
        _check_expressible(inner)
        self.inner = inner
        self.batch_first = _checks.flag("batch_first", batch_first)
        # Older torch releases have only the private name; the contract is the same.
        register = getattr(self, "register_state_dict_post_hook", None) or self._register_state_dict_hook
        register(_save_as_torch)
        self.register_load_state_dict_pre_hook(_load_from_torch)

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

    @property
    def head_dim(self) -> int:
        return self.inner.head_dim

    @property
    def in_proj_weight(self) -> Tensor | None:
        """`(3E, E)`, PyTorch's packed projection, or `None` when `kdim`/`vdim` differ (as in PyTorch)."""
        return _torch_weights(self.inner).get("in_proj_weight")

    @property
    def in_proj_bias(self) -> Tensor | None:
        """`(3E,)`, or `None` without bias."""
        return _torch_weights(self.inner).get("in_proj_bias")

    @property
    def q_proj_weight(self) -> Tensor | None:
        return _torch_weights(self.inner).get("q_proj_weight")

    @property
    def k_proj_weight(self) -> Tensor | None:
        return _torch_weights(self.inner).get("k_proj_weight")

    @property
    def v_proj_weight(self) -> Tensor | None:
        return _torch_weights(self.inner).get("v_proj_weight")

    def __setattr__(self, name: str, value: Tensor | nn.Module) -> None:
        if name in _TORCH_WEIGHTS:
            # As on nn.MultiheadAttention, `m.in_proj_weight = nn.Parameter(w)` sets the weights.
            _assign_torch_weight(self.inner, name, value)
            return
        super().__setattr__(name, value)

    def __prepare_scriptable__(self) -> nn.Module:
        # torch.jit.script calls this on every submodule before compiling it.
        raise TypeError(
            "TorchMultiheadAttention cannot be compiled with TorchScript (torch.jit.script), "
            "which PyTorch has deprecated; use torch.compile or torch.export instead"
        )

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
            key_padding_mask: `(b, s_kv)`, or `(s_kv,)` unbatched;
            attn_mask: `(s_q, s_kv)` or `(b * n_h, s_q, s_kv)`; weights:
            `(b, s_q, s_kv)` averaged over heads, else `(b, n_h, s_q, s_kv)`.

        Raises:
            ValueError: for masks of shapes PyTorch rejects, and for nested
                (jagged) inputs with `need_weights=True`.
        """
        for name, t in (("query", query), ("key", key), ("value", value)):
            _checks.tensor(name, t)
        for name, flag in (("need_weights", need_weights), ("average_attn_weights", average_attn_weights),
                           ("is_causal", is_causal)):
            _checks.flag(name, flag)
        if query.is_nested and need_weights:
            raise ValueError(
                "nested (jagged) inputs cannot return attention weights; got need_weights=True "
                "(pass need_weights=False)"
            )
        unbatched = query.dim() == 2
        _check_torch_masks(query, key, attn_mask, key_padding_mask, self.num_heads, unbatched, self.batch_first)
        if unbatched:
            query, key, value = (t.unsqueeze(0) for t in (query, key, value))
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))  # (b, s, E)
        mask = masks.from_torch_masks(attn_mask, key_padding_mask, num_heads=self.num_heads)
        causal = is_causal and attn_mask is None
        weights: Tensor | None = None
        if need_weights:
            output, weights = self.inner(query, key, value, mask=mask, is_causal=causal, need_weights=True)
            if average_attn_weights:
                weights = weights.mean(dim=1)  # (b, s_q, s_kv)
        else:
            output = self.inner(query, key, value, mask=mask, is_causal=causal)
        if unbatched:
            output = output.squeeze(0)
            weights = None if weights is None else weights.squeeze(0)
        elif not self.batch_first:
            output = output.transpose(0, 1)  # (s_q, b, E)
        return output, weights


def _check_expressible(module: MultiHeadAttention) -> None:
    """Raise unless `nn.MultiheadAttention` can express `module`."""
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


def _torch_weights(module: MultiHeadAttention) -> dict[str, Tensor]:
    """`module`'s projections under nn.MultiheadAttention's names (tensors that share no storage)."""
    projections = (module.q_proj, module.k_proj, module.v_proj)
    if module.kdim == module.hidden_size and module.vdim == module.hidden_size:
        weights = {"in_proj_weight": torch.cat([p.weight for p in projections])}
    else:
        weights = {f"{n}_proj_weight": p.weight for n, p in zip("qkv", projections, strict=True)}
    if module.q_proj.bias is not None:
        weights["in_proj_bias"] = torch.cat([p.bias for p in projections])
    return weights


def _assign_torch_weight(module: MultiHeadAttention, name: str, value: object) -> None:
    value = _checks.tensor(name, value)
    current = _torch_weights(module).get(name)
    if current is None:
        raise ValueError(f"this module has no {name} (kdim={module.kdim}, vdim={module.vdim}, "
                         f"bias={module.q_proj.bias is not None}), as nn.MultiheadAttention would not")
    if value.shape != current.shape:
        raise ValueError(f"{name} must have shape {tuple(current.shape)}, got {tuple(value.shape)}")
    projections = {"q": module.q_proj, "k": module.k_proj, "v": module.v_proj}
    with torch.no_grad():
        if name in ("in_proj_weight", "in_proj_bias"):
            attr = "weight" if name == "in_proj_weight" else "bias"
            for proj, part in zip(projections.values(), value.chunk(3), strict=True):
                getattr(proj, attr).copy_(part)
        else:
            projections[name[0]].weight.copy_(value)


def _save_as_torch(module: TorchMultiheadAttention, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """state_dict post-hook: `inner.*` keys -> nn.MultiheadAttention's keys."""
    inner = f"{prefix}inner."
    for key in [k for k in state_dict if k.startswith(inner)]:
        del state_dict[key]
    for name, tensor in _torch_weights(module.inner).items():
        state_dict[prefix + name] = tensor.detach()
    out = module.inner.out_proj
    state_dict[f"{prefix}out_proj.weight"] = out.weight.detach()
    if out.bias is not None:
        state_dict[f"{prefix}out_proj.bias"] = out.bias.detach()


def _load_from_torch(module: nn.Module, state_dict: dict, prefix: str, *args: object) -> None:
    """load_state_dict pre-hook: nn.MultiheadAttention's keys -> `inner.*` keys."""
    inner = f"{prefix}inner."
    if f"{prefix}in_proj_weight" in state_dict:
        for name, w in zip("qkv", state_dict.pop(f"{prefix}in_proj_weight").chunk(3), strict=True):
            state_dict[f"{inner}{name}_proj.weight"] = w
    for name in "qkv":
        if f"{prefix}{name}_proj_weight" in state_dict:
            state_dict[f"{inner}{name}_proj.weight"] = state_dict.pop(f"{prefix}{name}_proj_weight")
    if f"{prefix}in_proj_bias" in state_dict:
        for name, b in zip("qkv", state_dict.pop(f"{prefix}in_proj_bias").chunk(3), strict=True):
            state_dict[f"{inner}{name}_proj.bias"] = b
    for name in ("weight", "bias"):
        if f"{prefix}out_proj.{name}" in state_dict:
            state_dict[f"{inner}out_proj.{name}"] = state_dict.pop(f"{prefix}out_proj.{name}")


def _check_torch_masks(
    query: Tensor, key: Tensor, attn_mask: Tensor | None, key_padding_mask: Tensor | None,
    num_heads: int, unbatched: bool, batch_first: bool,
) -> None:
    """The mask shapes nn.MultiheadAttention accepts, and no others."""
    if query.is_nested:
        return
    b = 1 if unbatched else query.shape[0 if batch_first else 1]
    s_q = query.shape[0 if unbatched or not batch_first else 1]
    s_kv = key.shape[0 if unbatched or not batch_first else 1]
    if attn_mask is not None:
        attn_mask = _checks.tensor("attn_mask", attn_mask)
        allowed = [(s_q, s_kv), (b * num_heads, s_q, s_kv)]
        if tuple(attn_mask.shape) not in allowed:
            raise ValueError(
                f"attn_mask must have shape (L, S) = {allowed[0]} or (b * num_heads, L, S) = {allowed[1]}, "
                f"as nn.MultiheadAttention requires; got {tuple(attn_mask.shape)}"
            )
    if key_padding_mask is not None:
        key_padding_mask = _checks.tensor("key_padding_mask", key_padding_mask)
        expected = (s_kv,) if unbatched else (b, s_kv)
        if tuple(key_padding_mask.shape) != expected:
            raise ValueError(
                f"key_padding_mask must have shape {'(S,)' if unbatched else '(b, S)'} = {expected}, "
                f"as nn.MultiheadAttention requires; got {tuple(key_padding_mask.shape)}"
            )


_HOOK_DICTS = (
    "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks",
    "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_backward_pre_hooks", "_backward_hooks",
)


def _carry_hooks(old: nn.Module, new: nn.Module) -> None:
    """Hooks registered on the replaced module now run on its drop-in."""
    for name in _HOOK_DICTS:
        if hasattr(old, name):
            getattr(new, name).update(getattr(old, name))


def _drop_in_for(module: nn.MultiheadAttention) -> TorchMultiheadAttention:
    drop_in = TorchMultiheadAttention.from_torch(module)
    _carry_hooks(module, drop_in)
    return drop_in


def replace_torch_attention(model: nn.Module) -> nn.Module:
    """Swap every `nn.MultiheadAttention` in `model` for [`TorchMultiheadAttention`][mha.TorchMultiheadAttention].

    Weights, `batch_first`, training mode and the hooks registered on each
    replaced module (forward, forward-pre and backward) carry over, so the
    model computes the same function and its hooks still fire. The model's
    `state_dict` keeps PyTorch's keys, so stock checkpoints load into it and
    its checkpoints load into a stock model. `nn.TransformerEncoder` containers get
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
        >>> stock = torch.nn.TransformerEncoderLayer(16, 4, batch_first=True).eval()
        >>> stock.load_state_dict(layer.state_dict())  # the checkpoint keeps PyTorch's keys
        <All keys matched successfully>
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, nn.MultiheadAttention):
        return _drop_in_for(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.MultiheadAttention):
                setattr(parent, name, _drop_in_for(child))
        if isinstance(parent, nn.TransformerEncoder):
            parent.use_nested_tensor = False
    return model
