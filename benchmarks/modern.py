"""Options of today's layers at s = 4k: sinks, soft-capping, q/k-norm, head_dim, on this machine's CPU.

b=1, s=4096 (or --seq), h=2048, 16 query heads of 128, 4 key/value heads, causal, forward
only (inference). Attention rows time `mha.functional.attention` on split
heads; layer rows time a whole `mha.MultiHeadAttention`. Times are medians of
interleaved repetitions in one process; "of GEMM" is the row's nominal FLOP
rate (causal counted in full) over a same-dtype 2048³ matrix product measured
in the same run. Peak memory is the most resident memory during one call (sampled
every 0.5 ms) in a fresh process, above what the process held before the call.

Targets: sinks <= 1.05x the same call without sinks; qk_norm <= 1.10x.

    PYTHONPATH=$PWD python3 benchmarks/modern.py            # s = 4096
    PYTHONPATH=$PWD python3 benchmarks/modern.py --seq 1024 # what a loaded 2-core machine can do in minutes
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import torch
from common import gemm_gflops, interleaved_medians, machine, print_table, write_results
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
            lambda: attention(q, k, v, is_causal=True, sinks=sinks, backend="math"), attend_flops
        ),
        "sinks, Transformers gpt-oss eager (concatenated logit)": (
            lambda: eager(holder, q, k, v, causal_bias, D**-0.5), attend_flops
        ),
        f"softcap={SOFTCAP:g}, math path in query chunks": (
            lambda: attention(q, k, v, is_causal=True, softcap=SOFTCAP), attend_flops
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


def memory_child(name: str, dtype_name: str) -> None:
    """In a fresh process: the peak resident memory growth (MiB) of one call of row `name`."""
    call = rows(getattr(torch, dtype_name))[name][0]
    # The process's high-water mark (ru_maxrss) may come from setting up every row;
    # a thread samples the resident memory during this call instead.
    peak, done = [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _current_rss_kib())
            time.sleep(0.0005)

    with torch.inference_mode():
        before = _current_rss_kib()
        sampler = threading.Thread(target=sample)
        sampler.start()
        call()
        done.set()
        sampler.join()
    print(json.dumps({"peak_mib": (max(peak[0], _current_rss_kib()) - before) / 1024}))


def _current_rss_kib() -> int:
    pages = int(open("/proc/self/statm").read().split()[1])
    return pages * resource.getpagesize() // 1024


def peak_memory(names: list[str], dtype_name: str) -> dict[str, float]:
    out = {}
    for name in names:
        proc = subprocess.run(
            [sys.executable, __file__, "--memory-child", name, "--dtype", dtype_name, "--seq", str(S)],
            capture_output=True, text=True, check=True,
        )
        out[name] = json.loads(proc.stdout.strip().splitlines()[-1])["peak_mib"]
    return out


def main() -> None:
    global S
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    parser.add_argument("--seq", type=int, default=S, help="sequence length s")
    args = parser.parse_args()
    S = args.seq
    if args.memory_child:
        memory_child(args.memory_child, args.dtype)
        return
    info = machine()
    print(f"CPU: {info['cpu']} ({info['cores']} cores, {info['torch_threads']} torch threads), torch {info['torch']}")
    results: dict[str, object] = {}
    for dtype_name in ("float32", "bfloat16"):
        dtype = getattr(torch, dtype_name)
        table = rows(dtype)
        with torch.inference_mode():
            times = interleaved_medians({n: c for n, (c, _) in table.items()}, repeats=args.repeats, warmup=1)
        gemm = gemm_gflops(dtype, repeats=args.repeats)
        memory = peak_memory(list(table), dtype_name) if dtype_name == "float32" else {}
        printed, saved = [], {}
        for name, (_, flops) in table.items():
            ratio = times[name] / times[BASELINES[name]] if name in BASELINES else 1.0
            fraction = flops / times[name] / 1e9 / gemm
            target = TARGETS.get(name)
            mib = memory.get(name)
            printed.append([
                name, f"{times[name] * 1e3:.0f}", f"{ratio:.2f}x" + (f" (target {target:.2f}x)" if target else ""),
                f"{fraction:.2f}", "-" if mib is None else f"{mib:.0f}",
            ])
            saved[name] = {"ms": times[name] * 1e3, "vs_baseline": ratio, "of_gemm": fraction, "peak_mib": mib}
        print(f"\n{dtype_name}: b={B} s={S} h={H} n_h={N_H} n_kv={N_KV} d={D}, causal; GEMM {gemm:.0f} GFLOP/s")
        print_table(["row", "ms", "vs without", "of GEMM", "peak MiB"], printed)
        results[dtype_name] = {"gemm_gflops": gemm, "rows": saved}
    path = write_results("modern", {"shape": {"b": B, "s": S, "h": H, "n_h": N_H, "n_kv": N_KV, "d": D}, **results})
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
