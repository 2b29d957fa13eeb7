"""Context parallelism: one long sequence split over the ranks of a 1-D mesh.

Run on 2 CPU processes (or GPUs, with --backend nccl):

    torchrun --nproc-per-node 2 docs/examples/context_parallel.py

Each rank holds a zig-zag half of the sequence; attention passes keys and
values around a ring. The output and the gradients equal one process.
"""

from __future__ import annotations

import argparse
import copy
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh

from mha import MultiHeadAttention, RotaryEmbedding
from mha.parallel import context_parallel, shard_sequence, unshard_sequence


class Decoder(nn.Module):
    """Causal self-attention layers with rotary positions and grouped-query heads."""

    def __init__(self, hidden: int = 64, heads: int = 8, layers: int = 2) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            MultiHeadAttention(hidden, heads, num_kv_heads=2, positional=RotaryEmbedding(hidden // heads))
            for _ in range(layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = x + layer(x, is_causal=True)
        return x


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", default="gloo", choices=["gloo", "nccl"])
    parser.add_argument("--length", type=int, default=256, help="tokens in the whole sequence")
    args = parser.parse_args()
    device = "cuda" if args.backend == "nccl" else "cpu"
    if device == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(args.backend)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh(device, (world_size,))

    torch.manual_seed(0)  # the same weights and sequence on every rank
    reference = Decoder().to(device)
    model = context_parallel(copy.deepcopy(reference), mesh)
    x = torch.randn(1, args.length, 64, device=device)

    local = shard_sequence(x, mesh)  # (1, length / world_size, 64): chunks r and 2W-1-r
    out = model(local)
    # The loss is a mean over the *whole* sequence: divide the local sum by the
    # global count, so that the ranks' shares add up to the full gradient.
    (out.pow(2).sum() / x.numel()).backward()
    for p in model.parameters():  # each rank holds its tokens' share of the gradient
        dist.all_reduce(p.grad, group=mesh.get_group())

    expected = reference(x)
    expected.pow(2).mean().backward()
    error = (unshard_sequence(out, mesh) - expected).abs().max().item()
    grad_error = max(
        (p.grad - q.grad).abs().max().item() for p, q in zip(model.parameters(), reference.parameters(), strict=True)
    )
    print(
        f"rank {rank}/{world_size}: {local.shape[1]} of {args.length} tokens, "
        f"max |output - one process| = {error:.1e}, max |gradient - one process| = {grad_error:.1e}"
    )
    assert error < 1e-5 and grad_error < 1e-5

    dist.barrier()  # let every rank finish before the process group goes away
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
