"""``cka-lab train`` and ``cka-lab evaluate``: runs, JSON output, and one-line errors with exit status 2."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from cka_lab.cli import main
from cka_lab.models import create_edt, read_checkpoint
from tests.threads import one_thread
from tests.train.helpers import make_train_folders, tiny_config


@pytest.fixture(autouse=True)
def _quiet_single_thread(monkeypatch):
    monkeypatch.setenv("CKA_LAB_NO_PROGRESS", "1")
    with one_thread():
        yield


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    """A one-iteration SRx2 run made with ``cka-lab train``: (config path, run folder)."""
    tmp = tmp_path_factory.mktemp("cli_train")
    folders = make_train_folders(data_dir, tmp / "images")
    cfg = tmp / "sr.toml"
    cfg.write_text(tiny_config("SRx2_EDTT", folders, data_dir))
    out = tmp / "run"
    assert main(["train", str(cfg), "--max-iters", "1", "--out", str(out)]) == 0
    return cfg, out


def _one_line_error(capsys, argv, expected):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cka-lab: error: ") and "\n" not in err, err
    assert expected in err, err
    return err


def test_train_writes_a_checkpoint_at_max_iters(trained):
    _, out = trained
    assert read_checkpoint(out / "last.pt").train["iteration"] == 1


def test_train_resume_continues(trained, tmp_path):
    cfg, out = trained
    run = tmp_path / "run"
    shutil.copytree(out, run)
    assert main(["train", str(cfg), "--resume", "--max-iters", "2", "--out", str(run)]) == 0
    assert read_checkpoint(run / "last.pt").train["iteration"] == 2


def test_train_unknown_config_key(capsys, trained, tmp_path):
    cfg, _ = trained
    bad = tmp_path / "bad.toml"
    bad.write_text(cfg.read_text().replace("[schedule]\n", "[schedule]\nbatchsize = 4\n"))
    _one_line_error(capsys, ["train", str(bad)], "[schedule] has no key 'batchsize' (did you mean 'batch_size'?)")


def test_train_resume_with_another_config(capsys, trained, tmp_path):
    cfg, out = trained
    other = tmp_path / "other.toml"
    other.write_text(cfg.read_text().replace('arch = "SRx2_EDTT"', 'arch = "SRx3_EDTT"'))
    _one_line_error(capsys, ["train", str(other), "--resume", "--out", str(out)],
                    "another config (model.arch is 'SRx2_EDTT' there but 'SRx3_EDTT' here)")


def test_train_image_folder_without_images(capsys, trained, tmp_path):
    cfg, _ = trained
    empty = tmp_path / "empty"
    empty.mkdir()
    text = cfg.read_text()
    start = text.index("sr = [")
    bad = tmp_path / "bad.toml"
    bad.write_text(text[:start] + f'sr = ["{empty}"]' + text[text.index("\n", start):])
    _one_line_error(capsys, ["train", str(bad), "--out", str(tmp_path / "run")], "no images in")


def test_evaluate_json_on_a_trained_checkpoint(capsys, trained, data_dir):
    _, out = trained
    assert main(["evaluate", str(out / "last.pt"), "--dataset", str(data_dir / "sr/Set5"), "--task", "x2",
                 "--max-images", "2", "--crop", "48", "--json", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["arch"] == "SRx2_EDTT" and result["task"] == "x2"
    assert result["y_channel"] is True and result["crop_border"] == 2
    assert [im["name"] for im in result["images"]] == ["baby", "bird"]
    assert result["psnr"] == pytest.approx(sum(im["psnr"] for im in result["images"]) / 2)


def test_evaluate_an_official_state_dict_file(capsys, data_dir, tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "DNg25_official.pth"
    torch.save(create_edt("DNg25_EDTT").state_dict(), path)  # the official layout: a bare state dict
    assert main(["evaluate", str(path), "--dataset", str(data_dir / "denoise/McMaster"), "--task", "g25",
                 "--max-images", "1", "--crop", "96", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "DNg25_EDTT, task g25, 1 images, RGB, border 0" in out


def test_evaluate_errors(capsys, trained, data_dir, tmp_path):
    _, out = trained
    ckpt = str(out / "last.pt")
    _one_line_error(capsys, ["evaluate", ckpt, "--dataset", str(data_dir / "sr/Set5"), "--task", "x3"],
                    "has no head for task 'x3'")
    _one_line_error(capsys, ["evaluate", ckpt, "--dataset", str(tmp_path / "missing"), "--task", "x2"],
                    "not found")
    (tmp_path / "rain" / "rain").mkdir(parents=True)
    (tmp_path / "rain" / "norain").mkdir()
    shutil.copy(data_dir / "derain/Rain100L/rain/rain-051.png", tmp_path / "rain" / "rain")
    shutil.copy(data_dir / "derain/Rain100L/norain/norain-053.png", tmp_path / "rain" / "norain")
    path = tmp_path / "DRls.pth"
    torch.save(create_edt("DRls_EDTT").state_dict(), path)
    _one_line_error(capsys, ["evaluate", str(path), "--dataset", str(tmp_path / "rain"), "--task", "L"],
                    "unpaired file")


def test_plot_log_draws_the_runs_figure(capsys, trained, tmp_path):
    _, out = trained
    target = tmp_path / "fig.png"
    assert main(["plot-log", str(out), "--out", str(target)]) == 0
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert capsys.readouterr().out.strip() == str(target)
    header = (out / "train_log.csv").read_text().splitlines()[0]
    assert "s0_q_update_ratio" in header and "s3_plain_entropy_rel" in header and "s3_shifted_logit_spread" in header
    assert (out / "attn_heads.csv").is_file()


def test_plot_log_errors(capsys, trained, tmp_path):
    _, out = trained
    _one_line_error(capsys, ["plot-log", str(tmp_path / "nope")], "run folder")
    _one_line_error(capsys, ["plot-log", str(tmp_path)], "holds no train_log.csv")
    _one_line_error(capsys, ["plot-log", str(out), "--out", str(tmp_path / "x.txt")], "use a .png, .svg or .pdf")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train_log.csv").write_text("a,b\n1,2\n")
    _one_line_error(capsys, ["plot-log", str(bad)], "no 'iteration' column")
