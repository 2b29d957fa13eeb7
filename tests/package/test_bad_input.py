"""Generated bad (and odd) input: masks of every rank and dtype, half types with
large finite masks, empty sequences, caches that do not fit.

Every input is either computed like its explicit equivalent, or refused with a
`ValueError`/`TypeError` that names the argument, before any state changes.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import FLOAT32, assert_close, under_fullgraph
from mha import Attention, KVCache, MultiHeadAttention

B, S_Q, S_KV, H, N_H = 2, 5, 7, 12, 3  # distinct sizes
TARGET = (B, N_H, S_Q, S_KV)
MASK_DTYPES = [torch.bool, torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int64, torch.uint8]
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def masks(draw):
    """A mask of rank 0..4 and any dtype; each dimension the target's, 1, or a wrong size."""
    rank = draw(st.integers(0, 4))
    shape = tuple(draw(st.sampled_from([t, 1, t + 1])) for t in TARGET[4 - rank :])
    dtype = draw(st.sampled_from(MASK_DTYPES))
    if dtype == torch.bool:
        mask = torch.rand(shape) > 0.3
    elif dtype.is_floating_point:
        mask = torch.where(torch.rand(shape) > 0.3, 0.0, float("-inf")).to(dtype)
    else:
        mask = (torch.rand(shape) > 0.3).to(dtype)
    return mask


def _broadcastable(shape: tuple[int, ...]) -> bool:
    return all(s in (1, t) for s, t in zip(reversed(shape), reversed(TARGET), strict=False))


@SETTINGS
@given(mask=masks(), backend=st.sampled_from(["auto", "math"]))
def test_any_mask_is_computed_like_its_expansion_or_refused(mask, backend):
    m = MultiHeadAttention(H, N_H, backend=backend).eval()
    q, kv = torch.randn(B, S_Q, H), torch.randn(B, S_KV, H)
    usable = (mask.dtype == torch.bool or mask.is_floating_point()) and _broadcastable(tuple(mask.shape))
    if not usable:
        with pytest.raises((ValueError, TypeError), match=r"^mask must be"):
            m(q, kv, kv, mask=mask)
        return
    expanded = mask.expand(TARGET).clone()
    out = m(q, kv, kv, mask=mask)
    expected, _ = m(q, kv, kv, mask=expanded, need_weights=True)  # the math path, on the full mask
    assert_close(out, expected, FLOAT32)  # 0 and -inf are exact in every float dtype
    assert not out.isnan().any()


@SETTINGS
@given(
    dtype=st.sampled_from([torch.float16, torch.bfloat16]),
    fills=st.lists(
        st.sampled_from([0.0, -1e4, -1e9, float(torch.finfo(torch.float32).min), float("-inf")]),
        min_size=S_KV,
        max_size=S_KV,
    ),
    blocked_row=st.integers(0, S_Q - 1),
)
def test_half_precision_paths_agree_on_large_finite_masks(dtype, fills, blocked_row):
    mask = torch.tensor(fills).expand(B, 1, S_Q, S_KV).clone()
    mask[:, :, blocked_row] = fills[0] if fills[0] < 0 else -1e9  # one row fully blocked by one value
    m = MultiHeadAttention(H, N_H).eval()
    q, kv = torch.randn(B, S_Q, H), torch.randn(B, S_KV, H)
    m, q, kv = m.to(dtype), q.to(dtype), kv.to(dtype)
    fused = m(q, kv, kv, mask=mask)
    math, _ = m(q, kv, kv, mask=mask, need_weights=True)
    assert_close(fused, math, dtype)
    assert not fused.isnan().any()


@SETTINGS
@given(
    s_q=st.sampled_from([0, 1, 3]),
    s_kv=st.sampled_from([0, 1, 4]),
    is_causal=st.booleans(),
    with_mask=st.booleans(),
    backend=st.sampled_from(["auto", "math"]),
)
def test_empty_sequences_in_give_empty_or_zero_context_out(s_q, s_kv, is_causal, with_mask, backend):
    m = MultiHeadAttention(H, N_H, backend=backend).eval()
    q, kv = torch.randn(B, s_q, H), torch.randn(B, s_kv, H)
    mask = torch.ones(s_q, s_kv, dtype=torch.bool) if with_mask else None
    out = m(q, kv, kv, mask=mask, is_causal=is_causal)
    assert out.shape == (B, s_q, H) and not out.isnan().any()
    if s_kv == 0:  # nothing to attend to: zero context, so the output is the bias
        torch.testing.assert_close(out, m.out_proj.bias.expand(B, s_q, H))


