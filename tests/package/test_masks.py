"""mha.masks: construction, combination and conversion from PyTorch's convention."""

from __future__ import annotations

import pytest
import torch

from mha.masks import causal_mask, combine_masks, from_torch_masks, padding_mask, to_additive


@pytest.mark.parametrize(("s_q", "s_kv"), [(4, 4), (2, 5), (5, 3)])
def test_causal_mask_matches_loops(s_q, s_kv):
    expected = torch.tensor([[j <= i + (s_kv - s_q) for j in range(s_kv)] for i in range(s_q)])
    assert torch.equal(causal_mask(s_q, s_kv), expected)


def test_padding_mask_blocks_positions_past_each_length():
    mask = padding_mask(torch.tensor([3, 1, 4]), 5)
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)[:, None, None, :]
    assert torch.equal(mask, expected)
    assert torch.equal(padding_mask(torch.tensor([2, 3])), padding_mask(torch.tensor([2, 3]), 3))


def test_combine_bool_is_and_and_mixed_is_additive():
    a = torch.tensor([[True, True, False]])
    b = torch.tensor([[True, False, True]])
    assert torch.equal(combine_masks(a, None, b), torch.tensor([[True, False, False]]))
    bias = torch.tensor([[0.5, -1.0, 2.0]])
    inf = float("-inf")
    assert torch.equal(combine_masks(a, bias), torch.tensor([[0.5, -1.0, inf]]))
    assert combine_masks(None, None) is None
    assert torch.equal(to_additive(a), torch.tensor([[0.0, 0.0, inf]]))


def test_from_torch_masks_inverts_booleans_and_unflattens_heads():
    blocked = torch.tensor([[False, True], [False, False]])
    pad = torch.tensor([[False, True], [False, False], [True, False]])
    mask = from_torch_masks(blocked, pad)
    expected = ~blocked & ~pad[:, None, None, :]
    assert torch.equal(mask, expected)
    per_head = torch.rand(3 * 2, 2, 2) < 0.5  # (b * n_h, s_q, s_kv)
    assert torch.equal(from_torch_masks(per_head, num_heads=2), ~per_head.view(3, 2, 2, 2))
    additive = torch.randn(2, 2)
    assert torch.equal(from_torch_masks(additive), additive)


def test_mask_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"lengths must be a 1-D integer tensor of shape \(b,\), got shape \(2, 1\)"):
        padding_mask(torch.ones(2, 1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"s_q must be an int >= 0, got -1"):
        causal_mask(-1)
    assert causal_mask(0, 3).shape == (0, 3)  # empty in, empty out
    with pytest.raises(ValueError, match=r"num_heads is required to convert a 3-D attn_mask"):
        from_torch_masks(torch.zeros(4, 2, 2, dtype=torch.bool))
    with pytest.raises(
        ValueError, match=r"attn_mask's first dimension must be b \* num_heads \(num_heads=3\), got shape \(4, 2, 2\)"
    ):
        from_torch_masks(torch.zeros(4, 2, 2, dtype=torch.bool), num_heads=3)
    with pytest.raises(ValueError, match=r"key_padding_mask must have shape \(b, s_kv\), got \(4,\)"):
        from_torch_masks(key_padding_mask=torch.zeros(4, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"attn_mask must be a bool tensor \(PyTorch's convention: True = not allowed"):
        from_torch_masks(torch.ones(2, 2, dtype=torch.long))
    with pytest.raises(
        TypeError, match=r"key_padding_mask must be a bool .* or a float tensor .*, got dtype torch.int32"
    ):
        from_torch_masks(key_padding_mask=torch.zeros(2, 2, dtype=torch.int32))
    with pytest.raises(TypeError, match=r"masks\[1\] must be a torch.Tensor, got list"):
        combine_masks(torch.ones(1, dtype=torch.bool), [True])


@pytest.mark.parametrize("lengths", [[3, -1], [3, 6]])
def test_padding_lengths_outside_the_sequence_are_refused(lengths):
    with pytest.raises(ValueError, match=r"lengths must be in \[0, s_kv=5\], got \[3, (-1|6)\]"):
        padding_mask(torch.tensor(lengths), 5)
