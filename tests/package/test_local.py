"""Sliding windows, packed documents and ALiBi: every path against an independent float64 reference.

The blockwise path (mha/_blockwise.py) only runs for long sequences; the
tests lower its threshold and block size so that small shapes take it too.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from helpers import EXACT, FLOAT32, FLOAT32_FEW_OPS, FLOAT64, TOLERANCE, assert_close, prefill_then_decode
from mha import Attention, KVCache, MultiHeadAttention, RotaryEmbedding, _blockwise, masks, to_torch
from mha.functional import attention
from mha.rolling import RollingKVCache


def reference(q, k, v, *, window=None, alibi=False, documents=None, causal=False, allowed=None):
    """float64 attention with explicit loops over positions, written from the definitions.

    Query i sits at position p = i + s_kv - s_q; key j is allowed when
    |p - j| < window (and j <= p if causal), in p's document (a run of equal
    ids), and allowed[b, 0, i, j]. ALiBi adds -slope_h * |p - j|, with the
    slopes of Press et al. written out for 2^k heads and the interleave rule.
    """
    q, k, v = q.double(), k.double(), v.double()
    b, n_h, s_q, d = q.shape
    n_kv, s_kv = k.shape[1], k.shape[2]
    power = 2 ** int(math.log2(n_h))
    slopes = [2 ** (-8 * i / power) for i in range(1, power + 1)]
    slopes += [2 ** (-8 * i / (2 * power)) for i in range(1, 2 * (n_h - power), 2)]
    # The additive mask, entry by entry in plain Python: 0 or -slope·|p - j| where allowed, -inf elsewhere.
    bias = torch.full((b, n_h, s_q, s_kv), -math.inf, dtype=torch.float64)
    for bi in range(b):
        run = [0] * s_kv
        if documents is not None:
            ids = documents[bi].tolist()
            for j in range(1, s_kv):
                run[j] = run[j - 1] + (ids[j] != ids[j - 1])
        for i, j in itertools.product(range(s_q), range(s_kv)):
            p = i + s_kv - s_q
            if (causal and j > p) or (window is not None and abs(p - j) >= window):
                continue
            if run[j] != run[p] or (allowed is not None and not bool(allowed[bi, 0, i, j])):
                continue
            for h in range(n_h):
                bias[bi, h, i, j] = -slopes[h] * abs(p - j) if alibi else 0.0
    group = n_h // n_kv
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(d) + bias
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # a row with no key: zeros
    return weights @ v


@pytest.fixture
def blockwise(monkeypatch):
    """Make the smallest shapes run blockwise, in blocks of 3 queries."""
    monkeypatch.setattr(_blockwise, "MIN_LENGTH", 1)
    monkeypatch.setattr(_blockwise, "BLOCK", 3)


def _inputs(b=2, n_h=6, n_kv=3, s_q=7, s_kv=7, d=4, dtype=torch.float64):
    g = torch.Generator().manual_seed(s_q * 10 + s_kv)
    return [torch.randn(b, n, s, d, dtype=dtype, generator=g) for n, s in ((n_h, s_q), (n_kv, s_kv), (n_kv, s_kv))]


CASES = [
    (w, alibi, docs, causal, pad)
    for w, alibi, docs, causal, pad in itertools.product(
        [None, 3], [False, True], [False, True], [False, True], [False, True]
    )
    if w is not None or alibi or docs
]


@pytest.mark.parametrize("layout", ["dense", "blockwise", "math"])
@pytest.mark.parametrize("s_q,s_kv", [(7, 7), (5, 9)])
def test_every_combination_equals_the_float64_reference(layout, s_q, s_kv, monkeypatch):
    if layout == "blockwise":
        monkeypatch.setattr(_blockwise, "MIN_LENGTH", 1)
        monkeypatch.setattr(_blockwise, "BLOCK", 2)
    q, k, v = _inputs(s_q=s_q, s_kv=s_kv)
    documents = torch.tensor([[0] * 3 + [5] * (s_kv - 3), [1] * 2 + [2] * 2 + [1] * (s_kv - 4)])
    pad = torch.ones(2, 1, s_q, s_kv, dtype=torch.bool)
    pad[1, ..., -2:] = False  # sample 1's last two keys are padding
    for w, alibi, docs, causal, padded in CASES:
        expected = reference(
            q,
            k,
            v,
            window=w,
            alibi=alibi,
            documents=documents if docs else None,
            causal=causal,
            allowed=pad if padded else None,
        )
        context, _ = attention(
            q,
            k,
            v,
            mask=pad if padded else None,
            is_causal=causal,
            sliding_window=w,
            alibi=alibi,
            document_ids=documents if docs else None,
            need_weights=layout == "math",
        )
        assert_close(context, expected, FLOAT64, msg=f"{(w, alibi, docs, causal, padded)}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_blockwise_equals_dense_in_low_precision(dtype, monkeypatch):
    q, k, v = _inputs(b=1, n_h=4, n_kv=2, s_q=11, s_kv=11, d=8, dtype=dtype)
    documents = torch.tensor([[0] * 4 + [1] * 7])
    options = {"sliding_window": 3, "alibi": True, "document_ids": documents, "is_causal": True}
    dense, _ = attention(q, k, v, **options)
    monkeypatch.setattr(_blockwise, "MIN_LENGTH", 1)
    monkeypatch.setattr(_blockwise, "BLOCK", 2)
    block, _ = attention(q, k, v, **options)
    expected = reference(q, k, v, window=3, alibi=True, documents=documents, causal=True)
    assert_close(block.double(), expected, dtype)
    assert_close(dense.double(), expected, dtype)


def test_the_window_counts_as_mistral_does():
    """Transformers' Mistral with sliding_window=3 lets query i see keys i-2..i: our window of 3 with is_causal."""
    transformers = pytest.importorskip("transformers")
    config = transformers.MistralConfig(
        vocab_size=11,
        hidden_size=16,
        intermediate_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        sliding_window=3,
        attn_implementation="eager",
    )
    model = transformers.MistralModel(config).eval()
    with torch.no_grad():
        weights = model(torch.arange(7)[None], output_attentions=True).attentions[0]  # (1, 2, 7, 7)
    expected = masks.sliding_window_mask(7, window=3) & masks.causal_mask(7)
    assert torch.equal(weights[0, 0] > 0, expected)
    m = MultiHeadAttention(16, 2, sliding_window=3)
    _, ours = m(torch.randn(1, 7, 16), is_causal=True, need_weights=True)
    assert torch.equal(ours[0, 0] > 0, expected)


