"""gpt-oss attention with sinks inside Transformers at s = 4k: `eager` against `attn_implementation="mha"`.

One attention call as a gpt-oss layer makes it: b=1, s=4096 (or --seq), 16
query heads of 64, 4 key/value heads, a learned sink logit per head, causal
(Transformers' float mask for eager, `None` for mha, as each backend's mask
function gives it). Rows: Transformers' own gpt-oss `eager_attention_forward`
(scores, concatenated sink column, softmax) and `mha.hf.attention_forward`
(fused kernel rescaled by its log-sum-exp). Forward only (inference). Times
are medians of interleaved repetitions in one process; peak memory is the
resident high-water mark of one call in a fresh process, above what the
process held before the call.

    PYTHONPATH=$PWD python3 benchmarks/hf_sinks.py
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from common import interleaved_medians, machine, print_table, write_results
from torch import nn
from transformers.models.gpt_oss.modeling_gpt_oss import eager_attention_forward

import mha.hf

B, N_H, N_KV, D = 1, 16, 4, 64
S = 4096


def rows(dtype: torch.dtype) -> dict[str, Callable[[], object]]:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, N_H, S, D, generator=g).to(dtype)
    k = torch.randn(B, N_KV, S, D, generator=g).to(dtype)
    v = torch.randn(B, N_KV, S, D, generator=g).to(dtype)
    layer = nn.Module()
    layer.sinks = nn.Parameter(torch.randn(N_H, generator=g).to(dtype), requires_grad=False)
    layer.num_key_value_groups, layer.is_causal = N_H // N_KV, True  # type: ignore[assignment]
    layer.eval()
    future = torch.ones(S, S, dtype=torch.bool).triu(1)
    causal_bias = torch.zeros(S, S, dtype=dtype).masked_fill(future, torch.finfo(dtype).min)[None, None]
    scaling = D**-0.5
    return {
        "Transformers gpt-oss eager": lambda: eager_attention_forward(layer, q, k, v, causal_bias, scaling=scaling),
        "mha.hf (fused + lse rescale)": lambda: mha.hf.attention_forward(
            layer, q, k, v, None, scaling=scaling, s_aux=layer.sinks
        ),
    }


def memory_child(name: str, dtype_name: str) -> None:
    """In a fresh process: the peak resident memory growth (MiB) of one call of row `name`.

    Reads the address space's own high-water mark (`VmHWM`), reset before the
    call: `ru_maxrss` would also count the parent's resident size at fork,
    which Linux carries across exec.
    """
    call = rows(getattr(torch, dtype_name))[name]
    with torch.inference_mode():
        with contextlib.suppress(OSError):  # resets VmHWM to the current size (Linux >= 4.0)
            Path("/proc/self/clear_refs").write_text("5")
        before = _status_kib("VmRSS")
        call()
        peak = _status_kib("VmHWM")
    print(json.dumps({"peak_mib": (peak - before) / 1024}))


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_memory(names: list[str], dtype_name: str) -> dict[str, float]:
    out = {}
    for name in names:
        proc = subprocess.run(
            [sys.executable, __file__, "--memory-child", name, "--dtype", dtype_name, "--seq", str(S)],
            capture_output=True,
            text=True,
            check=True,
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
        table = rows(getattr(torch, dtype_name))
        with torch.inference_mode():
            expected = table["Transformers gpt-oss eager"]()[0].float()
            got = table["mha.hf (fused + lse rescale)"]()[0].float()
            delta = (got - expected).abs().max().item()
            times = interleaved_medians(table, repeats=args.repeats, warmup=1)
        memory = peak_memory(list(table), dtype_name)
        eager = times["Transformers gpt-oss eager"]
        printed = [[n, f"{t * 1e3:.0f}", f"{t / eager:.2f}x", f"{memory[n]:.0f}"] for n, t in times.items()]
        print(f"\n{dtype_name}: b={B} s={S} n_h={N_H} n_kv={N_KV} d={D}, causal, sinks; max |Δ| {delta:.2e}")
        print_table(["row", "ms", "vs eager", "peak MiB"], printed)
        results[dtype_name] = {
            "max_abs_delta": delta,
            "rows": {n: {"ms": t * 1e3, "vs_eager": t / eager, "peak_mib": memory[n]} for n, t in times.items()},
        }
    path = write_results("hf_sinks", {"shape": {"b": B, "s": S, "n_h": N_H, "n_kv": N_KV, "d": D}, **results})
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
