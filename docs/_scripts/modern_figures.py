"""Draw the "Modern attention layers" guide's two curves as SVG, in English and Chinese.

Run from the repository root:

    python docs/_scripts/modern_figures.py

Writes docs/_snippets/figures/{sink-share,softcap}.{en,zh}.html: a <figure>
holding an inline SVG drawn with the tutorial figures' helpers and classes
(docs/_scripts/tutorial_figures.py, docs/assets/stylesheets/extra.css), so the
curves follow the light and dark palettes and stay legible on a 390-px phone.
The curves are computed here, from the formulas the guide states.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tutorial_figures import WIDTH, _figure, _svg, _text  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "_snippets" / "figures"
SOFTCAP = 50.0  # Gemma 2's attention logit cap
HEIGHT = 230
LEFT, RIGHT, TOP, BOTTOM = 46, 14, 14, 52  # plot margins inside the viewBox

TEXT = {
    "en": {
        "sink-share_title": "The sink's share of a row's weight",
        "sink-share_caption": "The sink takes <code>sigmoid(sink − lse)</code> of the row, where <code>lse</code> is the log-sum-exp of the row's scores; the keys share the rest. A sink logit equal to <code>lse</code> takes half.",
        "sink-share_x": "sink − lse",
        "sink-share_y": "sink's share",
        "softcap_title": "Soft-capping the scores at 50",
        "softcap_caption": "<code>50 · tanh(s / 50)</code> (solid) against the uncapped score <code>s</code> (dashed): near zero the two agree, large scores bend towards ±50.",
        "softcap_x": "score s",
        "softcap_y": "capped",
    },
    "zh": {
        "sink-share_title": "汇点在一行权重中所占的份额",
        "sink-share_caption": "汇点拿走这一行的 <code>sigmoid(sink − lse)</code>，其中 <code>lse</code> 是这一行分数的 log-sum-exp；其余部分由各个键分享。汇点 logit 等于 <code>lse</code> 时，正好拿走一半。",
        "sink-share_x": "sink − lse",
        "sink-share_y": "汇点份额",
        "softcap_title": "把分数软上限设为 50",
        "softcap_caption": "<code>50 · tanh(s / 50)</code>（实线）与不设上限的分数 <code>s</code>（虚线）：在 0 附近两者一致，较大的分数被压弯，趋近 ±50。",
        "softcap_x": "分数 s",
        "softcap_y": "软上限后",
    },
}


class _Axes:
    """Maps data coordinates to the viewBox: x in [x0, x1], y in [y0, y1]."""

    def __init__(self, x0: float, x1: float, y0: float, y1: float) -> None:
        self.x0, self.x1, self.y0, self.y1 = x0, x1, y0, y1

    def x(self, value: float) -> float:
        return LEFT + (value - self.x0) / (self.x1 - self.x0) * (WIDTH - LEFT - RIGHT)

    def y(self, value: float) -> float:
        return TOP + (self.y1 - value) / (self.y1 - self.y0) * (HEIGHT - TOP - BOTTOM)

    def line(self, points: list[tuple[float, float]], cls: str) -> str:
        path = " ".join(f"{self.x(a):.1f},{self.y(b):.1f}" for a, b in points)
        return f'<polyline class="{cls}" points="{path}"/>'

    def curve(self, f: Callable[[float], float], cls: str, n: int = 120) -> str:
        return self.line(
            [(self.x0 + (self.x1 - self.x0) * i / n, f(self.x0 + (self.x1 - self.x0) * i / n)) for i in range(n + 1)],
            cls,
        )

    def frame(self, xticks: list[float], yticks: list[float], xlabel: str, ylabel: str, fmt: str = "g") -> list[str]:
        body = []
        for t in xticks:
            body.append(self.line([(t, self.y0), (t, self.y1)], "fig-grid"))
            body.append(_text(self.x(t), HEIGHT - BOTTOM + 18, format(t, fmt), "fig-shape"))
        for t in yticks:
            body.append(self.line([(self.x0, t), (self.x1, t)], "fig-grid"))
            body.append(_text(LEFT - 6, self.y(t) + 4, format(t, fmt), "fig-shape", "end"))
        body.append(_text((LEFT + WIDTH - RIGHT) / 2, HEIGHT - 8, xlabel))
        body.append(_text(LEFT + 6, TOP + 14, ylabel, "fig-text", "start"))
        return body


def sink_share(t: dict[str, str]) -> str:
    """The sink's share sigmoid(sink - lse) against sink - lse."""
    axes = _Axes(-6, 6, 0, 1)
    body = axes.frame([-6, -3, 0, 3, 6], [0, 0.5, 1], t["sink-share_x"], t["sink-share_y"])
    body.append(axes.curve(lambda z: 1 / (1 + math.exp(-z)), "fig-curve"))
    body.append(f'<circle class="fig-dot" cx="{axes.x(0):.1f}" cy="{axes.y(0.5):.1f}" r="4"/>')
    return _svg(HEIGHT, t["sink-share_title"], body)


def softcap(t: dict[str, str]) -> str:
    """cap * tanh(s / cap) against the identity, cap = SOFTCAP."""
    c = SOFTCAP
    axes = _Axes(-3 * c, 3 * c, -2 * c, 2 * c)
    body = axes.frame([-3 * c, -c, 0, c, 3 * c], [-c, 0, c], t["softcap_x"], t["softcap_y"])
    body.append(axes.line([(-2 * c, -2 * c), (2 * c, 2 * c)], "fig-curve fig-dashed"))
    body.append(axes.curve(lambda s: c * math.tanh(s / c), "fig-curve"))
    return _svg(HEIGHT, t["softcap_title"], body)


FIGURES = {"sink-share": sink_share, "softcap": softcap}


def render() -> dict[str, str]:
    """{'sink-share.en.html': '<figure>...', ...}: every figure in every language."""
    return {
        f"{name}.{lang}.html": _figure(name, draw(t), t[f"{name}_caption"])
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
