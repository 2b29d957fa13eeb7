"""Every path gives the float64 reference's answer on every valid input.

Hypothesis draws combinations of the options (masks of each rank and dtype,
causal with s_q <= s_kv, MHA/GQA/MQA, one query and many, scale 0 and
extremes, empty sequences, half types, inf/NaN keys and values at positions
no query may see) and runs them through `mha.functional.attention` on the
fused and the math path (with a sink logit and soft-capping too),
`attention_weights`, and the KV cache (prefill, then
one token at a time, against the full causal pass). A few fixed inputs run
under `torch.compile(fullgraph=True)`. Every input that ever failed is a
`test_regression_*` below, with its numbers.

The reference is written here, in float64 loops, without `mha`.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import FLOAT32_FEW_OPS, assert_close, prefill_then_decode
from mha import MultiHeadAttention
from mha.functional import attention, attention_weights

SETTINGS = settings(max_examples=70, deadline=None, derandomize=True)
INF = float("inf")


def reference(q, k, v, allowed, additive, scale, sinks=None, softcap=None):
    """Context and weights in float64, one query row at a time.

    `allowed` (b, n_h, s_q, s_kv) bool; `additive` the same shape in float64 or
    None; only allowed keys enter a row, so nothing else can matter. A row
    with no allowed key gets zero weights and a zero context. `softcap` maps
    each score to `c tanh(s / c)` before the mask is added; `sinks` `(n_h,)`
    joins each row's softmax as one more logit with no value.
    """
    q, k, v = q.double(), k.double(), v.double()
    b, n_h, s_q, d = q.shape
    n_kv, s_kv = k.shape[1], k.shape[2]
    scale = 1 / math.sqrt(d) if scale is None else scale
    context = torch.zeros(b, n_h, s_q, v.shape[-1], dtype=torch.float64)
    weights = torch.zeros(b, n_h, s_q, s_kv, dtype=torch.float64)
    for i in range(b):
        for h in range(n_h):
            g = h // (n_h // n_kv)
            for r in range(s_q):
                cols = [j for j in range(s_kv) if allowed[i, h, r, j]]
                if not cols:
                    continue
                scores = torch.stack([(q[i, h, r] * k[i, g, j]).sum() * scale for j in cols])
                if softcap is not None:
                    scores = softcap * torch.tanh(scores / softcap)
                if additive is not None:
                    scores = scores + additive[i, h, r, cols]
                if sinks is None:
                    w = torch.softmax(scores, dim=0)
                else:
                    w = torch.softmax(torch.cat([scores, sinks[h : h + 1].double()]), dim=0)[:-1]
                weights[i, h, r, cols] = w
                context[i, h, r] = (w[:, None] * v[i, g, cols]).sum(0)
    return context, weights


def causal_allowed(s_q, s_kv):
    """Bottom-right aligned: query i sees key j when j <= i + s_kv - s_q."""
    rows = [[j <= i + s_kv - s_q for j in range(s_kv)] for i in range(s_q)]
    return torch.tensor(rows, dtype=torch.bool).reshape(s_q, s_kv)


@st.composite
def cases(draw):
    dtype = draw(st.sampled_from([torch.float32, torch.float32, torch.float16, torch.bfloat16]))
    b, n_kv, group, d = (
        draw(st.integers(1, 2)),
        draw(st.integers(1, 2)),
        draw(st.integers(1, 3)),
        draw(st.integers(1, 4)),
    )
    n_h = n_kv * group
    is_causal = draw(st.booleans())
    s_kv = draw(st.integers(0, 6))
    s_q = draw(st.sampled_from([1, 1, 0, 2, 3, 5]))
    if is_causal:
        s_q = min(s_q, s_kv)
    scale = draw(st.sampled_from([None, None, 0.0, -0.0, 0.3, -0.7, 1e-30, 1e-45, 1e30, -1e30]))
    mask_kind = draw(st.sampled_from([None, "bool", "float"]))
    rank = draw(st.integers(1, 4))
    full = (b, n_h, s_q, s_kv)[4 - rank :]
    shape = tuple(draw(st.sampled_from([n, 1])) if i < rank - 1 else n for i, n in enumerate(full))
    return {
        "dtype": dtype,
        "b": b,
        "n_kv": n_kv,
        "n_h": n_h,
        "d": d,
        "s_q": s_q,
        "s_kv": s_kv,
        "is_causal": is_causal,
        "scale": scale,
        "mask_kind": mask_kind,
        "mask_shape": shape,
        "blocked_row": draw(st.booleans()),
        "nonfinite": draw(st.sampled_from([None, INF, -INF, float("nan")])),
        "mask_dtype": draw(st.sampled_from(["query", "float32"])),
        "seed": draw(st.integers(0, 2**16)),
    }


def build(case):
    """Inputs, the mask to pass and the reference's view of it."""
    g = torch.Generator().manual_seed(case["seed"])
    dtype, b, n_kv, n_h, d, s_q, s_kv = (case[k] for k in ("dtype", "b", "n_kv", "n_h", "d", "s_q", "s_kv"))

    def grid(*shape):
        # Multiples of 1/2 in [-2, 2]: exact in every dtype, so a huge scale gives
        # well-separated (or exactly tied) scores in float32 and float64 alike.
        return (torch.randint(-4, 5, shape, generator=g) / 2).to(dtype)

    q, k, v = grid(b, n_h, s_q, d), grid(b, n_kv, s_kv, d), grid(b, n_kv, s_kv, d)
    mask, allowed, additive = None, torch.ones(b, n_h, s_q, s_kv, dtype=torch.bool), None
    if case["mask_kind"] is not None:
        shape = case["mask_shape"]
        open_ = torch.rand(shape, generator=g) > 0.35
        if case["blocked_row"] and s_q and len(shape) >= 2:
            open_[..., 0, :] = False  # a query with nothing to attend to
        if case["mask_kind"] == "bool":
            mask = open_
        else:
            mask_dtype = dtype if case["mask_dtype"] == "query" else torch.float32
            finite = torch.randint(-3, 1, shape, generator=g) / 2  # 0, -0.5, ... -1.5: added to the scores
            mask = torch.where(open_, finite, -INF).to(mask_dtype)
            additive = torch.where(open_, finite.to(mask_dtype).double(), 0.0).expand(b, n_h, s_q, s_kv)
        allowed = allowed & open_.expand(b, n_h, s_q, s_kv)
    if case["is_causal"]:
        allowed = allowed & causal_allowed(s_q, s_kv)
    if case["nonfinite"] is not None and mask is not None:
        # Positions no query of a key/value head's group may see: anything may be there.
        seen = allowed.reshape(b, n_kv, n_h // n_kv, s_q, s_kv).any(dim=(2, 3))  # (b, n_kv, s_kv)
        k = k.masked_fill(~seen[..., None], case["nonfinite"])
        v = v.masked_fill(~seen[..., None], -case["nonfinite"])
    return q, k, v, mask, allowed, additive


@SETTINGS
@given(case=cases())
def test_fused_math_and_weights_agree_with_the_reference(case):
    q, k, v, mask, allowed, additive = build(case)
    options = {"mask": mask, "is_causal": case["is_causal"], "scale": case["scale"]}
    expected, expected_weights = reference(q, k, v, allowed, additive, case["scale"])
    fused, _ = attention(q, k, v, backend="fused", **options)
    math_, weights = attention(q, k, v, need_weights=True, **options)
    assert_close(fused, expected, case["dtype"])
    assert_close(math_, expected, case["dtype"])
    assert_close(weights, expected_weights, case["dtype"])
    assert_close(attention_weights(q, k, **options), expected_weights, case["dtype"])


@settings(max_examples=40, deadline=None, derandomize=True)
@given(case=cases(), sinks=st.booleans(), softcap=st.sampled_from([None, 0.7, 3.0]))
def test_sinks_and_softcap_agree_with_the_reference(case, sinks, softcap):
    # Inf/NaN at blocked positions too: the fused rescale and the chunked math path keep the guard.
    q, k, v, mask, allowed, additive = build(case)
    g = torch.Generator().manual_seed(case["seed"] + 1)
    sink = (torch.randint(-4, 5, (case["n_h"],), generator=g) / 2).to(case["dtype"]) if sinks else None
    options = {"mask": mask, "is_causal": case["is_causal"], "scale": case["scale"], "sinks": sink, "softcap": softcap}
    expected, expected_weights = reference(q, k, v, allowed, additive, case["scale"], sink, softcap)
    fused, _ = attention(q, k, v, **options)  # fused with a sink alone; soft-capping runs in query chunks
    math_, weights = attention(q, k, v, need_weights=True, **options)
    assert_close(fused, expected, case["dtype"])
    assert_close(math_, expected, case["dtype"])
    assert_close(weights, expected_weights, case["dtype"])


@st.composite
def cached_runs(draw):
    return {
        "n_kv": draw(st.integers(1, 2)),
        "group": draw(st.integers(1, 3)),
        "d": draw(st.sampled_from([2, 3])),
        "b": draw(st.integers(1, 2)),
        "prefill": draw(st.integers(1, 4)),
        "steps": draw(st.integers(0, 3)),
        "scale": draw(st.sampled_from([None, 0.0, -0.5, 1e-30])),
        "pad": draw(st.integers(0, 2)),
        "dtype": draw(st.sampled_from([torch.float32, torch.float32, torch.bfloat16])),
        "seed": draw(st.integers(0, 2**16)),
    }


@settings(max_examples=25, deadline=None, derandomize=True)
@given(run=cached_runs())
def test_prefill_then_steps_equal_the_full_causal_pass(run):
    """Through a cache, with `pad` left-padding tokens (NaN inputs) in the last sample's prompt."""
    torch.manual_seed(run["seed"])
    n_h = run["n_kv"] * run["group"]
    h, b, dtype = n_h * run["d"], run["b"], run["dtype"]
    m = MultiHeadAttention(h, n_h, num_kv_heads=run["n_kv"], scale=run["scale"], dtype=dtype).eval()
    total = run["prefill"] + run["steps"]
    x = torch.randn(b, total, h).to(dtype)
    real = torch.ones(b, total, dtype=torch.bool)
    pad = min(run["pad"], run["prefill"] - 1)
    real[-1, :pad] = False
    x[-1, :pad] = float("nan")
    cache = m.new_cache(b, total)
    token_mask = real[:, : run["prefill"]] if pad else None
    with torch.no_grad():
        cached = prefill_then_decode(m, x, run["prefill"], cache, token_mask=token_mask)
        full = m(x, mask=causal_allowed(total, total) & real[:, None, None, :])
    assert_close(cached[real], full[real].double(), dtype)
    assert not full[real].isnan().any()


# Fixed inputs under torch.compile (the fused path, where the three failed; the math path
# compiles in tests/package/test_attention.py): the three, and the module's grouped one-query call.
COMPILED = {
    "gqa one query causal": (lambda: (torch.randn(1, 2, 1, 4), torch.randn(1, 1, 2, 4)), {"is_causal": True}),
    "scale 0 causal": (lambda: (torch.tensor([1.0, 2.0]).view(1, 1, 2, 1),) * 2, {"is_causal": True, "scale": 0.0}),
    "inf key masked": (
        lambda: (torch.ones(1, 1, 2, 1), torch.tensor([1.0, INF]).view(1, 1, 2, 1)),
        {"mask": torch.tensor([True, False])},
    ),
}


@pytest.mark.parametrize("name", list(COMPILED))
def test_compiled_fused_path_agrees_with_the_reference(name, backend="fused"):
    torch._dynamo.reset()  # a fresh cache: the same lambda, other closures
    torch.manual_seed(0)
    make, options = COMPILED[name]
    q, k = make()
    v = torch.randn(k.shape)
    compiled = torch.compile(
        lambda q, k, v: attention(q, k, v, backend=backend, **options)[0], backend="eager", fullgraph=True
    )
    s_q, s_kv = q.shape[2], k.shape[2]
    allowed = torch.ones(1, q.shape[1], s_q, s_kv, dtype=torch.bool)
    if options.get("is_causal"):
        allowed &= causal_allowed(s_q, s_kv)
    if "mask" in options:
        allowed &= options["mask"]
    expected, _ = reference(q, k, v, allowed, None, options.get("scale"))
    assert_close(compiled(q, k, v), expected, torch.float32)


def test_compiled_grouped_one_query_causal_module_equals_the_last_row():
    m = MultiHeadAttention(4, 2, num_kv_heads=1).eval()
    x = torch.randn(1, 3, 4)
    compiled = torch.compile(lambda x: m(x[:, -1:], x, x, is_causal=True), backend="eager", fullgraph=True)
    with torch.no_grad():
        assert_close(compiled(x), m(x, is_causal=True)[:, -1:], FLOAT32_FEW_OPS)


# Regressions: inputs that failed, with the numbers they gave.


def test_regression_gqa_one_query_causal_without_mask():
    """Was `IndexError: tuple index out of range` on the fused path: the causal mask stayed 2-D."""
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 2, 1, 4), torch.randn(1, 1, 2, 4), torch.randn(1, 1, 2, 4)
    expected, _ = reference(q, k, v, torch.ones(1, 2, 1, 2, dtype=torch.bool), None, None)
    for backend in ("fused", "math"):
        assert_close(attention(q, k, v, is_causal=True, backend=backend)[0], expected, torch.float32)
    m = MultiHeadAttention(4, 2, num_kv_heads=1).eval()
    x = torch.randn(1, 3, 4)
    with torch.no_grad():
        torch.testing.assert_close(m(x[:, -1:], x, x, is_causal=True), m(x, is_causal=True)[:, -1:])


