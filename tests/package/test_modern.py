"""Options of today's layers: head_dim, v_head_dim, qk_norm, sinks, softcap.

Each is checked against `reference`, a float64 loop written here (not with
mha), on the fused and the math path, through the KV cache, compiled and
exported; and in combination.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from helpers import EXACT, FLOAT32, FLOAT64, assert_close, prefill_then_decode
from mha import Attention, KVCache, MultiHeadAttention, RotaryEmbedding, _chunked
from mha.functional import attention


def reference(q, k, v, *, scale, allowed=None, sinks=None, softcap=None):
    """Attention per batch, head and query row in float64.

    q `(b, n_h, s_q, d)`, k `(b, n_kv, s_kv, d)`, v `(b, n_kv, s_kv, d_v)`;
    `allowed` a bool `(s_q, s_kv)`; `sinks` `(n_h,)`. Returns context and weights.
    """
    q, k, v = q.double(), k.double(), v.double()
    b, n_h, s_q, _ = q.shape
    n_kv, s_kv, d_v = k.shape[1], k.shape[2], v.shape[-1]
    context = torch.zeros(b, n_h, s_q, d_v, dtype=torch.float64)
    weights = torch.zeros(b, n_h, s_q, s_kv, dtype=torch.float64)
    for i in range(b):
        for h in range(n_h):
            kv = h // (n_h // n_kv)
            for r in range(s_q):
                keys = [j for j in range(s_kv) if allowed is None or bool(allowed[r, j])]
                if not keys:
                    continue
                scores = {}
                for j in keys:
                    s = float(q[i, h, r] @ k[i, kv, j]) * scale
                    scores[j] = softcap * math.tanh(s / softcap) if softcap else s
                logits = list(scores.values()) + ([float(sinks[h])] if sinks is not None else [])
                top = max(logits)
                total = sum(math.exp(x - top) for x in logits)
                for j, s in scores.items():
                    weights[i, h, r, j] = math.exp(s - top) / total
                context[i, h, r] = weights[i, h, r] @ v[i, kv]
    return context, weights


def rms(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rotate(x, positions, base=10000.0):
    """Interleaved-pair rotary positions (RoFormer), written out."""
    d = x.shape[-1]
    theta = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    angle = positions.double()[:, None] * theta  # (s, d/2)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * angle.cos() - x2 * angle.sin()
    out[..., 1::2] = x1 * angle.sin() + x2 * angle.cos()
    return out


def module_reference(m: MultiHeadAttention, x, *, causal=True):
    """The whole layer in float64 from its parameters: projections, heads, norm, rotary, attention, output."""
    a = m.attention
    p = {name: t.detach().double() for name, t in m.named_parameters()}
    b, s, _ = x.shape
    x = x.double()

    def heads(name, width):
        y = F.linear(x, p[f"{name}.weight"], p.get(f"{name}.bias"))
        return y.view(b, s, -1, width).transpose(1, 2)

    q, k, v = heads("q_proj", a.head_dim), heads("k_proj", a.head_dim), heads("v_proj", a.v_head_dim)
    if a.q_norm is not None:
        q = rms(q, p["attention.q_norm.weight"], a.qk_norm_eps)
        k = rms(k, p["attention.k_norm.weight"], a.qk_norm_eps)
    if a.positional is not None:
        q, k = rotate(q, torch.arange(s)), rotate(k, torch.arange(s))
    allowed = torch.ones(s, s, dtype=torch.bool).tril() if causal else None
    scale = a.head_dim**-0.5 if a.scale is None else a.scale
    sinks = p.get("attention.sinks")
    context, _ = reference(q, k, v, scale=scale, allowed=allowed, sinks=sinks, softcap=a.softcap)
    return F.linear(context.transpose(1, 2).flatten(2), p["out_proj.weight"], p.get("out_proj.bias"))


def randomize(m):
    """Non-trivial norm weights and sinks (their initial values are 1 and 0)."""
    with torch.no_grad():
        for name, t in m.named_parameters():
            if name.endswith(("norm.weight", "sinks")):
                t.copy_(torch.randn_like(t))
    return m


def _qkv(dtype=torch.float64, n_h=6, n_kv=2, s_q=5, s_kv=7, d=4, d_v=3):
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(2, n_h, s_q, d, generator=g, dtype=dtype),
        torch.randn(2, n_kv, s_kv, d, generator=g, dtype=dtype),
        torch.randn(2, n_kv, s_kv, d_v, generator=g, dtype=dtype),
    )


# --- functional ---------------------------------------------------------------


@pytest.mark.parametrize("backend", ["fused", "math"])
@pytest.mark.parametrize("masking", ["none", "causal", "bool", "blocked-row"])
def test_sinks_match_the_reference_on_both_paths(backend, masking):
    q, k, v = _qkv()
    sinks = torch.tensor([-1.0, 0.0, 0.5, 1.0, 2.0, 3.0], dtype=torch.float64)
    allowed = {
        "none": None,
        "causal": torch.ones(5, 7, dtype=torch.bool).tril(2),
        "bool": torch.rand(5, 7, generator=torch.Generator().manual_seed(1)) > 0.4,
        "blocked-row": torch.ones(5, 7, dtype=torch.bool).index_fill(0, torch.tensor([3]), False),
    }[masking]
    kwargs = {"is_causal": True} if masking == "causal" else {"mask": allowed}
    context, _ = attention(q, k, v, sinks=sinks, backend=backend, **kwargs)
    expected, weights = reference(q, k, v, scale=0.5, allowed=allowed, sinks=sinks)
    assert_close(context, expected, FLOAT64)
    if backend == "math":
        _, got = attention(q, k, v, sinks=sinks, need_weights=True, **kwargs)
        assert_close(got, weights, FLOAT64)
        assert bool((got.sum(-1) < 1).all())


@pytest.mark.parametrize(
    ("b", "mask_shape"),
    [(1, (1, 6, 5, 7)), (2, (2, 1, 5, 7)), (2, (2, 6, 5, 7)), (1, (5, 7)), (2, (1, 1, 5, 7))],
)
@pytest.mark.parametrize("d_v", [4, 3])
def test_fused_sinks_with_grouped_heads_and_masks_of_every_shape(b, mask_shape, d_v):
    # The fused sink path reads shared key/value heads as stride-0 views where
    # the mask allows it (one mask for all, or one batch entry) and repeats
    # them otherwise: both must give the reference's answer.
    q, k, v = (t[:b] for t in _qkv(d_v=d_v))
    sinks = torch.tensor([-1.0, 0.0, 0.5, 1.0, 2.0, 3.0], dtype=torch.float64)
    allowed = torch.rand(mask_shape, generator=torch.Generator().manual_seed(2)) > 0.3
    full = allowed.expand(b, 6, 5, 7)
    context, _ = attention(q, k, v, mask=allowed, sinks=sinks, backend="fused")
    expected = torch.cat(
        [
            torch.cat(
                [
                    reference(
                        q[i : i + 1, h : h + 1],
                        k[i : i + 1, h // 3 : h // 3 + 1],
                        v[i : i + 1, h // 3 : h // 3 + 1],
                        scale=0.5,
                        allowed=full[i, h],
                        sinks=sinks[h : h + 1],
                    )[0]
                    for h in range(6)
                ],
                dim=1,
            )
            for i in range(b)
        ]
    )
    assert_close(context, expected, FLOAT64)


@pytest.mark.parametrize("masking", ["none", "causal", "float"])
def test_softcap_matches_the_reference_in_chunks(masking, monkeypatch):
    monkeypatch.setattr(_chunked, "SCORE_BUDGET", 2 * 6 * 7 * 8 * 2)  # two query rows per chunk
    q, k, v = _qkv()
    q = q * 4  # scores large enough for the cap to matter
    allowed = torch.ones(5, 7, dtype=torch.bool).tril(2) if masking == "causal" else None
    kwargs: dict[str, object] = {"is_causal": True} if masking == "causal" else {}
    if masking == "float":
        additive = torch.zeros(5, 7, dtype=torch.float64).masked_fill(torch.eye(5, 7, dtype=torch.bool), float("-inf"))
        kwargs["mask"], allowed = additive, ~torch.eye(5, 7, dtype=torch.bool)
    context, weights = attention(q, k, v, softcap=1.5, need_weights=True, **kwargs)
    expected, expected_weights = reference(q, k, v, scale=0.5, allowed=allowed, softcap=1.5)
    assert_close(context, expected, FLOAT64)
    assert_close(weights, expected_weights, FLOAT64)
    fused, _ = attention(q, k, v, softcap=1.5, **kwargs)
    assert_close(fused, expected, FLOAT64)


@pytest.mark.parametrize("need_weights", [False, True])
def test_softcap_keeps_the_weights_only_when_asked(need_weights, monkeypatch):
    # Soft-capping always runs on the chunked math path; without need_weights it
    # must not keep every chunk's weights, (b, n_h, s_q, s_kv) in all (it did).
    kept = []
    attend = _chunked.attend

    def spy(*args, **kwargs):
        kept.append(kwargs["need_weights"])
        return attend(*args, **kwargs)

    monkeypatch.setattr(_chunked, "attend", spy)
    q, k, v = _qkv()
    context, weights = attention(q, k, v, softcap=1.5, is_causal=True, need_weights=need_weights)
    expected, expected_weights = reference(
        q, k, v, scale=0.5, allowed=torch.ones(5, 7, dtype=torch.bool).tril(2), softcap=1.5
    )
    assert_close(context, expected, FLOAT64)
    assert kept == [need_weights]
    if need_weights:
        assert_close(weights, expected_weights, FLOAT64)
    else:
        assert weights is None


def test_softcap_chunks_bound_the_scores():
    assert _chunked.chunk_rows(1, 16, 4096, 4096, torch.float32) == 256
    assert _chunked.chunk_rows(1, 16, 4096, 4096, torch.bfloat16) == 256  # scores in float32
    assert _chunked.chunk_rows(1, 1, 3, 5, torch.float32) == 3


@pytest.mark.parametrize("backend", ["fused", "math"])
def test_gradients_of_sinks_and_inputs(backend):
    q, k, v = (t[:1].requires_grad_() for t in _qkv(n_h=4, s_q=3, s_kv=5, d=3, d_v=2))
    sinks = torch.tensor([0.3, -0.2, 1.0, 0.0], dtype=torch.float64, requires_grad=True)
    mask = torch.ones(3, 5, dtype=torch.bool).tril(1)  # bottom-right causal is tril(2): this one differs

    def f(q, k, v, sinks):
        return attention(q, k, v, sinks=sinks, mask=mask, backend=backend)[0]

    assert torch.autograd.gradcheck(f, (q, k, v, sinks))
    if backend == "fused":  # the kernel's own causal flag, and grouped heads folded without a mask
        square = [t[:, :, :3] for t in (q, k, v)]
        causal = lambda q, k, v, s: attention(q, k, v, sinks=s, is_causal=True)[0]  # noqa: E731
        assert torch.autograd.gradcheck(causal, (*(t.detach().requires_grad_() for t in square), sinks))
        assert torch.autograd.gradcheck(lambda q, k, v, s: attention(q, k, v, sinks=s)[0], (q, k, v, sinks))


def test_gradients_with_softcap():
    q, k, v = (t[:1].requires_grad_() for t in _qkv(n_h=4, s_q=3, s_kv=5, d=3, d_v=2))
    sinks = torch.tensor([0.3, -0.2, 1.0, 0.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda q, k, v, s: attention(q, k, v, sinks=s, softcap=0.7, is_causal=True)[0], (q, k, v, sinks)
    )


def test_functional_options_are_checked():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"sinks must have shape \(n_h=6,\), got \(4,\)"):
        attention(q, k, v, sinks=torch.zeros(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="softcap must be a number > 0, got -1.0"):
        attention(q, k, v, softcap=-1.0)
    with pytest.raises(TypeError, match="softcap must be a float"):
        attention(q, k, v, softcap="50")
    with pytest.raises(ValueError, match='backend="fused" cannot run this call: softcap=2.0'):
        attention(q, k, v, softcap=2.0, backend="fused")


# --- modules ------------------------------------------------------------------


def _layer(**options):
    torch.manual_seed(0)
    defaults = {"num_kv_heads": 2, "head_dim": 6, "v_head_dim": 5, "bias": True}
    defaults.update(options)
    if defaults.get("positional"):
        defaults["positional"] = RotaryEmbedding(6)  # a fresh one: its angle tables are per module
    return randomize(MultiHeadAttention(14, 4, **defaults)).double().eval()


COMBOS = {
    "head_dim": {},
    "qk_norm": {"qk_norm": True},
    "sinks": {"sinks": True},
    "softcap": {"softcap": 2.0},
    "all+rotary": {"qk_norm": True, "sinks": True, "softcap": 2.0, "positional": True},
}


@pytest.mark.parametrize("backend", ["auto", "math"])
@pytest.mark.parametrize("combo", COMBOS)
def test_layers_match_the_reference(combo, backend):
    m = _layer(backend=backend, **COMBOS[combo])
    x = torch.randn(3, 7, 14, dtype=torch.float64) * 3
    assert_close(m(x, is_causal=True), module_reference(m, x), FLOAT64)


@pytest.mark.parametrize("combo", COMBOS)
def test_cached_decoding_matches_the_full_pass(combo):
    m = _layer(**COMBOS[combo])
    x = torch.randn(2, 7, 14, dtype=torch.float64)
    cache = m.new_cache(2, 9)
    assert cache.values.shape == (2, 2, 9, 5)
    with torch.no_grad():
        steps = prefill_then_decode(m, x, 4, cache)
    assert_close(steps, module_reference(m, x), FLOAT64)


def test_training_through_sinks_reaches_every_parameter():
    m = _layer(sinks=True, qk_norm=True)
    x = torch.randn(2, 5, 14, dtype=torch.float64)
    m(x, is_causal=True).square().sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("combo", ["sinks", "all+rotary"])
def test_dynamic_shapes_compile_to_at_most_two_graphs(combo):
    from torch._dynamo.testing import CompileCounter

    m = _layer(**COMBOS[combo]).float()
    counter = CompileCounter()
    step = torch.compile(m, backend=counter, fullgraph=True, dynamic=True)
    torch._dynamo.reset()
    inputs = [torch.randn(1 + s % 3, s, 14) for s in range(3, 15)]
    with torch.no_grad():
        # Compiled calls first: eager calls grow RotaryEmbedding's angle tables, which
        # its compiled code guards on (a third graph, with or without these options).
        outputs = [step(x, is_causal=True) for x in inputs]
        for x, out in zip(inputs, outputs, strict=True):
            assert_close(out, m(x, is_causal=True), FLOAT32)
    assert counter.frame_count <= 2, counter.frame_count


def test_sinks_train_under_compile():
    m = _layer(sinks=True).float()
    x = torch.randn(2, 5, 14)
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)
    compiled(x, is_causal=True).sum().backward()
    expected = m.attention.sinks.grad.clone()
    m.zero_grad()
    m(x, is_causal=True).sum().backward()
    torch.testing.assert_close(expected, m.attention.sinks.grad)


def test_export_with_sinks_softcap_and_norms():
    from torch.export import Dim, export

    m = _layer(qk_norm=True, sinks=True).float()
    capped = _layer(softcap=2.0).float()
    s = Dim("s", min=2, max=64)
    for layer in (m, capped):
        program = export(layer, (torch.randn(2, 5, 14),), {"is_causal": True}, dynamic_shapes=({1: s}, None))
        x = torch.randn(2, 9, 14)
        torch.testing.assert_close(program.module()(x, is_causal=True), layer(x, is_causal=True))


def test_explain_extra_repr_and_bad_values():
    m = MultiHeadAttention(14, 4, head_dim=6, v_head_dim=5, qk_norm=True, sinks=True)
    reason = m.explain().reason
    assert "sigmoid(lse - sink)" in reason and "qk_norm" in reason
    capped = Attention(8, 2, softcap=50.0)
    assert capped.explain().path == "math" and "no fused kernel applies tanh" in capped.explain().reason
    assert "head_dim=6, v_head_dim=5, qk_norm=True, qk_norm_eps=1e-06, sinks=True" in repr(m)
    assert "softcap=50.0" in repr(capped) and "head_dim" not in repr(Attention(8, 2))
    cases = [
        ({"head_dim": 0}, ValueError, "head_dim must be a positive int, got 0"),
        ({"v_head_dim": 2.5}, TypeError, "v_head_dim must be an int"),
        ({"qk_norm": 1}, TypeError, "qk_norm must be a bool"),
        ({"qk_norm_eps": 0.0}, ValueError, "qk_norm_eps must be a number > 0"),
        ({"sinks": "yes"}, TypeError, "sinks must be a bool"),
        ({"softcap": 0}, ValueError, "softcap must be a number > 0, got 0.0"),
        ({"softcap": float("inf")}, ValueError, "softcap must be a finite number"),
    ]
    for options, error, message in cases:
        with pytest.raises(error, match=message):
            MultiHeadAttention(14, 4, **{"head_dim": 6, **options})
    with pytest.raises(ValueError, match="hidden_size=14 must be divisible by num_heads=4"):
        MultiHeadAttention(14, 4)


def test_a_cache_of_another_value_width_is_refused():
    m = _layer()
    with pytest.raises(
        ValueError, match=r"it holds \(b=2, n_kv=2, d=6, d_v=6\), this call has \(b=2, n_kv=2, d=6, d_v=5\)"
    ):
        m(
            torch.randn(2, 3, 14, dtype=torch.float64),
            cache=KVCache(2, 8, num_kv_heads=2, head_dim=6, dtype=torch.float64),
        )


@pytest.mark.parametrize("options", [{"softcap": 2.0}, {"sinks": True, "dropout": 0.5}])
def test_backend_fused_refuses_in_forward_what_it_cannot_run(options):
    """Regression: backend="fused" with softcap ran the math path silently in forward (explain() raised)."""
    m = MultiHeadAttention(16, 4, backend="fused", **options).train()
    with pytest.raises(ValueError, match='backend="fused" cannot run this call'):
        m.explain()
    with pytest.raises(ValueError, match='backend="fused" cannot run this call'):
        m(torch.randn(2, 3, 16))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_the_head_norm_is_torchs_rms_norm(dtype):
    # mha's q/k-norm computes nn.RMSNorm in fewer passes: the values and gradients
    # of nn.RMSNorm in float64, within one rounding of the dtype.
    from mha._qk_norm import head_norm

    g = torch.Generator().manual_seed(4)
    x64 = torch.randn(2, 3, 5, 6, generator=g, dtype=torch.float64).transpose(1, 2)
    up = torch.randn(x64.shape, generator=g, dtype=torch.float64)
    for eps in (1e-6, None):
        norm64 = torch.nn.RMSNorm(6, eps=eps, dtype=torch.float64)
        with torch.no_grad():
            norm64.weight.copy_(torch.randn(6, generator=g).to(dtype))
        norm = torch.nn.RMSNorm(6, eps=eps, dtype=dtype)
        norm.load_state_dict(norm64.state_dict())
        if eps is None:
            norm64.eps = torch.finfo(dtype).eps  # what eps=None means in dtype
        x, x_ref = x64.to(dtype).requires_grad_(), x64.to(dtype).double().requires_grad_()
        ours, theirs = head_norm(norm, x), norm64(x_ref)
        assert_close(ours, theirs, dtype)
        got = torch.autograd.grad(ours, (x, norm.weight), up.to(dtype))
        expected = torch.autograd.grad(theirs, (x_ref, norm64.weight), up.to(dtype).double())
        for a, b in zip(got, expected, strict=True):
            assert_close(a, b, dtype)
        with torch.no_grad():  # the in-place form
            assert_close(head_norm(norm, x), theirs.detach(), dtype)
    other = torch.nn.LayerNorm(6, dtype=dtype)
    assert_close(head_norm(other, x64.to(dtype)), other(x64.to(dtype)), EXACT)
