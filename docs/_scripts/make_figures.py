"""Make the site's pictures: attention heatmaps and the performance chart.

Run from the repository root (needs the `docs` extra, for matplotlib):

    python docs/_scripts/make_figures.py                 # pictures and tables
    python docs/_scripts/make_figures.py --tables-only   # the tables, after a benchmark run

Each attention picture comes in two variants, NAME.png and NAME-dark.png, for
the light and dark palettes (the pages show them with #only-light/#only-dark).

Writes docs/assets/images/attention-weights.png,
docs/assets/images/attention-padding.png, docs/assets/images/performance.png
docs/assets/images/context-parallel.png and the tables in docs/_snippets
(performance, decoding, dtypes, hf-decoding, hf-decoding-ratios, hf-decoding-deep and
context-parallel, from
benchmarks/results/*.json; modern-layers from benchmarks/results/modern.json).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no window
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from mha import MultiHeadAttention  # noqa: E402
from mha.masks import padding_mask  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import demo_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "docs" / "assets" / "images"
SNIPPETS = ROOT / "docs" / "_snippets"
RESULTS = ROOT / "benchmarks" / "results"
# The untrained pictures read random vectors, not words: label positions only.
SENTENCE = [f"x{i}" for i in range(8)]  # positions from 0, as in the code
PADDED = SENTENCE[:6] + ["<pad>", "<pad>"]


# Two variants of each attention picture, shown with Material's #only-light and
# #only-dark: transparent, with text in the palette's foreground colour.
SCHEMES = {"": "#1f1f1f", "-dark": "#e2e4e9"}  # file suffix -> text and axis colour
FONT = 15  # points; at dpi 110 a 550-px image shown on a 390-px phone keeps them at ~15 px


# The tables in Chinese: the same numbers, headers and words translated. Each
# table NAME.md gets a NAME.zh.md that the Chinese pages include. Longer
# phrases first, so a phrase is translated before the words inside it.
ZH = [
    # the local-attention footnote, around its --cap (seconds)
    (
        ": medians of interleaved repetitions in one process per length at 4k (a call longer than ",
        "：4k 在一个进程内交错重复测量，取中位数（超过 ",
    ),
    (
        " s ran once), single runs at 16k and 32k; (est.): extrapolated as s² from the smaller length, not run. "
        "Ratios divide by a call of the same dtype measured in the same run.",
        " s 的调用只运行一次），16k 和 32k 每个调用只运行一次；（估计）：由较短长度按 s² 外推，未实际运行。"
        "比值的分母是同一次运行中测得的同一 dtype 的调用。",
    ),
    (
        ": medians of interleaved repetitions in one process per length; a call longer than ",
        "：每个长度在一个进程内交错重复测量，取中位数；超过 ",
    ),
    (
        " s ran once; (est.): extrapolated as s² from the smaller length, not run. Ratios divide by a call of the "
        "same dtype measured in the same run.",
        " s 的调用只运行一次；（估计）：由较短长度按 s² 外推，未实际运行。比值的分母是同一次运行中测得的同一 dtype 的调用。",
    ),
    ("Measured on ", "测于 "),
    (", Python ", "，Python "),
    (
        ": medians of interleaved repetitions, same weights. Times and memory: lower is better; a ratio below 1 means "
        "`mha` takes less. A float32 2048³ GEMM ran at ",
        "：交错重复测量的中位数，权重相同。时间和内存越低越好；比值小于 1 表示 `mha` "
        "用得更少。同一次运行中 float32 2048³ GEMM 的速度为 ",
    ),
    (" GFLOP/s in the same run.", " GFLOP/s。"),
    ("GEMM 2048³ in the same run: ", "同一次运行中的 GEMM 2048³："),
    ("bare SDPA module", "裸 SDPA 模块"),
    ("mha, of the GEMM", "mha 占 GEMM 的比例"),
    ("| inference |", "| 推理 |"),
    ("| training |", "| 训练 |"),
    ("| memory |", "| 内存 |"),
    (", forward peak", "，前向峰值"),
    (", forward+backward", "，前向+反向"),
    (", forward |", "，前向 |"),
    ("one step, of the GEMM", "一步占 GEMM 的比例"),
    ("% of ", "%（GEMM 为 "),
    (": a step reads every weight for a few FLOPs each (", "）：每一步为每个权重只做几次浮点运算（"),
    ("faster than float32", "相对 float32 的加速"),
    ("of the GEMM", "占 GEMM 的比例"),
    ("largest error against float64, relative to the output", "相对 float64 的最大误差（相对输出）"),
    ("decode step, 1024 cached", "解码一步，已缓存 1024"),
    ("| forward b=", "| 前向 b="),
    ("| training b=", "| 训练 b="),
    ("| measure | value |", "| 指标 | 数值 |"),
    (" tokens, KV cache |", " 个词元，KV 缓存 |"),
    (" tokens, recomputing the causal pass |", " 个词元，每步重算因果前向 |"),
    ("speed-up of the cache over recomputing (higher is better)", "缓存相对重算的加速（越高越好）"),
    (" tokens, bare kernels (no module, no checks) |", " 个词元，裸内核（无模块、无检查） |"),
    (" s: ", " s，"),
    (
        "x faster than recomputing, the least an eager step can cost",
        "x（相对重算的加速），是 eager 模式下一步的最低开销",
    ),
    ("one step, 64 positions filled, ", "一步，已填 64 个位置，"),
    (" (1 = the buffer's size costs nothing)", "（1 表示缓冲区大小不影响耗时）"),
    ("step at ", "一步耗时："),
    (" / at 128", " / 128 时"),
    ("), so memory bounds it", "），瓶颈在内存"),
    (
        "per-token time, last quarter of the 512 tokens / first quarter (1 = flat)",
        "每词元耗时：512 个词元的最后四分之一 / 最前四分之一（1 表示不变）",
    ),
    ("cache memory, ", "缓存内存，"),
    (" key/value heads |", " 个键/值头 |"),
    (" (4x smaller)", "（小 4x）"),
    ("| dtype | filled |", "| dtype | 已填 |"),
    ("HF DynamicCache, per layer", "HF DynamicCache，每层"),
    ("mha, per layer", "mha，每层"),
    ("bare kernels", "裸内核"),
    ("bare / dynamic", "裸 / dynamic"),
    (
        "| tokens | layers | set-up | step (lower is better) | speed-up over 1 thread | peak memory per rank | memory / 1 process |",
        "| 词元 | 层数 | 配置 | 每步（越低越好） | 相对 1 线程的加速 | 每个 rank 的峰值内存 | 内存 / 1 进程 |",
    ),
    ("1 process, 1 thread", "1 进程 1 线程"),
    ("1 process, 2 threads", "1 进程 2 线程"),
    ("2 ranks, 1 thread each", "2 个 rank，各 1 线程"),
    (
        "| case | dtype | mha | compared with | mha / compared (lower is better) |",
        "| 情形 | dtype | mha | 对照 | mha / 对照（越低越好） |",
    ),
    (
        "| prompt | cache | mha | mha, mask skipped | SDPA, no mha | mha / mask skipped | mha / SDPA |",
        "| 提示长度 | 缓存长度 | mha | mha，跳过掩码 | SDPA（不用 mha） | mha / 跳过掩码 | mha / SDPA |",
    ),
    ("window 512, s = ", "窗口 512，s = "),
    (", peak memory", "，峰值内存"),
    ("dense band mask ", "稠密带状掩码 "),
    ("unmasked causal call ", "无掩码的因果调用 "),
    ("16 documents × 1,024", "16 个文档 × 1,024"),
    ("dense block-diagonal ", "稠密块对角掩码 "),
    ("not run", "未运行"),
    ("the documents as a batch ", "这些文档作为一批 "),
    ("(est.)", "（估计）"),
    ("plain causal ", "普通因果 "),
    (
        "earlier code: blocks of 256 queries with masks, not re-measured",
        "旧代码：每 256 个查询一块、带掩码，未重新测量",
    ),
    (
        "quarters timed one after the other, while the machine's load drifted",
        "两个四分之一先后计时，期间机器负载有变化",
    ),
    (
        "earlier code: documents copied into the batch, not re-measured",
        "旧代码：文档复制进批次，未重新测量",
    ),
    ("flex_attention, eager ", "flex_attention（eager） "),
    ("flex_attention, compiled ", "flex_attention（编译） "),
    ("ALiBi, s = ", "ALiBi，s = "),
    ("(peak ", "(峰值 "),
    ("; a dense float32 bias: ", "；稠密的 float32 偏置："),
    ("| decoding ", "| 解码 "),
    (" tokens, rolling cache w = ", " 个词元，滚动缓存 w = "),
    ("last quarter ", "最后四分之一 "),
    ("first quarter ", "最前四分之一 "),
    ("ms/token", "ms/词元"),
    ("1024, h=", "1024，h="),
    (", torch ", "，torch "),
    ("| case | setup |", "| 情形 | 配置 |"),
    ("| case | dtype |", "| 情形 | dtype |"),
    ("| dtype | largest", "| dtype | largest"),
]


def _write_table(name: str, text: str, words: list[tuple[str, str]] | None = None) -> None:
    """docs/_snippets/NAME.md and its Chinese twin NAME.zh.md: the same numbers (`words` translated first)."""
    (SNIPPETS / f"{name}.md").write_text(text)
    for en, zh in (words or []) + ZH:
        text = text.replace(en, zh)
    text = re.sub(r" \((\d+) cores\)", r"（\1 核）", text)
    (SNIPPETS / f"{name}.zh.md").write_text(text)


# The charts come in a light and a dark variant, like the attention pictures,
# with 14-pt labels on a 550-px figure: about 12.5 px on a 390-px phone.
CHART_FONT = 14


def _chart_variants(draw, path: Path) -> None:
    """Call draw(say) once per language and palette: NAME.png, NAME-dark.png, NAME-zh.png, NAME-zh-dark.png.

    `say(text)` gives a label in the figure's language (CHART_ZH holds the
    Chinese); the Chinese pages show the -zh files, as for the attention pictures.
    """
    for lang, file_suffix in FILE_SUFFIX.items():

        def say(text: str, lang: str = lang) -> str:
            return text if lang == "en" else CHART_ZH[text]

        for suffix, ink in SCHEMES.items():
            style = {
                "text.color": ink,
                "axes.labelcolor": ink,
                "xtick.color": ink,
                "ytick.color": ink,
                "axes.edgecolor": ink,
                "font.size": CHART_FONT,
                "font.family": CJK_FONTS,
                "legend.facecolor": "none",
                "legend.edgecolor": ink,
                "legend.fontsize": CHART_FONT - 2,
            }
            with plt.rc_context(style):
                fig = draw(say)
                fig.savefig(path.with_name(path.stem + file_suffix + suffix + path.suffix), dpi=100, transparent=True)
                plt.close(fig)


# The charts' words in Chinese, keyed by the English (format strings keep their fields).
CHART_ZH = {
    "inference\nb=1 s=2048 h=768": "推理\nb=1 s=2048 h=768",
    "training step\nb=4 s=512 h=512": "训练一步\nb=4 s=512 h=512",
    "ms (median)": "毫秒（中位数）",
    "Time per call, lower is better": "每次调用的耗时，越低越好",
    "recompute": "重新计算",
    "KV cache": "KV 缓存",
    "generated positions": "已生成的位置",
    "ms per token": "每个词元的毫秒数",
    "Decoding {tokens} tokens:\n{speedup:.1f}x faster with the cache": "解码 {tokens} 个词元：\n有缓存快 {speedup:.1f} 倍",
    "{cores} CPU cores, torch {torch}, float32": "{cores} 个 CPU 核，torch {torch}，float32",
    "seconds per step": "每步秒数",
    "Time per step, lower is better": "每步耗时，越低越好",
    "peak MiB per rank": "每个 rank 的峰值 MiB",
    "Memory per rank, lower is better": "每个 rank 的内存，越低越好",
    "{n:,} tokens\n{layers} layers": "{n:,} 个词元\n{layers} 层",
    "h={hidden}, {heads} heads, {kv_heads} key/value heads; {cores} CPU cores, float32": (
        "h={hidden}，{heads} 个头，{kv_heads} 个键/值头；{cores} 个 CPU 核，float32"
    ),
    "1 process, 1 thread": "1 个进程，1 个线程",
    "1 process, 2 threads": "1 个进程，2 个线程",
    "2 ranks, 1 thread each": "2 个 rank，各 1 个线程",
}


# The attention pictures' words, per language (Chinese side labels stand upright,
# one character under the other, rather than lying on their side); the Chinese pages show NAME-zh.png and NAME-zh-dark.png.
WORDS = {
    "en": {
        "head": "head {h}",
        "key": "key",
        "query": "query",
        "weight": "weight",
        "layer": "{nth} layer\nhead {h}",
        "nth": ["first", "second", "third", "fourth"],
    },
    "zh": {
        "head": "头 {h}",
        "key": "键",
        "query": "查\n询",
        "weight": "权\n重",
        "upright": True,
        "layer": "{nth}层\n头 {h}",
        "nth": ["第一", "第二", "第三", "第四"],
    },
}
FILE_SUFFIX = {"en": "", "zh": "-zh"}
CJK_FONTS = ["DejaVu Sans", "Noto Sans CJK SC"]  # Latin from DejaVu, Chinese from Noto


def heatmaps(weights: torch.Tensor, tokens: list[str], path: Path, layers: int | None = None) -> None:
    """One panel per head of (n_h, s_q, s_kv) weights, two panels a row, light and dark, English and Chinese.

    With `layers`, the panels are layers * heads, titled by layer and head.

    Heads are numbered from 0, as `weights[:, h]` indexes them. Two columns
    rather than one row, a 550-px-wide image and 15-pt labels: a 390-px phone
    shows the picture at about 0.65 of its size, the labels at about 15 px.
    """
    for lang, words in WORDS.items():
        if layers is None:
            titles = [words["head"].format(h=h) for h in range(weights.shape[0])]
        else:
            per_layer = weights.shape[0] // layers
            titles = [
                words["layer"].format(nth=words["nth"][layer], h=h) for layer in range(layers) for h in range(per_layer)
            ]
        for suffix, ink in SCHEMES.items():
            style = {
                "text.color": ink,
                "axes.labelcolor": ink,
                "xtick.color": ink,
                "ytick.color": ink,
                "axes.edgecolor": ink,
                "font.size": FONT,
                "font.family": CJK_FONTS,
            }
            name = path.stem + FILE_SUFFIX[lang] + suffix + path.suffix
            with plt.rc_context(style):
                _heatmap_figure(weights, tokens, path.with_name(name), titles, words)


def _heatmap_figure(weights: torch.Tensor, tokens: list[str], path: Path, titles: list[str], words: dict) -> None:
    n_h = weights.shape[0]
    rows = (n_h + 1) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(5.0, 2.9 * rows), constrained_layout=True, squeeze=False)
    for head, ax in enumerate(axes.flat):
        image = ax.imshow(weights[head], vmin=0.0, vmax=1.0, cmap="viridis")
        ax.set_title(titles[head], fontsize=FONT)
        ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=FONT)
        ax.set_yticks(range(len(tokens)), tokens if head % 2 == 0 else [], fontsize=FONT)
        if head >= n_h - 2:
            ax.set_xlabel(words["key"], fontsize=FONT)
        if head % 2 == 0:
            upright = {"rotation": 0, "ha": "right", "va": "center"} if words.get("upright") else {}
            ax.set_ylabel(words["query"], fontsize=FONT, **upright)
    bar = fig.colorbar(image, ax=axes, shrink=0.6)
    upright = {"rotation": 0, "ha": "left", "va": "center"} if words.get("upright") else {}
    bar.set_label(words["weight"], fontsize=FONT, **upright)
    bar.ax.tick_params(labelsize=FONT - 1)
    bar.outline.set_visible(False)
    fig.savefig(path, dpi=110, transparent=True)
    plt.close(fig)


def trained_figure() -> None:
    """The digit-reversing model's weights (docs/_scripts/demo_model.py) on one input."""
    model = demo_model.load()
    digits = [3, 1, 4, 1, 5, 9, 2, 6]
    with torch.no_grad():
        _, weights = model(torch.tensor([digits]))
    grid = torch.stack([w[0, h] for w in weights for h in range(w.shape[1])])  # (layers * heads, s, s)
    heatmaps(grid, [str(d) for d in digits], IMAGES / "attention-trained.png", layers=len(weights))


