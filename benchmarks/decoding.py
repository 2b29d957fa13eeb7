"""Step-by-step decoding: the KV cache against recomputing the causal pass.

Run: ``python benchmarks/decoding.py`` (about a minute on 2 cores).
Prints a table and writes ``benchmarks/results/decoding.json``.

Generates ``--tokens`` positions one at a time with ``MultiHeadAttention(512, 8)``
on the CPU in float32: with a cache (one token in per step), without (the
whole causal forward over the prefix at every step), and with bare kernels
(the step's kernels called straight, no module and no checks: the floor for
an eager step), in turns over ``--rounds`` rounds. Then times one step
with 64 positions filled in caches of ``max_len`` 128, 4,096 and 16,384: a step
attends over the filled positions only, so its cost must not follow ``max_len``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from common import gemm_gflops, interleaved_medians, print_table, write_results
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mha import MultiHeadAttention  # noqa: E402

HIDDEN, HEADS = 512, 8


def per_step_times(step, tokens: int) -> list[float]:
    times = []
    for t in range(tokens):
        start = time.perf_counter()
        step(t)
        times.append(time.perf_counter() - start)
    return times


def step_cost_by_max_len(m: MultiHeadAttention, filled: int = 64) -> dict[int, float]:
    """Median seconds of one step with `filled` positions cached, per cache size, interleaved."""
    x = torch.randn(1, filled, HIDDEN)
    token = torch.randn(1, 1, HIDDEN)
    caches = {}
    with torch.inference_mode():
        for max_len in (128, 4096, 16384):
            cache = m.new_cache(1, max_len)
            m(x, cache=cache)
            caches[max_len] = cache

        def step(cache):
            m(token, cache=cache)
            cache._length -= 1  # stay at `filled`: the same step every time
            cache.position -= 1

        return interleaved_medians({n: (lambda c=c: step(c)) for n, c in caches.items()}, repeats=400)


def bare_kernels(m: MultiHeadAttention, n: int, x: torch.Tensor):
    """A decoding step with the kernels of mha's, called straight on copies of its weights.

    No module, no checks, no cache object: the floor for an eager step with
    PyTorch's kernels, against which the speedup target can be judged.
    """
    weights = [(p.weight.detach().clone(), p.bias.detach().clone()) for p in (m.q_proj, m.k_proj, m.v_proj, m.out_proj)]
    keys, values = torch.zeros(1, HEADS, n, HIDDEN // HEADS), torch.zeros(1, HEADS, n, HIDDEN // HEADS)

    def step(t: int) -> torch.Tensor:
        token = x[:, t : t + 1]
        q = F.linear(token, *weights[0]).view(1, HEADS, 1, -1)
        keys[:, :, t] = F.linear(token, *weights[1]).view(1, HEADS, -1)
        values[:, :, t] = F.linear(token, *weights[2]).view(1, HEADS, -1)
        context = F.scaled_dot_product_attention(q, keys[:, :, : t + 1], values[:, :, : t + 1])
        return F.linear(context.view(1, 1, HIDDEN), *weights[3])

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    n = args.tokens
    torch.manual_seed(0)
    m = MultiHeadAttention(HIDDEN, HEADS).eval()
    x = torch.randn(1, n, HIDDEN)

    rounds: dict[str, list[list[float]]] = {"cached": [], "bare kernels": [], "recompute": []}
    with torch.inference_mode():
        for _ in range(args.rounds):  # in turns, so a slow spell of the machine hits all three
            cache = m.new_cache(1, n)
            rounds["cached"].append(per_step_times(lambda t, c=cache: m(x[:, t : t + 1], cache=c), n))
            rounds["bare kernels"].append(per_step_times(bare_kernels(m, n, x), n))
            rounds["recompute"].append(per_step_times(lambda t: m(x[:, : t + 1], is_causal=True)[:, -1], n))
    # The round with the median total of each.
    cached, bare, recompute = (sorted(r, key=sum)[len(r) // 2] for r in rounds.values())

    quarter = n // 4
    buckets = [(i * quarter, (i + 1) * quarter) for i in range(4)]
    per_token = {
        f"{a}-{b}": {
            "cached_ms": statistics.median(cached[a:b]) * 1e3,
            "recompute_ms": statistics.median(recompute[a:b]) * 1e3,
        }
        for a, b in buckets
    }
    total_cached, total_recompute = sum(cached), sum(recompute)
    speedup = total_recompute / total_cached
    bare_speedup = total_recompute / sum(bare)
    flatness = per_token[f"{buckets[-1][0]}-{buckets[-1][1]}"]["cached_ms"] / per_token[f"0-{quarter}"]["cached_ms"]

    def cache_bytes(kv_heads: int) -> int:
        c = MultiHeadAttention(HIDDEN, HEADS, num_kv_heads=kv_heads).new_cache(1, n)
        return c.keys.nbytes + c.values.nbytes

    memory = {"num_kv_heads=8": cache_bytes(8), "num_kv_heads=2": cache_bytes(2)}
    shrink = memory["num_kv_heads=8"] / memory["num_kv_heads=2"]
    by_max_len = step_cost_by_max_len(m)
    max_len_ratio = by_max_len[16384] / by_max_len[128]
    gemm = gemm_gflops(torch.float32, 15)
    # A step: four projections of one token (8 h²) and attention over 64 filled positions (4 · 65 · h).
    step_gflops = (8 * HIDDEN**2 + 4 * 65 * HIDDEN) / by_max_len[128] / 1e9
    # The same step reads every projection weight once: 4 h² float32 values.
    step_weight_gbs = 4 * HIDDEN**2 * 4 / by_max_len[128] / 1e9
    targets = {
        "speedup >= 20": speedup >= 20,
        "step at max_len 16384 / at 128 <= 1.3": max_len_ratio <= 1.3,
        "last/first quarter per-token time <= 1.5": flatness <= 1.5,
        "GQA cache 4x smaller": shrink == 4,
    }

    print(f"{n} tokens, MultiHeadAttention({HIDDEN}, {HEADS}), CPU float32\n")
    print_table(
        ["positions", "cached ms/token", "recompute ms/token"],
        [[k, f"{v['cached_ms']:.3f}", f"{v['recompute_ms']:.3f}"] for k, v in per_token.items()],
    )
    print()
    print_table(
        ["measure", "value", "target"],
        [
            ["total, cached", f"{total_cached:.2f} s", ""],
            ["total, recompute", f"{total_recompute:.2f} s", ""],
            ["speedup", f"{speedup:.1f}x", ">= 20: " + ("PASS" if targets["speedup >= 20"] else "FAIL")],
            ["total, bare kernels", f"{sum(bare):.2f} s", f"the floor for eager steps: {bare_speedup:.1f}x"],
            *[[f"step, 64 filled, max_len {n}", f"{t * 1e3:.3f} ms", ""] for n, t in by_max_len.items()],
            [
                "step at max_len 128, of the GEMM",
                f"{step_gflops:.1f} GFLOP/s = {step_gflops / gemm:.1%} of {gemm:.0f}",
                f"weights read at {step_weight_gbs:.1f} GB/s: bound by memory, not FLOPs",
            ],
            [
                "step at max_len 16384 / 128",
                f"{max_len_ratio:.2f}",
                "<= 1.3: " + ("PASS" if targets["step at max_len 16384 / at 128 <= 1.3"] else "FAIL"),
            ],
            [
                "per-token time, last/first quarter",
                f"{flatness:.2f}",
                "PASS" if targets["last/first quarter per-token time <= 1.5"] else "FAIL",
            ],
            ["cache, num_kv_heads=8", f"{memory['num_kv_heads=8'] / 2**20:.2f} MiB", ""],
            [
                "cache, num_kv_heads=2",
                f"{memory['num_kv_heads=2'] / 2**20:.2f} MiB",
                f"{shrink:.0f}x smaller: " + ("PASS" if targets["GQA cache 4x smaller"] else "FAIL"),
            ],
        ],
    )
    path = write_results(
        "decoding",
        {
            "tokens": n,
            "per_token": per_token,
            "total_s": {"cached": total_cached, "recompute": total_recompute},
            "speedup": speedup,
            "bare_kernels": {"total_s": sum(bare), "speedup": bare_speedup},
            "step_ms_by_max_len": {str(n): t * 1e3 for n, t in by_max_len.items()},
            "max_len_ratio": max_len_ratio,
            "gemm_gflops": gemm,
            "step_gflops": step_gflops,
            "step_fraction_of_gemm": step_gflops / gemm,
            "step_weight_gb_per_s": step_weight_gbs,
            "flatness": flatness,
            "cache_bytes": memory,
            "targets": targets,
            "all_targets_met": all(targets.values()),
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
