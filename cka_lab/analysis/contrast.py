"""Two models side by side: their own layer x layer CKA, its difference, CKA across them, attention distances.

This is the analysis of the EDT paper (pre-trained vs from-scratch, SR vs denoising; Fig. 2) and of
Raghu et al. 2021 (attention per layer and head). With the unbiased estimator it is one pass over the
probe crops: every batch runs once through each model, feature hooks feed one keyed accumulator that
gives A x A, B x B and A x B at once, softmax hooks feed the attention statistics. With ``biased-full``
the layers are measured group by group over several passes of the same crops.

Every contrast carries its controls (:mod:`cka_lab.analysis.controls`): the probe-draw control of each
model and, where known, the seed-to-seed control; :meth:`Contrast.difference_decision` states a
difference only where it exceeds its interval and every control.

    spec = AnalysisSpec(layers="paper", estimator="biased-full")
    contrast = contrast_models(a, b, spec, name_a="scratch", name_b="pre-trained")
    contrast.difference          # (L, L) CKA(A) - CKA(B), same layer names required
    contrast.difference_decision().stated    # cells above their interval and the controls
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from cka_lab.errors import CkaLabError

from cka_lab.models.names import short_layer_name, stage_starts

from .attention_cache import AttentionCache
from .comparison import Comparison, probed_patch
from .controls import MIN_UNITS, Decision, decide
from .measure import distributed_rank, measure, measure_attention
from .probing import ProbedModel, prepare_probe
from .spec import AnalysisSpec

__all__ = ["Contrast", "ContrastOptions", "attach_seed_controls", "contrast_models", "check_same_task"]


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
    attention_a: pd.DataFrame | None = None  # one row per (layer, block, kind, direction, head), see AttentionDistance
    attention_b: pd.DataFrame | None = None
    attention_stages_a: pd.DataFrame | None = None  # per (layer, kind, direction), heads pooled, with intervals
    attention_stages_b: pd.DataFrame | None = None
    meta: dict = field(default_factory=dict)
    spec: AnalysisSpec = field(default_factory=AnalysisSpec)
    difference_low: np.ndarray | None = None  # paired interval of the difference (L, L)
    difference_high: np.ndarray | None = None
    control_a: np.ndarray | None = None  # probe-draw control of A's map (La, La): |half 1 - half 2|
    control_b: np.ndarray | None = None
    seed_control: np.ndarray | None = None  # |CKA(seed s) - CKA(seed s')| of a seed pair, (L, L)
    seed_control_label: str = ""
    difference_p: np.ndarray | None = None  # (L, L) raw two-sided jackknife-t p of each cell of the difference
    difference_centre: np.ndarray | None = None  # (L, L) the difference the interval is built on (biased-full: debiased)
    same_layer_interval: tuple[float, float, float] | None = None  # mean same-layer cross CKA, lower, upper

    @property
    def protocol(self) -> str:
        """Estimator, layer set, feature kind and N: what every output of this contrast names."""
        return self.cross.protocol

    def controls(self) -> list[np.ndarray]:
        """The controls a difference must clear, per cell: probe-draw of A and of B, seed-to-seed."""
        return [c for c in (self.control_a, self.control_b, self.seed_control) if c is not None]

    def difference_decision(self, min_effect: float | None = None) -> Decision:
        """Cells of the difference that are stated (see :func:`~cka_lab.analysis.controls.decide`):
        Benjamini-Hochberg adjusted p over the cells above the diagonal below ``1 - confidence``,
        ``|Δ| >= min_effect`` (default ``spec.min_effect``) and above every control; nothing with fewer
        than :data:`MIN_UNITS` resampling units. For biased-full the tested difference is that of the
        debiased maps (``difference_centre``), on which its interval is built."""
        d = self.difference if self.difference_centre is None else self.difference_centre
        low = self.difference_low if self.difference_low is not None else np.full_like(d, np.nan)
        high = self.difference_high if self.difference_high is not None else np.full_like(d, np.nan)
        p = self.difference_p  # None (a contrast built by hand): the interval must exclude 0, no correction
        floor = self.spec.min_effect if min_effect is None else float(min_effect)
        dec = decide(d, low, high, self.controls(), p=p, min_effect=floor, alpha=1 - self.spec.confidence,
                     symmetric=True)
        if self.cross.n_units < MIN_UNITS:  # too few units for an interval to mean anything
            dec.stated[...] = False
        return dec

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
        """Per model, stage, window kind (plain/shifted) and strip direction: distance, its uniform baseline,
        locality and relative entropy with their intervals (``AttentionDistance.summary()``)."""
        frames = [df.assign(model=name) for name, df in
                  ((self.name_a, self.attention_stages_a), (self.name_b, self.attention_stages_b)) if df is not None]
        if not frames:
            raise CkaLabError("this contrast was run without attention statistics (attention=False)")
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

    def control_summary(self) -> dict:
        """Median and largest value of each control over the cells off the diagonal (JSON-ready)."""
        out = {}
        for key, c in (("probe_draw_a", self.control_a), ("probe_draw_b", self.control_b),
                       ("seed_to_seed", self.seed_control)):
            if c is None:
                out[key] = None
                continue
            off = c[~np.eye(*c.shape, dtype=bool)] if c.shape[0] == c.shape[1] and c.shape[0] > 1 else c.ravel()
            off = off[np.isfinite(off)]
            out[key] = {"median": float(np.median(off)), "max": float(off.max())} if off.size else None
        if self.seed_control_label:
            out["seed_pair"] = self.seed_control_label
        return out

    def difference_effect(self) -> dict:
        """The decision on the difference map, in numbers: how many cells are tested and stated (after
        Benjamini-Hochberg and the ``min_effect`` floor), the median |Δ| of the stated cells, and the
        largest stated cell -- flagged ``selected``: it is quoted because it is the largest, so its size
        is biased upward -- with raw and adjusted p, interval and control; or, when nothing is stated,
        the largest |difference| and why it is not decidable."""
        dec = self.difference_decision()
        names = [short_layer_name(n) for n in self.within_a.layers_a]
        upper = np.triu(np.ones((len(names), len(names)), dtype=bool), k=1)
        stated = dec.stated & upper
        out = {"stated_cells": int(stated.sum()), "tested_cells": int(dec.family), "cells": int(upper.sum()),
               "n_units": self.cross.n_units, "min_units": MIN_UNITS, "min_effect": dec.min_effect,
               "fdr": dec.alpha, "correction": "Benjamini-Hochberg over the cells above the diagonal",
               "effect_kind": "debiased CKA difference" if self.difference_centre is not None
               and self.spec.estimator == "biased-full" else "CKA difference"}
        out["median_abs_stated"] = float(np.median(np.abs(dec.effect[stated]))) if stated.any() else None
        if stated.any():
            idx = np.unravel_index(np.argmax(np.where(stated, np.abs(dec.effect), -np.inf)), stated.shape)
            out["decidable"] = True
        else:
            mag = np.where(upper & np.isfinite(dec.effect), np.abs(dec.effect), -np.inf)
            idx = np.unravel_index(np.argmax(mag), mag.shape)
            out["decidable"] = False
        i, j = (int(k) for k in idx)

        def num(a, k=(i, j)):
            return float(a[k]) if a is not None and np.isfinite(a[k]) else None

        out.update({"layer_i": names[i], "layer_j": names[j], "difference": float(dec.effect[i, j]),
                    "low": float(dec.low[i, j]), "high": float(dec.high[i, j]),
                    "p": num(dec.p), "p_adjusted": num(dec.q),
                    "control": float(dec.control[i, j]) if np.isfinite(dec.control[i, j]) else None,
                    "selected": True,
                    "selection": "the largest |difference| of the " + ("stated" if stated.any() else "tested")
                    + " cells: chosen because it is largest, so its size is biased upward (winner's curse)"})
        return out

    def difference_table(self) -> pd.DataFrame:
        """One row per cell above the diagonal: layer_i, layer_j, difference, low, high, p, p_adjusted
        (Benjamini-Hochberg over these rows), control, stated -- raw and adjusted p side by side."""
        dec = self.difference_decision()
        names = [short_layer_name(n) for n in self.within_a.layers_a]
        i, j = np.triu_indices(len(names), k=1)
        nan = np.full(dec.effect.shape, np.nan)
        return pd.DataFrame({
            "layer_i": np.asarray(names, dtype=object)[i], "layer_j": np.asarray(names, dtype=object)[j],
            "difference": dec.effect[i, j], "low": np.asarray(dec.low)[i, j], "high": np.asarray(dec.high)[i, j],
            "p": (nan if dec.p is None else dec.p)[i, j], "p_adjusted": (nan if dec.q is None else dec.q)[i, j],
            "control": dec.control[i, j], "stated": dec.stated[i, j],
        })

    def summary(self) -> dict:
        """Headline numbers for a report or a JSON file (protocol and controls included)."""
        out = {
            "model_a": self.name_a,
            "model_b": self.name_b,
            "arch_a": self.cross.arch_a,
            "arch_b": self.cross.arch_b,
            "task_a": self.cross.task_a,
            "task_b": self.cross.task_b,
            "features": self.cross.features,
            "estimator": self.cross.estimator,
            "layer_set": self.cross.layer_set,
            "protocol": self.protocol,
            "n_samples": self.cross.n_samples,
            "n_units": self.cross.n_units,
            "patch": self.cross.patch,
            "patch_b": self.cross.meta.get("patch_b", self.cross.patch),
            "data": self.cross.data,
            "mean_cka_a": float(np.nanmean(self.within_a.matrix)),
            "mean_cka_b": float(np.nanmean(self.within_b.matrix)),
            "mean_cross_cka": float(np.nanmean(self.cross.matrix)),
            **self.meta,
        }
        if self.cross.same_layers:
            out["mean_cross_same_layer_cka"] = float(np.nanmean(np.diag(self.cross.matrix)))
            if self.same_layer_interval is not None:
                _, low, high = self.same_layer_interval
                out["mean_cross_same_layer_interval"] = [low, high]
        out["controls"] = self.control_summary()
        if self.comparable:
            d = self.difference
            out["mean_difference"] = float(np.nanmean(d))
            out["max_abs_difference"] = float(np.nanmax(np.abs(d)))
            out["difference_effect"] = self.difference_effect()
        if self.attention_stages_a is not None and self.attention_stages_b is not None:
            cols = [c for c in ("layer", "kind", "direction", "distance", "uniform_distance", "locality",
                                "locality_lower", "locality_upper", "entropy_rel", "entropy_rel_lower",
                                "entropy_rel_upper") if c in self.attention_stages_a.columns]
            out["attention_a"] = self.attention_stages_a[cols].to_dict(orient="records")
            out["attention_b"] = self.attention_stages_b[cols].to_dict(orient="records")
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


def _task(model: nn.Module, task: str | None) -> str | None:
    return task or getattr(getattr(model, "config", None), "tasks", (None,))[0]


@dataclass(frozen=True)
class ContrastOptions:
    """How a pair of models is run (what is measured is the :class:`AnalysisSpec`).

    Attributes:
        batches: clean crops ``(B, 3, P, P)`` that replace the spec's probe crops.
        task_a, task_b: the head each model is probed on (None: its first task).
        name_a, name_b: the models' names in every output.
        same_task: refuse models probed on different heads.
        device: where the models run.
        progress: progress bars (None: on a terminal).
        attention_cache: keeps each model's attention statistics on the spec's probe, so that a model in
            several contrasts has them measured once (not used with ``batches``).
    """

    batches: Iterable[Tensor] | None = None
    task_a: str | None = None
    task_b: str | None = None
    name_a: str = "A"
    name_b: str = "B"
    same_task: bool = False
    device: torch.device | str = "cpu"
    progress: bool | None = None
    attention_cache: AttentionCache | None = None

    @classmethod
    def of(cls, options: ContrastOptions | None, fields_given: dict, caller: str) -> ContrastOptions:
        """``options`` (or the defaults) with ``fields_given`` (keywords of ``caller``) set; a one-line
        CkaLabError names an unknown keyword."""
        names = [f.name for f in fields(cls)]
        if unknown := sorted(set(fields_given) - set(names)):
            raise CkaLabError(f"{caller} got unknown option(s) {', '.join(unknown)}: use {', '.join(names)}")
        return replace(options or cls(), **fields_given)


@torch.inference_mode()
def contrast_models(model_a: nn.Module, model_b: nn.Module, spec: AnalysisSpec | None = None,
                    options: ContrastOptions | None = None, **option_fields) -> Contrast:
    """Contrast ``model_a`` with ``model_b`` as ``spec`` says (default :class:`AnalysisSpec()`).

    ``spec`` gives the probe crops, the layers (``default``, ``paper`` or names/globs, the same for
    both), the feature kind, the estimator, attention on/off and controls on/off. ``options`` (a
    :class:`ContrastOptions`), or its fields as keywords (``name_a=``, ``same_task=``, ``batches=``, ...),
    say how the pair runs: ``batches`` replaces the spec's probe crops, ``same_task`` refuses models
    probed on different heads, ``attention_cache`` measures a model's attention once over several
    contrasts. Hooks are entered through one ExitStack and removed when the call ends.
    """
    spec = spec or AnalysisSpec()
    if not isinstance(spec, AnalysisSpec):
        raise CkaLabError(f"contrast_models takes an AnalysisSpec as its third argument, got {type(spec).__name__}; "
                          "pass probe crops as batches=...")
    opts = ContrastOptions.of(options, option_fields, "contrast_models")
    batches, name_a, name_b, progress = opts.batches, opts.name_a, opts.name_b, opts.progress
    device, task_a, task_b, attention_cache = opts.device, opts.task_a, opts.task_b, opts.attention_cache
    device = torch.device(device)
    task_a, task_b = _task(model_a, task_a), _task(model_b, task_b)
    if opts.same_task:
        check_same_task(model_a, model_b, task_a, task_b, (name_a, name_b))
    model_a.eval().to(device)
    model_b.eval().to(device)
    probe, sizes, label = prepare_probe(spec.probe, [(model_a, task_a), (model_b, task_b)], batches)
    probed = (ProbedModel(model_a, task_a, sizes[0]), ProbedModel(model_b, task_b, sizes[1]))
    cache = attention_cache if spec.attention and batches is None else None
    crop = probed_patch(probe, None) if cache is not None else None  # the size the crops were cut at
    keys = ([cache.key(p.model, p.task, p.patch, spec, distributed_rank()[1], crop=crop) for p in probed]
            if cache is not None else [])
    known = [cache.get(k) for k in keys] if cache is not None else [None, None]
    if cache is not None and cache.separate:  # attention in passes of its own; CKA always on the fused path
        for i, p in enumerate(probed):
            if known[i] is None:
                name = (name_a, name_b)[i]
                known[i] = measure_attention(p, spec, probe, progress=progress, desc=f"attention of {name}")
                cache.put(keys[i], *known[i])
    m = measure(*probed, spec, probe, attention=spec.attention, controls=spec.controls, progress=progress,
                desc=f"contrast {name_a} vs {name_b}", known_attention=known)
    if cache is not None:
        for k, heads, stages in zip(keys, (m.attention_a, m.attention_b), (m.stages_a, m.stages_b)):
            cache.put(k, heads, stages)
    archs = (getattr(model_a, "name", type(model_a).__name__), getattr(model_b, "name", type(model_b).__name__))
    patches = (probed_patch(probe, sizes[0]), probed_patch(probe, sizes[1]))

    def comparison(block: str, names, arch, tasks, layers, patch) -> Comparison:
        low, high = m.block_ci[block]
        return Comparison(
            name_a=names[0], name_b=names[1], arch_a=arch[0], arch_b=arch[1], task_a=tasks[0] or "",
            task_b=tasks[1] or "", layers_a=layers[0], layers_b=layers[1], matrix=m.block(block),
            n_samples=m.n_samples, n_batches=len(probe), patch=patch[0], data=label, ci_low=low, ci_high=high,
            features=spec.features, estimator=spec.estimator, layer_set=spec.layer_label, n_units=m.n_units,
            meta={"patch_b": patch[1], "unit": m.unit, "constant_layers": m.constant, "passes": m.passes},
        )

    la, lb = m.layers_a, m.layers_b
    low, high = m.difference_ci if m.difference_ci is not None else (None, None)
    return Contrast(
        name_a=name_a,
        name_b=name_b,
        within_a=comparison("aa", (name_a, name_a), (archs[0],) * 2, (task_a, task_a), (la, la), (patches[0],) * 2),
        within_b=comparison("bb", (name_b, name_b), (archs[1],) * 2, (task_b, task_b), (lb, lb), (patches[1],) * 2),
        cross=comparison("ab", (name_a, name_b), archs, (task_a, task_b), (la, lb), patches),
        attention_a=m.attention_a,
        attention_b=m.attention_b,
        attention_stages_a=m.stages_a,
        attention_stages_b=m.stages_b,
        spec=spec,
        difference_low=low,
        difference_high=high,
        control_a=m.control_a,
        control_b=m.control_b,
        difference_p=m.difference_p,
        difference_centre=m.difference_centre,
        same_layer_interval=m.same_layer,
    )


def attach_seed_controls(contrasts: list[Contrast], metas: dict[str, dict]) -> None:
    """Give each contrast the seed-to-seed control where the contrasts hold a seed pair.

    ``metas``: model name -> checkpoint metadata (``load_model(...).checkpoint_info``). Two models are a
    seed pair when :func:`~cka_lab.analysis.controls.seed_pair` says so; their within-model maps (same
    protocol and layers) give ``|CKA(seed s) - CKA(seed s')|``. A contrast gets the control of a seed
    pair of either of its models' configurations (the largest, where both have one).
    """
    from .controls import config_key, seed_pair

    maps: dict[str, Comparison] = {}
    for c in contrasts:
        maps.setdefault(c.name_a, c.within_a)
        maps.setdefault(c.name_b, c.within_b)
    names = list(maps)
    pairs = [(x, y) for i, x in enumerate(names) for y in names[i + 1:]
             if seed_pair(metas.get(x, {}), metas.get(y, {})) and maps[x].layers_a == maps[y].layers_a
             and maps[x].protocol == maps[y].protocol]
    for c in contrasts:
        keys = {config_key(metas.get(c.name_a, {})), config_key(metas.get(c.name_b, {}))} - {None}
        found = [(x, y) for x, y in pairs if config_key(metas.get(x, {})) in keys]
        diffs = [np.abs(maps[x].matrix - maps[y].matrix) for x, y in found
                 if maps[x].matrix.shape == c.within_a.matrix.shape]
        if diffs and c.comparable:
            c.seed_control = np.maximum.reduce(diffs)
            c.seed_control_label = "; ".join(f"{x} / {y}" for x, y in found)
