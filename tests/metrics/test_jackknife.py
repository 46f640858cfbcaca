"""The one jackknife (:mod:`cka_lab.metrics.jackknife`) gives bit for bit the numbers of the three copies
it replaced: the CKA intervals and p-values (torch, bias-corrected), the attention ratios' intervals
(torch, centred on the estimate) and the study's seed jackknife (numpy). The old bodies are kept here
as references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats as sps

from cka_lab.errors import CkaLabError
from cka_lab.metrics.attention.summary import jackknife_ratio
from cka_lab.metrics.jackknife import jackknife_interval, jackknife_p_value, jackknife_se
from cka_lab.study.tables import jackknife_effect


def _old_cka_interval(estimate, replicates, level):
    g = replicates.shape[0]
    replicates = replicates.to(torch.float64)
    mean = replicates.mean(0)
    se = torch.sqrt((g - 1) / g * (replicates - mean).square().sum(0))
    bias = (g - 1) * (mean - estimate)
    half = float(sps.t.ppf((1 + level) / 2, g - 1)) * se
    centre = estimate - bias
    return centre - half, centre + half, bias


def _old_p_value(estimate, replicates, null=0.0):
    g = replicates.shape[0]
    replicates = replicates.to(torch.float64)
    estimate = torch.as_tensor(estimate, dtype=torch.float64)
    mean = replicates.mean(0)
    se = torch.sqrt((g - 1) / g * (replicates - mean).square().sum(0))
    centre = estimate - (g - 1) * (mean - estimate)
    gap = (centre - null).abs()
    t = torch.where(se > 0, gap / torch.where(se > 0, se, torch.ones_like(se)), torch.where(gap > 0, math.inf, 0.0))
    p = torch.from_numpy(2 * sps.t.sf(t.numpy(), g - 1)).clamp(max=1.0)
    return torch.where(torch.isfinite(centre) & torch.isfinite(se), p, torch.full_like(p, math.nan))


def _old_ratio(num, den, confidence):
    num, den = num.double().flatten(), den.double().flatten()
    ratio = float(num.sum() / den.sum())
    c = num.numel()
    loo = (num.sum() - num) / (den.sum() - den)
    se = math.sqrt((c - 1) / c * float(((loo - loo.mean()) ** 2).sum()))
    t = float(sps.t.ppf(0.5 + confidence / 2, c - 1))
    return ratio, ratio - t * se, ratio + t * se


@pytest.mark.parametrize("g", [2, 3, 7, 16, 33])
def test_cka_intervals_and_p_values_are_the_old_ones_bit_for_bit(g):
    gen = torch.Generator().manual_seed(g)
    estimate = torch.rand(5, 6, generator=gen, dtype=torch.float64)
    replicates = estimate + 0.01 * torch.randn(g, 5, 6, generator=gen, dtype=torch.float64)
    replicates[:, 0, 0] = math.nan
    for level in (0.5, 0.9, 0.95, 0.99):
        for new, old in zip(jackknife_interval(estimate, replicates, level), _old_cka_interval(estimate, replicates, level)):
            assert torch.equal(new.nan_to_num(7.0), old.nan_to_num(7.0))
    assert torch.equal(jackknife_p_value(estimate, replicates).nan_to_num(7.0),
                       _old_p_value(estimate, replicates).nan_to_num(7.0))


@pytest.mark.parametrize("c", [2, 3, 5, 9, 64, 257])
def test_attention_ratio_intervals_are_the_old_ones_bit_for_bit(c):
    gen = torch.Generator().manual_seed(c)
    num, den = torch.rand(c, generator=gen) * 3, torch.rand(c, generator=gen) + 1
    for conf in (0.8, 0.95):
        assert jackknife_ratio(num, den, conf) == _old_ratio(num, den, conf)


@pytest.mark.parametrize("n", [3, 4, 5, 8, 13])
def test_seed_jackknife_is_the_old_one_bit_for_bit(n):
    rng = np.random.default_rng(n)
    values = rng.normal(size=n)

    def statistic(units):
        return float(np.mean(values[list(units)]) ** 2)

    loo = np.array([statistic([j for j in range(n) if j != i]) for i in range(n)])
    old_se = float(np.sqrt((n - 1) / n * np.sum((loo - loo.mean()) ** 2)))
    assert float(jackknife_se(loo)[1]) == old_se
    effect = jackknife_effect(statistic, n)
    half = float(sps.t.ppf(0.5 + 0.95 / 2, n - 1) * old_se)
    assert (effect.lower, effect.upper) == (statistic(range(n)) - half, statistic(range(n)) + half)


def test_one_unit_is_no_jackknife():
    with pytest.raises(CkaLabError, match="at least 2 units"):
        jackknife_se(torch.zeros(1, 3))
    assert math.isnan(jackknife_ratio(torch.ones(1), torch.ones(1))[1])
