"""cka-lab train on a CPU: one rank per core, started by itself, splitting the batch."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from cka_lab.models import load_model
from cka_lab.train.config import parse_config
from cka_lab.train.cpu_ranks import cpu_processes
from tests.train.helpers import tiny_config

REPO = Path(__file__).resolve().parents[2]


def test_auto_layout_rules(train_folders, data_dir, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    cfg = parse_config(tiny_config("SRx2_EDTT", train_folders, data_dir, iterations=2))
    assert cfg.run.threads == 1 and cfg.schedule.batch_size == 2
    assert cpu_processes(cfg, cores=2) == 1  # pinned threads: the config manages its cores
    auto = replace(cfg, run=replace(cfg.run, threads=0))
    assert cpu_processes(auto, cores=2) == 2
    assert cpu_processes(auto, cores=3) == 1  # batch 2 does not split in 3
    assert cpu_processes(replace(auto, run=replace(auto.run, processes=1)), cores=2) == 1
    monkeypatch.setenv("WORLD_SIZE", "2")  # under torchrun: never spawns
    assert cpu_processes(auto, cores=2) == 1


@pytest.mark.slow
def test_two_ranks_started_by_the_command_split_the_batch(train_folders, data_dir, tmp_path):
    cfg = tmp_path / "auto.toml"
    text = tiny_config("SRx2_EDTT", train_folders, data_dir, iterations=2).replace("threads = 1", "processes = 2")
    cfg.write_text(text)
    out = tmp_path / "run"
    env = dict(os.environ, CKA_LAB_NO_PROGRESS="1", OMP_WAIT_POLICY="PASSIVE")
    env.pop("WORLD_SIZE", None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-m", "cka_lab.train", str(cfg), "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 CPU processes of 1 thread(s), 1 patches per head each" in proc.stdout
    assert "2 process(es) on cpu" in proc.stdout and "batch 1 per head per process" in proc.stdout
    assert proc.stdout.count("done: iteration 2") == 1  # rank 0 speaks
    with (out / "train_log.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in rows] == [1, 2]
    assert float(rows[-1]["patches_per_s"]) > 0
    model = load_model(out / "last.pt")
    assert all(torch.isfinite(p).all() for p in model.parameters())
