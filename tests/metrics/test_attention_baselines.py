"""Uniform-attention baselines against values worked out by hand from the window geometry."""

from __future__ import annotations

import math

import pytest
import torch

from cka_lab.errors import CkaLabError
from cka_lab.metrics.attention_baselines import allowed_keys, uniform_attention_stats
from cka_lab.models.edt import window_mask


def pair_mean(a: int, b: int) -> float:
    """Mean Euclidean distance over all ordered (query, key) pairs of an a x b rectangle, by counting
    offsets: (dy, dx) occurs (a - |dy|) * (b - |dx|) times."""
    total = sum(
        (a - abs(dy)) * (b - abs(dx)) * math.hypot(dy, dx) for dy in range(-a + 1, a) for dx in range(-b + 1, b)
    )
    return total / (a * b) ** 2


def test_pair_mean_of_a_1xW_strip_is_the_closed_form_W2_minus_1_over_3W():
    assert pair_mean(1, 24) == pytest.approx((24**2 - 1) / (3 * 24), abs=1e-12)  # 575/72


@pytest.mark.parametrize("window", [(6, 24), (24, 6)])
def test_plain_window_uniform_attention(window):
    u = uniform_attention_stats(window, (48, 48))
    assert u.distance == pytest.approx(pair_mean(6, 24), abs=1e-12)
    assert u.distance == pytest.approx(8.544767, abs=1e-6)  # the 8.54 px of every plain SR block
    assert u.entropy == pytest.approx(math.log(144), abs=1e-12)
    assert u.max_weight == pytest.approx(1 / 144, abs=1e-15)
    long_side, short_side = (u.mean_dx, u.mean_dy) if window == (6, 24) else (u.mean_dy, u.mean_dx)
    assert long_side == pytest.approx(575 / 72, abs=1e-12)  # (24**2 - 1) / (3 * 24)
    assert short_side == pytest.approx(35 / 18, abs=1e-12)  # (6**2 - 1) / (3 * 6)
    assert u.rows == 48 * 48


@pytest.mark.parametrize("window,shift", [((6, 24), (3, 12)), ((24, 6), (12, 3))])
def test_shifted_windows_of_the_48x48_training_body(window, shift):
    # 6x24 windows, shift (3, 12), 8 x 2 windows. The rolled map wraps its last 3 rows and last 12
    # columns: 7 windows stay whole (144 keys per row), 7 split into two 6x12 regions (72 keys),
    # one into two 3x24 regions (72 keys), one into four 3x12 regions (36 keys). 24x6 is the transpose.
    u = uniform_attention_stats(window, (48, 48), shift)
    distance = (7 * pair_mean(6, 24) + 7 * pair_mean(6, 12) + pair_mean(3, 24) + pair_mean(3, 12)) / 16
    assert u.distance == pytest.approx(distance, abs=1e-12)
    assert u.distance == pytest.approx(6.611583, abs=1e-6)  # the 6.61 px of every shifted SR block
    assert u.entropy == pytest.approx((7 * math.log(144) + 8 * math.log(72) + math.log(36)) / 16, abs=1e-12)
    assert u.max_weight == pytest.approx((7 / 144 + 8 / 72 + 1 / 36) / 16, abs=1e-15)
    assert u.max_weight == pytest.approx(0.01171875, abs=1e-15)  # = 3/256


def test_shifted_6x24_windows_of_a_24x24_body_are_never_whole():
    # W = 24 = window width: every window holds 12 wrapped columns. 3 window rows split into two 6x12
    # regions, the last into four 3x12 regions: the denoising probe at 96 px (body 24 px).
    u = uniform_attention_stats((6, 24), (24, 24), (3, 12))
    assert u.distance == pytest.approx((3 * pair_mean(6, 12) + pair_mean(3, 12)) / 4, abs=1e-12)
    assert u.entropy == pytest.approx((3 * math.log(72) + math.log(36)) / 4, abs=1e-12)
    assert u.max_weight == pytest.approx((3 / 72 + 1 / 36) / 4, abs=1e-15)


def test_small_masked_image_worked_fully_by_hand():
    # 4x8 map, 2x4 windows shifted by (1, 2): the four windows' rows see 8, 4, 4 and 2 keys.
    # top-left: whole 2x4 window; top-right: two 2x2 regions; bottom-left: two 1x4 rows;
    # bottom-right: four 1x2 regions. Whole 2x4: 32 pairs with dy = 0 summing 2*20 = 40, 32 with
    # |dy| = 1 summing 2*(4*1 + 6*sqrt2 + 4*sqrt5 + 2*sqrt10).
    whole = (48 + 12 * math.sqrt(2) + 8 * math.sqrt(5) + 4 * math.sqrt(10)) / 64
    two_by_two = (2 + math.sqrt(2)) / 4
    one_by_four = 20 / 16
    one_by_two = 0.5
    u = uniform_attention_stats((2, 4), (4, 8), (1, 2))
    assert u.distance == pytest.approx((whole + two_by_two + one_by_four + one_by_two) / 4, abs=1e-12)
    assert u.entropy == pytest.approx((math.log(8) + 2 * math.log(4) + math.log(2)) / 4, abs=1e-12)  # = 2 log 2
    assert u.entropy == pytest.approx(2 * math.log(2), abs=1e-12)
    assert u.max_weight == pytest.approx((1 / 8 + 1 / 4 + 1 / 4 + 1 / 2) / 4, abs=1e-15)  # 0.28125
    assert allowed_keys((4, 8), (2, 4), (1, 2)).sum(-1)[:, 0].tolist() == [8, 4, 4, 2]


@pytest.mark.parametrize(
    "size,window,shift",
    [((48, 48), (6, 24), (3, 12)), ((48, 48), (24, 6), (12, 3)), ((24, 72), (6, 24), (3, 12)), ((4, 8), (2, 4), (1, 2))],
)
def test_the_geometric_regions_agree_with_the_models_mask(size, window, shift):
    mask = window_mask(*size, window, shift)  # (nW, N, N): 0 allowed, -100 masked
    assert torch.equal(allowed_keys(size, window, shift), mask == 0)


def test_pixel_size_scales_distances_but_not_entropy_or_weights():
    one = uniform_attention_stats((6, 24), (48, 48), (3, 12), 1.0)
    four = uniform_attention_stats((6, 24), (48, 48), (3, 12), 4.0)
    assert four.distance == pytest.approx(4 * one.distance, abs=1e-12)
    assert (four.mean_dx, four.mean_dy) == pytest.approx((4 * one.mean_dx, 4 * one.mean_dy), abs=1e-12)
    assert (four.entropy, four.max_weight) == (one.entropy, one.max_weight)


def test_a_map_that_windows_do_not_tile_is_refused():
    with pytest.raises(CkaLabError, match="multiple of the window"):
        uniform_attention_stats((6, 24), (48, 40))
    with pytest.raises(CkaLabError, match="inside the"):
        uniform_attention_stats((6, 24), (48, 48), (6, 12))
