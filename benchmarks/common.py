"""Timing and reporting helpers shared by the benchmark scripts."""

from __future__ import annotations

import json
import os
import platform
import socket
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

RESULTS = Path(__file__).parent / "results"


def machine() -> dict[str, object]:
    """What the numbers were measured on."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def interleaved_medians(fns: dict[str, Callable[[], object]], *, repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each function, timed round-robin.

    Interleaving spreads slow drifts of the machine (thermal, other load)
    over every contender instead of penalising whichever runs last.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(times) for name, times in samples.items()}


def gemm_gflops(dtype: torch.dtype, repeats: int) -> float:
    """GFLOP/s of a 2048³ matrix product in `dtype`: the machine's limit, measured in the same run."""
    n = 2048
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    t = interleaved_medians({"mm": lambda: a @ b}, repeats=repeats)["mm"]
    return 2 * n**3 / t / 1e9


def self_attention_flops(b: int, s: int, h: int) -> int:
    """FLOPs of one self-attention forward: four projections (8 b s h²) and q kᵀ and weights v (4 b s² h).

    A backward pass costs about twice the forward, so a training step is 3x this.
    """
    return 8 * b * s * h * h + 4 * b * s * s * h


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, for a process group."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_results(name: str, payload: dict[str, object]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2) + "\n")
    return path


def print_table(headers: list[str], rows: list[list[object]]) -> None:
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for i, row in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
        if i == 0:
            print("  ".join("-" * w for w in widths))


class BareSDPA(nn.Module):
    """The least a fused attention module can be: one qkv Linear, SDPA, out Linear."""

    def __init__(self, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.out = nn.Linear(hidden_size, hidden_size)

    @classmethod
    def from_torch(cls, m: nn.MultiheadAttention) -> BareSDPA:
        bare = cls(m.embed_dim, m.num_heads)
        bare.qkv.weight.data.copy_(m.in_proj_weight)
        bare.qkv.bias.data.copy_(m.in_proj_bias)
        bare.out.load_state_dict(m.out_proj.state_dict())
        return bare

    def forward(self, x: torch.Tensor, is_causal: bool = False) -> torch.Tensor:
        b, s, h = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
        return self.out(y.transpose(1, 2).reshape(b, s, h))
