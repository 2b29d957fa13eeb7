"""mha as the attention of Hugging Face Transformers models (tiny random configs, no downloads)."""

from __future__ import annotations

import copy

import pytest
import torch

from helpers import EXACT, FLOAT32, FLOAT32_COMPOUNDED, FLOAT32_FEW_OPS, assert_close, missing_modules, require

require(missing_modules("transformers"), module_level=True)

from transformers import (  # noqa: E402
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    BertConfig,
    BloomConfig,
    DeepseekV32Config,
    FalconConfig,
    Gemma2Config,
    Gemma4TextConfig,
    GPT2Config,
    GPTNeoConfig,
    GptOssConfig,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    Qwen2Config,
    T5Config,
    XGLMConfig,
)

import mha.hf  # noqa: E402

VOCAB = 97
DECODERS = {
    "llama": lambda: LlamaConfig(**_decoder()),
    "qwen2": lambda: Qwen2Config(**_decoder()),
    "mistral": lambda: MistralConfig(**_decoder(), sliding_window=8),  # shorter than the inputs
    "gpt2": lambda: GPT2Config(
        vocab_size=VOCAB, n_embd=48, n_layer=2, n_head=6, n_positions=64, bos_token_id=1, eos_token_id=2
    ),
}


def _decoder() -> dict:
    return dict(
        vocab_size=VOCAB,
        hidden_size=48,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )


@pytest.fixture(autouse=True)
def registered():
    mha.hf.register()


@pytest.fixture
def calls(monkeypatch):
    """Counts the calls that reach mha, so a test cannot pass on another backend.

    `count["keywords"]` collects the keywords that arrived with a value.
    """
    count = {"n": 0, "keywords": set()}
    original = mha.hf.attention_forward

    def counting(*args, **kwargs):
        count["n"] += 1
        count["keywords"] |= {k for k, v in kwargs.items() if v is not None}
        return original(*args, **kwargs)

    monkeypatch.setattr(mha.hf, "attention_forward", counting)
    mha.hf.register()
    return count


def _pair(config, implementation: str, factory=AutoModelForCausalLM):
    # from_config records the implementation on the config object itself: one copy each,
    # or both models would run whichever was built last.
    torch.manual_seed(0)
    reference = factory.from_config(copy.deepcopy(config), attn_implementation=implementation).eval()
    ours = factory.from_config(copy.deepcopy(config), attn_implementation="mha").eval()
    ours.load_state_dict(reference.state_dict())
    assert reference.config._attn_implementation == implementation
    return reference, ours


def _batch(length: int = 13):
    ids = torch.randint(3, VOCAB, (2, length))
    mask = torch.ones(2, length, dtype=torch.long)
    mask[1, :4] = 0  # left padding
    return ids, mask


@pytest.mark.parametrize("name", DECODERS)
def test_decoder_logits_and_greedy_generation_equal_sdpa(name, calls):
    reference, ours = _pair(DECODERS[name](), "sdpa")
    ids, mask = _batch()
    with torch.no_grad():
        expected = reference(ids, attention_mask=mask).logits
        assert calls["n"] == 0  # the reference really ran sdpa
        got = ours(ids, attention_mask=mask).logits
    assert calls["n"] == 2  # one call per layer
    real = mask.bool()  # padded positions' outputs are never used
    assert_close(got[real], expected[real], FLOAT32)
    kwargs = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(ours.generate(ids, **kwargs), reference.generate(ids, **kwargs))


@pytest.mark.parametrize("name", DECODERS)
def test_output_attentions_are_per_head_weights_equal_to_eager(name, calls):
    reference, ours = _pair(DECODERS[name](), "eager")
    ids, mask = _batch()
    with torch.no_grad():
        expected = reference(ids, attention_mask=mask, output_attentions=True).attentions
        assert calls["n"] == 0
        got = ours(ids, attention_mask=mask, output_attentions=True).attentions
    assert calls["n"] == 2
    real_queries = mask.bool()[:, None, :, None]
    for e, g in zip(expected, got, strict=True):
        assert g.shape == (2, 6, 13, 13)
        assert_close(g * real_queries, e * real_queries, FLOAT32)


