"""The package type-checks (it ships py.typed) and the tree passes the linter and formatter.

All are configured in pyproject.toml ([tool.mypy], [tool.ruff]).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("tool", ["mypy", "ruff", "ruff-format"])
def test_static_checks_are_clean(tool, static_check):
    """The tools run in the background from the start of the session (conftest.py)."""
    returncode, output = static_check(tool)
    assert returncode == 0, output


def test_tests_import_their_helpers_in_importlib_mode():
    """Helpers come from helpers.py / site_fixtures.py on pythonpath, not `from conftest import`,
    which importlib mode breaks. Collecting (importing) one module of each folder that imports
    them shows it: the cheapest proof (collecting every module costs twice the CPU)."""
    files = ["tests/package/test_rotary.py", "tests/site/test_api_reference.py"]
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "--collect-only",
            "--import-mode=importlib",
            "-p",
            "no:cacheprovider",
            "-n",
            "0",
        ]
        + files,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0 and " tests collected" in run.stdout, run.stdout + run.stderr


def test_the_two_classes_stay_readable():
    """Issue 21's bound: each of the two classes a newcomer reads first stays under 250 lines."""
    import ast

    tree = ast.parse((ROOT / "mha" / "attention.py").read_text())
    sizes = {n.name: n.end_lineno - n.lineno + 1 for n in tree.body if isinstance(n, ast.ClassDef)}
    assert sizes["Attention"] < 250 and sizes["MultiHeadAttention"] < 250, sizes
