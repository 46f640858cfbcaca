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


def _prepare(p) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(p, dtype=np.float64)
    flat = p.reshape(-1)
    ok = ~np.isnan(flat)
    if np.any((flat[ok] < 0) | (flat[ok] > 1)):
        raise ValueError("p-values must lie in [0, 1]")
    return flat, ok


def holm(p) -> np.ndarray:
    """Holm-adjusted p-values: ``max_{j<=i} min(1, (m - j + 1) p_(j))`` over the sorted finite p-values.

    ``p``: any shape, NaN for a test not made. Controls the family-wise error at ``alpha`` under any
    dependence between the tests.
    """
    flat, ok = _prepare(p)
    out = np.full(flat.shape, np.nan)
    vals = flat[ok]
    m = vals.size
    if m:
        order = np.argsort(vals, kind="stable")
        adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * vals[order]))
        res = np.empty(m)
        res[order] = adj
        out[ok] = res
    return out.reshape(np.shape(p))


def benjamini_hochberg(p) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values): ``min_{j>=i} min(1, m p_(j) / j)``.

    ``p``: any shape, NaN for a test not made. Controls the false discovery rate at ``alpha`` for
    independent or positively dependent tests (the cells of one CKA heatmap are treated so).
    """
    flat, ok = _prepare(p)
    out = np.full(flat.shape, np.nan)
    vals = flat[ok]
    m = vals.size
    if m:
        order = np.argsort(vals, kind="stable")
        ranked = vals[order] * m / np.arange(1, m + 1)
        adj = np.minimum(1.0, np.minimum.accumulate(ranked[::-1])[::-1])
        res = np.empty(m)
        res[order] = adj
        out[ok] = res
    return out.reshape(np.shape(p))


def reject(adjusted, alpha: float = 0.05) -> np.ndarray:
    """Boolean array: adjusted p-value ``<= alpha`` (NaN: False)."""
    a = np.asarray(adjusted, dtype=np.float64)
    return np.nan_to_num(a, nan=np.inf) <= alpha
