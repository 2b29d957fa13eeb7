"""The static checks (mypy above all, ~80 s of one core on a fresh clone) start in the
background as soon as a one-process run knows it includes them, so that they use the
second core while the other tests run; `test_static.py` waits for their result. Under
pytest-xdist the other worker keeps that core busy, and the test starts its tool."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS = {"mypy": ["mypy"], "ruff": ["ruff", "check", "."], "ruff-format": ["ruff", "format", "--check", "."]}
_RUNS: dict[str, subprocess.Popen[str]] = {}


def _start(name: str) -> subprocess.Popen[str]:
    if name not in _RUNS:
        _RUNS[name] = subprocess.Popen(
            [sys.executable, "-m", *TOOLS[name]],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    return _RUNS[name]


def pytest_collection_finish(session: pytest.Session) -> None:
    # An xdist worker collects every test, whichever it runs: two workers would each start
    # mypy on the same cache (a race that crashed it). There the test starts its tool.
    if session.config.option.collectonly or hasattr(session.config, "workerinput"):
        return
    for item in session.items:
        callspec = getattr(item, "callspec", None)
        if getattr(item, "originalname", None) == "test_static_checks_are_clean" and callspec is not None:
            _start(callspec.id)


def pytest_sessionfinish(session: pytest.Session) -> None:
    for run in _RUNS.values():
        if run.poll() is None:
            run.kill()
        run.communicate()


@pytest.fixture
def static_check():
    """`static_check(name)` -> (exit status, output) of one of TOOLS, started early if it could be."""

    def result(name: str) -> tuple[int, str]:
        out, _ = _start(name).communicate(timeout=600)
        return _RUNS[name].returncode, out

    return result