def test_alibi_matches_bloom_slopes_and_softmax():
    bloom = pytest.importorskip("transformers.models.bloom.modeling_bloom")
    for n in (1, 2, 3, 5, 6, 8, 12, 16, 20, 33):
        assert_close(masks.alibi_slopes(n), bloom._get_alibi_slopes(n, "cpu"), FLOAT32_FEW_OPS)
    # BLOOM adds m·j; ours -m·|p - j|: under a causal mask they differ by a constant per row.
    scores = torch.randn(5, 7, 7, dtype=torch.float64)
    causal = ~masks.causal_mask(7)
    theirs = bloom.build_alibi_tensor(torch.ones(1, 7), 5, torch.float64).view(5, 1, 7)
    ours = masks.alibi_bias(5, 7, dtype=torch.float64)
    torch.testing.assert_close(
        torch.softmax((scores + ours).masked_fill(causal, -math.inf), -1),
        torch.softmax((scores + theirs).masked_fill(causal, -math.inf), -1),
    )


def test_packed_documents_equal_each_document_alone_with_rotary_restarting(blockwise):
    m = MultiHeadAttention(24, 6, num_kv_heads=2, positional=RotaryEmbedding(4), sliding_window=4).eval()
    lengths = [2, 5, 3]
    x = torch.randn(1, sum(lengths), 24)
    documents = torch.repeat_interleave(torch.tensor([7, 3, 9]), torch.tensor(lengths))[None]
    alone = torch.cat([m(part, is_causal=True) for part in x.split(lengths, dim=1)], dim=1)
    assert_close(m(x, is_causal=True, document_ids=documents), alone, FLOAT32_FEW_OPS)


