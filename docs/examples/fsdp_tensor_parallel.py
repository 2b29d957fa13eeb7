"""Tensor parallelism x FSDP2 on a 2-D device mesh: one training step equals one process.

The mesh has a data-parallel dimension `dp` (FSDP2 shards parameters and
averages gradients over it) and a tensor-parallel dimension `tp` (each rank
holds some of the heads and of the MLP's hidden units). Run on 2 CPU
processes (or GPUs, with --backend nccl):

    torchrun --nproc-per-node 2 docs/examples/fsdp_tensor_parallel.py --tp 2   # mesh (dp=1, tp=2)
    torchrun --nproc-per-node 2 docs/examples/fsdp_tensor_parallel.py --tp 1   # mesh (dp=2, tp=1)

`--tp` must divide the attention's 2 key/value heads (1 or 2), and the number
of processes must divide by it; on 8 GPUs, `--tp 2` gives the mesh (dp=4, tp=2).

Each rank compares its loss and every parameter after one SGD step with the
same model trained in one process on the whole batch.
"""

from __future__ import annotations

import argparse
import copy
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

from mha import MultiHeadAttention
from mha.parallel import parallelize

MLP_PLAN = {"up": ColwiseParallel, "down": RowwiseParallel}
HEADS = 4  # query heads per block, with HEADS // 2 key/value heads: --tp must divide those


class Block(nn.Module):
    """A pre-norm transformer block: causal attention, then an MLP."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        # No projection biases: a key bias only adds a constant to each row of
        # scores, which softmax ignores, so its gradient is rounding noise.
        self.attn = MultiHeadAttention(hidden, heads, num_kv_heads=heads // 2, bias=False)
        self.up, self.down = nn.Linear(hidden, 4 * hidden), nn.Linear(4 * hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), is_causal=True)
        return x + self.down(torch.relu(self.up(self.norm2(x))))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", default="gloo", choices=["gloo", "nccl"])
    parser.add_argument("--tp", type=int, default=2, help="tensor-parallel ranks; the rest is data parallel")
    args = parser.parse_args()
    if HEADS // 2 % args.tp:
        parser.error(f"--tp {args.tp} must divide the {HEADS // 2} key/value heads of each block")
    device = "cuda" if args.backend == "nccl" else "cpu"
    if device == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(args.backend)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh(device, (world_size // args.tp, args.tp), mesh_dim_names=("dp", "tp"))

    torch.manual_seed(0)  # the same weights and batch on every rank
    reference = nn.Sequential(Block(64, HEADS), Block(64, HEADS)).to(device)
    model = copy.deepcopy(reference)

    # 1. Tensor parallel inside each block: mha's plan for every attention,
    #    and the MLP's (up column-wise, down row-wise) in the same call.
    mlp = {f"{i}.{name}": style() for i in range(len(model)) for name, style in MLP_PLAN.items()}
    parallelize(model, mesh["tp"], extra=mlp)
    # 2. FSDP2 over the data-parallel dimension: each block, then the root.
    for block in model:
        fully_shard(block, mesh=mesh["dp"])
    fully_shard(model, mesh=mesh["dp"])

    batch = torch.randn(4, 16, 64, device=device)
    local = batch.chunk(mesh["dp"].size())[mesh["dp"].get_local_rank()]  # this rank's share of the batch
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = model(local).pow(2).mean()
    loss.backward()
    grads = [p.grad.full_tensor() for p in model.parameters()]
    optimizer.step()

    reference_optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    reference_loss = reference(batch).pow(2).mean()
    reference_loss.backward()
    reference_optimizer.step()

    global_loss = loss.detach().clone()
    dist.all_reduce(global_loss, group=mesh["dp"].get_group())
    global_loss /= mesh["dp"].size()
    pairs = list(zip(model.parameters(), reference.parameters(), strict=True))
    grad_error = max((g - q.grad).abs().max().item() for g, (_, q) in zip(grads, pairs, strict=True))
    error = max((p.full_tensor() - q).abs().max().item() for p, q in pairs)
    print(
        f"rank {rank}/{world_size}: mesh dp={mesh['dp'].size()} x tp={mesh['tp'].size()}, "
        f"loss {global_loss.item():.6f} (one process: {reference_loss.item():.6f}), "
        f"max |gradient - one process| = {grad_error:.1e}, "
        f"max |parameter - one process| after one SGD step = {error:.1e}"
    )
    assert abs(global_loss.item() - reference_loss.item()) < 1e-5 and grad_error < 1e-6 and error < 1e-5

    dist.barrier()  # let every rank finish before the process group goes away
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