def attention_figures() -> None:
    trained_figure()
    torch.manual_seed(0)
    m = MultiHeadAttention(32, 4).eval()
    x = torch.randn(1, len(SENTENCE), 32)
    with torch.no_grad():
        _, causal = m(x, is_causal=True, need_weights=True)
        pad = padding_mask(torch.tensor([6]), len(PADDED))
        _, padded = m(x, mask=pad, need_weights=True)
    heatmaps(causal[0], SENTENCE, IMAGES / "attention-weights.png")
    heatmaps(padded[0], PADDED, IMAGES / "attention-padding.png")


def performance_figures() -> None:
    attention = json.loads((RESULTS / "attention.json").read_text())
    decoding = json.loads((RESULTS / "decoding.json").read_text())
    machine = attention["machine"]
    cases = attention["cases"]

    names = ["mha", "torch", "bare"]
    colors = {
        "mha": "#5c6bc0",
        "torch": "#ee6c4d",
        "bare": "#8d99ae",
    }  # mha: 3 : 1 or more on white and on the dark palette

    def draw(say):
        # One column: two side-by-side panels would shrink every label below legibility on a phone.
        fig, (left, right) = plt.subplots(2, 1, figsize=(5.5, 8), constrained_layout=True)
        for i, case in enumerate(("inference", "training")):
            for j, name in enumerate(names):
                value = cases[case]["values"][name] * 1e3
                left.bar(i + (j - 1) * 0.27, value, 0.25, color=colors[name], label=name if i == 0 else None)
                left.text(i + (j - 1) * 0.27, value, f"{value:.0f}", ha="center", va="bottom")
        left.set_xticks([0, 1], [say("inference\nb=1 s=2048 h=768"), say("training step\nb=4 s=512 h=512")])
        left.set_ylabel(say("ms (median)"))
        left.set_title(say("Time per call, lower is better"))
        left.margins(y=0.15)
        left.legend(loc="upper right")
        buckets = list(decoding["per_token"])
        cached = [decoding["per_token"][b]["cached_ms"] for b in buckets]
        recompute = [decoding["per_token"][b]["recompute_ms"] for b in buckets]
        right.plot(buckets, recompute, "o-", color=colors["torch"], label=say("recompute"))
        right.plot(buckets, cached, "o-", color=colors["mha"], label=say("KV cache"))
        right.tick_params(axis="x", labelrotation=30)
        right.set_xlabel(say("generated positions"))
        right.set_ylabel(say("ms per token"))
        title = say("Decoding {tokens} tokens:\n{speedup:.1f}x faster with the cache")
        right.set_title(title.format(tokens=decoding["tokens"], speedup=decoding["speedup"]))
        right.legend()
        suptitle = say("{cores} CPU cores, torch {torch}, float32").format(
            cores=machine["cores"], torch=machine["torch"]
        )
        fig.suptitle(suptitle, fontsize=CHART_FONT - 1)
        return fig

    _chart_variants(draw, IMAGES / "performance.png")

    rows = [
        "| case | setup | mha | nn.MultiheadAttention | bare SDPA module | mha / torch | mha / bare | mha, of the GEMM |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for case, result in cases.items():
        unit, scale = ("MiB", 1.0) if case == "memory" else ("ms", 1e3)
        values = result["values"]
        cells = [f"{values[k] * scale:.1f} {unit}" if k in values else "—" for k in names]
        ratios = [f"{result['ratios'][r]:.2f}" if r in result["ratios"] else "—" for r in ("mha/torch", "mha/bare")]
        of_gemm = f"{result['gflops']:.0f} GFLOP/s, {result['fraction_of_gemm']:.0%}" if "gflops" in result else "—"
        rows.append(
            f"| {case} | {result['description'].rsplit(',', 1)[0]} | {' | '.join(cells)} | {' | '.join(ratios)} | {of_gemm} |"
        )
    rows.append("")
    rows.append(
        f"Measured on {machine['cpu']} ({machine['cores']} cores), torch {machine['torch']}, "
        f"Python {machine['python']}: medians of interleaved repetitions, same weights. Times and memory: "
        "lower is better; a ratio below 1 means `mha` takes less. "
        f"A float32 2048³ GEMM ran at {attention['gemm_gflops']:.0f} GFLOP/s in the same run."
    )
    _write_table("performance-table", "\n".join(rows) + "\n")

    d = decoding
    decode_rows = [
        "| measure | value |",
        "|---|---|",
        f"| {d['tokens']} tokens, KV cache | {d['total_s']['cached']:.2f} s |",
        f"| {d['tokens']} tokens, recomputing the causal pass | {d['total_s']['recompute']:.2f} s |",
        f"| speed-up of the cache over recomputing (higher is better) | {d['speedup']:.1f}x |",
        f"| {d['tokens']} tokens, bare kernels (no module, no checks) | {d['bare_kernels']['total_s']:.2f} s: "
        f"{d['bare_kernels']['speedup']:.1f}x faster than recomputing, the least an eager step can cost |",
        *(f"| one step, 64 positions filled, `max_len` {n} | {t:.3f} ms |" for n, t in d["step_ms_by_max_len"].items()),
        f"| step at `max_len` 16384 / at 128 (1 = the buffer's size costs nothing) | {d['max_len_ratio']:.2f} |",
        f"| one step, of the GEMM | {d['step_gflops']:.1f} GFLOP/s, {d['step_fraction_of_gemm']:.1%} of {d['gemm_gflops']:.0f}: "
        f"a step reads every weight for a few FLOPs each ({d['step_weight_gb_per_s']:.1f} GB/s), so memory bounds it |",
        f"| per-token time, last quarter of the 512 tokens / first quarter (1 = flat) | {d['flatness']:.2f} |",
        f"| cache memory, 8 key/value heads | {d['cache_bytes']['num_kv_heads=8'] / 2**20:.2f} MiB |",
        f"| cache memory, 2 key/value heads | {d['cache_bytes']['num_kv_heads=2'] / 2**20:.2f} MiB (4x smaller) |",
    ]
    _write_table("decoding-table", "\n".join(decode_rows) + "\n")

    dtypes = json.loads((RESULTS / "dtypes.json").read_text())
    gemm = dtypes["gemm_gflops"]
    dtype_rows = [
        f"GEMM 2048³ in the same run: float32 {gemm['float32']:.0f} GFLOP/s, bfloat16 {gemm['bfloat16']:.0f} GFLOP/s "
        f"({gemm['bfloat16'] / gemm['float32']:.1f}x).",
        "",
        "| case | dtype | mha | faster than float32 | GFLOP/s | of the GEMM | mha / bare SDPA |",
        "|---|---|---|---|---|---|---|",
    ]
    float32_ms = {case["case"]: case["ms"]["mha"] for case in dtypes["cases"] if case["way"] == "float32"}
    for case in dtypes["cases"]:
        bare = "–" if case["mha_over_bare"] is None else f"{case['mha_over_bare']:.2f}"
        faster = f"{float32_ms[case['case']] / case['ms']['mha']:.1f}x"
        dtype_rows.append(
            f"| {case['case']} | {case['way']} | {case['ms']['mha']:.2f} ms | {faster} | {case['gflops']:.0f} | "
            f"{case['fraction_of_gemm']:.0%} | {bare} |"
        )
    dtype_rows += ["", "| dtype | largest error against float64, relative to the output |", "|---|---|"]
    dtype_rows += [f"| {way} | {error:.1e} |" for way, error in dtypes["error_vs_float64"].items()]
    _write_table("dtypes-table", "\n".join(dtype_rows) + "\n")

    hf = json.loads((RESULTS / "hf_decoding.json").read_text())
    hf_rows = [
        "| dtype | filled | mha | HF DynamicCache | HF StaticCache | bare kernels |",
        "|---|---|---|---|---|---|",
    ]
    ratio_rows = [
        "| dtype | filled | mha / dynamic | mha / static | mha / bare | bare / dynamic |",
        "|---|---|---|---|---|---|",
    ]
    for case in hf["cases"]:
        ms, r = case["ms"], case["ratios"]
        hf_rows.append(
            f"| {case['dtype']} | {case['filled']} | {ms['mha']:.3f} ms | {ms['hf dynamic']:.3f} ms | "
            f"{ms['hf static']:.3f} ms | {ms['bare kernels']:.3f} ms |"
        )
        ratio_rows.append(
            f"| {case['dtype']} | {case['filled']} | {r['hf dynamic']:.2f} | "
            f"{r['hf static']:.2f} | {r['bare kernels']:.2f} | {case['bare_ratios']['hf dynamic']:.2f} |"
        )
    _write_table("hf-decoding-ratios-table", "\n".join(ratio_rows) + "\n")
    _write_table("hf-decoding-table", "\n".join(hf_rows) + "\n")
    deep = hf["deep"]
    deep_rows = [
        "| dtype | filled | mha, per layer | HF DynamicCache, per layer | mha / dynamic |",
        "|---|---|---|---|---|",
    ]
    for case in deep["cases"]:
        ms = case["ms_per_layer"]
        deep_rows.append(
            f"| {case['dtype']} | {case['filled']} | {ms['mha']:.3f} ms | {ms['hf dynamic']:.3f} ms | "
            f"{case['ratio']:.2f} |"
        )
    _write_table("hf-decoding-deep-table", "\n".join(deep_rows) + "\n")


def context_parallel_figures() -> None:
    """Step time and peak memory per rank, 1 process against 2 ranks (benchmarks/context_parallel.py)."""
    result = json.loads((RESULTS / "context_parallel.json").read_text())
    machine, cases = result["machine"], result["cases"]
    shapes = list(dict.fromkeys((c["length"], c["layers"]) for c in cases))  # in the benchmark's order
    setups = list(dict.fromkeys(c["setup"] for c in cases))
    colors = ["#8d99ae", "#ee6c4d", "#5c6bc0"]
    by = {(c["length"], c["layers"], c["setup"]): c for c in cases}

    def draw(say):
        fig, axes = plt.subplots(2, 1, figsize=(5.5, 8), constrained_layout=True)
        panels = (
            (axes[0], "seconds", say("seconds per step"), say("Time per step, lower is better")),
            (axes[1], "peak_mib_per_rank", say("peak MiB per rank"), say("Memory per rank, lower is better")),
        )
        for ax, key, label, title in panels:
            for j, setup in enumerate(setups):
                for i, (length, layers) in enumerate(shapes):
                    value = by[(length, layers, setup)][key]
                    x = i + (j - 1) * 0.27
                    ax.bar(x, value, 0.25, color=colors[j], label=say(setup) if i == 0 else None)
                    ax.text(x, value, f"{value:.0f}", ha="center", va="bottom", fontsize=CHART_FONT - 1)
            ax.set_xticks(
                range(len(shapes)),
                [say("{n:,} tokens\n{layers} layers").format(n=n, layers=layers) for n, layers in shapes],
            )
            ax.set_ylabel(label)
            ax.set_title(title)
            ax.margins(y=0.15)
        axes[0].legend(loc="upper right")
        words = say("h={hidden}, {heads} heads, {kv_heads} key/value heads; {cores} CPU cores, float32")
        fig.suptitle(
            words.format(
                hidden=result["hidden"], heads=result["heads"], kv_heads=result["kv_heads"], cores=machine["cores"]
            ),
            fontsize=CHART_FONT - 1,
        )
        return fig

    _chart_variants(draw, IMAGES / "context-parallel.png")

    rows = [
        "| tokens | layers | set-up | step (lower is better) | speed-up over 1 thread | peak memory per rank | memory / 1 process |",
        "|---|---|---|---|---|---|---|",
    ]
    one = {(c["length"], c["layers"]): c["peak_mib_per_rank"] for c in cases if c["setup"] == setups[0]}
    for c in cases:
        rows.append(
            f"| {c['length']:,} | {c['layers']} | {c['setup']} | {c['seconds']:.2f} s | {c['speedup']:.2f}x | "
            f"{c['peak_mib_per_rank']:.0f} MiB | {c['peak_mib_per_rank'] / one[(c['length'], c['layers'])]:.2f} |"
        )
    _write_table("context-parallel-table", "\n".join(rows) + "\n")


def prefill_table() -> None:
    """A static cache's first chunk with and without its mask (benchmarks/hf_static_prefill.py)."""
    result = json.loads((RESULTS / "hf_static_prefill.json").read_text())
    rows = [
        "| prompt | cache | mha | mha, mask skipped | SDPA, no mha | mha / mask skipped | mha / SDPA |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        ms = r["ms"]
        rows.append(
            f"| {r['prompt']:,} | {r['cache']:,} | {ms['mha']:,.0f} ms | {ms['mha, mask skipped']:,.0f} ms | "
            f"{ms['sdpa']:,.0f} ms | {r['mha / mask skipped']:.2f}x | {r['mha / sdpa']:.2f}x |"
        )
    _write_table("hf-static-prefill-table", "\n".join(rows) + "\n")


# The local-attention chart's words, per language.
LOCAL_WORDS = {
    "en": {
        "window": "Window 512, causal: time per call\n(log scale, lower is better)",
        "ms": "ms (median)",
        "mha window": "mha",
        "causal, no window": "unmasked causal call",
        "dense masked": "dense band mask",
        "flex eager": "flex_attention, eager",
        "flex compiled": "flex_attention, compiled",
        "not run": "not run",
        "right": "16 documents × 1,024 packed; ALiBi\n(lower is better)",
        "mha documents": "mha, documents",
        "batch of documents": "the documents as a batch",
        "dense block-diagonal": "dense block-diagonal",
        "mha alibi": "mha, ALiBi",
        "plain causal": "plain causal",
        "setup": "{cpu}, {cores} cores, torch {torch}\n16 heads, 4 key/value heads, d=64",
    },
    "zh": {
        "window": "窗口 512，因果：每次调用的时间\n（对数坐标，越低越好）",
        "ms": "毫秒（中位数）",
        "mha window": "mha",
        "causal, no window": "无掩码的因果调用",
        "dense masked": "稠密带状掩码",
        "flex eager": "flex_attention（eager）",
        "flex compiled": "flex_attention（编译）",
        "not run": "未运行",
        "right": "16 个文档 × 1,024 打包；ALiBi\n（越低越好）",
        "mha documents": "mha，文档",
        "batch of documents": "这些文档作为一批",
        "dense block-diagonal": "稠密块对角掩码",
        "mha alibi": "mha，ALiBi",
        "plain causal": "普通因果",
        "setup": "{cpu}，{cores} 核，torch {torch}\n16 个头，4 个键/值头，d=64",
    },
}


def _causal(r: dict) -> float | None:
    """The unmasked causal call's time of an ALiBi row (named "plain causal" in older results)."""
    t = r["times_s"]
    return t.get("causal, no window", t.get("plain causal"))


def local_attention_figures() -> None:
    """Window, documents and ALiBi against their dense masks and flex_attention (benchmarks/local_attention.py).

    Light and dark, English (local-attention*.png) and Chinese (local-attention-zh*.png).
    """
    result = json.loads((RESULTS / "local_attention.json").read_text())
    machine = result["machine"]
    colors = {
        "mha window": "#5c6bc0",
        "causal, no window": "#8d99ae",
        "dense masked": "#ee6c4d",
        "flex eager": "#2a9d8f",
        "flex compiled": "#e9c46a",
    }
    contenders = list(colors)

    def draw(words: dict):
        # two subfigures: each panel lays out its own labels (the lower one's long labels
        # would otherwise narrow the upper panel too)
        fig = plt.figure(figsize=(6, 15), layout="constrained")
        top, bottom = fig.subfigures(2, 1, height_ratios=[1, 1.25])
        left, right = top.subplots(), bottom.subplots()
        rows = result["window"]
        width = 0.8 / len(contenders)
        for i, r in enumerate(rows):
            for j, name in enumerate(contenders):
                x = i + (j - (len(contenders) - 1) / 2) * width
                if name in r["times_s"]:
                    left.bar(x, r["times_s"][name] * 1e3, width, color=colors[name])
                else:  # a cross in the contender's colour: a rotated word was too small to read
                    left.plot(
                        x, 0.04, "x", color=colors[name], markersize=9, mew=2.5, transform=left.get_xaxis_transform()
                    )
        for name in contenders:
            left.bar(0, 0, 0, color=colors[name], label=words[name])
        left.plot([], [], "x", color="#8d99ae", markersize=9, mew=2.5, linestyle="none", label=words["not run"])
        left.set_xticks(range(len(rows)), [f"{r['dtype']}\ns={r['s'] // 1024}k" for r in rows], fontsize=CHART_FONT - 3)
        left.set_yscale("log")
        left.set_ylabel(words["ms"])
        left.set_title(words["window"], fontsize=CHART_FONT)
        # below the axes: inside, it covered the tallest bars
        left.legend(fontsize=CHART_FONT - 5, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
        left.margins(y=0.3)
        labels, values, kinds = [], [], []
        for r in result["documents"]:
            for name, kind in (
                ("mha documents", "mha window"),
                ("batch of documents", "causal, no window"),
                ("dense block-diagonal", "dense masked"),
            ):
                if name in r["times_s"]:
                    labels.append(f"{words[name]}, {r['dtype']}")
                    values.append(r["times_s"][name] * 1e3)
                    kinds.append(kind)
        for r in result["alibi"]:
            for label, value, kind in (
                ("mha alibi", r["times_s"]["mha alibi"], "mha window"),
                ("plain causal", _causal(r), "causal, no window"),
            ):
                labels.append(f"{words[label]}, s={r['s'] // 1024}k, {r['dtype']}")
                values.append(value * 1e3)
                kinds.append(kind)
        right.barh(range(len(values)), values, color=[colors[k] for k in kinds])
        for i, value in enumerate(values):
            right.text(value, i, f" {value:,.0f}", va="center", fontsize=CHART_FONT - 5)
        right.set_yticks(range(len(labels)), labels, fontsize=CHART_FONT - 5)
        right.invert_yaxis()
        right.set_xscale("log")
        right.set_xlabel(words["ms"])
        right.set_title(words["right"], fontsize=CHART_FONT)
        right.margins(x=0.25)
        fig.suptitle(words["setup"].format(**machine), fontsize=CHART_FONT - 4)
        return fig

    # _chart_variants draws each language with say(english): the Chinese come from LOCAL_WORDS.
    CHART_ZH.update({en: LOCAL_WORDS["zh"][key] for key, en in LOCAL_WORDS["en"].items()})
    _chart_variants(
        lambda say: draw({key: say(en) for key, en in LOCAL_WORDS["en"].items()}), IMAGES / "local-attention.png"
    )
    _write_table("local-attention-table", _local_table(result))


def _note(row: dict) -> str:
    """A row measured with earlier code says so (the JSON's `note`), until a rerun replaces it."""
    return f" ({row['note']})" if row.get("note") else ""


def _local_table(result: dict) -> str:
    """The benchmark's ratios, one row per case (lower is better); estimates and calls not run say so."""

    def ms(r: dict, name: str) -> str:
        return f"{r['times_s'][name] * 1e3:,.0f} ms" if name in r["times_s"] else "not run"

    def ratio(value: float | None, estimated: bool = False) -> str:
        return "-" if value is None else f"{value:.2f}" + (" (est.)" if estimated else "")

    rows = ["| case | dtype | mha | compared with | mha / compared (lower is better) |", "|---|---|---|---|---|"]
    for r in result["window"]:
        case = f"window 512, s = {r['s']:,}"
        rows.append(
            f"| {case} | {r['dtype']} | {ms(r, 'mha window')} | dense band mask {ms(r, 'dense masked')} | "
            f"{ratio(r['window_vs_dense'], r['dense_estimated'])} |"
        )
        rows.append(
            f"| {case} | {r['dtype']} | {ms(r, 'mha window')} | unmasked causal call {ms(r, 'causal, no window')} | "
            f"{ratio(r.get('window_vs_causal'))} |"
        )
        for name, key, label in (
            ("flex eager", "window_vs_flex_eager", "flex_attention, eager"),
            ("flex compiled", "window_vs_flex_compiled", "flex_attention, compiled"),
        ):
            if r.get(key) is not None:
                rows.append(
                    f"| {case} | {r['dtype']} | {ms(r, 'mha window')} | {label} {ms(r, name)} | {ratio(r[key])} |"
                )
        if r["window_memory_vs_causal"] is not None:
            rows.append(
                f"| {case}, peak memory | {r['dtype']} | "
                f"{r['peak_bytes']['mha window'] / 2**20:,.0f} MiB | unmasked causal call "
                f"{r['peak_bytes']['causal, no window'] / 2**20:,.0f} MiB | "
                f"{ratio(r['window_memory_vs_causal'])} |"
            )
    for r in result["documents"]:
        rows.append(
            f"| 16 documents × 1,024{_note(r)} | {r['dtype']} | {ms(r, 'mha documents')} | dense block-diagonal "
            f"{ms(r, 'dense block-diagonal')} | "
            f"{ratio(r['documents_vs_dense'], r['dense_estimated'])} |"
        )
        rows.append(
            f"| 16 documents × 1,024{_note(r)} | {r['dtype']} | {ms(r, 'mha documents')} | the documents as a batch "
            f"{ms(r, 'batch of documents')} | {ratio(r['documents_vs_batch'])} |"
        )
    for r in result["alibi"]:
        peak = r["peak_bytes"].get("mha alibi")
        causal = _causal(r)
        rows.append(
            f"| ALiBi, s = {r['s']:,} (peak {peak / 2**20:,.0f} MiB; a dense float32 bias: "
            f"{r['dense_bias_bytes'] / 2**20:,.0f} MiB){_note(r)} | {r['dtype']} | {ms(r, 'mha alibi')} | plain causal "
            f"{causal * 1e3:,.0f} ms | {ratio(r['alibi_vs_causal'])} |"
        )
    for r in result["decode"]:
        rows.append(
            f"| decoding {r['steps']:,} tokens, rolling cache w = {r['window']} ({r['cache_bytes'] / 2**20:.1f} MiB)"
            f"{_note(r)} "
            f"| {r['dtype']} | last quarter {r['last_quarter_s'] * 1e3:.2f} ms/token | first quarter "
            f"{r['first_quarter_s'] * 1e3:.2f} ms/token | {ratio(r['last_vs_first'])} |"
        )
    machine = result["machine"]
    rows.append("")
    # The long lengths ran each call once: say so only while the JSON shows it.
    long_runs = {
        n for r in result["window"] + result["alibi"] if r["s"] > 4096 for n in r.get("samples", {None: None}).values()
    }
    cap = result.get("cap_s", 25)
    runs = (
        f"medians of interleaved repetitions in one process per length at 4k (a call longer than {cap:g} s ran "
        "once), single runs at 16k and 32k"
        if long_runs == {1}
        else f"medians of interleaved repetitions in one process per length; a call longer than {cap:g} s ran once"
    )
    rows.append(
        f"Measured on {machine['cpu']} ({machine['cores']} cores), torch {machine['torch']}: {runs}; (est.): "
        "extrapolated as s² from the smaller length, not run. Ratios divide by a call of the same dtype measured in "
        "the same run."
    )
    return "\n".join(rows) + "\n"


# benchmarks/modern.py's rows, as the table names them (English, Chinese).
MODERN_ROWS = {
    "plain (fused)": ("attention, no option (fused kernel)", "注意力，不带选项（融合核函数）"),
    "sinks, fused + lse rescale": (
        "sinks: fused kernel, output rescaled by its log-sum-exp",
        "sinks：融合核函数，输出按其 log-sum-exp 缩放",
    ),
    "sinks, math path (mha, query chunks)": (
        "sinks: math path in query chunks",
        "sinks：数学路径，按查询分块",
    ),
    "sinks, Transformers gpt-oss eager (concatenated logit)": (
        "sinks: Transformers' gpt-oss eager (the sink as one more score column)",
        "sinks：Transformers 的 gpt-oss eager（汇点作为多出的一列分数）",
    ),
    "softcap=50, math path in query chunks": (
        "softcap=50: math path in query chunks",
        "softcap=50：数学路径，按查询分块",
    ),
    "layer, plain": ("layer, no option", "整层，不带选项"),
    "layer, sinks": ("layer, sinks=True", "整层，sinks=True"),
    "layer, qk_norm": ("layer, qk_norm=True", "整层，qk_norm=True"),
    "layer, head_dim=128 given": (
        "layer, head_dim=128 given (the default's value)",
        "整层，显式给出 head_dim=128（即默认值）",
    ),
}
MODERN_ZH = [(en, zh) for en, zh in MODERN_ROWS.values()] + [
    (
        "| call | dtype | ms | / the same call without the option (lower is better) | of the GEMM | peak MiB |",
        "| 调用 | dtype | ms | / 不带该选项的同一调用（越低越好） | 占 GEMM 的比例 | 峰值 MiB |",
    ),
    (" query heads of ", " 个查询头，每头宽 "),
    (", attention rows: ", "，注意力行："),
    (", layer rows: ", "，整层行："),
    (" repetitions; ", " 次重复；"),
    (
        " repetitions); a kernel that skips the masked half can pass 100%. ",
        " 次重复）；跳过被遮挡一半的核函数可以超过 100%。",
    ),
    (" GFLOP/s, ", " GFLOP/s，"),
    (" key/value heads, causal, forward only. ", " 个键/值头，因果，只有前向。"),
    ("Measured with benchmarks/modern.py on ", "用 benchmarks/modern.py 测于 "),
    (
        ": medians of interleaved repetitions in one process. Times, ratios and memory: lower is better. ",
        "：同一进程中交错重复测量的中位数。时间、比值和内存都是越低越好。",
    ),
    (
        "Attention rows time `mha.functional.attention` on split heads, layer rows a whole `MultiHeadAttention`; "
        "a ratio divides by the first row of its kind, without the option. ",
        "注意力行测的是拆好头的 `mha.functional.attention`，整层行测的是整个 `MultiHeadAttention`；"
        "比值除以同类中不带选项的第一行。",
    ),
    (
        "Of the GEMM: the row's FLOPs, the causal scores counted in full, per second, over a same-dtype 2048³ "
        "GEMM's in the same run (",
        "占 GEMM 的比例：该行每秒的浮点运算数（因果的分数按全部计算）除以同一次运行中同 dtype 的 2048³ GEMM 的速度（",
    ),
    ("); a kernel that skips the masked half can pass 100%. ", "）；跳过被遮挡一半的核函数可以超过 100%。"),
    (
        "Peak MiB: the most resident memory above what the process held before the call, sampled every millisecond.",
        "峰值 MiB：调用期间常驻内存比调用前多出的最大值，每毫秒采样一次。",
    ),
]


def modern_table() -> None:
    """Sinks, soft-capping, q/k-norm and head_dim against the same call without them (benchmarks/modern.py)."""
    if not (RESULTS / "modern.json").exists():  # not measured yet: the guide shows no table
        return
    _write_table("modern-layers-table", _modern_table(json.loads((RESULTS / "modern.json").read_text())), MODERN_ZH)


def _modern_table(result: dict) -> str:
    shape, machine = result["shape"], result["machine"]
    dtypes = [dtype for dtype in ("float32", "bfloat16") if dtype in result]
    rows = [
        "| call | dtype | ms | / the same call without the option (lower is better) | of the GEMM | peak MiB |",
        "|---|---|---|---|---|---|",
    ]
    for dtype in dtypes:
        for name, row in result[dtype]["rows"].items():
            peak = "–" if row["peak_mib"] is None else f"{row['peak_mib']:,.0f}"
            ratio = "–" if name in ("plain (fused)", "layer, plain") else f"{row['vs_baseline']:.2f}x"
            label = MODERN_ROWS.get(name, (name,))[0]
            rows.append(f"| {label} | {dtype} | {row['ms']:,.0f} | {ratio} | {row['of_gemm']:.0%} | {peak} |")
    gemm = "; ".join(
        f"{dtype}, {kind} rows: {row['gemm_gflops']:.0f} GFLOP/s, {row['repeats']} repetitions"
        for dtype in dtypes
        for kind, row in (
            ("attention", result[dtype]["rows"].get("plain (fused)")),
            ("layer", result[dtype]["rows"].get("layer, plain")),
        )
        if row is not None and "gemm_gflops" in row
    )
    rows += [
        "",
        f"b={shape['b']}, s={shape['s']:,}, h={shape['h']:,}, {shape['n_h']} query heads of {shape['d']}, "
        f"{shape['n_kv']} key/value heads, causal, forward only. "
        f"Measured with benchmarks/modern.py on {machine['cpu']} ({machine['cores']} cores), torch {machine['torch']}"
        ": medians of interleaved repetitions in one process. Times, ratios and memory: lower is better. "
        "Attention rows time `mha.functional.attention` on split heads, layer rows a whole `MultiHeadAttention`; "
        "a ratio divides by the first row of its kind, without the option. "
        "Of the GEMM: the row's FLOPs, the causal scores counted in full, per second, over a same-dtype 2048³ "
        f"GEMM's in the same run ({gemm}); a kernel that skips the masked half can pass 100%. "
        "Peak MiB: the most resident memory above what the process held before the call, sampled every millisecond.",
    ]
    return "\n".join(rows) + "\n"


def main(tables_only: bool = False) -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    SNIPPETS.mkdir(parents=True, exist_ok=True)
    if not tables_only:  # the pictures need matplotlib and the demo model; the tables only the JSON
        attention_figures()
    performance_figures()
    context_parallel_figures()
    local_attention_figures()
    modern_table()
    prefill_table()
    print(f"wrote figures to {IMAGES} and tables to {SNIPPETS}")


if __name__ == "__main__":
    main(tables_only="--tables-only" in sys.argv[1:])