def test_module_options_follow_the_functional_call_with_gqa_and_padding(blockwise):
    attn = Attention(12, 6, num_kv_heads=2, sliding_window=2, alibi=True)
    q, k = torch.randn(3, 5, 12), torch.randn(3, 8, 4)
    pad = masks.padding_mask(torch.tensor([8, 6, 3]), 8)
    out, weights = attn(q, k, k, mask=pad, is_causal=True, need_weights=True)
    split = lambda x, n: x.view(3, x.shape[1], n, 2).transpose(1, 2)  # noqa: E731
    expected = reference(
        split(q, 6), split(k, 2), split(k, 2), window=2, alibi=True, causal=True, allowed=pad.expand(3, 1, 5, 8)
    )
    assert_close(out, expected.transpose(1, 2).flatten(2).float(), FLOAT32)
    assert (weights.masked_select(~(masks.sliding_window_mask(5, 8, window=2) & masks.causal_mask(5, 8))) == 0).all()
    assert_close(attn(q, k, k, mask=pad, is_causal=True), out, FLOAT32)


def test_dropout_keeps_the_pattern_and_is_off_in_eval(blockwise):
    m = MultiHeadAttention(16, 2, 0.5, sliding_window=2)
    x = torch.randn(2, 6, 16)
    _, weights = m(x, is_causal=True, need_weights=True)
    allowed = masks.sliding_window_mask(6, window=2) & masks.causal_mask(6)
    assert (weights.masked_select(~allowed) == 0).all() and (weights == 0).any()
    m(x, is_causal=True).sum().backward()  # blockwise with dropout, in training
    m.eval()
    torch.testing.assert_close(
        m(x, is_causal=True),
        MultiHeadAttention(16, 2, sliding_window=2).load_state_dict(m.state_dict()) and m(x, is_causal=True),
    )


@pytest.mark.parametrize(
    "options",
    [
        {"sliding_window": 3, "is_causal": True},
        {"document_ids": "docs", "is_causal": True},
        {"alibi": True, "is_causal": True},
        {"sliding_window": 2, "alibi": True, "document_ids": "docs"},
    ],
    ids=["window", "documents", "alibi", "all"],
)
def test_gradients_of_the_blockwise_path_are_exact(options, blockwise):
    q, k, v = (t.requires_grad_() for t in _inputs(b=2, n_h=2, n_kv=1, s_q=6, s_kv=6, d=2))
    options = dict(options)
    if options.get("document_ids") == "docs":
        options["document_ids"] = torch.tensor([[0, 0, 0, 1, 1, 1], [2, 2, 3, 3, 3, 4]])
    assert torch.autograd.gradcheck(lambda q, k, v: attention(q, k, v, **options)[0], (q, k, v), fast_mode=True)


