"""Specification of cka_lab.metrics.quality: PSNR / SSIM equal to the official EDT metric code.

The fixture arrays are HWC **BGR** uint8 (as cv2.imread gives them); our API takes RGB, so every
array is flipped with ``[:, :, ::-1]`` before scoring.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from cka_lab.errors import CkaLabError
from cka_lab.metrics.quality import gaussian_kernel_1d, psnr, psnr_ssim, ssim, task_metric_settings

TOL = 1e-4
# The pair list is needed at collection time (parametrize), so it is located like conftest.shared_dir.
_SHARED = Path(os.environ.get("CKA_LAB_SHARED") or Path(__file__).resolve().parents[2].parent / "shared")
METRICS = _SHARED / "fixtures" / "edt" / "metrics"
PAIRS = json.loads((METRICS / "psnr_ssim.json").read_text())["pairs"] if METRICS.is_dir() else []
_PAIR_PARAMS = [pytest.param(p, id=f"{p['img1'].split('/')[-1].removesuffix('.npy')}-y{int(p['to_y'])}-bd{p['bd']}")
                for p in PAIRS] or [pytest.param(None, marks=pytest.mark.skip(
                    reason=f"official metric fixtures not found at {METRICS} (set CKA_LAB_SHARED)"))]


def _rgb(fixtures_dir: Path, rel: str) -> np.ndarray:
    return np.load(fixtures_dir / "metrics" / rel)[:, :, ::-1]


@pytest.mark.parametrize("pair", _PAIR_PARAMS)
def test_psnr_and_ssim_equal_every_official_value(pair, fixtures_dir):
    a, b = _rgb(fixtures_dir, pair["img1"]), _rgb(fixtures_dir, pair["img2"])
    p, s = psnr_ssim(a, b, crop_border=pair["bd"], y_channel=pair["to_y"])
    assert p == pytest.approx(pair["psnr"], abs=TOL)
    assert s == pytest.approx(pair["ssim"], abs=TOL)
    assert psnr(a, b, crop_border=pair["bd"], y_channel=pair["to_y"]) == p
    assert ssim(a, b, crop_border=pair["bd"], y_channel=pair["to_y"]) == s


def test_psnr_equals_official_value_for_set5_butterfly_x2_bicubic(fixtures_dir):
    a = _rgb(fixtures_dir, "arrays/sr_x2_bicubic_up_bgr_uint8.npy")
    b = _rgb(fixtures_dir, "arrays/sr_x2_hr_bgr_uint8.npy")
    y, bd = task_metric_settings("x2")
    assert psnr(a, b, crop_border=bd, y_channel=y) == pytest.approx(27.7484, abs=1e-4)
    assert ssim(a, b, crop_border=bd, y_channel=y) == pytest.approx(0.91828, abs=1e-5)


def test_float_tensor_output_is_scored_after_uint8_rounding(fixtures_dir):
    # The EDT-T fixture output (float, slightly outside [0, 1]) against its HR crop: official 24.8598 / 0.87092.
    out = torch.from_numpy(np.load(fixtures_dir / "cases/edtt_srx2x3x4/outputs/x2.npy"))
    hr = _rgb(fixtures_dir, "arrays/sr_x2_hr_crop_bgr_uint8.npy")
    p, s = psnr_ssim(out, hr, crop_border=2, y_channel=True)
    assert p == pytest.approx(24.859829575123136, abs=TOL)
    assert s == pytest.approx(0.8709193555067763, abs=TOL)


def test_float_noisy_input_tensor_is_clamped_and_rounded_before_scoring(fixtures_dir):
    noisy = torch.from_numpy(np.load(fixtures_dir / "metrics/arrays/dn_g15_noisy_input_nchw_float32.npy"))
    clean = _rgb(fixtures_dir, "arrays/dn_clean_bgr_uint8.npy")
    p, s = psnr_ssim(noisy, clean)  # g15 setting: RGB, no border
    assert p == pytest.approx(25.3558664911305, abs=TOL)
    assert s == pytest.approx(0.7419546623698915, abs=TOL)


def test_channel_order_does_not_change_rgb_scores(fixtures_dir):
    a = np.load(fixtures_dir / "metrics/arrays/dr_rain100l_001_rain_bgr_uint8.npy")
    b = np.load(fixtures_dir / "metrics/arrays/dr_rain100l_001_norain_bgr_uint8.npy")
    assert psnr_ssim(a, b) == pytest.approx(psnr_ssim(a[:, :, ::-1], b[:, :, ::-1]), abs=1e-12)


def test_identical_images_give_infinite_psnr_and_ssim_one():
    img = np.random.default_rng(0).integers(0, 256, (32, 40, 3), dtype=np.uint8)
    p, s = psnr_ssim(img, img.copy())
    assert p == float("inf") and s == pytest.approx(1.0, abs=1e-12)


def test_psnr_of_a_constant_error_of_one_gray_level():
    a = np.full((20, 20, 3), 100, np.uint8)
    assert psnr(a, a + 1) == pytest.approx(20 * np.log10(255.0), abs=1e-12)


def test_ssim_window_is_opencvs_normalised_gaussian_11_1p5():
    k = gaussian_kernel_1d()
    assert k.shape == (11,) and k.sum() == pytest.approx(1.0, abs=1e-15)
    np.testing.assert_allclose(k[:6], [0.0010283801, 0.0075987581, 0.0360007721,
                                       0.1093606895, 0.2130055377, 0.2660117249], atol=1e-10)
    assert np.array_equal(k, k[::-1])


def test_y_channel_of_a_gray_image_equals_that_of_its_three_channel_version():
    rng = np.random.default_rng(1)
    a, b = (rng.integers(0, 256, (24, 24), dtype=np.uint8) for _ in range(2))
    a3, b3 = (np.repeat(x[:, :, None], 3, axis=2) for x in (a, b))
    assert psnr_ssim(a, b, y_channel=True) == pytest.approx(psnr_ssim(a3, b3, y_channel=True), abs=1e-12)


@pytest.mark.parametrize(
    "task, expected",
    [("x2", (True, 2)), ("x3", (True, 3)), ("x4", (True, 4)),
     ("g15", (False, 0)), ("g25", (False, 0)), ("g50", (False, 0)),
     ("L", (True, 0)), ("H", (True, 0))],
)
def test_task_metric_settings_follow_the_official_test_script(task, expected):
    assert task_metric_settings(task) == expected


def test_unknown_task_raises():
    with pytest.raises(CkaLabError, match="unknown task"):
        task_metric_settings("deblur")


def test_images_of_different_shape_raise():
    with pytest.raises(CkaLabError, match="shape"):
        psnr(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8))


def test_float_numpy_arrays_are_refused_because_their_scale_is_ambiguous():
    with pytest.raises(CkaLabError, match="uint8"):
        psnr(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)))


def test_a_border_that_leaves_nothing_raises():
    with pytest.raises(CkaLabError, match="crop_border"):
        psnr(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8), crop_border=4)


def test_ssim_on_an_image_smaller_than_the_window_raises():
    with pytest.raises(CkaLabError, match="11x11"):
        ssim(np.zeros((10, 10, 3), np.uint8), np.zeros((10, 10, 3), np.uint8))
