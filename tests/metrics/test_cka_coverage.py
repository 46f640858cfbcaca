"""Interval coverage of both estimators on synthetic features of known population CKA, at D >= N.

The case: X ~ N(0, I_D) and Y = a X + σ E (E ~ N(0, I_D)), so the population linear CKA is
``a² / (a² + σ²)`` whatever D (Σ_xy = a I, Σ_xx = I, Σ_yy = (a² + σ²) I). Two settings: a = 1, σ = 2
(CKA 0.2) and a = 1, σ = 0.5 (CKA 0.8).

Simulation in Gram space. Linear CKA sees the features only through their Grams, and the joint Gram of
the N rows of X and the N rows of E is a Wishart matrix ``W ~ W_2N(D, I)``. By Bartlett's decomposition
``W = T Tᵀ`` with T lower triangular, ``T_ii = sqrt(χ²_{D-i+1})`` and ``T_ij ~ N(0, 1)`` below the diagonal,
so the rows of T (2N numbers each) are features whose Grams have exactly the law of the D-dimensional
problem: X̃ = T[:N], Ẽ = T[N:], Ỹ = a X̃ + σ Ẽ. A draw at D = 4096 then costs what one at D = 2N costs
(for D < 2N the features are drawn directly). The 200 draws of a setting are computed at once, as a
batch of Grams, through the functions the accumulators use for their intervals (``u_centre`` and
``jackknife_interval`` as in ``MinibatchCKA``, ``deleted_group_unbiased`` as in ``grams_result``, which
``cka_by_passes`` and ``FullBatchCKA.result`` use);
``test_the_vectorised_intervals_are_the_accumulators_intervals`` checks
them against ``MinibatchCKA.result()`` and ``FullBatchCKA.result()`` on a few draws.

Bounds: 200 draws at a true coverage of 95 % give a binomial sd of 1.5 %; the test asks for at least
90 % (the issue's floor, 3.3 sd under nominal) and at most 99.5 % for intervals that are shown. The
bias-corrected jackknife of the *biased* estimate is computed as well, for the table only: it is what
biased-full showed before its intervals were built on the debiased CKA, and it does not cover at D >= N.

``python tests/metrics/test_cka_coverage.py`` prints the coverage table (estimator x D x N).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from cka_lab.metrics.cka import (
    FullBatchCKA,
    MinibatchCKA,
    deleted_group_inner,
    deleted_group_unbiased,
    double_centre,
    group_bounds,
    jackknife_interval,
    u_centre,
)

REPS = 200
SETTINGS = [  # (D, N, a, sigma)
    (16, 128, 1.0, 2.0),
    (256, 128, 1.0, 2.0),
    (4096, 128, 1.0, 2.0),
    (4096, 64, 1.0, 2.0),
    (256, 128, 1.0, 0.5),
    (4096, 128, 1.0, 0.5),
]


def gram_space_features(rng: np.random.Generator, n: int, d: int, a: float, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """(X̃, Ỹ), each (n, m) float64, whose joint Gram has the law of (X, aX + σE) with X, E ~ N(0, I_d) (n, d)."""
    p = 2 * n
    if d < p:
        x, e = rng.standard_normal((n, d)), rng.standard_normal((n, d))
        return x, a * x + sigma * e
    t = np.tril(rng.standard_normal((p, p)), -1)
    t[np.diag_indices(p)] = np.sqrt(rng.chisquare(d - np.arange(p)))
    return t[:n], a * t[:n] + sigma * t[n:]


def minibatch_intervals(k: torch.Tensor, l: torch.Tensor, unit: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """unbiased-minibatch 95 % intervals of R draws at once, as ``MinibatchCKA(unit_size=unit).result()``
    makes them: HSIC_1 per unit of ``unit`` crops (``u_centre``), ratio of sums, delete-one-unit replicates,
    ``jackknife_interval``. k, l: (R, N, N) Grams -> (low, high), each (R,)."""
    n = k.shape[1]
    blocks = [slice(s, s + unit) for s in range(0, n, unit)]
    uk = torch.stack([u_centre(k[:, b, b]) for b in blocks], 1)  # (R, U, unit, unit)
    ul = torch.stack([u_centre(l[:, b, b]) for b in blocks], 1)
    scale = unit * (unit - 3)
    kl, kk, ll = ((p * q).sum((-2, -1)) / scale for p, q in ((uk, ul), (uk, uk), (ul, ul)))  # (R, U)
    est = kl.sum(1) / (kk.sum(1) * ll.sum(1)).sqrt()
    reps = (kl.sum(1, keepdim=True) - kl) / ((kk.sum(1, keepdim=True) - kk) * (ll.sum(1, keepdim=True) - ll)).sqrt()
    low, high, _ = jackknife_interval(est, reps.T)
    return low, high


def full_intervals(k: torch.Tensor, l: torch.Tensor, groups: int = 32, debiased: bool = True):
    """biased-full 95 % intervals of R draws at once from their centred Grams, as ``grams_result``
    makes them: the delete-a-group jackknife of the debiased CKA
    (``deleted_group_unbiased``), or with ``debiased=False`` of the biased CKA (``deleted_group_inner``)."""
    n = k.shape[-1]
    bounds = group_bounds(n, groups)
    pieces = deleted_group_unbiased if debiased else deleted_group_inner
    diag = lambda t: t.diagonal(dim1=-2, dim2=-1)  # noqa: E731 -- the pair (x_r, y_r) of each draw
    est, reps = [], []
    for s in range(0, k.shape[0], 8):  # 8 draws as 8 layers a time: the cross terms of all pairs are 8 x 8
        kk_, ll_ = k[s:s + 8], l[s:s + 8]
        (kl, kl_d), (kk, kk_d), (ll, ll_d) = (pieces(p, q, bounds) for p, q in ((kk_, ll_), (kk_, kk_), (ll_, ll_)))
        est.append(diag(kl) / (diag(kk) * diag(ll)).sqrt())
        reps.append(diag(kl_d) / (diag(kk_d) * diag(ll_d)).sqrt())
    low, high, _ = jackknife_interval(torch.cat(est), torch.cat(reps, 1))
    return low, high


def coverage(d: int, n: int, a: float, sigma: float, reps: int = REPS, seed: int = 0) -> dict[str, float]:
    """Share of ``reps`` draws whose 95 % interval covers the population CKA, per estimator."""
    rng = np.random.default_rng([seed, d, n, int(100 * sigma)])
    truth = a * a / (a * a + sigma * sigma)
    draws = [gram_space_features(rng, n, d, a, sigma) for _ in range(reps)]
    x = torch.from_numpy(np.stack([x for x, _ in draws]))  # (R, N, m)
    y = torch.from_numpy(np.stack([y for _, y in draws]))
    k, l = x @ x.transpose(1, 2), y @ y.transpose(1, 2)  # (R, N, N) float64
    kc, lc = double_centre(k), double_centre(l)  # what biased-full keeps

    def share(low, high) -> float:
        return float(((low <= truth) & (truth <= high)).double().mean())

    return {
        "unbiased-minibatch (units of 8 crops)": share(*minibatch_intervals(k, l)),
        "biased-full (interval of the debiased CKA, 32 groups)": share(*full_intervals(kc, lc)),
        "biased-full, jackknife of the biased CKA (not shown)": share(*full_intervals(kc, lc, debiased=False)),
    }


def coverage_table(settings=SETTINGS, reps: int = REPS) -> pd.DataFrame:
    """Long table: estimator, D, N, population CKA, draws, coverage of the 95 % interval."""
    rows = []
    for d, n, a, sigma in settings:
        for estimator, cov in coverage(d, n, a, sigma, reps).items():
            rows.append({"estimator": estimator, "D": d, "N": n, "cka": round(a * a / (a * a + sigma * sigma), 3),
                         "draws": reps, "coverage": cov})
    return pd.DataFrame(rows)


def test_gram_space_features_have_the_wishart_moments_of_the_d_dimensional_problem():
    """E[K] = D I and E[L] = D (a² + σ²) I, E[K_ij²] = D (i != j), for the Bartlett features as for real ones."""
    rng = np.random.default_rng(1)
    n, d = 16, 4096
    ks, ls = [], []
    for _ in range(400):
        x, y = gram_space_features(rng, n, d, 1.0, 2.0)
        ks.append(x @ x.T)
        ls.append(y @ y.T)
    k, l = np.stack(ks), np.stack(ls)
    off = ~np.eye(n, dtype=bool)
    assert abs(k[:, ~off].mean() / d - 1) < 0.01
    assert abs(l[:, ~off].mean() / (5 * d) - 1) < 0.01
    assert abs((k[:, off] ** 2).mean() / d - 1) < 0.05
    assert abs(k[:, off].mean()) < 0.05 * np.sqrt(d)


def test_the_vectorised_intervals_are_the_accumulators_intervals():
    rng = np.random.default_rng(3)
    draws = [gram_space_features(rng, 64, 512, 1.0, 1.0) for _ in range(3)]
    x = torch.from_numpy(np.stack([x for x, _ in draws]))
    y = torch.from_numpy(np.stack([y for _, y in draws]))
    k, l = x @ x.transpose(1, 2), y @ y.transpose(1, 2)
    mb_low, mb_high = minibatch_intervals(k, l)
    f_low, f_high = full_intervals(double_centre(k), double_centre(l))
    for r in range(3):
        mb = MinibatchCKA(["x"], ["y"], keep_batches=True, unit_size=8)
        mb.update({"x": x[r]}, {"y": y[r]})
        full = FullBatchCKA(["x"], ["y"])
        full.update({"x": x[r]}, {"y": y[r]})
        for got, (low, high) in ((mb.result(), (mb_low, mb_high)), (full.result(), (f_low, f_high))):
            np.testing.assert_allclose([got.lower[0, 0], got.upper[0, 0]], [low[r], high[r]], rtol=0, atol=1e-10)


def test_95_percent_intervals_cover_the_population_cka_at_d_at_least_n():
    """Every estimator whose interval is shown covers >= 90 % (and <= 99.5 %) of 200 draws at D = 16, 256
    and 4096 with N = 128 (and D = 4096 with N = 64); the jackknife of the biased estimate does not."""
    table = coverage_table()
    print(table.to_string())
    shown = table[~table.estimator.str.contains("not shown")]
    assert (shown.coverage >= 0.90).all() and (shown.coverage <= 0.995).all(), shown.to_string()
    old = table[table.estimator.str.contains("not shown") & (table.D >= table.N)]
    assert (old.coverage < 0.5).all(), old.to_string()


if __name__ == "__main__":
    t = coverage_table()
    print(t.pivot_table(index=["estimator"], columns=["D", "N", "cka"], values="coverage").to_markdown(floatfmt=".3f"))