@pytest.mark.parametrize("option", ["window", "documents"])
def test_dynamic_shapes_compile_without_recompiles(option):
    from torch._dynamo.testing import CompileCounter

    m = MultiHeadAttention(32, 4, num_kv_heads=2, sliding_window=3 if option == "window" else None).eval()
    counter = CompileCounter()
    step = torch.compile(m, backend=counter, fullgraph=True, dynamic=True)
    torch._dynamo.reset()
    with torch.no_grad():
        for s in range(3, 15):
            x = torch.randn(1 + s % 3, s, 32)
            call = {"is_causal": True}
            if option == "documents":
                call["document_ids"] = (torch.arange(s) >= s // 2).long().expand(x.shape[0], s)
            assert_close(step(x, **call), m(x, **call), FLOAT32)
    assert counter.frame_count <= 2, counter.frame_count


def test_export_with_a_window():
    m = MultiHeadAttention(16, 4, num_kv_heads=2, sliding_window=3).eval()

    class Causal(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(x, is_causal=True)

    x = torch.randn(2, 9, 16)
    s = torch.export.Dim("s", min=2, max=64)
    program = torch.export.export(Causal(), (x,), dynamic_shapes={"x": {1: s}})
    for length in (9, 13):
        y = torch.randn(2, length, 16)
        assert_close(program.module()(y), m(y, is_causal=True), FLOAT32)


def _windowed(w, **kw):
    return MultiHeadAttention(24, 6, num_kv_heads=2, sliding_window=w, positional=RotaryEmbedding(4), **kw).eval()


@torch.no_grad()
@pytest.mark.parametrize("alibi", [False, True])
def test_rolling_cache_decodes_3w_steps_like_the_full_windowed_pass(alibi):
    w = 4
    m = _windowed(w, alibi=alibi)
    x = torch.randn(3, 6 + 3 * w, 24)
    cache = m.new_cache(3)
    assert isinstance(cache, RollingKVCache) and cache.keys.shape == (3, 2, w + 1, 4)
    # a prefill longer than the window
    assert_close(prefill_then_decode(m, x, 6, cache), m(x, is_causal=True), FLOAT32_FEW_OPS)


@torch.no_grad()
@pytest.mark.parametrize("side", ["left", "right"])
def test_rolling_cache_in_a_ragged_batch_decodes_each_sample_as_if_alone(side):
    w = 3
    m = _windowed(w)
    lengths = [7, 4]
    x = torch.randn(2, 7, 24)
    real = torch.arange(7)[None] < torch.tensor(lengths)[:, None]
    if side == "left":
        real = real.flip(1)
    cache = m.new_cache(2)
    steps = torch.randn(2, 2 * w, 24)
    outs = [m(x, cache=cache, token_mask=real)]
    outs += [m(steps[:, i : i + 1], cache=cache) for i in range(2 * w)]
    for i in range(len(lengths)):
        alone = torch.cat([x[i : i + 1, real[i]], steps[i : i + 1]], dim=1)
        expected = m(alone, is_causal=True)[0]
        got = torch.cat([outs[0][i, real[i]], torch.cat(outs[1:], 1)[i]])
        assert_close(got, expected, FLOAT32_FEW_OPS)


@torch.no_grad()
def test_a_plain_cache_on_a_windowed_layer_masks_by_position():
    m = _windowed(3, alibi=True)
    x = torch.randn(2, 9, 24)
    cache = KVCache(2, 9, num_kv_heads=2, head_dim=4)
    assert_close(prefill_then_decode(m, x, 4, cache), m(x, is_causal=True), FLOAT32_FEW_OPS)


def test_a_rolling_cache_must_hold_the_layers_own_window():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 12)
    m = MultiHeadAttention(12, 3).eval()  # no window: a rolling cache would forget what the full pass sees
    with pytest.raises(ValueError, match=r"sliding_window must be this module's \(None\), got 2"):
        m.new_cache(2, sliding_window=2)
    refused = r"cache holds a window of \d positions, but this layer's sliding_window is None"
    for cache in (
        RollingKVCache(2, 2, num_kv_heads=3, head_dim=4),
        MultiHeadAttention(12, 3, sliding_window=3).new_cache(2),
    ):
        for chunk in (1, 2):  # the one-token shortcut and the full path
            with pytest.raises(ValueError, match=refused), torch.no_grad():
                m(x[:, :chunk], is_causal=True, cache=cache)
        assert cache.length == 0  # refused before anything was written
    windowed = MultiHeadAttention(12, 3, sliding_window=3).eval()
    with pytest.raises(ValueError, match="cache holds a window of 2 positions, but this layer's sliding_window is 3"):
        windowed(x[:, :2], is_causal=True, cache=RollingKVCache(2, 2, num_kv_heads=3, head_dim=4))
    cache = windowed.new_cache(2, sliding_window=3)
    with torch.no_grad():
        steps = torch.cat([windowed(x[:, t : t + 1], is_causal=True, cache=cache) for t in range(5)], 1)
        torch.testing.assert_close(steps, windowed(x, is_causal=True))


def test_rolling_cache_memory_follows_the_window_and_resets():
    m = _windowed(5)
    cache = m.new_cache(1, 1000)  # max_len bounds nothing for a windowed cache
    assert cache.keys.shape[2] == 6
    with torch.no_grad():
        for _ in range(12):
            m(torch.randn(1, 1, 24), cache=cache)
    assert sorted(cache.slot_positions[0, :5].tolist()) == [7, 8, 9, 10, 11]
    cache.reset()
    assert (cache.slot_positions == -1).all() and cache.length == 0


@pytest.mark.parametrize(
    "make",
    [
        lambda x: torch.nested.nested_tensor([x[0, :3], x[1]], layout=torch.jagged),
        lambda x: torch.nested.nested_tensor([x[0, :3], x[1]]),
    ],
    ids=["jagged", "strided"],
)
@pytest.mark.parametrize("call", [{}, {"is_causal": True}, {"need_weights": True}, {"rotary": True}, {"cache": True}])
def test_nested_inputs_are_refused_at_the_entry(make, call):
    call = dict(call)
    m = MultiHeadAttention(16, 2, positional=RotaryEmbedding(8) if call.pop("rotary", False) else None).eval()
    if call.pop("cache", False):
        call["cache"] = m.new_cache(2, 8)
    x = make(torch.randn(2, 5, 16))
    with pytest.raises(TypeError, match=r"query is a nested \(jagged\) tensor, which mha does not take"):
        m(x, **call)
    with pytest.raises(TypeError, match="query is a nested"):
        attention(x, x, x)
    if call.get("is_causal") or call.get("need_weights"):  # the core layer too, which the drop-in calls
        with pytest.raises(TypeError, match=r"query is a nested \(jagged\) tensor, which mha does not take with"):
            m.attention(x, x, x, **call)


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="sliding_window must be a positive int, got 0"):
        MultiHeadAttention(8, 2, sliding_window=0)
    with pytest.raises(TypeError, match="alibi must be a bool"):
        Attention(8, 2, alibi=1)
    q = torch.randn(1, 2, 4, 3)
    with pytest.raises(ValueError, match=r"document_ids must be an integer tensor of shape \(b, s_kv\)"):
        attention(q, q, q, document_ids=torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"document_ids must have shape \(b=1, s_kv=4\), got \(1, 5\)"):
        attention(q, q, q, document_ids=torch.zeros(1, 5, dtype=torch.long))
    m = MultiHeadAttention(8, 2, sliding_window=3)
    x = torch.randn(1, 4, 8)
    with pytest.raises(ValueError, match="sliding_window=3 needs self-attention"):
        m(x, torch.randn(1, 5, 8))
    with pytest.raises(ValueError, match="document_ids cannot be combined with a cache"):
        m(x, cache=m.new_cache(1), document_ids=torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="mask cannot be combined with a RollingKVCache"):
        m(x, cache=m.new_cache(1), mask=torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"sliding_window must be this module's \(3\), got 5"):
        m.new_cache(1, sliding_window=5)
    with pytest.raises(ValueError, match="max_len is required"):
        MultiHeadAttention(8, 2).new_cache(1)
    with pytest.raises(TypeError, match="a RollingKVCache is filled by the attention layer"):
        m.new_cache(1).update(torch.zeros(1, 2, 1, 4), torch.zeros(1, 2, 1, 4))
    with pytest.raises(ValueError, match="nn.MultiheadAttention has no equivalent of sliding_window=3"):
        to_torch(m)
    sharded = Attention(8, 2, alibi=True)
    sharded.shards = 2  # as mha.parallel.parallelize sets it
    with pytest.raises(ValueError, match="alibi=True is not supported under tensor parallelism"):
        sharded(torch.randn(1, 3, 4), torch.randn(1, 3, 4), torch.randn(1, 3, 4))


