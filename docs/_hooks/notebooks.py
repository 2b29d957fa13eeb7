"""MkDocs hook: every tutorial page (the tutorial, the layer in a Transformer) and guide, as a Jupyter notebook.

At build time each such page's Markdown becomes a notebook (nbformat 4,
written as plain JSON): prose becomes Markdown cells, every `>>>` example a
code cell with the prompts stripped. Examples run in the page's order, one
after another, so the notebook runs top to bottom as the page's doctests do.
A code cell ends after each example that prints something, so that Jupyter
shows that value under it, as the page does. Other code blocks (shell
commands, whole scripts) stay in the Markdown, as on the page.

The notebook is written next to the page (`tutorial/mha-tutorial.ipynb`,
`zh/tutorial/mha-tutorial.zh.ipynb`) and linked under the page's title.
"""

from __future__ import annotations

import doctest
import html
import json
import re
from pathlib import Path
from urllib.parse import urljoin

from mkdocs.config.defaults import MkDocsConfig
from site_build import language

ROOT = Path(__file__).resolve().parents[2]
PAGES = re.compile(
    r"^(tutorial|transformer-block|guides/[\w-]+)(\.zh)?\.md$"
)  # the tutorial, its second page, the guides
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>```+|~~~+)\s*(?P<lang>[\w-]*)")
CONTAINER = re.compile(r"^(?P<indent>\s*)(?:(?:!!!|\?\?\?\+?)\s+\w+|===)(?:\s+\"(?P<title>[^\"]*)\")?")
SNIPPET = re.compile(r"^\s*--8<--\s+\"(?P<path>[^\"]+)\"\s*$")
LINK = re.compile(r"(\]\()(?P<target>[^)\s]+)(\))")
DIRECTIVE = re.compile(r"\s*#\s*doctest:.*$")
LABEL = {
    "en": "Download this page as a Jupyter notebook",
    "zh": "下载本页的 Jupyter 笔记本",
}
INTRO = {
    "en": "*From the mha documentation: [{title}]({url}). Run the cells in order.*",
    "zh": "*来自 mha 文档：[{title}]({url})。请按顺序运行各单元格。*",
}


def notebook_name(src_uri: str) -> str | None:
    """'guides/masks.zh.md' -> 'mha-masks.zh.ipynb'; None for pages without a notebook."""
    match = PAGES.match(src_uri)
    if not match:
        return None
    return f"mha-{Path(match.group(1)).name}{match.group(2) or ''}.ipynb"


def _markdown_cell(lines: list[str]) -> dict | None:
    text = "\n".join(lines).strip("\n")
    if not text.strip():
        return None
    return {"cell_type": "markdown", "metadata": {}, "source": text}


def _code_cells(block: str) -> list[dict]:
    """The `>>>` examples of one code block: a cell per run of examples up to one that prints."""
    cells, source = [], []
    for example in doctest.DocTestParser().get_examples(block):
        code = "\n".join(DIRECTIVE.sub("", line) for line in example.source.rstrip("\n").split("\n"))
        if "+SKIP" in example.source:
            code = "\n".join("# " + line for line in code.split("\n"))
        source.append(code)
        if example.want:
            cells.append(source)
            source = []
    if source:
        cells.append(source)
    return [
        {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": "\n".join(s)}
        for s in cells
    ]


def _absolute_links(line: str, page_url: str) -> str:
    """Links relative to the page become absolute, so they work from a downloaded file."""

    def fix(match: re.Match) -> str:
        target = match.group("target")
        if re.match(r"^[a-z]+:|^#|^/", target):
            return match.group(0)
        path, _, anchor = target.partition("#")
        if path.endswith(".md"):
            path = re.sub(r"(index)?\.md$", "", path)
            path = path + "/" if path and not path.endswith("/") else path
        url = urljoin(page_url, path) + (f"#{anchor}" if anchor else "")
        return f"{match.group(1)}{url}{match.group(3)}"

    return LINK.sub(fix, line)


def _expand_snippets(markdown: str) -> str:
    """`--8<-- "path"` lines replaced by the file, as pymdownx.snippets does on the page."""

    def read(match: re.Match) -> str:
        path = ROOT / match.group("path")
        return path.read_text(encoding="utf-8") if path.is_file() else match.group(0)

    return "\n".join(read(m) if (m := SNIPPET.match(line)) else line for line in markdown.split("\n"))


def cells_from_markdown(markdown: str, page_url: str) -> list[dict]:
    """Markdown and code cells, in the page's order."""
    cells: list[dict] = []
    prose: list[str] = []
    containers: list[int] = []  # content indents of the open admonitions and tabs
    lines = _expand_snippets(markdown).split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        indent = len(line) - len(line.lstrip())
        while line.strip() and containers and indent < containers[-1]:
            containers.pop()
        if (header := CONTAINER.match(line)) and not FENCE.match(line):
            title = header.group("title")
            prose.append(f"{header.group('indent')}**{title}**" if title else "")
            containers.append(len(header.group("indent")) + 4)
            i += 1
            continue
        cut = containers[-1] if containers else 0
        fence = FENCE.match(line)
        if fence:
            end = i + 1
            while end < len(lines) and not lines[end].strip().startswith(fence.group("fence")):
                end += 1
            body = [row[len(fence.group("indent")) :] for row in lines[i + 1 : end]]
            code = _code_cells("\n".join(body)) if fence.group("lang") in ("pycon", "python", "") else []
            if code:
                if cell := _markdown_cell(prose):
                    cells.append(cell)
                prose = []
                cells.extend(code)
            else:
                prose.extend(row[cut:] for row in lines[i : end + 1])
            i = end + 1
            continue
        prose.append(_absolute_links(line[cut:], page_url))
        i += 1
    if cell := _markdown_cell(prose):
        cells.append(cell)
    return cells


def notebook(markdown: str, page_url: str, title: str, lang: str) -> dict:
    intro = {"cell_type": "markdown", "metadata": {}, "source": INTRO[lang].format(title=title, url=page_url)}
    return {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "cells": [intro, *cells_from_markdown(markdown, page_url)],
    }


def _with_ids(nb: dict) -> dict:
    """nbformat 4.5 wants a unique id per cell."""
    for number, cell in enumerate(nb["cells"]):
        cell["id"] = f"cell-{number}"
    return nb


def on_page_markdown(markdown: str, page, config: MkDocsConfig, files) -> str:  # noqa: ARG001 (MkDocs hook signature)
    name = notebook_name(page.file.src_uri)
    if name:
        page_url = urljoin(config.site_url or "/", page.url)
        nb = _with_ids(notebook(markdown, page_url, page.title or name, language(config)))
        target = Path(page.file.abs_dest_path).parent / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(nb, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return markdown


def on_page_content(content: str, page, config: MkDocsConfig, files) -> str:  # noqa: ARG001 (MkDocs hook signature)
    name = notebook_name(page.file.src_uri)
    if not name:
        return content
    label = LABEL.get(language(config), LABEL["en"])
    link = (
        f'<p class="mha-notebook"><a href="{html.escape(name)}" download data-notebook>'
        f"{html.escape(label)} (.ipynb)</a></p>"
    )
    heading_end = content.find("</h1>")
    if heading_end < 0:
        return link + content
    heading_end += len("</h1>")
    return content[:heading_end] + link + content[heading_end:]
