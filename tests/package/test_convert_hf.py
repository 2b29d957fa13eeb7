"""mha.from_hf / mha.to_hf against Transformers' own attention layers, built tiny from configs."""

from __future__ import annotations

import inspect
import sys

import pytest
import torch

import mha
from helpers import EXACT, FLOAT32, FLOAT32_FEW_OPS, Tolerance, assert_close
from mha import MultiHeadAttention

transformers = pytest.importorskip("transformers")
from transformers import DynamicCache  # noqa: E402

LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 4,
}

# name -> (config class, modeling module, attention class, config keywords, layer index, mha options it needs)
FAMILIES = {
    "llama": (
        "LlamaConfig",
        "llama",
        "LlamaAttention",
        {
            "hidden_size": 40,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "attention_bias": True,
            "rope_parameters": {**LLAMA3, "rope_theta": 500.0},
        },
        0,
        set(),
    ),
    "llama dynamic": (
        "LlamaConfig",
        "llama",
        "LlamaAttention",
        {
            "hidden_size": 40,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 5,
            "rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 300.0},
        },
        0,
        set(),
    ),
    "mistral": (
        "MistralConfig",
        "mistral",
        "MistralAttention",
        {"hidden_size": 48, "num_attention_heads": 6, "num_key_value_heads": 3, "head_dim": 8, "sliding_window": None},
        0,
        set(),
    ),
    "qwen2": (
        "Qwen2Config",
        "qwen2",
        "Qwen2Attention",
        {
            "hidden_size": 36,
            "num_attention_heads": 6,
            "num_key_value_heads": 2,
            "rope_parameters": {
                "rope_type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 4,
                "rope_theta": 1000.0,
            },
        },
        0,
        set(),
    ),
    "phi3": (
        "Phi3Config",
        "phi3",
        "Phi3Attention",
        {
            "hidden_size": 48,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "partial_rotary_factor": 0.5,
            "rope_parameters": {"rope_type": "default", "rope_theta": 700.0},
        },
        0,
        set(),
    ),
    "qwen3": (
        "Qwen3Config",
        "qwen3",
        "Qwen3Attention",
        {"hidden_size": 40, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 14, "attention_bias": True},
        0,
        {"head_dim", "qk_norm"},
    ),
    "gemma2": (
        "Gemma2Config",
        "gemma2",
        "Gemma2Attention",
        {
            "hidden_size": 40,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 12,
            "query_pre_attn_scalar": 20,
            "attn_logit_softcapping": 3.0,
            "num_hidden_layers": 2,
        },
        1,
        {"head_dim", "softcap"},
    ),
    "gemma3": (
        "Gemma3TextConfig",
        "gemma3",
        "Gemma3Attention",
        {
            "hidden_size": 40,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 12,
            "query_pre_attn_scalar": 24,
            "num_hidden_layers": 6,
        },
        5,
        {"head_dim", "qk_norm"},
    ),
    "gpt-oss": (
        "GptOssConfig",
        "gpt_oss",
        "GptOssAttention",
        {
            "hidden_size": 40,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 12,
            "num_hidden_layers": 2,
            "num_local_experts": 2,
        },
        1,
        {"head_dim", "sinks"},
    ),
}


# name -> (config keywords that make the layer slide, its layer index): a window of 3
# over 7 tokens, so it bites. Llama has no sliding layers.
WINDOWED = {
    "mistral": ({"sliding_window": 3}, 0),
    "phi3": ({"sliding_window": 3}, 0),
    "qwen2": ({"use_sliding_window": True, "sliding_window": 3, "max_window_layers": 0, "num_hidden_layers": 2}, 1),
    "qwen3": ({"use_sliding_window": True, "sliding_window": 3, "max_window_layers": 0, "num_hidden_layers": 2}, 0),
    "gemma2": ({"sliding_window": 3}, 0),
    "gemma3": ({"sliding_window": 3}, 0),
    "gpt-oss": ({"sliding_window": 3}, 0),
}


def modeling(module_name: str):
    __import__(f"transformers.models.{module_name}.modeling_{module_name}")
    return sys.modules[f"transformers.models.{module_name}.modeling_{module_name}"]


