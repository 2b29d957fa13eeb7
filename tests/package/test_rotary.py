"""RotaryEmbedding against the RoFormer formula, and its relative-position property."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import FLOAT32, FLOAT32_FEW_OPS, FLOAT64, assert_close, prefill_then_decode
from mha import MultiHeadAttention, RotaryEmbedding


def roformer_reference(x, positions, base=10000.0):
    """Eq. 34 of RoFormer, one pair and one position at a time, in float64."""
    out = torch.empty_like(x, dtype=torch.float64)
    d = x.shape[-1]
    for s, m in enumerate(positions.tolist()):
        for i in range(d // 2):
            theta = base ** (-2 * i / d)
            c, sn = math.cos(m * theta), math.sin(m * theta)
            a, b = x[..., s, 2 * i].double(), x[..., s, 2 * i + 1].double()
            out[..., s, 2 * i] = a * c - b * sn
            out[..., s, 2 * i + 1] = a * sn + b * c
    return out


@pytest.mark.parametrize("base", [10000.0, 500.0])
def test_matches_the_paper_formula(base):
    rope = RotaryEmbedding(6, base=base)
    x = torch.randn(2, 3, 5, 6)
    positions = torch.tensor([0, 1, 4, 9, 130])
    assert_close(rope(x, positions), roformer_reference(x, positions, base), FLOAT32)


def test_float64_inputs_rotate_in_float64():
    rope = RotaryEmbedding(6)
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64)
    positions = torch.tensor([0, 1, 4, 9, 100000])  # far positions need float64 angles
    out = rope(x, positions)
    assert out.dtype == torch.float64
    assert_close(out, roformer_reference(x, positions), FLOAT64)


def test_per_sequence_positions():
    rope = RotaryEmbedding(4)
    x = torch.randn(2, 3, 5, 4)
    positions = torch.tensor([[0, 1, 2, 3, 4], [7, 8, 9, 10, 11]])
    for i in range(2):
        torch.testing.assert_close(rope(x[i : i + 1], positions[i]), rope(x, positions)[i : i + 1])


def test_scores_depend_only_on_the_distance():
    rope = RotaryEmbedding(8)
    q, k = torch.randn(1, 1, 1, 8, dtype=torch.float64), torch.randn(1, 1, 1, 8, dtype=torch.float64)
    rope = rope.double()

    def score(m, n):
        return (rope(q, torch.tensor([m])) * rope(k, torch.tensor([n]))).sum().item()

    for offset in (0, 3, 50):
        assert score(5 + offset, 2 + offset) == pytest.approx(score(5, 2), abs=1e-9)
    assert score(5, 2) != pytest.approx(score(5, 3), abs=1e-3)


def test_module_output_is_invariant_to_a_shift_of_all_positions():
    # A hidden prefix moves the sequence to positions 3..6. With rotary
    # embeddings only distances matter, so the output equals the full pass
    # at positions 0..3.
    m = MultiHeadAttention(16, 2, positional=RotaryEmbedding(8)).eval()
    x = torch.randn(1, 4, 16)
    cache = m.new_cache(1, 7)
    hide_prefix = (torch.arange(7) >= 3)[None, None, None, :]  # (1, 1, 1, s_max)
    m(torch.randn(1, 3, 16), cache=cache, mask=torch.ones(1, 1, 1, 7, dtype=torch.bool))
    shifted = m(x, cache=cache, mask=hide_prefix)
    assert_close(shifted, m(x, is_causal=True), FLOAT32)
    # Without rotary embeddings the same holds trivially; with absolute
    # positions added to x it would not. Check the rotation really happened:
    plain = MultiHeadAttention(16, 2).eval()
    plain.load_state_dict(m.state_dict())
    assert not torch.allclose(plain(x, is_causal=True), shifted, atol=1e-3)


def test_cross_attention_positions_align_queries_to_the_last_keys():
    # More queries than keys: query i sits at position s_kv - s_q + i (negative
    # for the first ones), the same alignment as is_causal.
    m = MultiHeadAttention(16, 2, positional=RotaryEmbedding(8), backend="math").eval().double()
    q, kv = torch.randn(1, 5, 16).double(), torch.randn(1, 3, 16).double()
    _, weights = m(q, kv, need_weights=True)
    rope = m.attention.positional
    split = lambda x: x.unflatten(-1, (-1, 8)).transpose(1, 2)  # noqa: E731
    qh = rope(split(m.q_proj(q)), torch.arange(-2, 3))
    kh = rope(split(m.k_proj(kv)), torch.arange(3))
    expected = torch.softmax(qh @ kh.transpose(-1, -2) / 8**0.5, dim=-1)
    torch.testing.assert_close(weights, expected)


def test_errors():
    with pytest.raises(ValueError, match=r"head_dim must be even \(features rotate in pairs\), got 5"):
        RotaryEmbedding(5)
    with pytest.raises(ValueError, match=r"base must be a number > 1, got 0.5"):
        RotaryEmbedding(4, base=0.5)
    with pytest.raises(ValueError, match=r"base must be a finite number, got nan"):
        RotaryEmbedding(4, base=float("nan"))
    with pytest.raises(TypeError, match=r"base must be a float, got str"):
        RotaryEmbedding(4, base="10000")
    with pytest.raises(ValueError, match=r"x must have last dimension d=4, got shape \(1, 1, 2, 6\)"):
        RotaryEmbedding(4)(torch.randn(1, 1, 2, 6), torch.arange(2))
    with pytest.raises(TypeError, match=r"positional must be a mha.RotaryEmbedding or None, got str"):
        MultiHeadAttention(16, 2, positional="rope")


def test_the_angle_table_gives_the_computed_angles():
    """Decoding reads the angles from a table grown on demand; it must equal computing them."""
    rope = RotaryEmbedding(8)
    positions = torch.tensor([0, 5, 63, 64, 200])
    direct = rope.angles(positions, torch.float32, torch.device("cpu"))
    for end in (201, 300):  # the table grows past 64 rows
        tabled = rope.angles(positions, torch.float32, torch.device("cpu"), end=end)
        torch.testing.assert_close(tabled, direct)
    x = torch.randn(2, 3, 5, 8)
    torch.testing.assert_close(rope.rotate(x, direct), rope(x, positions))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_the_compiled_form_of_the_angles_rotates_like_the_eager_one(dtype):
    """Eager rotation multiplies complex numbers; compiled graphs (and ONNX) get (cos, sin) per feature."""
    rope = RotaryEmbedding(8)
    positions = torch.tensor([0, 3, 64, 1000])
    x = torch.randn(2, 3, 4, 8, dtype=dtype)
    work = torch.promote_types(dtype, torch.float32)
    per_feature = rope._per_feature(positions.to(work)[:, None] * rope.frequencies(work, x.device))
    expected = roformer_reference(x, positions)
    assert_close(rope.rotate(x, per_feature), expected, dtype)
    assert_close(rope(x, positions), expected, dtype)
    torch.testing.assert_close(rope.rotate(x, per_feature), rope(x, positions))  # the same up to rounding


def test_a_view_with_odd_strides_is_rotated_like_a_contiguous_tensor():
    rope = RotaryEmbedding(4)
    base = torch.randn(1, 2, 3, 5)
    x = base[..., 1:]  # odd offset: no complex view of it exists
    torch.testing.assert_close(rope(x, torch.arange(3)), rope(x.contiguous(), torch.arange(3)))


def halves_reference(x, positions, base=10000.0, rotary_dim=None):
    """Transformers' rotate_half layout in float64: feature i pairs with i + r/2; features past r pass."""
    r = x.shape[-1] if rotary_dim is None else rotary_dim
    half = torch.arange(r // 2)
    order = torch.stack([half, half + r // 2], dim=1).flatten()  # halves -> neighbouring pairs
    rotated = roformer_reference(x[..., :r][..., order], positions, base)[..., order.argsort()]
    return torch.cat([rotated, x[..., r:].double()], dim=-1)


@pytest.mark.parametrize("rotary_dim", [None, 4])
def test_halves_layout_pairs_feature_i_with_i_plus_half(rotary_dim):
    rope = RotaryEmbedding(10 if rotary_dim is None else 7, interleaved=False, rotary_dim=rotary_dim)
    x = torch.randn(2, 3, 5, rope.head_dim)
    positions = torch.tensor([0, 1, 4, 9, 1300])
    assert_close(rope(x, positions), halves_reference(x, positions, rotary_dim=rotary_dim), FLOAT32)


def test_partial_rotary_interleaved_rotates_the_first_features_only():
    rope = RotaryEmbedding(7, rotary_dim=4)  # GPT-J's layout: neighbouring pairs within the first rotary_dim
    x = torch.randn(2, 3, 5, 7)
    positions = torch.tensor([0, 2, 3, 30, 700])
    expected = torch.cat([roformer_reference(x[..., :4], positions), x[..., 4:].double()], dim=-1)
    assert_close(rope(x, positions).double(), expected, FLOAT32)


@pytest.mark.parametrize(("interleaved", "rotary_dim"), [(False, None), (False, 6), (True, 6)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_path_rotates_alike_in_each_layout(interleaved, rotary_dim, dtype):
    """Full pass, cached prefill and one-token steps, and the compiled (cos, sin) form, on one module."""
    rope = RotaryEmbedding(10, interleaved=interleaved, rotary_dim=rotary_dim)
    m = MultiHeadAttention(30, 3, num_kv_heads=1, positional=rope).eval().to(dtype)
    x = torch.randn(2, 6, 30, dtype=dtype)
    full = m(x, is_causal=True)
    cache = m.new_cache(2, 8)
    with torch.no_grad():
        steps = prefill_then_decode(m, x, 3, cache)
    assert_close(steps, full, dtype)
    if dtype == torch.float32 and rotary_dim is not None and not interleaved:  # one compile: they are slow
        compiled = torch.compile(m, backend="eager", fullgraph=True)
        assert_close(compiled(x, is_causal=True), full, dtype)
    xh = torch.randn(2, 3, 6, 10, dtype=dtype)
    positions = torch.arange(6)
    expected = (
        halves_reference(xh, positions, rotary_dim=rotary_dim)
        if not interleaved
        else torch.cat([roformer_reference(xh[..., :6], positions), xh[..., 6:].double()], dim=-1)
    )
    assert_close(rope(xh, positions), expected, dtype)


def test_layout_and_partial_errors():
    with pytest.raises(
        ValueError, match=r"rotary_dim must be even \(features rotate in pairs\) and at most head_dim=6, got 8"
    ):
        RotaryEmbedding(6, rotary_dim=8)
    with pytest.raises(ValueError, match=r"rotary_dim must be even .* got 3"):
        RotaryEmbedding(6, rotary_dim=3)
    with pytest.raises(TypeError, match=r"interleaved must be a bool, got str"):
        RotaryEmbedding(6, interleaved="no")
    assert "interleaved=False, rotary_dim=4" in repr(RotaryEmbedding(5, interleaved=False, rotary_dim=4))


def test_eager_calls_between_compiled_ones_cause_no_recompile():
    # Eager calls fill the frequency cache and grow the angle tables; a compiled
    # graph must not guard on them (it did: one graph per eager call between).
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    rope = RotaryEmbedding(6, interleaved=False)
    m = MultiHeadAttention(12, 2, positional=RotaryEmbedding(6)).eval()
    counters = CompileCounter(), CompileCounter()
    compiled_rope = torch.compile(rope, backend=counters[0], fullgraph=True, dynamic=True)
    compiled_m = torch.compile(m, backend=counters[1], fullgraph=True, dynamic=True)
    g = torch.Generator().manual_seed(0)
    for s in (3, 7, 70, 9):
        x, h = torch.randn(5, 4, s, 6, generator=g), torch.randn(2, s, 12, generator=g)
        positions = torch.arange(s)
        got, got_m = compiled_rope(x, positions), compiled_m(h, is_causal=True)
        rope.angles_at(0, 3 * s, torch.float32, x.device)  # grows the table
        assert_close(got, rope(x, positions), FLOAT32_FEW_OPS)
        m(h, cache=m.new_cache(2, max_len=3 * s), is_causal=True)  # eager, cached: grows m's table
        assert_close(got_m, m(h, is_causal=True), FLOAT32)
    assert [c.frame_count for c in counters] == [1, 1]
