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

Every keyword a model passes to the attention function is in one of three
tables: folded into the mask (`position_bias`, `indices`, `block_indices`),
passed to the attention kernel (`s_aux`/`sinks` as one sink
logit per head, `softcap`), or known to need nothing (`sliding_window` is
already in the mask, ...). Any other keyword with a value raises, so a new
feature in a new model fails loudly.

`transformers` is an optional dependency (`pip install "mha[hf]"`), imported
only by this module. Shape letters are those of [`mha`][mha].
"""

from __future__ import annotations

import functools
import inspect
import re
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from mha import _checks, _kernels, masks

__all__ = ["NAME", "attention_forward", "mask_function", "register"]

NAME = "mha"
_NAMES: set[str] = set()  # every name register() was called with

# Keywords that need nothing from mha, and why (the attention is still exact).
_NO_EFFECT = {
    "sliding_window": "Transformers puts the window into the mask, as for eager and sdpa",
    "position_ids": "packed sequences are in the mask Transformers builds from position_ids",
    "max_length_q": "a flash-attention kernel size; the mask holds the sequences",
    "max_length_k": "a flash-attention kernel size; the mask holds the sequences",
    "deterministic": "a flash-attention kernel option; mha's kernels are deterministic on CPU",
    "output_hidden_states": "not about attention",
    "output_router_logits": "not about attention",
    "num_items_in_batch": "not about attention (the loss)",
    "seq_idx": "for state-space layers; the mask holds the sequences",
    "use_cache": "not about attention (the cache was read before the call)",
    "return_dict": "not about attention",
}
# Keywords mha cannot compute: keyword -> the feature's name. Empty today; a
# keyword whose value mha cannot take in some models is refused by its check below.
_REFUSED: dict[str, str] = {}
# Keywords passed through to mha._kernels.attend_unchecked: Transformers' keyword -> its.
# gpt-oss, DeepSeek-V4, Granite-SWA, ... pass their sinks as s_aux; Gemma 2 and
# VaultGemma pass softcap, applied as cap * tanh(scores / cap) before the mask, as mha does.
_CORE_OPTIONS = {"s_aux": "sinks", "sinks": "sinks", "softcap": "softcap"}


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
        module: the model's attention layer (read for `is_causal`, and for
            the block size of `block_indices`).
        query: `(b, n_h, s_q, d)`, rotary positions applied.
        key: `(b, n_kv, s_kv, d)`, from the model's cache when it has one.
        value: `(b, n_kv, s_kv, d_v)`.
        attention_mask: a boolean `(b, 1, s_q, s_kv)` mask, True = may attend,
            or an additive float mask, or `None` when the model's mask is
            purely causal (aligned bottom-right, see
            [`mask_function`][mha.hf.mask_function]) or absent.
        dropout: on the attention weights; Transformers passes 0 in eval.
        scaling: multiplies the scores.
        is_causal: overrides `module.is_causal`.
        **kwargs: `output_attentions=True` asks for the weights.
            `position_bias` (`(b or 1, n_h, s_q, s_kv)`, T5-style) is added to
            the scores; `indices` (`(b, s_q, k)` key positions, DeepSeek-V3.2
            sparse attention) and `block_indices` (`(b, n_i, s_q, k)` key
            blocks, -1 = none) restrict each query to the keys they select.
            `s_aux` or `sinks` (`(n_h,)`, gpt-oss) is one sink logit per
            head, joining the softmax without a value (fused path, rescaled
            by the kernel's log-sum-exp); `softcap` bounds the scores to
            `softcap * tanh(scores / softcap)` before the mask (Gemma 2; math
            path in query chunks). `cu_seq_lens_q`/`cu_seq_lens_k` are
            accepted where the mask already separates the sequences. Keywords that need nothing
            (`sliding_window`, ...) are accepted; the rest raise.

    Returns:
        `(output, weights)`: output `(b, s_q, n_h, d_v)` as Transformers
        expects; weights `(b, n_h, s_q, s_kv)` when requested, else `None`.

    Raises:
        ValueError: for a keyword `mha` does not know, or sinks other than
            one logit per head (Inkling 2's per-token sinks), naming it and
            the model's attention class.
    """
    options = _check_keywords(module, attention_mask, kwargs)
    if "sinks" in options:
        _check_sinks(module, options["sinks"], query.shape[1], "s_aux" if "s_aux" in kwargs else "sinks")
    if "softcap" in options:
        options["softcap"] = _checks.positive_number("softcap", options["softcap"])
    causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    # A None mask is causal aligned bottom-right or no mask at all: mask_function
    # materialises every other case, so the queries may be any suffix of the keys.
    causal = bool(causal) and attention_mask is None and query.shape[2] > 1
    mask = _fold_keywords(module, query, key, attention_mask, kwargs)
    path = "math" if _weights_requested(kwargs) else "fused"  # only the math path has weights
    context, weights = _kernels.attend_unchecked(
        query, key, value, mask=mask, is_causal=causal, scale=scaling, dropout_p=dropout, path=path, **options
    )
    return context.transpose(1, 2).contiguous(), weights


