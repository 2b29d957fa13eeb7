"""Conversion between Transformers attention layers and `mha.MultiHeadAttention`.

[`from_hf`][mha.convert_hf.from_hf] turns one attention layer of a Hugging
Face Transformers model (`model.model.layers[i].self_attn`) into a
[`mha.MultiHeadAttention`][mha.MultiHeadAttention] that computes the same
output from the same hidden states and positions, its weights copied;
[`to_hf`][mha.convert_hf.to_hf] copies them back, so a model can be changed
layer by layer and saved as a Transformers checkpoint.

What is read from the layer and its `config`, for Llama, Mistral, Qwen 2/3,
Gemma 2/3, Phi-3 and gpt-oss (and any layer built the same way):

| Transformers | mha |
|---|---|
| `q_proj`, `k_proj`, `v_proj`, `o_proj` (Phi-3: fused `qkv_proj`) | `q_proj`, `k_proj`, `v_proj`, `out_proj` |
| `config.num_attention_heads`, `num_key_value_heads`, `layer.head_dim` | `num_heads`, `num_kv_heads`, `head_dim` |
| `layer.scaling` (Gemma: `query_pre_attn_scalar ** -0.5`) | `scale` |
| `rope_parameters`, `partial_rotary_factor` | `RotaryEmbedding(..., interleaved=False, rotary_dim, scaling)` |
| `q_norm`, `k_norm` (Qwen 3: `w·x̂`; Gemma 3: `(1 + w)·x̂`) | `qk_norm=True`, weights `w` or `1 + w` |
| `sinks` (gpt-oss) | `sinks=True` |
| `attn_logit_softcapping` (Gemma 2) | `softcap` |
| `layer.sliding_window` (Qwen 2/3, Gemma 2/3, gpt-oss), `config.sliding_window` (Mistral, Phi-3) | `sliding_window` |
| `config.attention_dropout` | `dropout` |

Both count a window the same way: with a window `w`, the query at position
`p` sees the keys `p - w < j <= p`, its own included (Transformers'
`masking_utils.sliding_window_overlay`: `kv_idx > q_idx - sliding_window`,
with the causal mask). A projection without a bias (Qwen 2's `o_proj`) gets
`bias = None`. A layer with something `mha` cannot compute exactly raises
`ValueError` naming it: a `rope_type` other than `default`, `linear`,
`dynamic`, `llama3` and `yarn`, or a q/k-norm of another form.
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from mha.attention import MultiHeadAttention
from mha.rotary import RotaryEmbedding

__all__ = ["from_hf", "to_hf"]


@dataclass
class _Norm:
    """A q/k-norm of the layer: its weight as mha holds it (`offset` added), and its eps."""

    module: Any
    eps: float
    offset: float  # 1.0 for Gemma's (1 + w) form, else 0.0


@dataclass
class _Layer:
    """What a Transformers attention layer computes, read once."""

    name: str
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    scale: float
    dropout: float
    weights: dict[str, tuple[Tensor, Tensor | None]]  # q, k, v, o -> (weight, bias)
    rotary: RotaryEmbedding
    norms: dict[str, _Norm] = field(default_factory=dict)
    sinks: Tensor | None = None
    softcap: float | None = None
    window: int | None = None

    def options(self) -> dict[str, object]:
        """`MultiHeadAttention` keywords beyond the plain layer's."""
        options: dict[str, object] = {}
        if self.head_dim * self.num_heads != self.hidden_size:
            options["head_dim"] = self.head_dim
        if self.norms:
            options["qk_norm"] = True
            options["qk_norm_eps"] = self.norms["q"].eps
        if self.sinks is not None:
            options["sinks"] = True
        if self.softcap is not None:
            options["softcap"] = self.softcap
        if self.window is not None:
            options["sliding_window"] = self.window
        return options


