"""One packed matrix product for q, k and v against three separate ones.

Run: ``python benchmarks/packed_projection.py`` (one to three minutes on 2 busy cores).
Prints a table and writes ``benchmarks/results/packed_projection.json``.

Self-attention projects one input three times. ``nn.MultiheadAttention``
stores the three weights as one `(3h, h)` matrix and runs one
``F.linear(x, in_proj_weight, in_proj_bias).chunk(3, -1)``;
``mha.MultiHeadAttention`` keeps three ``nn.Linear`` and runs three products.
This times both, on the same weights, in float32 and bfloat16, for a forward
over a sequence (b=2, s=512, h=512) and for a one-token decoding step (b=1,
s=1, h=512): the median of interleaved repetitions in one process, and the
ratio packed / separate (below 1: packing is faster). Only the projection is
timed; attention and the output projection are the same either way.
"""

from __future__ import annotations

import argparse

import torch
from common import interleaved_medians, machine, print_table, write_results
from torch import Tensor
from torch.nn import functional as F

CASES = {  # name -> (b, s, h)
    "forward": (2, 512, 512),
    "one token": (1, 1, 512),
}
REPEATS = {"forward": 20, "one token": 1000}


def contenders(x: Tensor, weight: Tensor, bias: Tensor) -> dict[str, object]:
    wq, wk, wv = (w.contiguous() for w in weight.chunk(3))  # separate storage, as three nn.Linear hold it
    bq, bk, bv = (b.contiguous() for b in bias.chunk(3))
    return {
        "packed": lambda: F.linear(x, weight, bias).chunk(3, dim=-1),
        "separate": lambda: (F.linear(x, wq, bq), F.linear(x, wk, bk), F.linear(x, wv, bv)),
    }


def check_equal(x: Tensor, weight: Tensor, bias: Tensor) -> None:
    fns = contenders(x, weight, bias)
    for a, b in zip(fns["packed"](), fns["separate"](), strict=True):  # type: ignore[operator]
        torch.testing.assert_close(a, b, atol=1e-2, rtol=1e-2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the repetitions (a smoke run)")
    args = parser.parse_args()
    info = machine()
    print(f"CPU: {info['cpu']}, {info['cores']} cores, {info['torch_threads']} torch threads, torch {info['torch']}")
    rows, results = [], []
    for case, (b, s, h) in CASES.items():
        for dtype in (torch.float32, torch.bfloat16):
            torch.manual_seed(0)
            x = torch.randn(b, s, h, dtype=dtype)
            weight, bias = torch.randn(3 * h, h, dtype=dtype) / h**0.5, torch.randn(3 * h, dtype=dtype)
            check_equal(x, weight, bias)
            repeats = REPEATS[case] // (10 if args.quick else 1)
            with torch.inference_mode():
                times = interleaved_medians(contenders(x, weight, bias), repeats=repeats, warmup=5)  # type: ignore[arg-type]
            ratio = times["packed"] / times["separate"]
            name = f"{case} b={b} s={s} h={h}"
            dtype_name = str(dtype).removeprefix("torch.")
            rows.append(
                [name, dtype_name, f"{times['packed'] * 1e6:.1f}", f"{times['separate'] * 1e6:.1f}", f"{ratio:.2f}"]
            )
            results.append(
                {
                    "case": name,
                    "dtype": dtype_name,
                    "repeats": repeats,
                    "us": {k: t * 1e6 for k, t in times.items()},
                    "packed_over_separate": ratio,
                }
            )
    print_table(["case", "dtype", "packed µs", "3 separate µs", "packed / separate"], rows)
    path = write_results("packed_projection", {"cases": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
