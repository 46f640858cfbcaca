"""``cka-lab info`` and ``cka-lab restore`` as a user meets them: output, files, and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from cka_lab.cli import main
from cka_lab.data.images import read_uint8
from cka_lab.data.probes import bundled_images
from cka_lab.models import create_edt, save_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "srx2x3.pt"
    save_checkpoint(path, create_edt("SRx2x3_EDTT"), meta={"source": "test fixture"})
    return path


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_the_subcommands():
    out = subprocess.run([sys.executable, "-m", "cka_lab", "--help"], capture_output=True, text=True, check=True).stdout
    for name in ("info", "restore"):
        assert name in out


def test_info_prints_architecture_heads_parameters_and_provenance(capsys, ckpt):
    code, out, _ = run_cli(capsys, "info", ckpt)
    assert code == 0
    assert "SRx2x3_EDTT" in out and "x2, x3" in out and "source" in out and "test fixture" in out
    n = create_edt("SRx2x3_EDTT").num_parameters()
    assert f"{n:,}" in out
    code, out, _ = run_cli(capsys, "info", ckpt, "--json")
    d = json.loads(out)
    assert d["arch"] == "SRx2x3_EDTT" and d["tasks"] == ["x2", "x3"] and d["parameters"] == n


def _crop(src, dst, top, left, size):
    Image.fromarray(read_uint8(src)[top : top + size, left : left + size]).save(dst)
    return dst


def test_restore_writes_an_upscaled_image_and_scores_it(capsys, ckpt, tmp_path):
    lr = _crop(bundled_images("sr_lr_x2")[0], tmp_path / "lr.png", 20, 30, 40)
    hr = _crop(bundled_images("sr_hr")[0], tmp_path / "hr.png", 40, 60, 80)
    out = tmp_path / "sr.png"
    code, text, _ = run_cli(capsys, "restore", ckpt, lr, out, "--task", "x2", "--reference", hr)
    assert code == 0
    h, w = read_uint8(lr).shape[:2]
    assert read_uint8(out).shape == (2 * h, 2 * w, 3)
    assert "PSNR" in text and "dB" in text


def test_restore_a_folder_writes_one_output_per_image(capsys, ckpt, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for p in bundled_images("sr_lr_x2")[:2]:
        _crop(p, folder / p.name, 0, 0, 30)
    code, _, _ = run_cli(capsys, "restore", ckpt, folder, tmp_path / "out", "--task", "x3")
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in folder.iterdir())


def _one_line_error(capsys, *argv):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cka-lab: error: ")
    assert "Traceback" not in err
    return lines[0]


def test_bad_input_gets_one_line_and_a_non_zero_exit(capsys, ckpt, tmp_path):
    lr = bundled_images("sr_lr_x2")[0]
    assert "unknown EDT architecture" in _one_line_error(capsys, "info", ckpt, "--arch", "SRx9_EDTQ")
    msg = _one_line_error(capsys, "info", ckpt, "--arch", "SRx2x3_EDTB")
    assert "head_sr_x2.0.weight" in msg and "(8, 3, 3, 3)" in msg and "(32, 3, 3, 3)" in msg
    (tmp_path / "notes.txt").write_text("not weights")
    assert "not a PyTorch checkpoint" in _one_line_error(capsys, "info", tmp_path / "notes.txt")
    assert "does not exist" in _one_line_error(capsys, "info", tmp_path / "missing.pt")
    assert "no head for task 'g25'" in _one_line_error(capsys, "restore", ckpt, lr, tmp_path / "o.png", "--task", "g25")
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.zeros((8, 8, 4), np.uint8), "RGBA").save(rgba)
    assert "channel" in _one_line_error(capsys, "restore", ckpt, rgba, tmp_path / "o.png", "--task", "x2")


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo owned > /dev/null",))


def test_a_checkpoint_that_would_run_code_is_refused(capsys, tmp_path):
    torch.save({"x": _Exploit()}, tmp_path / "evil.pt")
    assert "refusing to load" in _one_line_error(capsys, "info", tmp_path / "evil.pt")


def test_the_console_script_reports_errors_without_a_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "cka_lab", "info", str(tmp_path / "missing.pt")], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("cka-lab: error:") and "Traceback" not in proc.stderr
