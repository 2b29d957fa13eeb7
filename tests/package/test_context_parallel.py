"""Context parallelism: ring attention on 2 CPU processes (gloo) against one process."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn

from helpers import FLOAT32, FLOAT32_COMPOUNDED, TOLERANCE, assert_close, run_on_ranks
from mha import Attention, MultiHeadAttention, RotaryEmbedding
from mha.parallel import context_parallel, shard_sequence, unshard_sequence
from mha.parallel.ring import _attend_block, _attend_block_backward, _merge

WORLD_SIZE = 2


def _all_reduced_grads(model: nn.Module, group) -> dict[str, torch.Tensor]:
    grads = {}
    for name, p in model.named_parameters():
        grad = p.grad.clone()
        dist.all_reduce(grad, group=group)  # each rank holds its tokens' share
        grads[name] = grad
    return grads


def _check_equals_single(make, mesh, s: int = 24, device: str = "cpu", tolerance=FLOAT32, **call) -> None:
    """Output, input gradients and summed parameter gradients equal one process."""
    torch.manual_seed(0)
    single, sharded = make().to(device), make().to(device)
    sharded.load_state_dict(single.state_dict())
    context_parallel(sharded, mesh)
    dtype = next(single.parameters()).dtype
    x = torch.randn(3, s, 40, dtype=dtype, device=device)  # the same on every rank (same seed)
    x_single = x.clone().requires_grad_()
    x_sharded = x.clone().requires_grad_()
    expected = single(x_single, **call)
    out = sharded(shard_sequence(x_sharded, mesh), **call)
    assert_close(out, shard_sequence(expected, mesh), tolerance)
    assert_close(unshard_sequence(out, mesh), expected, tolerance)
    target = torch.randn_like(expected)  # a loss that weighs every position differently
    (expected * target).sum().backward()
    (out * shard_sequence(target, mesh)).sum().backward()
    # Each rank's input gradient is exact on the positions it holds (keys and
    # values of other ranks' queries included), zero elsewhere.
    held = (shard_layout(s, mesh) > 0).to(device)[:, None]
    assert_close(x_sharded.grad, x_single.grad * held, tolerance)
    reduced = _all_reduced_grads(sharded, mesh.get_group())
    for name, p in single.named_parameters():
        assert_close(reduced[name], p.grad, tolerance, msg=name)
    # The same loss on the gathered sequence on every rank, divided by W, gives the same input gradients.
    x_gathered = x.clone().requires_grad_()
    (unshard_sequence(sharded(shard_sequence(x_gathered, mesh), **call), mesh) * target).sum().div(
        mesh.size()
    ).backward()
    assert_close(x_gathered.grad, x_single.grad * held, tolerance)


def shard_layout(s: int, mesh) -> torch.Tensor:
    """1 at the positions this rank holds, 0 elsewhere."""
    held = torch.zeros(s)
    held[shard_sequence(torch.arange(s)[None], mesh)[0]] = 1
    return held


def _model(dtype=torch.float64, **options) -> nn.Sequential:
    """Two layers, so gradients flow through a ring into another ring."""
    return nn.Sequential(
        MultiHeadAttention(40, 4, dtype=dtype, **options),
        nn.GELU(),
        MultiHeadAttention(40, 4, dtype=dtype, **options),
    )


class _Causal(nn.Sequential):
    def forward(self, x):
        for layer in self:
            x = layer(x, is_causal=True) if isinstance(layer, MultiHeadAttention) else layer(x)
        return x


def _checks(mesh) -> None:
    """Everything checked on each rank."""
    # Round trip of the zig-zag layout: rank r holds chunks r and 2W-1-r.
    x = torch.arange(8)[None]
    held = shard_sequence(x, mesh).tolist()
    assert held == [[[0, 1, 6, 7]], [[2, 3, 4, 5]]][mesh.get_local_rank()], held
    assert torch.equal(unshard_sequence(shard_sequence(x, mesh), mesh), x)

    # Non-causal and causal, multi-head, grouped-query with rotary positions.
    _check_equals_single(_model, mesh)
    _check_equals_single(lambda: _Causal(*_model()), mesh)
    _check_equals_single(lambda: _Causal(*_model(num_kv_heads=2, positional=RotaryEmbedding(10))), mesh, s=32)
    _check_equals_single(lambda: _model(num_kv_heads=1, positional=RotaryEmbedding(10)), mesh)

    # Cross-attention: queries and keys are shards of two sequences of different lengths.
    torch.manual_seed(1)
    single = MultiHeadAttention(40, 4, num_kv_heads=2, dtype=torch.float64)
    sharded = context_parallel(MultiHeadAttention(40, 4, num_kv_heads=2, dtype=torch.float64), mesh)
    sharded.load_state_dict(single.state_dict())
    q, kv = torch.randn(2, 12, 40, dtype=torch.float64), torch.randn(2, 20, 40, dtype=torch.float64)
    out = sharded(shard_sequence(q, mesh), shard_sequence(kv, mesh))
    assert_close(out, shard_sequence(single(q, kv), mesh), FLOAT32)

    # float32 and bfloat16 go through the same kernel the single process uses.
    for dtype in (torch.float32, torch.bfloat16):
        torch.manual_seed(2)
        single = Attention(64, 4, positional=RotaryEmbedding(16))
        sharded = context_parallel(Attention(64, 4, positional=RotaryEmbedding(16)), mesh)
        x = torch.randn(2, 64, 64, dtype=dtype)
        assert_close(
            sharded(*(shard_sequence(x, mesh),) * 3, is_causal=True),
            shard_sequence(single(x, x, x, is_causal=True), mesh),
            dtype,
        )

    _check_refusals(mesh)


def _check_refusals(mesh) -> None:
    """What cannot be exact under context parallelism raises, before anything is computed."""
    attn = context_parallel(MultiHeadAttention(16, 2, dropout=0.1), mesh)
    x = torch.randn(1, 4, 16)
    assert "context_parallel=2" in repr(attn.attention)
    for call, match in (
        ({"need_weights": True}, "need_weights=True is not supported under context parallelism"),
        ({"mask": torch.ones(4, 4, dtype=torch.bool)}, "a mask is not supported under context parallelism"),
        ({"cache": attn.new_cache(1, 8)}, "a KV cache is not supported under context parallelism"),
        ({}, r"dropout in training \(dropout=0.1\) is not supported under context parallelism"),
    ):
        with pytest.raises(ValueError, match=match):
            attn(x, **call)
    attn.eval()  # dropout is off in eval: fine
    attn(x)
    with pytest.raises(ValueError, match=r"is_causal=True under context parallelism needs .* s_q=4 and s_kv=6"):
        attn(x, torch.randn(1, 6, 16), is_causal=True)
    with pytest.raises(ValueError, match=r"its length must be even, got 3"):
        attn(x[:, :3], is_causal=True)
    with pytest.raises(ValueError, match=r"attention has backend='math'"):
        context_parallel(MultiHeadAttention(16, 2, backend="math"), mesh)
    with pytest.raises(ValueError, match=r"module must be or contain a mha.Attention, got Linear"):
        context_parallel(nn.Linear(2, 2), mesh)
    with pytest.raises(ValueError, match=r"x.shape\[1\]=6 must divide by 2 x the mesh size = 4"):
        shard_sequence(torch.randn(1, 6, 2), mesh)
    with pytest.raises(ValueError, match=r"dim must be an int in \[-3, 3\) for a 3-D x, got 3"):
        shard_sequence(torch.randn(1, 8, 2), mesh, dim=3)
    with pytest.raises(TypeError, match=r"mesh must be a torch.distributed DeviceMesh, got ProcessGroup"):
        shard_sequence(torch.randn(1, 8, 2), mesh.get_group())


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built in")
def test_context_parallel_matches_single_process():
    run_on_ranks(_checks, world_size=WORLD_SIZE, threads=1)


def _cuda_checks(mesh) -> None:
    """One NCCL rank on one GPU: the whole ring (kernels, merge, positions, backward) on CUDA."""
    for make in (
        lambda: _Causal(*_model(torch.float32, num_kv_heads=2, positional=RotaryEmbedding(10))),
        lambda: _model(torch.float32, num_kv_heads=1),
    ):
        _check_equals_single(make, mesh, s=48, device="cuda", tolerance=FLOAT32_COMPOUNDED)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_context_parallel_on_one_cuda_rank():
    run_on_ranks(_cuda_checks, world_size=1, device="cuda")


def _blocks_equal_whole(device: str, dtype: torch.dtype, head_dim: int, kv_heads: int = 3) -> None:
    """Blocks of keys merged by log-sum-exp, and their gradients, equal attention over all keys.

    Both the blocks and PyTorch's own kernel in `dtype` are compared with a
    float64 reference: the blocks may be no further from it than PyTorch is.
    With fewer key/value heads, the query heads of a group are folded into one sequence.
    """
    torch.manual_seed(0)
    q = torch.randn(2, 3, 40, head_dim, device=device, dtype=dtype)
    k, v = (torch.randn(2, kv_heads, 72, head_dim, device=device, dtype=dtype) for _ in range(2))
    grad = torch.randn_like(q)
    out = torch.zeros(q.shape, device=device)
    lse = torch.full(q.shape[:3], float("-inf"), device=device)
    blocks = (slice(0, 40), slice(40, 72))
    for cols in blocks:
        _merge(out, lse, *_attend_block(q, k[:, :, cols], v[:, :, cols], False, None))
    out = out.to(dtype)
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    for cols in blocks:
        dq_b, dk[:, :, cols], dv[:, :, cols] = _attend_block_backward(
            grad, q, k[:, :, cols], v[:, :, cols], out, lse, False, None
        )
        dq += dq_b

    def sdpa(*inputs):
        leaves = [t.detach().clone().requires_grad_() for t in inputs]
        result = torch.nn.functional.scaled_dot_product_attention(*leaves, enable_gqa=True)
        result.backward(grad.to(result.dtype))
        return [result] + [t.grad for t in leaves]

    reference = sdpa(*(t.double() for t in (q, k, v)))
    pytorch = sdpa(q, k, v)
    for name, ours, theirs, exact in zip(("out", "dq", "dk", "dv"), (out, dq, dk, dv), pytorch, reference, strict=True):
        our_error = (ours.double() - exact).abs().max().item()
        their_error = (theirs.double() - exact).abs().max().item()
        print(f"{device} {dtype} d={head_dim} n_kv={kv_heads} {name}: ring {our_error:.2e}, PyTorch {their_error:.2e}")
        assert our_error <= 2 * their_error + TOLERANCE[dtype].atol / 10, (name, our_error, their_error)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kv_heads", [3, 1])
def test_ring_blocks_merge_exactly_cpu(dtype, kv_heads):
    _blocks_equal_whole("cpu", dtype, head_dim=16, kv_heads=kv_heads)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [16, 10])
@pytest.mark.parametrize("kv_heads", [3, 1])
def test_ring_blocks_merge_exactly_cuda(dtype, head_dim, kv_heads):
    _blocks_equal_whole("cuda", dtype, head_dim, kv_heads)


def test_dynamic_rotary_scaling_is_refused():
    """Each rank would grow the rotary base from its own shard's positions, not the sequence's."""
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        rope = RotaryEmbedding(
            8, scaling={"rope_type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 8}
        )
        with pytest.raises(
            ValueError,
            match=r"attention has rotary scaling rope_type 'dynamic', whose frequencies depend on the longest",
        ):
            context_parallel(MultiHeadAttention(16, 2, positional=rope), mesh)
    finally:
        dist.destroy_process_group()
