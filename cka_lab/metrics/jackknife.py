"""The jackknife, once: standard error, bias, intervals and p-values from leave-one-out replicates.

Every interval of cka_lab that resamples units (HSIC units or groups of crops for CKA, crops for the
attention ratios, seeds for a study's controls) is built here, from G >= 2 replicates ``θ_(g)`` (the
statistic with unit or group g left out) and the estimate ``θ`` from all units:

* ``se² = (G-1)/G · Σ_g (θ_(g) - θ_(·))²`` with ``θ_(·)`` the mean replicate (:func:`jackknife_se`);
* the bias estimate ``bias = (G-1)(θ_(·) - θ)``;
* the interval ``centre ± t_{G-1, (1+level)/2} · se``, with ``centre = θ - bias`` (bias-corrected, the
  CKA intervals) or ``θ`` (the attention ratios) (:func:`jackknife_interval`);
* the two-sided jackknife-t p-value of ``H0: value = null`` (:func:`jackknife_p_value`).

(Efron & Tibshirani 1993, ch. 10-11.) The replicates may be a torch tensor or a numpy array: the
arithmetic runs in the array's own library, so each caller's numbers are what they were before these
lines were shared (numpy's and torch's sums do not round alike).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from cka_lab.errors import CkaLabError

__all__ = ["jackknife_interval", "jackknife_p_value", "jackknife_se", "t_quantile"]


def t_quantile(level: float, df: int) -> float:
    """The ``(1 + level) / 2`` quantile of Student's t with ``df`` degrees of freedom (two-sided ``level``)."""
    from scipy.stats import t as student_t

    return float(student_t.ppf((1 + level) / 2, df))


def _units(replicates) -> int:
    g = replicates.shape[0]
    if g < 2:
        raise CkaLabError(f"a jackknife needs at least 2 units, got {g}")
    return g


def jackknife_se(replicates: Tensor | np.ndarray) -> tuple[Tensor | np.ndarray, Tensor | np.ndarray]:
    """``(mean, se)`` of G >= 2 leave-one-out replicates ``(G, ...)``: the mean replicate ``θ_(·)`` and
    ``se = sqrt((G-1)/G · Σ_g (θ_(g) - θ_(·))²)``, each ``(...)``, float64, in the replicates' library
    (a float64 tensor for a tensor, a numpy array or scalar for an array).

    >>> mean, se = jackknife_se(np.array([1.0, 2.0, 3.0]))
    >>> float(mean), round(float(se), 6)
    (2.0, 1.154701)
    """
    g = _units(replicates)
    if isinstance(replicates, np.ndarray):
        replicates = replicates.astype(np.float64, copy=False)
        mean = replicates.mean(0)
        return mean, np.sqrt((g - 1) / g * np.sum((replicates - mean) ** 2, axis=0))
    replicates = replicates.to(torch.float64)
    mean = replicates.mean(0)
    return mean, torch.sqrt((g - 1) / g * (replicates - mean).square().sum(0))


def jackknife_interval(
    estimate: Tensor, replicates: Tensor, level: float = 0.95, *, bias_corrected: bool = True
) -> tuple[Tensor, Tensor, Tensor]:
    """Jackknife interval ``centre ± t_{G-1} · se`` from G leave-one-out replicates.

    Args:
        estimate: (...) the estimate from all units.
        replicates: (G, ...) the estimate with unit (or group) g left out, G >= 2.
        level: coverage, in (0, 1).
        bias_corrected: centre the interval on ``estimate - bias`` (True) or on ``estimate``.

    Returns:
        (lower, upper, bias), each (...) float64; NaN where the estimate or a replicate is NaN.
    """
    if not 0 < level < 1:
        raise CkaLabError(f"level must be in (0, 1), got {level}")
    g = _units(replicates)
    mean, se = jackknife_se(replicates)
    bias = (g - 1) * (mean - estimate)
    half = t_quantile(level, g - 1) * se
    centre = estimate - bias if bias_corrected else estimate
    return centre - half, centre + half, bias


def jackknife_p_value(estimate: Tensor, replicates: Tensor, null: float = 0.0) -> Tensor:
    """Two-sided p-value of ``H0: value = null`` from the same jackknife as :func:`jackknife_interval`.

    ``t = (estimate - bias - null) / se`` against Student t with G - 1 degrees of freedom, so that
    ``p < 1 - level`` exactly where the bias-corrected interval at ``level`` excludes ``null``.

    Args:
        estimate: (...) the estimate from all units.
        replicates: (G, ...) the leave-one-out replicates, G >= 2.
        null: the value under the null hypothesis (0 for a difference of CKA maps).

    Returns:
        (...) float64 p in [0, 1]; NaN where the estimate or a replicate is NaN; with se = 0, 0 where
        the centre differs from ``null`` and 1 where it equals it.
    """
    g = _units(replicates)
    from scipy.stats import t as student_t

    estimate = torch.as_tensor(estimate, dtype=torch.float64)
    mean, se = jackknife_se(replicates)
    centre = estimate - (g - 1) * (mean - estimate)
    gap = (centre - null).abs()
    t = torch.where(se > 0, gap / torch.where(se > 0, se, torch.ones_like(se)), torch.where(gap > 0, math.inf, 0.0))
    p = torch.from_numpy(2 * student_t.sf(t.numpy(), g - 1)).clamp(max=1.0)
    return torch.where(torch.isfinite(centre) & torch.isfinite(se), p, torch.full_like(p, math.nan))