def build(name: str, seed: int = 0, *, windowed: bool = False):
    """The family's attention layer with random weights (biases, norms and sinks included), its config and rotary embedding.

    `windowed`: the family's sliding-window layer (`WINDOWED`) instead.
    """
    config_name, module_name, layer_name, keywords, index, needs = FAMILIES[name]
    if windowed:
        keywords, index = {**keywords, **WINDOWED[name][0]}, WINDOWED[name][1]
    missing = needs - set(inspect.signature(MultiHeadAttention).parameters)
    if missing:
        pytest.skip(f"MultiHeadAttention has no {sorted(missing)} yet")
    config = getattr(transformers, config_name)(**keywords)
    config._attn_implementation = "eager"  # explicit masks; eager also soft-caps and has sinks
    source = modeling(module_name)
    torch.manual_seed(seed)
    layer = getattr(source, layer_name)(config, layer_idx=index).eval()
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.normal_(0, 0.3)
    rope_class = next(c for n, c in vars(source).items() if n.endswith("RotaryEmbedding"))
    layer_type = config.layer_types[index] if getattr(config, "layer_types", None) else None
    return config, layer, rope_class(config), layer_type


def window_of(config, layer_type):
    """The window the family's model puts on this layer's mask: its config's, on a sliding layer."""
    if layer_type is not None and layer_type != "sliding_attention":
        return None
    return getattr(config, "sliding_window", None)


def transformers_forward(layer, rope, layer_type, x, start, cache=None, window=None):
    """The layer's output for tokens at positions start.., attending causally to everything before them.

    The mask is Transformers' own (`masking_utils`), with the sliding window `window` if given.
    """
    from transformers import masking_utils

    s = x.shape[1]
    positions = torch.arange(start, start + s)[None]
    takes_type = "layer_type" in inspect.signature(rope.forward).parameters
    cos, sin = rope(x, positions, layer_type) if takes_type else rope(x, positions)
    allowed = (
        masking_utils.causal_mask_function
        if window is None
        else masking_utils.sliding_window_causal_mask_function(window)
    )
    visible = allowed(0, 0, torch.arange(start, start + s)[:, None], torch.arange(start + s)[None, :])  # (s, start + s)
    mask = torch.zeros(1, 1, *visible.shape).masked_fill(~visible, torch.finfo(x.dtype).min)
    return layer(x, position_embeddings=(cos, sin), attention_mask=mask, cache=cache)[0]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_converted_layer_computes_what_the_transformers_layer_computes(name):
    config, layer, rope, layer_type = build(name)
    ours = mha.from_hf(layer)
    x = torch.randn(2, 7, config.hidden_size)
    with torch.no_grad():
        expected = transformers_forward(layer, rope, layer_type, x, 0)
        assert_close(ours(x, is_causal=True), expected, FLOAT32)
        # Cached decoding: a prompt of 4, then one token at a time, against a DynamicCache.
        config, layer, rope, layer_type = build(name)  # a fresh rotary embedding: dynamic scaling keeps state
        ours = mha.from_hf(layer)
        theirs_cache, our_cache = DynamicCache(config=config), ours.new_cache(2, 7)
        theirs = [transformers_forward(layer, rope, layer_type, x[:, :4], 0, theirs_cache)]
        theirs += [transformers_forward(layer, rope, layer_type, x[:, i : i + 1], i, theirs_cache) for i in range(4, 7)]
        steps = [ours(x[:, :4], cache=our_cache)] + [ours(x[:, i : i + 1], cache=our_cache) for i in range(4, 7)]
    assert_close(torch.cat(steps, dim=1), torch.cat(theirs, dim=1), FLOAT32)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_to_hf_restores_the_layer(name):
    config, layer, rope, layer_type = build(name)
    _, other, _, _ = build(name, seed=1)  # the same layer with other weights
    mha.to_hf(mha.from_hf(layer), other)
    theirs, restored = layer.state_dict(), other.state_dict()
    assert theirs.keys() == restored.keys()
    for key in theirs:
        if name == "gemma3" and key.endswith("norm.weight"):
            # mha holds Gemma's 1 + w, rounded once: w comes back within one rounding of 1.
            assert_close(restored[key], theirs[key], Tolerance(atol=2**-24, rtol=0))
        else:
            assert torch.equal(theirs[key], restored[key]), key
    x = torch.randn(1, 5, config.hidden_size)
    with torch.no_grad():
        assert_close(
            transformers_forward(other, rope, layer_type, x, 0),
            transformers_forward(layer, rope, layer_type, x, 0),
            FLOAT32_FEW_OPS if name == "gemma3" else EXACT,
        )