def test_explain_says_which_layout_runs_and_why():
    m = MultiHeadAttention(64, 4, sliding_window=512)
    assert m.explain(length=16384).layout == "blockwise"
    assert "dense: at s_kv=1024" in m.explain(length=1024).reason
    assert "pass length=" in m.explain().reason
    assert MultiHeadAttention(64, 4).explain(length=16384, documents=True).layout == "blockwise"
    assert MultiHeadAttention(64, 4).explain(length=16384).layout == "dense"


@torch.no_grad()
def test_a_window_combines_with_sinks_as_gpt_oss_uses_them(monkeypatch):
    """Sinks join each query's softmax once; a block holds each query's whole row, so blockwise stays exact."""
    m = MultiHeadAttention(24, 6, num_kv_heads=2, sliding_window=3, sinks=True).eval()
    m.attention.sinks.copy_(torch.linspace(-1.0, 2.0, 6))
    x = torch.randn(2, 9, 24)
    dense = m(x, is_causal=True)
    monkeypatch.setattr(_blockwise, "MIN_LENGTH", 1)
    monkeypatch.setattr(_blockwise, "BLOCK", 2)
    assert_close(m(x, is_causal=True), dense, FLOAT32_FEW_OPS)
    _, weights = m(x, is_causal=True, need_weights=True)
    allowed = masks.sliding_window_mask(9, window=3) & masks.causal_mask(9)
    assert (weights.masked_select(~allowed) == 0).all()
    assert (weights.sum(-1) < 1).all()  # the sink takes its share
    cache = m.new_cache(2)
    assert_close(prefill_then_decode(m, x, 4, cache), dense, FLOAT32_FEW_OPS)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("window,padded", [(None, False), (5, True)])
