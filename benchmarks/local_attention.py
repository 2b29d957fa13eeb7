"""Sliding windows, packed documents, ALiBi and the rolling cache: time and peak memory.

Run: ``python benchmarks/local_attention.py`` (``--quick`` for the 4k sizes
only; ``--flex`` adds a compiled ``flex_attention``). Prints tables and
writes ``benchmarks/results/local_attention.json``.

Causal attention, h = 1024: 16 query heads, 4 key/value heads, d = 64, in
float32 and bfloat16, on split heads (``mha.functional.attention``).
Contenders, timed round-robin in one process (medians):

* window 512: ``mha`` blockwise, the same call with a dense ``(s, s)`` band
  mask (``F.scaled_dot_product_attention(attn_mask=...)``), and plain causal
  attention without a window (the unmasked fused call, for memory);
* 16 documents of 1,024 tokens packed in one sequence: ``mha`` with
  ``document_ids``, the dense block-diagonal mask, and the 16 documents as a
  batch;
* ALiBi: ``mha`` against plain causal attention;
* decoding ``4 w`` tokens through a ``RollingKVCache``: per-token time of
  the first and the last quarter, and the cache's bytes.

Peak memory is the growth of the process's resident set during one call
(``VmHWM`` after resetting it through ``/proc/self/clear_refs``), with
glibc told to return every freed tensor to the system, so each call starts
from the same floor. A dense call that would run for minutes on this
machine, or need more memory than a shared machine allows, is skipped with
its estimate, extrapolated as ``s²`` from the largest size that ran.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# Freed tensors go back to the system at once, so a call's peak is its own.
if os.environ.get("MALLOC_MMAP_THRESHOLD_") != "65536":
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    os.execv(sys.executable, [sys.executable, *sys.argv])

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from common import interleaved_medians, machine, print_table, write_results  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mha import MultiHeadAttention  # noqa: E402
from mha.functional import attention  # noqa: E402

N_H, N_KV, D, WINDOW = 16, 4, 64, 512
CAP_SECONDS = 25.0  # skip a call estimated to take longer than this (the whole run must stay short)
DENSE_BYTES = 2 << 30  # or to need a mask larger than this
TARGETS = {
    "window_time": 0.15,
    "window_memory": 1.2,
    "documents_dense": 0.15,
    "documents_batch": 1.2,
    "alibi_time": 1.3,
    "decode_flat": 1.2,
}


def _status(name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(name):
            return int(line.split()[1]) * 1024
    return 0


def peak_bytes(fn) -> int:
    """How far the resident set grows above its level before `fn()` runs."""
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = _status("VmRSS:")
    fn()
    return _status("VmHWM:") - before


def heads(b: int, s: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(s)
    return tuple(torch.randn(b, n, s, D, generator=g).to(dtype) for n in (N_H, N_KV, N_KV))


def sdpa(q, k, v, **kw):
    return F.scaled_dot_product_attention(q, k, v, enable_gqa=True, **kw)


def band(s: int) -> torch.Tensor:
    i = torch.arange(s)
    distance = i[:, None] - i[None]
    return (distance >= 0) & (distance < WINDOW)


# Seconds per unit of work of each contender, from the sizes that ran: work is s² for a
# dense or full causal call, s for a window, so a skipped size gets an estimate.
PER_UNIT: dict[tuple[str, str], float] = {}


def run(
    cases: dict, repeats: int, work: dict[str, int], dtype: torch.dtype
) -> tuple[dict[str, float], dict[str, int], dict[str, str]]:
    """Peak memory (one call each), then interleaved medians; a call estimated above CAP_SECONDS is skipped."""
    skipped = {}
    for name in list(cases):
        estimate = PER_UNIT.get((name, str(dtype)), 0.0) * work[name]
        if estimate > CAP_SECONDS and not name.startswith("mha"):  # mha's own calls always run
            skipped[name] = f"skipped: ~{estimate:.0f} s a call (extrapolated from the smaller size)"
            del cases[name]
    with torch.inference_mode():
        memory, single = {}, {}
        for name, fn in cases.items():
            start = time.perf_counter()
            memory[name] = peak_bytes(fn)
            single[name] = time.perf_counter() - start
        # Repeat what is cheap enough; a long call's single time is its time.
        cheap = {n: fn for n, fn in cases.items() if single[n] * repeats < CAP_SECONDS}
        times = dict(single)
        if cheap:
            times.update(interleaved_medians(cheap, repeats=repeats, warmup=0))
    for name, t in times.items():
        PER_UNIT[(name, str(dtype))] = t / work[name]
    print(f"  {dtype}: " + ", ".join(f"{n} {t * 1e3:.0f} ms" for n, t in times.items()), flush=True)
    return times, memory, skipped


def window_rows(dtype: torch.dtype, lengths: list[int], repeats: int) -> list[dict]:
    return [window_row(dtype, s, repeats) for s in lengths]


def window_row(dtype: torch.dtype, s: int, repeats: int) -> dict:
    q, k, v = heads(1, s, dtype)
    cases = {
        "mha window": lambda: attention(q, k, v, is_causal=True, sliding_window=WINDOW),
        "causal, no window": lambda: sdpa(q, k, v, is_causal=True),
    }
    work = {"mha window": s, "causal, no window": s * s, "dense masked": s * s}
    too_big = s * s > DENSE_BYTES
    if not too_big and PER_UNIT.get(("dense masked", str(dtype)), 0.0) * s * s <= CAP_SECONDS:
        mask = band(s)
        cases["dense masked"] = lambda: sdpa(q, k, v, attn_mask=mask)
    times, memory, skipped = run(cases, repeats, work, dtype)
    if "dense masked" not in times and "dense masked" not in skipped:
        estimate = PER_UNIT.get(("dense masked", str(dtype)), 0.0) * s * s
        skipped["dense masked"] = (
            f"skipped: the (s, s) mask alone would need {s * s / 2**30:.1f} GiB"
            if too_big
            else f"skipped: ~{estimate:.0f} s a call (extrapolated from the smaller size)"
        )
    dense = times.get("dense masked", PER_UNIT.get(("dense masked", str(dtype)), 0.0) * s * s)
    causal = times.get("causal, no window")
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "s": s,
        "times_s": times,
        "peak_bytes": memory,
        "skipped": skipped,
        "dense_estimated": "dense masked" not in times,
        "window_vs_dense": times["mha window"] / dense if dense else None,
        "window_memory_vs_causal": memory["mha window"] / memory["causal, no window"] if causal else None,
        "flex_eager": f"skipped: eager flex_attention materialises n_h·s² scores ({N_H * s * s * 4 / 2**30:.1f} GiB)",
    }


def flex_row(dtype: torch.dtype, s: int, repeats: int) -> dict:
    """flex_attention with a sliding BlockMask, compiled for inference (eager flex materialises the scores)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    q, k, v = heads(1, s, dtype)

    def sliding(b, h, i, j):
        return (i >= j) & (i - j < WINDOW)

    try:
        block_mask = create_block_mask(sliding, None, None, s, s, device="cpu")
        flex = torch.compile(flex_attention)
        start = time.perf_counter()
        with torch.inference_mode():
            flex(q, k, v, block_mask=block_mask, enable_gqa=True)
        compile_s = time.perf_counter() - start
        times, memory, _ = run(
            {
                "flex compiled": lambda: flex(q, k, v, block_mask=block_mask, enable_gqa=True),
                "mha window": lambda: attention(q, k, v, is_causal=True, sliding_window=WINDOW),
            },
            repeats,
            {"flex compiled": s, "mha window": s},
            dtype,
        )
        return {
            "dtype": str(dtype).removeprefix("torch."),
            "s": s,
            "times_s": times,
            "peak_bytes": memory,
            "compile_s": compile_s,
        }
    except Exception as e:  # noqa: BLE001 - reported, not hidden
        return {"dtype": str(dtype).removeprefix("torch."), "s": s, "error": f"{type(e).__name__}: {e}"[:300]}


