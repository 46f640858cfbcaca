"""``CKASpec``: how a CKA over probe crops is estimated, in one value (what ``cka_by_passes`` takes).

The defaults are the metrics package's: units of 8 crops for ``unbiased-minibatch``, 32 jackknife groups
of crops and a 4 GiB budget for ``biased-full``, 95 % intervals.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cka_lab.errors import CkaLabError
from cka_lab.metrics.cka.functional import CONSTANT_TOL
from cka_lab.metrics.cka.result import check_estimator

__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_UNIT_SIZE", "N_GROUPS", "CKASpec"]

DEFAULT_MAX_BYTES = 4 * 2**30
"""Default memory budget of the biased-full estimator: 4 GiB (features kept + Grams)."""

N_GROUPS = 32
"""Default number of jackknife groups of crops for biased-full."""

DEFAULT_UNIT_SIZE = 8
"""Crops per HSIC unit of unbiased-minibatch in ``cka_by_passes`` (128 crops -> 16 units)."""


@dataclass(frozen=True)
class CKASpec:
    """How a CKA over probe crops is estimated.

    Attributes:
        estimator: ``"unbiased-minibatch"`` or ``"biased-full"`` (``ESTIMATORS``).
        unit_size: crops per HSIC unit (unbiased-minibatch), and per unit of the two half draws.
        n_groups: jackknife groups of crops (biased-full), contiguous and near-equal.
        groups: explicit jackknife groups ``((start, stop), ...)`` of crops instead (e.g. whole images).
        level: interval coverage, in (0, 1).
        max_bytes: memory budget of biased-full (features of one pass + all N x N Grams).
        feature_bytes: bytes per kept feature element (biased-full's pass plan).
        gram_dtype: Gram dtype; None: float32/float64 by features (unbiased), float64 (biased).
        tol: relative tolerance of the constant-layer test.
        halves: also the CKA of the even and of the odd units of ``unit_size`` crops (two disjoint
            probe draws: ``CKAResult.halves``).
    """

    estimator: str = "unbiased-minibatch"
    unit_size: int = DEFAULT_UNIT_SIZE
    n_groups: int = N_GROUPS
    groups: tuple[tuple[int, int], ...] | None = None
    level: float = 0.95
    max_bytes: int = DEFAULT_MAX_BYTES
    feature_bytes: int = 4
    gram_dtype: torch.dtype | None = None
    tol: float = CONSTANT_TOL
    halves: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "estimator", check_estimator(self.estimator))
        if not 0 < self.level < 1:
            raise CkaLabError(f"level must be in (0, 1), got {self.level}")
        if self.groups is not None:
            object.__setattr__(self, "groups", tuple((int(a), int(b)) for a, b in self.groups))