def test_causal_alibi_as_features_equals_the_float64_reference(dtype, window, padded, monkeypatch):
    """Blocks of 8 over 40 positions: the extra query/key feature, in place (no autograd) and per block (autograd)."""
    monkeypatch.setattr(_blockwise, "MIN_LENGTH", 1)
    monkeypatch.setattr(_blockwise, "BLOCK", 8)
    q, k, v = _inputs(b=2, n_h=6, n_kv=2, s_q=37, s_kv=40, d=4, dtype=dtype)
    v = torch.randn(2, 2, 40, 7).to(dtype)  # d_v = 7 > d + 1: the features pad q and k instead
    pad = torch.ones(2, 1, 37, 40, dtype=torch.bool)
    pad[1, ..., -3:] = False
    mask = pad if padded else None
    expected = reference(q, k, v, window=window, alibi=True, causal=True, allowed=mask)
    with torch.no_grad():
        got, _ = attention(q, k, v, mask=mask, is_causal=True, alibi=True, sliding_window=window)
    assert_close(got.double(), expected, dtype)
    q.requires_grad_()
    got, _ = attention(q, k, v[..., :3], mask=mask, is_causal=True, alibi=True, sliding_window=window)
    expected = reference(q.detach(), k, v[..., :3], window=window, alibi=True, causal=True, allowed=mask)
    assert_close(got.detach().double(), expected, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("s_q,d_v", [(29, 3), (19, 11)])
def test_causal_alibi_in_merged_blocks_equals_the_float64_reference(dtype, s_q, d_v, monkeypatch):
    """Without autograd: blocks of 11 queries, a centre every 4, the past keys and the causal square merged."""
    monkeypatch.setattr(_blockwise, "MIN_LENGTH", 1)
    monkeypatch.setattr(_blockwise, "ALIBI_BLOCK", 11)
    monkeypatch.setattr(_blockwise, "ALIBI_CENTRE", 4)
    calls = []
    merged = _blockwise._alibi_merged
    monkeypatch.setattr(_blockwise, "_alibi_merged", lambda *a, **kw: calls.append(1) or merged(*a, **kw))
    q, k, _ = _inputs(b=2, n_h=6, n_kv=2, s_q=s_q, s_kv=29, d=5, dtype=dtype)
    v = torch.randn(2, 2, 29, d_v).to(dtype)  # d_v = 3 < d; 11 > d + 3 features
    expected = reference(q, k, v, alibi=True, causal=True)
    with torch.no_grad():
        got, _ = attention(q, k, v, is_causal=True, alibi=True)
    assert_close(got, expected, dtype)
    assert calls == [1]
    # Under autograd the blocks keep their masks (the merge has no backward): gradients still exact.
    q.requires_grad_()
    got, _ = attention(q, k, v, is_causal=True, alibi=True)
    assert calls == [1]
    (grad,) = torch.autograd.grad(got.double().square().sum(), q)
    q64 = q.detach().double().requires_grad_()
    (expected_grad,) = torch.autograd.grad(reference(q64, k, v, alibi=True, causal=True).square().sum(), q64)
    assert_close(grad, expected_grad, TOLERANCE[dtype].times(10))


@torch.no_grad()
def test_causal_alibi_features_keep_the_row_constant_for_sinks(monkeypatch):
    """A sink joins the softmax, so ALiBi's constant per row matters: blockwise equals the dense bias."""
    m = MultiHeadAttention(20, 5, sinks=True, alibi=True).eval()
    m.attention.sinks.copy_(torch.linspace(-1.0, 2.0, 5))
    x = torch.randn(2, 19, 20)
    dense = m(x, is_causal=True)
    monkeypatch.setattr(_blockwise, "MIN_LENGTH", 1)
    monkeypatch.setattr(_blockwise, "BLOCK", 4)
    assert_close(m(x, is_causal=True), dense, FLOAT32_FEW_OPS)
    assert "ALiBi as one more query/key feature" in m.explain(length=4096).reason


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("s_q", [11, 8])
def test_documents_padded_into_one_batch_equal_the_reference(causal, s_q, monkeypatch):
    """Documents of lengths 4, 1, 3, 3 (and one cut by s_q < s_kv) padded into one call; gradients too."""
    monkeypatch.setattr(_blockwise, "MIN_LENGTH", 1)
    monkeypatch.setattr(_blockwise, "PAD_RATIO", 100.0)
    q, k, v = _inputs(b=2, n_h=4, n_kv=2, s_q=s_q, s_kv=11, d=3)
    documents = torch.tensor([[0] * 4 + [1] + [2] * 3 + [3] * 3, [5] * 2 + [6] * 9])
    expected = reference(q, k, v, documents=documents, causal=causal)
    got, _ = attention(q, k, v, is_causal=causal, document_ids=documents)
    assert_close(got, expected, FLOAT64)
    inputs = [t.requires_grad_() for t in (q, k, v)]
    assert torch.autograd.gradcheck(
        lambda q, k, v: attention(q, k, v, is_causal=causal, document_ids=documents)[0], inputs, fast_mode=True
    )


def test_extend_writes_a_chunk_at_the_next_positions():
    b, n_kv, w, d, d_v = 2, 3, 2, 5, 7
    ring = RollingKVCache(b, w, num_kv_heads=n_kv, head_dim=d, v_head_dim=d_v)
    key, value = torch.randn(b, n_kv, 3, d), torch.randn(b, n_kv, 3, d_v)
    keys, values, key_positions = ring.extend(key, value, torch.tensor([[0, 1, 2], [0, 1, 2]]))
    assert_close(keys, torch.cat((torch.zeros(b, n_kv, w, d), key), dim=2), EXACT)
    assert_close(values, torch.cat((torch.zeros(b, n_kv, w, d_v), value), dim=2), EXACT)
    assert key_positions.tolist() == [[-1, -1, 0, 1, 2]] * b
    assert ring.slot_positions[:, :w].tolist() == [[2, 1]] * b  # position p in slot p % w
    assert_close(ring.keys[:, :, [1, 0]], key[:, :, 1:], EXACT)
    token_mask = torch.tensor([[True], [False]])
    _, _, key_positions = ring.extend(key[:, :, :1], value[:, :, :1], torch.tensor([[3], [99]]), token_mask)
    assert key_positions[:, w:].tolist() == [[3], [-1]]  # padding: any position, seen as -1


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"key": torch.randn(2, 3, 2, 5, dtype=torch.float64)}, TypeError, "cache has dtype torch.float32"),
        ({"value": torch.randn(2, 3, 2, 5)}, ValueError, r"value must have shape \(b=2, n_kv=3, s=2, d_v=7\)"),
        ({"key": torch.randn(2, 1, 2, 5)}, ValueError, r"key must have shape \(b=2, n_kv=3, s, d=5\)"),
        ({"positions": torch.tensor([[-5, 100]])}, ValueError, r"positions must have shape \(b=2, s=2\)"),
        ({"positions": torch.tensor([[-5, 100], [1, 2]])}, ValueError, "positions must be each sample's next ones"),
        ({"positions": torch.tensor([[1, 2], [0, 1]])}, ValueError, r"\[\[0, 1\], \[0, 1\]\].*got \[\[1, 2\]"),
        ({"positions": torch.tensor([[0.0, 1.0], [0.0, 1.0]])}, TypeError, "positions must be an integer tensor"),
        ({"positions": [[0, 1], [0, 1]]}, TypeError, "positions must be a torch.Tensor"),
        ({"token_mask": torch.ones(2, 2, dtype=torch.long)}, TypeError, "token_mask must be a bool tensor"),
        ({"token_mask": torch.ones(2, 3, dtype=torch.bool)}, ValueError, r"token_mask must have shape \(b=2, s=2\)"),
    ],
)
def test_extend_refuses_what_does_not_fit_before_the_ring_changes(change, error, message):
    b, n_kv, w, d, d_v = 2, 3, 4, 5, 7
    ring = RollingKVCache(b, w, num_kv_heads=n_kv, head_dim=d, v_head_dim=d_v)
    args = {
        "key": torch.randn(b, n_kv, 2, d),
        "value": torch.randn(b, n_kv, 2, d_v),
        "positions": torch.tensor([[0, 1], [0, 1]]),
        "token_mask": None,
    }
    with pytest.raises(error, match=message):
        ring.extend(**(args | change))
    assert ring.length == 0 and ring.next_positions.tolist() == [0, 0]
    assert ring.slot_positions.tolist() == [[-1] * (w + 1)] * b
    assert_close(ring.keys, torch.zeros(b, n_kv, w + 1, d), EXACT)
    ring.extend(**args)  # and the same ring then takes a valid chunk
    assert ring.slot_positions[:, :2].tolist() == [[0, 1]] * b


