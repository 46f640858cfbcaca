"""One study contrast measured with the analysis layer and reduced to a :class:`ContrastRecord`."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from cka_lab.study.contrasts import ContrastPlan, ContrastRecord
from cka_lab.study.runner import StudyPaths
from cka_lab.study.spec import StudySpec

__all__ = ["measure_contrast", "protocol_label", "same_layer_values", "analysis_spec"]


def protocol_label(spec: StudySpec, protocol: str = "default") -> str:
    """One line naming the CKA protocol ``protocol`` of the study (layers, features, estimator, probes)."""
    a = spec.analysis
    size = f"{a.patch} px" if a.patch else "each model's training size"
    return (f"{analysis_spec(spec, protocol).protocol}, N = {a.n_samples} crops at {size} "
            "(bundled probe images, seed 0, noise drawn per crop)")


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


def analysis_spec(spec: StudySpec, protocol: str = "default"):
    """The :class:`~cka_lab.analysis.spec.AnalysisSpec` of every contrast of the study under ``protocol``:
    ``"default"`` is the study's ``[analysis]``; ``"paper"`` the EDT authors' layer set (``layers = "paper"``,
    its default features) with biased full-batch CKA, on the same probes."""
    from cka_lab.analysis.spec import AnalysisSpec, ProbeSpec

    a = spec.analysis
    probe = ProbeSpec(patch=a.patch or None, n_samples=a.n_samples, seed=0, batch_size=a.batch_size)
    if protocol == "paper":
        return AnalysisSpec(probe=probe, layers="paper", features=None, estimator="biased-full",
                            attention=a.attention, controls=True)
    return AnalysisSpec(probe=probe, layers=a.layers, features=a.features or None, estimator=a.estimator,
                        attention=a.attention, controls=True)


def same_layer_values(cross: np.ndarray, layers_a: list[str], layers_b: list[str]) -> np.ndarray:
    """(La,) cross-model CKA of each layer of model A with model B's layer of the same short name
    (:func:`~cka_lab.analysis.compare.short_layer_name`, which drops the task suffix of heads and tails);
    NaN where model B has no such layer."""
    from cka_lab.analysis.compare import short_layer_name

    index_b = {short_layer_name(n): j for j, n in enumerate(layers_b)}
    out = np.full(len(layers_a), np.nan)
    for i, n in enumerate(layers_a):
        j = index_b.get(short_layer_name(n))
        if j is not None:
            out[i] = cross[i, j]
    return out


def measure_contrast(spec: StudySpec, paths: StudyPaths, plan: ContrastPlan, *, device: str = "cpu",
                     attention_cache=None, protocol: str = "default") -> ContrastRecord:
    """CKA, controls and attention of one planned contrast under ``protocol``. ``attention_cache`` (an
    :class:`~cka_lab.analysis.attention_cache.AttentionCache` shared by the study's contrasts) measures
    each model's attention once, however many contrasts it is in.

    ``same_layer_lower`` / ``same_layer_upper`` bound the mean same-layer CKA itself (its interval from
    the paired probe-unit replicates of the mean, :attr:`~cka_lab.analysis.contrast.Contrast.same_layer_interval`),
    not an average of per-layer bounds."""
    from cka_lab.analysis.contrast import contrast_models
    from cka_lab.models import load_model

    dev = torch.device(device)
    model_a = load_model(paths.model(plan.run_a), device=dev)
    model_b = load_model(paths.model(plan.run_b), device=dev)
    c = contrast_models(model_a, model_b, analysis_spec(spec, protocol), task_a=plan.task_a, task_b=plan.task_b,
                        name_a=plan.run_a, name_b=plan.run_b, device=dev, progress=False,
                        attention_cache=attention_cache)
    cross = np.asarray(c.cross.matrix, dtype=np.float64)
    names_a, names_b = list(c.cross.layers_a), list(c.cross.layers_b)
    square = names_a == names_b
    lo = hi = float("nan")
    if square:
        diag = np.diag(cross)
        if c.same_layer_interval is not None:
            _, lo, hi = (float(x) for x in c.same_layer_interval)
    else:  # e.g. SR vs DN under the authors' layer set: the layers of one short name (head.1, s2.b3, tail.0)
        diag = same_layer_values(cross, names_a, names_b)
    control = float(np.nanmean(c.control_a)) if c.control_a is not None else float("nan")
    return ContrastRecord(
        plan=plan,
        layers=list(c.cross.layers_a),
        protocol=protocol_label(spec, protocol),
        within_a=np.asarray(c.within_a.matrix, dtype=np.float64).tolist(),
        within_b=np.asarray(c.within_b.matrix, dtype=np.float64).tolist(),
        cross=cross.tolist(),
        same_layer=diag.tolist(),
        same_layer_mean=float(np.nanmean(diag)) if np.isfinite(diag).any() else float("nan"),
        same_layer_lower=lo,
        same_layer_upper=hi,
        probe_control_a=control,
        attention=_attention_rows(c.attention_a, plan.run_a) + _attention_rows(c.attention_b, plan.run_b),
        layers_b=[] if list(c.cross.layers_b) == list(c.cross.layers_a) else list(c.cross.layers_b),
    )
