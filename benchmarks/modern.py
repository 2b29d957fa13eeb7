"""Options of today's layers at s = 4k: sinks, soft-capping, q/k-norm, head_dim, on this machine's CPU.

b=1, s=4096 (or --seq), h=2048, 16 query heads of 128, 4 key/value heads, causal, forward
only (inference). Attention rows time `mha.functional.attention` on split
heads; layer rows time a whole `mha.MultiHeadAttention`. Times are medians of
interleaved repetitions in one process;
"of GEMM" is the row's nominal FLOP
rate (causal counted in full) over a same-dtype 2048³ matrix product measured
in the same run. Peak memory is the most resident memory during a row's call
(a thread samples /proc/self/statm every millisecond), above what the process
held just before that call, the largest over its repetitions. So that freed
blocks leave the resident set at once, the script re-runs itself with glibc's
`MALLOC_MMAP_THRESHOLD_` fixed at 128 KiB (every larger block is its own
mapping, unmapped when freed): an earlier row's freed memory cannot be reused
unseen by a later one.

Targets: sinks <= 1.05x the same call without sinks; qk_norm <= 1.10x.

    PYTHONPATH=$PWD python3 benchmarks/modern.py            # s = 4096
    PYTHONPATH=$PWD python3 benchmarks/modern.py --seq 1024 # what a loaded 2-core machine can do in minutes
    PYTHONPATH=$PWD python3 benchmarks/modern.py --repeats 1 --warmup 0  # s = 4096 both dtypes in ~10 min there
    PYTHONPATH=$PWD python3 benchmarks/modern.py --dtype float32  # one dtype; the other's rows stay in the JSON
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable

import torch
from common import RESULTS, gemm_gflops, machine, print_table, write_results
from torch import nn

from mha import MultiHeadAttention
from mha.functional import attention

B, H, N_H, N_KV, D = 1, 2048, 16, 4, 128
S = 4096  # the length; --seq sets it (on a loaded 2-core machine one float32 call at 4096 takes ~12 s)
SOFTCAP = 50.0
TARGETS = {"sinks, fused + lse rescale": 1.05, "layer, sinks": 1.05, "layer, qk_norm": 1.10}


def _eager_with_sinks() -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """Transformers' gpt-oss `eager_attention_forward` (concatenated sink logit), or None without transformers."""
    from transformers.models.gpt_oss.modeling_gpt_oss import eager_attention_forward

    return eager_attention_forward


def rows(dtype: torch.dtype) -> dict[str, tuple[Callable[[], object], float]]:
    """Name -> (call, nominal FLOPs)."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, N_H, S, D, generator=g).to(dtype)
    k = torch.randn(B, N_KV, S, D, generator=g).to(dtype)
    v = torch.randn(B, N_KV, S, D, generator=g).to(dtype)
    sinks = torch.randn(N_H, generator=g).to(dtype)
    attend_flops = 4 * B * S * S * N_H * D
    eager = _eager_with_sinks()
    holder = nn.Module()
    holder.sinks, holder.num_key_value_groups, holder.training = sinks, N_H // N_KV, False  # type: ignore[assignment]
    causal_bias = torch.zeros(S, S, dtype=dtype).masked_fill(torch.ones(S, S, dtype=torch.bool).triu(1), float("-inf"))
    causal_bias = causal_bias[None, None]

    def layer(**options: object) -> Callable[[], object]:
        torch.manual_seed(0)
        m = MultiHeadAttention(H, N_H, num_kv_heads=N_KV, bias=False, dtype=dtype, **options).eval()  # type: ignore[arg-type]
        if m.attention.sinks is not None:
            with torch.no_grad():
                m.attention.sinks.normal_()
        x = torch.randn(B, S, H, generator=g).to(dtype)
        return lambda: m(x, is_causal=True)

    layer_flops = 2 * B * S * H * (2 * N_H * D + 2 * N_KV * D) + attend_flops
    return {
        "plain (fused)": (lambda: attention(q, k, v, is_causal=True), attend_flops),
        "sinks, fused + lse rescale": (lambda: attention(q, k, v, is_causal=True, sinks=sinks), attend_flops),
        "sinks, math path (mha, query chunks)": (
            lambda: attention(q, k, v, is_causal=True, sinks=sinks, backend="math"),
            attend_flops,
        ),
        "sinks, Transformers gpt-oss eager (concatenated logit)": (
            lambda: eager(holder, q, k, v, causal_bias, D**-0.5),
            attend_flops,
        ),
        f"softcap={SOFTCAP:g}, math path in query chunks": (
            lambda: attention(q, k, v, is_causal=True, softcap=SOFTCAP),
            attend_flops,
        ),
        "layer, plain": (layer(), layer_flops),
        "layer, sinks": (layer(sinks=True), layer_flops),
        "layer, qk_norm": (layer(qk_norm=True), layer_flops),
        "layer, head_dim=128 given": (layer(head_dim=128), layer_flops),
    }


BASELINES = {
    "sinks, fused + lse rescale": "plain (fused)",
    "sinks, math path (mha, query chunks)": "plain (fused)",
    "sinks, Transformers gpt-oss eager (concatenated logit)": "plain (fused)",
    f"softcap={SOFTCAP:g}, math path in query chunks": "plain (fused)",
    "layer, sinks": "layer, plain",
    "layer, qk_norm": "layer, plain",
    "layer, head_dim=128 given": "layer, plain",
}


MMAP_THRESHOLD = str(128 * 1024)


def _current_rss_kib() -> int:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() // 1024


def timed_with_peaks(
    fns: dict[str, Callable[[], object]], *, repeats: int, warmup: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Median seconds of interleaved calls, and each row's peak resident growth (MiB) over its calls."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    peaks = dict.fromkeys(fns, 0.0)
    for _ in range(repeats):
        for name, fn in fns.items():
            peak, done = [0], threading.Event()

            def sample(peak: list[int] = peak, done: threading.Event = done) -> None:
                while not done.is_set():
                    peak[0] = max(peak[0], _current_rss_kib())
                    time.sleep(0.001)

            before = _current_rss_kib()
            sampler = threading.Thread(target=sample)
            sampler.start()
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
            done.set()
            sampler.join()
            peaks[name] = max(peaks[name], (max(peak[0], _current_rss_kib()) - before) / 1024)
    return {name: statistics.median(t) for name, t in samples.items()}, peaks


def _earlier_results(shape: dict[str, int]) -> dict[str, object]:
    """The dtypes of benchmarks/results/modern.json measured at this shape, to keep beside a run of the other."""
    path = RESULTS / "modern.json"
    if not path.exists():
        return {}
    saved = json.loads(path.read_text())
    if saved.get("shape") != shape:
        return {}
    return {k: v for k, v in saved.items() if k in ("float32", "bfloat16")}


def _group(name: str) -> str:
    return "layer" if name.startswith("layer") else "attention"


def _merged(earlier: dict[str, object], new: dict[str, dict]) -> dict[str, object]:
    """`new`'s rows over `earlier`'s, per dtype and row, in the rows' order; the newest GEMM rate."""
    merged = dict(earlier)
    for dtype_name, result in new.items():
        old = earlier.get(dtype_name)
        rows_before = old["rows"] if isinstance(old, dict) else {}
        combined = {**rows_before, **result["rows"]}
        order = sorted(combined, key=lambda n: (_group(n) == "layer", n not in BASELINES.values()))
        merged[dtype_name] = {**result, "rows": {n: combined[n] for n in order}}
    return merged


