"""Two-process DDP on CPU (gloo) via torchrun; its checkpoint loads in one process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cka_lab.models import load_model, read_checkpoint
from tests.train.helpers import tiny_config

# Slow (subprocesses, minutes on 2 cores): run by ``pytest -m slow``, as .ci/run does after the fast tests.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def test_two_process_gloo_run_trains_and_its_checkpoint_loads_in_one_process(train_folders, data_dir, tmp_path):
    cfg = tmp_path / "ddp.toml"
    # threads = 0: torchrun's processes split the cores between them (one thread each here)
    cfg.write_text(tiny_config("SRx2_EDTT", train_folders, data_dir, iterations=10).replace("threads = 1", "threads = 0"))
    out = tmp_path / "run"
    env = dict(os.environ, CKA_LAB_NO_PROGRESS="1", OMP_WAIT_POLICY="PASSIVE")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "cka_lab.train", str(cfg), "--out", str(out), "--max-iters", "2"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both workers
        proc.communicate()
        raise
    assert proc.returncode == 0, stderr[-3000:]
    assert "2 process(es) on cpu" in stdout  # rank 0 speaks, once
    assert stdout.count("done: iteration 2") == 1

    ckpt = read_checkpoint(out / "last.pt")
    assert ckpt.train["iteration"] == 2 and ckpt.train["world_size"] == 2
    assert len(ckpt.train["rng"]) == 2  # every rank's RNG state, for an exact resume
    assert not torch.equal(ckpt.train["rng"][0]["torch"], ckpt.train["rng"][1]["torch"])
    model = load_model(out / "last.pt")
    assert model.name == "SRx2_EDTT"
    with torch.no_grad():
        y = model.restore(torch.rand(1, 3, 20, 20), "x2")
    assert y.shape == (1, 3, 40, 40) and torch.isfinite(y).all()
