"""Training on two processes (torchrun, gloo, CPU) equals one process on the same global batch:
DistributedDataParallel and FSDP2 (ug.shard per node and per level), plain and checkpointed.

One torchrun launch runs every scenario (tests/distributed_worker.py); each test reads its result.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "distributed_worker.py"


def torchrun(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("distributed") / "results.json"
    proc = torchrun(str(WORKER), str(out))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize(
    "scenario",
    ["ddp_groupnorm", "ddp_checkpointed", "ddp_diffusion", "fsdp_per_node", "fsdp_per_level_checkpointed_diffusion"],
)
def test_two_processes_equal_one(results, scenario):
    assert results["world_size"] == 2
    r = results[scenario]
    assert r["grad_error"] <= 1e-5 * r["grad_scale"], r
    assert r["param_error"] <= 1e-6, r
    assert r["noise_param_error"] <= r["lr"] * 1.01, r  # never more than one step of Adam
    if scenario.startswith("fsdp"):
        assert 0.45 < r["local_fraction"] < 0.55, r  # each process holds half of every parameter
    else:
        assert r["local_fraction"] == 1.0