@pytest.mark.parametrize("name", list(WINDOWED))
def test_a_sliding_window_layer_converts_exactly(name):
    # Transformers' window counts the query itself (kv_idx > q_idx - w), as
    # mha's does: the converted module keeps the number.
    config, layer, rope, layer_type = build(name, windowed=True)
    window = window_of(config, layer_type)
    assert window == 3
    ours = mha.from_hf(layer)
    assert ours.attention.sliding_window == window
    x = torch.randn(2, 7, config.hidden_size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = transformers_forward(layer, rope, layer_type, x, 0, window=window)
        assert_close(ours(x, is_causal=True), expected, FLOAT32)
        # The window bites: without it the layer's output differs.
        assert (transformers_forward(layer, rope, layer_type, x, 0) - expected).abs().max() > 1e-2
        # Cached decoding: a prompt of 4, then one token at a time (a rolling cache of 3 positions
        # here; a plain DynamicCache there, masked by the same window).
        our_cache, theirs_cache = ours.new_cache(2), DynamicCache()
        theirs = [transformers_forward(layer, rope, layer_type, x[:, :4], 0, theirs_cache, window)]
        theirs += [
            transformers_forward(layer, rope, layer_type, x[:, i : i + 1], i, theirs_cache, window) for i in range(4, 7)
        ]
        steps = [ours(x[:, :4], cache=our_cache)] + [ours(x[:, i : i + 1], cache=our_cache) for i in range(4, 7)]
    assert_close(torch.cat(steps, dim=1), torch.cat(theirs, dim=1), FLOAT32)
    # The way back: the same window, every weight restored.
    _, other, _, _ = build(name, seed=1, windowed=True)
    mha.to_hf(ours, other)
    with torch.no_grad():
        assert_close(transformers_forward(other, rope, layer_type, x, 0, window=window), expected, FLOAT32_FEW_OPS)


def test_to_hf_refuses_another_window():
    _, layer, _, _ = build("mistral", windowed=True)
    other = mha.from_hf(build("mistral")[1])  # the same layer without a window
    with pytest.raises(ValueError, match=r"module and layer differ in sliding_window: the module has None, "):
        mha.to_hf(other, layer)


def test_an_unsupported_rope_type_is_refused():
    source = modeling("llama")
    config = transformers.LlamaConfig(
        hidden_size=32,
        num_attention_heads=4,
        rope_parameters={
            "rope_type": "longrope",
            "rope_theta": 1e4,
            "short_factor": [1.0] * 4,
            "long_factor": [2.0] * 4,
            "original_max_position_embeddings": 16,
            "factor": 2.0,
        },
    )
    with pytest.raises(ValueError, match=r"rope_type'\] must be one of .*got 'longrope'"):
        mha.from_hf(source.LlamaAttention(config, layer_idx=0))


def test_to_hf_refuses_a_module_that_computes_something_else():
    _, layer, _, _ = build("llama")
    other = MultiHeadAttention(40, 4, num_kv_heads=4, positional=mha.RotaryEmbedding(10, interleaved=False))
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    with pytest.raises(
        ValueError, match=r"module and layer differ in num_kv_heads: the module has 4, LlamaAttention has 2"
    ):
        mha.to_hf(other, layer)
    assert all(torch.equal(before[k], v) for k, v in layer.state_dict().items())  # nothing written
    with pytest.raises(TypeError, match=r"module must be a mha.MultiHeadAttention, got Linear"):
        mha.to_hf(torch.nn.Linear(2, 2), layer)
    with pytest.raises(TypeError, match=r"layer must be a Transformers attention layer .* got Linear"):
        mha.from_hf(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("name", ["gemma2", "gemma3"])
def test_a_bidirectional_layer_is_refused(name):
    """Gemma's use_bidirectional_attention layers attend both ways; the converted module can't carry that."""
    config_name, module_name, layer_name, keywords, index, _ = FAMILIES[name]
    config = getattr(transformers, config_name)(**keywords, use_bidirectional_attention=True)
    layer = getattr(modeling(module_name), layer_name)(config, layer_idx=index)
    with pytest.raises(ValueError, match=rf"{layer_name} is bidirectional \(layer.is_causal=False"):
        mha.from_hf(layer)
    with pytest.raises(ValueError, match=r"convert causal layers only"):
        mha.to_hf(mha.from_hf(build(name)[1]), layer)


@pytest.mark.parametrize("name", ["qwen3", "gemma3"])
def test_a_bfloat16_layer_with_trained_norms_converts(name):
    """A tester's finding: the q/k-norm's form was probed at float32 tolerances in the layer's dtype,
    so every bfloat16 checkpoint with non-default norm weights was refused as 'neither form'."""
    config, layer, rope, layer_type = build(name)
    layer = layer.to(torch.bfloat16)
    ours = mha.from_hf(layer)
    assert ours.q_proj.weight.dtype == torch.bfloat16
    x = torch.randn(2, 7, config.hidden_size, dtype=torch.bfloat16)
    with torch.no_grad():
        expected = transformers_forward(layer, rope, layer_type, x, 0)
        assert_close(ours(x, is_causal=True), expected, torch.bfloat16)
