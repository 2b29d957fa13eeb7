"""Incremental decoding with KVCache equals the full causal pass."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from helpers import (
    BFLOAT16,
    EXACT,
    FLOAT32,
    FLOAT32_FEW_OPS,
    FLOAT64,
    assert_close,
    prefill_then_decode,
    under_fullgraph,
)
from mha import KVCache, MultiHeadAttention, RotaryEmbedding


@pytest.mark.parametrize("num_kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("rotary", [False, True], ids=["plain", "rotary"])
@pytest.mark.parametrize("prefill", [1, 5])
@pytest.mark.parametrize("backend", ["auto", "math"])
def test_cached_decoding_equals_the_full_causal_pass(num_kv_heads, rotary, prefill, backend):
    m = MultiHeadAttention(
        32,
        4,
        num_kv_heads=num_kv_heads,
        backend=backend,
        positional=RotaryEmbedding(8) if rotary else None,
    ).eval()
    x = torch.randn(3, 9, 32)
    cache = m.new_cache(3, 11)
    assert cache.keys.shape == (3, num_kv_heads, 11, 8)
    assert_close(prefill_then_decode(m, x, prefill, cache), m(x, is_causal=True), FLOAT32)
    assert cache.length == 9


def test_chunked_prefill_in_several_chunks():
    m = MultiHeadAttention(32, 4, num_kv_heads=2, positional=RotaryEmbedding(8)).eval()
    x = torch.randn(3, 10, 32)  # b=3, n_kv=2, d=8, s=10: no two sizes alike
    cache = m.new_cache(3, 10)
    chunks = [m(x[:, a:b], cache=cache) for a, b in ((0, 3), (3, 7), (7, 10))]
    assert_close(torch.cat(chunks, 1), m(x, is_causal=True), FLOAT32)


def test_padding_mask_with_cache_for_batches_of_different_lengths():
    # Sequence 1 is left-padded by 2: its keys at slots 0 and 1 must be ignored.
    m = MultiHeadAttention(36, 4, num_kv_heads=4).eval()  # b=2, n_kv=4, d=9, s=6, s_max=7
    x = torch.randn(2, 6, 36)
    cache = m.new_cache(2, 7)
    slots = torch.arange(7)
    keep = torch.stack([slots >= 0, slots >= 2])[:, None, None, :]  # (b, 1, 1, s_max)
    out = prefill_then_decode(m, x, 3, cache, mask=keep)
    assert_close(out[0], m(x[:1], is_causal=True)[0], FLOAT32)
    assert_close(out[1, 2:], m(x[1:, 2:], is_causal=True)[0], FLOAT32)


@torch.no_grad()  # decoding: the cache writes in place (with autograd recording it may not)
def test_reset_reuses_the_buffers():
    m = MultiHeadAttention(16, 2).eval()
    x = torch.randn(1, 4, 16)
    cache = m.new_cache(1, 4)
    first = prefill_then_decode(m, x, 2, cache)
    buffer = cache.keys.data_ptr()
    cache.reset()
    assert cache.length == 0 and int(cache.position) == 0
    torch.testing.assert_close(prefill_then_decode(m, x, 2, cache), first)
    assert cache.keys.data_ptr() == buffer


def test_overflow_and_shape_errors_name_the_sizes():
    m = MultiHeadAttention(16, 2).eval()
    cache = m.new_cache(1, 4)
    m(torch.randn(1, 3, 16), cache=cache)
    with pytest.raises(ValueError, match=r"KVCache overflow: it holds 3 of max_len=4 positions and cannot take 2 more"):
        m(torch.randn(1, 2, 16), cache=cache)
    with pytest.raises(
        ValueError,
        match=r"cache does not fit this call: it holds \(b=1, n_kv=2, d=8\), "
        r"this call has \(b=2, n_kv=2, d=8\)",
    ):
        m(torch.randn(2, 1, 16), cache=cache)
    with pytest.raises(ValueError, match=r"with a cache, query and key must be the same chunk: got s_q=1 and s_kv=3"):
        m(torch.randn(1, 1, 16), torch.randn(1, 3, 16), cache=cache)
    with pytest.raises(TypeError, match=r"cache must be a mha.KVCache, got dict"):
        m(torch.randn(1, 1, 16), cache={})
    with pytest.raises(ValueError, match=r"max_len must be a positive int, got 0"):
        m.new_cache(1, 0)


def test_gqa_cache_is_smaller_by_the_group_size():
    full = MultiHeadAttention(512, 8).new_cache(1, 512)
    gqa = MultiHeadAttention(512, 8, num_kv_heads=2).new_cache(1, 512)
    size = lambda c: c.keys.nelement() + c.values.nelement()  # noqa: E731
    assert size(full) == 4 * size(gqa) == 2 * 512 * 512


def test_one_token_steps_do_not_recompile():
    m = MultiHeadAttention(32, 4, num_kv_heads=2, positional=RotaryEmbedding(8)).eval()
    compiled = torch.compile(m, backend="eager")
    x = torch.randn(1, 20, 32)
    cache = m.new_cache(1, 24)
    counters.clear()
    with torch.no_grad():
        out = [compiled(x[:, :4], cache=cache)]
        out += [compiled(x[:, i : i + 1], cache=cache) for i in range(4, 8)]
        graphs_after_warmup = counters["stats"]["unique_graphs"]
        out += [compiled(x[:, i : i + 1], cache=cache) for i in range(8, 20)]
    assert counters["stats"]["unique_graphs"] == graphs_after_warmup
    assert_close(torch.cat(out, 1), m(x, is_causal=True), FLOAT32)


def test_kvcache_standalone_update_returns_the_filled_slots_and_a_causal_mask():
    cache = KVCache(1, 5, num_kv_heads=1, head_dim=2)
    keys, _, mask = cache.update(torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2))
    assert keys.shape == (1, 1, 2, 2)  # eager: the filled slots, not all max_len
    assert mask.int().tolist() == [[1, 0], [1, 1]]
    keys, _, mask = cache.update(torch.ones(1, 1, 1, 2), torch.ones(1, 1, 1, 2))
    assert keys.shape == (1, 1, 3, 2)
    assert mask.int().tolist() == [[1, 1, 1]]


def test_cache_of_another_dtype_is_refused_before_anything_is_written():
    m = MultiHeadAttention(16, 2).eval()
    cache = m.new_cache(2, 8, dtype=torch.float16)
    with pytest.raises(TypeError, match=r"cache has dtype torch.float16 .* computes in torch.float32"):
        m(torch.randn(2, 5, 16), cache=cache)
    assert cache.length == 0 and int(cache.position) == 0
    assert not cache.keys.any()


def test_cache_of_another_batch_or_head_count_is_named_as_the_cache():
    m = MultiHeadAttention(24, 3).eval()
    cache = KVCache(2, 8, num_kv_heads=3, head_dim=8)
    with pytest.raises(
        ValueError,
        match=r"cache does not fit this call: it holds \(b=2, n_kv=3, d=8\), "
        r"this call has \(b=5, n_kv=3, d=8\)",
    ):
        m(torch.randn(5, 1, 24), cache=cache)
    assert cache.length == 0


@pytest.mark.parametrize("rotary", [False, True], ids=["plain", "rotary"])
def test_backward_through_cached_steps_equals_the_full_pass(rotary):
    """Gradients flow through several cached steps (they failed with an in-place error)."""
    m = MultiHeadAttention(12, 3, positional=RotaryEmbedding(4) if rotary else None)
    x = torch.randn(2, 5, 12, requires_grad=True)
    full = m(x, is_causal=True)
    (grad_full,) = torch.autograd.grad(full.square().sum(), x)
    cache = m.new_cache(2, 7)
    stepped = prefill_then_decode(m, x, 2, cache)
    (grad_stepped,) = torch.autograd.grad(stepped.square().sum(), x)
    assert_close(stepped, full, FLOAT32)
    assert_close(grad_stepped, grad_full, FLOAT32)


def test_shallow_copy_is_refused_and_deepcopy_is_independent():
    import copy

    m = MultiHeadAttention(16, 2).eval()
    cache = m.new_cache(1, 6)
    with torch.no_grad():
        m(torch.randn(1, 2, 16), cache=cache)
    with pytest.raises(TypeError, match=r"a KVCache cannot be shallow-copied .* use copy.deepcopy"):
        copy.copy(cache)
    twin = copy.deepcopy(cache)
    with torch.no_grad():
        m(torch.randn(1, 3, 16), cache=twin)
    assert (cache.length, int(cache.position), twin.length, int(twin.position)) == (2, 2, 5, 5)
    assert not torch.equal(cache.keys, twin.keys)


@pytest.mark.parametrize("dynamic", [True, None])
def test_overflow_keeps_its_message_and_numbers_under_compile(dynamic):
    """It was lost to `Unsupported: BUILD_STRING type error`, then kept without its numbers.
    Under fullgraph=True Dynamo reports an exception raised in the graph as Unsupported,
    with the message in its text. With dynamic=None the cache's length becomes symbolic
    after the first recompile (one-token steps until the overflow)."""
    from torch._dynamo.exc import Unsupported

    torch._dynamo.reset()
    m = MultiHeadAttention(16, 2).eval()
    cache = m.new_cache(1, 3)
    step = torch.compile(lambda x: m(x, cache=cache), backend="eager", fullgraph=True, dynamic=dynamic)
    chunk = 2 if dynamic else 1
    with torch.no_grad():
        for _ in range(3 // chunk):
            step(torch.randn(1, chunk, 16))
        held = 3 // chunk * chunk
        message = f"KVCache overflow: it holds {held} of max_len=3 positions and cannot take 2 more"
        with pytest.raises(Unsupported, match=under_fullgraph(message)):
            step(torch.randn(1, 2, 16))
        without_fullgraph = torch.compile(lambda x: m(x, cache=cache), backend="eager", dynamic=True)
        with pytest.raises(ValueError, match=message):
            without_fullgraph(torch.randn(1, 2, 16))
    assert cache.length == held


def test_a_512_step_compiled_decode_loop_makes_at_most_3_graphs():
    """Under torch.compile a step attends over all max_len slots: fixed shapes, few graphs."""
    m = MultiHeadAttention(16, 2, positional=RotaryEmbedding(8)).eval()
    compiled = torch.compile(m, backend="eager", fullgraph=True)
    x = torch.randn(1, 520, 16)
    cache = m.new_cache(1, 520)
    torch._dynamo.reset()
    counters.clear()
    with torch.no_grad():
        decoded = prefill_then_decode(compiled, x, 8, cache)
    assert counters["stats"]["unique_graphs"] <= 3
    assert_close(decoded, m(x, is_causal=True), FLOAT32)


def test_an_eager_step_attends_over_the_filled_slots_only(monkeypatch):
    """The step's cost follows what is filled, not max_len."""
    import mha._dispatch
    import mha._token_step

    seen = []
    for module, name in (
        (mha._dispatch, "attend_unchecked"),
        (mha._token_step, "attend_one_query"),
    ):  # full path, one-token step
        function = getattr(module, name)

        def spy(q, k, *args, function=function, **kwargs):
            seen.append(k.shape[2])
            return function(q, k, *args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    m = MultiHeadAttention(16, 2).eval()
    cache = m.new_cache(1, 4096)
    with torch.no_grad():
        m(torch.randn(1, 5, 16), cache=cache)
        m(torch.randn(1, 1, 16), cache=cache)
        m(torch.randn(1, 1, 16), cache=cache, mask=torch.ones(1, 1, 1, 4096, dtype=torch.bool))  # a mask over all slots
    assert seen == [5, 6, 7]


def _alone(m, sample, steps):
    """Decode one unpadded prompt by itself: prefill, then one token at a time."""
    cache = m.new_cache(1, 16)
    return prefill_then_decode(m, sample[None], len(sample) - steps, cache)[0]


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("rotary", [False, True], ids=["plain", "rotary"])
def test_a_ragged_batch_decodes_each_sample_as_if_alone(side, rotary):
    m = MultiHeadAttention(32, 4, num_kv_heads=2, positional=RotaryEmbedding(8) if rotary else None).eval()
    h = m.hidden_size
    lengths, steps, width = [6, 3, 5], 5, 7  # prompt lengths; generated tokens; padded prompt width
    samples = [torch.randn(n + steps, h) for n in lengths]
    prompt = torch.zeros(3, width, h)
    token_mask = torch.zeros(3, width, dtype=torch.bool)
    for i, n in enumerate(lengths):
        cols = slice(width - n, width) if side == "left" else slice(0, n)
        prompt[i, cols], token_mask[i, cols] = samples[i][:n], True
    cache = m.new_cache(3, width + steps)
    with torch.no_grad():
        first = m(prompt, cache=cache, token_mask=token_mask)
        later = [
            m(torch.stack([s[n + t] for s, n in zip(samples, lengths, strict=True)])[:, None], cache=cache)
            for t in range(steps)
        ]
        for i, n in enumerate(lengths):
            expected = _alone(m, samples[i], steps)
            got_prompt = first[i, width - n :] if side == "left" else first[i, :n]
            got = torch.cat([got_prompt] + [step[i] for step in later])
            assert_close(got, expected, FLOAT32)


def test_decoding_under_autocast_uses_a_cache_of_the_autocast_dtype():
    """Under autocast attention runs in bfloat16: that is the cache's dtype, not the input's."""
    m = MultiHeadAttention(16, 2).eval()
    x = torch.randn(1, 5, 16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        cache = m.new_cache(1, 5, dtype=torch.bfloat16)
        steps = prefill_then_decode(m, x, 3, cache)
        full = m(x, is_causal=True)
        with pytest.raises(TypeError, match=r"computes in torch.bfloat16 .* new_cache\(\.\.\., dtype=torch.bfloat16"):
            m(x[:, :1], cache=m.new_cache(1, 5))  # a float32 cache
    assert_close(steps.float(), full.float(), BFLOAT16)


def test_a_write_never_modifies_buffers_an_earlier_step_saved_for_backward():
    cache = KVCache(2, 6, num_kv_heads=3, head_dim=4)
    key = torch.randn(2, 3, 2, 4, requires_grad=True)
    keys, values, _ = cache.update(key, key * 2)  # the buffers are now part of a graph
    loss = (keys * values).sum()
    cache.update(torch.randn(2, 3, 1, 4), torch.randn(2, 3, 1, 4))  # plain data, autograd still on
    loss.backward()  # failed: "modified by an inplace operation"
    torch.testing.assert_close(key.grad, 4 * key.detach())


@pytest.mark.parametrize("num_kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("rotary", [False, True], ids=["plain", "rotary"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_one_token_steps_take_the_short_path_and_compute_what_the_full_path_does(
    monkeypatch, num_kv_heads, rotary, dtype
):
    import mha._token_step

    m = MultiHeadAttention(32, 4, num_kv_heads=num_kv_heads, positional=RotaryEmbedding(8) if rotary else None)
    m = m.eval().to(dtype)
    x = torch.randn(3, 9, 32, dtype=dtype)
    steps = []
    attend_one_query = mha._token_step.attend_one_query
    monkeypatch.setattr(mha._token_step, "attend_one_query", lambda *args: steps.append(1) or attend_one_query(*args))
    with torch.inference_mode():
        short_cache = m.new_cache(3, 11)
        short = prefill_then_decode(m, x, 2, short_cache)
        assert len(steps) == 7  # every one-token step
        monkeypatch.setattr(mha._token_step, "applies", lambda *args: False)
        full_cache = m.new_cache(3, 11)
        full = prefill_then_decode(m, x, 2, full_cache)
    assert len(steps) == 7
    assert_close(short, full, dtype)
    assert_close(short_cache.keys, full_cache.keys, dtype)
    assert_close(short_cache.values, full_cache.values, dtype)
    assert short_cache.length == full_cache.length == 9 and int(short_cache.position) == 9
    if dtype == torch.float64:
        assert_close(short, m(x, is_causal=True), FLOAT64)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_token_steps_on_cuda_decode_like_the_cpu_reference(dtype):
    m = MultiHeadAttention(64, 8, num_kv_heads=2, positional=RotaryEmbedding(8)).eval()
    x = torch.randn(2, 9, 64)
    with torch.inference_mode():
        expected = m.double()(x.double(), is_causal=True)
        gpu = m.to("cuda", dtype)
        out = prefill_then_decode(gpu, x.to("cuda", dtype), 3, gpu.new_cache(2, 12))
    assert_close(out.cpu(), expected, dtype)


def test_one_token_steps_with_bad_input_get_the_full_paths_errors_and_change_nothing():
    m = MultiHeadAttention(16, 2, num_kv_heads=1).eval()
    token = torch.randn(1, 1, 16)
    with torch.inference_mode():
        cache = m.new_cache(1, 2)
        m(token, cache=cache)
        keys = cache.keys.clone()
        refusals = [
            (
                ValueError,
                r"cache does not fit this call: it holds \(b=1, n_kv=1, d=8\), this call has \(b=2",
                lambda: m(torch.randn(2, 1, 16), cache=cache),
            ),
            (
                TypeError,
                r"query must have the parameters' dtype torch.float32, got torch.float64",
                lambda: m(token.double(), cache=cache),
            ),
            (
                ValueError,
                r"query must have shape \(b, s_q, h=16\), got \(1, 1, 12\)",
                lambda: m(torch.randn(1, 1, 12), cache=cache),
            ),
            (
                TypeError,
                r"cache has dtype torch.float16 on cpu, but this call computes in torch.float32",
                lambda: m(token, cache=m.new_cache(1, 2, dtype=torch.float16)),
            ),
            (TypeError, r"is_causal must be a bool, got int", lambda: m(token, cache=cache, is_causal=1)),
            (
                ValueError,
                r"cache does not fit this call: it holds \(b=1, n_kv=2, d=8\)",
                lambda: m(token, cache=KVCache(1, 2, num_kv_heads=2, head_dim=8)),
            ),
        ]
        for error, message, call in refusals:
            with pytest.raises(error, match=message):
                call()
        with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(TypeError, match=r"computes in torch.bfloat16"):
            m(token, cache=cache)
        assert cache.length == 1 and int(cache.position) == 1
        assert_close(cache.keys, keys, EXACT)
        m(token, cache=cache)
        with pytest.raises(ValueError, match=r"KVCache overflow: it holds 2 of max_len=2 positions and cannot take 1"):
            m(token, cache=cache)


def test_one_token_steps_run_the_hooks_of_the_projections():
    """The step calls the projections' kernels directly only when no hook would notice."""
    m = MultiHeadAttention(16, 2).eval()
    x = torch.randn(1, 4, 16)
    calls = []
    with torch.inference_mode():
        plain = prefill_then_decode(m, x, 2, m.new_cache(1, 4))
        handle = m.k_proj.register_forward_hook(lambda module, args, out: calls.append("k") or out * 2)
        hooked = prefill_then_decode(m, x, 2, m.new_cache(1, 4))
        handle.remove()
        assert calls == ["k"] * 3  # the prompt and both one-token steps
        from torch.nn.modules.module import register_module_forward_hook

        handle = register_module_forward_hook(lambda module, args, out: calls.append(type(module).__name__))
        again = prefill_then_decode(m, x, 2, m.new_cache(1, 4))
        handle.remove()
    assert calls.count("Linear") == 3 * 4  # four projections, three calls
    assert not torch.allclose(hooked, plain)  # doubled keys change the weights
    assert_close(again, plain, EXACT)
    m.k_proj.register_forward_hook(lambda module, args, out: out * 2)
    assert_close(hooked, m(x, is_causal=True), FLOAT32_FEW_OPS)