_WHY = {
    "head_dim": "a head width other than hidden_size / num_heads",
    "qk_norm": "q/k-norm",
    "qk_norm_eps": "q/k-norm",
    "sinks": "attention sinks",
    "softcap": "soft-capped scores",
    "sliding_window": "a sliding window",
}


def from_hf(layer: nn.Module) -> MultiHeadAttention:
    """An `mha.MultiHeadAttention` that computes what a Transformers attention layer computes.

    The weights are copied (the new module shares no storage with `layer`),
    with the layer's dtype and device; the rotary positions are those of the
    layer's model (`config.rope_parameters`), in Transformers' layout of
    halves; a sliding layer's window is the module's `sliding_window`. Call
    the result with `is_causal=True` for a prompt, or with the cache from
    its `new_cache` to decode (for a sliding layer a rolling cache of the
    window's length). Positions count from 0 as in the model; a cache gives
    the next positions itself.

    Args:
        layer: a Transformers attention layer (`LlamaAttention`,
            `MistralAttention`, `Qwen2Attention`, `Qwen3Attention`,
            `Gemma2Attention`, `Gemma3Attention`, `Phi3Attention`,
            `GptOssAttention`, or one with the same attributes).

    Returns:
        The converted module, in the layer's training mode.

    Raises:
        ValueError: the layer has something `mha` cannot compute exactly
            (an unsupported `rope_type`, a norm of another form, a bidirectional
            layer such as Gemma's with `use_bidirectional_attention`); the
            message names it.
        TypeError: `layer` is not an attention layer of this kind.

    Examples:
        >>> import torch, mha
        >>> from transformers import Qwen2Config
        >>> from transformers.models.qwen2.modeling_qwen2 import Qwen2Attention
        >>> config = Qwen2Config(hidden_size=64, num_attention_heads=4, num_key_value_heads=2)
        >>> converted = mha.from_hf(Qwen2Attention(config, layer_idx=0))
        >>> converted.q_proj.bias is not None, converted.out_proj.bias is None  # as in Qwen 2
        (True, True)
        >>> converted.attention.positional
        RotaryEmbedding(head_dim=16, base=10000.0, interleaved=False)
    """
    spec = _read(layer)
    options = spec.options()
    accepted = inspect.signature(MultiHeadAttention).parameters
    for name in options:
        if name not in accepted:
            raise ValueError(
                f"{spec.name} uses {_WHY[name]}, which needs MultiHeadAttention({name}=...); "
                "this version of mha does not have that option"
            )
    weight = spec.weights["q"][0]
    has_bias = any(b is not None for _, b in spec.weights.values())
    module = MultiHeadAttention(
        spec.hidden_size,
        spec.num_heads,
        spec.dropout,
        num_kv_heads=spec.num_kv_heads,
        bias=has_bias,
        scale=spec.scale,
        positional=spec.rotary,
        device=weight.device,
        dtype=weight.dtype,
        **options,  # type: ignore[arg-type]
    )
    with torch.no_grad():
        for key, (w, b) in spec.weights.items():
            projection = _projection(module, key)
            projection.weight.copy_(w)
            if b is None:
                projection.bias = None  # type: ignore[assignment]  # as in the layer: Qwen 2 has no o_proj bias
            else:
                projection.bias.copy_(b)
        for key, norm in spec.norms.items():
            ours = getattr(module.attention, f"{key}_norm")
            ours.weight.copy_(norm.module.weight + norm.offset)
        if spec.sinks is not None:
            _sinks(module).copy_(spec.sinks)
    return module.train(layer.training)


