"""Layer-by-layer CKA between two models on the same probe images (the engine of ``cka-lab compare``).

Both models see the same clean crops; each model's task decides what it is fed: SR heads get the crop
as their low-resolution input, denoising heads the crop plus seeded Gaussian noise (identical noise
for identical sigma), derain heads the crop as is (point ``--data`` at rain images for them). Features
are captured with :class:`~cka_lab.features.FeatureExtractor` and accumulated batch by batch in
:class:`~cka_lab.metrics.cka.MinibatchCKA`: nothing of size N x N and no feature tensor outlives its batch.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from tqdm import tqdm

from cka_lab.data.degrade import add_gaussian_noise
from cka_lab.data.probes import bundled_images, probe_batches
from cka_lab.errors import CkaLabError
from cka_lab.features import FeatureExtractor, resolve_layers
from cka_lab.metrics.cka import MinibatchCKA

__all__ = [
    "Comparison",
    "compare_models",
    "default_layers",
    "stage_starts",
    "default_probe_images",
    "model_input",
    "progress_enabled",
    "short_layer_name",
]

DEFAULT_LAYERS = "body.layers.*.residual_group.blocks.*"
_STAGE = re.compile(r"body\.layers\.(\d+)")


def progress_enabled() -> bool:
    """Progress bars on a terminal, off with ``CKA_LAB_NO_PROGRESS=1``."""
    return os.environ.get("CKA_LAB_NO_PROGRESS", "") in ("", "0") and sys.stderr.isatty()


def default_layers(model: nn.Module) -> list[str]:
    """Every transformer block of an EDT body, in order (the layers of the paper's Fig. 2)."""
    return resolve_layers(model, DEFAULT_LAYERS)


def stage_starts(layers: Sequence[str]) -> list[int]:
    """Indices where a new body stage (``body.layers.i``) starts, for heatmap boundaries."""
    starts, last = [], None
    for i, name in enumerate(layers):
        m = _STAGE.search(name)
        stage = m.group(1) if m else None
        if i > 0 and stage != last:
            starts.append(i)
        last = stage
    return starts


_BLOCK = re.compile(r"^body\.layers\.(\d+)\.residual_group\.blocks\.(\d+)")


def short_layer_name(name: str) -> str:
    """Compact display name of an EDT layer: ``body.layers.2.residual_group.blocks.3.mlp`` -> ``s2.b3.mlp``."""
    m = _BLOCK.match(name)
    if m:
        return f"s{m.group(1)}.b{m.group(2)}{name[m.end():]}"
    return name.removeprefix("body.").replace("layers.", "s", 1) if name.startswith("body.layers.") else name


def default_probe_images() -> list[Path]:
    """The images bundled with the package: Set5 HR and McMaster crops (natural, clean content)."""
    return bundled_images("sr_hr") + bundled_images("clean")


def model_input(x: Tensor, task: str, *, seed: int, batch_index: int) -> Tensor:
    """What a head of ``task`` is fed for the clean crops ``x: (B, 3, P, P)``: noisy for ``g<sigma>``."""
    if task.startswith("g") and task[1:].isdigit():
        # the noise is drawn on the CPU, so it is the same whatever device the model runs on
        g = torch.Generator().manual_seed(seed * 1_000_003 + batch_index * 1_009 + int(task[1:]))
        return add_gaussian_noise(x.cpu(), float(task[1:]), generator=g).to(x.device)
    return x


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
            "estimator": "minibatch linear CKA, unbiased HSIC (Nguyen et al. 2021)",
            "mean_cka": float(np.nanmean(m)),
            "best_match_of_a": {a: self.layers_b[j] for a, j in zip(self.layers_a, best)},
            **self.meta,
        }
        if self.same_layers:
            diag = np.diag(m)
            out["diagonal"] = {a: float(v) for a, v in zip(self.layers_a, diag)}
            out["mean_diagonal_cka"] = float(np.nanmean(diag))
            out["min_diagonal"] = {"layer": self.layers_a[int(np.nanargmin(diag))], "cka": float(np.nanmin(diag))}
        return out


def _check_patch(model: nn.Module, task: str, patch: int) -> None:
    cfg = getattr(model, "config", None)
    if cfg is None:
        return
    cfg.head(task)
    m = cfg.pad_multiple(task)
    if patch % m:
        lo, hi = patch // m * m, (patch // m + 1) * m
        raise CkaLabError(
            f"probe patch {patch} is not a multiple of {m}, which the {task} head of {cfg.name} needs: "
            f"use --patch {f'{lo} or {hi}' if lo else hi}"
        )


