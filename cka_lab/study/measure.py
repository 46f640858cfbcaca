"""One study contrast measured with the analysis layer and reduced to a :class:`ContrastRecord`."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from cka_lab.study.contrasts import ContrastPlan, ContrastRecord
from cka_lab.study.runner import StudyPaths
from cka_lab.study.spec import StudySpec

__all__ = ["measure_contrast", "protocol_label"]


def protocol_label(spec: StudySpec) -> str:
    a = spec.analysis
    return (f"CKA {a.estimator}, layers {a.layers}, {a.features} features, N = {a.n_samples} crops of "
            f"{a.patch} px (bundled probe images, seed 0)")


def _attention_rows(df: pd.DataFrame | None, model: str) -> list[dict]:
    if df is None or "locality" not in df.columns:
        return []
    g = df.groupby(["layer", "kind"], sort=True)
    out = []
    for (layer, kind), part in g:
        out.append({"model": model, "stage": int(layer), "kind": str(kind),
                    "locality": float(part["locality"].mean()),
                    "entropy_rel": float(part["entropy_rel"].mean()) if "entropy_rel" in part else float("nan")})
    return out


def measure_contrast(spec: StudySpec, paths: StudyPaths, plan: ContrastPlan, *, device: str = "cpu") -> ContrastRecord:
    from cka_lab.analysis.compare import probe_loader
    from cka_lab.analysis.contrast import contrast_models
    from cka_lab.models import load_model

    a = spec.analysis
    dev = torch.device(device)
    model_a = load_model(paths.model(plan.run_a), device=dev)
    model_b = load_model(paths.model(plan.run_b), device=dev)
    batches, label = probe_loader(None, patch=a.patch, n_samples=a.n_samples, seed=0, batch_size=a.batch_size)
    c = contrast_models(model_a, model_b, batches, task_a=plan.task_a, task_b=plan.task_b, name_a=plan.run_a,
                        name_b=plan.run_b, features=a.features, attention=a.attention, device=dev, progress=False,
                        data_label=label)
    cross = np.asarray(c.cross.matrix, dtype=np.float64)
    diag = np.diag(cross) if cross.shape[0] == cross.shape[1] else np.full(cross.shape[0], np.nan)
    lo = hi = float("nan")
    if getattr(c.cross, "ci_low", None) is not None and cross.shape[0] == cross.shape[1]:
        lo = float(np.nanmean(np.diag(np.asarray(c.cross.ci_low))))
        hi = float(np.nanmean(np.diag(np.asarray(c.cross.ci_high))))
    return ContrastRecord(
        plan=plan,
        layers=list(c.cross.layers_a),
        protocol=protocol_label(spec),
        within_a=np.asarray(c.within_a.matrix, dtype=np.float64).tolist(),
        within_b=np.asarray(c.within_b.matrix, dtype=np.float64).tolist(),
        cross=cross.tolist(),
        same_layer=diag.tolist(),
        same_layer_mean=float(np.nanmean(diag)) if np.isfinite(diag).any() else float("nan"),
        same_layer_lower=lo,
        same_layer_upper=hi,
        attention=_attention_rows(c.attention_a, plan.run_a) + _attention_rows(c.attention_b, plan.run_b),
    )
