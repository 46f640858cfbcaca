"""Per-crop row statistics: hand-computable maps, crop splitting, and interval coverage."""

from __future__ import annotations

import math

import pytest
import torch

from cka_lab.metrics import attention_stats
from cka_lab.metrics.attention_stats import attention_row_stats
from cka_lab.metrics.attention_summary import jackknife_ratio


def test_entropy_and_max_weight_of_hand_made_rows():
    # 1x4 window, one head: rows uniform (log 4, 1/4), one-hot (0, 1), half-half (log 2, 1/2), and
    # (0.7, 0.1, 0.1, 0.1).
    rows = torch.tensor([[0.25] * 4, [0, 1.0, 0, 0], [0, 0, 0.5, 0.5], [0.7, 0.1, 0.1, 0.1]], dtype=torch.float64)
    s = attention_row_stats(rows.view(1, 1, 4, 4), (1, 4))
    entropy = math.log(4) + 0 + math.log(2) - (0.7 * math.log(0.7) + 0.3 * math.log(0.1))
    assert s["entropy"].item() == pytest.approx(entropy, abs=1e-12)
    assert s["max_weight"].item() == pytest.approx(0.25 + 1 + 0.5 + 0.7, abs=1e-12)
    # distances from query q = row index: uniform row 0 -> (0+1+2+3)/4, row 1 -> 0, row 2 -> 0.5*0 + 0.5*1,
    # row 3 -> 0.7*3 + 0.1*(2+1+0)
    assert s["dist"].item() == pytest.approx(1.5 + 0 + 0.5 + 2.4, abs=1e-12)
    assert s["n"].item() == 4


def test_crops_are_summed_apart_and_chunking_changes_nothing(monkeypatch):
    g = torch.Generator().manual_seed(0)
    attn = torch.rand(3 * 2, 2, 8, 8, generator=g).softmax(-1)  # 3 crops of 2 windows of 2x4
    whole = attention_row_stats(attn, (2, 4), pixel_size=2.0, radii=(2,), crops=3)
    for c in range(3):
        one = attention_row_stats(attn[2 * c : 2 * c + 2], (2, 4), pixel_size=2.0, radii=(2,))
        for k in whole:
            torch.testing.assert_close(whole[k][c], one[k][0], rtol=0, atol=0)
    monkeypatch.setattr(attention_stats, "_CHUNK_ELEMENTS", 1)  # one crop per chunk
    chunked = attention_row_stats(attn, (2, 4), pixel_size=2.0, radii=(2,), crops=3)
    for k in whole:
        torch.testing.assert_close(chunked[k], whole[k], rtol=0, atol=0)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 2e-6)])
@pytest.mark.parametrize("scale", [0.02, 1.0, 30.0])
def test_entropy_from_logits_equals_the_xlogy_sum(dtype, tol, scale):
    # near-uniform, moderate and peaked rows; shifted-window masks (-100 on some keys, as in the EDT)
    g = torch.Generator().manual_seed(1)
    z = (torch.randn(2 * 4, 3, 12, 12, generator=g, dtype=torch.float64) * scale + 7.0)
    mask = torch.zeros(4, 12, 12, dtype=torch.float64)
    mask[1, :6, 6:] = mask[1, 6:, :6] = -100.0
    z = (z.view(2, 4, 3, 12, 12) + mask[None, :, None]).view(8, 3, 12, 12).to(dtype)
    a = z.softmax(-1)
    ref = attention_row_stats(a.double(), (3, 4), crops=2)
    fast = attention_row_stats(a, (3, 4), crops=2, logits=z)
    rows = ref["n"]
    torch.testing.assert_close(fast["entropy"] / rows, ref["entropy"] / rows, rtol=0, atol=tol)
    for k in ("dist", "max_weight", "dx"):
        torch.testing.assert_close(fast[k], ref[k], rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=0)


def test_logits_of_another_shape_are_refused():
    a = torch.full((1, 1, 4, 4), 0.25)
    with pytest.raises(Exception, match="do not match"):
        attention_row_stats(a, (1, 4), logits=torch.zeros(1, 1, 4, 3))


def test_jackknife_intervals_cover_a_known_ratio_about_95_percent_of_the_time():
    # 2000 synthetic probes of 40 crops: crop c has den_c ~ U(0.5, 1.5) uniform-attention mass and
    # num_c = 0.8 den_c + noise * sqrt(den_c), so the true locality is 0.8.
    g = torch.Generator().manual_seed(0)
    covered = 0
    for _ in range(2000):
        den = 0.5 + torch.rand(40, generator=g, dtype=torch.float64)
        num = 0.8 * den + 0.1 * torch.randn(40, generator=g, dtype=torch.float64) * den.sqrt()
        _, low, high = jackknife_ratio(num, den)
        covered += low <= 0.8 <= high
    assert 0.93 <= covered / 2000 <= 0.965
