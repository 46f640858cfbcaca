"""Training outputs (issue 15): run names stay under runs/, fresh runs start new logs, links never followed,
a full disk is one line with no temporary file left."""

from __future__ import annotations

import csv
import errno

import pytest

from cka_lab.cli import main
from cka_lab.errors import CkaLabError
from cka_lab.io import safe_write
from cka_lab.train.config import parse_config
from tests.train.helpers import tiny_config


@pytest.mark.parametrize("name", ["../../..", "..", "a/b", ".hidden", "x\\\\y"])
def test_a_run_name_cannot_leave_the_runs_folder(name):
    with pytest.raises(CkaLabError, match="plain folder name"):
        parse_config(f'[run]\nname = "{name}"\n[model]\narch = "SRx2_EDTT"\n')
    assert parse_config('[run]\nname = "ok_name-1"\n[model]\narch = "SRx2_EDTT"\n').run.name == "ok_name-1"


def _rows(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_a_fresh_run_over_an_old_log_starts_new_logs_and_never_writes_through_links(
        data_dir, train_folders, tmp_path, capsys):
    cfg = tmp_path / "sr.toml"
    cfg.write_text(tiny_config("SRx2_EDTT", train_folders, data_dir))
    out = tmp_path / "run"
    out.mkdir()
    (out / "train_log.csv").write_text("iteration,lr,loss\n1,0.1,9\n2,0.1,9\n")  # an earlier run without checkpoint
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (out / "config.toml").symlink_to(victim)
    (out / "val_log.csv").symlink_to(victim)
    assert main(["train", str(cfg), "--max-iters", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    assert victim.read_text() == "precious"
    rows = _rows(out / "train_log.csv")
    assert [r["iteration"] for r in rows] == ["1"] and rows[0]["loss"] != "9"
    assert not (out / "config.toml").is_symlink()
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []


def test_a_symlinked_log_is_refused_when_appending(tmp_path):
    from cka_lab.train.logs import CsvLog

    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "train_log.csv").symlink_to(victim)
    with pytest.raises(CkaLabError, match="symlink"):
        CsvLog(tmp_path / "train_log.csv", ["iteration"]).write({"iteration": 1})
    assert victim.read_text() == "precious"


def test_train_on_a_full_disk_is_one_line_and_leaves_no_temp(data_dir, train_folders, tmp_path, capsys, monkeypatch):
    cfg = tmp_path / "sr.toml"
    cfg.write_text(tiny_config("SRx2_EDTT", train_folders, data_dir))
    out = tmp_path / "run"

    real_fsync = safe_write.os.fsync

    def full_at_the_checkpoint(fd):  # the disk fills up while the first checkpoint is written
        if ".last.pt." in safe_write.os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(safe_write.os, "fsync", full_at_the_checkpoint)
    assert main(["train", str(cfg), "--max-iters", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cka-lab: error: cannot write") and "No space left" in err and "\n" not in err
    assert "last.pt" in err
    assert [p for p in out.iterdir() if p.name.endswith(".tmp")] == []
    assert not (out / "last.pt").exists() and (out / "train_log.csv").exists()
