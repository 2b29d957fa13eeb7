"""The package type-checks (it ships py.typed) and the tree passes the linter.

Both are configured in pyproject.toml ([tool.mypy], [tool.ruff]).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "tool", [["mypy"], ["ruff", "check", "."], ["ruff", "format", "--check", "."]], ids=["mypy", "ruff", "ruff-format"]
)
def test_static_checks_are_clean(tool):
    run = subprocess.run([sys.executable, "-m", *tool], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr


def test_tests_import_their_helpers_in_importlib_mode():
    """Helpers come from helpers.py on pythonpath, not `from conftest import`, which importlib mode breaks."""
    files = ["tests/package/test_masks.py", "tests/site/test_tutorial.py"]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "--import-mode=importlib", "-p", "no:cacheprovider", *files],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