def test_training_step_gives_the_same_loss_and_gradients(calls):
    reference, ours = _pair(DECODERS["llama"](), "sdpa")
    ids, mask = _batch()
    reference.train(), ours.train()
    losses = [model(ids, attention_mask=mask, labels=ids).loss for model in (reference, ours)]
    assert calls["n"] == 2
    assert_close(losses[1], losses[0], FLOAT32)
    for loss in losses:
        loss.backward()
    for (name, a), (_, b) in zip(reference.named_parameters(), ours.named_parameters(), strict=True):
        assert_close(b.grad, a.grad, FLOAT32, msg=name)


def test_bert_encoder_with_padding_equals_sdpa(calls):
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=6,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    reference, ours = _pair(config, "sdpa", AutoModel)
    ids = torch.randint(3, VOCAB, (2, 11))
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[1, 7:] = 0  # right padding
    with torch.no_grad():
        expected = reference(ids, attention_mask=mask).last_hidden_state
        assert calls["n"] == 0
        got = ours(ids, attention_mask=mask).last_hidden_state
    assert calls["n"] == 2
    assert_close(got[mask.bool()], expected[mask.bool()], FLOAT32)


def test_switching_an_existing_model_to_mha(calls):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(DECODERS["qwen2"](), attn_implementation="sdpa").eval()
    ids, mask = _batch()
    with torch.no_grad():
        expected = model(ids, attention_mask=mask).logits
        assert calls["n"] == 0
        model.set_attn_implementation("mha")
        got = model(ids, attention_mask=mask).logits
    assert calls["n"] == 2
    assert_close(got[mask.bool()], expected[mask.bool()], FLOAT32)


# --- every keyword Transformers passes is known -------------------------------------------


def _keywords_passed_to_attention() -> dict[str, set[str]]:
    """keyword -> the model families whose modeling files pass it to their attention function.

    Reads each `attention_interface(...)` call's text (faster than parsing
    every file): the `name=` arguments at the call's own depth.
    """
    import pathlib
    import re

    import transformers

    found: dict[str, set[str]] = {}
    for path in sorted(pathlib.Path(transformers.__file__).parent.glob("models/*/modeling_*.py")):
        source = path.read_text()
        for match in re.finditer(r"\battention_interface\(", source):
            depth, start = 1, match.end()
            for end in range(start, len(source)):
                depth += {"(": 1, ")": -1}.get(source[end], 0)
                if depth == 0:
                    break
            flat = re.sub(r"\([^()]*\)|\[[^\[\]]*\]", "", source[start:end])  # drop nested calls
            for keyword in re.findall(r"(?:^|[,(\s])(\w+)\s*=(?!=)", flat):
                found.setdefault(keyword, set()).add(path.parent.name)
    return found


def test_every_keyword_transformers_passes_to_attention_is_known():
    from transformers.utils.generic import TransformersKwargs

    found = _keywords_passed_to_attention()
    assert {"scaling", "position_bias", "indices", "s_aux", "softcap"} <= set(found)  # the scan works
    passed = set(found) | set(TransformersKwargs.__annotations__)
    unknown = {k: sorted(found.get(k, ["TransformersKwargs"])) for k in passed - mha.hf._known_keywords()}
    assert not unknown, f"keywords mha.hf does not handle: {unknown}"


class NewFeatureAttention(torch.nn.Module):
    is_causal = True


