"""Issue 24 as a user meets it: bounds before allocation, one writer per output, damaged files in one
line, output sets written whole, inputs verified before the first output."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cka_lab.cli import main
from cka_lab.io import folder_lock, safe_write
from cka_lab.models import create_edt, save_checkpoint
from tests.cli.test_reliability_cli import one_line_error

TINY = dict(embed_dim=12, depths=(2,), num_heads=(2,), drop_path_rate=0.0)
REPO = str(Path(__file__).resolve().parents[2])


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    save_checkpoint(d / "a.pt", create_edt("SRx2_EDTT", **TINY))
    save_checkpoint(d / "b.pt", create_edt("SRx2_EDTT", **TINY))
    obj = torch.load(d / "a.pt", weights_only=True)
    obj["meta"] = [1, 2]
    torch.save(obj, d / "meta_list.pt")
    return d / "a.pt", d / "b.pt", d / "meta_list.pt"


def _under_memory_limit(*argv: str) -> subprocess.CompletedProcess:
    code = textwrap.dedent("""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))  # nothing here can take the machine's memory
        from cka_lab.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), "CKA_LAB_NO_PROGRESS": "1"}
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, timeout=600)


# -- 1. bounds before allocation ----------------------------------------------------------------------


def test_layers_refuses_a_size_whose_forward_cannot_fit_before_making_its_input(ckpts):
    proc = _under_memory_limit("layers", str(ckpts[0]), "--size", "99984")  # before: a 120 GB input, a traceback
    err = proc.stderr.strip()
    assert proc.returncode == 2 and "\n" not in err, err
    assert err.startswith("cka-lab: error: a forward pass at --size 99984 would need about") and "--size" in err


def test_a_crop_count_beyond_the_memory_or_the_data_is_refused_before_any_work(capsys, ckpts, tmp_path):
    out = tmp_path / "o"
    err = one_line_error(capsys, "compare", ckpts[0], ckpts[1], "--n-samples", "100000000", "--out", out)
    assert "--n-samples 100000000 would need about" in err  # before: accepted, ran on
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(np.zeros((50, 50, 3), np.uint8)).save(data / "one.png")  # 3 x 3 = 9 crops of 48 px
    err = one_line_error(capsys, "compare", ckpts[0], ckpts[1], "--n-samples", "16", "--data", data, "--out", out)
    assert "--n-samples 16 is more than the 9 distinct crops of 48 px" in err
    assert not out.exists()


@pytest.mark.parametrize("gib, message", [
    ("0", "must be a positive number of GiB"), ("-1", "must be a positive number of GiB"),
    ("nan", "must be a positive number of GiB"), ("inf", "must be a positive number of GiB"),
    ("1e-9", "less than 1 MiB"), ("1e9", "is more than the"),
])
def test_max_gib_is_finite_positive_and_within_the_machine(capsys, ckpts, tmp_path, gib, message):
    for estimator in ("unbiased-minibatch", "biased-full"):  # before: nan/inf tracebacks with either
        err = one_line_error(capsys, "compare", ckpts[0], ckpts[1], "--n-samples", "16", "--max-gib", gib,
                             "--estimator", estimator, "--out", tmp_path / "o")
        assert f"--max-gib {gib}" in err or message in err
        assert message in err
    assert not (tmp_path / "o").exists()


# -- 2. one writer per output -------------------------------------------------------------------------