def to_hf(module: MultiHeadAttention, layer: nn.Module) -> nn.Module:
    """Copy the weights of `module` into the Transformers attention `layer`, the way back of `from_hf`.

    `layer` must compute what `module` computes with other weights: the same
    sizes, scale, rotary positions and options (the layer of the model the
    module was converted from, or of its configuration). Only its parameters
    change, in place; a Transformers checkpoint saved afterwards holds
    `module`'s weights. `to_hf(from_hf(layer), layer)` gives every weight back
    bit for bit, except Gemma's q/k-norm weights: mha holds `1 + w`, rounded
    once, so `w` comes back within half a unit in the last place of `1 + w`
    (6e-8 in float32 while `1 + w < 2`).

    Args:
        module: an `mha.MultiHeadAttention`, for example from
            [`from_hf`][mha.convert_hf.from_hf] and then trained.
        layer: the Transformers attention layer to write into.

    Returns:
        `layer`.

    Raises:
        ValueError: `module` and `layer` differ in something other than
            weights (the message names it), or `layer` cannot be converted
            (see `from_hf`). Nothing is written then.
        TypeError: `module` is not an `mha.MultiHeadAttention`.

    Examples:
        >>> import torch, mha
        >>> from transformers import LlamaConfig
        >>> from transformers.models.llama.modeling_llama import LlamaAttention
        >>> config = LlamaConfig(hidden_size=64, num_attention_heads=4)
        >>> layer = LlamaAttention(config, layer_idx=0)
        >>> converted = mha.from_hf(layer)
        >>> with torch.no_grad():
        ...     _ = converted.q_proj.weight.mul_(2)
        ...
        >>> mha.to_hf(converted, LlamaAttention(config, layer_idx=0)).q_proj.weight.equal(2 * layer.q_proj.weight)
        True
    """
    if not isinstance(module, MultiHeadAttention):
        raise TypeError(f"module must be a mha.MultiHeadAttention, got {type(module).__name__}")
    spec = _read(layer)
    _check_same_computation(module, spec)
    with torch.no_grad():
        for key, (w, b) in spec.weights.items():
            projection = _projection(module, key)
            w.copy_(projection.weight)
            if b is not None:
                b.copy_(projection.bias)
        for key, norm in spec.norms.items():
            norm.module.weight.copy_(getattr(module.attention, f"{key}_norm").weight - norm.offset)
        if spec.sinks is not None:
            spec.sinks.copy_(_sinks(module))
    return layer


def _sinks(module: MultiHeadAttention) -> Tensor:
    sinks: Tensor = module.attention.sinks  # type: ignore[assignment]  # a Parameter when sinks=True
    return sinks


def _projection(module: MultiHeadAttention, key: str) -> nn.Linear:
    return getattr(module, {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "out_proj"}[key])


def _read(layer: Any) -> _Layer:
    """Everything `from_hf` and `to_hf` need from `layer`, with the checks that it can be converted."""
    name = type(layer).__name__
    config = getattr(layer, "config", None)
    if not isinstance(layer, nn.Module) or config is None or not hasattr(layer, "o_proj"):
        raise TypeError(
            f"layer must be a Transformers attention layer (with .config, .o_proj and q/k/v or qkv projections), "
            f"got {name}"
        )
    if getattr(layer, "is_causal", True) is not True:
        # A bidirectional layer (Gemma 2/3 with use_bidirectional_attention) would need
        # is_causal=False at every call, which the converted module cannot carry.
        raise ValueError(
            f"{name} is bidirectional (layer.is_causal={layer.is_causal!r}, e.g. use_bidirectional_attention=True); "
            "from_hf and to_hf convert causal layers only"
        )
    # Mistral's and Phi-3's layers read the window from their config; Qwen 2/3, Gemma and
    # gpt-oss keep it per layer (None on their full-attention layers).
    window: Any = layer.sliding_window if hasattr(layer, "sliding_window") else getattr(config, "sliding_window", None)
    n_h, n_kv, d = config.num_attention_heads, config.num_key_value_heads, int(getattr(layer, "head_dim"))  # noqa: B009
    weights = _projections(layer, n_h * d, n_kv * d)
    norms = {key: _norm(layer, key) for key in ("q", "k") if getattr(layer, f"{key}_norm", None) is not None}
    sinks = getattr(layer, "sinks", None)
    softcap = getattr(layer, "attn_logit_softcapping", None)
    return _Layer(
        name=name,
        hidden_size=config.hidden_size,
        num_heads=n_h,
        num_kv_heads=n_kv,
        head_dim=d,
        scale=float(getattr(layer, "scaling")),  # noqa: B009
        dropout=float(getattr(config, "attention_dropout", 0.0) or 0.0),
        weights=weights,
        rotary=_rotary(layer, config, d),
        norms=norms,
        sinks=sinks.data if isinstance(sinks, Tensor) else None,
        softcap=None if softcap is None else float(softcap),
        window=None if window is None else int(window),
    )