def test_an_unknown_keyword_is_refused_naming_it_and_the_model():
    q = torch.randn(1, 2, 3, 4)
    with pytest.raises(
        ValueError,
        match=r"does not know the keyword new_bias=<tensor of shape \(3,\)> that "
        r"NewFeatureAttention passes.*attn_implementation='eager'",
    ):
        mha.hf.attention_forward(NewFeatureAttention(), q, q, q, None, new_bias=torch.ones(3))
    expected, _ = mha.hf.attention_forward(NewFeatureAttention(), q, q, q, None)
    got, _ = mha.hf.attention_forward(NewFeatureAttention(), q, q, q, None, new_bias=None, new_flag=False)
    assert_close(got, expected, EXACT)


# --- sinks and soft-capping, computed by mha's core ----------------------------------------


def _gpt_oss(**overrides) -> GptOssConfig:
    # Sliding layers with a window (5) shorter than the inputs, and full layers.
    return GptOssConfig(
        **{
            **_decoder(),
            "head_dim": 8,
            "num_hidden_layers": 2,
            "num_local_experts": 3,
            "num_experts_per_tok": 2,
            "sliding_window": 5,
            "layer_types": ["sliding_attention", "full_attention"],
            **overrides,
        }
    )


def _random_sinks(model) -> None:
    # gpt-oss initialises its sinks at 0 in some versions: make them matter.
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(getattr(module, "sinks", None), torch.nn.Parameter):
                module.sinks.copy_(torch.randn(module.sinks.shape, generator=g) * 2)


