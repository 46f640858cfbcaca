"""Layer-by-layer CKA between two models on the same probe crops (the engine of ``cka-lab compare``).

Both models see the same clean crops (each at its own probe size, see
:func:`cka_lab.analysis.probing.prepare_probe`); each model's task decides what it is fed (SR heads: the
crop, denoising heads: the crop plus per-crop seeded noise, derain heads: the crop as is). What is
measured -- layers, feature kind, estimator -- is one :class:`~cka_lab.analysis.spec.AnalysisSpec`.

    comp = compare_models(a, b, AnalysisSpec(layers="paper", estimator="biased-full"))
    comp.matrix, comp.ci_low, comp.ci_high, comp.protocol
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from cka_lab.features.layersets import DEFAULT_PATTERN
from cka_lab.models.names import short_layer_name, stage_starts

from .measure import measure
from .probing import (
    ProbedModel,
    default_probe_images,
    model_input,
    prepare_probe,
    probe_loader,
    progress_enabled,
)
from .spec import AnalysisSpec

__all__ = [
    "Comparison",
    "compare_models",
    "stage_starts",
    "default_probe_images",
    "model_input",
    "probe_loader",
    "progress_enabled",
    "short_layer_name",
]

DEFAULT_LAYERS = DEFAULT_PATTERN
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


def _task(model: nn.Module, task: str | None) -> str | None:
    return task or getattr(getattr(model, "config", None), "tasks", (None,))[0]


def _arch(model: nn.Module) -> str:
    return getattr(model, "name", type(model).__name__)


@torch.inference_mode()
def compare_models(
    model_a: nn.Module,
    model_b: nn.Module,
    spec: AnalysisSpec | None = None,
    *,
    batches: Iterable[Tensor] | None = None,
    task_a: str | None = None,
    task_b: str | None = None,
    name_a: str = "A",
    name_b: str = "B",
    device: torch.device | str = "cpu",
    progress: bool | None = None,
) -> Comparison:
    """CKA between every layer of ``model_a`` and every layer of ``model_b`` (``spec.layers`` of each).

    ``spec`` (default :class:`AnalysisSpec()`) decides probe crops, layers, features and estimator;
    ``batches`` (clean crops ``(B, 3, P, P)``) replaces the spec's probe crops. The models run in eval
    mode on ``device``; hooks are removed when the call ends, also on error.
    """
    spec = spec or AnalysisSpec(attention=False)
    device = torch.device(device)
    task_a, task_b = _task(model_a, task_a), _task(model_b, task_b)
    model_a.eval().to(device)
    model_b.eval().to(device)
    probe, sizes, label = prepare_probe(spec.probe, [(model_a, task_a), (model_b, task_b)], batches)
    m = measure(ProbedModel(model_a, task_a, sizes[0]), ProbedModel(model_b, task_b, sizes[1]), spec, probe,
                controls=False, progress=progress, desc=f"CKA {name_a} vs {name_b}")
    low, high = m.block_ci["ab"]
    return Comparison(
        name_a=name_a, name_b=name_b, arch_a=_arch(model_a), arch_b=_arch(model_b), task_a=task_a or "",
        task_b=task_b or "", layers_a=m.layers_a, layers_b=m.layers_b, matrix=m.block("ab"),
        n_samples=m.n_samples, n_batches=len(probe), patch=probed_patch(probe, sizes[0]), data=label,
        ci_low=low, ci_high=high, features=spec.features, estimator=spec.estimator, layer_set=spec.layer_label,
        n_units=m.n_units, meta={"patch_b": probed_patch(probe, sizes[1]), "unit": m.unit,
                                 "constant_layers": m.constant, "passes": m.passes},
    )


def probed_patch(batches, size: int | None) -> int:
    """The input size a model saw: its own probe size, else the crops'."""
    return int(size) if size is not None else int(batches[0].x.shape[-1]) if len(batches) else 0
