"""Paired patch datasets (SR / DN / DR) and evaluation pairs: pairing, degradation, augmentation, seeding."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from cka_lab.data.datasets import (
    NoisyPatchSet,
    RainPatchSet,
    SRPatchSet,
    TrainImage,
    augment_arrays,
    dn_eval_pairs,
    eval_pairs,
    load_images,
    pixel_digest,
    read_rain_pairs,
    sr_eval_pairs,
)
from cka_lab.data.degrade import imresize, official_noisy
from cka_lab.data.images import list_images, read_uint8, to_uint8
from cka_lab.errors import CkaLabError


def _image(pixels: np.ndarray, name: str = "img") -> TrainImage:
    return TrainImage(name, pixels, pixel_digest(pixels))


@pytest.fixture(scope="module")
def set5_hr(data_dir):
    """Set5 HR images (original, un-cropped) as TrainImages."""
    return load_images([data_dir / "sr" / "Set5" / "HR" / "original"])


# -- SR ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [3, 4])
def test_sr_lr_images_equal_the_official_bicubic_files(data_dir, set5_hr, scale):
    """The bicubic check: the LR that SR training crops from is bit-identical to Set5's official LR."""
    ps = SRPatchSet(set5_hr, scale, 24, augment=False)
    official = list_images(data_dir / "sr" / "Set5" / "LR_bicubic" / f"x{scale}")
    for lr, path in zip(ps.lr, official):
        np.testing.assert_array_equal(lr, read_uint8(path))