def test_regression_scale_zero_causal():
    """Was [nan, 2.0] on the fused path (the kernel's causal flag: -inf * 0); now [1.0, 2.0]."""
    q = torch.tensor([1.0, 2.0]).view(1, 1, 2, 1)
    v = torch.tensor([1.0, 3.0]).view(1, 1, 2, 1)
    for backend in ("fused", "math"):
        context, _ = attention(q, q, v, is_causal=True, scale=0.0, backend=backend)
        assert context.flatten().tolist() == [1.0, 2.0]


def test_regression_negative_scale_causal():
    """Was nan on the fused path (the kernel's causal -inf times a negative scale)."""
    q = torch.tensor([1.0, 2.0, -1.0]).view(1, 1, 3, 1)
    v = torch.tensor([1.0, 3.0, 5.0]).view(1, 1, 3, 1)
    expected, _ = reference(q, q, v, causal_allowed(3, 3).expand(1, 1, 3, 3), None, -0.5)
    for backend in ("fused", "math"):
        assert_close(attention(q, q, v, is_causal=True, scale=-0.5, backend=backend)[0], expected, torch.float32)


def test_regression_scale_zero_through_the_module_and_its_cache():
    """`MultiHeadAttention(..., scale=0.0)`: the causal pass and a cache prefill were NaN in row 0."""
    torch.manual_seed(0)
    m = MultiHeadAttention(6, 2, scale=0.0).eval()
    x = torch.randn(1, 4, 6)
    expected = m(x, mask=causal_allowed(4, 4))  # an explicit mask never took the kernel's causal flag
    with torch.no_grad():
        cache = m.new_cache(1, 4)
        prefill = m(x[:, :3], cache=cache)
        step = m(x[:, 3:], cache=cache)
        torch.testing.assert_close(m(x, is_causal=True), expected)
        torch.testing.assert_close(torch.cat([prefill, step], 1), expected)


def test_regression_inf_key_at_a_masked_position():
    """Was [nan, nan] on the fused path; the math path gave [1.0, 1.0]."""
    q, v = torch.ones(1, 1, 2, 1), torch.ones(1, 1, 2, 1)
    k = torch.tensor([1.0, INF]).view(1, 1, 2, 1)
    mask = torch.tensor([True, False])
    for backend in ("fused", "math"):
        assert attention(q, k, v, mask=mask, backend=backend)[0].flatten().tolist() == [1.0, 1.0]


def test_regression_inf_value_at_a_masked_position_and_a_float_mask():
    """0 * inf was NaN on both paths; an inf key plus a float mask's -inf was NaN on the math path too."""
    q = torch.ones(1, 1, 2, 1)
    k = torch.tensor([1.0, INF]).view(1, 1, 2, 1)
    v = torch.tensor([2.0, INF]).view(1, 1, 2, 1)
    for mask in (torch.tensor([True, False]), torch.tensor([0.0, -INF])):
        for backend in ("fused", "math"):
            assert attention(q, k, v, mask=mask, backend=backend)[0].flatten().tolist() == [2.0, 2.0]
