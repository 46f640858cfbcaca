"""Two models side by side: their own layer x layer CKA, its difference, CKA across them, attention distances.

This is the analysis of the EDT paper (pre-trained vs from-scratch, SR vs denoising; Fig. 2) and of
Raghu et al. 2021 (attention distance per layer and head), in one pass over the probe crops: every
batch runs once through each model, with feature hooks feeding three streaming CKA accumulators
(A x A, B x B, A x B) and softmax hooks feeding one attention-distance accumulator per model.

    contrast = contrast_models(a, b, batches, name_a="scratch", name_b="pre-trained")
    contrast.difference          # (L, L) CKA(A) - CKA(B), same layer names required
    contrast.attention_layers    # per model and stage: mean distance, head spread, locality
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from tqdm import tqdm

from cka_lab.errors import CkaLabError
from cka_lab.features import FeatureExtractor
from cka_lab.metrics.attention import AttentionDistance, attention_modules, locality_summary
from cka_lab.metrics.cka import MinibatchCKA

from .compare import (
    DEFAULT_LAYERS,
    Comparison,
    _check_patch,
    _run,
    model_input,
    progress_enabled,
    short_layer_name,
    stage_starts,
)

__all__ = ["Contrast", "contrast_models", "check_same_task"]


def _nanmean(values: np.ndarray) -> float:
    """Mean ignoring NaN; NaN, without numpy's warning, when no value is left (a one-block stage)."""
    values = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(values)) if np.any(~np.isnan(values)) else float("nan")


@dataclass
class Contrast:
    """Everything a contrast of model A with model B measured (CKA matrices as :class:`Comparison`)."""

    name_a: str
    name_b: str
    within_a: Comparison  # A x A
    within_b: Comparison  # B x B
    cross: Comparison  # A x B
    attention_a: pd.DataFrame | None = None  # one row per (layer, block, direction, head), see AttentionDistance
    attention_b: pd.DataFrame | None = None
    meta: dict = field(default_factory=dict)

    @property
    def comparable(self) -> bool:
        """Whether A and B have the same layer names, so their CKA maps can be subtracted."""
        return [short_layer_name(n) for n in self.within_a.layers_a] == [
            short_layer_name(n) for n in self.within_b.layers_a
        ]

    @property
    def difference(self) -> np.ndarray:
        """``(L, L)`` CKA of A minus CKA of B (raises when the layer sets differ)."""
        if not self.comparable:
            raise CkaLabError(
                f"{self.name_a} and {self.name_b} have different layers "
                f"({len(self.within_a.layers_a)} vs {len(self.within_b.layers_a)}): no difference map"
            )
        return self.within_a.matrix - self.within_b.matrix

    @property
    def attention(self) -> pd.DataFrame:
        """Both models' per-head attention distances, with a ``model`` column."""
        frames = [df.assign(model=name) for name, df in ((self.name_a, self.attention_a),
                                                         (self.name_b, self.attention_b)) if df is not None]
        if not frames:
            raise CkaLabError("this contrast was run without attention distances (attention=False)")
        return pd.concat(frames, ignore_index=True)

    @property
    def attention_layers(self) -> pd.DataFrame:
        """Per model and stage: mean attention distance, its range over heads, locality shares."""
        frames = [locality_summary(df).assign(model=name) for name, df in
                  ((self.name_a, self.attention_a), (self.name_b, self.attention_b)) if df is not None]
        if not frames:
            raise CkaLabError("this contrast was run without attention distances (attention=False)")
        out = pd.concat(frames, ignore_index=True)
        return out[["model"] + [c for c in out.columns if c != "model"]]

    def stage_table(self) -> pd.DataFrame:
        """Per stage of A: mean CKA with the other blocks of its own stage, with later stages, and the
        mean same-layer CKA across models -- the numbers a reader quotes from the heatmaps."""
        rows = []
        for name, comp in ((self.name_a, self.within_a), (self.name_b, self.within_b)):
            starts = [0] + list(stage_starts(comp.layers_a)) + [len(comp.layers_a)]
            m = comp.matrix
            for s, (i0, i1) in enumerate(zip(starts[:-1], starts[1:])):
                block = m[i0:i1, i0:i1]
                off = block[~np.eye(i1 - i0, dtype=bool)]  # empty for a one-block stage: NaN
                later = m[i0:i1, i1:]
                row = {"model": name, "stage": s, "within_stage": _nanmean(off),
                       "with_later_stages": _nanmean(later)}
                if self.cross.same_layers:
                    row["cross_model_same_layer"] = _nanmean(np.diag(self.cross.matrix)[i0:i1])
                rows.append(row)
        return pd.DataFrame(rows)

    def summary(self) -> dict:
        """Headline numbers for a report or a JSON file."""
        out = {
            "model_a": self.name_a,
            "model_b": self.name_b,
            "arch_a": self.cross.arch_a,
            "arch_b": self.cross.arch_b,
            "task_a": self.cross.task_a,
            "task_b": self.cross.task_b,
            "features": self.cross.features,
            "n_samples": self.cross.n_samples,
            "patch": self.cross.patch,
            "data": self.cross.data,
            "mean_cka_a": float(np.nanmean(self.within_a.matrix)),
            "mean_cka_b": float(np.nanmean(self.within_b.matrix)),
            "mean_cross_cka": float(np.nanmean(self.cross.matrix)),
            **self.meta,
        }
        if self.cross.same_layers:
            out["mean_cross_same_layer_cka"] = float(np.nanmean(np.diag(self.cross.matrix)))
        if self.comparable:
            d = self.difference
            out["mean_difference"] = float(np.nanmean(d))
            out["max_abs_difference"] = float(np.nanmax(np.abs(d)))
        if self.attention_a is not None and self.attention_b is not None:
            la = locality_summary(self.attention_a).set_index("layer")["mean_distance"]
            lb = locality_summary(self.attention_b).set_index("layer")["mean_distance"]
            out["attention_distance_a"] = {int(k): float(v) for k, v in la.items()}
            out["attention_distance_b"] = {int(k): float(v) for k, v in lb.items()}
        return out


