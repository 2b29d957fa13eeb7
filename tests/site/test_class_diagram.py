"""The full class diagram is generated from the package and names every public member."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

import mha

DOCS = Path(__file__).resolve().parents[2] / "docs"
sys.path.insert(0, str(DOCS / "_hooks"))
import class_diagram  # noqa: E402
from site_fixtures import DESKTOP, PHONE  # noqa: E402

PAGES = sorted(DOCS.glob("class-diagram*.md"))
PUBLIC_CLASSES = {name for name in mha.__all__ if isinstance(getattr(mha, name), type)} | {"Dispatch"}


def parse_diagram(text: str) -> dict[str, dict[str, set[str]]]:
    """{class: {"attributes": {...}, "methods": {...}}} from mermaid classDiagram source."""
    classes: dict[str, dict[str, set[str]]] = {}
    for name, body in re.findall(r"class (\w+) \{(.*?)\}", text, re.S):
        members: dict[str, set[str]] = {"attributes": set(), "methods": set()}
        for line in filter(None, (ln.strip() for ln in body.splitlines())):
            line = line.lstrip("+-#~")
            if "(" in line:
                members["methods"].add(line.split("(")[0])
            else:
                members["attributes"].add(line.split()[-1])
        classes[name] = members
    for a, b in re.findall(r"^\s*(\w+) [*o.]-[-.>]+ (\w+)", text, re.M):
        assert a in classes and b in classes, f"relation {a} - {b} names an undeclared class"
    return classes


def test_diagram_names_every_public_class_and_member():
    diagram = parse_diagram(class_diagram.generate())
    assert set(diagram) == PUBLIC_CLASSES
    for cls, obj in class_diagram.samples().items():
        drawn = diagram[cls.__name__]
        for member in drawn["attributes"] | drawn["methods"]:
            assert hasattr(obj, member), f"{cls.__name__}.{member} is drawn but does not exist"
        for member in drawn["methods"]:
            assert callable(getattr(obj, member)), f"{cls.__name__}.{member} is drawn as a method"
        module_api = set(dir(torch.nn.Module)) | {"training"}  # every nn.Module has these
        public = {n for n in dir(obj) if not n.startswith("_") and n not in module_api}
        if isinstance(obj, torch.nn.Module):
            public |= {"forward"} | set(obj._modules)
        missing = public - drawn["attributes"] - drawn["methods"]
        assert not missing, f"public members of {cls.__name__} missing from the diagram: {missing}"


def test_diagram_draws_the_tutorials_composition():
    text = class_diagram.generate()
    assert "MultiHeadAttention *-- Attention : attention" in text
    assert "Attention o-- RotaryEmbedding : positional" in text
    assert "MultiHeadAttention ..> KVCache : new_cache()" in text


def test_a_new_member_appears_without_editing_the_docs(monkeypatch):
    monkeypatch.setattr(mha.Attention, "describe", lambda self, verbose: "…", raising=False)
    assert "+describe(verbose)" in class_diagram.generate()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_pages_use_the_generated_diagram(page):
    text = page.read_text(encoding="utf-8")
    assert class_diagram.MARKER in text
    assert "classDiagram" not in text, "a hand-written diagram would drift from the code"


def test_attributes_that_default_to_none_show_their_declared_type():
    """`+None q_proj_weight` says nothing: the type comes from the code's annotations."""
    source = class_diagram.generate()
    attributes = [line.strip() for line in source.splitlines() if line.strip().startswith("+") and "(" not in line]
    assert not [a for a in attributes if a.startswith("+None ")]
    assert "+SequenceLayout context_parallel" in source and "+Tensor token_mask" in source


def _rgb(colour: str, background: tuple[float, ...] = (255, 255, 255)) -> tuple[float, ...]:
    """'rgb(1, 2, 3)' or 'rgba(1, 2, 3, 0.5)' as RGB, composited over `background`."""
    parts = [float(x) for x in re.findall(r"[\d.]+", colour)]
    alpha = parts[3] if len(parts) == 4 else 1.0
    return tuple(alpha * c + (1 - alpha) * b for c, b in zip(parts[:3], background, strict=True))


