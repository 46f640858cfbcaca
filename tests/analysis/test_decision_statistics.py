"""Which cells of a difference map are stated: jackknife p-values, Benjamini-Hochberg, the effect floor,
the selected largest cell; the interval of a mean over the diagonal from paired replicates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import t as student_t

from cka_lab.analysis.controls import MIN_EFFECT, decide, same_layer_mean_interval
from cka_lab.metrics.cka import jackknife_interval, jackknife_p_value
from cka_lab.metrics.multiplicity import benjamini_hochberg


def test_jackknife_p_value_is_the_test_of_the_interval():
    """p at the level where the interval's edge touches 0 is 1 - level; by hand: t = centre / se, G - 1 df."""
    reps = torch.tensor([[0.10], [0.14], [0.08], [0.12], [0.11]], dtype=torch.float64)
    est = torch.tensor([0.11], dtype=torch.float64)
    g = 5
    mean = reps.mean(0)
    se = torch.sqrt((g - 1) / g * ((reps - mean) ** 2).sum(0))
    centre = est - (g - 1) * (mean - est)
    want = 2 * student_t.sf(float(centre / se), g - 1)
    p = jackknife_p_value(est, reps)
    assert float(p) == pytest.approx(want, rel=1e-12)
    low, _, _ = jackknife_interval(est, reps, level=1 - float(p))
    assert float(low) == pytest.approx(0.0, abs=1e-12)


def test_decide_uses_bh_over_the_upper_triangle_the_floor_and_the_controls():
    effect = np.array([[0.0, 0.05, 0.005], [0.05, 0.0, 0.2], [0.005, 0.2, 0.0]])
    p = np.array([[np.nan, 0.01, 0.001], [0.01, np.nan, 0.04], [0.001, 0.04, np.nan]])
    control = np.full((3, 3), 0.001)
    dec = decide(effect, effect - 0.01, effect + 0.01, [control], p=p, min_effect=MIN_EFFECT, symmetric=True)
    q = benjamini_hochberg(np.array([0.01, 0.001, 0.04]))  # cells (0,1), (0,2), (1,2)
    assert dec.family == 3
    np.testing.assert_allclose([dec.q[0, 1], dec.q[0, 2], dec.q[1, 2]], q)
    np.testing.assert_allclose(dec.q, dec.q.T, equal_nan=True)
    # (0, 2) has the smallest p but |0.005| < 0.01: never stated; (0, 1) and (1, 2) pass q <= 0.05
    assert dec.stated[0, 1] and dec.stated[1, 2] and not dec.stated[0, 2]
    assert dec.strongest() == (1, 2)
    # a control above the effect stops a cell, whatever its p
    dec = decide(effect, effect, effect, [np.full((3, 3), 0.1)], p=p, symmetric=True)
    assert not dec.stated[0, 1] and dec.stated[1, 2]
    # without the floor, the tiny cell is stated
    assert decide(effect, effect, effect, [control], p=p, min_effect=0.0, symmetric=True).stated[0, 2]


def test_bh_removes_cells_that_pass_only_uncorrected():
    effect = np.full((6, 6), 0.05)
    np.fill_diagonal(effect, 0.0)
    p = np.full((6, 6), 0.04)  # 15 tests all at 0.04: BH keeps all (0.04 <= 0.05)
    assert decide(effect, effect, effect, [np.zeros((6, 6))], p=p, symmetric=True).stated[np.triu_indices(6, 1)].all()
    p[np.triu_indices(6, 1)] = [0.001] + [0.04] * 9 + [0.9] * 5  # 10 pass uncorrected; BH: 0.04 * 15 / 10 > 0.05
    dec = decide(effect, effect, effect, [np.zeros((6, 6))], p=p, symmetric=True)
    kept = dec.stated[np.triu_indices(6, 1)]
    assert kept.sum() == 1 and kept[0]


def test_same_layer_mean_interval_is_the_jackknife_of_the_mean_not_the_mean_of_bounds():
    g = torch.Generator().manual_seed(0)
    base = torch.rand(4, 4, generator=g, dtype=torch.float64)
    common = torch.randn(10, 1, 1, generator=g, dtype=torch.float64) * 0.02  # cells move together
    reps = base + common + torch.randn(10, 4, 4, generator=g, dtype=torch.float64) * 0.001
    est = base.numpy()
    mean, low, high = same_layer_mean_interval(est, reps, [0, 1], [2, 3])
    cells = [(0, 2), (1, 3)]
    assert mean == pytest.approx(np.mean([est[i, j] for i, j in cells]))
    want_low, want_high, _ = jackknife_interval(torch.tensor(mean, dtype=torch.float64),
                                                torch.stack([reps[:, i, j] for i, j in cells]).mean(0))
    assert (low, high) == pytest.approx((float(want_low), float(want_high)), abs=1e-12)