def _exact_against_eager(config, calls, dtype=torch.float32, tolerance=FLOAT32, gain=1.0):
    reference, ours = _pair(config, "eager")
    _random_sinks(reference)
    with torch.no_grad():  # large scores, so that a soft-cap of 50 bends them
        for module in reference.modules():
            if hasattr(module, "q_proj"):
                module.q_proj.weight.mul_(gain)
                module.k_proj.weight.mul_(gain)
    ours.load_state_dict(reference.state_dict())
    reference, ours = reference.to(dtype), ours.to(dtype)
    ids, mask = _batch()
    with torch.no_grad():
        expected = reference(ids, attention_mask=mask).logits
        assert calls["n"] == 0
        got = ours(ids, attention_mask=mask).logits
    assert calls["n"] == 2  # one call per layer
    real = mask.bool()
    assert_close(got[real], expected[real], tolerance)
    kwargs = dict(attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(ours.generate(ids, **kwargs), reference.generate(ids, **kwargs))
    return reference, ours


def test_gpt_oss_sinks_with_sliding_layers_equal_eager(calls):
    _exact_against_eager(_gpt_oss(), calls)
    assert "s_aux" in calls["keywords"] and "sliding_window" in calls["keywords"]


def test_gpt_oss_sinks_train_with_eager_gradients(calls):
    reference, ours = _pair(_gpt_oss(), "eager")
    _random_sinks(reference)
    ours.load_state_dict(reference.state_dict())
    reference.train(), ours.train()
    ids, mask = _batch(11)
    labels = ids.masked_fill(mask == 0, -100)
    for model in (reference, ours):
        model(ids, attention_mask=mask, labels=labels).loss.backward()
    assert calls["n"] == 2
    grads = dict(reference.named_parameters())
    checked = 0
    for name, parameter in ours.named_parameters():
        if parameter.grad is None:  # experts no token was routed to
            assert grads[name].grad is None, name
            continue
        assert_close(parameter.grad, grads[name].grad, FLOAT32_COMPOUNDED, msg=name)
        checked += name.endswith("sinks")
    assert checked == 2  # the sinks of both layers learn, as in eager


def test_sinks_of_another_shape_are_refused_by_name():
    q = torch.randn(1, 2, 3, 4)
    per_token = torch.zeros(1, 2, 3, 1)  # Inkling 2's sink_proj gives one sink per query
    with pytest.raises(
        ValueError,
        match=r"takes sinks as one floating-point sink logit per query head, shape "
        r"\(n_h=2,\), but NewFeatureAttention passes sinks=<tensor of shape "
        r"\(1, 2, 3, 1\)>",
    ):
        mha.hf.attention_forward(NewFeatureAttention(), q, q, q, None, sinks=per_token)
    with pytest.raises(ValueError, match=r"softcap"):
        mha.hf.attention_forward(NewFeatureAttention(), q, q, q, None, softcap=-1.0)


def test_gemma2_softcap_50_equals_eager(calls):
    config = Gemma2Config(
        **_decoder(), head_dim=8, attn_logit_softcapping=50.0, final_logit_softcapping=None, sliding_window=5
    )
    reference, ours = _exact_against_eager(config, calls, gain=100.0)
    assert "softcap" in calls["keywords"]
    ids, mask = _batch()
    with torch.no_grad():
        capped = reference(ids, attention_mask=mask).logits
        for module in reference.modules():
            if hasattr(module, "attn_logit_softcapping"):
                module.attn_logit_softcapping = None
        uncapped = reference(ids, attention_mask=mask).logits
    assert (capped - uncapped)[mask.bool()].abs().max() > 1e-2  # the cap bends these scores


# --- keywords folded into the mask --------------------------------------------------------


def _loss_and_gradients(reference, ours, **inputs):
    reference.train(), ours.train()
    losses = [model(**inputs).loss for model in (reference, ours)]
    assert_close(losses[1], losses[0], FLOAT32)
    for loss in losses:
        loss.backward()
    for (name, a), (_, b) in zip(reference.named_parameters(), ours.named_parameters(), strict=True):
        if a.grad is not None:
            assert_close(b.grad, a.grad, FLOAT32_COMPOUNDED, msg=name)


def test_t5_position_bias_equals_eager_with_gradients(calls):
    config = T5Config(
        vocab_size=VOCAB,
        d_model=32,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=0,
    )
    reference, ours = _pair(config, "eager", AutoModelForSeq2SeqLM)
    ids = torch.randint(3, VOCAB, (2, 11))
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[1, 8:] = 0  # right padding
    labels = torch.randint(3, VOCAB, (2, 7))
    with torch.no_grad():
        expected = reference(ids, attention_mask=mask, labels=labels).logits
        got = ours(ids, attention_mask=mask, labels=labels).logits
    assert calls["n"] == 6 and "position_bias" in calls["keywords"]  # encoder, decoder self and cross
    assert_close(got, expected, FLOAT32)
    _loss_and_gradients(reference, ours, input_ids=ids, attention_mask=mask, labels=labels)


def _deepseek_v32():
    return DeepseekV32Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=37,
        moe_intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        q_lora_rank=16,
        kv_lora_rank=16,
        qk_rope_head_dim=4,
        qk_nope_head_dim=8,
        v_head_dim=8,
        n_routed_experts=4,
        num_experts_per_tok=2,
        n_group=1,
        topk_group=1,
        index_head_dim=8,
        index_n_heads=2,
        index_topk=4,  # fewer than the 13 keys
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )


