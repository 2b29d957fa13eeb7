"""MkDocs hook: a line break between two Chinese characters is no space.

Markdown turns a soft line break inside a paragraph into a newline, which the
browser shows as a space: right for English, a stray gap in Chinese ("补全了。 你会用").
Before a Chinese page is rendered, this joins such lines in the Markdown,
wherever the previous line ends with a CJK character or full-width punctuation
and the next one starts with one. It leaves alone:

* fenced code blocks (``` and ~~~, indented or not) and display math (`$$` blocks);
* a next line that starts a block of its own: blank, a heading, a list item,
  a table row, a quote, an admonition, HTML, a snippet include.

A line break after full-width punctuation (。，：) is joined whatever follows,
since that punctuation carries its own space. A line break between a Chinese
character and a Latin word stays a space, as Chinese typesetting puts one there.
"""

from __future__ import annotations

import re

# CJK ideographs, CJK symbols and punctuation, full-width forms.
CJK = "\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
# A link whose text ends (or starts) with a Chinese character counts as one:
# "见\n[掩码](masks.md)" is "见[掩码](masks.md)".
ENDS_CJK = re.compile(f"[{CJK}](\\]\\([^)\\s]*\\))?$")
# Full-width punctuation carries its own space: nothing follows it, CJK or not.
ENDS_PUNCTUATION = re.compile("[\u3000-\u303f\uff00-\uffef]$")
STARTS_CJK = re.compile(f"^\\[?[{CJK}]")
FENCE = re.compile(r"^\s*(```|~~~)")
STARTS_BLOCK = re.compile(r"^\s*(#|[-*+] |\d+[.)] |\||>|!!!|\?\?\?|<|\$\$|--8<--|$)")


def join_cjk_lines(markdown: str) -> str:
    """The Markdown with every soft line break between two CJK characters removed."""
    out: list[str] = []
    fence: str | None = None  # the open fence's marker, while inside a code block
    math = False
    joinable = False  # may the next line be joined to out[-1]?
    for line in markdown.split("\n"):
        stripped = line.strip()
        if fence is None and not math:
            opened = FENCE.match(line)
            if (
                joinable
                and not opened
                and not STARTS_BLOCK.match(line)
                and (ENDS_PUNCTUATION.search(out[-1]) or (ENDS_CJK.search(out[-1]) and STARTS_CJK.match(stripped)))
            ):
                out[-1] += stripped
                continue
            out.append(line)
            if opened:
                fence, joinable = opened[1], False
            elif stripped.startswith("$$"):
                math, joinable = not (len(stripped) > 2 and stripped.endswith("$$")), False
            else:
                # a heading, table row or HTML line is one line: nothing continues it
                joinable = bool(stripped) and not re.match(r"^(#|\||<|--8<--)", stripped)
            continue
        out.append(line)
        if fence is not None and stripped.startswith(fence) and not stripped.strip(fence[0]):
            fence = None
        elif math and stripped.endswith("$$"):
            math = False
    return "\n".join(out)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri.endswith(".zh.md"):
        return join_cjk_lines(markdown)
    return markdown