def check_same_task(model_a: nn.Module, model_b: nn.Module, task_a: str, task_b: str, names=("A", "B")) -> None:
    """For a contrast that needs one task (pre-trained vs scratch): both models must be probed on one head."""
    if task_a != task_b:
        tasks_a = ", ".join(getattr(model_a, "tasks", ()) or ["?"])
        tasks_b = ", ".join(getattr(model_b, "tasks", ()) or ["?"])
        raise CkaLabError(
            f"{names[0]} is probed as {task_a} ({tasks_a}) and {names[1]} as {task_b} ({tasks_b}): this contrast "
            "needs one task for both; pick a head both models have with --task, or drop --same-task"
        )


def _comparison(metric: MinibatchCKA, ext_a: FeatureExtractor, ext_b: FeatureExtractor, names, archs, tasks,
                patch: int, data: str, features: str, seed: int, confidence: bool) -> Comparison:
    lo = hi = None
    if confidence and metric.n_batches >= 2:
        lo_t, hi_t = metric.confidence_interval(n_boot=500, seed=seed)
        lo, hi = lo_t.cpu().numpy(), hi_t.cpu().numpy()
    return Comparison(
        name_a=names[0], name_b=names[1], arch_a=archs[0], arch_b=archs[1], task_a=tasks[0], task_b=tasks[1],
        layers_a=list(ext_a.layers), layers_b=list(ext_b.layers), matrix=metric.compute().cpu().numpy(),
        n_samples=metric.n_samples, n_batches=metric.n_batches, patch=patch, data=data,
        ci_low=lo, ci_high=hi, features=features,
    )


