"""Issue 15 as a user meets it: every failure one line and exit 2, checks before the work, safe outputs."""

from __future__ import annotations

import errno
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cka_lab.cli import main
from cka_lab.data.images import read_uint8
from cka_lab.io import safe_write
from cka_lab.models import create_edt, save_checkpoint

TINY = dict(embed_dim=12, depths=(2,), num_heads=(2,), drop_path_rate=0.0)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Two tiny seeded SR x2 checkpoints; in the second, block 0 adds exactly nothing (a zero layer)."""
    d = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    a = create_edt("SRx2_EDTT", **TINY)
    b = create_edt("SRx2_EDTT", **TINY)
    with torch.no_grad():
        for name, p in b.named_parameters():
            if "blocks.0." in name and (".proj." in name or ".fc2." in name):
                p.zero_()
    save_checkpoint(d / "a.pt", a)
    save_checkpoint(d / "zero.pt", b)
    return d / "a.pt", d / "zero.pt"


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "in" / "a.png"
    path.parent.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(path)
    return path


def one_line_error(capsys, *argv) -> str:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("cka-lab: error: ") and "\n" not in err, err
    return err


@pytest.fixture
def no_forward(monkeypatch):
    """Fail the test if a restore reaches the model: checks must come first."""
    from cka_lab.models import tiling

    def boom(*a, **k):
        raise AssertionError("a forward pass ran before the checks")

    monkeypatch.setattr(tiling, "restore_tiled_uint8", boom)


def _enospc(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")


def _temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")] if folder.exists() else []


# -- restore ---------------------------------------------------------------------------------------


def test_restore_refuses_name_collisions_and_in_equal_out_before_any_work(capsys, ckpts, image, no_forward, tmp_path):
    Image.open(image).save(image.with_suffix(".jpg"))
    out = tmp_path / "out"
    assert "would both be written to" in one_line_error(capsys, "restore", ckpts[0], image.parent, out, "--task", "x2")
    assert not out.exists()
    image.with_suffix(".jpg").unlink()
    before = image.read_bytes()
    assert "input folder" in one_line_error(capsys, "restore", ckpts[0], image.parent, image.parent, "--task", "x2")
    assert "overwrite an input" in one_line_error(capsys, "restore", ckpts[0], image, image, "--task", "x2")
    assert image.read_bytes() == before


def test_restore_checks_the_out_name_and_folder_before_inference(capsys, ckpts, image, no_forward, tmp_path):
    assert "needs an image suffix" in one_line_error(capsys, "restore", ckpts[0], image, tmp_path / "o.txt", "--task", "x2")
    (tmp_path / "dir").mkdir()
    assert "is a folder" in one_line_error(capsys, "restore", ckpts[0], image, tmp_path / "dir", "--task", "x2")
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    assert "is a file" in one_line_error(capsys, "restore", ckpts[0], image, blocker / "o.png", "--task", "x2")
    assert "--tile must be" in one_line_error(capsys, "restore", ckpts[0], image, tmp_path / "o.png", "--task", "x2",
                                              "--tile", "-5")


def test_restore_on_a_full_disk_is_one_line_and_leaves_no_file(capsys, ckpts, image, tmp_path, monkeypatch):
    out = tmp_path / "out" / "a.png"
    monkeypatch.setattr(safe_write.os, "fsync", _enospc)
    assert "No space left" in one_line_error(capsys, "restore", ckpts[0], image, out, "--task", "x2")
    assert not out.exists() and not out.parent.exists()  # the folder it made is removed again
    monkeypatch.undo()

    def zlib_fails(im, fp, filename, *a, **k):
        fp.write(b"\x89PNG partial")
        raise zlib.error("Error -3 while compressing data")

    monkeypatch.setitem(Image.SAVE, "PNG", zlib_fails)
    assert "zlib.error" in one_line_error(capsys, "restore", ckpts[0], image, out, "--task", "x2")
    assert not out.exists() and _temps(tmp_path) == []


def test_restore_through_a_planted_symlink_leaves_its_target_untouched(capsys, ckpts, image, tmp_path):
    victim = tmp_path / "victim.png"
    victim.write_bytes(b"precious")
    out = tmp_path / "o.png"
    out.symlink_to(victim)
    assert main(["restore", str(ckpts[0]), str(image), str(out), "--task", "x2", "--tile", "24",
                 "--tile-overlap", "24"]) == 0
    assert "tiles of 24 px + 24 px overlap" in capsys.readouterr().out
    assert victim.read_bytes() == b"precious"
    assert not out.is_symlink() and read_uint8(out).shape == (60, 80, 3)


def test_a_decompression_bomb_header_is_one_line(capsys, ckpts, tmp_path):
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0))
                     + chunk(b"IEND", b""))
    assert "megapixels" in one_line_error(capsys, "restore", ckpts[0], bomb, tmp_path / "o.png", "--task", "x2")


# -- layers, compare, report -------------------------------------------------------------------------


def test_layers_refuses_a_non_positive_size(capsys, ckpts):
    assert "--size must be a positive" in one_line_error(capsys, "layers", ckpts[0], "--size", "-24")
    assert "--size must be a positive" in one_line_error(capsys, "layers", ckpts[0], "--size", "0")


def test_compare_refuses_patch_0_and_empty_layers_and_leaves_no_folder(capsys, ckpts, tmp_path):
    out = tmp_path / "cmp"
    assert "--patch must be" in one_line_error(capsys, "compare", *ckpts, "--patch", "0", "--out", out)
    assert "empty name" in one_line_error(capsys, "compare", *ckpts, "--layers", "", "--out", out)
    assert "empty name" in one_line_error(capsys, "compare", *ckpts, "--layers", "body.layers.0,,x", "--out", out)
    assert "no head" in one_line_error(capsys, "compare", *ckpts, "--task", "x4", "--out", out)
    assert not out.exists()


def _strict(text: str):
    def refuse(name):
        raise AssertionError(f"summary.json holds {name}: not valid JSON")

    return json.loads(text, parse_constant=refuse)


def test_compare_writes_strict_json_with_null_for_a_zero_layer_and_survives_planted_links(capsys, ckpts, tmp_path):
    out = tmp_path / "cmp"
    out.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious")
    for name in ("summary.json", "cka.csv", "cka.png", "cka.svg", ".write_test"):
        (out / name).symlink_to(victim)
    code = main([str(a) for a in ("compare", *ckpts, "--n-samples", "8", "--batch-size", "4", "--out", out)])
    capsys.readouterr()
    assert code == 0
    assert victim.read_text() == "precious"
    summary = _strict((out / "summary.json").read_text())
    zero = [k for k, v in summary["diagonal"].items() if v is None]
    assert zero == ["body.layers.0.residual_group.blocks.0"], summary["diagonal"]
    assert _temps(out) == []


def test_compare_on_a_full_disk_is_one_line_and_leaves_no_temp(capsys, ckpts, tmp_path, monkeypatch):
    out = tmp_path / "cmp"
    monkeypatch.setattr(safe_write.os, "fsync", _enospc)
    assert "No space left" in one_line_error(capsys, "compare", *ckpts, "--n-samples", "8", "--batch-size", "4",
                                             "--out", out)
    assert _temps(out) == [] and (not out.exists() or list(out.iterdir()) == [])


def test_report_checks_every_checkpoint_and_out_before_the_first_pair(capsys, ckpts, tmp_path, monkeypatch):
    from cka_lab.cli import contrast

    def boom(*a, **k):
        raise AssertionError("a pair was computed before the checks")

    monkeypatch.setattr(contrast, "run_contrast", boom)
    import cka_lab.cli.report as report

    monkeypatch.setattr(report, "run_contrast", boom)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 truncated")
    a, b = ckpts
    assert "not a PyTorch checkpoint" in one_line_error(capsys, "report", a, b, a, corrupt, "--out", tmp_path / "r.pdf")
    (tmp_path / "dir.pdf").mkdir()
    assert "is a folder" in one_line_error(capsys, "report", a, b, "--out", tmp_path / "dir.pdf")
    assert "must be a .pdf" in one_line_error(capsys, "report", a, b, "--out", tmp_path / "r.png")
    assert "--patch must be" in one_line_error(capsys, "report", a, b, "--patch", "0", "--out", tmp_path / "r.pdf")
    assert not (tmp_path / "r.pdf").exists()


def test_a_truncated_checkpoint_message_is_not_cut_mid_word(capsys, ckpts, tmp_path):
    data = Path(ckpts[0]).read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    err = one_line_error(capsys, "info", cut)
    reason = err.split("is not a PyTorch checkpoint (", 1)[1].rstrip(")")
    assert reason.endswith(" ...") or len(reason) <= 160
    words = reason.removesuffix(" ...").split()
    assert words and all(w.strip(",;:.()'\"") for w in words)


def test_evaluate_in_tiles_scores_like_the_whole_image(capsys, ckpts, data_dir):
    args = ["evaluate", str(ckpts[0]), "--dataset", str(data_dir / "sr/Set5"), "--task", "x2", "--max-images", "1",
            "--crop", "96", "--json", "--device", "cpu"]
    assert main(args + ["--tile", "0"]) == 0
    whole = json.loads(capsys.readouterr().out)
    assert main(args + ["--tile", "24", "--tile-overlap", "48"]) == 0
    tiled = json.loads(capsys.readouterr().out)
    assert tiled["psnr"] == pytest.approx(whole["psnr"], abs=1e-3)
    assert tiled["ssim"] == pytest.approx(whole["ssim"], abs=1e-5)
    assert "--tile-overlap must be" in one_line_error(capsys, *args, "--tile-overlap", "-1")


def test_report_on_a_full_disk_is_one_line_and_a_planted_link_is_never_followed(capsys, ckpts, tmp_path, monkeypatch):
    out = tmp_path / "reports" / "r.pdf"
    args = ["report", *map(str, ckpts), "--n-samples", "8", "--batch-size", "4", "--out", str(out)]
    monkeypatch.setattr(safe_write.os, "fsync", _enospc)
    assert "No space left" in one_line_error(capsys, *args)
    assert _temps(tmp_path) == [] and not out.parent.exists()  # the folder the report made is removed again
    monkeypatch.undo()
    out.parent.mkdir()
    victim = tmp_path / "victim.pdf"
    victim.write_text("precious")
    out.symlink_to(victim)
    (out.parent / f".{out.name}.tmp").symlink_to(victim)  # the fixed temporary name the old code wrote through
    assert main(args) == 0
    capsys.readouterr()
    assert victim.read_text() == "precious"
    assert not out.is_symlink() and out.read_bytes()[:5] == b"%PDF-"
