"""float32 against bfloat16 on the CPU's matrix units, measured against a GEMM of the same dtype.

Run: ``python benchmarks/dtypes.py`` (about two minutes on 2 cores). Prints a
table and writes ``benchmarks/results/dtypes.json``.

For each case — a forward pass, a training step (forward + backward) and one
decoding step with 1,024 positions cached — three ways to run: a float32
module, a bfloat16 module, and float32 weights under
``torch.autocast("cpu", dtype=torch.bfloat16)``. Each row gives the time, the
achieved GFLOP/s, and that as a fraction of a 2048³ matrix multiply of the
same dtype timed in the same run: the most this machine's cores do in that
dtype. Forward and training also time a bare SDPA module of the same dtype.
Last, the error of each way against float64, on the same weights and inputs.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext
from pathlib import Path

import torch
from common import BareSDPA, gemm_gflops, interleaved_medians, print_table, self_attention_flops, write_results
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mha import from_torch  # noqa: E402

WAYS = {  # name -> (parameter dtype, autocast)
    "float32": (torch.float32, False),
    "bfloat16": (torch.bfloat16, False),
    "autocast bf16": (torch.float32, True),
}
TARGET = 1.05  # mha in bfloat16 at most this times a bare SDPA module in bfloat16


def modules(hidden: int, heads: int, dtype: torch.dtype) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    theirs = nn.MultiheadAttention(hidden, heads, batch_first=True)
    return {"mha": from_torch(theirs).to(dtype), "bare": BareSDPA.from_torch(theirs).to(dtype)}


def context(autocast: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if autocast else nullcontext()


def forward_case(way: str, repeats: int) -> tuple[dict[str, float], float]:
    dtype, autocast = WAYS[way]
    b, s, h = 1, 2048, 768
    mods = {k: m.eval() for k, m in modules(h, 12, dtype).items()}
    x = torch.randn(b, s, h, dtype=dtype)
    with torch.inference_mode(), context(autocast):
        times = interleaved_medians({k: (lambda m=m: m(x)) for k, m in mods.items()}, repeats=repeats)
    return times, self_attention_flops(b, s, h)


def training_case(way: str, repeats: int) -> tuple[dict[str, float], float]:
    dtype, autocast = WAYS[way]
    b, s, h = 4, 512, 512
    mods = {k: m.train() for k, m in modules(h, 8, dtype).items()}
    x = torch.randn(b, s, h, dtype=dtype)

    def step(m: nn.Module) -> None:
        m.zero_grad(set_to_none=True)
        with context(autocast):
            out = m(x)
        out.float().sum().backward()

    times = interleaved_medians({k: (lambda m=m: step(m)) for k, m in mods.items()}, repeats=repeats)
    return times, 3 * self_attention_flops(b, s, h)


def decoding_case(way: str, repeats: int) -> tuple[dict[str, float], float]:
    dtype, autocast = WAYS[way]
    h, filled = 512, 1024
    m = modules(h, 8, dtype)["mha"].eval()
    with torch.inference_mode(), context(autocast):
        probe = m(torch.randn(1, 1, h, dtype=dtype))  # the dtype attention runs in
        cache = m.new_cache(1, filled + 1, dtype=probe.dtype if autocast else dtype)
        m(torch.randn(1, filled, h, dtype=dtype), cache=cache)
        token = torch.randn(1, 1, h, dtype=dtype)

        def step() -> None:
            m(token, cache=cache)
            cache._length -= 1  # the same step every time: `filled` cached
            cache.position -= 1

        times = interleaved_medians({"mha": step}, repeats=repeats * 20)
    return times, 8 * h * h + 4 * filled * h


def accuracy() -> dict[str, float]:
    """max |out - out_float64| / max |out_float64| for b=2, s=256, h=512, 8 heads."""
    mods = modules(512, 8, torch.float64)
    reference_module = mods["mha"].eval()
    x = torch.randn(2, 256, 512, dtype=torch.float64)
    with torch.inference_mode():
        reference = reference_module(x)
        errors = {}
        for way, (dtype, autocast) in WAYS.items():
            m = modules(512, 8, dtype)["mha"].eval()
            with context(autocast):
                out = m(x.to(dtype)).double()
            errors[way] = ((out - reference).abs().max() / reference.abs().max()).item()
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    gemm = {"float32": gemm_gflops(torch.float32, args.repeats), "bfloat16": gemm_gflops(torch.bfloat16, args.repeats)}
    cases = {
        "forward b=1 s=2048 h=768": forward_case,
        "training b=4 s=512 h=512": training_case,
        "decode step, 1024 cached, h=512": decoding_case,
    }
    rows, results = [], []
    for case, run in cases.items():
        for way in WAYS:
            times, flops = run(way, args.repeats)
            limit = gemm["float32" if way == "float32" else "bfloat16"]
            achieved = flops / times["mha"] / 1e9
            bare = times["mha"] / times["bare"] if "bare" in times else None
            results.append(
                {
                    "case": case,
                    "way": way,
                    "ms": {k: v * 1e3 for k, v in times.items()},
                    "gflops": achieved,
                    "fraction_of_gemm": achieved / limit,
                    "mha_over_bare": bare,
                }
            )
            rows.append(
                [
                    case,
                    way,
                    f"{times['mha'] * 1e3:.2f}",
                    f"{achieved:.0f}",
                    f"{achieved / limit:.0%}",
                    "-" if bare is None else f"{bare:.2f}",
                ]
            )
    errors = accuracy()
    bf16_forward = next(r for r in results if r["case"].startswith("forward") and r["way"] == "bfloat16")
    met = bf16_forward["mha_over_bare"] <= TARGET
    print(
        f"GEMM 2048³: float32 {gemm['float32']:.0f} GFLOP/s, bfloat16 {gemm['bfloat16']:.0f} GFLOP/s "
        f"({gemm['bfloat16'] / gemm['float32']:.1f}x)\n"
    )
    print_table(["case", "dtype", "mha ms", "GFLOP/s", "of GEMM", "mha/bare"], rows)
    print()
    print_table(["dtype", "max error vs float64 (relative)"], [[w, f"{e:.1e}"] for w, e in errors.items()])
    print(
        f"\nmha bfloat16 forward / bare SDPA bfloat16 = {bf16_forward['mha_over_bare']:.2f} "
        f"(target <= {TARGET}: {'PASS' if met else 'FAIL'})"
    )
    path = write_results(
        "dtypes",
        {"gemm_gflops": gemm, "cases": results, "error_vs_float64": errors, "target": TARGET, "all_targets_met": met},
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
