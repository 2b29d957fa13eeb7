"""Every tutorial and guide page has a notebook, built from its doctests, linked from the page;
the tutorial's notebook runs top to bottom in a fresh interpreter."""

from __future__ import annotations

import doctest
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS / "_hooks"))
import notebooks  # noqa: E402

TUTORIAL = [*DOCS.glob("tutorial*.md"), *DOCS.glob("transformer-block*.md")]
PAGES = sorted(p.relative_to(DOCS).as_posix() for p in [*TUTORIAL, *DOCS.glob("guides/*.md")])


def _built(site: Path, src: str) -> tuple[Path, str]:
    """(page folder in the site, notebook file name) for a source page."""
    name = notebooks.notebook_name(src)
    assert name is not None, src
    stem = src.removesuffix(".md").removesuffix(".zh")
    folder = site / ("zh" if src.endswith(".zh.md") else "") / stem
    return folder, name


def test_cells_from_markdown():
    page = (
        "# Title\n\nSee [masks](guides/masks.md#x).\n\n```pycon\n>>> a = 1\n>>> a + 1\n2\n>>> b = a\n\n```\n\n"
        '!!! tip "A hint"\n    Indented prose.\n\n    ```pycon\n    >>> print(b)  # doctest: +ELLIPSIS\n    1\n\n    ```\n\n'
        "```bash\npip install mha\n```\n"
    )
    cells = notebooks.cells_from_markdown(page, "https://example.org/mha/tutorial/")
    kinds = [(c["cell_type"], c["source"]) for c in cells]
    assert kinds == [
        ("markdown", "# Title\n\nSee [masks](https://example.org/mha/tutorial/guides/masks/#x)."),
        ("code", "a = 1\na + 1"),
        ("code", "b = a"),
        ("markdown", "**A hint**\nIndented prose."),
        ("code", "print(b)"),
        ("markdown", "```bash\npip install mha\n```"),
    ]


@pytest.mark.parametrize("src", PAGES)
def test_every_page_links_its_notebook(site, src):
    folder, name = _built(site, src)
    nb = json.loads((folder / name).read_text(encoding="utf-8"))
    assert nb["nbformat"] == 4 and nb["cells"][0]["cell_type"] == "markdown"
    assert len({c["id"] for c in nb["cells"]}) == len(nb["cells"])
    link = re.search(rf'<a [^>]*href="{re.escape(name)}"[^>]*>', (folder / "index.html").read_text(encoding="utf-8"))
    assert link and "download" in link.group(0)
    # Its code is the page's doctests, in order, which pytest runs top to bottom in one namespace.
    cells = "\n".join(c["source"] for c in nb["cells"] if c["cell_type"] == "code")
    examples = doctest.DocTestParser().get_examples((DOCS / src).read_text(encoding="utf-8"))
    assert _code_lines(cells) == _code_lines("".join(e.source for e in examples))


def _code_lines(code: str) -> list[str]:
    return [notebooks.DIRECTIVE.sub("", line).rstrip() for line in code.split("\n") if line.strip()]


@pytest.mark.parametrize("src", ["tutorial.md"])  # the other pages' notebooks are their doctests (above)
def test_tutorial_notebook_runs_headless(site, src, tmp_path):
    folder, name = _built(site, src)
    nb = json.loads((folder / name).read_text(encoding="utf-8"))
    code = [c["source"] for c in nb["cells"] if c["cell_type"] == "code"]
    assert len(code) > 10
    script = tmp_path / "notebook.py"
    script.write_text("\n\n".join(code) + "\nprint('ran', flush=True)\n", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path
    )
    assert run.returncode == 0 and run.stdout.endswith("ran\n"), run.stdout[-2000:] + run.stderr[-4000:]
