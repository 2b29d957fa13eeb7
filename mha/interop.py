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

from typing import cast

import torch
from torch import Tensor, nn

from mha import _checks, masks
from mha.attention import Attention, MultiHeadAttention

__all__ = ["from_torch", "to_torch", "TorchMultiheadAttention", "replace_torch_attention"]


def _check_torch_module(module: object) -> nn.MultiheadAttention | TorchMultiheadAttention:
    if not isinstance(module, (nn.MultiheadAttention, TorchMultiheadAttention)):
        raise TypeError(
            f"module must be a torch.nn.MultiheadAttention or a TorchMultiheadAttention, got {type(module).__name__}"
        )
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


def from_torch(module: nn.MultiheadAttention | TorchMultiheadAttention) -> MultiHeadAttention:
    """Build a [`mha.MultiHeadAttention`][mha.MultiHeadAttention] with the same weights.

    Works with packed (`in_proj_weight`) and separate
    (`q/k/v_proj_weight`) layouts, with or without bias. The result is
    batch-first whatever `module.batch_first` says; the training flag is
    copied.

    Args:
        module: the PyTorch module, or a
            [`TorchMultiheadAttention`][mha.TorchMultiheadAttention] (same parameters).

    Returns:
        An equivalent module on the same device and dtype.

    Raises:
        TypeError: if `module` is neither.
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
    if module.in_proj_weight is not None:  # (the drop-in's _qkv_same_embed_dim is always False)
        wq, wk, wv = module.in_proj_weight.chunk(3)  # (E, E) each
    else:
        wq, wk, wv = (cast(Tensor, w) for w in (module.q_proj_weight, module.k_proj_weight, module.v_proj_weight))
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


_TORCH_WEIGHTS = (
    "in_proj_weight",
    "in_proj_bias",
    "q_proj_weight",
    "k_proj_weight",
    "v_proj_weight",
    "bias_k",
    "bias_v",
)


class TorchMultiheadAttention(nn.Module):
    """A drop-in for `torch.nn.MultiheadAttention` that runs on `mha`.

    Same constructor, same parameters, same call signature, same return
    value `(output, weights or None)`, same mask convention (boolean True =
    *blocked*; float masks are added), same mask shapes (what PyTorch rejects
    is rejected) and the same `batch_first` handling. The parameters are
    PyTorch's, registered in its order: `in_proj_weight` `(3E, E)` (or
    `q_proj_weight`, `k_proj_weight`, `v_proj_weight` when `kdim` or `vdim`
    differ), `in_proj_bias`, `bias_k` and `bias_v` with `add_bias_kv`, then
    `out_proj.weight` and `out_proj.bias`, initialised as PyTorch does. So
    `parameters()`, `named_parameters()` and `state_dict()` list what
    PyTorch's list, in the same order: code that initialises or optimises by
    iterating them, and checkpoints, work both ways. The forward pass reads
    q, k and v's weights as slices of `in_proj_weight` (gradients flow to
    it); self-attention projects with one packed matrix product, as PyTorch
    does. The attention itself is an [`mha.Attention`][mha.Attention] (no
    parameters of its own). Differences, all deliberate:

    * a query that may attend to nothing gets a zero context and zero weights
      instead of NaN, so its output is `out_proj.bias` (zero without bias);
    * `is_causal=True` without an `attn_mask` applies a causal mask
      (PyTorch raises there); with an `attn_mask` the mask is used as given,
      `is_causal` being PyTorch's hint that it is causal;
    * assigning one of PyTorch's weights a tensor of another shape, or one
      this module does not have (`q_proj_weight` when it is packed), raises
      at once instead of failing (or being ignored) in the next call;
    * TorchScript is refused with a clear error (it is deprecated upstream;
      use `torch.compile` or `torch.export`).

    PyTorch's Transformer layers read `_qkv_same_embed_dim` to decide whether
    to skip `self_attn.forward` and run their own fused kernel on the packed
    weights. This module reports `False`, so the layers call `forward`; code
    of your own that branches on that private flag should test
    `in_proj_weight is not None` instead.

    Args:
        embed_dim: `E` (= `h`), the width of queries and of the output.
        num_heads: `n_h`; must divide `embed_dim`.
        dropout: probability of zeroing an attention weight, in training only.
        bias: whether the input and output projections have biases.
        add_bias_kv: append a learned key and value (`bias_k`, `bias_v`) to
            every sequence of keys and values.
        add_zero_attn: append a zero key and value.
        kdim: width of `key` inputs; defaults to `embed_dim`.
        vdim: width of `value` inputs; defaults to `embed_dim`.
        batch_first: the layout of inputs and outputs, `(b, s, E)` instead of
            `(s, b, E)`.
        device: where to create the parameters.
        dtype: of the parameters.

    Raises:
        TypeError: for a non-int size or a non-bool flag.
        ValueError: for a size that is not positive, or `num_heads` that does
            not divide `embed_dim`.

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
        >>> [name for name, _ in ours.named_parameters()] == [name for name, _ in theirs.named_parameters()]
        True
    """

    _qkv_same_embed_dim = False
    in_proj_weight: nn.Parameter | None
    q_proj_weight: nn.Parameter | None
    k_proj_weight: nn.Parameter | None
    v_proj_weight: nn.Parameter | None
    in_proj_bias: nn.Parameter | None
    bias_k: nn.Parameter | None
    bias_v: nn.Parameter | None

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        # Positional like nn.MultiheadAttention's, on purpose: the drop-in takes the calls written for it.
        super().__init__()
        _checks.positive_int("embed_dim", embed_dim)
        _checks.positive_int("num_heads", num_heads)
        _checks.divisible("embed_dim", embed_dim, "num_heads", num_heads)
        attention = Attention(embed_dim, num_heads, dropout=dropout)
        self.kdim = embed_dim if kdim is None else _checks.positive_int("kdim", kdim)
        self.vdim = embed_dim if vdim is None else _checks.positive_int("vdim", vdim)
        for name, value in (("bias", bias), ("add_bias_kv", add_bias_kv), ("add_zero_attn", add_zero_attn)):
            _checks.flag(name, value)
        self.batch_first = _checks.flag("batch_first", batch_first)
        self.add_zero_attn = add_zero_attn
        factory = {"device": device, "dtype": _checks.floating_dtype("dtype", dtype)}
        e = embed_dim

        def parameter(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.empty(shape, **factory))  # type: ignore[arg-type]

        # Registered in nn.MultiheadAttention's order, which parameters() and state_dict() follow.
        packed = self.kdim == e and self.vdim == e
        self.register_parameter("q_proj_weight", None if packed else parameter(e, e))
        self.register_parameter("k_proj_weight", None if packed else parameter(e, self.kdim))
        self.register_parameter("v_proj_weight", None if packed else parameter(e, self.vdim))
        self.register_parameter("in_proj_weight", parameter(3 * e, e) if packed else None)
        self.register_parameter("in_proj_bias", parameter(3 * e) if bias else None)
        self.out_proj = nn.Linear(e, e, bias, **factory)
        self.register_parameter("bias_k", parameter(1, 1, e) if add_bias_kv else None)
        self.register_parameter("bias_v", parameter(1, 1, e) if add_bias_kv else None)
        self.attention = attention
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """`nn.MultiheadAttention`'s initialisation, in its order: the same seed gives the same weights."""
        if self.in_proj_weight is not None:
            nn.init.xavier_uniform_(self.in_proj_weight)
        else:
            for weight in (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight):
                nn.init.xavier_uniform_(cast(Tensor, weight))
        if self.in_proj_bias is not None:
            nn.init.zeros_(self.in_proj_bias)
            nn.init.zeros_(self.out_proj.bias)
        for extra in (self.bias_k, self.bias_v):
            if extra is not None:
                nn.init.xavier_normal_(extra)

    @classmethod
    def from_torch(cls, module: nn.MultiheadAttention) -> TorchMultiheadAttention:
        """The drop-in for `module`: its options, weights, `batch_first` and training mode.

        Raises:
            TypeError: if `module` is not an `nn.MultiheadAttention`.
        """
        if not isinstance(module, nn.MultiheadAttention):
            raise TypeError(f"module must be a torch.nn.MultiheadAttention, got {type(module).__name__}")
        weight = module.out_proj.weight
        # skip_init: no random initialisation (nor use of the global RNG) for weights about to be overwritten.
        drop_in = nn.utils.skip_init(
            cls,
            module.embed_dim,
            module.num_heads,
            module.dropout,
            module.in_proj_bias is not None,
            module.bias_k is not None,
            module.add_zero_attn,
            module.kdim,
            module.vdim,
            module.batch_first,
            device=weight.device,
            dtype=weight.dtype,
        )
        drop_in.load_state_dict(module.state_dict())
        return drop_in.train(module.training)

    @classmethod
    def from_mha(cls, module: MultiHeadAttention, *, batch_first: bool = False) -> TorchMultiheadAttention:
        """The drop-in computing what `module` computes, with PyTorch's conventions.

        Raises:
            TypeError: if `module` is not a `mha.MultiHeadAttention`.
            ValueError: for features `nn.MultiheadAttention` lacks (grouped-query
                heads, a custom scale, rotary positions).
        """
        return cls.from_torch(to_torch(module, batch_first=batch_first))

    # Read by code written for nn.MultiheadAttention.
    @property
    def embed_dim(self) -> int:
        return self.attention.hidden_size

    @property
    def num_heads(self) -> int:
        return self.attention.num_heads

    @property
    def head_dim(self) -> int:
        return self.attention.head_dim

    @property
    def dropout(self) -> float:
        return self.attention.dropout

    @dropout.setter
    def dropout(self, value: float) -> None:
        self.attention.dropout = _checks.probability("dropout", value)

    def __setattr__(self, name: str, value: Tensor | nn.Module) -> None:
        if name in _TORCH_WEIGHTS and isinstance(value, Tensor) and name in self._parameters:
            _check_replacement(self, name, value)
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
            or `(s_q, E)` unbatched; key: likewise with `s_kv` and `kdim`;
            value: with `s_kv` and `vdim`;
            key_padding_mask: `(b, s_kv)`, or `(s_kv,)` unbatched;
            attn_mask: `(s_q, s_kv)` or `(b * n_h, s_q, s_kv)`; weights:
            `(b, s_q, s_kv)` averaged over heads, else `(b, n_h, s_q, s_kv)`
            (`s_kv` counts the keys `add_bias_kv` and `add_zero_attn` append).

        Raises:
            ValueError: for inputs or masks of shapes PyTorch rejects, and for
                nested (jagged) inputs with `need_weights=True`,
                `add_bias_kv` or `add_zero_attn`.
            TypeError: for a non-tensor input, an input whose dtype is not the
                parameters' (autocast aside) or a non-bool flag.
        """
        for name, t in (("query", query), ("key", key), ("value", value)):
            _checks.tensor(name, t)
        for name, flag in (
            ("need_weights", need_weights),
            ("average_attn_weights", average_attn_weights),
            ("is_causal", is_causal),
        ):
            _checks.flag(name, flag)
        if query.is_nested and (need_weights or self.bias_k is not None or self.add_zero_attn):
            raise ValueError(
                "nested (jagged) inputs cannot return attention weights nor take extra keys; got "
                f"need_weights={need_weights}, add_bias_kv={self.bias_k is not None}, "
                f"add_zero_attn={self.add_zero_attn} (expected all False)"
            )
        self_attention = query is key and key is value  # PyTorch's test for its packed product too
        unbatched = query.dim() == 2
        _check_torch_inputs(self, query, key, value, unbatched)
        _check_torch_masks(query, key, attn_mask, key_padding_mask, self.num_heads, unbatched, self.batch_first)
        if unbatched:
            query, key, value = (t.unsqueeze(0) for t in (query, key, value))
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))  # (b, s, E)
        q, k, v = self._project(query, key, value, self_attention=self_attention)
        causal = is_causal and attn_mask is None
        if self.bias_k is not None or self.add_zero_attn:
            if causal:  # the extra keys come last, so the causal mask is no longer bottom-right: spell it out
                s_q, s_kv = q.shape[1], k.shape[1]
                attn_mask = torch.ones(s_q, s_kv, dtype=torch.bool, device=q.device).triu(s_kv - s_q + 1)
                causal = False
            k, v, attn_mask, key_padding_mask = self._append_extra_keys(k, v, attn_mask, key_padding_mask)
        mask = masks.from_torch_masks(attn_mask, key_padding_mask, num_heads=self.num_heads)
        weights: Tensor | None = None
        if need_weights:
            context, weights = self.attention(q, k, v, mask=mask, is_causal=causal, need_weights=True)
            if average_attn_weights:
                weights = weights.mean(dim=1)  # (b, s_q, s_kv)
        else:
            context = self.attention(q, k, v, mask=mask, is_causal=causal)
        output = self.out_proj(context)
        if unbatched:
            output = output.squeeze(0)
            weights = None if weights is None else weights.squeeze(0)
        elif not self.batch_first:
            output = output.transpose(0, 1)  # (s_q, b, E)
        return output, weights

    def _project(self, query: Tensor, key: Tensor, value: Tensor, *, self_attention: bool) -> list[Tensor]:
        """q, k, v `(b, s, E)` from the parameters themselves (slices of `in_proj_weight`), so gradients reach them."""
        weight, bias = self.in_proj_weight, self.in_proj_bias
        if weight is not None and self_attention and not query.is_nested:
            # One (3E, E) product instead of three (E, E): faster on CPU in float32 and bfloat16
            # (benchmarks/packed_projection.py).
            return list(nn.functional.linear(query, weight, bias).chunk(3, dim=-1))
        if weight is not None:
            weights = weight.chunk(3)
        else:
            weights = (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight)  # type: ignore[assignment]
        biases = (None, None, None) if bias is None else bias.chunk(3)
        inputs = (query, key, value)
        return [nn.functional.linear(x, w, b) for x, w, b in zip(inputs, weights, biases, strict=True)]

    def _append_extra_keys(
        self,
        k: Tensor,
        v: Tensor,
        attn_mask: Tensor | None,
        key_padding_mask: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """Append `add_bias_kv`'s learned key/value, then `add_zero_attn`'s zero one; every query may see them."""
        b, e = k.shape[0], self.embed_dim
        extra_k, extra_v = [], []
        if self.bias_k is not None and self.bias_v is not None:
            extra_k.append(self.bias_k.expand(b, 1, e))
            extra_v.append(self.bias_v.expand(b, 1, e))
        if self.add_zero_attn:
            extra_k.append(k.new_zeros(b, 1, e))
            extra_v.append(v.new_zeros(b, 1, e))
        n = len(extra_k)

        def pad(m: Tensor | None) -> Tensor | None:
            return None if m is None else nn.functional.pad(m, (0, n))  # False / 0.0: not blocked

        return torch.cat([k, *extra_k], dim=1), torch.cat([v, *extra_v], dim=1), pad(attn_mask), pad(key_padding_mask)

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, kdim={self.kdim}, vdim={self.vdim}, "
            f"add_zero_attn={self.add_zero_attn}, batch_first={self.batch_first}"
        )


def _check_expressible(module: MultiHeadAttention) -> None:
    """Raise unless `nn.MultiheadAttention` can express `module`."""
    unsupported = {
        "num_kv_heads": (module.num_kv_heads, module.num_heads),
        "scale": (module.attention.scale, None),
        "positional": (module.attention.positional, None),
        "sliding_window": (module.attention.sliding_window, None),
        "alibi": (module.attention.alibi, False),
    }
    for name, (got, expected) in unsupported.items():
        if got != expected:
            raise ValueError(
                f"nn.MultiheadAttention has no equivalent of {name}={got!r} (expected {name}={expected!r})"
            )


def _check_replacement(module: TorchMultiheadAttention, name: str, value: Tensor) -> None:
    """Assigning one of PyTorch's weights: one this module has, of its shape."""
    current = module._parameters[name]
    if current is None:
        raise ValueError(
            f"this module has no {name} (kdim={module.kdim}, vdim={module.vdim}, "
            f"bias={module.in_proj_bias is not None}, add_bias_kv={module.bias_k is not None}), "
            "so it would never be used (as on nn.MultiheadAttention, which ignores it)"
        )
    if value.shape != current.shape:
        raise ValueError(f"{name} must have shape {tuple(current.shape)}, got {tuple(value.shape)}")


