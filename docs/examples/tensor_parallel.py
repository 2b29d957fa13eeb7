"""Tensor-parallel multi-head attention on every rank of a 1-D device mesh.

Run on 2 CPU processes (or GPUs, with --backend nccl):

    torchrun --nproc-per-node 2 docs/examples/tensor_parallel.py

Each rank holds 1/world_size of the heads; the output equals the single-device module.
Key/value heads must divide by the number of ranks: 8 query and 4 key/value heads
for up to 4 ranks, twice as many of each on 8.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

from mha import MultiHeadAttention
from mha.parallel import parallelize


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", default="gloo", choices=["gloo", "nccl"])
    args = parser.parse_args()
    device = "cuda" if args.backend == "nccl" else "cpu"
    if device == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))

    dist.init_process_group(args.backend)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh(device, (world_size,))

    torch.manual_seed(0)  # the same weights and inputs on every rank
    num_heads = max(8, 2 * world_size)  # n_kv = n_h / 2 must divide by the mesh size
    reference = MultiHeadAttention(256, num_heads, num_kv_heads=num_heads // 2, device=device)
    sharded = MultiHeadAttention(256, num_heads, num_kv_heads=num_heads // 2, device=device)
    sharded.load_state_dict(reference.state_dict())
    parallelize(sharded, mesh)  # q/k/v column-wise, out row-wise

    x = torch.randn(2, 16, 256, device=device)
    out = sharded(x, is_causal=True)
    expected = reference(x, is_causal=True)
    local_heads = sharded.q_proj.weight.to_local().shape[0] // sharded.head_dim
    error = (out - expected).abs().max().item()
    print(f"rank {rank}/{world_size}: {local_heads} of {num_heads} query heads, max |sharded - single| = {error:.1e}")
    assert error < 1e-5

    dist.barrier()  # let every rank finish before the process group goes away
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