def _projections(layer: Any, q_width: int, kv_width: int) -> dict[str, tuple[Tensor, Tensor | None]]:
    """(weight, bias) of q, k, v and o: views of the layer's parameters (Phi-3's fused qkv split by rows)."""
    o = layer.o_proj
    if hasattr(layer, "qkv_proj"):
        fused = layer.qkv_proj
        split = (q_width, kv_width, kv_width)
        ws = fused.weight.data.split(split)
        bs = (None,) * 3 if fused.bias is None else fused.bias.data.split(split)
        pairs = dict(zip("qkv", zip(ws, bs, strict=True), strict=True))
    else:
        pairs = {
            k: (p.weight.data, None if p.bias is None else p.bias.data)
            for k, p in (("q", layer.q_proj), ("k", layer.k_proj), ("v", layer.v_proj))
        }
    pairs["o"] = (o.weight.data, None if o.bias is None else o.bias.data)
    return pairs


def _norm(layer: Any, key: str) -> _Norm:
    """A q/k-norm's form, found by computing it: `w·x̂` (Qwen 3) or `(1 + w)·x̂` (Gemma 3)."""
    norm = getattr(layer, f"{key}_norm")
    eps = getattr(norm, "eps", getattr(norm, "variance_epsilon", None))
    weight = getattr(norm, "weight", None)
    if not isinstance(eps, float) or not isinstance(weight, Tensor) or weight.ndim != 1:
        raise ValueError(
            f"{type(layer).__name__}.{key}_norm ({type(norm).__name__}) is not an RMSNorm with weight and eps"
        )
    probe = torch.randn(3, weight.shape[0], generator=torch.Generator().manual_seed(0)).to(weight)
    # Compared in float32 with the layer's dtype's rounding allowed: a bfloat16 norm
    # rounds its output, and the two forms differ by x̂ itself, far above that rounding.
    tolerance = max(1e-4, 4 * torch.finfo(weight.dtype).eps)
    with torch.no_grad():
        out = norm(probe).float()
        for offset in (0.0, 1.0):
            expected = nn.functional.rms_norm(probe.float(), (weight.shape[0],), weight.float() + offset, eps)
            if torch.allclose(out, expected, rtol=tolerance, atol=tolerance):
                return _Norm(norm, eps, offset)
    raise ValueError(
        f"{type(layer).__name__}.{key}_norm ({type(norm).__name__}) computes neither w·x/rms(x) nor (1 + w)·x/rms(x); "
        "mha's qk_norm cannot express it"
    )


def _rope_parameters(config: Any, layer: Any) -> tuple[dict, str | None]:
    """The rotary settings of this layer (Gemma 3 keeps one set per layer type)."""
    parameters = dict(getattr(config, "rope_parameters", None) or {})
    layer_types = getattr(config, "layer_types", None)
    layer_type = layer_types[layer.layer_idx] if layer_types is not None and hasattr(layer, "layer_idx") else None
    if layer_type is not None and isinstance(parameters.get(layer_type), dict):
        return dict(parameters[layer_type]), layer_type
    return parameters, layer_type


