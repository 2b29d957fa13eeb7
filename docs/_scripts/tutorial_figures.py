"""Draw the tutorial's figures as SVG, in English and Chinese.

Run from the repository root:

    python docs/_scripts/tutorial_figures.py

Writes docs/_snippets/figures/{flow,heads,masks,parallelism}.{en,zh}.html: a <figure>
holding an inline SVG. The pages include them with pymdownx.snippets, so
the drawings take their colours from the site's stylesheet
(docs/assets/stylesheets/extra.css, classes `fig-*`) and follow the light
and dark palettes. The drawings are narrow (viewBox 360 wide) so that on a
390-px phone their text stays at about its set size.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "_snippets" / "figures"
WIDTH = 360
# The head-split figure draws the tutorial's own example (docs/tutorial*.md, §2.2:
# `hidden_size, num_heads = 8, 2`); tests/site/test_tutorial.py checks that they agree.
HIDDEN_SIZE, NUM_HEADS = 8, 2
HEAD_DIM = HIDDEN_SIZE // NUM_HEADS

TEXT = {
    "en": {
        "flow_title": "One MultiHeadAttention call, with the shape of every tensor",
        "flow_caption": "Data flow of <code>MultiHeadAttention(hidden_size, num_heads, dropout)</code> on an input of shape <code>(b, s, h)</code>.",
        "input": "input x",
        "split": "split heads",
        "scores": "softmax(q kᵀ / √d)",
        "weights": "weights",
        "context": "weights @ v",
        "context_name": "context",
        "merge": "merge heads",
        "output": "output",
        "heads_title": "Splitting h into heads and merging them back",
        "heads_caption": "The example below: <code>h = {h}</code> features cut into <code>n_h = {n_h}</code> heads of width <code>d = {d}</code>; head 1 holds features {first}–{last}. Each head attends on its own slice, and the contexts are concatenated back to width <code>h</code>.",
        "one_token": "one token: h = {h} features",
        "head": "head",
        "concat": "concatenated: h = {h} again",
        "masks_title": "Padding, causal and combined masks",
        "masks_caption": "Boolean masks for 5 tokens of which the last 2 are padding. A filled cell is True: the query (row) <em>may attend</em> to the key (column).",
        "padding": "padding",
        "causal": "causal",
        "combined": "combined",
        "rows": "query ↓  key →",
        "parallelism_title": "Who holds what on 2 ranks: data, tensor and context parallelism",
        "parallelism_caption": "Two ranks (colours). <b>Data parallel</b>: each rank takes whole sequences of the batch. <b>Tensor parallel</b>: each rank computes some heads of every token. <b>Context parallel</b>: each rank holds zig-zag chunks of one sequence; in the causal score matrix below, a cell is coloured by the rank whose query it is, and both ranks compute 18 of the 36 cells.",
        "rank": "rank",
        "dp": "data parallel: the batch",
        "dp_0": "rank 0: sequences 0–1",
        "dp_1": "rank 1: sequences 2–3",
        "dp_w": "weights: all on each",
        "tp": "tensor parallel: the heads",
        "tp_0": "rank 0: heads 0–1",
        "tp_1": "rank 1: heads 2–3",
        "tp_w": "weights: split by head",
        "cp": "context parallel: the sequence",
        "cp_0": "rank 0: tokens 0–1, 6–7",
        "cp_1": "rank 1: tokens 2–5",
        "cp_w": "weights: all on each",
        "cp_scores": "causal scores:",
        "cp_scores_2": "18 cells each",
        "tokens": "tokens →",
        "local_title": "A sliding window, packed documents and ALiBi",
        "local_caption": "Eight positions, causal. <b>Window</b> <code>sliding_window=3</code>: each query sees its last 3 positions, its own included. <b>Documents</b> <code>document_ids</code> of lengths 3, 2, 3: a block diagonal. <b>ALiBi</b>: no key is blocked; the shade is the weight factor <code>exp(−m·(i−j))</code> of the bias, for the first and the last of 4 heads (<code>m = 1/4</code> and <code>1/256</code>).",
        "band": "window w = 3",
        "documents": "documents 3 + 2 + 3",
        "alibi_0": "ALiBi, head 0: m = 1/4",
        "alibi_3": "ALiBi, head 3: m = 1/256",
    },
    "zh": {
        "flow_title": "一次 MultiHeadAttention 调用，标出每个张量的形状",
        "flow_caption": "<code>MultiHeadAttention(hidden_size, num_heads, dropout)</code> 处理形状为 <code>(b, s, h)</code> 的输入时的数据流。",
        "input": "输入 x",
        "split": "拆分注意力头",
        "scores": "softmax(q kᵀ / √d)",
        "weights": "注意力权重",
        "context": "权重 @ v",
        "context_name": "上下文",
        "merge": "合并注意力头",
        "output": "输出",
        "heads_title": "把 h 拆成多个头，再合并回来",
        "heads_caption": "即下面的例子：<code>h = {h}</code> 个特征切成 <code>n_h = {n_h}</code> 个宽度为 <code>d = {d}</code> 的头，头 1 拿到特征 {first}–{last}。每个头只在自己的切片上做注意力，最后把各头的上下文向量拼接回宽度 <code>h</code>。",
        "one_token": "一个词元：h = {h} 个特征",
        "head": "头",
        "concat": "拼接后：又是 h = {h}",
        "masks_title": "填充掩码、因果掩码和组合掩码",
        "masks_caption": "5 个词元、其中最后 2 个是填充时的布尔掩码。涂色的格子为 True：该行的查询<em>可以关注</em>该列的键。",
        "padding": "填充",
        "causal": "因果",
        "combined": "组合",
        "rows": "查询 ↓  键 →",
        "parallelism_title": "两个 rank 上谁持有什么：数据并行、张量并行和上下文并行",
        "parallelism_caption": "两个 rank（两种颜色）。<b>数据并行</b>：每个 rank 拿批次中的整条序列。<b>张量并行</b>：每个 rank 为每个词元计算一部分注意力头。<b>上下文并行</b>：每个 rank 持有同一条序列的锯齿形（zig-zag）分块；下方的因果分数矩阵里，格子的颜色表示这一行查询属于哪个 rank，两个 rank 各算 36 个格子中的 18 个。",
        "rank": "rank",
        "dp": "数据并行：切分批次",
        "dp_0": "rank 0：序列 0–1",
        "dp_1": "rank 1：序列 2–3",
        "dp_w": "权重：每个 rank 一整份",
        "tp": "张量并行：切分注意力头",
        "tp_0": "rank 0：头 0–1",
        "tp_1": "rank 1：头 2–3",
        "tp_w": "权重：按头切分",
        "cp": "上下文并行：切分序列",
        "cp_0": "rank 0：词元 0–1、6–7",
        "cp_1": "rank 1：词元 2–5",
        "cp_w": "权重：每个 rank 一整份",
        "cp_scores": "因果分数：",
        "cp_scores_2": "每个 rank 18 格",
        "tokens": "词元 →",
        "local_title": "滑动窗口、打包文档和 ALiBi",
        "local_caption": "8 个位置，因果注意力。<b>窗口</b> <code>sliding_window=3</code>：每个查询看到包括自己在内的最近 3 个位置。<b>文档</b> <code>document_ids</code>，长度依次为 3、2、3：块对角。<b>ALiBi</b>：不屏蔽任何键，颜色深浅是偏置带来的权重因子 <code>exp(−m·(i−j))</code>，图中是 4 个头里的第一个和最后一个（<code>m = 1/4</code> 和 <code>1/256</code>）。",
        "band": "窗口 w = 3",
        "documents": "文档 3 + 2 + 3",
        "alibi_0": "ALiBi，头 0：m = 1/4",
        "alibi_3": "ALiBi，头 3：m = 1/256",
    },
}


def _text(x: float, y: float, label: str, cls: str = "fig-text", anchor: str = "middle") -> str:
    return f'<text class="{cls}" x="{x:g}" y="{y:g}" text-anchor="{anchor}">{escape(label)}</text>'


def _box(x: float, y: float, w: float, h: float, label: str, cls: str = "fig-box") -> str:
    return f'<rect class="{cls}" x="{x:g}" y="{y:g}" width="{w:g}" height="{h:g}" rx="6"/>' + _text(
        x + w / 2, y + h / 2 + 5, label
    )


def _arrow(x1: float, y1: float, x2: float, y2: float, shape: str | None = None) -> str:
    line = f'<line class="fig-arrow" x1="{x1:g}" y1="{y1:g}" x2="{x2:g}" y2="{y2:g}" marker-end="url(#fig-head)"/>'
    if shape:
        line += _text(x1 + 8, (y1 + y2) / 2 + 5, shape, "fig-shape", "start")
    return line


def _svg(height: float, title: str, body: list[str]) -> str:
    defs = (
        '<defs><marker id="fig-head" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path class="fig-arrowhead" d="M0,0 L10,5 L0,10 z"/>'
        "</marker></defs>"
    )
    return (
        f'<svg class="fig" viewBox="0 0 {WIDTH} {height:g}" width="{WIDTH}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{escape(title)}</title>{defs}{''.join(body)}</svg>"
    )


def _figure(name: str, svg: str, caption: str) -> str:
    # One line: a blank line would end Markdown's raw-HTML block.
    return f'<figure class="mha-figure" id="figure-{name}">{svg}<figcaption>{caption}</figcaption></figure>\n'


def flow(t: dict[str, str]) -> str:
    """Figure (a): x -> q, k, v -> heads -> weights -> context -> merge -> out_proj.

    The main column sits left of centre so that the shape labels, written to
    the right of the arrows, fit in the 360-unit width.
    """
    cx, w, h, step = 120, 200, 34, 74
    body = [_box(cx - w / 2, 10, w, h, t["input"])]
    y = 10 + h
    # the three projections side by side
    proj_y = y + 44
    for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
        x = 20 + i * 110
        body.append(
            f'<line class="fig-arrow" x1="{cx:g}" y1="{y:g}" x2="{x + 50:g}" y2="{proj_y:g}" marker-end="url(#fig-head)"/>'
        )
        body.append(_box(x, proj_y, 100, h, name, "fig-box fig-param"))
    body.append(_text(WIDTH - 8, y + 22, "x: (b, s, h)", "fig-shape", "end"))
    y = proj_y + h
    split_y = y + 50
    for i in range(3):
        x = 70 + i * 110
        body.append(
            f'<line class="fig-arrow" x1="{x:g}" y1="{y:g}" x2="{cx:g}" y2="{split_y:g}" marker-end="url(#fig-head)"/>'
        )
    body.append(_text(WIDTH - 8, split_y - 6, "(b, s, h)", "fig-shape", "end"))
    body.append(_box(cx - w / 2, split_y, w, h, t["split"]))
    y = split_y + h
    steps = [
        ("q, k, v: (b, n_h, s, d)", t["scores"], "fig-box fig-math"),
        (f"{t['weights']}: (b, n_h, s, s)", t["context"], "fig-box fig-math"),
        (f"{t['context_name']}: (b, n_h, s, d)", t["merge"], "fig-box"),
        ("(b, s, h)", "out_proj", "fig-box fig-param"),
    ]
    for shape, label, cls in steps:
        body.append(_arrow(cx, y, cx, y + step - h, shape))
        body.append(_box(cx - w / 2, y + step - h, w, h, label, cls))
        y += step
    body.append(_arrow(cx, y, cx, y + 40, f"{t['output']}: (b, s, h)"))
    return _svg(y + 48, t["flow_title"], body)


HEAD_COLORS = ("fig-h0", "fig-h1", "fig-h2", "fig-h3")


def _numbers(label: str) -> str:
    last = 2 * HEAD_DIM - 1
    return label.format(h=HIDDEN_SIZE, n_h=NUM_HEADS, d=HEAD_DIM, first=HEAD_DIM, last=last)


def heads(t: dict[str, str]) -> str:
    """Figure (b): one token's HIDDEN_SIZE features cut into NUM_HEADS heads of HEAD_DIM, then concatenated.

    Heads and features are numbered from 0, as the code indexes them.
    """
    cell = 30
    x0 = (WIDTH - HIDDEN_SIZE * cell) / 2
    gap = (WIDTH - NUM_HEADS * HEAD_DIM * cell) / (NUM_HEADS + 1)  # space around each group
    body = [_text(WIDTH / 2, 20, _numbers(t["one_token"]))]

    def row(y: float) -> None:
        for i in range(HIDDEN_SIZE):
            body.append(
                f'<rect class="fig-cell {HEAD_COLORS[i // HEAD_DIM]}" x="{x0 + i * cell:g}" y="{y:g}" width="{cell - 2}" height="{cell - 2}" rx="3"/>'
            )
            body.append(_text(x0 + i * cell + (cell - 2) / 2, y + 19, str(i), "fig-small"))

    row(30)
    group_y = 120
    for head in range(NUM_HEADS):
        gx = gap + head * (HEAD_DIM * cell + gap)
        middle = gx + HEAD_DIM * cell / 2 - 1
        for j in range(HEAD_DIM):
            body.append(
                f'<rect class="fig-cell {HEAD_COLORS[head]}" x="{gx + j * cell:g}" y="{group_y:g}" width="{cell - 2}" height="{cell - 2}" rx="3"/>'
            )
            body.append(_text(gx + j * cell + (cell - 2) / 2, group_y + 19, str(HEAD_DIM * head + j), "fig-small"))
        src = x0 + (head + 0.5) * HEAD_DIM * cell - 1
        body.append(
            f'<line class="fig-arrow" x1="{src:g}" y1="62" x2="{middle:g}" y2="{group_y - 4}" marker-end="url(#fig-head)"/>'
        )
        body.append(_text(middle, group_y + 48, f"{t['head']} {head}"))
        body.append(
            f'<line class="fig-arrow" x1="{middle:g}" y1="{group_y + 56}" x2="{src:g}" y2="{group_y + 92}" marker-end="url(#fig-head)"/>'
        )
    body.append(_text(WIDTH / 2, 100, "(b, n_h, s, d)", "fig-shape"))
    row(group_y + 96)
    body.append(_text(WIDTH / 2, group_y + 150, _numbers(t["concat"])))
    return _svg(group_y + 160, t["heads_title"], body)


def masks(t: dict[str, str]) -> str:
    """Figure (c): padding, causal and combined 5 x 5 boolean masks."""
    n, length, cell = 5, 3, 19
    grids = {
        t["padding"]: lambda i, j: j < length,
        t["causal"]: lambda i, j: j <= i,
        t["combined"]: lambda i, j: j < length and j <= i,
    }
    body = []
    for g, (name, allowed) in enumerate(grids.items()):
        gx = 12 + g * 118
        body.append(_text(gx + n * cell / 2, 20, name))
        for i in range(n):
            for j in range(n):
                cls = "fig-cell fig-allowed" if allowed(i, j) else "fig-cell fig-blocked"
                body.append(
                    f'<rect class="{cls}" x="{gx + j * cell:g}" y="{32 + i * cell:g}" width="{cell - 2}" height="{cell - 2}" rx="2"/>'
                )
    body.append(_text(WIDTH / 2, 32 + n * cell + 24, t["rows"], "fig-shape"))
    return _svg(32 + n * cell + 34, t["masks_title"], body)


def parallelism(t: dict[str, str]) -> str:
    """Figure (d): what each of 2 ranks holds under data, tensor and context parallelism."""
    cell, x0, tx = 20, 8, 180  # 8 columns of tokens, then the labels
    ranks = ("fig-h0", "fig-h1")
    body = []

    def grid(y: float, rows: int, owner) -> None:
        for i in range(rows):
            for j in range(8):
                rank = owner(i, j)
                cls = "fig-cell fig-blocked" if rank is None else f"fig-cell {ranks[rank]}"
                body.append(
                    f'<rect class="{cls}" x="{x0 + j * cell:g}" y="{y + i * cell:g}" width="{cell - 2}" height="{cell - 2}" rx="2"/>'
                )

    def labels(y: float, keys: tuple[str, ...]) -> None:
        for n, key in enumerate(keys):
            if n < 2:  # a rank: its colour, then what it holds
                body.append(
                    f'<rect class="fig-cell {ranks[n]}" x="{tx:g}" y="{y + n * 20 - 11:g}" width="12" height="12" rx="2"/>'
                )
            body.append(_text(tx + (18 if n < 2 else 0), y + n * 20, t[key], "fig-text", "start"))

    zigzag = (0, 1, 1, 0)  # chunk -> rank: rank r holds chunks r and 2W-1-r
    y = 22
    body.append(_text(x0, y, t["dp"], "fig-text", "start"))
    grid(y + 10, 4, lambda i, j: i // 2)
    labels(y + 30, ("dp_0", "dp_1", "dp_w"))
    y += 112
    body.append(_text(x0, y, t["tp"], "fig-text", "start"))
    grid(y + 10, 4, lambda i, j: i // 2)
    labels(y + 30, ("tp_0", "tp_1", "tp_w"))
    y += 112
    body.append(_text(x0, y, t["cp"], "fig-text", "start"))
    grid(y + 10, 1, lambda i, j: zigzag[j // 2])
    labels(y + 24, ("cp_0", "cp_1", "cp_w"))
    body.append(_text(x0 + 4 * cell, y + 50, t["tokens"], "fig-shape"))
    y += 66
    grid(y, 8, lambda i, j: zigzag[i // 2] if j <= i else None)
    body.append(_text(tx, y + 70, t["cp_scores"], "fig-text", "start"))
    body.append(_text(tx, y + 90, t["cp_scores_2"], "fig-text", "start"))
    body.append(_text(tx, y + 116, t["rows"], "fig-shape", "start"))
    return _svg(y + 8 * cell + 10, t["parallelism_title"], body)


def local(t: dict[str, str]) -> str:
    """The masks guide's figure: a causal band, a block diagonal, and ALiBi's ramp for two heads."""
    n, cell, gap = 8, 19, 26
    document = [0, 0, 0, 1, 1, 2, 2, 2]

    def grid(gx: float, gy: float, title: str, shade) -> None:
        body.append(_text(gx + n * cell / 2, gy - 10, title))
        for i in range(n):
            for j in range(n):
                opacity = shade(i, j)
                x, y = gx + j * cell, gy + i * cell
                if opacity is None:
                    body.append(
                        f'<rect class="fig-cell fig-blocked" x="{x:g}" y="{y:g}" width="{cell - 2}" height="{cell - 2}" rx="2"/>'
                    )
                else:
                    body.append(
                        f'<rect class="fig-cell fig-allowed" x="{x:g}" y="{y:g}" width="{cell - 2}" '
                        f'height="{cell - 2}" rx="2" fill-opacity="{opacity:.2f}"/>'
                    )

    body: list[str] = []
    left, right = 12, 12 + n * cell + gap
    grid(left, 30, t["band"], lambda i, j: 1.0 if 0 <= i - j < 3 else None)
    grid(right, 30, t["documents"], lambda i, j: 1.0 if j <= i and document[i] == document[j] else None)
    y2 = 30 + n * cell + 40
    # Opacity exp(-m (i - j)), kept visible (>= 0.12) so that an allowed cell never looks blocked.
    grid(left, y2, t["alibi_0"], lambda i, j: max(0.12, 2.718 ** (-(i - j) / 4)) if j <= i else None)
    grid(right, y2, t["alibi_3"], lambda i, j: max(0.12, 2.718 ** (-(i - j) / 256)) if j <= i else None)
    body.append(_text(WIDTH / 2, y2 + n * cell + 22, t["rows"], "fig-shape"))
    return _svg(y2 + n * cell + 32, t["local_title"], body)


FIGURES = {"flow": flow, "heads": heads, "masks": masks, "parallelism": parallelism, "local": local}


def render() -> dict[str, str]:
    """{'flow.en.html': '<figure>...', ...}: every figure in every language."""
    # Every inline SVG of a page shares one id space: give each figure its own marker id.
    return {
        f"{name}.{lang}.html": _figure(
            name, draw(t).replace("fig-head", f"fig-head-{name}"), _numbers(t[f"{name}_caption"])
        )
        for name, draw in FIGURES.items()
        for lang, t in TEXT.items()
    }


def main(out: Path = OUT) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, html in render().items():
        (out / name).write_text(html, encoding="utf-8")
    print(f"wrote {len(FIGURES) * len(TEXT)} figures to {out}")


if __name__ == "__main__":
    main()
