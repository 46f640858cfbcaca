"""Specification of cka_lab.data.images: reading, writing, uint8 rounding, Y channel, modcrop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cka_lab.data.images import (
    list_images,
    modcrop,
    read_image,
    read_uint8,
    rgb_to_y,
    to_uint8,
    uint8_to_tensor,
    write_image,
)
from cka_lab.errors import CkaLabError


def _random_rgb(h: int = 17, w: int = 23, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


# --- reading and writing -------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".png", ".tif", ".bmp"])
def test_uint8_round_trip_through_a_lossless_file_is_exact(tmp_path, suffix):
    img = _random_rgb()
    path = write_image(tmp_path / "deep" / "folder" / f"img{suffix}", img)  # parents are created
    assert np.array_equal(read_uint8(path), img)


def test_tensor_round_trip_through_png_is_exact(tmp_path):
    x = uint8_to_tensor(_random_rgb())
    write_image(tmp_path / "x.png", x)
    assert torch.equal(read_image(tmp_path / "x.png"), x)


def test_jpeg_is_written_by_suffix_and_reads_back_close(tmp_path):
    img = np.full((32, 32, 3), 120, np.uint8)
    write_image(tmp_path / "a.jpg", img)
    assert Image.open(tmp_path / "a.jpg").format == "JPEG"
    assert np.abs(read_uint8(tmp_path / "a.jpg").astype(int) - 120).max() <= 2


def test_read_image_is_float32_nchw_in_unit_range_equal_to_uint8_over_255(tmp_path):
    img = _random_rgb()
    write_image(tmp_path / "a.png", img)
    x = read_image(tmp_path / "a.png")
    assert x.dtype == torch.float32 and x.shape == (1, 3, 17, 23)
    expected = torch.from_numpy(img.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0))
    assert torch.equal(x[0], expected)


def test_read_image_equals_the_official_input_pipeline(data_dir, fixtures_dir):
    # The EDT-T case input is rows 10:47, cols 5:58 of Set5 LR x2 butterfly, read the official way.
    x = read_image(data_dir / "sr/Set5/LR_bicubic/x2/butterflyx2.png")
    ref = torch.from_numpy(np.load(fixtures_dir / "cases/edtt_srx2x3x4/inputs/x2.npy"))
    assert torch.equal(x[:, :, 10:47, 5:58], ref)


def test_gray_image_is_read_as_three_equal_channels(tmp_path):
    gray = _random_rgb()[:, :, 0]
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    arr = read_uint8(tmp_path / "g.png")
    assert arr.shape == (17, 23, 3)
    assert all(np.array_equal(arr[:, :, c], gray) for c in range(3))
    assert read_image(tmp_path / "g.png").shape == (1, 3, 17, 23)


def test_channels_none_keeps_a_gray_image_single_channel(tmp_path):
    Image.fromarray(np.zeros((5, 6), np.uint8), mode="L").save(tmp_path / "g.png")
    assert read_uint8(tmp_path / "g.png", channels=None).shape == (5, 6, 1)
    assert read_image(tmp_path / "g.png", channels=None).shape == (1, 1, 5, 6)


def test_palette_image_is_read_as_rgb(tmp_path):
    Image.fromarray(_random_rgb()).convert("P").save(tmp_path / "p.png")
    assert read_uint8(tmp_path / "p.png").shape == (17, 23, 3)


def test_rgba_image_raises_a_clear_error_when_rgb_is_needed(tmp_path):
    Image.new("RGBA", (4, 4)).save(tmp_path / "a.png")
    with pytest.raises(CkaLabError, match=r"RGBA \(4 channels.*3 channels"):
        read_image(tmp_path / "a.png")
    assert read_uint8(tmp_path / "a.png", channels=None).shape == (4, 4, 4)


def test_two_channel_gray_alpha_image_raises_a_clear_error(tmp_path):
    Image.new("LA", (4, 4)).save(tmp_path / "la.png")
    with pytest.raises(CkaLabError, match=r"2 channels.*3 channels"):
        read_uint8(tmp_path / "la.png")


def test_rgb_image_raises_when_one_channel_is_requested(tmp_path):
    write_image(tmp_path / "c.png", _random_rgb())
    with pytest.raises(CkaLabError, match="rgb_to_y"):
        read_uint8(tmp_path / "c.png", channels=1)


def test_missing_file_raises_a_clear_error(tmp_path):
    with pytest.raises(CkaLabError, match="not found"):
        read_image(tmp_path / "nope.png")


def test_a_file_that_is_not_an_image_raises_a_clear_error(tmp_path):
    (tmp_path / "fake.png").write_text("not an image")
    with pytest.raises(CkaLabError, match="cannot read"):
        read_image(tmp_path / "fake.png")


def test_writing_an_unknown_suffix_raises(tmp_path):
    with pytest.raises(CkaLabError, match="suffix"):
        write_image(tmp_path / "a.gifx", _random_rgb())


def test_errors_are_one_line():
    with pytest.raises(CkaLabError) as info:
        read_image("/definitely/not/here.png")
    assert "\n" not in str(info.value)


# --- uint8 rounding (official tensor2img) --------------------------------------------------------

def test_to_uint8_rounds_half_to_even_like_tensor2img():
    k = torch.arange(0, 255, dtype=torch.float64)
    x = ((k + 0.5) / 255).float().view(1, 1, 1, -1)  # x * 255 is exactly k + 0.5 in float32
    got = to_uint8(x)[0, :, 0].astype(int)
    expected = np.where(np.arange(255) % 2 == 0, np.arange(255), np.arange(255) + 1)
    assert np.array_equal(got, expected)  # 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, ...


def test_to_uint8_clamps_to_the_unit_range():
    x = torch.tensor([-0.3, 0.0, 1.0, 1.7]).view(1, 1, 1, 4)
    assert to_uint8(x).ravel().tolist() == [0, 0, 255, 255]


def test_to_uint8_returns_hwc_rgb():
    x = torch.zeros(1, 3, 2, 5)
    x[:, 0] = 1.0  # red
    out = to_uint8(x)
    assert out.shape == (2, 5, 3) and out.dtype == np.uint8
    assert (out[:, :, 0] == 255).all() and (out[:, :, 1:] == 0).all()


def test_to_uint8_equals_official_tensor2img_on_noisy_inputs(fixtures_dir):
    arrays = fixtures_dir / "metrics" / "arrays"
    for sigma in (15, 50):
        x = torch.from_numpy(np.load(arrays / f"dn_g{sigma}_noisy_input_nchw_float32.npy"))
        ref_rgb = np.load(arrays / f"dn_g{sigma}_noisy_tensor2img_bgr_uint8.npy")[:, :, ::-1]
        assert np.array_equal(to_uint8(x), ref_rgb)


def test_to_uint8_equals_official_tensor2img_on_a_model_output(fixtures_dir):
    out = torch.from_numpy(np.load(fixtures_dir / "cases/edtt_srx2x3x4/outputs/x2.npy"))
    ref_rgb = np.load(fixtures_dir / "metrics/arrays/edtt_x2_output_tensor2img_bgr_uint8.npy")[:, :, ::-1]
    assert np.array_equal(to_uint8(out), ref_rgb)


def test_to_uint8_refuses_a_batch():
    with pytest.raises(CkaLabError, match="batch"):
        to_uint8(torch.zeros(2, 3, 4, 4))


# --- Y channel -----------------------------------------------------------------------------------

def test_rgb_to_y_is_the_official_bt601_formula_without_rounding():
    img = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]]], np.uint8)
    y = rgb_to_y(img)
    assert y.dtype == np.float64 and y.shape == (1, 6)
    expected = [16.0, 235.0, 16 + 65.481, 16 + 128.553, 16 + 24.966,
                (65.481 * 10 + 128.553 * 20 + 24.966 * 30) / 255 + 16]
    np.testing.assert_allclose(y[0], expected, rtol=0, atol=1e-9)


def test_rgb_to_y_on_tensors_matches_the_array_version_scaled_to_unit_range():
    img = _random_rgb()
    y_t = rgb_to_y(uint8_to_tensor(img).double())
    assert y_t.shape == (1, 1, 17, 23)
    np.testing.assert_allclose(y_t[0, 0].numpy() * 255, rgb_to_y(img), atol=1e-9)


# --- modcrop and listing -------------------------------------------------------------------------

def test_modcrop_makes_the_official_set5_hr_files(data_dir):
    for name in ("baby", "butterfly", "woman"):
        original = read_uint8(data_dir / f"sr/Set5/HR/original/{name}.png")
        for s in (2, 3, 4):
            assert np.array_equal(modcrop(original, s), read_uint8(data_dir / f"sr/Set5/HR/x{s}/{name}.png"))


def test_modcrop_on_tensors_crops_the_last_two_dims():
    assert modcrop(torch.zeros(1, 3, 10, 11), 3).shape == (1, 3, 9, 9)


def test_list_images_sorts_by_name_and_ignores_other_files(tmp_path):
    for name in ("b.png", "a.jpg", "c.TIF", "notes.txt", ".hidden.png"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.png", "c.TIF"]


def test_list_images_of_a_folder_without_images_raises(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(CkaLabError, match="no images"):
        list_images(tmp_path)


def test_list_images_of_a_missing_folder_raises(tmp_path):
    with pytest.raises(CkaLabError, match="not found"):
        list_images(tmp_path / "missing")
