"""mha as the attention of Hugging Face Transformers models (tiny random configs, no downloads)."""

from __future__ import annotations

import copy

import pytest
import torch

from helpers import missing_modules, require

require(missing_modules("transformers"), module_level=True)

from transformers import (  # noqa: E402
    AutoModel,
    AutoModelForCausalLM,
    BertConfig,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
)

import mha.hf  # noqa: E402

VOCAB = 97
DECODERS = {
    "llama": lambda: LlamaConfig(**_decoder()),
    "qwen2": lambda: Qwen2Config(**_decoder()),
    "mistral": lambda: MistralConfig(**_decoder(), sliding_window=8),  # shorter than the inputs
    "gpt2": lambda: GPT2Config(vocab_size=VOCAB, n_embd=48, n_layer=2, n_head=6, n_positions=64,
                               bos_token_id=1, eos_token_id=2),
}


def _decoder() -> dict:
    return dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64,
                bos_token_id=1, eos_token_id=2, pad_token_id=0)


@pytest.fixture(autouse=True)
def registered():
    mha.hf.register()


@pytest.fixture
def calls(monkeypatch):
    """Counts the calls that reach mha, so a test cannot pass on another backend."""
    count = {"n": 0}
    original = mha.hf.attention_forward

    def counting(*args, **kwargs):
        count["n"] += 1
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
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=1e-5)
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
        torch.testing.assert_close(g * real_queries, e * real_queries, atol=1e-5, rtol=1e-5)


def test_training_step_gives_the_same_loss_and_gradients(calls):
    reference, ours = _pair(DECODERS["llama"](), "sdpa")
    ids, mask = _batch()
    reference.train(), ours.train()
    losses = [model(ids, attention_mask=mask, labels=ids).loss for model in (reference, ours)]
    assert calls["n"] == 2
    torch.testing.assert_close(losses[1], losses[0], atol=1e-5, rtol=1e-5)
    for loss in losses:
        loss.backward()
    for (name, a), (_, b) in zip(reference.named_parameters(), ours.named_parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-5, msg=name)


def test_bert_encoder_with_padding_equals_sdpa(calls):
    config = BertConfig(vocab_size=VOCAB, hidden_size=48, num_hidden_layers=2, num_attention_heads=6,
                        intermediate_size=64, max_position_embeddings=64)
    reference, ours = _pair(config, "sdpa", AutoModel)
    ids = torch.randint(3, VOCAB, (2, 11))
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[1, 7:] = 0  # right padding
    with torch.no_grad():
        expected = reference(ids, attention_mask=mask).last_hidden_state
        assert calls["n"] == 0
        got = ours(ids, attention_mask=mask).last_hidden_state
    assert calls["n"] == 2
    torch.testing.assert_close(got[mask.bool()], expected[mask.bool()], atol=1e-5, rtol=1e-5)


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
    torch.testing.assert_close(got[mask.bool()], expected[mask.bool()], atol=1e-5, rtol=1e-5)


def test_features_mha_lacks_are_refused():
    q = torch.randn(1, 2, 3, 4)
    with pytest.raises(ValueError, match=r"attn_implementation='mha' does not support \['softcap'\]"):
        mha.hf.attention_forward(torch.nn.Module(), q, q, q, None, softcap=30.0)