def _check_torch_inputs(
    module: TorchMultiheadAttention,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    unbatched: bool,
) -> None:
    """query, key and value as nn.MultiheadAttention takes them, with the parameters' dtype and device."""
    e, kdim, vdim = module.embed_dim, module.kdim, module.vdim
    if unbatched:
        _checks.shape("query", query, (None, e), lambda: f"(s_q, E={e}) or (b, s_q, E={e})")
        key = _checks.shape("key", key, (None, kdim), lambda: f"(s_kv, kdim={kdim}), unbatched like query")
        s_kv = key.shape[0]
        _checks.shape("value", value, (s_kv, vdim), lambda: f"(s_kv={s_kv}, vdim={vdim}), unbatched like query")
    else:
        names = "(b, s_q, E)" if module.batch_first else "(s_q, b, E)"
        query = _checks.shape("query", query, (None, None, e), lambda: f"{names} with E={e}")
        batch = 0 if module.batch_first else 1
        b = query.shape[batch]

        def expected(s: int | None, width: int) -> tuple[int | None, ...]:
            return (b, s, width) if module.batch_first else (s, b, width)

        legend = "(b, s_kv, {})" if module.batch_first else "(s_kv, b, {})"
        key = _checks.shape("key", key, expected(None, kdim), lambda: legend.format(f"kdim={kdim}") + f" with b={b}")
        length = None if key.is_nested else key.shape[1 - batch]
        _checks.shape(
            "value",
            value,
            expected(length, vdim),
            lambda: legend.format(f"vdim={vdim}") + f" with b={b}, s_kv={length}, like key",
        )
    _checks.floating("query", query)
    weight = module.out_proj.weight
    if query.dtype != weight.dtype and not torch.is_autocast_enabled(query.device.type):
        raise TypeError(
            f"query must have the parameters' dtype {weight.dtype}, got {query.dtype} "
            f"(convert the input, or the module with .to({query.dtype}))"
        )
    for name, t in (("query", query), ("key", key), ("value", value)):
        _checks.same_device(name, t, "the parameters", weight.device)
        if name != "query":
            _checks.same_dtype(name, t, "query", query)