def documents_row(dtype: torch.dtype, repeats: int) -> dict:
    n, length = 16, 1024
    s = n * length
    q, k, v = heads(1, s, dtype)
    ids = torch.arange(n).repeat_interleave(length)[None]
    batch = tuple(
        t.view(t.shape[1], n, length, D).transpose(0, 1).contiguous() for t in (q, k, v)
    )  # (n, heads, len, d)
    cases = {
        "mha documents": lambda: attention(q, k, v, is_causal=True, document_ids=ids),
        "batch of documents": lambda: sdpa(*batch, is_causal=True),
    }
    # The dense block-diagonal call costs what the dense band mask costs at this length.
    per_unit = PER_UNIT.get(("dense masked", str(dtype)), 0.0)
    if per_unit * s * s <= CAP_SECONDS:
        mask = (ids[0, :, None] == ids[0, None]) & torch.ones(s, s, dtype=torch.bool).tril()
        cases["dense block-diagonal"] = lambda: sdpa(q, k, v, attn_mask=mask)
    times, memory, skipped = run(
        cases, repeats, {"mha documents": s, "batch of documents": s, "dense block-diagonal": s * s}, dtype
    )
    dense = times.get("dense block-diagonal", per_unit * s * s)
    if "dense block-diagonal" not in times:
        skipped["dense block-diagonal"] = (
            f"skipped: ~{dense:.0f} s a call (the dense band mask's time per s², at s={s:,})"
        )
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "s": s,
        "times_s": times,
        "peak_bytes": memory,
        "skipped": skipped,
        "dense_estimated": "dense block-diagonal" not in times,
        "documents_vs_dense": times["mha documents"] / dense if dense else None,
        "documents_vs_batch": times["mha documents"] / times["batch of documents"],
    }


