"""Context parallelism on this machine: one long causal sequence, 1 process against 2 ranks.

A training step (forward, backward, and the gradient all-reduce context
parallelism needs) of a stack of causal self-attention layers (hidden 512,
8 query and 2 key/value heads, rotary positions, float32) on one sequence,
in three set-ups that use the same two cores:

* 1 process, 1 thread: the baseline;
* 1 process, 2 threads: what the cores give without any communication;
* 2 ranks of 1 thread: `mha.parallel.context_parallel` over gloo.

Every set-up runs in fresh processes, so each one's peak memory is its own:
the peak resident memory of a rank during the steps, above what it held
once the model and its input were built. The processes run with glibc's
`MALLOC_MMAP_THRESHOLD_=65536`, so that every freed tensor goes back to the
system at once and resident memory follows the tensors alive (by default,
freed blocks under 32 MiB stay in the heap and inflate the peak). The set-ups take turns, round
after round, and each reports the median step time of all its rounds.

    python benchmarks/context_parallel.py    # 8,192 and 32,768 tokens with 2 layers, 8,192 with 8
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from common import free_port, print_table, write_results
from torch import nn

from mha import MultiHeadAttention, RotaryEmbedding
from mha.parallel import context_parallel, shard_sequence

HIDDEN, HEADS, KV_HEADS = 512, 8, 2
SETUPS = {  # name: (ranks, threads per rank)
    "1 process, 1 thread": (1, 1),
    "1 process, 2 threads": (1, 2),
    "2 ranks, 1 thread each": (2, 1),
}


class Layers(nn.Module):
    def __init__(self, layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            MultiHeadAttention(HIDDEN, HEADS, num_kv_heads=KV_HEADS, positional=RotaryEmbedding(HIDDEN // HEADS))
            for _ in range(layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = x + layer(x, is_causal=True)
        return x


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _worker(rank: int, ranks: int, threads: int, port: int, length: int, layers: int, steps: int, results) -> None:
    torch.set_num_threads(threads)
    if ranks > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=ranks)
    torch.manual_seed(0)
    model = Layers(layers)
    x = torch.randn(1, length, HIDDEN)
    if ranks > 1:
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh("cpu", (ranks,))
        context_parallel(model, mesh)
        x = shard_sequence(x, mesh)
    before = _peak_mib()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        (model(x).pow(2).sum() / (length * HIDDEN)).backward()
        if ranks > 1:
            for p in model.parameters():
                dist.all_reduce(p.grad)
        times.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    results.put((rank, times, _peak_mib() - before))
    if ranks > 1:
        dist.barrier()
        dist.destroy_process_group()


def run(ranks: int, threads: int, length: int, layers: int, steps: int) -> tuple[list[float], float]:
    """Step times (rank 0's) and the largest peak memory of any rank."""
    context = mp.get_context("spawn")
    results = context.Queue()
    port = free_port()
    processes = [
        context.Process(target=_worker, args=(r, ranks, threads, port, length, layers, steps, results))
        for r in range(ranks)
    ]
    for p in processes:
        p.start()
    reports = sorted(results.get() for _ in processes)
    for p in processes:
        p.join()
    return reports[0][1], max(memory for _, _, memory in reports)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", nargs="+", default=["8192x2", "32768x2", "8192x8"], help="TOKENSxLAYERS")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")  # read by each spawned process's allocator

    cases = []
    for case in args.cases:
        length, layers = (int(n) for n in case.split("x"))
        times: dict[str, list[float]] = {name: [] for name in SETUPS}
        memory: dict[str, float] = {}
        for _ in range(args.rounds):
            for name, (ranks, threads) in SETUPS.items():
                # The first step of a fresh process allocates; at short lengths it is
                # dropped, at long ones it is a small share of a step and kept.
                warm = length < 16384
                step_times, memory[name] = run(ranks, threads, length, layers, 1 + warm)
                times[name] += step_times[warm:]
        base = statistics.median(times["1 process, 1 thread"])
        for name in SETUPS:
            seconds = statistics.median(times[name])
            cases.append(
                {
                    "length": length,
                    "layers": layers,
                    "setup": name,
                    "seconds": seconds,
                    "speedup": base / seconds,
                    "peak_mib_per_rank": memory[name],
                }
            )
    rows = [
        [
            c["length"],
            c["layers"],
            c["setup"],
            f"{c['seconds']:.2f}",
            f"{c['speedup']:.2f}x",
            f"{c['peak_mib_per_rank']:.0f}",
        ]
        for c in cases
    ]
    print_table(["tokens", "layers", "set-up", "step (s)", "speed-up", "peak MiB per rank"], rows)
    path = write_results(
        "context_parallel",
        {"hidden": HIDDEN, "heads": HEADS, "kv_heads": KV_HEADS, "rounds": args.rounds, "cases": cases},
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