def test_deepseek_v32_sparse_indices_equal_eager_with_gradients(calls):
    reference, ours = _pair(_deepseek_v32(), "eager")
    ids, mask = _batch()
    with torch.no_grad():
        expected = reference(ids, attention_mask=mask).logits
        got = ours(ids, attention_mask=mask).logits
        dense = ours(ids, attention_mask=mask, output_attentions=True).attentions[0]
    assert "indices" in calls["keywords"]
    assert (dense[0] > 0).sum(-1).max() == 4  # the top-4 selection is active
    real = mask.bool()
    assert_close(got[real], expected[real], FLOAT32)
    kwargs = dict(attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(ours.generate(ids, **kwargs), reference.generate(ids, **kwargs))
    _loss_and_gradients(reference, ours, input_ids=ids[:1], labels=ids[:1])


def test_block_indices_select_the_blocks_minimax_m3_selects():
    from transformers.models.minimax_m3_vl.modeling_minimax_m3_vl import MiniMaxM3VLIndexer

    b, n_h, n_i, s_q, s_kv, d, block = 2, 6, 3, 5, 11, 4, 3
    indexer = type("Indexer", (), {"block_size": block, "config": type("C", (), {"num_attention_heads": n_h})})()
    layer = type("Layer", (torch.nn.Module,), {"is_causal": True})()
    layer.indexer = indexer
    torch.manual_seed(0)
    q, k, v = torch.randn(b, n_h, s_q, d), torch.randn(b, n_h, s_kv, d), torch.randn(b, n_h, s_kv, d)
    positions = torch.arange(s_kv - s_q, s_kv).expand(b, -1)
    # As MiniMax-M3's indexer: each query's own block, and one other block (or -1, none).
    own = (positions // block)[:, None, :, None].expand(b, n_i, s_q, 1)
    blocks = torch.cat([own, torch.randint(-1, 4, (b, n_i, s_q, 1))], dim=-1)
    padding = torch.ones(b, 1, s_q, s_kv, dtype=torch.bool)
    padding[1, ..., :2] = False
    for mask in (padding, None):
        additive = MiniMaxM3VLIndexer.build_block_mask(indexer, blocks, mask, s_kv, q.dtype, q.device, positions)
        expected = torch.softmax(q @ k.transpose(-1, -2) * d**-0.5 + additive, dim=-1) @ v
        got, _ = mha.hf.attention_forward(layer, q, k, v, mask, block_indices=blocks)
        assert_close(got.transpose(1, 2), expected, FLOAT32)


# --- masks that are never silently wrong -------------------------------------------------


def _gemma4():
    return Gemma4TextConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        global_head_dim=8,
        layer_types=["sliding_attention", "full_attention"] * 2,
        num_kv_shared_layers=2,
        sliding_window=5,
        vocab_size_per_layer_input=VOCAB,
        hidden_size_per_layer_input=8,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )


def test_gemma4_kv_shared_layers_with_logits_to_keep_and_a_static_cache_equal_eager(calls):
    reference, ours = _pair(_gemma4(), "eager")
    assert [layer.self_attn.is_kv_shared_layer for layer in ours.model.layers] == [False, False, True, True]
    ids = torch.randint(3, VOCAB, (2, 16))
    with torch.no_grad():
        expected = reference(ids, logits_to_keep=3).logits
        got = ours(ids, logits_to_keep=3).logits  # the shared layers see the last 3 queries, mask None
        assert calls["n"] == 4
        assert_close(got, expected, FLOAT32)
        kwargs = dict(
            max_new_tokens=4,
            do_sample=False,
            pad_token_id=0,
            cache_implementation="static",
            output_logits=True,
            return_dict_in_generate=True,
        )
        theirs, mine = reference.generate(ids, **kwargs), ours.generate(ids, **kwargs)
    assert torch.equal(mine.sequences, theirs.sequences)
    for a, b in zip(theirs.logits, mine.logits, strict=True):
        assert_close(b, a, FLOAT32)


def test_a_none_mask_is_causal_aligned_bottom_right():
    # The last 2 of 5 queries against 5 keys: query 3 must see keys 0..3, not 0..1.
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)
    full, _ = mha.hf.attention_forward(NewFeatureAttention(), q, k, v, None)
    last, _ = mha.hf.attention_forward(NewFeatureAttention(), q[:, :, 3:], k, v, None)
    assert_close(last, full[:, 3:], FLOAT32_FEW_OPS)


def test_the_mask_function_materialises_a_static_cache_prefill():
    from transformers.masking_utils import sdpa_mask

    kwargs = dict(
        batch_size=1,
        q_length=3,
        kv_length=8,
        q_offset=0,
        kv_offset=0,
        attention_mask=torch.tensor([[1, 1, 1, 0, 0, 0, 0, 0]]).bool(),
    )
    assert sdpa_mask(**kwargs) is None  # Transformers' own: top-left causal, which a query slice breaks
    mask = mha.hf.mask_function(**kwargs)
    assert torch.equal(mask[0, 0, :, :3], torch.ones(3, 3, dtype=torch.bool).tril()) and not mask[..., 3:].any()


