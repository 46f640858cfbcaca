"""Tiled restoration: the same result as the whole image (within 1e-4), bounded memory, one-line limits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cka_lab.data.images import to_uint8, uint8_to_tensor
from cka_lab.errors import CkaLabError
from cka_lab.models import create_edt
from cka_lab.models.tiling import (
    DEFAULT_OVERLAP,
    MAX_OUTPUT_PIXELS,
    TilePlan,
    check_pixel_limit,
    forward_bytes_per_pixel,
    plan_tiles,
    restore_tiled,
    restore_tiled_uint8,
    tile_spans,
)

TINY = dict(embed_dim=12, depths=(2,), num_heads=(2,), num_feat=8, drop_path_rate=0.0)


@pytest.fixture(scope="module")
def tiny_sr():
    torch.manual_seed(0)
    return create_edt("SRx2_EDTT", **TINY).eval()


@pytest.fixture(scope="module")
def tiny_dn():
    torch.manual_seed(1)
    return create_edt("DNg25_EDTT", **TINY).eval()


def _image(h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 6, h), torch.linspace(0, 9, w), indexing="ij")
    smooth = 0.5 + 0.3 * torch.sin(yy) * torch.cos(xx)
    return (smooth + 0.15 * torch.rand(3, h, w, generator=g)).clamp(0, 1).unsqueeze(0)


@pytest.mark.parametrize("n,tile,overlap", [(100, 24, 24), (97, 48, 0), (48, 48, 24), (10, 0, 24), (200, 96, 96)])
def test_cores_cover_every_pixel_once_and_tiles_add_context(n, tile, overlap):
    spans = tile_spans(n, tile, overlap)
    covered = np.zeros(n, int)
    for c0, c1, i0, i1 in spans:
        covered[c0:c1] += 1
        assert i0 == max(0, c0 - overlap) and i1 == min(n, c1 + overlap)
        assert c0 % max(tile, 1) == 0
    assert (covered == 1).all()


def test_tiled_sr_equals_the_whole_image(tiny_sr):
    x = _image(120, 140)
    with torch.no_grad():
        whole = tiny_sr.restore(x, "x2")
        plan = plan_tiles(tiny_sr.config, "x2", 120, 140, tile=48, overlap=48)
        assert (plan.tile, plan.overlap, plan.n_tiles) == (48, 48, 9)
        tiled = restore_tiled(tiny_sr, x, "x2", plan)
        cut = restore_tiled(tiny_sr, x, "x2", TilePlan(48, 0, 9, 0))  # no context: visibly different
    assert tiled.shape == whole.shape == (1, 3, 240, 280)
    err = (tiled - whole).abs().max().item()
    assert err < 1e-4, err
    assert (cut - whole).abs().max().item() > 1e-3  # the test can fail: context matters


def test_tiled_denoising_equals_the_whole_image(tiny_dn):
    x = _image(200, 300, seed=3)
    with torch.no_grad():
        whole = tiny_dn.restore(x, "g25")
        plan = plan_tiles(tiny_dn.config, "g25", 200, 300, tile=90, overlap=DEFAULT_OVERLAP)
        assert plan.tile == 96 and plan.overlap == 96 and plan.n_tiles == 12  # rounded up to the head's 96
        tiled = restore_tiled(tiny_dn, x, "g25", plan)
    assert (tiled - whole).abs().max().item() < 1e-4


def test_uint8_tiles_round_like_the_whole_image(tiny_sr):
    x = _image(75, 101, seed=5)
    arr = to_uint8(x)
    with torch.no_grad():
        whole = to_uint8(tiny_sr.restore(uint8_to_tensor(arr), "x2"))
        tiled = restore_tiled_uint8(tiny_sr, arr, "x2", plan_tiles(tiny_sr.config, "x2", 75, 101, tile=24, overlap=48))
    diff = np.abs(whole.astype(int) - tiled.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3  # a float difference < 1e-4 can only flip a rounding tie


def test_the_plan_is_whole_when_it_fits_and_tiles_within_the_budget_otherwise(tiny_sr):
    cfg = tiny_sr.config
    assert plan_tiles(cfg, "x2", 500, 400, budget=1 << 40).whole
    assert plan_tiles(cfg, "x2", 500, 400, tile=0, budget=1).whole  # --tile 0: never tile
    budget = 512 << 20
    plan = plan_tiles(cfg, "x2", 4000, 3000, budget=budget)
    assert not plan.whole and plan.tile % 24 == 0 and plan.overlap == DEFAULT_OVERLAP
    assert plan.bytes_per_tile <= budget
    bigger = plan_tiles(cfg, "x2", 4000, 3000, budget=4 * budget)
    assert bigger.tile > plan.tile and bigger.n_tiles < plan.n_tiles
    assert plan_tiles(cfg, "x2", 100, 100, tile=50, overlap=30).tile == 72  # rounded up to multiples of 24
    assert plan_tiles(cfg, "x2", 100, 100, tile=50, overlap=30).overlap == 48
    assert plan_tiles(cfg, "x2", 100, 100, tile=100).whole  # one tile is the whole image
    # the estimate grows with the model and the scale
    big = create_edt("SRx4_EDTB").config
    assert forward_bytes_per_pixel(big, "x4") > forward_bytes_per_pixel(cfg, "x2")


def test_bad_flags_and_oversized_images_are_one_line(tiny_sr):
    with pytest.raises(CkaLabError, match="--tile must be >= 0"):
        plan_tiles(tiny_sr.config, "x2", 10, 10, tile=-1)
    with pytest.raises(CkaLabError, match="--tile-overlap must be >= 0"):
        plan_tiles(tiny_sr.config, "x2", 10, 10, overlap=-24)
    check_pixel_limit(12000, 12000, 2)  # 576 MP of output: allowed
    with pytest.raises(CkaLabError, match="megapixels"):
        check_pixel_limit(12000, 12000, 3)
    with pytest.raises(CkaLabError, match="megapixels"):
        plan_tiles(tiny_sr.config, "x2", 20000, 20000)
    assert MAX_OUTPUT_PIXELS == 600_000_000
