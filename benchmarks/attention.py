"""Speed and memory of mha.MultiHeadAttention against PyTorch, on this machine's CPU.

Run: ``python benchmarks/attention.py`` (about two minutes on 2 cores).
Prints a table and writes ``benchmarks/results/attention.json``.

Contenders, with the same weights, timed round-robin in one process:

* ``mha``: this package (fused path, no weights);
* ``torch``: ``nn.MultiheadAttention(batch_first=True)`` called with ``need_weights=False``;
* ``bare``: one fused qkv Linear, ``scaled_dot_product_attention``, out Linear.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import torch
from common import BareSDPA, gemm_gflops, interleaved_medians, print_table, self_attention_flops, write_results
from torch import nn

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from mha import from_torch  # noqa: E402

TARGETS = {
    "inference": {"torch": 0.75, "bare": 1.08},
    "training": {"torch": 1.0},
    "memory": {"bare": 1.2},
}


def contenders(hidden: int, heads: int) -> dict[str, nn.Module]:
    theirs = nn.MultiheadAttention(hidden, heads, batch_first=True)
    return {
        "mha": from_torch(theirs),
        "torch": theirs,
        "bare": BareSDPA.from_torch(theirs),
    }


def call(name: str, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if name == "torch":
        return module(x, x, x, need_weights=False)[0]
    return module(x)


def inference(repeats: int) -> dict[str, float]:
    mods = {k: m.eval() for k, m in contenders(768, 12).items()}
    x = torch.randn(1, 2048, 768)
    with torch.inference_mode():
        return interleaved_medians({k: (lambda k=k, m=m: call(k, m, x)) for k, m in mods.items()}, repeats=repeats)


def training(repeats: int) -> dict[str, float]:
    mods = {k: m.train() for k, m in contenders(512, 8).items()}
    x = torch.randn(4, 512, 512)

    def step(name: str, m: nn.Module) -> None:
        m.zero_grad(set_to_none=True)
        call(name, m, x).sum().backward()

    return interleaved_medians({k: (lambda k=k, m=m: step(k, m)) for k, m in mods.items()}, repeats=repeats)


def peak_memory_child(name: str, seq: int) -> None:
    """Run in a fresh process: print the forward's peak resident memory growth in MiB."""
    torch.manual_seed(0)
    module = contenders(768, 12)[name].eval()
    # Peak is the process's high-water mark, measured from the resident memory
    # just before the forward; building the (small) modules stays far below it.
    x = torch.randn(1, seq, 768)
    with torch.inference_mode():
        before = current_rss_kib()
        call(name, module, x)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"peak_mib": (peak - before) / 1024}))


def current_rss_kib() -> int:
    """Resident memory now (not the high-water mark), from /proc/self/statm."""
    pages = int(open("/proc/self/statm").read().split()[1])
    return pages * resource.getpagesize() // 1024


def peak_memory(seq: int) -> dict[str, float]:
    out = {}
    for name in ("mha", "bare"):
        proc = subprocess.run(
            [sys.executable, __file__, "--memory-child", name, "--seq", str(seq)],
            capture_output=True,
            text=True,
            check=True,
        )
        out[name] = json.loads(proc.stdout.strip().splitlines()[-1])["peak_mib"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--seq", type=int, default=16384, help="sequence length of the memory case")
    parser.add_argument("--memory-child", choices=["mha", "bare"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        peak_memory_child(args.memory_child, args.seq)
        return

    torch.manual_seed(0)
    gemm = gemm_gflops(torch.float32, args.repeats)  # the limit, measured in this run
    cases = {
        "inference": ("b=1 s=2048 h=768 n_h=12, forward, ms", inference(args.repeats), 1e3),
        "training": ("b=4 s=512 h=512 n_h=8, forward+backward, ms", training(args.repeats), 1e3),
        "memory": (f"b=1 s={args.seq} h=768 n_h=12, forward peak, MiB", peak_memory(args.seq), 1.0),
    }
    flops = {"inference": self_attention_flops(1, 2048, 768), "training": 3 * self_attention_flops(4, 512, 512)}
    rows, results, ok = [], {}, True
    for case, (desc, values, unit) in cases.items():
        ratios = {f"mha/{ref}": values["mha"] / values[ref] for ref in values if ref != "mha"}
        checks = {f"mha/{ref} <= {limit}": ratios[f"mha/{ref}"] <= limit for ref, limit in TARGETS[case].items()}
        ok &= all(checks.values())
        results[case] = {"description": desc, "values": values, "ratios": ratios, "targets": checks}
        fraction = "-"
        if case in flops:
            results[case]["gflops"] = flops[case] / values["mha"] / 1e9
            results[case]["fraction_of_gemm"] = results[case]["gflops"] / gemm
            fraction = f"{results[case]['gflops']:.0f} GFLOP/s = {results[case]['fraction_of_gemm']:.0%}"
        rows.append(
            [
                case,
                desc,
                *(f"{values[k] * unit:.1f}" if k in values else "-" for k in ("mha", "torch", "bare")),
                ", ".join(f"{k}={v:.2f}" for k, v in ratios.items()),
                fraction,
                "PASS" if all(checks.values()) else "FAIL",
            ]
        )
    print(f"float32 GEMM 2048³ in this run: {gemm:.0f} GFLOP/s\n")
    print_table(["case", "setup", "mha", "torch", "bare", "ratios", "mha of GEMM", "targets"], rows)
    path = write_results("attention", {"gemm_gflops": gemm, "cases": results, "all_targets_met": ok})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