@pytest.mark.parametrize("name", ["mistral", "qwen2", "phi3"])
def test_an_active_sliding_window_equals_eager(name, calls):
    config = {
        "mistral": lambda: MistralConfig(**_decoder(), sliding_window=5),
        "qwen2": lambda: Qwen2Config(**_decoder(), use_sliding_window=True, sliding_window=5, max_window_layers=0),
        "phi3": lambda: Phi3Config(**_decoder(), sliding_window=5),
    }[name]()
    reference, ours = _pair(config, "eager")
    ids, mask = _batch()
    with torch.no_grad():
        expected = reference(ids, attention_mask=mask).logits
        got = ours(ids, attention_mask=mask).logits
        full = ours(ids, attention_mask=mask, output_attentions=True).attentions
    assert calls["n"] == 4
    assert all((w[0, :, -1] > 0).sum(-1).max() == 5 for w in full)  # the window of 5 is active in every layer
    assert_close(got[mask.bool()], expected[mask.bool()], FLOAT32)
    kwargs = dict(attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(ours.generate(ids, **kwargs), reference.generate(ids, **kwargs))


def test_packed_sequences_without_a_cache_equal_each_sequence_alone(calls):
    reference, ours = _pair(DECODERS["llama"](), "eager")
    first, second = torch.randint(3, VOCAB, (1, 5)), torch.randint(3, VOCAB, (1, 8))
    packed = torch.cat([first, second], dim=1)
    position_ids = torch.cat([torch.arange(5), torch.arange(8)])[None]
    with torch.no_grad():
        got = ours(packed, position_ids=position_ids, use_cache=False).logits
        expected = reference(packed, position_ids=position_ids, use_cache=False).logits
        alone = torch.cat([ours(first).logits, ours(second).logits], dim=1)
    assert calls["n"] == 6
    assert_close(got, expected, FLOAT32)
    assert_close(got, alone, FLOAT32)


# --- models that are not on the attention interface ---------------------------------------

NOT_ON_THE_INTERFACE = {
    "bloom": lambda: BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4),
    "falcon": lambda: FalconConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4),
    "gpt_neo": lambda: GPTNeoConfig(
        vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4, attention_types=[[["global", "local"], 1]]
    ),
    "xglm": lambda: XGLMConfig(vocab_size=VOCAB, d_model=32, num_layers=2, attention_heads=4, ffn_dim=37),
}


@pytest.mark.parametrize("name", NOT_ON_THE_INTERFACE)
def test_a_model_off_the_attention_interface_refuses_mha_when_built(name):
    with pytest.raises(
        ValueError,
        match=r"does not route attention through Transformers' attention interface"
        r".*use attn_implementation='eager'",
    ):
        AutoModelForCausalLM.from_config(NOT_ON_THE_INTERFACE[name](), attn_implementation="mha")


def test_bloom_switched_to_mha_by_hand_refuses_on_the_first_call():
    model = AutoModelForCausalLM.from_config(NOT_ON_THE_INTERFACE["bloom"](), attn_implementation="eager")
    model.config._attn_implementation = "mha"  # past the check when the model was built
    with pytest.raises(ValueError, match=r"BloomConfig .*does not route attention"):
        model(torch.randint(3, VOCAB, (1, 5)))


def test_a_model_without_sdpa_gets_its_causal_masks_built():
    # NLLB-MoE and PEGASUS-X run their decoders' self-attention with is_causal=False and
    # count on eager's masks; the guard marks such models when they are built.
    config = LlamaConfig(**_decoder())
    assert mha.hf.mask_function(batch_size=1, q_length=4, kv_length=4, config=config) is None
    config._mha_causal_masks = True
    mask = mha.hf.mask_function(batch_size=1, q_length=4, kv_length=4, config=config)
    assert torch.equal(mask[0, 0], torch.ones(4, 4, dtype=torch.bool).tril())