def _contrast(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """WCAG 2 contrast ratio of two sRGB colours."""

    def luminance(rgb: tuple[float, ...]) -> float:
        linear = [(c / 255 / 12.92) if c / 255 <= 0.04045 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in rgb]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


DIAGRAM_STATE = """() => {
    const host = document.querySelector('div.mermaid[data-sized]');
    if (!host) return null;
    const root = host.shadowRoot;
    const style = (selector, property) => [...root.querySelectorAll(selector)]
        .map((e) => getComputedStyle(e)[property]);
    const column = document.querySelector('.md-content__inner').getBoundingClientRect();
    const box = host.getBoundingClientRect();
    return {
        fit: host.dataset.fit, scrollLeft: host.scrollLeft, tabIndex: host.tabIndex,
        left: box.left, right: box.right,
        nodesLeft: Math.min(...[...root.querySelectorAll('g.node')].map((n) => n.getBoundingClientRect().left)),
        nodesRight: Math.max(...[...root.querySelectorAll('g.node')].map((n) => n.getBoundingClientRect().right)),
        overflow: host.scrollWidth - host.clientWidth, inColumn: box.left >= column.left - 1 && box.right <= column.right + 1,
        button: host.previousElementSibling && host.previousElementSibling.textContent,
        background: getComputedStyle(document.body).backgroundColor,
        lines: style('path.relation', 'stroke'),
        boxes: style('g.node path[fill]:not([fill="none"])', 'fill'),
        texts: style('g.node .nodeLabel', 'color'),
        edgeLabels: style('.labelBkg', 'backgroundColor'),
        edgeTexts: style('.edgeLabel p', 'color'),
        markers: [...style('marker.composition path', 'fill'), ...style('marker.classDiagram path', 'stroke'),
                  ...style('marker.dependency path', 'fill')],
    };
}"""


def _diagram_state(page) -> dict:
    page.wait_for_function(f"({DIAGRAM_STATE})() !== null")
    return page.evaluate(DIAGRAM_STATE)


@pytest.mark.browser
@pytest.mark.parametrize("lang", ["", "zh/"])
def test_diagram_fits_the_desktop_column_and_pans_on_a_phone(server, browser, lang):
    page, errors = browser.view(f"{server}{lang}class-diagram/", width=DESKTOP)
    state = _diagram_state(page)
    assert state["fit"] == "true" and state["overflow"] <= 1 and state["inColumn"], state
    assert not errors
    page, errors = browser.open(f"{server}{lang}class-diagram/", width=PHONE)
    state = _diagram_state(page)
    # full size, from its left edge, a button to fit it, focusable to pan
    assert state["fit"] == "false" and state["scrollLeft"] == 0 and state["tabIndex"] == 0 and state["button"], state
    assert state["overflow"] > 0 and state["nodesLeft"] >= state["left"], state  # the leftmost box starts in view
    page.evaluate("document.querySelector('div.mermaid[data-sized]').scrollLeft = 1e6")
    state = _diagram_state(page)
    assert state["nodesRight"] <= state["right"] + 1, state  # scrolling right reaches the rightmost box's edge
    page.click(".mha-diagram-zoom")
    assert _diagram_state(page)["overflow"] <= 1
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE
    assert not errors and not browser.blocked
    page.close()


@pytest.mark.browser
@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("path", ["class-diagram/", "tutorial/"])  # the generated diagram and the tutorial's
def test_relation_lines_and_diamonds_stand_out(server, browser, scheme, path):
    page, errors = browser.view(f"{server}{path}", color_scheme=scheme)
    state = _diagram_state(page)
    background = _rgb(state["background"])
    assert state["lines"] and state["markers"]
    for colour in state["lines"] + state["markers"]:
        assert _contrast(_rgb(colour, background), background) >= 3, (colour, state["background"])
    # the boxes and edge labels follow the palette: their text reads on them (no lavender or white cards on dark)
    assert state["boxes"] and state["texts"]
    for box in set(state["boxes"]):
        for text in set(state["texts"]):
            assert _contrast(_rgb(text, background), _rgb(box, background)) >= 3, (text, box, scheme)
    for label in set(state["edgeLabels"]):
        assert _contrast(_rgb(label, background), background) < 1.5, (label, scheme)  # no card on the page
        for text in set(state["edgeTexts"]):
            assert _contrast(_rgb(text, background), _rgb(label, background)) >= 3, (text, label, scheme)


def test_mermaid_loads_only_where_a_diagram_is(site):
    pages = list(site.rglob("index.html"))
    with_mermaid = [p for p in pages if "mermaid.min.js" in p.read_text(encoding="utf-8")]
    assert with_mermaid and len(with_mermaid) < len(pages)
    for page in pages:
        html = page.read_text(encoding="utf-8")
        assert ("mermaid.min.js" in html) == ('class="mermaid"' in html), page


@pytest.mark.browser
def test_a_page_without_a_diagram_requests_no_mermaid(server, browser):
    page, _ = browser.open(f"{server}explorer/")
    requested = page.evaluate("performance.getEntriesByType('resource').map((r) => r.name)")
    assert requested and not [url for url in requested if "mermaid" in url]
    page.close()
