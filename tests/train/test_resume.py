"""Killed runs resume exactly; checkpoints are written atomically; resuming checks the config."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cka_lab.errors import CkaLabError
from cka_lab.models import read_checkpoint
from cka_lab.train.config import load_config
from cka_lab.train.loop import train
from tests.train.helpers import tiny_config

REPO = Path(__file__).resolve().parents[2]
ITERS = 6


def _env() -> dict[str, str]:
    env = dict(os.environ, CKA_LAB_NO_PROGRESS="1", OMP_WAIT_POLICY="PASSIVE")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


@pytest.fixture(scope="module")
def config_file(train_folders, data_dir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "resume.toml"
    path.write_text(tiny_config("SRx2_EDTT", train_folders, data_dir, iterations=ITERS, seed=4,
                                extra="[optim]\nmilestones = [3]\n"))
    return path


@pytest.fixture(scope="module")
def uninterrupted(config_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    train(load_config(config_file), out=out)
    return out


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    t0 = time.time()
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"training exited early ({proc.returncode}): {proc.stderr.read().decode()[-2000:]}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError("no checkpoint appeared")
        time.sleep(0.02)


def test_sigkilled_run_resumes_to_identical_weights(config_file, uninterrupted, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "cka_lab.train", str(config_file), "--out", str(out)],
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_for(out / "last.pt", proc)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    killed_at = read_checkpoint(out / "last.pt").train["iteration"]
    assert 2 <= killed_at < ITERS

    result = train(load_config(config_file), out=out, resume=True)
    assert result.iteration == ITERS
    a = read_checkpoint(uninterrupted / "last.pt")
    b = read_checkpoint(out / "last.pt")
    assert a.state_dict.keys() == b.state_dict.keys()
    for k in a.state_dict:
        assert torch.equal(a.state_dict[k], b.state_dict[k]), k
    assert b.train["scheduler"]["last_epoch"] == ITERS
    with open(out / "train_log.csv", newline="") as f:
        assert [int(r["iteration"]) for r in csv.DictReader(f)] == list(range(1, ITERS + 1))


_DIE_WHILE_WRITING = """
import os, signal, sys
calls = [0]
real_fsync = os.fsync
def fsync(fd):  # the 2nd checkpoint: the temp file is written, the process dies before the rename
    if ".last.pt." in os.readlink(f"/proc/self/fd/{fd}"):  # other files (logs, config) are fsynced too
        calls[0] += 1
    if calls[0] == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    real_fsync(fd)
os.fsync = fsync
from cka_lab.train.config import load_config
from cka_lab.train.loop import train
train(load_config(sys.argv[1]), out=sys.argv[2], max_iters=4)
"""


def test_death_while_writing_a_checkpoint_leaves_the_previous_one(config_file, tmp_path):
    out = tmp_path / "dying"
    proc = subprocess.run([sys.executable, "-c", _DIE_WHILE_WRITING, str(config_file), str(out)],
                          env=_env(), capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    stale = list(out.glob(".last.pt.*.tmp"))
    assert len(stale) == 1 and stale[0].stat().st_size > 0  # the half-done write
    ckpt = read_checkpoint(out / "last.pt")  # still a complete, loadable checkpoint
    assert ckpt.train["iteration"] == 2

    result = train(load_config(config_file), out=out, resume=True, max_iters=4)
    assert result.iteration == 4
    assert not list(out.glob(".last.pt.*.tmp"))


def test_resume_into_a_folder_of_another_config_is_refused(config_file, uninterrupted, tmp_path):
    other = tmp_path / "other.toml"
    other.write_text(config_file.read_text().replace("[optim]\n", "[optim]\nlr = 1e-3\n"))
    with pytest.raises(CkaLabError) as err:
        train(load_config(other), out=uninterrupted, resume=True, max_iters=ITERS + 1)
    msg = str(err.value)
    assert "cannot resume" in msg and "another config (optim.lr is 0.0002 there but 0.001 here)" in msg
    assert "\n" not in msg


def test_new_run_into_a_folder_with_a_checkpoint_is_refused(config_file, uninterrupted):
    with pytest.raises(CkaLabError, match="already holds a checkpoint .* pass --resume"):
        train(load_config(config_file), out=uninterrupted)


def test_resume_without_a_checkpoint_is_refused(config_file, tmp_path):
    with pytest.raises(CkaLabError, match="nothing to resume"):
        train(load_config(config_file), out=tmp_path, resume=True)


def test_resume_of_a_finished_run_does_nothing(config_file, uninterrupted):
    before = (uninterrupted / "last.pt").stat().st_mtime_ns
    result = train(load_config(config_file), out=uninterrupted, resume=True)
    assert result.iteration == ITERS
    assert (uninterrupted / "last.pt").stat().st_mtime_ns == before
