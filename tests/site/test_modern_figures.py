"""The modern-layers guide's curves: the committed SVGs are what the script draws, from the formulas."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"
sys.path.insert(0, str(DOCS / "_scripts"))
import modern_figures  # noqa: E402

sys.path.pop(0)


def test_script_matches_the_committed_figures(tmp_path):
    modern_figures.main(tmp_path)
    for name in modern_figures.render():
        committed = DOCS / "_snippets" / "figures" / name
        assert (tmp_path / name).read_text(encoding="utf-8") == committed.read_text(encoding="utf-8"), name
    zh = (tmp_path / "sink-share.zh.html").read_text(encoding="utf-8")
    assert "汇点份额" in zh and "sink's share" not in zh


def _curve(html: str) -> list[tuple[float, float]]:
    points = re.search(r'<polyline class="fig-curve" points="([^"]+)"', html)[1]
    return [tuple(map(float, p.split(","))) for p in points.split()]


def test_the_curves_are_the_formulas():
    """Map each drawn point back to data coordinates and compare with sigmoid and c·tanh(s/c)."""
    t = modern_figures.TEXT["en"]
    for draw, axes, f in (
        (modern_figures.sink_share, modern_figures._Axes(-6, 6, 0, 1), lambda z: 1 / (1 + math.exp(-z))),
        (modern_figures.softcap, modern_figures._Axes(-150, 150, -100, 100), lambda s: 50 * math.tanh(s / 50)),
    ):
        points = _curve(draw(t))
        assert len(points) == 121
        for x, y in points:
            value = axes.x0 + (x - modern_figures.LEFT) / (
                modern_figures.WIDTH - modern_figures.LEFT - modern_figures.RIGHT
            ) * (axes.x1 - axes.x0)
            assert abs(axes.y(f(value)) - y) < 0.2, (x, y)
