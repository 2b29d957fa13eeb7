"""The built site's text: Chinese pages read as Chinese, numbers in the guides match their tables.

These read the built HTML (the `site` fixture of site_fixtures.py) and the
benchmark JSON; no browser.
"""

from __future__ import annotations

import re
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from site_fixtures import ROOT

pytestmark = pytest.mark.browser  # needs the built site, as the browser tests do

CJK = "\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
BROKEN = re.compile(f"[{CJK}][ \\t]*\\n\\s*[{CJK}]")


class _Text(HTMLParser):
    """The text nodes a reader sees as prose: not code, scripts, styles or the search index."""

    SKIP = {"pre", "code", "script", "style", "textarea", "kbd"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.depth = 0
        self.texts: list[str] = []
        self.html_lang = ""

    def handle_starttag(self, tag, attrs) -> None:
        if tag == "html":
            self.html_lang = dict(attrs).get("lang", "")
        if tag in self.SKIP:
            self.depth += 1

    def handle_endtag(self, tag) -> None:
        if tag in self.SKIP and self.depth:
            self.depth -= 1

    def handle_data(self, data) -> None:
        if not self.depth:
            self.texts.append(data)


def _read(html: Path) -> _Text:
    parser = _Text()
    parser.feed(html.read_text(encoding="utf-8"))
    return parser


def _zh_pages(site: Path) -> list[Path]:
    pages = sorted((site / "zh").rglob("index.html"))  # 404.html is a script that writes the page
    assert len(pages) >= 15
    return pages


def test_chinese_line_breaks_are_no_spaces(site):
    """No text node of a Chinese page has a line break between two CJK characters
    (the browser would show it as a space): docs/_hooks/cjk.py joins them."""
    problems = []
    for html in _zh_pages(site):
        for text in _read(html).texts:
            problems += [f"{html.relative_to(site)}: {m[0]!r}" for m in BROKEN.finditer(text)]
    assert not problems, "\n".join(problems[:20])


def test_no_space_between_chinese_and_a_chinese_link(site):
    """ "见[掩码]", not "见 [掩码]": a link whose text is Chinese sits in the sentence like any word
    (a space in the source, or a line break the hook leaves, would show as a gap)."""
    cjk = "\u3400-\u4dbf\u4e00-\u9fff\u3000-\u303f\uff00-\uffef"
    gap = re.compile(f"[{cjk}]\\s+<a [^>]*>[{cjk}]|[{cjk}]</a>\\s+[{cjk}]")
    problems = []
    for html in _zh_pages(site):
        article = html.read_text(encoding="utf-8").split('<article class="md-content__inner', 1)[-1]
        problems += [f"{html.relative_to(site)}: {m[0][:60]!r}" for m in gap.finditer(article)]
    assert not problems, "\n".join(problems[:20])


def test_cjk_hook_keeps_code_and_math():
    sys.path.insert(0, str(ROOT / "docs" / "_hooks"))
    try:
        from cjk import join_cjk_lines
    finally:
        sys.path.pop(0)
    text = "一行，\n二行。\n\n```pycon\n>>> 1  # 中\n... 文\n```\n$$\n中\n文\n$$\n- 项，\n  续\n# 标题\n正文\n\n    缩进，\n    续"
    assert join_cjk_lines(text) == (
        "一行，二行。\n\n```pycon\n>>> 1  # 中\n... 文\n```\n$$\n中\n文\n$$\n- 项，续\n# 标题\n正文\n\n    缩进，续"
    )
    assert join_cjk_lines("中文\nEnglish\n中文") == "中文\nEnglish\n中文"  # a space there is right
    assert join_cjk_lines("数量。\n`Attention` 接收") == "数量。`Attention` 接收"  # 。 has its own space
    assert join_cjk_lines("见\n[掩码](masks.md)\n的") == "见[掩码](masks.md)的"  # a Chinese link is a word


def test_every_chinese_page_says_zh_hans(site):
    """`lang="zh-Hans"` on every Chinese page (the pages with a mermaid diagram included),
    and the language switcher's `hreflang` on every page."""
    for html in _zh_pages(site):
        assert _read(html).html_lang == "zh-Hans", html.relative_to(site)
    for html in site.rglob("*.html"):
        assert 'hreflang="zh"' not in html.read_text(encoding="utf-8"), html.relative_to(site)


# --- phones --------------------------------------------------------------------

PHONE_PROBLEMS = """() => {
  const out = [];
  for (const e of document.querySelectorAll('.katex-display')) {
    const r = e.getBoundingClientRect();
    if (e.scrollWidth > e.clientWidth + 1) out.push(`formula wider than its box: ${e.textContent.slice(0, 40)}`);
    if (r.left < 8 || r.right > innerWidth - 8) out.push(`formula at the screen's edge: ${e.textContent.slice(0, 40)}`);
  }
  for (const nav of document.querySelectorAll('pre > .md-code__nav')) {
    const a = nav.getBoundingClientRect(), b = nav.parentElement.querySelector('code').getBoundingClientRect();
    if (a.width && a.left < b.right - 1 && a.bottom > b.top + 1) out.push('the copy button covers code');
  }
  for (const t of document.querySelectorAll('.md-typeset table:not([class])')) {
    const r = t.getBoundingClientRect();  // a wide table scrolls inside its box, within the margins
    if (r.left < 8 || r.right > innerWidth - 8) out.push(`table past the margin: ${t.textContent.trim().slice(0, 30)}`);
  }
  for (const c of document.querySelectorAll('.md-typeset details pre code, .md-typeset details p, .md-typeset .admonition p')) {
    const size = parseFloat(getComputedStyle(c).fontSize);
    if (size < 13.5) out.push(`${c.tagName} in an admonition at ${size}px`);
  }
  return out;
}"""


@pytest.mark.parametrize(
    "path",
    [
        "tutorial/",
        "zh/tutorial/",
        "transformer-block/",
        "zh/transformer-block/",
        "guides/decoding/",
        "zh/guides/decoding/",
    ],
)
def test_phone_formulas_code_and_solutions(server, browser, path):
    """At 390 px: every display formula fits its column (`MultiHead(X)` keeps its W^O), the copy
    button sits beside the code rather than over it, and solutions are at body size."""
    from site_fixtures import PHONE

    page, errors = browser.open(server + path, width=PHONE, wait="load")
    page.wait_for_selector(".katex-display")
    page.locator("details").evaluate_all("els => els.forEach(d => d.open = true)")
    assert page.evaluate(PHONE_PROBLEMS) == []
    if path.endswith("tutorial/"):
        multihead = page.locator(".katex-display", has_text="MultiHead").first
        assert "W" in multihead.inner_text() and "O" in multihead.inner_text()
    page.close()


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_attention_pictures_follow_the_palette(server, browser, scheme):
    page, _ = browser.open(server + "guides/attention-weights/", color_scheme=scheme, wait="load")
    shown = page.eval_on_selector_all(
        "article img", "els => els.filter(e => e.offsetWidth > 0).map(e => e.currentSrc.split('#')[0])"
    )
    assert len(shown) == 3, shown
    assert all(src.endswith("-dark.png") == (scheme == "dark") for src in shown), shown
    page.close()