@torch.inference_mode()
def contrast_models(
    model_a: nn.Module,
    model_b: nn.Module,
    batches: Iterable[Tensor],
    *,
    task_a: str | None = None,
    task_b: str | None = None,
    layers: str | Sequence[str] | None = None,
    name_a: str = "A",
    name_b: str = "B",
    features: str = "update",
    attention: bool = True,
    same_task: bool = False,
    seed: int = 0,
    device: torch.device | str = "cpu",
    confidence: bool = True,
    progress: bool | None = None,
    data_label: str = "",
) -> Contrast:
    """Contrast ``model_a`` with ``model_b`` on ``batches`` of clean crops ``(B, 3, P, P)``, B >= 4.

    ``layers`` (names or globs, the same for both; default every transformer block) and ``features``
    (``"update"``: what each block adds to the residual stream, or ``"output"``) choose the CKA
    features. ``attention`` also measures attention distances of every EDT attention module (models
    without any are refused). ``same_task`` refuses models probed on different heads.
    """
    device = torch.device(device)
    task_a = task_a or getattr(getattr(model_a, "config", None), "tasks", (None,))[0]
    task_b = task_b or getattr(getattr(model_b, "config", None), "tasks", (None,))[0]
    if same_task:
        check_same_task(model_a, model_b, task_a, task_b, (name_a, name_b))
    if attention:
        for name, model in ((name_a, model_a), (name_b, model_b)):
            if not attention_modules(model):
                raise CkaLabError(
                    f"{name} ({type(model).__name__}) has no window-attention modules: attention distances need "
                    "an EDT model; pass attention=False (--no-attention) to contrast CKA only"
                )
    model_a.eval().to(device)
    model_b.eval().to(device)
    ext_a = FeatureExtractor(model_a, layers if layers is not None else DEFAULT_LAYERS, kind=features)
    ext_b = FeatureExtractor(model_b, layers if layers is not None else DEFAULT_LAYERS, kind=features)
    aa = MinibatchCKA(ext_a.layers, ext_a.layers, keep_batches=confidence)
    bb = MinibatchCKA(ext_b.layers, ext_b.layers, keep_batches=confidence)
    ab = MinibatchCKA(ext_a.layers, ext_b.layers, keep_batches=confidence)
    att_a = AttentionDistance(model_a, task=task_a) if attention else None
    att_b = AttentionDistance(model_b, task=task_b) if attention else None
    total = len(batches) if hasattr(batches, "__len__") else None
    bar = tqdm(batches, total=total, desc=f"contrast {name_a} vs {name_b}", unit="batch",
               disable=not (progress_enabled() if progress is None else progress))
    patch = 0
    hooks = [ext_a, ext_b] + [a for a in (att_a, att_b) if a is not None]
    for h in hooks:
        h.__enter__()
    try:
        for i, x in enumerate(bar):
            x = x.to(device)
            if not patch:
                patch = x.shape[-1]
                _check_patch(model_a, task_a, patch)
                _check_patch(model_b, task_b, patch)
            _run(model_a, model_input(x, task_a or "", seed=seed, batch_index=i), task_a)
            _run(model_b, model_input(x, task_b or "", seed=seed, batch_index=i), task_b)
            fa, fb = ext_a.features, ext_b.features
            aa.update(fa, fa)
            bb.update(fb, fb)
            ab.update(fa, fb)
    finally:
        for h in reversed(hooks):
            h.__exit__(None, None, None)
    archs = (getattr(model_a, "name", type(model_a).__name__), getattr(model_b, "name", type(model_b).__name__))
    common = dict(patch=patch, data=data_label, features=features, seed=seed, confidence=confidence)
    return Contrast(
        name_a=name_a,
        name_b=name_b,
        within_a=_comparison(aa, ext_a, ext_a, (name_a, name_a), (archs[0],) * 2, (task_a, task_a), **common),
        within_b=_comparison(bb, ext_b, ext_b, (name_b, name_b), (archs[1],) * 2, (task_b, task_b), **common),
        cross=_comparison(ab, ext_a, ext_b, (name_a, name_b), archs, (task_a, task_b), **common),
        attention_a=att_a.compute() if att_a is not None else None,
        attention_b=att_b.compute() if att_b is not None else None,
    )
