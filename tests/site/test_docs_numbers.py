"""Every measured number in a guide's prose is in a table the page shows.

How it works. A guide that shows benchmark results includes tables generated
from benchmarks/results/*.json (docs/_scripts/make_figures.py writes them to
docs/_snippets/*.md; the page pulls them in with `--8<--`). On such a page, a
number in the prose that looks measured — a decimal (0.83, 5.7e-07), or any
number with a unit of time, memory, rate, a percentage or an `x` — must appear
in one of the tables that page includes. Code blocks, inline code, formulas
(arithmetic the reader can redo), headings and link texts are not prose for
this purpose; neither are versions ("torch 2.11") and the few tolerances listed
in NOT_MEASURED. A prose number that matches no table is a number the reader
cannot check: a rerun changed the table, or it came from somewhere else.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GUIDES = sorted((ROOT / "docs" / "guides").glob("*.md"))
SNIPPET = re.compile(r'^\s*--8<-- "(docs/_snippets/[^"/]+\.md)"', re.M)
NUMBER = re.compile(
    r"(?<![\w.])(\d+(?:\.\d+)?e[-+]?\d+|\d+\.\d+|\d[\d,]*)"
    r"(?:\s?(x|%|ms|µs|s|MiB|GiB|GB/s|GFLOP/s)(?![\w/]))?"
)
VERSION = re.compile(r"(?:torch|Python|PyTorch|CUDA)\s+$")
# Numbers in these pages' prose that are not measurements, with what they are.
NOT_MEASURED = {
    "scaling-out": {"1e-5"},  # the tolerance the test suite checks the ranks to
    "performance": {"40"},  # the benchmark's limit on a call it repeats (--cap), not a measurement
    # the tests' tolerance, a model's version ("Llama 3.1"), float32's resolution of an
    # angle at 128k and of `1 + w`: arithmetic the text explains, not measurements
    "transformers": {"1e-5", "3.1", "0.004", "6e-8", "1.2e-7"},
    # a model's version ("Llama 3.1") and the soft-cap chunks' budget of scores, a setting
    "modern-layers": {"3.1", "64"},
}


def prose(markdown: str) -> str:
    """The page's running text: no code, formulas, headings, includes or link texts/targets."""
    text = re.sub(r"^(\s*)(```|~~~).*?^\1\2\s*$", "", markdown, flags=re.S | re.M)
    text = re.sub(r"\$\$.*?\$\$", "", text, flags=re.S)
    text = re.sub(r"\$[^$\n]+\$", "", text)
    text = re.sub(r"`[^`\n]+`", "", text)
    text = re.sub(r"!?\[[^\]]*\]\([^)]*\)", "", text)
    text = re.sub(r"^#.*$", "", text, flags=re.M)
    return SNIPPET.sub("", text)


def unmatched_numbers(markdown: str, tables: str, allowed: set[str] = frozenset()) -> list[str]:
    """The measured-looking numbers of `markdown`'s prose that `tables` does not contain."""
    text = prose(markdown)
    shown = {match[1] for match in NUMBER.finditer(tables)}  # whole numbers: 0.85 is not 0.857
    missing = []
    for match in NUMBER.finditer(text):
        number, unit = match[1], match[2]
        if not ("." in number or "e" in number or unit) or number in allowed:
            continue
        if VERSION.search(text[: match.start()][-12:]):
            continue
        if number not in shown:
            missing.append(
                f"{match[0]!r} in “…{text[max(0, match.start() - 50) : match.end() + 10]}…”".replace("\n", " ")
            )
    return missing


# The tables docs/_scripts/make_figures.py writes from benchmarks/results/*.json.
BENCHMARK_TABLES = {
    "decoding-table.md",
    "dtypes-table.md",
    "performance-table.md",
    "context-parallel-table.md",
    "hf-decoding-table.md",
    "hf-decoding-ratios-table.md",
    "hf-decoding-deep-table.md",
    "modern-layers-table.md",
    "local-attention-table.md",
    "hf-static-prefill-table.md",
}


