"""The one-token decoding shortcut (`mha._token_step`) leans on torch internals: they must still exist."""

import inspect

import pytest
import torch
from torch import nn
from torch.nn.modules import module as module_hooks

from helpers import EXACT, assert_close
from mha import MultiHeadAttention, _token_step


def test_the_torch_internals_the_shortcut_reads_still_exist():
    assert torch._C._is_any_autocast_enabled() is False
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch._C._is_any_autocast_enabled() is True
    linear = nn.Linear(3, 5)
    assert linear._compiled_call_impl is None
    for hooks in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
        assert getattr(linear, hooks) == {}
    for hooks in (
        "_global_forward_hooks",
        "_global_forward_pre_hooks",
        "_global_backward_hooks",
        "_global_backward_pre_hooks",
    ):
        assert isinstance(getattr(module_hooks, hooks), dict)
    assert set(linear._parameters) == {"weight", "bias"}
    x = torch.randn(2, 3)
    assert_close(_token_step._linear(linear, x), linear(x), EXACT)


def test_the_shortcut_is_told_apart_by_hooks_and_compiled_forwards():
    linear = nn.Linear(3, 5)
    assert _token_step._is_bare_linear(linear) and not _token_step._global_hooks()
    handle = linear.register_forward_hook(lambda *args: None)
    assert not _token_step._is_bare_linear(linear)
    handle.remove()
    handle = module_hooks.register_module_forward_hook(lambda *args: None)
    try:
        assert _token_step._global_hooks()
    finally:
        handle.remove()
    linear.compile()
    assert not _token_step._is_bare_linear(linear)


def test_a_decoding_step_takes_the_shortcut_and_a_prefill_does_not():
    m = MultiHeadAttention(12, 3, num_kv_heads=1).eval()
    with torch.inference_mode():
        cache = m.new_cache(2, 5)
        prompt, token = torch.randn(2, 3, 12), torch.randn(2, 1, 12)
        assert not _token_step.applies(m, prompt, None, None, None, False, False, cache, None, None)
        m(prompt, cache=cache)
        assert _token_step.applies(m, token, None, None, None, False, False, cache, None, None)
        assert not _token_step.applies(m, token, token, None, None, False, False, cache, None, None)
    assert not _token_step.applies(m, token, None, None, None, False, False, cache, None, None)  # autograd on


def test_the_shortcut_is_given_every_argument_of_forward():
    # A keyword of forward that applies() never sees could slip past the full path's checks.
    forward = list(inspect.signature(MultiHeadAttention.forward).parameters)
    assert list(inspect.signature(_token_step.applies).parameters) == ["module", *forward[1:]]


@pytest.mark.parametrize("document_ids", ["garbage", torch.zeros(2, 1, dtype=torch.long)])
def test_a_decoding_step_with_document_ids_is_refused_and_leaves_the_cache_alone(document_ids):
    m = MultiHeadAttention(12, 3).eval()
    cache = m.new_cache(2, 5)
    with torch.no_grad():
        m(torch.randn(2, 2, 12), cache=cache)
        keys = cache.keys.clone()
        with pytest.raises(ValueError, match="document_ids cannot be combined with a cache"):
            m(torch.randn(2, 1, 12), cache=cache, document_ids=document_ids)
    assert cache.length == 2
    assert_close(cache.keys, keys, EXACT)
