"""Jackknife intervals over crops and the sentences written from them."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from scipy import stats

from cka_lab.errors import CkaLabError
from cka_lab.metrics.attention import attention_findings, locality_summary
from cka_lab.metrics.attention_summary import jackknife_ratio


def test_jackknife_ratio_worked_by_hand():
    # num = (1, 2, 3), den = 1: ratio 2, leave-one-out ratios (2.5, 2, 1.5), se**2 = 2/3 * 0.5 = 1/3
    ratio, low, high = jackknife_ratio(torch.tensor([1.0, 2.0, 3.0]), torch.ones(3))
    t = stats.t.ppf(0.975, 2)  # 4.302653
    assert ratio == 2.0
    assert (low, high) == pytest.approx((2 - t / math.sqrt(3), 2 + t / math.sqrt(3)), abs=1e-12)


def test_jackknife_of_a_mean_is_the_standard_error_of_the_mean():
    x = torch.randn(50, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ratio, low, high = jackknife_ratio(x, torch.ones(50), confidence=0.9)
    se = float(x.std(unbiased=True)) / math.sqrt(50)
    assert ratio == pytest.approx(float(x.mean()), abs=1e-12)
    assert (high - low) / 2 == pytest.approx(stats.t.ppf(0.95, 49) * se, rel=1e-10)
    assert math.isnan(jackknife_ratio(x[:1], torch.ones(1))[1])


def table(**rows) -> pd.DataFrame:
    base = {"layer": 0, "kind": "plain", "direction": "horizontal", "distance": 8.0, "uniform_distance": 8.0,
            "locality": 1.0, "locality_lower": 0.98, "locality_upper": 1.02, "entropy_rel": 1.0,
            "entropy_rel_lower": 0.99, "entropy_rel_upper": 1.01, "n_crops": 64, "confidence": 0.95}  # fmt: skip
    return pd.DataFrame([{**base, **r} for r in rows.values()])


def test_a_finding_is_written_only_where_the_interval_excludes_one():
    df = table(
        local={"layer": 0, "distance": 4.0, "locality": 0.5, "locality_lower": 0.45, "locality_upper": 0.55},
        sharp={"layer": 1, "entropy_rel": 0.7, "entropy_rel_lower": 0.65, "entropy_rel_upper": 0.75},
        wide={"layer": 2, "locality": 0.9, "locality_lower": 0.7, "locality_upper": 1.1},
        few={"layer": 3, "locality_lower": math.nan, "locality_upper": math.nan, "n_crops": 1},
    )
    out = attention_findings(df)
    assert len(out) == 4
    assert out[0].startswith("stage 0, plain windows, horizontal strips: attends more locally than uniform")
    assert "4.00 px vs 8.00 px, locality 0.5000 (-50.00 %, 95% CI 0.4500-0.5500)" in out[0]
    assert "entropy is indistinguishable" in out[0]
    assert out[1].startswith("stage 1") and "sharper than uniform" in out[1] and "distance is indistinguishable" in out[1]
    assert out[2].startswith("Indistinguishable from uniform attention") and "stage 2" in out[2] and "stage 1" not in out[2]
    assert out[3].startswith("No interval") and "stage 3" in out[3]
    assert not any("locally" in s for s in out[1:])


def test_locality_summary_keeps_kinds_apart_and_refuses_to_mix_them():
    df = pd.DataFrame(
        [{"layer": 0, "block": b, "kind": "plain" if b % 2 == 0 else "shifted", "direction": "horizontal", "head": h,
          "distance": 8.0 + h if b % 2 == 0 else 6.0, "uniform_distance": 8.0 if b % 2 == 0 else 6.0}
         for b in range(2) for h in range(3)]
    )  # fmt: skip
    s = locality_summary(df)
    assert s.kind.tolist() == ["plain", "shifted"] and s.n_heads.tolist() == [3, 3]
    assert s.distance.tolist() == [9.0, 6.0] and s.head_min.tolist() == [8.0, 6.0] and s.head_max.tolist() == [10.0, 6.0]
    assert s.mean_distance.tolist() == s.distance.tolist()
    with pytest.raises(CkaLabError, match="group by 'kind'"):
        locality_summary(df, by=("layer",))
    with pytest.raises(CkaLabError, match="lacks columns"):
        attention_findings(df)
