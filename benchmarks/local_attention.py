"""Sliding windows, packed documents, ALiBi and the rolling cache: time and peak memory.

Run: ``python benchmarks/local_attention.py`` (``--quick`` for the 4k sizes
only; ``--flex`` adds a compiled ``flex_attention`` at every length; ``--sections``,
``--lengths`` and ``--dtypes`` pick parts, so a long run can be split).
Prints tables and merges its rows into
``benchmarks/results/local_attention.json`` (a row measured again replaces
the old one; the others stay).

Causal attention, h = 1024: 16 query heads, 4 key/value heads, d = 64, in
float32 and bfloat16, on split heads (``mha.functional.attention``).
Contenders, timed round-robin in one process (medians):

* window 512: ``mha`` blockwise, the same call with a dense ``(s, s)`` band
  mask (``F.scaled_dot_product_attention(attn_mask=...)``), and plain causal
  attention without a window (the unmasked fused call, for memory);
* 16 documents of 1,024 tokens packed in one sequence: ``mha`` with
  ``document_ids``, the dense block-diagonal mask, and the 16 documents as a
  batch;
* ``flex_attention`` with a sliding ``BlockMask``: eager (it materialises
  the ``n_h · s²`` scores, so only where they fit in 1 GiB) and compiled
  for inference (``--flex``; the compile time is reported, not timed);
* ALiBi: ``mha`` against plain causal attention (at the window's lengths
  in the same interleaved run as the window, sharing the causal call);
* decoding ``4 w`` tokens through a ``RollingKVCache``: per-token time of
  the first and the last quarter, and the cache's bytes.

Peak memory is the growth of the process's resident set during the first
timed call (``VmHWM`` after resetting it through ``/proc/self/clear_refs``), with
glibc told to return every freed tensor to the system, so each call starts
from the same floor. A dense call that would run for minutes on this
machine, or need more memory than a shared machine allows, is skipped with
its estimate, extrapolated as ``s²`` from the largest size that ran; a call
longer than ``--cap`` seconds runs once (its ``samples`` say so).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

# Freed tensors go back to the system at once, so a call's peak is its own. Decoding alone
# measures no peak (it counts the cache's bytes), and its many small steps would pay a
# fresh mapping for every tensor: it keeps glibc's defaults.
DECODE_ONLY = sys.argv[sys.argv.index("--sections") + 1 :][:1] == ["decode"] if "--sections" in sys.argv else False
if os.environ.get("MALLOC_MMAP_THRESHOLD_") != "65536" and not DECODE_ONLY:
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    os.execv(sys.executable, [sys.executable, *sys.argv])

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from common import RESULTS, machine, print_table, write_results  # noqa: E402

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


# mha's own calls and the calls every ratio divides by always run.
ALWAYS = ("causal, no window", "batch of documents")


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
) -> tuple[dict[str, float], dict[str, int], dict[str, str], dict[str, int]]:
    """Interleaved medians, peak memory from each first call; a call estimated above CAP_SECONDS is skipped.

    A call that took longer than CAP_SECONDS is not repeated: its one time is its time.
    """
    skipped = {}
    for name in list(cases):
        estimate = PER_UNIT.get((name, str(dtype)), 0.0) * work[name]
        if estimate > CAP_SECONDS and name not in ALWAYS and not name.startswith("mha"):
            skipped[name] = f"skipped: ~{estimate:.0f} s a call (extrapolated from the smaller size)"
            del cases[name]
    samples: dict[str, list[float]] = {name: [] for name in cases}
    memory: dict[str, int] = {}
    with torch.inference_mode():
        for rep in range(repeats):
            for name, fn in cases.items():
                if rep and samples[name][0] > CAP_SECONDS:
                    continue
                start = time.perf_counter()
                if rep == 0:
                    memory[name] = peak_bytes(fn)
                else:
                    fn()
                samples[name].append(time.perf_counter() - start)
    times = {name: statistics.median(t) for name, t in samples.items()}
    for name, t in times.items():
        PER_UNIT[(name, str(dtype))] = t / work[name]
    print(f"  {dtype}: " + ", ".join(f"{n} {t * 1e3:.0f} ms" for n, t in times.items()), flush=True)
    return times, memory, skipped, {name: len(t) for name, t in samples.items()}


def sliding_block_mask(s: int):
    from torch.nn.attention.flex_attention import create_block_mask

    def sliding(b, h, i, j):
        return (i >= j) & (i - j < WINDOW)

    return create_block_mask(sliding, None, None, s, s, device="cpu")


def window_row(
    dtype: torch.dtype, s: int, repeats: int, *, flex: bool, alibi: bool, window: bool = True
) -> tuple[dict, dict | None]:
    """The window at `s` against the dense band, flex_attention and the unmasked causal call.

    With `alibi`, ALiBi at `s` joins the same interleaved run (it shares the causal call);
    without `window`, only ALiBi and the causal call run.
    """
    from torch.nn.attention.flex_attention import flex_attention

    q, k, v = heads(1, s, dtype)
    cases = {
        "mha window": lambda: attention(q, k, v, is_causal=True, sliding_window=WINDOW),
        "causal, no window": lambda: sdpa(q, k, v, is_causal=True),
    }
    work = {name: s * s for name in ("causal, no window", "dense masked", "flex eager", "mha alibi")}
    work.update({"mha window": s, "flex compiled": s})
    if alibi:
        cases["mha alibi"] = lambda: attention(q, k, v, is_causal=True, alibi=True)
    if not window:
        times, memory, _, samples = run({n: f for n, f in cases.items() if n != "mha window"}, repeats, work, dtype)
        return {}, _alibi_row(dtype, s, times, memory, samples)
    too_big = s * s > DENSE_BYTES
    if not too_big and PER_UNIT.get(("dense masked", str(dtype)), 0.0) * s * s <= CAP_SECONDS:
        mask = band(s)
        cases["dense masked"] = lambda: sdpa(q, k, v, attn_mask=mask)
    notes = {}
    scores = N_H * s * s * 4
    block_mask = sliding_block_mask(s)
    if scores <= 1 << 30:
        cases["flex eager"] = lambda: flex_attention(q, k, v, block_mask=block_mask, enable_gqa=True)
    else:
        notes["flex eager"] = f"skipped: eager flex_attention materialises n_h·s² scores ({scores / 2**30:.0f} GiB)"
    if flex:
        compiled = torch.compile(flex_attention)
        start = time.perf_counter()
        try:
            with torch.inference_mode():
                compiled(q, k, v, block_mask=block_mask, enable_gqa=True)
            notes["flex compiled"] = f"compiled in {time.perf_counter() - start:.0f} s (not timed)"
            cases["flex compiled"] = lambda: compiled(q, k, v, block_mask=block_mask, enable_gqa=True)
        except Exception as e:  # noqa: BLE001 - reported, not hidden
            notes["flex compiled"] = f"failed: {type(e).__name__}: {e}"[:300]
    else:
        notes["flex compiled"] = "not run (--flex not given)"
    times, memory, skipped, samples = run(cases, repeats, work, dtype)
    if "dense masked" not in times and "dense masked" not in skipped:
        estimate = PER_UNIT.get(("dense masked", str(dtype)), 0.0) * s * s
        skipped["dense masked"] = (
            f"skipped: the (s, s) mask alone would need {s * s / 2**30:.1f} GiB"
            if too_big
            else f"skipped: ~{estimate:.0f} s a call (extrapolated from the smaller size)"
        )
    skipped.update(notes)
    dense = times.get("dense masked", PER_UNIT.get(("dense masked", str(dtype)), 0.0) * s * s)
    causal = times.get("causal, no window")
    mine = times["mha window"]
    row = {
        "dtype": str(dtype).removeprefix("torch."),
        "s": s,
        "times_s": times,
        "samples": samples,
        "peak_bytes": memory,
        "skipped": skipped,
        "dense_estimated": "dense masked" not in times,
        "window_vs_dense": mine / dense if dense else None,
        "window_vs_causal": mine / causal if causal else None,
        "window_vs_flex_eager": mine / times["flex eager"] if "flex eager" in times else None,
        "window_vs_flex_compiled": mine / times["flex compiled"] if "flex compiled" in times else None,
        "window_memory_vs_causal": memory["mha window"] / memory["causal, no window"] if causal else None,
    }
    return row, _alibi_row(dtype, s, times, memory, samples) if alibi else None


def _alibi_row(dtype: torch.dtype, s: int, times: dict, memory: dict, samples: dict) -> dict:
    causal = times.get("causal, no window")
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "s": s,
        "times_s": {n: times[n] for n in ("mha alibi", "causal, no window") if n in times},
        "samples": {n: samples[n] for n in ("mha alibi", "causal, no window") if n in samples},
        "peak_bytes": {n: memory[n] for n in ("mha alibi", "causal, no window") if n in memory},
        "skipped": {},
        "alibi_vs_causal": times["mha alibi"] / causal if causal else None,
        "dense_bias_bytes": N_H * s * s * 4,
    }


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
    times, memory, skipped, samples = run(
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
        "samples": samples,
        "peak_bytes": memory,
        "skipped": skipped,
        "dense_estimated": "dense block-diagonal" not in times,
        "documents_vs_dense": times["mha documents"] / dense if dense else None,
        "documents_vs_batch": times["mha documents"] / times["batch of documents"],
    }


def decode_row(dtype: torch.dtype, window: int) -> dict:
    """Per-token time of the first and the last quarter of `4 w` positions, decoded alternately.

    One cache decodes positions `0 .. w-1`, another (prefilled to `3 w` in one
    chunk, longer than the window) decodes `3 w .. 4 w - 1`, one step each in
    turn: the machine's drift under other jobs falls on both quarters alike.
    """
    torch.manual_seed(0)
    m = MultiHeadAttention(N_H * D, N_H, num_kv_heads=N_KV, sliding_window=window).to(dtype).eval()
    steps = 4 * window
    x = torch.randn(1, steps, N_H * D, dtype=dtype)
    young, late = m.new_cache(1), m.new_cache(1)
    first, last = [], []
    with torch.inference_mode():
        m(x[:, : 3 * window], cache=late)
        for i in range(window):
            for cache, position, times in ((young, i, first), (late, 3 * window + i, last)):
                start = time.perf_counter()
                m(x[:, position : position + 1], cache=cache)
                times.append(time.perf_counter() - start)
    cache_bytes = sum(t.numel() * t.element_size() for t in (late.keys, late.values))
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "window": window,
        "steps": steps,
        "method": "first and last quarter decoded alternately; the last quarter's cache prefilled to 3w in one chunk",
        "first_quarter_s": statistics.median(first),
        "last_quarter_s": statistics.median(last),
        "last_vs_first": statistics.median(last) / statistics.median(first),
        "cache_bytes": cache_bytes,
        "plain_cache_bytes": cache_bytes * steps // (window + 1),
    }


SECTIONS = ("window", "documents", "alibi", "decode")


def merged(old: dict, new: dict[str, list]) -> dict[str, list]:
    """`old`'s rows with `new`'s in place of those of the same case (dtype and s, or dtype and window)."""

    def key(row: dict) -> tuple:
        return (row["dtype"], row.get("s"), row.get("window"))

    out = {}
    for section in SECTIONS:
        rows = {key(r): r for r in old.get(section, [])}
        rows.update({key(r): r for r in new.get(section, [])})
        out[section] = sorted(rows.values(), key=lambda r: (r["dtype"] != "float32", r.get("s") or 0))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="4k only: the window and ALiBi at 4k")
    parser.add_argument(
        "--flex",
        action="store_true",
        help="also time a compiled flex_attention (its compile time is reported, not timed)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lengths", default="4096,16384,32768", help="window lengths, comma-separated")
    parser.add_argument("--alibi-lengths", default="16384", help="ALiBi lengths (among --lengths)")
    parser.add_argument("--cap", type=float, help="skip a contender estimated above this (s)", default=25.0)
    parser.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated, e.g. float32")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated: " + ", ".join(SECTIONS))
    parser.add_argument(
        "--estimate-from-json", action="store_true", help="extrapolate skipped calls from the JSON's rows too"
    )
    args = parser.parse_args()
    info = machine()
    print(f"CPU: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, {info['torch_threads']} threads")
    start = time.perf_counter()
    globals()["CAP_SECONDS"] = args.cap  # run() reads it
    sections = args.sections.split(",")
    lengths = [4096] if args.quick else [int(n) for n in args.lengths.split(",")]
    alibi_lengths = {4096} if args.quick else {int(n) for n in args.alibi_lengths.split(",")}
    if "window" not in sections:
        lengths = sorted(alibi_lengths)
    results: dict[str, list] = {section: [] for section in SECTIONS}
    old = RESULTS / "local_attention.json"
    previous = json.loads(old.read_text()) if old.exists() else {}

    if args.estimate_from_json:  # a split run: the smaller sizes ran in an earlier invocation
        for r in previous.get("window", []):
            for name, t in r["times_s"].items():
                unit = r["s"] if name in ("mha window", "flex compiled") else r["s"] ** 2
                PER_UNIT[(name, f"torch.{r['dtype']}")] = t / unit

    def save() -> None:  # after every row, so a run cut short keeps what it measured
        write_results("local_attention", {"targets": TARGETS, "cap_s": args.cap, **merged(previous, results)})

    for dtype in [getattr(torch, name) for name in args.dtypes.split(",")]:
        if "window" in sections or "alibi" in sections:
            for s in lengths:
                alibi = "alibi" in sections and s in alibi_lengths
                row, alibi_row = window_row(
                    dtype, s, args.repeats, flex=args.flex, alibi=alibi, window="window" in sections
                )
                if "window" in sections:
                    results["window"].append(row)
                if alibi_row is not None:
                    results["alibi"].append(alibi_row)
                save()
        if "documents" in sections:
            results["documents"].append(documents_row(dtype, args.repeats))
            save()
        if "decode" in sections:
            results["decode"].append(decode_row(dtype, WINDOW))
            save()
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
        [
            "dtype",
            "s",
            "mha ms",
            "dense masked ms",
            "causal ms",
            "flex eager ms",
            "flex compiled ms",
            "vs dense",
            "vs causal",
            "mha MiB",
            "causal MiB",
            "mem ratio",
        ],
        [
            [
                r["dtype"],
                r["s"],
                ms(r, "mha window"),
                ms(r, "dense masked"),
                ms(r, "causal, no window"),
                ms(r, "flex eager"),
                ms(r, "flex compiled"),
                ratio(r["window_vs_dense"], r["dense_estimated"]),
                ratio(r["window_vs_causal"]),
                mem(r, "mha window"),
                mem(r, "causal, no window"),
                ratio(r["window_memory_vs_causal"]),
            ]
            for r in results["window"]
        ],
    )
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
                ms(r, "causal, no window"),
                ratio(r["alibi_vs_causal"]),
                mem(r, "mha alibi"),
                mem(r, "causal, no window"),
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
    save()
    print(f"wrote {RESULTS / 'local_attention.json'}")


if __name__ == "__main__":
    main()
