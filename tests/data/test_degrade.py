"""Specification of cka_lab.data.degrade: MATLAB bicubic and the official Gaussian-noise protocol."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cka_lab.data.degrade import (
    add_gaussian_noise,
    bicubic_downscale,
    contributions,
    cubic,
    imresize,
    official_noisy,
)
from cka_lab.data.images import read_image, read_uint8, to_uint8
from cka_lab.errors import CkaLabError

SET5 = ("baby", "bird", "butterfly", "head", "woman")


# --- MATLAB bicubic ------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("name", SET5)
def test_imresize_reproduces_the_official_set5_lr_images_exactly(data_dir, name, scale):
    hr = read_uint8(data_dir / f"sr/Set5/HR/x{scale}/{name}.png")
    lr = read_uint8(data_dir / f"sr/Set5/LR_bicubic/x{scale}/{name}x{scale}.png")
    out = imresize(hr, 1 / scale)
    assert out.dtype == np.uint8 and out.shape == lr.shape
    # The brief allowed +-1 on <= 0.1 % of the x2 pixels; the im2double/im2uint8 path is bit-exact.
    assert np.array_equal(out, lr)


def test_bicubic_downscale_of_a_tensor_matches_the_stored_lr(data_dir):
    hr = read_image(data_dir / "sr/Set5/HR/x3/butterfly.png")
    lr = read_image(data_dir / "sr/Set5/LR_bicubic/x3/butterflyx3.png")
    assert torch.equal(bicubic_downscale(hr, 3), lr)
    unrounded = bicubic_downscale(hr, 3, uint8_rounding=False)
    assert unrounded.dtype == torch.float32 and (unrounded - lr).abs().max() <= 0.5 / 255 + 1e-6


def test_cubic_is_keys_kernel_with_a_minus_half():
    x = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, -0.5])
    np.testing.assert_allclose(cubic(x), [1.0, 0.5625, 0.0, -0.0625, 0.0, 0.0, 0.5625])


def test_contributions_rows_sum_to_one_and_mirror_indices_into_the_image():
    for scale in (0.25, 1 / 3, 0.5, 2.0):
        w, idx = contributions(10, max(1, round(10 * scale)), scale)
        np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)
        assert idx.min() >= 0 and idx.max() <= 9
    w, idx = contributions(8, 4, 0.5)
    assert w.shape[1] == 8  # 4/scale + 2 = 10 taps, the two all-zero end columns dropped
    assert idx[0].tolist() == [2, 1, 0, 0, 1, 2, 3, 4]  # symmetric: the edge pixel repeats


def test_imresize_output_size_is_ceil_of_size_times_scale():
    img = np.zeros((255, 100, 3), np.uint8)
    assert imresize(img, 1 / 3).shape == (85, 34, 3)
    assert imresize(np.zeros((5, 7)), 2.0).shape == (10, 14)


def test_imresize_keeps_a_constant_image_and_the_float_dtype():
    img = np.full((12, 18, 3), 0.25, np.float32)
    out = imresize(img, 0.5)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, 0.25, atol=1e-7)


def test_imresize_rejects_bad_arguments():
    with pytest.raises(CkaLabError):
        imresize(np.zeros((4, 4, 3), np.uint8), 0)
    with pytest.raises(CkaLabError):
        imresize(np.zeros((4, 4, 3), np.int32), 0.5)


def test_bicubic_downscale_needs_sizes_that_are_multiples_of_the_scale():
    with pytest.raises(CkaLabError, match="modcrop"):
        bicubic_downscale(torch.zeros(1, 3, 10, 9), 2)


# --- noise ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "case, sigma",
    [("edtb_dng15g25g50", 15), ("edtb_dng15g25g50", 25), ("edtb_dng15g25g50", 50),
     ("edtbsf_dng15", 15), ("edtb_srx2x3dng15", 15)],
)
def test_official_noisy_reproduces_the_edt_case_inputs_exactly(fixtures_dir, case, sigma):
    inputs = fixtures_dir / "cases" / case / "inputs"
    clean = to_uint8(torch.from_numpy(np.load(inputs / f"g{sigma}_clean.npy")))
    expected = np.load(inputs / f"g{sigma}.npy")
    out = official_noisy(clean, sigma, seed=0)
    assert out.dtype == torch.float32 and out.shape == expected.shape
    assert np.array_equal(out.numpy(), expected)
    assert out.min() < 0  # no clipping


@pytest.mark.parametrize("sigma", [15, 50])
def test_official_noisy_matches_the_metric_fixture(fixtures_dir, sigma):
    arrays = fixtures_dir / "metrics" / "arrays"
    clean = np.load(arrays / "dn_clean_bgr_uint8.npy")[:, :, ::-1]
    out = official_noisy(clean, sigma, seed=0)
    # Scored through tensor2img, it is the official noisy image bit for bit.
    ref_rgb = np.load(arrays / f"dn_g{sigma}_noisy_tensor2img_bgr_uint8.npy")[:, :, ::-1]
    assert np.array_equal(to_uint8(out), ref_rgb)
    # The stored "noisy_input" array was saved after a clamp to [0, 1] (its min/max are exactly 0 and 1,
    # despite the fixture README's "no clipping"); our unclipped input, clamped, equals it exactly.
    stored = np.load(arrays / f"dn_g{sigma}_noisy_input_nchw_float32.npy")
    assert np.array_equal(out.clamp(0, 1).numpy(), stored)


def test_official_noisy_draws_in_bgr_order_from_the_legacy_numpy_stream():
    clean = np.zeros((3, 4, 3), np.uint8)
    noise_bgr = np.random.RandomState(7).normal(0.0, 25, (3, 4, 3))
    expected = (noise_bgr[:, :, ::-1].transpose(2, 0, 1) / 255.0).astype(np.float32)
    assert np.array_equal(official_noisy(clean, 25, seed=7)[0].numpy(), expected)


def test_official_noisy_with_a_shared_rng_follows_the_seed_once_per_folder_protocol():
    a, b = np.zeros((4, 5, 3), np.uint8), np.full((6, 2, 3), 9, np.uint8)
    rng = np.random.RandomState(0)
    first, second = official_noisy(a, 15, rng=rng), official_noisy(b, 15, rng=rng)
    stream = np.random.RandomState(0)
    n1, n2 = stream.normal(0, 15, a.shape), stream.normal(0, 15, b.shape)
    assert np.array_equal(first[0].numpy(), (n1[:, :, ::-1].transpose(2, 0, 1) / 255.0).astype(np.float32))
    assert np.array_equal(
        second[0].numpy(), ((9.0 + n2)[:, :, ::-1].transpose(2, 0, 1) / 255.0).astype(np.float32)
    )


def test_official_noisy_leaves_the_global_numpy_random_state_alone():
    before = np.random.get_state()[1].copy()
    official_noisy(np.zeros((4, 4, 3), np.uint8), 15)
    assert np.array_equal(np.random.get_state()[1], before)


def test_official_noisy_needs_a_uint8_rgb_image():
    with pytest.raises(CkaLabError, match="uint8 RGB"):
        official_noisy(np.zeros((4, 4), np.uint8), 15)


def test_add_gaussian_noise_has_sigma_over_255_std_and_no_clipping():
    x = torch.full((1, 3, 128, 128), 0.5)
    y = add_gaussian_noise(x, 25, torch.Generator().manual_seed(0))
    assert (y - x).std().item() == pytest.approx(25 / 255, rel=0.02)
    assert abs((y - x).mean().item()) < 1e-3
    z = add_gaussian_noise(torch.zeros(1, 3, 64, 64), 50, torch.Generator().manual_seed(0))
    assert z.min() < 0


def test_add_gaussian_noise_is_deterministic_per_generator_and_fresh_per_call():
    x = torch.zeros(2, 3, 8, 8)
    a = add_gaussian_noise(x, 15, torch.Generator().manual_seed(3))
    b = add_gaussian_noise(x, 15, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    g = torch.Generator().manual_seed(3)
    assert not torch.equal(add_gaussian_noise(x, 15, g), add_gaussian_noise(x, 15, g))