def test_sr_lr_x2_matches_the_official_files_up_to_rare_ties(data_dir, set5_hr):
    ps = SRPatchSet(set5_hr, 2, 24, augment=False)
    for lr, path in zip(ps.lr, list_images(data_dir / "sr" / "Set5" / "LR_bicubic" / "x2")):
        diff = np.abs(lr.astype(int) - read_uint8(path).astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() <= 1e-4


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_sr_patch_is_the_aligned_crop_of_hr_and_its_bicubic_downscale(set5_hr, scale):
    ps = SRPatchSet(set5_hr[:2], scale, 24, augment=False)
    rng = np.random.default_rng(5)
    for _ in range(4):
        state = rng.bit_generator.state
        i, top, left = ps.locate(rng)
        rng.bit_generator.state = state
        lr, hr = ps.sample(rng)
        assert lr.shape == (3, 24, 24) and hr.shape == (3, 24 * scale, 24 * scale)
        assert lr.dtype == torch.float32 and 0 <= lr.min() and lr.max() <= 1
        full_hr = set5_hr[i].pixels[: set5_hr[i].pixels.shape[0] // scale * scale, : set5_hr[i].pixels.shape[1] // scale * scale]
        s = scale
        np.testing.assert_array_equal(to_uint8(hr), full_hr[s * top : s * (top + 24), s * left : s * (left + 24)])
        np.testing.assert_array_equal(to_uint8(lr), imresize(full_hr, 1 / s)[top : top + 24, left : left + 24])


@pytest.mark.parametrize("scale", [2, 4])
def test_sr_augmentation_moves_lr_and_hr_together(set5_hr, scale):
    """Away from the patch border, the LR patch is MATLAB bicubic of the HR patch under any flip/rotation."""
    ps = SRPatchSet(set5_hr[:3], scale, 24, augment=True)
    rng = np.random.default_rng(0)
    m = 3  # LR pixels whose bicubic support (4*scale HR pixels) lies inside the patch
    for _ in range(8):
        lr, hr = ps.sample(rng)
        lr8, hr8 = to_uint8(lr), to_uint8(hr)
        down = imresize(hr8, 1 / scale)
        diff = np.abs(lr8[m:-m, m:-m].astype(int) - down[m:-m, m:-m].astype(int))
        assert diff.max() <= 1  # flipped sums round differently at exact ties only


def test_augment_arrays_applies_one_transform_to_all_and_reaches_all_eight(tmp_path):
    rng = np.random.default_rng(1)
    small = rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)
    big = np.repeat(np.repeat(small, 2, 0), 2, 1)  # nearest-neighbour x2 of small
    seen = set()
    for _ in range(64):
        a, b = augment_arrays([small, big], rng)
        np.testing.assert_array_equal(np.repeat(np.repeat(a, 2, 0), 2, 1), b)
        seen.add(a.tobytes())
    assert len(seen) == 8


def test_same_generator_state_gives_the_same_sample(set5_hr):
    ps = SRPatchSet(set5_hr[:2], 2, 24)
    a = ps.sample(np.random.default_rng([7, 3, 0, 0]))
    b = ps.sample(np.random.default_rng([7, 3, 0, 0]))
    c = ps.sample(np.random.default_rng([7, 4, 0, 0]))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_patch_larger_than_an_image_is_one_clear_error(data_dir):
    gray = load_images([data_dir / "train" / "BSD400_gray"])[:2]  # 180x180
    with pytest.raises(CkaLabError, match=r"is 45x45 at x4 LR size .* smaller than the 48x48 patch"):
        SRPatchSet(gray, 4, 48)
    with pytest.raises(CkaLabError, match=r"smaller than the 192x192 patch"):
        NoisyPatchSet(gray, 25, 192)
    assert gray[0].pixels.shape == (180, 180, 3)  # gray files become three equal channels


def test_folder_without_images_is_one_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(CkaLabError, match="no images in"):
        load_images([tmp_path])


def test_reduce_halves_images_on_load(data_dir):
    folder = data_dir / "train" / "Sun_Hays80"
    (full,) = load_images([folder])[:1]
    from cka_lab.data.datasets import ImageSource

    (half,) = load_images([ImageSource(folder, 2)])[:1]
    assert half.pixels.shape[:2] == (full.pixels.shape[0] // 2, full.pixels.shape[1] // 2)
    assert half.digest == full.digest  # the digest is of the file's pixels


# -- Denoising ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [15, 25, 50])
def test_noise_has_std_sigma_over_255_and_is_fresh_every_sample(sigma):
    flat = np.full((96, 96, 3), 128, np.uint8)
    ps = NoisyPatchSet([_image(flat)], sigma, 96, augment=False)
    rng = np.random.default_rng(0)
    (n1, c1), (n2, c2) = ps.sample(rng), ps.sample(rng)
    assert torch.equal(c1, c2)  # same clean crop (the image is flat) ...
    r1, r2 = n1 - c1, n2 - c2
    assert not torch.equal(r1, r2)  # ... different noise
    for r in (r1, r2):
        assert abs(r.std().item() * 255 - sigma) < 0.03 * sigma
        assert abs(r.mean().item() * 255) < 0.1 * sigma
    assert abs(torch.corrcoef(torch.stack([r1.flatten(), r2.flatten()]))[0, 1]) < 0.03
    assert n1.min() < 0 or n1.max() > 1 or sigma < 50  # not clipped


def test_denoising_target_is_the_clean_crop(set5_hr):
    ps = NoisyPatchSet(set5_hr[:1], 25, 96, augment=False)
    noisy, clean = ps.sample(np.random.default_rng(3))
    rng = np.random.default_rng(3)
    rng.random()  # the image draw (one uniform, inverse CDF over the images' weights)
    img = set5_hr[0].pixels
    top, left = int(rng.integers(img.shape[0] - 95)), int(rng.integers(img.shape[1] - 95))
    np.testing.assert_array_equal(to_uint8(clean), img[top : top + 96, left : left + 96])


# -- Deraining ------------------------------------------------------------------------------------------


def _rain_folder(data_dir, dest, names=("001", "002")):
    for sub in ("rain", "norain"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
    for n in names:
        shutil.copy(data_dir / f"derain/Rain100H/rain/rain-{n}.png", dest / "rain")
        shutil.copy(data_dir / f"derain/Rain100H/norain/norain-{n}.png", dest / "norain")
    return dest


def test_rain_pairs_are_paired_by_name(data_dir, tmp_path):
    folder = _rain_folder(data_dir, tmp_path / "r")
    pairs = read_rain_pairs(folder)
    assert [p.name for p in pairs] == ["001", "002"]
    np.testing.assert_array_equal(pairs[1].norain, read_uint8(folder / "norain" / "norain-002.png"))
    np.testing.assert_array_equal(pairs[1].rain, read_uint8(folder / "rain" / "rain-002.png"))


def test_rain_patches_stay_aligned_under_augmentation(data_dir, tmp_path):
    pairs = read_rain_pairs(_rain_folder(data_dir, tmp_path / "r"))
    ps = RainPatchSet(pairs, 96, augment=True)
    rng = np.random.default_rng(2)
    for _ in range(6):
        rain, clean = ps.sample(rng)
        # Rain never darkens a pixel (shared/data/README.md): true only if the crops are aligned
        assert (to_uint8(rain).astype(int) - to_uint8(clean).astype(int)).min() >= 0


def test_unpaired_rain_file_is_one_clear_error(data_dir, tmp_path):
    folder = _rain_folder(data_dir, tmp_path / "r")
    (folder / "norain" / "norain-002.png").unlink()
    with pytest.raises(CkaLabError, match=r"unpaired file .* rain/rain-002.png has no partner in norain/"):
        read_rain_pairs(folder)


def test_rain_folder_without_subfolders_is_one_clear_error(tmp_path):
    with pytest.raises(CkaLabError, match="needs the subfolders rain/ and norain/"):
        read_rain_pairs(tmp_path)


# -- Evaluation pairs -------------------------------------------------------------------------------------


def test_set5_eval_pairs_use_the_official_files_paired_by_sorted_name(data_dir):
    pairs = sr_eval_pairs(data_dir / "sr" / "Set5", 3)
    assert [p.name for p in pairs] == ["baby", "bird", "butterfly", "head", "woman"]
    for p in pairs:
        assert p.target.shape[:2] == (p.input.shape[-2] * 3, p.input.shape[-1] * 3)
    np.testing.assert_array_equal(to_uint8(pairs[0].input), read_uint8(data_dir / "sr/Set5/LR_bicubic/x3/babyx3.png"))


def test_sr_eval_pairs_of_a_plain_hr_folder_make_lr_with_bicubic(data_dir, tmp_path):
    shutil.copy(data_dir / "sr/Set5/HR/original/bird.png", tmp_path)
    (pair,) = sr_eval_pairs(tmp_path, 4)
    np.testing.assert_array_equal(to_uint8(pair.input), read_uint8(data_dir / "sr/Set5/LR_bicubic/x4/birdx4.png"))


def test_denoising_eval_noise_follows_the_official_protocol(data_dir):
    folder = data_dir / "denoise" / "McMaster"
    pairs = dn_eval_pairs(folder, 25)
    state = np.random.RandomState(0)
    files = list_images(folder)
    for pair, path in list(zip(pairs, files))[:3]:
        assert torch.equal(pair.input, official_noisy(read_uint8(path), 25, rng=state))


def test_eval_pairs_crop_and_limit(data_dir):
    pairs = eval_pairs(data_dir / "sr" / "Set5", "x2", max_images=2, crop=48)
    assert len(pairs) == 2
    assert pairs[0].input.shape[-2:] == (48, 48) and pairs[0].target.shape[:2] == (96, 96)
    full = eval_pairs(data_dir / "sr" / "Set5", "x2", max_images=1)[0]
    h, w = full.input.shape[-2:]
    top, left = (h - 48) // 2, (w - 48) // 2
    assert torch.equal(pairs[0].input, full.input[..., top : top + 48, left : left + 48])
    np.testing.assert_array_equal(pairs[0].target, full.target[2 * top : 2 * top + 96, 2 * left : 2 * left + 96])
