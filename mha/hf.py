"""`mha` as the attention of Hugging Face Transformers models.

Transformers lets a library register an attention function under a name
(`AttentionInterface`) and the mask format that function wants
(`AttentionMaskInterface`). [`register`][mha.hf.register] registers both under
`"mha"`:

    import mha.hf
    mha.hf.register()
    model = AutoModelForCausalLM.from_config(config, attn_implementation="mha")

The masks are Transformers' boolean SDPA masks, True where a query may attend:
`mha`'s own convention. The attention runs on `mha`'s fused path, or on its
math path when the model asks for the weights (`output_attentions=True`).

`transformers` is an optional dependency (`pip install "mha[hf]"`), imported
only by this module. Shape letters are those of [`mha`][mha].
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from mha.functional import attend

__all__ = ["NAME", "attention_forward", "register"]

NAME = "mha"


def attention_forward(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[Tensor, Tensor | None]:
    """An attention function with the signature Transformers calls.

    Args:
        module: the model's attention layer (read for `is_causal`).
        query: `(b, n_h, s_q, d)`, rotary positions applied.
        key: `(b, n_kv, s_kv, d)`, from the model's cache when it has one.
        value: `(b, n_kv, s_kv, d_v)`.
        attention_mask: a boolean `(b, 1, s_q, s_kv)` mask, True = may attend,
            or `None` when the model's mask is purely causal (or absent).
        dropout: on the attention weights; Transformers passes 0 in eval.
        scaling: multiplies the scores.
        is_causal: overrides `module.is_causal`.
        **kwargs: `output_attentions=True` asks for the weights; features
            `mha` does not have (`softcap`, `position_bias`, sinks, sliding
            windows given as kwargs) are refused.

    Returns:
        `(output, weights)`: output `(b, s_q, n_h, d_v)` as Transformers
        expects; weights `(b, n_h, s_q, s_kv)` when requested, else `None`.

    Raises:
        ValueError: for an option `mha` cannot compute exactly.
    """
    unsupported = [k for k in ("softcap", "position_bias", "s_aux", "sinks") if kwargs.get(k) is not None]
    if unsupported:
        raise ValueError(f"attn_implementation='mha' does not support {unsupported}; use 'eager' for this model")
    causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    s_q, s_kv = query.shape[2], key.shape[2]
    # Transformers' masks leave out a purely causal pattern (attention_mask is None);
    # its causal alignment is then top-left, with any extra keys being empty
    # static-cache slots: drop them, and the bottom-right alignment of mha agrees.
    causal = bool(causal) and attention_mask is None and s_q > 1
    if causal and s_kv > s_q:
        key, value = key[:, :, :s_q], value[:, :, :s_q]
    path = "math" if _weights_requested(kwargs) else "fused"  # only the math path has weights
    context, weights = attend(query, key, value, attention_mask, causal, scaling, dropout, path)
    return context.transpose(1, 2).contiguous(), weights


def _weights_requested(kwargs: dict[str, Any]) -> bool:
    """Whether the model will record this layer's weights (`output_attentions=True`).

    Some models (GPT-2) drop `output_attentions` before their layers; Transformers
    then collects the weights through a context variable, which says so too.
    """
    if kwargs.get("output_attentions", False):
        return True
    try:
        from transformers.utils.output_capturing import _active_collector
    except ImportError:  # an older layout: only the keyword argument tells
        return False
    collected = _active_collector.get()  # Transformers' wrapper also works under torch.compile
    return bool(collected) and "attentions" in collected


def register(name: str = NAME) -> None:
    """Register `mha` with Transformers as `attn_implementation=name`.

    Registers [`attention_forward`][mha.hf.attention_forward] with
    `transformers.AttentionInterface` and Transformers' boolean SDPA mask with
    `transformers.AttentionMaskInterface`, both under `name`. Safe to call twice.

    Raises:
        ImportError: when `transformers` is not installed.
    """
    try:
        from transformers import AttentionInterface, AttentionMaskInterface
        from transformers.masking_utils import sdpa_mask
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError('mha.hf needs transformers: pip install "mha[hf]"') from error
    AttentionInterface.register(name, attention_forward)
    AttentionMaskInterface.register(name, sdpa_mask)