def _known_keywords() -> frozenset[str]:
    """Every keyword `attention_forward` knows what to do with."""
    named = set(inspect.signature(attention_forward).parameters) - {"module", "kwargs"}
    handled = {"output_attentions", "cu_seq_lens_q", "cu_seq_lens_k"}
    return frozenset(named | handled | set(_FOLDED) | set(_NO_EFFECT) | set(_REFUSED) | set(_CORE_OPTIONS))


def _check_keywords(module: nn.Module, attention_mask: Tensor | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Refuse what mha cannot compute; return the options for `attend_unchecked`."""
    for name, value in kwargs.items():
        if value is None or value is False or name in _FOLDED or name in _NO_EFFECT or name == "output_attentions":
            continue
        if name in _REFUSED:
            raise ValueError(
                f"attn_implementation='mha' cannot compute {name}={_show(value)} ({_REFUSED[name]}) that "
                f"{_owner(module)} passes to its attention; use attn_implementation='eager' for this model"
            )
        if name in ("cu_seq_lens_q", "cu_seq_lens_k"):
            _check_packed(module, name, value, attention_mask)
        elif name not in _CORE_OPTIONS:
            raise ValueError(
                f"attn_implementation='mha' does not know the keyword {name}={_show(value)} that "
                f"{_owner(module)} passes to its attention, so it cannot promise the right answer; "
                "use attn_implementation='eager' for this model"
            )
    return {_CORE_OPTIONS[k]: v for k, v in kwargs.items() if k in _CORE_OPTIONS and v is not None}


def _check_sinks(module: nn.Module, sinks: Any, n_h: int, name: str) -> None:
    """mha takes one sink logit per query head; refuse any other shape (per-token sinks) by name."""
    if not isinstance(sinks, Tensor) or tuple(sinks.shape) != (n_h,) or not sinks.is_floating_point():
        raise ValueError(
            f"attn_implementation='mha' takes {name} as one floating-point sink logit per query head, shape "
            f"(n_h={n_h},), but {_owner(module)} passes {name}={_show(sinks)} (per-token or per-batch sinks are "
            "not supported); use attn_implementation='eager' for this model"
        )


def _check_packed(module: nn.Module, name: str, value: Any, attention_mask: Tensor | None) -> None:
    """Flash-style sequence boundaries are only safe when the mask separates the sequences too."""
    if attention_mask is None and isinstance(value, Tensor) and value.numel() > 2:
        raise ValueError(
            f"attn_implementation='mha' got {name} with {value.numel() - 1} packed sequences but no mask "
            f"in {_owner(module)}: pass position_ids that restart at 0 for each sequence (Transformers then "
            "builds the mask that separates them), or use a flash-attention implementation"
        )


def _owner(module: nn.Module) -> str:
    config = getattr(module, "config", None)
    model_type = getattr(config, "model_type", None)
    return type(module).__name__ + (f" (model_type {model_type!r})" if model_type else "")


def _show(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"<tensor of shape {tuple(value.shape)}>"
    return repr(value)


def _fold_position_bias(module: nn.Module, query: Tensor, key: Tensor, mask: Tensor | None, bias: Tensor) -> Tensor:
    # (b or 1, n_h, s_q, s_kv), added to the scores: an additive mask, so the fused kernel keeps it.
    return bias if mask is None else masks.combine_masks(mask, bias)  # type: ignore[return-value]


def _fold_indices(module: nn.Module, query: Tensor, key: Tensor, mask: Tensor | None, indices: Tensor) -> Tensor:
    # (b, s_q, k) or (b, n, s_q, k) key positions each query may see (-1: none), as the
    # DeepSeek-V3.2 indexer chooses them; the eager path scatters them into the mask the same way.
    selected = _scatter(indices, key.shape[2])
    if selected.ndim == 3:
        selected = selected[:, None]
    return _restrict(mask, selected)


def _fold_block_indices(
    module: nn.Module, query: Tensor, key: Tensor, mask: Tensor | None, block_indices: Tensor
) -> Tensor:
    # (b, n_i, s_q, k) blocks of keys each query may see (-1: none); each of the n_i
    # indexer heads serves n_h / n_i query heads, as MiniMax-M3's eager path expands them.
    block = getattr(getattr(module, "indexer", None), "block_size", None)
    if not isinstance(block, int):
        raise ValueError(
            f"attn_implementation='mha' got block_indices from {_owner(module)} but no module.indexer.block_size "
            "to expand them with; use attn_implementation='eager' for this model"
        )
    s_kv = key.shape[2]
    selected = _scatter(block_indices, -(-s_kv // block))
    selected = selected.repeat_interleave(block, dim=-1)[..., :s_kv]
    selected = selected.repeat_interleave(query.shape[1] // selected.shape[1], dim=1)
    return _restrict(mask, selected)


def _scatter(indices: Tensor, size: int) -> Tensor:
    """Booleans `(..., size)`, True at the given positions; -1 entries select nothing."""
    index = indices.long()
    index = index.masked_fill(index < 0, size)  # a spare column, dropped below
    selected = torch.zeros(*index.shape[:-1], size + 1, dtype=torch.bool, device=index.device)
    return selected.scatter_(-1, index, True)[..., :size]


def _restrict(mask: Tensor | None, selected: Tensor) -> Tensor:
    if mask is None:
        return selected
    if mask.dtype == torch.bool:
        return mask & selected
    return mask.masked_fill(~selected, float("-inf"))


# Keywords folded into the mask: keyword -> fold(module, query, key, mask, value) -> mask.
_FOLDED: dict[str, Callable[[nn.Module, Tensor, Tensor, Tensor | None, Tensor], Tensor]] = {
    "position_bias": _fold_position_bias,
    "indices": _fold_indices,
    "block_indices": _fold_block_indices,
}


def _fold_keywords(
    module: nn.Module, query: Tensor, key: Tensor, mask: Tensor | None, kwargs: dict[str, Any]
) -> Tensor | None:
    for name, fold in _FOLDED.items():
        value = kwargs.get(name)
        if value is not None:
            mask = fold(module, query, key, mask, value)
    return mask


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


def mask_function(**kwargs: Any) -> Tensor | None:
    """The mask format registered with Transformers: its boolean SDPA mask, with one exception.

    Transformers' SDPA mask is `None` in three cases: one query, as many
    queries as keys, and a first chunk whose extra keys are empty slots of a
    static cache. The first two are causal aligned bottom-right (the last
    query sees every key), which stays true when a model later keeps only its
    last queries (Gemma 4's KV-shared layers with `logits_to_keep`). The third
    is aligned top-left and would not: here it is materialised, so a `None`
    mask always means bottom-right. This costs a `(b, 1, s_q, s_kv)` boolean
    mask in a static cache's prefill, and the kernel then reads the empty slots.

    A model that does not support `sdpa` may run a causal layer with
    `is_causal=False`, counting on eager's masks; for it, causal masks are
    always built. Also refuses a model whose attention does not go through
    Transformers' attention interface (it would use this mask in its own
    arithmetic).

    Args:
        **kwargs: as Transformers passes them to `sdpa_mask` (`q_length`,
            `kv_length`, `allow_is_causal_skip`, `config`, ...).

    Returns:
        A boolean `(b, 1, s_q, s_kv)` mask, True = may attend, or `None`.

    Raises:
        ValueError: for a model that is not on the attention interface.
    """
    from transformers.masking_utils import sdpa_mask

    config = kwargs.get("config")
    if config is not None:
        _check_on_interface(type(config).__module__.replace(".configuration_", ".modeling_"), type(config).__name__)
    if getattr(config, "_mha_causal_masks", False):
        kwargs = {**kwargs, "allow_is_causal_skip": False}
    mask = sdpa_mask(**kwargs)
    q_length, kv_length = kwargs.get("q_length", 0), kwargs.get("kv_length", 0)
    if mask is None and kwargs.get("allow_is_causal_skip", True) and 1 < q_length != kv_length:
        mask = sdpa_mask(**{**kwargs, "allow_is_causal_skip": False})
    return mask


@functools.cache
def _routes_attention(module_name: str) -> bool:
    """Whether a modeling module calls its attention through Transformers' interface.

    The same test Transformers makes before switching a model's implementation:
    a module that defines an attention layer but never reads
    `ALL_ATTENTION_FUNCTIONS` computes attention its own way.
    """
    module = sys.modules.get(module_name)
    if module is None:
        return True  # custom code we cannot read: trust it, as Transformers does
    try:
        source = inspect.getsource(module)
    except (OSError, TypeError):
        return True
    has_attention = re.search(r"^class \w*Attention\w*\(nn\.Module\):", source, re.MULTILINE) is not None
    return not has_attention or "ALL_ATTENTION_FUNCTIONS" in source


def _check_on_interface(module_name: str, owner: str) -> None:
    if not _routes_attention(module_name):
        raise ValueError(
            f"{owner} ({module_name}) computes attention itself: it does not route attention through "
            "Transformers' attention interface, so attn_implementation='mha' would never run mha; "
            "use attn_implementation='eager' (or 'sdpa' where the model supports it)"
        )


def _guard_model_classes(names: set[str]) -> None:
    """Make models that are not on the attention interface refuse `names` when they are built.

    Transformers accepts any registered name for any model class; Falcon and
    GPT-Neo then fail with `KeyError`, and Bloom or XGLM add the mask to their
    own scores. Transformers checks the implementation in
    `PreTrainedModel.get_correct_attn_implementation` when a model is built or
    switched; the wrapper adds this check there.
    """
    from transformers import PreTrainedModel

    original = PreTrainedModel.get_correct_attn_implementation
    if getattr(original, "_mha_guard", False):
        return

    @functools.wraps(original)
    def guarded(self: Any, requested_attention: str | None, is_init_check: bool = False) -> str:
        chosen = original(self, requested_attention, is_init_check)
        if chosen in names:
            _check_on_interface(type(self).__module__, type(self).__name__)
            if not getattr(self, "_supports_sdpa", True):
                # Such a model may run a causal layer with is_causal=False (NLLB-MoE,
                # PEGASUS-X decoders), relying on eager's always-built masks: build them too.
                self.config._mha_causal_masks = True
        return chosen

    guarded._mha_guard = True  # type: ignore[attr-defined]
    PreTrainedModel.get_correct_attn_implementation = guarded  # type: ignore[method-assign]


def register(name: str = NAME) -> None:
    """Register `mha` with Transformers as `attn_implementation=name`.

    Registers [`attention_forward`][mha.hf.attention_forward] with
    `transformers.AttentionInterface` and
    [`mask_function`][mha.hf.mask_function] with
    `transformers.AttentionMaskInterface`, both under `name`, and makes
    models that compute attention themselves (Bloom, Falcon, GPT-Neo, MPT,
    XGLM, ...) refuse `name` when they are built. Safe to call twice.

    Raises:
        ImportError: when `transformers` is not installed.
    """
    try:
        from transformers import AttentionInterface, AttentionMaskInterface
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError('mha.hf needs transformers: pip install "mha[hf]"') from error
    AttentionInterface.register(name, attention_forward)
    AttentionMaskInterface.register(name, mask_function)
    _NAMES.add(name)
    _guard_model_classes(_NAMES)
