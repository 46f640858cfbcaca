"""Interval coverage of both estimators on a synthetic case of known population CKA.

X ~ N(0, I_D) and Y = X A + σ E (E ~ N(0, I_D)), so Σ_xx = I, Σ_xy = A, Σ_yy = AᵀA + σ² I and the
population linear CKA is ||Σ_xy||²_F / (||Σ_xx||_F ||Σ_yy||_F) in closed form.

The case (D = 16, σ = 2, N = 128) is chosen so that the biased estimator's O(1/N) bias is large: it
is ~1.9 of its standard deviations here, and an interval centred on the biased estimate covered the
truth in 66 % of these draws. The intervals must cover the population value itself (no allowance
for bias), which is why biased-full's jackknife interval is bias-corrected (``cka_result``).

Bounds: 200 replications at a true coverage of 95 % give a binomial standard deviation of 1.5 %;
the jackknife-t interval is approximate (measured 92.5-94 % on this and a D = 4 case). The test asks
for 88-99 %: below 88 % means intervals too narrow or off-centre (4.6 sd under the nominal 95 %),
above 99 % means intervals much too wide (2.6 sd over). The draws are seeded, so the test is
deterministic.
"""

from __future__ import annotations

import math

import torch

from cka_lab.metrics.cka import FullBatchCKA, MinibatchCKA

D, SIGMA, N, REPS = 16, 2.0, 128, 200


def test_95_percent_intervals_cover_the_population_cka_for_both_estimators():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(D, D, generator=g, dtype=torch.float64)
    s_yy = a.T @ a + SIGMA**2 * torch.eye(D, dtype=torch.float64)
    truth = (a.norm() ** 2 / (math.sqrt(D) * s_yy.norm())).item()
    covered = {"unbiased-minibatch": 0, "biased-full": 0}
    for _ in range(REPS):
        x = torch.randn(N, D, generator=g, dtype=torch.float64)
        y = x @ a + SIGMA * torch.randn(N, D, generator=g, dtype=torch.float64)
        minibatch = MinibatchCKA(["x"], ["y"], keep_batches=True, unit_size=8)  # 16 units
        full = FullBatchCKA(["x"], ["y"])  # 32 jackknife groups of 4 crops
        for xb, yb in zip(x.split(32), y.split(32)):
            minibatch.update({"x": xb}, {"y": yb})
            full.update({"x": xb}, {"y": yb})
        for metric in (minibatch, full):
            result = metric.result(level=0.95)
            covered[result.estimator] += bool(result.lower[0, 0] <= truth <= result.upper[0, 0])
    rates = {k: v / REPS for k, v in covered.items()}
    assert all(0.88 <= r <= 0.99 for r in rates.values()), rates
