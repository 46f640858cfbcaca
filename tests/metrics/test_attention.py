"""Attention distance, checked on maps whose answer can be worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cka_lab.errors import CkaLabError
from cka_lab.metrics.attention import AttentionDistance, attention_distance_sums, locality_summary
from cka_lab.models import create_edt
from cka_lab.models.edt import WindowAttention, window_mask


def _mean(sums, head=0):
    return (sums["dist"][head] / sums["n"][head]).item()


@pytest.mark.parametrize("W", [2, 5, 24])
def test_uniform_attention_over_a_1xW_strip_has_mean_distance_W2_minus_1_over_3W(W):
    attn = torch.full((3, 2, W, W), 1.0 / W, dtype=torch.float64)
    sums = attention_distance_sums(attn, (1, W))
    assert _mean(sums) == pytest.approx((W * W - 1) / (3 * W), abs=1e-12)


def test_identity_attention_has_distance_zero():
    attn = torch.eye(12).expand(4, 3, 12, 12)
    sums = attention_distance_sums(attn, (3, 4), radii=(0,))
    assert _mean(sums) == 0.0 and sums["dist_sq"].sum() == 0.0
    assert (sums["within_0"] / sums["n"]).tolist() == [1.0, 1.0, 1.0]


def test_a_horizontal_strip_only_measures_horizontal_distance():
    g = torch.Generator().manual_seed(0)
    attn = torch.rand(2, 3, 8, 8, generator=g).softmax(-1)
    sums = attention_distance_sums(attn, (1, 8))
    assert sums["dy"].abs().max() == 0.0
    torch.testing.assert_close(sums["dx"], sums["dist"], rtol=1e-6, atol=0)  # float32 map: per-query sums in float32


def test_distances_are_in_input_pixels():
    attn = torch.full((1, 1, 4, 4), 0.25)
    assert _mean(attention_distance_sums(attn, (1, 4), pixel_size=4.0)) == pytest.approx(4 * 15 / 12)


def test_the_shifted_window_mask_excludes_keys_from_other_image_regions():
    # 4x8 map, 2x4 windows shifted by (1, 2): with q = k = 0 every query attends uniformly to the
    # unmasked keys of its window, i.e. the keys of its own region after the roll.
    attn_mod = WindowAttention(dim=2, window=(2, 4), num_heads=1)
    seen = []
    attn_mod.softmax.register_forward_hook(lambda m, i, o: seen.append(o))
    qkv = torch.zeros(3, 1, 4, 8, 2)
    qkv[2] = torch.randn(1, 4, 8, 2)
    attn_mod(qkv, window_mask(4, 8, (2, 4), (1, 2)))
    a = seen[0]  # (4 windows, 1 head, 8, 8), windows row-major
    means = [_mean(attention_distance_sums(a[w : w + 1], (2, 4))) for w in range(4)]
    whole = sum(math.hypot(r1 - r2, c1 - c2) for r1 in range(2) for c1 in range(4) for r2 in range(2) for c2 in range(4)) / 64
    assert means[0] == pytest.approx(whole)  # top-left: one region, the whole 2x4 window
    assert means[1] == pytest.approx((2 + math.sqrt(2)) / 4)  # top-right: two 2x2 regions
    assert means[2] == pytest.approx(1.25)  # bottom-left: two 1x4 rows
    assert means[3] == pytest.approx(0.5)  # bottom-right: four 1x2 regions


@pytest.fixture(scope="module")
def edt_dn():
    torch.manual_seed(0)
    return create_edt("SRx2DNg25_EDTT").eval()


def test_every_layer_block_direction_and_head_is_measured_and_hooks_are_removed(edt_dn):
    x = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    with AttentionDistance(edt_dn, task="x2") as ad, torch.no_grad():
        edt_dn.forward_task(x, "x2")
    df = ad.compute()
    assert len(df) == 4 * 6 * 2 * 6
    assert set(df.direction) == {"horizontal", "vertical"}
    assert df.groupby("block").shifted.first().tolist() == [False, True] * 3
    assert (df["n"] == 2 * 48 * 48).all()
    assert ((df["mean"] > 0) & (df["mean"] < math.hypot(5, 23))).all()
    assert ((df.within_8 >= df.within_4) & (df.within_4 >= df.within_2)).all()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in edt_dn.modules())
    summary = locality_summary(df)  # per layer, kind and direction: plain and shifted blocks apart
    assert summary[["layer", "kind", "direction"]].drop_duplicates().shape[0] == len(summary) == 4 * 2 * 2
    assert set(summary.kind) == {"plain", "shifted"} and (summary.n_heads == 3 * 6).all()


def test_denoising_heads_that_downsample_count_four_input_pixels_per_token(edt_dn):
    x = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    with AttentionDistance(edt_dn, task="x2") as sr, torch.no_grad():
        edt_dn.forward_task(x[..., :48, :48], "x2")
    with AttentionDistance(edt_dn, task="g25") as dn, torch.no_grad():
        edt_dn.forward_task(x, "g25")
    assert sr.pixel_size == 1.0 and dn.pixel_size == 4.0
    assert dn.compute()["mean"].mean() > 2 * sr.compute()["mean"].mean()


def test_a_model_without_attention_modules_is_refused():
    with pytest.raises(CkaLabError, match="no window-attention modules"):
        AttentionDistance(nn.Sequential(nn.Conv2d(3, 3, 3)))