def _check_torch_masks(
    query: Tensor,
    key: Tensor,
    attn_mask: Tensor | None,
    key_padding_mask: Tensor | None,
    num_heads: int,
    unbatched: bool,
    batch_first: bool,
) -> None:
    """The mask shapes nn.MultiheadAttention accepts, and no others."""
    if query.is_nested:
        return
    b = 1 if unbatched else query.shape[0 if batch_first else 1]
    s_q = query.shape[0 if unbatched or not batch_first else 1]
    s_kv = key.shape[0 if unbatched or not batch_first else 1]
    if attn_mask is not None:
        attn_mask = masks._torch_convention("attn_mask", attn_mask)
        allowed = [(s_q, s_kv), (b * num_heads, s_q, s_kv)]
        if tuple(attn_mask.shape) not in allowed:
            raise ValueError(
                f"attn_mask must have shape (L, S) = {allowed[0]} or (b * num_heads, L, S) = {allowed[1]}, "
                f"as nn.MultiheadAttention requires; got {tuple(attn_mask.shape)}"
            )
    if key_padding_mask is not None:
        key_padding_mask = masks._torch_convention("key_padding_mask", key_padding_mask)
        expected = (s_kv,) if unbatched else (b, s_kv)
        if tuple(key_padding_mask.shape) != expected:
            raise ValueError(
                f"key_padding_mask must have shape {'(S,)' if unbatched else '(b, S)'} = {expected}, "
                f"as nn.MultiheadAttention requires; got {tuple(key_padding_mask.shape)}"
            )


_HOOK_DICTS = (
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_backward_pre_hooks",
    "_backward_hooks",
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