def _rotary(layer: Any, config: Any, head_dim: int) -> RotaryEmbedding:
    """The model's rotary embedding for this layer, checked against Transformers' own frequencies."""
    parameters, layer_type = _rope_parameters(config, layer)
    if "rope_theta" not in parameters:
        raise ValueError(
            f"{type(layer).__name__}'s config has no rope_parameters['rope_theta']; mha needs rotary positions"
        )
    theirs, factor = _transformers_frequencies(layer, config, layer_type)
    scaling = {k: v for k, v in parameters.items() if k not in ("rope_theta", "partial_rotary_factor")}
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type == "dynamic":
        scaling["original_max_position_embeddings"] = config.max_position_embeddings
    if rope_type == "yarn" and scaling.get("factor") is None:
        scaling["max_position_embeddings"] = config.max_position_embeddings
    rotary = RotaryEmbedding(
        head_dim,
        float(parameters["rope_theta"]),
        interleaved=False,
        rotary_dim=2 * theirs.numel(),
        scaling=None if rope_type == "default" else scaling,
    )
    ours = rotary.frequencies(torch.float32, theirs.device)
    if not torch.equal(ours, theirs.float()) or rotary.attention_factor != factor:
        raise ValueError(
            f"{type(layer).__name__}: the rotary frequencies mha computes from rope_parameters={parameters} "
            f"differ from the model's rotary embedding's (max difference {(ours - theirs).abs().max().item():.2e}, "
            f"attention factor {rotary.attention_factor} against {factor})"
        )
    return rotary


def _transformers_frequencies(layer: Any, config: Any, layer_type: str | None) -> tuple[Tensor, float]:
    """`inv_freq` and `attention_scaling` of the rotary embedding class of the layer's own model."""
    source = sys.modules[type(layer).__module__]
    classes = [c for n, c in vars(source).items() if n.endswith("RotaryEmbedding") and isinstance(c, type)]
    if len(classes) != 1:
        raise ValueError(f"{type(layer).__name__}: cannot find its model's rotary embedding class in {source.__name__}")
    rope = classes[0](config)
    prefix = f"{layer_type}_" if layer_type is not None and hasattr(rope, f"{layer_type}_inv_freq") else ""
    return getattr(rope, f"{prefix}inv_freq"), float(getattr(rope, f"{prefix}attention_scaling"))


def _check_same_computation(module: MultiHeadAttention, spec: _Layer) -> None:
    """Raise unless `module` computes what `spec`'s layer computes, weights aside."""
    attention = module.attention
    rope = attention.positional
    ours = {
        "hidden_size": module.hidden_size,
        "num_heads": module.num_heads,
        "num_kv_heads": module.num_kv_heads,
        "head_dim": module.head_dim,
        "scale": attention.scale,
        "rotary": None if rope is None else _rotary_key(rope),
        "qk_norm": getattr(attention, "q_norm", None) is not None,
        "qk_norm_eps": getattr(attention, "qk_norm_eps", None) if getattr(attention, "q_norm", None) else None,
        "sinks": getattr(attention, "sinks", None) is not None,
        "softcap": getattr(attention, "softcap", None),
        "sliding_window": attention.sliding_window,
        "biases": tuple(_projection(module, k).bias is not None for k in "qkvo"),
    }
    theirs = {
        "hidden_size": spec.hidden_size,
        "num_heads": spec.num_heads,
        "num_kv_heads": spec.num_kv_heads,
        "head_dim": spec.head_dim,
        "scale": spec.scale,
        "rotary": _rotary_key(spec.rotary),
        "qk_norm": bool(spec.norms),
        "qk_norm_eps": spec.norms["q"].eps if spec.norms else None,
        "sinks": spec.sinks is not None,
        "softcap": spec.softcap,
        "sliding_window": spec.window,
        "biases": tuple(spec.weights[k][1] is not None for k in "qkvo"),
    }
    for key, value in theirs.items():
        if ours[key] != value:
            raise ValueError(
                f"module and layer differ in {key}: the module has {ours[key]!r}, {spec.name} has {value!r}"
            )


def _rotary_key(rope: RotaryEmbedding) -> tuple[object, ...]:
    return (rope.head_dim, rope.base, rope.interleaved, rope.rotary_dim, rope._scaling)