def _table_name(include: str) -> str:
    """The English name of an included table: NAME.zh.md is NAME.md in Chinese, the same numbers."""
    return Path(include).name.replace(".zh.md", ".md")


PAGES = [
    page
    for page in GUIDES
    if any(_table_name(name) in BENCHMARK_TABLES for name in SNIPPET.findall(page.read_text(encoding="utf-8")))
]


def test_the_pages_with_tables_are_checked():
    names = {page.name for page in PAGES}
    assert {
        "decoding.md",
        "decoding.zh.md",
        "performance.md",
        "performance.zh.md",
        "scaling-out.md",
        "scaling-out.zh.md",
        "transformers.md",
        "transformers.zh.md",
        "modern-layers.md",
        "modern-layers.zh.md",
    } <= names, names


@pytest.mark.parametrize("page", [p for p in GUIDES if p.name.endswith(".zh.md")], ids=lambda p: p.name)
def test_chinese_pages_include_the_chinese_tables(page):
    """A zh page shows each benchmark table in Chinese: NAME.zh.md, whose numbers are NAME.md's."""
    for name in SNIPPET.findall(page.read_text(encoding="utf-8")):
        if _table_name(name) in BENCHMARK_TABLES:
            assert name.endswith(".zh.md"), f"{page.name} includes the English {name}"
            english = (ROOT / name.replace(".zh.md", ".md")).read_text(encoding="utf-8")
            chinese = (ROOT / name).read_text(encoding="utf-8")
            numbers = [sorted(m[1].rstrip(",") for m in NUMBER.finditer(text)) for text in (english, chinese)]
            assert numbers[0] == numbers[1], name


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_prose_numbers_are_in_the_pages_tables(page):
    markdown = page.read_text(encoding="utf-8")
    tables = "\n".join((ROOT / name).read_text(encoding="utf-8") for name in SNIPPET.findall(markdown))
    allowed = NOT_MEASURED.get(page.name.split(".")[0], set())
    assert not unmatched_numbers(markdown, tables, allowed), "\n".join(unmatched_numbers(markdown, tables, allowed))


def test_the_check_catches_a_stale_number():
    table = "| case | ratio |\n|---|---|\n| a | 0.83 |\n| b | 1.8x |"
    good = "The lead is smallest at 0.83; bfloat16 is 1.8x faster; see `x = 0.90` and $2 \\cdot 0.5$."
    bad = "It measured 0.90, about 1e-7, several times (6x) faster, 33 µs, 0.8."
    assert unmatched_numbers(good, table) == []
    assert [m.split(" in ")[0] for m in unmatched_numbers(bad, table)] == [
        "'0.90'",
        "'1e-7'",
        "'6x'",
        "'33 µs'",
        "'0.8'",
    ]


def test_no_internal_targets_on_user_pages():
    """Guides speak to users: no 'goal', 'target ... missed', or bold cells announced."""
    for page in GUIDES:
        text = prose(page.read_text(encoding="utf-8"))
        for phrase in ("goal", "missed", "in bold", "目标", "粗体"):
            assert phrase not in text, f"{page.name}: {phrase!r}"
    for snippet in (ROOT / "docs" / "_snippets").glob("*.md"):
        text = snippet.read_text(encoding="utf-8")
        assert "target" not in text and "**" not in text, snippet.name


def test_chinese_tables_have_no_english_sentences():
    """A Chinese table's footnote is translated whole: a phrase the translation list misses stays English."""
    for snippet in sorted((ROOT / "docs" / "_snippets").glob("*.zh.md")):
        text = snippet.read_text(encoding="utf-8")
        for phrase in ("Measured", "medians", "ran once", "Ratios divide", "extrapolated", "lower is better"):
            assert phrase not in text, f"{snippet.name}: {phrase!r} left in English"
