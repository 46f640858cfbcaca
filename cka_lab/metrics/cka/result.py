"""What a CKA computation returns: the matrix, its intervals, flagged layers and its provenance.

``CKAResult`` is produced by ``MinibatchCKA.result()`` and ``FullBatchCKA.result()``, which
``cka_by_passes`` (the one driver over probe crops) returns; the analysis layer labels CSV/JSON/figures from its provenance fields
(``estimator``, ``n_samples``, ``unit``). ``ESTIMATORS`` names the two estimators;
``check_estimator`` turns a user's spelling into one of them or a one-line error.

Intervals (both estimators): a jackknife over resampling units -- delete-one-unit over the HSIC
units of ``unbiased-minibatch``, delete-a-group over groups of crops for ``biased-full`` -- with
``se² = (G-1)/G · Σ_g (θ_(g) - θ_(·))²`` (``θ_(·)`` the mean replicate), the jackknife bias estimate
``bias = (G-1)(θ_(·) - θ)``, and the bias-corrected interval ``θ - bias ± t_{G-1, (1+level)/2} · se``
(Efron & Tibshirani 1993, ch. 10-11; :mod:`cka_lab.metrics.jackknife`, re-exported here). The interval is for the population CKA. The bias correction
matters for ``biased-full``, whose O(1/N) bias grows with the feature dimension: on Gaussian features
with D = 16, N = 128 it is 1.9 standard deviations, and the uncorrected interval covered the true
CKA in 66 % of 200 draws, the corrected one in 94 % (``tests/metrics/test_cka_coverage.py``). So a
``biased-full`` estimate (``matrix``, the paper's number) can lie outside its own interval: that is
the estimator's bias, reported in ``CKAResult.bias``. The jackknife needs no seed and does not depend
on the order of the units, so sharded runs reproduce it exactly.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field

import numpy as np

from cka_lab.errors import CkaLabError
from cka_lab.metrics.jackknife import jackknife_interval, jackknife_p_value

__all__ = ["ESTIMATORS", "CKAResult", "check_estimator", "jackknife_interval", "jackknife_p_value"]

ESTIMATORS = ("unbiased-minibatch", "biased-full")
"""``unbiased-minibatch``: Nguyen et al. 2021 (sums of Song et al.'s HSIC_1 over units of crops);
``biased-full``: Kornblith et al. 2019 (biased HSIC of all N crops at once, float64)."""


def check_estimator(name: str) -> str:
    """``name`` if it is one of ``ESTIMATORS``, else a one-line CkaLabError with the closest match."""
    if name in ESTIMATORS:
        return name
    close = difflib.get_close_matches(str(name), ESTIMATORS, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise CkaLabError(f"unknown CKA estimator {name!r}: {hint}choose one of {', '.join(ESTIMATORS)}")


@dataclass(frozen=True)
class CKAResult:
    """A CKA matrix between the layers of two models, with intervals and provenance.

    Attributes:
        matrix: (La, Lb) float64 CKA; NaN in the rows/columns of constant layers.
        estimator: one of ``ESTIMATORS``.
        n_samples: N, the number of crops.
        layers_a, layers_b: the La and Lb layer names.
        lower, upper: (La, Lb) float64 bounds of the interval for the population CKA at ``level``
            (None when there are fewer than 2 resampling units).
        level: the intervals' nominal coverage.
        unit: the resampling unit in words, e.g. ``"HSIC unit of 8 crops"``.
        unit_size: crops per unit (for ``biased-full``: per jackknife group, the largest group).
        n_units: the number of units (``unbiased-minibatch``) or jackknife groups (``biased-full``).
        interval: how the intervals were made, in words.
        constant_a, constant_b: layers flagged as constant (see ``cka_functional.is_constant``).
        passes: the number of passes over the probe crops that produced the result.
        bias: (La, Lb) how far ``matrix`` lies from the centre of its interval (unbiased-minibatch: the
            jackknife bias estimate; biased-full: biased minus the centre of the debiased interval), or None.
        interval_estimate: (La, Lb) the estimate the interval is built on when it is not ``matrix``
            (biased-full: the debiased CKA, unbiased HSIC_1 of the same crops), else None.
        replicates: (G, La, Lb) float64 leave-one-unit (or group) out replicates of
            ``centre_estimate``, the same units left out of every cell (paired: intervals of differences
            between cells come from them), or None (fewer than 2 units).
        halves: the (La, Lb) CKA of the even and of the odd units of crops (two disjoint probe draws),
            when asked for (``CKASpec.halves``) and there are enough crops, else None.
    """

    matrix: np.ndarray
    estimator: str
    n_samples: int
    layers_a: tuple[str, ...]
    layers_b: tuple[str, ...]
    lower: np.ndarray | None
    upper: np.ndarray | None
    level: float
    unit: str
    unit_size: int
    n_units: int
    interval: str
    constant_a: tuple[str, ...] = field(default=())
    constant_b: tuple[str, ...] = field(default=())
    passes: int = 1
    bias: np.ndarray | None = None
    interval_estimate: np.ndarray | None = None
    replicates: np.ndarray | None = None
    halves: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def centre_estimate(self) -> np.ndarray:
        """The (La, Lb) estimate the interval and the replicates belong to: the debiased CKA for biased-full."""
        return self.matrix if self.interval_estimate is None else self.interval_estimate

    def provenance(self) -> dict[str, object]:
        """Plain fields that label an output: estimator, n_samples, unit, n_units, interval, level, passes."""
        return {
            "estimator": self.estimator,
            "n_samples": self.n_samples,
            "unit": self.unit,
            "unit_size": self.unit_size,
            "n_units": self.n_units,
            "interval": self.interval,
            "level": self.level,
            "passes": self.passes,
            "constant_a": list(self.constant_a),
            "constant_b": list(self.constant_b),
        }

    def to_frame(self):  # -> pandas.DataFrame
        """Long table, one row per layer pair: layer_a, layer_b, cka, lower, upper, estimator,
        n_samples, unit, level, bias (lower/upper/bias NaN where there is no interval)."""
        import pandas as pd

        la, lb = len(self.layers_a), len(self.layers_b)
        nan = np.full((la, lb), math.nan)
        lower = nan if self.lower is None else self.lower
        upper = nan if self.upper is None else self.upper
        bias = nan if self.bias is None else self.bias
        return pd.DataFrame(
            {
                "layer_a": np.repeat(np.asarray(self.layers_a, dtype=object), lb),
                "layer_b": np.tile(np.asarray(self.layers_b, dtype=object), la),
                "cka": np.asarray(self.matrix, dtype=np.float64).reshape(-1),
                "lower": np.asarray(lower, dtype=np.float64).reshape(-1),
                "upper": np.asarray(upper, dtype=np.float64).reshape(-1),
                "estimator": self.estimator,
                "n_samples": self.n_samples,
                "unit": self.unit,
                "level": self.level,
                "bias": np.asarray(bias, dtype=np.float64).reshape(-1),
            }
        )