def alibi_row(dtype: torch.dtype, s: int, repeats: int) -> dict:
    q, k, v = heads(1, s, dtype)
    times, memory, skipped = run(
        {
            "mha alibi": lambda: attention(q, k, v, is_causal=True, alibi=True),
            "plain causal": lambda: sdpa(q, k, v, is_causal=True),
        },
        repeats,
        {"mha alibi": s * s, "plain causal": s * s},
        dtype,
    )
    both = "mha alibi" in times and "plain causal" in times
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "s": s,
        "times_s": times,
        "peak_bytes": memory,
        "skipped": skipped,
        "alibi_vs_causal": times["mha alibi"] / times["plain causal"] if both else None,
        "dense_bias_bytes": N_H * s * s * 4,
    }


def decode_row(dtype: torch.dtype, window: int) -> dict:
    torch.manual_seed(0)
    m = MultiHeadAttention(N_H * D, N_H, num_kv_heads=N_KV, sliding_window=window).to(dtype).eval()
    cache = m.new_cache(1)
    steps = 4 * window
    x = torch.randn(1, steps, N_H * D, dtype=dtype)
    per_token = []
    with torch.inference_mode():
        for i in range(steps):
            start = time.perf_counter()
            m(x[:, i : i + 1], cache=cache)
            per_token.append(time.perf_counter() - start)
    quarter = steps // 4
    first = sorted(per_token[:quarter])[quarter // 2]
    last = sorted(per_token[-quarter:])[quarter // 2]
    cache_bytes = sum(t.numel() * t.element_size() for t in (cache.keys, cache.values))
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "window": window,
        "steps": steps,
        "first_quarter_s": first,
        "last_quarter_s": last,
        "last_vs_first": last / first,
        "cache_bytes": cache_bytes,
        "plain_cache_bytes": cache_bytes * steps // (window + 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="4k only: the window at 4k, ALiBi at 4k")
    parser.add_argument("--flex", action="store_true", help="also time a compiled flex_attention at 4k")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lengths", default="4096,16384,32768", help="window lengths, comma-separated")
    parser.add_argument("--cap", type=float, help="skip a contender estimated above this (s)", default=25.0)
    parser.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated, e.g. float32")
    args = parser.parse_args()
    info = machine()
    print(f"CPU: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, {info['torch_threads']} threads")
    start = time.perf_counter()
    globals()["CAP_SECONDS"] = args.cap  # run() reads it
    lengths = [4096] if args.quick else [int(n) for n in args.lengths.split(",")]
    alibi_length = 4096 if args.quick else 16384
    results: dict[str, list] = {"window": [], "flex": [], "documents": [], "alibi": [], "decode": []}
    for dtype in [getattr(torch, name) for name in args.dtypes.split(",")]:
        results["window"] += window_rows(dtype, lengths, args.repeats)
        if args.flex:
            results["flex"].append(flex_row(dtype, 4096, args.repeats))
        results["documents"].append(documents_row(dtype, args.repeats))
        for length in sorted({alibi_length}):
            results["alibi"].append(alibi_row(dtype, length, args.repeats))
        results["decode"].append(decode_row(dtype, WINDOW))
    mib = 2**20

    def ms(r: dict, name: str) -> str:
        return f"{r['times_s'][name] * 1e3:.0f}" if name in r["times_s"] else r["skipped"].get(name, "-")

    def mem(r: dict, name: str) -> str:
        return f"{r['peak_bytes'][name] / mib:.0f}" if name in r["peak_bytes"] else "-"

    def ratio(value: float | None, estimated: bool = False) -> str:
        return "-" if value is None else f"{value:.3f}" + (" (est.)" if estimated else "")

    print(
        f"\nWindow {WINDOW}, causal (target at 16k: <= {TARGETS['window_time']}x dense-masked time, "
        f"<= {TARGETS['window_memory']}x the unmasked call's peak)"
    )
    print_table(
        ["dtype", "s", "mha ms", "dense masked ms", "causal ms", "vs dense", "mha MiB", "causal MiB", "mem ratio"],
        [
            [
                r["dtype"],
                r["s"],
                ms(r, "mha window"),
                ms(r, "dense masked"),
                ms(r, "causal, no window"),
                ratio(r["window_vs_dense"], r["dense_estimated"]),
                mem(r, "mha window"),
                mem(r, "causal, no window"),
                ratio(r["window_memory_vs_causal"]),
            ]
            for r in results["window"]
        ],
    )
    for r in results["flex"]:
        print("flex:", r)
    print(
        f"\n16 documents x 1,024 packed (target: <= {TARGETS['documents_dense']}x dense, "
        f"<= {TARGETS['documents_batch']}x the batch)"
    )
    print_table(
        ["dtype", "mha ms", "batch ms", "dense ms", "vs dense", "vs batch", "mha MiB", "batch MiB"],
        [
            [
                r["dtype"],
                ms(r, "mha documents"),
                ms(r, "batch of documents"),
                ms(r, "dense block-diagonal"),
                ratio(r["documents_vs_dense"], r["dense_estimated"]),
                ratio(r["documents_vs_batch"]),
                mem(r, "mha documents"),
                mem(r, "batch of documents"),
            ]
            for r in results["documents"]
        ],
    )
    print(f"\nALiBi, causal (target: <= {TARGETS['alibi_time']}x plain causal; bounded memory)")
    print_table(
        ["dtype", "s", "mha ms", "causal ms", "ratio", "mha peak MiB", "causal peak MiB", "dense bias MiB"],
        [
            [
                r["dtype"],
                r["s"],
                ms(r, "mha alibi"),
                ms(r, "plain causal"),
                ratio(r["alibi_vs_causal"]),
                mem(r, "mha alibi"),
                mem(r, "plain causal"),
                f"{r['dense_bias_bytes'] / mib:.0f}",
            ]
            for r in results["alibi"]
        ],
    )
    print(f"\nDecoding 4w tokens with a RollingKVCache (target: last/first quarter <= {TARGETS['decode_flat']})")
    print_table(
        ["dtype", "w", "steps", "first ms", "last ms", "ratio", "cache MiB", "plain cache MiB"],
        [
            [
                r["dtype"],
                r["window"],
                r["steps"],
                f"{r['first_quarter_s'] * 1e3:.2f}",
                f"{r['last_quarter_s'] * 1e3:.2f}",
                f"{r['last_vs_first']:.2f}",
                f"{r['cache_bytes'] / mib:.1f}",
                f"{r['plain_cache_bytes'] / mib:.1f}",
            ]
            for r in results["decode"]
        ],
    )
    elapsed = time.perf_counter() - start
    print(f"\n{elapsed:.0f} s")
    path = write_results("local_attention", {"targets": TARGETS, "elapsed_s": elapsed, "quick": args.quick, **results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
