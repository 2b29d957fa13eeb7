"""Tensor parallelism: 2 CPU processes (gloo) against the single-process module."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn

from helpers import FLOAT32, assert_close, prefill_then_decode, run_on_ranks
from mha import MultiHeadAttention, RotaryEmbedding
from mha.masks import padding_mask
from mha.parallel import parallelize, plan

WORLD_SIZE = 2


def _check_sharded_equals_single(make, mesh, **call):
    torch.manual_seed(0)
    single = make()
    sharded = make()
    sharded.load_state_dict(single.state_dict())
    parallelize(sharded, mesh)
    # The split is explicit state, shown in the repr.
    assert sharded.attention.shards == WORLD_SIZE and f"shards={WORLD_SIZE}" in repr(sharded.attention)
    assert single.attention.shards == 1
    # Each rank holds 1/WORLD_SIZE of the heads.
    local_rows = sharded.q_proj.weight.to_local().shape[0]
    assert local_rows == single.q_proj.weight.shape[0] // WORLD_SIZE

    x = torch.randn(2, 6, 32)  # the same on every rank (same seed)
    x_single, x_sharded = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected = single(x_single, **call)
    out = sharded(x_sharded, **call)
    assert_close(out, expected, FLOAT32)
    expected.pow(2).sum().backward()
    out.pow(2).sum().backward()
    assert_close(x_sharded.grad, x_single.grad, FLOAT32)
    return single, sharded


def _checks(mesh) -> None:
    """Everything checked on each rank."""
    pad = padding_mask(torch.tensor([6, 4]), 6)
    # MHA and GQA, causal, with a padding mask.
    _check_sharded_equals_single(lambda: MultiHeadAttention(32, 4), mesh, is_causal=True)
    single, sharded = _check_sharded_equals_single(
        lambda: MultiHeadAttention(32, 4, num_kv_heads=2, positional=RotaryEmbedding(8)),
        mesh,
        is_causal=True,
        mask=pad,
    )

    # Options of today's layers: sinks are split with the heads, the norms stay whole.
    def modern():
        m = MultiHeadAttention(32, 4, num_kv_heads=2, head_dim=12, qk_norm=True, sinks=True, softcap=5.0)
        with torch.no_grad():
            m.attention.sinks.normal_()
            m.attention.q_norm.weight.normal_()
        return m

    _, sharded_modern = _check_sharded_equals_single(modern, mesh, is_causal=True)
    assert sharded_modern.attention.sinks.to_local().shape == (2,)
    # The KV cache holds the local key/value heads and decodes exactly.
    sharded.eval()
    cache = sharded.new_cache(2, 8)
    assert cache.num_kv_heads == 1
    x = torch.randn(2, 6, 32)
    with torch.no_grad():
        assert_close(prefill_then_decode(sharded, x, 3, cache), single.eval()(x, is_causal=True), FLOAT32)
    # Dropout runs sharded: random in training, exact in eval.
    torch.manual_seed(1)
    drop = MultiHeadAttention(32, 4, dropout=0.5)
    parallelize(drop, mesh)
    assert not torch.allclose(drop(x), drop.eval()(x))
    # Every MultiHeadAttention inside a bigger model.
    model = nn.ModuleDict({"a": MultiHeadAttention(32, 4), "b": MultiHeadAttention(32, 2, num_kv_heads=2)})
    parallelize(model, mesh)
    assert model["b"].k_proj.weight.to_local().shape == (16, 32)  # 1 of 2 heads of d=16
    # Heads that do not divide by the mesh size.
    with pytest.raises(ValueError, match=r"module.num_heads=3 must be divisible by the device mesh size 2"):
        parallelize(MultiHeadAttention(24, 3), mesh)
    with pytest.raises(ValueError, match=r"module.num_kv_heads=1 must be divisible by the device mesh size 2"):
        parallelize(MultiHeadAttention(32, 4, num_kv_heads=1), mesh)
    with pytest.raises(ValueError, match=r"module must be or contain a mha.MultiHeadAttention, got Linear"):
        parallelize(nn.Linear(2, 2), mesh)


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built in")
def test_tensor_parallel_matches_single_process():
    run_on_ranks(_checks, world_size=WORLD_SIZE)


def test_plan_prefixes_and_styles():
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    p = plan("layers.0.attn")
    assert {k: type(v) for k, v in p.items()} == {
        "layers.0.attn.q_proj": ColwiseParallel,
        "layers.0.attn.k_proj": ColwiseParallel,
        "layers.0.attn.v_proj": ColwiseParallel,
        "layers.0.attn.out_proj": RowwiseParallel,
    }
    assert set(plan()) == {"q_proj", "k_proj", "v_proj", "out_proj"}