def _run(model: nn.Module, x: Tensor, task: str | None) -> None:
    if task is not None and hasattr(model, "forward_task"):
        model.forward_task(x, task)
    else:
        model(x)


@torch.inference_mode()
def compare_models(
    model_a: nn.Module,
    model_b: nn.Module,
    batches: Iterable[Tensor],
    *,
    task_a: str | None = None,
    task_b: str | None = None,
    layers_a: str | Sequence[str] | None = None,
    layers_b: str | Sequence[str] | None = None,
    name_a: str = "A",
    name_b: str = "B",
    seed: int = 0,
    device: torch.device | str = "cpu",
    confidence: bool = True,
    progress: bool | None = None,
    data_label: str = "",
    features: str = "output",
) -> Comparison:
    """CKA between every layer of ``model_a`` and every layer of ``model_b`` over ``batches``.

    ``batches`` yields clean crops ``(B, 3, P, P)`` (B >= 4); the models run in eval mode on
    ``device``. ``layers_*`` are names or glob patterns (default: every transformer block).
    ``features`` is ``"output"`` (what each layer returns) or ``"update"`` (output minus input, what a
    residual block adds; see :class:`~cka_lab.features.FeatureExtractor`).
    """
    device = torch.device(device)
    task_a = task_a or getattr(getattr(model_a, "config", None), "tasks", (None,))[0]
    task_b = task_b or getattr(getattr(model_b, "config", None), "tasks", (None,))[0]
    model_a.eval().to(device)
    model_b.eval().to(device)
    ext_a = FeatureExtractor(model_a, layers_a if layers_a is not None else DEFAULT_LAYERS, kind=features)
    ext_b = FeatureExtractor(model_b, layers_b if layers_b is not None else DEFAULT_LAYERS, kind=features)
    metric = MinibatchCKA(ext_a.layers, ext_b.layers, keep_batches=confidence)
    total = len(batches) if hasattr(batches, "__len__") else None
    bar = tqdm(batches, total=total, desc=f"CKA {name_a} vs {name_b}", unit="batch",
               disable=not (progress_enabled() if progress is None else progress))
    patch = 0
    checked = False
    with ext_a, ext_b:
        for i, x in enumerate(bar):
            x = x.to(device)
            patch = x.shape[-1]
            if not checked:
                _check_patch(model_a, task_a, patch)
                _check_patch(model_b, task_b, patch)
                checked = True
            _run(model_a, model_input(x, task_a or "", seed=seed, batch_index=i), task_a)
            _run(model_b, model_input(x, task_b or "", seed=seed, batch_index=i), task_b)
            metric.update(ext_a.features, ext_b.features)
    matrix = metric.compute().cpu().numpy()
    lo = hi = None
    if confidence and metric.n_batches >= 2:
        lo_t, hi_t = metric.confidence_interval(n_boot=500, seed=seed)
        lo, hi = lo_t.cpu().numpy(), hi_t.cpu().numpy()
    return Comparison(
        name_a=name_a,
        name_b=name_b,
        arch_a=getattr(model_a, "name", type(model_a).__name__),
        arch_b=getattr(model_b, "name", type(model_b).__name__),
        task_a=task_a or "",
        task_b=task_b or "",
        layers_a=list(ext_a.layers),
        layers_b=list(ext_b.layers),
        matrix=matrix,
        n_samples=metric.n_samples,
        n_batches=metric.n_batches,
        patch=patch,
        data=data_label,
        ci_low=lo,
        ci_high=hi,
        features=features,
    )


def probe_loader(data: str | Path | None, *, patch: int, n_samples: int, seed: int, batch_size: int):
    """Clean probe crops from ``data`` (a folder) or the bundled images; the label says which."""
    if batch_size < 4:
        raise CkaLabError(
            f"--batch-size {batch_size} is too small: the unbiased HSIC estimator needs at least 4 samples per batch"
        )
    images = default_probe_images() if data is None else data
    label = "bundled probe images (Set5 HR, McMaster crops)" if data is None else str(data)
    batches = probe_batches(images, patch=patch, n_samples=n_samples, seed=seed, batch_size=batch_size)
    if len(batches) and n_samples % batch_size and n_samples % batch_size < 4:
        raise CkaLabError(
            f"--n-samples {n_samples} with --batch-size {batch_size} leaves a last batch of "
            f"{n_samples % batch_size} (< 4 samples): choose n-samples divisible by the batch size"
        )
    return batches, label
