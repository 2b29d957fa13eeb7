"""The example scripts the docs show run as the docs say."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
GLOO_TEARDOWN_ABORT = "terminate called without an active exception"


def _torchrun(tmp_path: Path, script: str, *args: str) -> list[str]:
    """Run a docs example as its page says, on 2 CPU processes; each rank's output line."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        # one stdout file per rank: two processes on one pipe can interleave lines
        "--log-dir",
        str(tmp_path),
        "--redirects",
        "1",
        str(ROOT / "docs" / "examples" / script),
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    if run.returncode != 0 and GLOO_TEARDOWN_ABORT in run.stderr:
        # Gloo's threads sometimes abort the interpreter's shutdown after the
        # script has finished its work; that is PyTorch's, not ours. Once more.
        for old in tmp_path.iterdir():
            shutil.rmtree(old)
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = []
    for rank in (0, 1):
        (log,) = tmp_path.glob(f"**/{rank}/stdout.log")
        lines.append(log.read_text().strip())
        assert lines[-1].startswith(f"rank {rank}/2: "), lines[-1]
    return lines


def _errors(line: str) -> list[float]:
    """The numbers after each '= ' in a rank's line."""
    return [float(part.split(",")[0]) for part in line.split("= ")[1:]]


def test_tensor_parallel_script_under_torchrun(tmp_path):
    """The 'Scaling out' page's command line, on 2 CPU processes."""
    for line in _torchrun(tmp_path, "tensor_parallel.py"):
        assert "4 of 8 query heads" in line and _errors(line)[0] < 1e-5, line


def test_context_parallel_script_under_torchrun(tmp_path):
    for line in _torchrun(tmp_path, "context_parallel.py"):
        assert "128 of 256 tokens" in line, line
        output_error, grad_error = _errors(line)
        assert output_error < 1e-5 and grad_error < 1e-6, line


@pytest.mark.parametrize(("tp", "mesh"), [("2", "dp=1 x tp=2"), ("1", "dp=2 x tp=1")])
def test_fsdp_tensor_parallel_script_under_torchrun(tmp_path, tp, mesh):
    """One training step on a 2-D mesh equals one process: loss, gradients, parameters."""
    for line in _torchrun(tmp_path, "fsdp_tensor_parallel.py", "--tp", tp):
        assert f"mesh {mesh}, loss " in line, line
        loss = float(line.split("loss ")[1].split(" ")[0])
        single = float(line.split("(one process: ")[1].split(")")[0])
        assert abs(loss - single) < 1e-5, line
        grad_error, param_error = _errors(line)
        assert grad_error < 1e-6 and param_error < 1e-6, line


def test_figures_script_redraws_every_figure(tmp_path, monkeypatch):
    """`python docs/_scripts/make_figures.py` writes the pictures and tables the pages include."""
    sys.path.insert(0, str(ROOT / "docs" / "_scripts"))
    try:
        import make_figures
    finally:
        sys.path.pop(0)
    monkeypatch.setattr(make_figures, "IMAGES", tmp_path / "images")
    monkeypatch.setattr(make_figures, "SNIPPETS", tmp_path / "snippets")
    # Every figure in every variant is laid out and drawn; written at a low resolution,
    # which only the pixels depend on (at the real one they cost half the test's time).
    from matplotlib.figure import Figure

    savefig = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, path, **kw: savefig(fig, path, **{**kw, "dpi": 20}))
    make_figures.main()
    for name in ("attention-trained.png", "attention-weights.png", "attention-padding.png", "performance.png"):
        assert (tmp_path / "images" / name).read_bytes().startswith(b"\x89PNG")
    for name in ("attention-trained", "attention-weights", "attention-padding", "performance", "context-parallel"):
        assert (tmp_path / "images" / f"{name}-dark.png").read_bytes().startswith(b"\x89PNG")
    for name in ("attention-trained", "attention-weights", "attention-padding", "performance", "context-parallel"):
        for variant in ("-zh", "-zh-dark"):  # labelled in Chinese
            assert (tmp_path / "images" / f"{name}{variant}.png").read_bytes().startswith(b"\x89PNG")
    for written in (tmp_path / "snippets").glob("*.md"):  # the committed tables are the JSON's
        committed = ROOT / "docs" / "_snippets" / written.name
        assert written.read_text() == committed.read_text(), written.name


def test_chinese_pages_show_the_chinese_pictures():
    """Where a picture has a Chinese-labelled twin (NAME-zh.png), the Chinese page shows it, light and dark."""
    images = ROOT / "docs" / "assets" / "images"
    pages = sorted((ROOT / "docs").rglob("*.zh.md"))
    shown = [(page, m) for page in pages for m in re.findall(r"images/([\w-]+)\.png", page.read_text(encoding="utf-8"))]
    assert shown
    for page, name in shown:
        base = name.removesuffix("-dark")
        assert not (images / f"{base}-zh.png").exists(), f"{page.name} shows {name}.png, not its Chinese twin"


def test_snippet_includes_are_intact():
    """Every `--8<--` include is written as pymdownx.snippets reads it (a formatter once spaced it into `--8 < --`)."""
    for page in sorted((ROOT / "docs").rglob("*.md")):
        for line in page.read_text(encoding="utf-8").splitlines():
            if re.match(r"\s*-+\s*8\s*<", line):
                assert re.match(r'\s*--8<-- "[^"]+"$', line), f"{page.relative_to(ROOT)}: {line!r}"
                assert (ROOT / line.split('"')[1]).exists(), f"{page.relative_to(ROOT)}: {line!r}"
