"""Corrections for many tests: Holm's step-down (family-wise error) and Benjamini-Hochberg (false discovery rate).

Functional, float64, NaN-aware: a NaN p-value (an untestable claim or cell) is left out of the family and
its adjusted value is NaN. Both return adjusted p-values in the input's order and shape, so that a test
is rejected at level ``alpha`` exactly when its adjusted p-value is ``<= alpha``.

References: Holm (1979), *A simple sequentially rejective multiple test procedure*; Benjamini & Hochberg
(1995), *Controlling the false discovery rate*. BH agrees with ``scipy.stats.false_discovery_control``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["holm", "benjamini_hochberg", "reject"]


def _adjust(p, step_values) -> np.ndarray:
    """Apply ``step_values(sorted finite p) -> adjusted sorted p`` and put the result back in place.

    NaN entries stay NaN and are left out of the family; values outside [0, 1] are refused.
    """
    flat = np.asarray(p, dtype=np.float64).reshape(-1)
    ok = ~np.isnan(flat)
    if np.any((flat[ok] < 0) | (flat[ok] > 1)):
        raise ValueError("p-values must lie in [0, 1]")
    out = np.full(flat.shape, np.nan)
    vals = flat[ok]
    if vals.size:
        order = np.argsort(vals, kind="stable")
        res = np.empty(vals.size)
        res[order] = step_values(vals[order])
        out[ok] = res
    return out.reshape(np.shape(p))


def holm(p) -> np.ndarray:
    """Holm-adjusted p-values: ``max_{j<=i} min(1, (m - j + 1) p_(j))`` over the sorted finite p-values.

    ``p``: any shape, NaN for a test not made. Controls the family-wise error at ``alpha`` under any
    dependence between the tests.
    """
    def step(v: np.ndarray) -> np.ndarray:
        return np.minimum(1.0, np.maximum.accumulate((v.size - np.arange(v.size)) * v))

    return _adjust(p, step)


def benjamini_hochberg(p) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values): ``min_{j>=i} min(1, m p_(j) / j)``.

    ``p``: any shape, NaN for a test not made. Controls the false discovery rate at ``alpha`` for
    independent or positively dependent tests (the cells of one CKA heatmap are treated so).
    """
    def step(v: np.ndarray) -> np.ndarray:
        ranked = v * v.size / np.arange(1, v.size + 1)
        return np.minimum(1.0, np.minimum.accumulate(ranked[::-1])[::-1])

    return _adjust(p, step)


def reject(adjusted, alpha: float = 0.05) -> np.ndarray:
    """Boolean array: adjusted p-value ``<= alpha`` (NaN: False)."""
    a = np.asarray(adjusted, dtype=np.float64)
    return np.nan_to_num(a, nan=np.inf) <= alpha
