"""Attention and MultiHeadAttention against PyTorch and a float64 reference."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import (
    FLOAT32,
    FLOAT32_FEW_OPS,
    assert_close,
    merge,
    randomize_biases,
    reference_attention,
    split,
    under_fullgraph,
)
from mha import Attention, MultiHeadAttention, from_torch, functional, to_torch
from mha.masks import causal_mask, padding_mask

B, S_Q, S_KV, H, N_H = 2, 5, 7, 24, 3  # distinct sizes: a swapped axis cannot pass


def reference_module(m: MultiHeadAttention, query, key, value, allowed=None):
    """MultiHeadAttention in float64 through the loop reference."""
    f64 = {n: p.detach().double() for n, p in m.named_parameters()}
    lin = lambda x, name: torch.nn.functional.linear(  # noqa: E731
        x.double(), f64[f"{name}.weight"], f64.get(f"{name}.bias")
    )
    d = m.head_dim
    q, k, v = split(lin(query, "q_proj"), d), split(lin(key, "k_proj"), d), split(lin(value, "v_proj"), d)
    context, weights = reference_attention(q, k, v, allowed, scale=m.attention.scale)
    return lin(merge(context), "out_proj"), weights


# --- equivalence with torch.nn.MultiheadAttention ---------------------------


@st.composite
def torch_configs(draw):
    n_h = draw(st.sampled_from([1, 2, 3, 4]))
    d = draw(st.sampled_from([2, 3, 5, 8]))
    return {
        "b": draw(st.integers(1, 3)),
        "s_q": draw(st.integers(1, 6)),
        "s_kv": draw(st.integers(1, 6)),
        "n_h": n_h,
        "h": n_h * d,
        "kdim": draw(st.sampled_from([None, 3, 7])),
        "vdim": draw(st.sampled_from([None, 4, 9])),
        "bias": draw(st.booleans()),
        "batch_first": draw(st.booleans()),
        "cross": draw(st.booleans()),
        "mask": draw(st.sampled_from(["none", "bool", "float", "padding", "both", "causal"])),
        "need_weights": draw(st.booleans()),
    }


@settings(max_examples=60, deadline=None)
@given(cfg=torch_configs())
def test_matches_torch_multihead_attention(cfg):
    kdim = cfg["kdim"] or cfg["h"]
    vdim = cfg["vdim"] or cfg["h"]
    theirs = torch.nn.MultiheadAttention(
        cfg["h"], cfg["n_h"], bias=cfg["bias"], kdim=kdim, vdim=vdim, batch_first=True
    ).eval()
    randomize_biases(theirs)
    ours = from_torch(theirs)
    b, s_q = cfg["b"], cfg["s_q"]
    s_kv = cfg["s_kv"] if cfg["cross"] or kdim != cfg["h"] or vdim != cfg["h"] else s_q
    query = torch.randn(b, s_q, cfg["h"])
    key = query if s_kv == s_q and kdim == cfg["h"] else torch.randn(b, s_kv, kdim)
    value = torch.randn(b, s_kv, vdim)

    # PyTorch convention: True = blocked. Keep column 0 open so no row is empty.
    blocked = torch.rand(s_q, s_kv) < 0.4
    blocked[:, 0] = False
    lengths = torch.randint(1, s_kv + 1, (b,))
    pad = ~padding_mask(lengths, s_kv)[:, 0, 0]  # (b, s_kv), True = padding
    kwargs, ours_mask, is_causal = {}, None, False
    if cfg["mask"] == "bool":
        kwargs["attn_mask"], ours_mask = blocked, ~blocked
    elif cfg["mask"] == "float":
        additive = torch.randn(s_q, s_kv)
        kwargs["attn_mask"], ours_mask = additive, additive
    elif cfg["mask"] == "padding":
        kwargs["key_padding_mask"], ours_mask = pad, ~pad[:, None, None, :]
    elif cfg["mask"] == "both":
        kwargs["attn_mask"], kwargs["key_padding_mask"] = blocked, pad
        ours_mask = ~blocked & ~pad[:, None, None, :]
    elif cfg["mask"] == "causal" and s_q <= s_kv:
        # PyTorch's causal masks are top-left aligned; ours bottom-right.
        # They agree for s_q == s_kv; for s_q < s_kv compare against the explicit mask.
        allowed = causal_mask(s_q, s_kv)
        kwargs["attn_mask"], is_causal = ~allowed, True

    expected, expected_w = theirs(query, key, value, need_weights=True, average_attn_weights=False, **kwargs)
    out = ours(query, key, value, mask=ours_mask, is_causal=is_causal, need_weights=cfg["need_weights"])
    if cfg["need_weights"]:
        out, weights = out
        assert_close(weights, expected_w, FLOAT32)
    assert_close(out, expected, FLOAT32)


# --- an independent float64 reference ---------------------------------------


@pytest.mark.parametrize("backend", ["fused", "math"])
@pytest.mark.parametrize("num_kv_heads", [3, 1])
def test_matches_float64_reference(backend, num_kv_heads):
    m = MultiHeadAttention(H, N_H, num_kv_heads=num_kv_heads, kdim=11, vdim=13, backend=backend)
    m = m.double()
    query, key, value = torch.randn(B, S_Q, H), torch.randn(B, S_KV, 11), torch.randn(B, S_KV, 13)
    allowed = torch.rand(B, N_H, S_Q, S_KV) < 0.6
    allowed[0, 1, 2] = False  # one row with nothing to attend to
    out = m(query.double(), key.double(), value.double(), mask=allowed)
    expected, _ = reference_module(m, query, key, value, allowed)
    assert_close(out, expected)


def test_is_causal_is_bottom_right_aligned():
    m = MultiHeadAttention(H, N_H).double()
    query, key = torch.randn(B, S_Q, H).double(), torch.randn(B, S_KV, H).double()
    allowed = torch.zeros(B, N_H, S_Q, S_KV, dtype=torch.bool)
    for i in range(S_Q):  # the queries are the last S_Q positions
        allowed[..., i, : S_KV - S_Q + i + 1] = True
    expected, _ = reference_module(m, query, key, key, allowed)
    assert_close(m(query, key, is_causal=True), expected)


def test_causal_self_attention_has_no_gradient_from_the_future():
    m = MultiHeadAttention(H, N_H)
    x = torch.randn(1, S_KV, H, requires_grad=True)
    m(x, is_causal=True)[0, 3].sum().backward()
    grad_per_position = x.grad[0].abs().sum(-1)
    assert (grad_per_position[4:] == 0).all() and (grad_per_position[:4] > 0).all()


def test_gradcheck_float64():
    for backend in ("fused", "math"):
        m = MultiHeadAttention(6, 2, num_kv_heads=1, backend=backend).double()
        q = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
        kv = torch.randn(2, 4, 6, dtype=torch.float64, requires_grad=True)
        allowed = torch.tensor([[True, False, True, True]]).expand(3, 4)
        assert torch.autograd.gradcheck(lambda a, b, m=m, allowed=allowed: m(a, b, mask=allowed), (q, kv))


# --- fused path == math path ------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mask_kind", ["none", "causal", "bool", "float", "padding", "causal+padding", "empty-row"])
def test_fused_and_math_agree(dtype, mask_kind):
    n_kv = 1 if mask_kind == "padding" else N_H
    fused = MultiHeadAttention(H, N_H, num_kv_heads=n_kv, dtype=dtype)
    math = MultiHeadAttention(H, N_H, num_kv_heads=n_kv, dtype=dtype, backend="math")
    math.load_state_dict(fused.state_dict())
    s_kv = S_Q if mask_kind.startswith("causal") else S_KV
    query, key = torch.randn(B, S_Q, H, dtype=dtype), torch.randn(B, s_kv, H, dtype=dtype)
    pad = padding_mask(torch.tensor([s_kv, 2]), s_kv)
    mask = {
        "none": None,
        "causal": None,
        "bool": torch.rand(S_Q, s_kv) < 0.7,
        "float": torch.randn(B, 1, S_Q, s_kv, dtype=dtype),
        "padding": pad,
        "causal+padding": pad,
        "empty-row": torch.zeros(B, N_H, S_Q, s_kv, dtype=torch.bool)
        .index_fill_(-1, torch.tensor([1]), True)
        .index_fill_(2, torch.tensor([2]), False),
    }[mask_kind]
    causal = mask_kind.startswith("causal")
    a = fused(query, key, mask=mask, is_causal=causal)
    b = math(query, key, mask=mask, is_causal=causal)
    assert_close(a, b, dtype)
    if mask_kind != "float":  # additive values: see test_float_mask_values_are_added_to_scores
        expected, _ = reference_module(fused, query, key, key, _allowed(mask, causal, s_kv))
        assert_close(a, expected, dtype)


def _allowed(mask, causal, s_kv):
    if mask is None:
        allowed = torch.ones(S_Q, s_kv, dtype=torch.bool)
    else:
        allowed = mask if mask.dtype == torch.bool else ~torch.isneginf(mask)
    allowed = allowed.expand(B, N_H, S_Q, s_kv)
    if causal:
        allowed = allowed & causal_mask(S_Q, s_kv)
    return allowed


def test_float_mask_values_are_added_to_scores():
    m = MultiHeadAttention(H, N_H).double()
    query = torch.randn(B, S_Q, H).double()
    bias = torch.randn(B, N_H, S_Q, S_Q).double()
    out, weights = m(query, mask=bias, need_weights=True)
    q = split(m.q_proj(query), m.head_dim)
    k = split(m.k_proj(query), m.head_dim)
    expected_w = torch.softmax(q @ k.transpose(-1, -2) / m.head_dim**0.5 + bias, -1)
    assert_close(weights, expected_w)


# --- grouped-query attention ------------------------------------------------


@pytest.mark.parametrize("num_kv_heads", [1, 2])
def test_grouped_query_equals_mha_with_repeated_heads(num_kv_heads):
    gqa = MultiHeadAttention(32, 4, num_kv_heads=num_kv_heads)
    full = MultiHeadAttention(32, 4)
    group, d = 4 // num_kv_heads, 8
    with torch.no_grad():
        full.q_proj.load_state_dict(gqa.q_proj.state_dict())
        full.out_proj.load_state_dict(gqa.out_proj.state_dict())
        for src, dst in ((gqa.k_proj, full.k_proj), (gqa.v_proj, full.v_proj)):
            w = src.weight.unflatten(0, (num_kv_heads, d)).repeat_interleave(group, 0)
            dst.weight.copy_(w.flatten(0, 1))
            dst.bias.copy_(src.bias.unflatten(0, (num_kv_heads, d)).repeat_interleave(group, 0).flatten())
    x = torch.randn(B, S_Q, 32)
    assert gqa.k_proj.weight.shape == (num_kv_heads * d, 32)
    assert_close(gqa(x, is_causal=True), full(x, is_causal=True), FLOAT32_FEW_OPS)
    wa = gqa(x, need_weights=True)[1]
    wb = full(x, need_weights=True)[1]
    assert_close(wa, wb, FLOAT32_FEW_OPS)


@pytest.mark.parametrize("mask_shape", [None, (3, 1, 1, 9), (9,)])
@pytest.mark.parametrize("num_kv_heads", [1, 2])
def test_grouped_single_query_matches_the_reference(num_kv_heads, mask_shape):
    """One query per head (decoding) takes the folded path: the group's heads as one head's queries."""
    torch.manual_seed(0)
    q = torch.randn(3, 4, 1, 8)
    k, v = torch.randn(3, num_kv_heads, 9, 8), torch.randn(3, num_kv_heads, 9, 8)
    mask = None if mask_shape is None else torch.rand(mask_shape) > 0.4
    if mask is not None and mask.ndim == 4:
        mask[1] = False  # a sample that may attend to nothing: zero context
    context, _ = functional.attention(q, k, v, mask=mask)
    allowed = None if mask is None else mask.expand(3, 4, 1, 9)
    expected, _ = reference_attention(q, k, v, allowed)
    assert_close(context, expected.float())


# --- rows with nothing to attend to -----------------------------------------


@pytest.mark.parametrize("backend", ["fused", "math"])
@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.float32])
def test_fully_masked_rows_give_zero_context_and_weights_not_nan(backend, mask_dtype):
    attn = Attention(H, N_H, backend=backend)
    q = torch.randn(B, S_Q, H, requires_grad=True)
    kv = torch.randn(B, S_KV, H, requires_grad=True)
    allowed = torch.rand(B, 1, S_Q, S_KV) < 0.7
    allowed[:, :, 0] = True
    allowed[1, 0, 3] = False  # sequence 1, query 3: nothing to attend to
    mask = allowed if mask_dtype == torch.bool else torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))
    context = attn(q, kv, kv, mask=mask)
    assert (context[1, 3] == 0).all()
    if backend == "math":
        _, weights = attn(q, kv, kv, mask=mask, need_weights=True)
        assert (weights[1, :, 3] == 0).all()
        torch.testing.assert_close(weights.sum(-1)[0], torch.ones(N_H, S_Q))
    expected, _ = reference_attention(split(q, 8), split(kv, 8), split(kv, 8), allowed.expand(B, N_H, S_Q, S_KV))
    assert_close(context, merge(expected).float())
    context.sum().backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(kv.grad).all()
    assert (q.grad[1, 3] == 0).all()


def test_module_output_for_an_empty_row_is_the_output_bias():
    m = MultiHeadAttention(H, N_H)
    x = torch.randn(1, S_Q, H)
    torch_m = to_torch(m)
    blocked = torch.zeros(S_Q, S_Q, dtype=torch.bool)
    blocked[2] = True
    theirs, their_w = torch_m(x, x, x, attn_mask=blocked)
    assert theirs.isnan().any() and their_w.isnan().any()  # what PyTorch does
    out, weights = m(x, mask=~blocked, need_weights=True)
    torch.testing.assert_close(out[0, 2], m.out_proj.bias)
    assert not out.isnan().any() and not weights.isnan().any()
    torch.testing.assert_close(out[0, [0, 1, 3, 4]], theirs[0, [0, 1, 3, 4]])


# --- weights, dropout, dispatch --------------------------------------------


def test_default_returns_a_tensor_and_need_weights_a_pair():
    m = MultiHeadAttention(H, N_H).eval()
    x = torch.randn(B, S_Q, H)
    out = m(x)
    assert isinstance(out, torch.Tensor)
    out2, weights = m(x, need_weights=True)
    torch.testing.assert_close(out, out2)
    expected, expected_w = reference_module(m, x, x, x)
    assert_close(weights, expected_w.float())
    assert_close(out, expected.float())


def test_dropout_only_in_training_on_weights_only():
    m = MultiHeadAttention(H, N_H, dropout=0.5, backend="math")
    x = torch.randn(B, S_Q, H)
    m.eval()
    eval_out, eval_w = m(x, need_weights=True)
    torch.testing.assert_close(m(x), eval_out)  # eval is deterministic
    m.train()
    torch.manual_seed(1)
    train_out, train_w = m(x, need_weights=True)
    # Each weight is dropped (0) or scaled by 1 / (1 - p).
    kept = train_w != 0
    assert 0 < kept.float().mean() < 1
    torch.testing.assert_close(train_w[kept], 2 * eval_w[kept])
    # The output is exactly the projected (dropped weights @ values): no other dropout.
    v = split(m.v_proj(x), m.head_dim)
    torch.testing.assert_close(train_out, m.out_proj(merge(train_w @ v)))
    torch.manual_seed(1)
    torch.testing.assert_close(m(x, need_weights=True)[0], train_out)


def test_fused_dropout_is_active_in_training():
    m = MultiHeadAttention(H, N_H, dropout=0.5).train()
    x = torch.randn(B, S_Q, H)
    a, b = m(x), m(x)
    assert not torch.allclose(a, b)
    m.eval()
    torch.testing.assert_close(m(x), m(x))


def test_explain_names_the_path_and_why():
    m = MultiHeadAttention(H, N_H)
    assert m.explain().path == "fused"
    assert "scaled_dot_product_attention" in m.explain().reason
    d = m.explain(need_weights=True)
    assert d.path == "math" and "need_weights=True" in d.reason
    forced = MultiHeadAttention(H, N_H, backend="math").explain()
    assert forced.path == "math" and "requested" in forced.reason


def test_fused_path_really_calls_sdpa(monkeypatch):
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    m = MultiHeadAttention(H, N_H)
    x = torch.randn(B, S_Q, H)
    m(x, is_causal=True)
    assert len(calls) == 1 and calls[0]["is_causal"] and calls[0]["attn_mask"] is None
    m(x, need_weights=True)
    assert len(calls) == 1  # the math path does not call the kernel


# --- torch.compile ----------------------------------------------------------


def test_compiles_with_fullgraph_and_matches_eager():
    m = MultiHeadAttention(H, N_H, num_kv_heads=1).eval()
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    x = torch.randn(B, S_Q, H)
    mask = padding_mask(torch.tensor([5, 2]), S_Q)
    torch.testing.assert_close(compiled(x, mask=mask, is_causal=True), m(x, mask=mask, is_causal=True))
    out, w = compiled(x, need_weights=True)
    torch.testing.assert_close(w, m(x, need_weights=True)[1])


# --- the mask argument's name ----------------------------------------------


def test_attn_mask_keyword_fails_loudly():
    m = MultiHeadAttention(H, N_H)
    x = torch.randn(B, S_Q, H)
    with pytest.raises(TypeError, match="unexpected keyword argument 'attn_mask'"):
        m(x, attn_mask=torch.ones(S_Q, S_Q, dtype=torch.bool))


# --- errors -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"hidden_size": 30, "num_heads": 4}, ValueError, r"hidden_size=30 must be divisible by num_heads=4"),
        (
            {"hidden_size": 32, "num_heads": 4, "num_kv_heads": 3},
            ValueError,
            r"num_heads=4 must be divisible by num_kv_heads=3",
        ),
        ({"hidden_size": 32, "num_heads": 0}, ValueError, r"num_heads must be a positive int, got 0"),
        ({"hidden_size": 32, "num_heads": -2}, ValueError, r"num_heads must be a positive int, got -2"),
        ({"hidden_size": 32, "num_heads": 4.0}, TypeError, r"num_heads must be an int, got float"),
        ({"hidden_size": 32, "num_heads": 4, "dropout": 1.0}, ValueError, r"dropout must be in \[0, 1\), got 1.0"),
        ({"hidden_size": 32, "num_heads": 4, "dropout": -0.1}, ValueError, r"dropout must be in \[0, 1\), got -0.1"),
        (
            {"hidden_size": 32, "num_heads": 4, "backend": "flash"},
            ValueError,
            r"backend must be one of \['auto', 'fused', 'math'\], got 'flash'",
        ),
        ({"hidden_size": 32, "num_heads": 4, "kdim": 0}, ValueError, r"kdim must be a positive int, got 0"),
        ({"hidden_size": 32, "num_heads": 4, "bias": 1}, TypeError, r"bias must be a bool, got int"),
    ],
)
def test_constructor_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        MultiHeadAttention(**kwargs)


def _forward_error_cases():
    x = torch.randn(2, 5, 16)
    return [
        ((torch.randn(2, 5, 12),), {}, ValueError, r"query must have shape \(b, s_q, h=16\), got \(2, 5, 12\)"),
        ((torch.randn(5, 16),), {}, ValueError, r"query must have shape \(b, s_q, h=16\), got \(5, 16\)"),
        ((x, torch.randn(3, 7, 16)), {}, ValueError, r"key must have shape \(b=2, s_kv, kdim=16\), got \(3, 7, 16\)"),
        (
            (x, torch.randn(2, 7, 16), torch.randn(2, 6, 16)),
            {},
            ValueError,
            r"value must have shape \(b=2, s_kv=7, vdim=16\), got \(2, 6, 16\)",
        ),
        (([[1.0]],), {}, TypeError, r"query must be a torch.Tensor, got list"),
        (
            (x,),
            {"mask": torch.ones(4, 4, dtype=torch.bool)},
            ValueError,
            r"mask must be broadcastable to \(b, n_h, s_q, s_kv\) = \(2, 4, 5, 5\), got shape \(4, 4\)",
        ),
        (
            (x,),
            {"mask": torch.ones(2, 5, 5, 1, 1, dtype=torch.bool)},
            ValueError,
            r"mask must be broadcastable .* got shape \(2, 5, 5, 1, 1\)",
        ),
        (
            (x,),
            {"mask": torch.ones(5, 5, dtype=torch.int64)},
            TypeError,
            r"mask must be a bool tensor \(True = may attend\) or a float tensor .* got dtype torch.int64",
        ),
        ((x.long(),), {}, TypeError, r"query must be a floating-point tensor, got dtype torch.int64"),
    ]


@pytest.mark.parametrize(("args", "kwargs", "error", "match"), _forward_error_cases())
def test_forward_errors(args, kwargs, error, match):
    m = MultiHeadAttention(16, 4)
    with pytest.raises(error, match=match):
        m(*args, **kwargs)


def test_attention_errors_name_the_projected_widths():
    attn = Attention(16, 4, num_kv_heads=2)
    q = torch.randn(2, 5, 16)
    with pytest.raises(ValueError, match=r"key must have shape \(b=2, s_kv, n_kv \* d=8\), got \(2, 5, 16\)"):
        attn(q, q, q)
    with pytest.raises(ValueError, match=r"query must have shape \(b, s_q, h=16\), got \(2, 5, 12\)"):
        attn(torch.randn(2, 5, 12), q, q)
    with pytest.raises(ValueError, match=r"positional.head_dim must equal hidden_size / num_heads = 4, got 8"):
        from mha import RotaryEmbedding

        Attention(16, 4, positional=RotaryEmbedding(8))


def test_fused_backend_with_weights_is_an_error():
    m = MultiHeadAttention(16, 4, backend="fused")
    with pytest.raises(ValueError, match=r'backend="fused" cannot return attention weights; got need_weights=True'):
        m(torch.randn(1, 2, 16), need_weights=True)


# --- CUDA, where present ----------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_fused_and_math_match_the_cpu_reference(dtype):
    m = MultiHeadAttention(H, N_H, num_kv_heads=1)
    x = torch.randn(B, S_Q, H)
    allowed = torch.rand(B, 1, S_Q, S_Q) < 0.7
    allowed[:, :, 3] = False  # a row with nothing to attend to
    expected, _ = reference_module(m, x, x, x, allowed.expand(B, N_H, S_Q, S_Q))
    gpu = m.to("cuda", dtype)
    for backend in ("fused", "math"):
        gpu.attention.backend = backend
        out = gpu(x.to("cuda", dtype), mask=allowed.cuda())
        assert_close(out.cpu(), expected, dtype)


@pytest.mark.parametrize("backend", ["auto", "math"])
@pytest.mark.parametrize("shape", [(), (7,), (5, 7), (2, 1, 5, 7)], ids=["0d", "1d", "2d", "4d"])
def test_masks_of_every_rank_on_both_paths(backend, shape):
    """A 1-D (s_kv,) or 0-d mask broadcasts like any other; it crashed the fused path."""
    m = MultiHeadAttention(12, 3, backend=backend).eval()
    q, kv = torch.randn(2, 5, 12), torch.randn(2, 7, 12)
    mask = torch.rand(shape) > 0.3 if shape else torch.tensor(True)
    if shape == (7,):
        mask = torch.tensor([True, True, False, True, True, False, True])
    expected = m(q, kv, kv, mask=mask.expand(2, 3, 5, 7).clone(), need_weights=True)[0]
    assert_close(m(q, kv, kv, mask=mask), expected)


@pytest.mark.parametrize("flag", ["is_causal", "need_weights"])
@pytest.mark.parametrize("value", ["False", "no", 0, 1, None])
def test_flags_must_be_bools(flag, value):
    x = torch.randn(2, 3, 8)
    for module, args in ((MultiHeadAttention(8, 2), (x,)), (Attention(8, 2), (x, x, x))):
        with pytest.raises(TypeError, match=rf"{flag} must be a bool, got \w+ \({value!r}\)"):
            module(*args, **{flag: value})


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), -float("inf")])
def test_scale_must_be_finite(scale):
    with pytest.raises(ValueError, match=r"scale must be a finite number, got (nan|inf|-inf)"):
        MultiHeadAttention(8, 2, scale=scale)


def test_functional_attention_rejects_integer_masks():
    from mha.functional import attention

    q = torch.randn(1, 2, 3, 4)
    with pytest.raises(TypeError, match=r"mask must be a bool tensor .* got dtype torch.int64"):
        attention(q, q, q, mask=torch.ones(3, 3, dtype=torch.long))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fill", [torch.finfo(torch.float32).min, -1e5, -1e9])
def test_half_precision_with_a_large_finite_negative_mask_agrees_on_both_paths(dtype, fill):
    """A float32 mask of finite large negatives must not turn into -inf on one path only."""
    q, k, v = (torch.randn(2, 3, 5, 8, dtype=dtype) for _ in range(3))
    mask = torch.zeros(2, 1, 5, 7)[..., :5].clone()
    mask[:, :, 1] = fill  # row 1: every key blocked by a finite value
    mask[:, :, 3, :2] = fill  # row 3: two keys blocked
    from mha.functional import attention

    fused, _ = attention(q, k, v, mask=mask, backend="fused")
    math, _ = attention(q, k, v, mask=mask, backend="math")
    assert_close(fused, math, dtype)


def test_an_unsharded_attention_rejects_a_narrower_input():
    """Only mha.parallel.parallelize makes an Attention expect 1/t of the widths."""
    attn = Attention(64, 8)
    x = torch.randn(2, 3, 32)
    with pytest.raises(ValueError, match=r"query must have shape \(b, s_q, h=64\), got \(2, 3, 32\)"):
        attn(x, x, x)
    attn.shards = 2  # what parallelize records
    assert attn(x, x, x).shape == (2, 3, 32)
    assert "shards=2" in repr(attn)
    with pytest.raises(ValueError, match=r"query must have shape \(b, s_q, h=32\), got \(2, 3, 64\)"):
        attn(torch.randn(2, 3, 64), x, x)


@pytest.mark.parametrize("backend", ["auto", "math"])
def test_empty_sequences_give_empty_outputs_with_any_options(backend):
    m = MultiHeadAttention(12, 3, backend=backend)
    empty = torch.randn(2, 0, 12)
    plain = m(empty)
    assert plain.shape == (2, 0, 12)
    masked = m(empty, is_causal=True, mask=torch.ones(0, 0, dtype=torch.bool))
    assert masked.shape == (2, 0, 12)
    out, weights = m(torch.randn(2, 3, 12), empty, empty, need_weights=True)  # no keys at all
    assert_close(out, m.out_proj.bias.expand(2, 3, 12))  # zero context, as for a fully masked row
    assert weights.shape == (2, 3, 3, 0)


def test_inputs_that_do_not_match_the_parameters_are_named():
    m = MultiHeadAttention(16, 4)
    with pytest.raises(TypeError, match=r"query must have the parameters' dtype torch.float32, got torch.float64"):
        m(torch.randn(2, 3, 16, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"query must be on the device of the parameters \(cpu\), got meta"):
        m(torch.randn(2, 3, 16, device="meta"))
    with pytest.raises(ValueError, match=r"mask must be on the device of query \(cpu\), got meta"):
        m(torch.randn(2, 3, 16), mask=torch.ones(3, 3, dtype=torch.bool, device="meta"))
    with pytest.raises(TypeError, match=r"key must have the dtype of query \(torch.float32\), got torch.float16"):
        Attention(16, 4)(torch.randn(2, 3, 16), torch.randn(2, 3, 16).half(), torch.randn(2, 3, 16))
    x = torch.randn(2, 3, 16)
    with pytest.raises(TypeError, match=r"positional argument"):
        m(x, x, x, torch.ones(3, 3, dtype=torch.bool))  # mask is keyword-only
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast mixes dtypes on purpose
        assert m(x.double().float()).dtype == torch.bfloat16


def test_arguments_are_checked_once_per_call(monkeypatch):
    """One check per argument where the call enters; nothing re-checked inside."""
    from mha import _checks

    m = MultiHeadAttention(16, 4, backend="math")
    calls: dict[str, int] = {}
    for name in ("floating", "shape", "mask", "one_of", "flag", "same_dtype"):
        original = getattr(_checks, name)

        def counting(*args, _name=name, _original=original, **kwargs):
            calls[_name] = calls.get(_name, 0) + 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(_checks, name, counting)
    x = torch.randn(2, 3, 16)
    m(x, mask=torch.ones(3, 3, dtype=torch.bool), is_causal=True)
    assert calls == {"shape": 1, "floating": 1, "flag": 2, "mask": 1}  # self-attention: key, value are query


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"is_causal": True},
        {"mask": "pad"},
        {"num_kv_heads": 2},
        {"backend": "math", "is_causal": True},
    ],
    ids=["plain", "causal", "mask", "gqa", "math-causal"],
)
def test_dynamic_shapes_compile_without_recompiles(options):
    """12 (batch, length) shapes make at most 2 graphs: nothing on the success path reads a size
    into a string (which would pin it), and the bad-input checks stay in place."""
    from torch._dynamo.exc import Unsupported
    from torch._dynamo.testing import CompileCounter

    options = dict(options)
    build = {k: options.pop(k) for k in ("num_kv_heads", "backend") if k in options}
    m = MultiHeadAttention(32, 4, **build).eval()
    counter = CompileCounter()
    step = torch.compile(m, backend=counter, fullgraph=True, dynamic=True)
    torch._dynamo.reset()
    with torch.no_grad():
        for s in range(3, 15):
            x = torch.randn(1 + s % 3, s, 32)
            call = dict(options)
            if call.get("mask") == "pad":
                call["mask"] = padding_mask(torch.full((x.shape[0],), s - 1), s)
            assert_close(step(x, **call), m(x, **call), FLOAT32)
        # The checks are still there. (Under fullgraph=True Dynamo reports an
        # exception raised in the graph as Unsupported, its sizes symbolic;
        # without it, Dynamo falls back to eager and the error is ours.)
        with pytest.raises(Unsupported, match=under_fullgraph(r"query must have shape \(b, s_q, h=32\)")):
            step(torch.randn(2, 5, 31))
        with pytest.raises(ValueError, match=r"query must have shape \(b, s_q, h=32\), got \(2, 5, 31\)"):
            torch.compile(m, backend="eager", dynamic=True)(torch.randn(2, 5, 31))
    assert counter.frame_count <= 2, counter.frame_count


def test_the_core_does_not_import_the_layers_above_it():
    """Dependencies point one way: interop and parallel use the core, never the reverse."""
    import ast
    from pathlib import Path

    import mha

    package = Path(mha.__file__).parent
    for core in ("attention", "functional", "masks", "cache", "rotary", "_checks"):
        tree = ast.parse((package / f"{core}.py").read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not {"mha.interop", "mha.parallel"} & imported, f"mha/{core}.py imports {imported}"


def test_functional_attention_checks_the_head_shapes():
    from mha.functional import attention, attention_weights

    q, k = torch.randn(2, 4, 3, 8), torch.randn(2, 2, 5, 8)
    with pytest.raises(ValueError, match=r"query must have shape \(b, n_h, s_q, d\), got \(4, 3, 8\)"):
        attention(q[0], k, k)
    with pytest.raises(ValueError, match=r"key must have shape \(b=2, n_kv, s_kv, d=8\), got \(2, 2, 5, 7\)"):
        attention(q, torch.randn(2, 2, 5, 7), k)
    with pytest.raises(ValueError, match=r"query's heads n_h=4 must be a multiple of key's heads n_kv=3"):
        attention_weights(q, torch.randn(2, 3, 5, 8))
    with pytest.raises(ValueError, match=r"value must have shape \(b=2, n_kv=2, s_kv=5, d_v\), got \(2, 2, 6, 8\)"):
        attention(q, k, torch.randn(2, 2, 6, 8))
    with pytest.raises(
        ValueError, match=r"mask must be broadcastable to \(b, n_h, s_q, s_kv\) = \(2, 4, 3, 5\), got shape \(3, 4\)"
    ):
        attention(q, k, k, mask=torch.ones(3, 4, dtype=torch.bool))


def test_forward_docstring_says_a_cached_chunk_attends_causally():
    for forward in (Attention.forward, MultiHeadAttention.forward):
        assert "always attends causally" in " ".join((forward.__doc__ or "").split())
