"""examples/train_segmentation.py runs as documented: under torchrun on two processes (gloo, FSDP2,
checkpointing) and as one plain process, and saves a model that loads."""

import os
import subprocess
import sys
from pathlib import Path

import torch
from test_distributed import torchrun

import unetgraph as ug

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "train_segmentation.py"
TINY = ["--steps", "2", "--batch", "2", "--size", "32", "--widths", "4,8", "--log-every", "1"]


def check_saved(folder: Path) -> None:
    model = ug.load_model(folder).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 32, 32)).shape == (1, 3, 32, 32)


def test_example_under_torchrun_with_fsdp_and_checkpointing(tmp_path):
    proc = torchrun(str(SCRIPT), *TINY, "--fsdp", "--checkpoint", "all", "--save", str(tmp_path / "model"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "2 process(es) on cpu, backend gloo" in proc.stdout
    assert "step    2/2" in proc.stdout and "held-out Dice" in proc.stdout
    check_saved(tmp_path / "model")


def test_example_as_one_process(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(SCRIPT), *TINY, "--norm", "batch", "--save", str(tmp_path / "model")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "1 process(es) on cpu, backend none" in proc.stdout
    check_saved(tmp_path / "model")
