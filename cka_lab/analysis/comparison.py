"""``Comparison``: the CKA matrix between the layers of two models and everything needed to read or redraw it
(what ``cka-lab compare`` writes, and each of the three maps of a :class:`~cka_lab.analysis.contrast.Contrast`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

__all__ = ["Comparison", "probed_patch"]


@dataclass
class Comparison:
    """The CKA matrix between two models and everything needed to read or redraw it."""

    name_a: str
    name_b: str
    arch_a: str
    arch_b: str
    task_a: str
    task_b: str
    layers_a: list[str]
    layers_b: list[str]
    matrix: np.ndarray  # (La, Lb) float64
    n_samples: int
    n_batches: int
    patch: int
    data: str
    ci_low: np.ndarray | None = None
    ci_high: np.ndarray | None = None
    features: str = "output"
    meta: dict = field(default_factory=dict)
    estimator: str = "unbiased-minibatch"
    layer_set: str = "default"
    n_units: int = 0

    @property
    def protocol(self) -> str:
        """What produced the matrix, as every output names it: estimator, layer set, feature kind, N."""
        return f"{self.estimator} CKA, layers {self.layer_set}, {self.features} features, N={self.n_samples}"

    def table(self) -> pd.DataFrame:
        """The matrix as a DataFrame: index ``layers_a``, columns ``layers_b``."""
        return pd.DataFrame(self.matrix, index=self.layers_a, columns=self.layers_b)

    def long_table(self) -> pd.DataFrame:
        """One row per layer pair: layer_a, layer_b, cka (and the confidence interval when known)."""
        rows = []
        for i, a in enumerate(self.layers_a):
            for j, b in enumerate(self.layers_b):
                row = {"layer_a": a, "layer_b": b, "cka": self.matrix[i, j]}
                if self.ci_low is not None:
                    row["ci_low"], row["ci_high"] = self.ci_low[i, j], self.ci_high[i, j]
                rows.append(row)
        return pd.DataFrame(rows)

    @property
    def same_layers(self) -> bool:
        return self.layers_a == self.layers_b

    def summary(self) -> dict:
        """Headline numbers: diagonal (same-named layers) and best match of each layer of A."""
        m = self.matrix
        best = np.nanargmax(np.where(np.isnan(m), -np.inf, m), axis=1)
        out = {
            "model_a": self.name_a,
            "model_b": self.name_b,
            "arch_a": self.arch_a,
            "arch_b": self.arch_b,
            "task_a": self.task_a,
            "task_b": self.task_b,
            "n_layers_a": len(self.layers_a),
            "n_layers_b": len(self.layers_b),
            "n_samples": self.n_samples,
            "n_batches": self.n_batches,
            "patch": self.patch,
            "data": self.data,
            "features": self.features,
            "estimator": self.estimator,
            "layer_set": self.layer_set,
            "protocol": self.protocol,
            "n_units": self.n_units,
            "mean_cka": float(np.nanmean(m)),
            # a row that is all NaN (a constant layer of A) has no best match: None (null in JSON)
            "best_match_of_a": {a: (None if np.isnan(row).all() else self.layers_b[j])
                                for a, j, row in zip(self.layers_a, best, m)},
            **self.meta,
        }
        if self.same_layers:
            diag = np.diag(m)
            out["diagonal"] = {a: float(v) for a, v in zip(self.layers_a, diag)}
            out["mean_diagonal_cka"] = float(np.nanmean(diag))
            out["min_diagonal"] = {"layer": self.layers_a[int(np.nanargmin(diag))], "cka": float(np.nanmin(diag))}
        return out


def probed_patch(batches, size: int | None) -> int:
    """The input size a model saw: its own probe size, else the crops'."""
    return int(size) if size is not None else int(batches[0].x.shape[-1]) if len(batches) else 0