@SETTINGS
@given(
    batch=st.sampled_from([B, B + 1]),
    heads=st.sampled_from([N_H, 1]),
    head_dim=st.sampled_from([H // N_H, 2]),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.float16]),
    filled=st.integers(0, 4),
    chunk=st.integers(1, 3),
)
def test_a_cache_that_does_not_fit_is_refused_before_it_changes(batch, heads, head_dim, dtype, filled, chunk):
    m = MultiHeadAttention(H, N_H).eval()
    cache = KVCache(batch, 5, num_kv_heads=heads, head_dim=head_dim, dtype=dtype)
    cache.position.fill_(filled)
    cache._length = filled
    keys = cache.keys.clone()
    x = torch.randn(B, chunk, H)
    fits = (batch, heads, head_dim, dtype) == (B, N_H, H // N_H, torch.float32) and filled + chunk <= 5
    with torch.no_grad():
        if fits:
            assert m(x, cache=cache).shape == (B, chunk, H)
            assert cache.length == filled + chunk
            return
        with pytest.raises((ValueError, TypeError), match=r"^(cache|KVCache)"):
            m(x, cache=cache)
    assert cache.length == filled and int(cache.position) == filled
    assert torch.equal(cache.keys, keys)


def _functional_attention(q, k, v):
    from mha.functional import attention

    return attention(q, k, v)[0]


@pytest.mark.parametrize(
    ("name", "call", "good", "bad", "message"),
    [
        (
            "key's batch",
            lambda m, q, k: m(q, k, k),
            ((2, 3, 12), (2, 5, 12)),
            ((3, 3, 12), (2, 5, 12)),
            r"key must have shape \(b=3, s_kv, kdim=12\), got \(2, 5, 12\)",
        ),
        (
            "mask",
            lambda m, q, mask: m(q, mask=mask),
            ((2, 3, 12), (3, 3)),
            ((2, 5, 12), (4, 5)),
            r"mask must be broadcastable to \(b, n_h, s_q, s_kv\) = \(2, 3, 5, 5\), got shape \(4, 5\)",
        ),
        (
            "value",
            lambda m, q, k, v: _functional_attention(q, k, v),
            ((2, 3, 5, 4), (2, 3, 7, 4), (2, 3, 7, 4)),
            ((2, 3, 5, 4), (2, 3, 7, 4), (2, 3, 6, 4)),
            r"value must have shape \(b=2, n_kv=3, s_kv=7, d_v\), got \(2, 3, 6, 4\)",
        ),
    ],
    ids=["key batch", "mask", "value"],
)
def test_errors_under_compile_name_the_sizes(name, call, good, bad, message):
    """Dynamo formats a tuple of symbolic sizes by their symbols, `(s37, s25, 12)`;
    the messages print each size on its own, and so by its value."""
    from torch._dynamo.exc import Unsupported

    torch._dynamo.reset()
    m = MultiHeadAttention(H, N_H).eval()
    compiled = torch.compile(lambda *xs: call(m, *xs), backend="eager", fullgraph=True, dynamic=True)

    def tensors(shapes):
        return [torch.ones(s, dtype=torch.bool) if len(s) == 2 else torch.randn(s) for s in shapes]

    with torch.no_grad():
        compiled(*tensors(good))
        with pytest.raises(Unsupported, match=under_fullgraph(message)):
            compiled(*tensors(bad))


@pytest.mark.parametrize(
    "make",
    [
        lambda dtype: MultiHeadAttention(16, 4, dtype=dtype),
        lambda dtype: MultiHeadAttention(16, 4).new_cache(2, 8, dtype=dtype),
        lambda dtype: MultiHeadAttention(16, 4, sliding_window=3).new_cache(2, dtype=dtype),
        lambda dtype: KVCache(2, 8, num_kv_heads=2, head_dim=4, dtype=dtype),
    ],
)
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, "float32"])
def test_a_non_floating_dtype_is_refused_by_name(make, dtype):
    """Regression: dtype=torch.int64 gave torch's RuntimeError, and caches accepted integer dtypes."""
    with pytest.raises(TypeError, match=r"dtype must be a floating-point torch.dtype or None, got"):
        make(dtype)


# Attention's options in its signature's order, each with a value it refuses.
BAD_OPTIONS = [
    ("hidden_size", -1),
    ("num_heads", 0),
    ("num_kv_heads", 0),
    ("dropout", 1.5),
    ("scale", float("nan")),
    ("positional", "rotary"),
    ("backend", "flash"),
    ("head_dim", 0),
    ("v_head_dim", -2),
    ("qk_norm", 1),
    ("qk_norm_eps", 0.0),
    ("sinks", "yes"),
    ("softcap", -3.0),
    ("sliding_window", 0),
    ("alibi", None),
]


@pytest.mark.parametrize("first", range(len(BAD_OPTIONS)))
def test_constructor_names_the_first_bad_option_in_signature_order(first):
    # Attention(-1, 2, sliding_window=0) named sliding_window: the checks ran in another order.
    assert [name for name in inspect.signature(Attention).parameters][: len(BAD_OPTIONS)] == [
        name for name, _ in BAD_OPTIONS
    ]
    good = {"hidden_size": 12, "num_heads": 3}
    options = good | dict(BAD_OPTIONS[first:])
    with pytest.raises((ValueError, TypeError), match=rf"^{BAD_OPTIONS[first][0]} must"):
        Attention(**options)
