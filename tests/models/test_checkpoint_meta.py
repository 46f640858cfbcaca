"""Checkpoints record what wrote them (torch, cka_lab, git commit, device, precision); ``cka-lab info`` shows it."""

from __future__ import annotations

import json
import subprocess

import torch

import cka_lab
from cka_lab.cli import main
from cka_lab.models import create_edt, read_checkpoint, save_checkpoint
from cka_lab.models import checkpoint as ckpt_mod


def test_a_saved_checkpoint_records_versions_commit_device_and_precision(tmp_path):
    torch.manual_seed(0)
    path = save_checkpoint(tmp_path / "m.pt", create_edt("SRx2_EDTT"), meta={"source": "test"})
    meta = read_checkpoint(path).meta
    assert meta["torch"] == torch.__version__
    assert meta["cka_lab"] == cka_lab.__version__
    assert meta["device"] == "cpu" and meta["precision"] == "float32"
    assert meta["source"] == "test"
    commit = meta["git_commit"]
    assert commit is None or (len(commit) == 40 and int(commit, 16) >= 0)
    if commit is not None:  # a git checkout: it is this checkout's HEAD
        head = subprocess.run(["git", "-C", str(ckpt_mod.Path(ckpt_mod.__file__).parent), "rev-parse", "HEAD"],
                              capture_output=True, text=True).stdout.strip()
        assert commit == head


def test_the_callers_metadata_wins_so_an_export_keeps_the_training_runs_values(tmp_path):
    model = create_edt("SRx2_EDTT")
    given = {"torch": "2.11.0", "device": "cuda:0", "precision": "bfloat16 autocast", "git_commit": None}
    meta = read_checkpoint(save_checkpoint(tmp_path / "m.pt", model, meta=given)).meta
    assert {k: meta[k] for k in given} == given
    assert meta["cka_lab"] == cka_lab.__version__


def test_no_git_gives_none_silently(monkeypatch):
    def no_git(*a, **k):
        raise FileNotFoundError("git")

    monkeypatch.setattr(ckpt_mod.subprocess, "run", no_git)
    ckpt_mod.git_commit.cache_clear()
    try:
        assert ckpt_mod.git_commit() is None
    finally:
        ckpt_mod.git_commit.cache_clear()


def test_info_shows_what_wrote_the_file_as_text_and_json(tmp_path, capsys):
    path = save_checkpoint(tmp_path / "m.pt", create_edt("SRx2_EDTT"),
                           meta={"device": "cuda:0", "precision": "bfloat16 autocast", "git_commit": "ab" * 20})
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if "saved with" in ln)
    assert f"torch {torch.__version__}" in line and f"cka_lab {cka_lab.__version__}" in line
    assert "abababababab" in line and "cuda:0" in line and "bfloat16 autocast" in line
    assert main(["info", str(path), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["saved_with"] == {"torch": torch.__version__, "cka_lab": cka_lab.__version__, "git_commit": "ab" * 20,
                               "device": "cuda:0", "precision": "bfloat16 autocast"}
    assert "torch" not in d["provenance"]


def test_info_says_when_a_file_does_not_record_it(tmp_path, capsys):
    path = tmp_path / "official.pth"
    torch.save({k: v for k, v in create_edt("SRx2_EDTT").state_dict().items()}, path)
    assert main(["info", str(path)]) == 0
    assert "saved with    not recorded" in capsys.readouterr().out
    assert main(["info", str(path), "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)["saved_with"].values()) == {None}