def main() -> None:
    global S
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls of each row first")
    parser.add_argument("--seq", type=int, default=S, help="sequence length s")
    parser.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "both"],
        default="both",
        help="one dtype per run fits a loaded machine's ten minutes; its rows replace that dtype's in the JSON",
    )
    parser.add_argument(
        "--group",
        choices=["attention", "layer", "all"],
        default="all",
        help="only the attention rows or only the layer rows (each holds its own baseline); the others stay in the JSON",
    )
    args = parser.parse_args()
    S = args.seq
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") != MMAP_THRESHOLD:
        # Fixed (not glibc's adaptive threshold): large freed blocks go back to the system.
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    info = machine()
    print(f"CPU: {info['cpu']} ({info['cores']} cores, {info['torch_threads']} torch threads), torch {info['torch']}")
    results: dict[str, object] = {}
    for dtype_name in ("float32", "bfloat16") if args.dtype == "both" else (args.dtype,):
        dtype = getattr(torch, dtype_name)
        table = {n: r for n, r in rows(dtype).items() if args.group in ("all", _group(n))}
        with torch.inference_mode():
            times, memory = timed_with_peaks(
                {n: c for n, (c, _) in table.items()}, repeats=args.repeats, warmup=args.warmup
            )
        gemm = gemm_gflops(dtype, repeats=max(3, args.repeats))
        printed, saved = [], {}
        for name, (_, flops) in table.items():
            ratio = times[name] / times[BASELINES[name]] if name in BASELINES else 1.0
            fraction = flops / times[name] / 1e9 / gemm
            target = TARGETS.get(name)
            mib = memory.get(name)
            printed.append(
                [
                    name,
                    f"{times[name] * 1e3:.0f}",
                    f"{ratio:.2f}x" + (f" (target {target:.2f}x)" if target else ""),
                    f"{fraction:.2f}",
                    "-" if mib is None else f"{mib:.0f}",
                ]
            )
            saved[name] = {
                "ms": times[name] * 1e3,
                "vs_baseline": ratio,
                "of_gemm": fraction,
                "peak_mib": mib,
                # Per row: a run of one --group keeps the other group's rows, measured in another run.
                "gemm_gflops": gemm,
                "repeats": args.repeats,
            }
        print(f"\n{dtype_name}: {args.repeats} interleaved repetitions, {args.warmup} warm-up")
        print(f"{dtype_name}: b={B} s={S} h={H} n_h={N_H} n_kv={N_KV} d={D}, causal; GEMM {gemm:.0f} GFLOP/s")
        print_table(["row", "ms", "vs without", "of GEMM", "peak MiB"], printed)
        runs = {"repeats": args.repeats, "warmup": args.warmup}
        results[dtype_name] = {"gemm_gflops": gemm, "runs": runs, "rows": saved}
    shape = {"b": B, "s": S, "h": H, "n_h": N_H, "n_kv": N_KV, "d": D}
    path = write_results("modern", {"shape": shape, **_merged(_earlier_results(shape), results)})
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
