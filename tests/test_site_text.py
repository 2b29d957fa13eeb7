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
    pages = sorted((site / "zh").rglob("*.html"))
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


def test_cjk_hook_keeps_code_and_math():
    sys.path.insert(0, str(ROOT / "docs" / "_hooks"))
    try:
        from cjk import join_cjk_lines
    finally:
        sys.path.pop(0)
    text = "一行，\n二行。\n\n```pycon\n>>> 1  # 中\n... 文\n```\n$$\n中\n文\n$$\n- 项，\n  续\n# 标题\n正文\n    缩进，\n    续"
    assert join_cjk_lines(text) == (
        "一行，二行。\n\n```pycon\n>>> 1  # 中\n... 文\n```\n$$\n中\n文\n$$\n- 项，续\n# 标题\n正文\n    缩进，续")
    assert join_cjk_lines("中文\nEnglish\n中文") == "中文\nEnglish\n中文"  # a space there is right


def test_every_chinese_page_says_zh_hans(site):
    """`lang="zh-Hans"` on every Chinese page (the pages with a mermaid diagram included),
    and the language switcher's `hreflang` on every page."""
    for html in _zh_pages(site):
        assert _read(html).html_lang == "zh-Hans", html.relative_to(site)
    for html in site.rglob("*.html"):
        assert 'hreflang="zh"' not in html.read_text(encoding="utf-8"), html.relative_to(site)
