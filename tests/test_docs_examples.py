"""The example scripts the docs show run as the docs say."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from helpers import free_port

ROOT = Path(__file__).resolve().parents[1]
GLOO_TEARDOWN_ABORT = "terminate called without an active exception"


def test_tensor_parallel_script_under_torchrun(tmp_path):
    """The 'Scaling out' page's command line, on 2 CPU processes."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
        # one stdout file per rank: two processes on one pipe can interleave lines
        "--log-dir", str(tmp_path), "--redirects", "1",
        str(ROOT / "docs" / "examples" / "tensor_parallel.py"),
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
    for rank in (0, 1):
        (log,) = tmp_path.glob(f"**/{rank}/stdout.log")
        line = log.read_text().strip()
        assert line.startswith(f"rank {rank}/2: 4 of 8 query heads"), line
        error = float(line.rsplit("=", 1)[1])
        assert error < 1e-5


def test_figures_script_redraws_every_figure(tmp_path, monkeypatch):
    """`python docs/_scripts/make_figures.py` writes the pictures and tables the pages include."""
    sys.path.insert(0, str(ROOT / "docs" / "_scripts"))
    try:
        import make_figures
    finally:
        sys.path.pop(0)
    monkeypatch.setattr(make_figures, "IMAGES", tmp_path / "images")
    monkeypatch.setattr(make_figures, "SNIPPETS", tmp_path / "snippets")
    make_figures.main()
    for name in ("attention-trained.png", "attention-weights.png", "attention-padding.png", "performance.png"):
        assert (tmp_path / "images" / name).read_bytes().startswith(b"\x89PNG")
    committed = ROOT / "docs" / "_snippets" / "performance-table.md"
    assert (tmp_path / "snippets" / "performance-table.md").read_text() == committed.read_text()