def test_a_second_compare_into_a_locked_folder_is_refused_naming_the_holder(capsys, ckpts, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    with folder_lock(out):  # another compare is writing it
        err = one_line_error(capsys, "compare", ckpts[0], ckpts[1], "--n-samples", "16", "--out", out)
    assert f"output folder {str(out)!r} is being written by another cka-lab process (PID {os.getpid()})" in err
    assert list(out.iterdir()) == []


def test_a_study_refuses_a_folder_another_study_is_writing(capsys, tmp_path):
    out = tmp_path / "study"
    out.mkdir()
    with folder_lock(out, "study folder"):
        err = one_line_error(capsys, "study", "tiny", "--out", out)
    assert f"(PID {os.getpid()})" in err and "study folder" in err


# -- 4, 5. damaged and non-regular checkpoints --------------------------------------------------------


@pytest.mark.parametrize("command", ["info", "compare", "report"])
def test_a_checkpoint_whose_meta_is_a_list_is_one_line_in_every_command(capsys, ckpts, tmp_path, command):
    a, b, bad = ckpts
    argv = {"info": [bad], "compare": [bad, b, "--n-samples", "16", "--out", tmp_path / "o"],
            "report": [bad, b, "--n-samples", "16", "--out", tmp_path / "r.pdf"]}[command]
    err = one_line_error(capsys, command, *argv)  # before: a TypeError traceback
    assert "is a damaged cka_lab checkpoint: its 'meta' is a list, expected a table" in err
    assert not (tmp_path / "o").exists() and not (tmp_path / "r.pdf").exists()


def test_a_fifo_checkpoint_is_refused_at_once_and_compare_leaves_no_folder(capsys, ckpts, tmp_path):
    fifo = tmp_path / "fifo.pt"
    os.mkfifo(fifo)
    err = one_line_error(capsys, "compare", fifo, ckpts[1], "--n-samples", "16", "--out", tmp_path / "o")
    assert "is a FIFO (named pipe), not a regular file" in err  # before: blocked forever, folder made
    assert not (tmp_path / "o").exists()


# -- 7. study --out FILE ------------------------------------------------------------------------------


def test_study_out_that_is_a_file_is_one_line(capsys, tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    err = one_line_error(capsys, "study", "tiny", "--out", f)  # before: NotADirectoryError traceback
    assert "is a file: a study writes a folder" in err and f.read_text() == "x"


# -- 8. plot-log on damaged and diverged logs ---------------------------------------------------------


def test_plot_log_draws_a_log_with_garbage_rows_and_inf_nan_values(capsys, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "train_log.csv").write_text(
        "iteration,lr,loss,s0_attn_entropy_rel,s0_logit_spread\n"
        "10,0.0002,0.5,0.99,0.01\n"
        "garbage row with words\n"
        "20,0.0002,inf,nan,nan\n"
        "30,0.0002,nan,nan,nan\n"
        "40,0.0002,0.25,0.98,0.02,extra,fields\n"
        "xx,yy,zz,1,2\n"
        "50,0.0002,0.2,nan,0.03\n")
    (run / "val_log.csv").write_text("iteration,task,psnr,ssim,images,seconds\n10,x2,30.0,0.9,1,1\n20,x2,nan,nan,1,1\n"
                                     "oops\n")
    assert main(["plot-log", str(run)]) == 0  # before: a traceback
    captured = capsys.readouterr()
    assert (run / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "skipped 1 malformed row" in captured.err


def test_plot_log_of_a_fifo_or_a_log_without_numbers_is_one_line(capsys, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    os.mkfifo(run / "train_log.csv")
    assert "is a FIFO" in one_line_error(capsys, "plot-log", run)
    os.unlink(run / "train_log.csv")
    (run / "train_log.csv").write_text("iteration,loss\nabc,def\n")
    assert "no row with an iteration number" in one_line_error(capsys, "plot-log", run)


# -- 11. an output set is written whole ----------------------------------------------------------------


def test_a_compare_that_fails_midway_keeps_the_earlier_set_whole(capsys, ckpts, tmp_path, monkeypatch):
    out = tmp_path / "o"
    assert main(["compare", str(ckpts[0]), str(ckpts[1]), "--n-samples", "16", "--out", str(out)]) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {"cka.png", "cka.csv", "summary.json"} <= set(before)
    real_fsync = safe_write.os.fsync

    def full_at_the_summary(fd):  # the disk fills up at the last file of the set
        if "summary.json" in safe_write.os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(safe_write.os, "fsync", full_at_the_summary)
    err = one_line_error(capsys, "compare", ckpts[1], ckpts[0], "--n-samples", "16", "--seed", "3", "--out", out)
    assert "No space left" in err
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after == before  # before: new cka.png/cka.csv beside the old summary.json


# -- 12. restore verifies every input before the first output -----------------------------------------


def test_restore_of_a_folder_with_a_truncated_image_writes_nothing(capsys, ckpts, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    for n in ("a", "b", "c"):
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(src / f"{n}.png")
    data = (src / "c.png").read_bytes()
    (src / "c.png").write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    err = one_line_error(capsys, "restore", ckpts[0], src, out, "--task", "x2")
    assert "c.png" in err
    assert not out.exists()  # before: a.png and b.png written, then the refusal


def test_a_restore_folder_is_written_as_a_set_and_keeps_other_files(capsys, ckpts, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.full((24, 24, 3), 128, np.uint8)).save(src / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert main(["restore", str(ckpts[0]), str(src), str(out), "--task", "x2"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "mine.txt"]


# -- cosmetic -----------------------------------------------------------------------------------------


def test_layers_match_without_a_match_is_refused_like_compare(capsys, ckpts):
    err = one_line_error(capsys, "layers", ckpts[0], "--match", "nothing*")  # before: an empty DataFrame
    assert "--match 'nothing*' matches none of the" in err
