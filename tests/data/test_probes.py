"""Specification of cka_lab.data.probes: bundled images and deterministic probe crops."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest
import torch
from PIL import Image

from cka_lab.data.images import read_uint8
from cka_lab.data.probes import ASSETS_DIR, BUNDLED_KINDS, bundled_images, probe_batches, probe_plan
from cka_lab.errors import CkaLabError

# --- bundled images ------------------------------------------------------------------------------


def test_every_bundled_kind_has_images():
    counts = {kind: len(bundled_images(kind)) for kind in BUNDLED_KINDS}
    assert counts == {"sr_lr_x2": 5, "sr_hr": 5, "clean": 3, "rain": 2, "norain": 2, "probes": 68}


def test_bundled_sr_lr_pairs_with_hr_by_sorted_name_at_half_size():
    for lr, hr in zip(bundled_images("sr_lr_x2"), bundled_images("sr_hr")):
        assert lr.name == hr.stem + "x2.png"
        (wl, hl), (wh, hh) = Image.open(lr).size, Image.open(hr).size
        assert (2 * wl, 2 * hl) == (wh, hh)


def test_bundled_assets_stay_small():
    total = sum(p.stat().st_size for p in ASSETS_DIR.rglob("*") if p.is_file())
    probes = sum(p.stat().st_size for p in (ASSETS_DIR / "probes_cbsd68").iterdir())
    assert total - probes < 3_000_000  # the demo images
    assert probes < 5_000_000  # 68 lossless 192 px crops, the default probe set


def test_assets_readme_records_the_sha256_of_every_bundled_image():
    readme = (ASSETS_DIR / "README.md").read_text()
    rows = re.findall(r"^\| ([\w-]+/[\w.-]+\.png) \| .*? \| .*? \| ([0-9a-f]{64}) \| ([0-9a-f]{64}|same) \|$",
                      readme, flags=re.M)
    bundled = {f"{p.parent.name}/{p.name}" for kind in BUNDLED_KINDS if kind != "probes"
               for p in bundled_images(kind)}
    assert {r[0] for r in rows} == bundled  # the probe crops have their own PROVENANCE.csv (next test)
    for rel, source_sha, own_sha in rows:
        digest = hashlib.sha256((ASSETS_DIR / rel).read_bytes()).hexdigest()
        assert digest == (source_sha if own_sha == "same" else own_sha), rel


def test_probe_crops_provenance_records_every_crop_and_its_sha256():
    import csv

    with (ASSETS_DIR / "probes_cbsd68" / "PROVENANCE.csv").open() as f:
        rows = list(csv.DictReader(f))
    files = {p.name for p in bundled_images("probes")}
    assert {r["file"] for r in rows} == files and len(files) == 68
    for r in rows:
        assert hashlib.sha256((ASSETS_DIR / "probes_cbsd68" / r["file"]).read_bytes()).hexdigest() == r["sha256"]
        assert r["source_repo"] and len(r["source_commit"]) == 40


def test_bundled_lr_files_are_the_shared_official_files(data_dir):
    for p in bundled_images("sr_lr_x2"):
        assert p.read_bytes() == (data_dir / "sr/Set5/LR_bicubic/x2" / p.name).read_bytes()


def test_unknown_bundled_kind_raises():
    with pytest.raises(CkaLabError, match="sr_lr_x2"):
        bundled_images("div2k")


# --- probe crops ---------------------------------------------------------------------------------

def test_probe_batches_have_the_requested_shapes():
    batches = list(probe_batches(bundled_images("sr_lr_x2"), patch=32, n_samples=10, seed=0, batch_size=4))
    assert [tuple(b.shape) for b in batches] == [(4, 3, 32, 32), (4, 3, 32, 32), (2, 3, 32, 32)]
    assert all(b.dtype == torch.float32 and 0 <= b.min() and b.max() <= 1 for b in batches)


def test_probe_batches_are_the_same_every_time_for_the_same_arguments():
    kwargs = dict(patch=48, n_samples=12, seed=3, batch_size=5)
    a = torch.cat(list(probe_batches(bundled_images("clean"), **kwargs)))
    b = torch.cat(list(probe_batches(bundled_images("clean"), **kwargs)))
    assert torch.equal(a, b)
    batches = probe_batches(bundled_images("clean"), **kwargs)
    assert torch.equal(torch.cat(list(batches)), torch.cat(list(batches)))  # re-iterable, same again
    assert len(batches) == 3


def test_probe_crops_do_not_depend_on_the_batch_size():
    def crops(bs: int, task=None) -> torch.Tensor:
        return torch.cat(list(probe_batches(ASSETS_DIR / "clean", patch=40, n_samples=7, seed=1,
                                            batch_size=bs, task=task)))
    assert torch.equal(crops(1), crops(7))
    assert torch.equal(crops(2, "g25"), crops(3, "g25"))


def test_a_different_seed_gives_different_crops():
    a = torch.cat(list(probe_batches(ASSETS_DIR / "clean", patch=40, n_samples=6, seed=0, batch_size=6)))
    b = torch.cat(list(probe_batches(ASSETS_DIR / "clean", patch=40, n_samples=6, seed=1, batch_size=6)))
    assert not torch.equal(a, b)


def test_probe_crops_are_exact_windows_of_the_images_image_by_image():
    paths = bundled_images("clean")
    plan = probe_plan(paths, patch=40, n_samples=6, seed=0)  # 3 images: 2 crops each, consecutive
    assert [c.path for c in plan] == [paths[0], paths[0], paths[1], paths[1], paths[2], paths[2]]
    assert [c.image for c in plan] == [0, 0, 1, 1, 2, 2]
    plan = probe_plan(paths, patch=40, n_samples=5, seed=0)  # 2 crops per image, the last image gives one
    assert [c.image for c in plan] == [0, 0, 1, 1, 2]
    first = next(iter(probe_batches(paths, patch=40, n_samples=6, seed=0, batch_size=6)))
    for crop, tensor in zip(plan, first):
        img = read_uint8(crop.path)[crop.top:crop.top + 40, crop.left:crop.left + 40]
        assert torch.equal(tensor, torch.from_numpy(img.transpose(2, 0, 1).astype(np.float32) / 255.0))


def test_denoising_task_adds_seeded_gaussian_noise_of_sigma_over_255():
    kwargs = dict(patch=64, n_samples=6, seed=0, batch_size=6)
    clean = next(iter(probe_batches(ASSETS_DIR / "clean", **kwargs)))
    noisy = next(iter(probe_batches(ASSETS_DIR / "clean", task="g25", **kwargs)))
    assert (noisy - clean).std().item() == pytest.approx(25 / 255, rel=0.03)
    assert noisy.min() < 0 or noisy.max() > 1  # no clipping
    sr = next(iter(probe_batches(ASSETS_DIR / "clean", task="x2", **kwargs)))
    assert torch.equal(sr, clean)


def test_images_smaller_than_the_patch_are_skipped(tmp_path):
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "a_small.png")
    Image.fromarray(np.full((50, 60), 7, np.uint8), mode="L").save(tmp_path / "b_gray.png")
    plan = probe_plan(tmp_path, patch=32, n_samples=3, seed=0)
    assert {c.path.name for c in plan} == {"b_gray.png"}
    batch = next(iter(probe_batches(tmp_path, patch=32, n_samples=3, seed=0, batch_size=3)))
    assert batch.shape == (3, 3, 32, 32)  # gray is used as three equal channels


def test_next_on_the_result_walks_through_the_batches():
    batches = probe_batches(ASSETS_DIR / "clean", patch=16, n_samples=3, seed=0, batch_size=2)
    assert next(batches).shape[0] == 2 and next(batches).shape[0] == 1
    with pytest.raises(StopIteration):
        next(batches)


def test_a_folder_without_images_raises(tmp_path):
    with pytest.raises(CkaLabError, match="no images"):
        probe_batches(tmp_path, patch=16, n_samples=4, seed=0, batch_size=2)


def test_a_patch_larger_than_every_image_raises():
    with pytest.raises(CkaLabError, match="larger than every"):
        probe_batches(bundled_images("clean"), patch=241, n_samples=4, seed=0, batch_size=2)


@pytest.mark.parametrize("batch_size", [0, -1])
def test_a_batch_size_below_one_raises(batch_size):
    with pytest.raises(CkaLabError, match="batch_size"):
        probe_batches(bundled_images("clean"), patch=16, n_samples=4, seed=0, batch_size=batch_size)


def test_an_unknown_task_raises():
    with pytest.raises(CkaLabError, match="unknown task"):
        probe_batches(bundled_images("clean"), patch=16, n_samples=4, seed=0, batch_size=2, task="blur")


def test_the_default_probe_set_is_68_distinct_cbsd68_crops_with_their_provenance():
    import csv
    import hashlib

    paths = bundled_images("probes")
    assert len(paths) == 68
    rows = {r["file"]: r for r in csv.DictReader(open(paths[0].parent / "PROVENANCE.csv"))}
    assert sorted(rows) == [p.name for p in paths]
    for p in paths:
        assert hashlib.sha256(p.read_bytes()).hexdigest() == rows[p.name]["sha256"]
        assert read_uint8(p).shape == (192, 192, 3)
    assert len({hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}) == 68
    plan = probe_plan(paths, patch=192, n_samples=128, seed=0)
    assert [c.image for c in plan][:4] == [0, 0, 1, 1] and len({c.image for c in plan}) == 64