def test_a_nested_key_mask_or_document_ids_beside_a_padded_query_is_refused_by_name():
    """A tester's finding: these reached torch and failed with AttributeError: 'NestedIntNode' ..."""
    x = torch.randn(2, 5, 8)
    nested = torch.nested.nested_tensor([torch.randn(3, 8), torch.randn(5, 8)], layout=torch.jagged)
    mask = torch.nested.nested_tensor(
        [torch.ones(3, dtype=torch.bool), torch.ones(5, dtype=torch.bool)], layout=torch.jagged
    )
    ids = torch.nested.nested_tensor(
        [torch.zeros(3, dtype=torch.long), torch.zeros(5, dtype=torch.long)], layout=torch.jagged
    )
    m = MultiHeadAttention(8, 2)
    with pytest.raises(TypeError, match=r"mask is a nested \(jagged\) tensor, which mha does not take"):
        m(x, mask=mask)
    with pytest.raises(TypeError, match=r"document_ids is a nested \(jagged\) tensor, which mha does not take"):
        m(x, document_ids=ids)
    with pytest.raises(TypeError, match=r"key is a nested \(jagged\) tensor but query is not"):
        Attention(8, 2)(x, nested, nested)
    with pytest.raises(TypeError, match=r"key is a nested \(jagged\) tensor, which mha does not take"):
        m(x, nested, nested)
    # All three nested, none of the options that fail in torch: the core layer computes them whole.
    q = torch.nested.nested_tensor([torch.randn(3, 8), torch.randn(5, 8)], layout=torch.jagged)
    out = Attention(8, 2)(q, q, q)
    for i in range(2):
        padded = q.unbind()[i][None]
        assert_close(out.unbind()[i][None], Attention(8, 2)(padded, padded, padded), FLOAT32)
