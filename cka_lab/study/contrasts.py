"""The study's contrasts: scratch vs each other condition within a seed (the pre-trained ones and
scratch-long), scratch seed vs scratch seed for every pair of seeds (the control), SR vs DN; each
reduced to a :class:`ContrastRecord` saved as strict JSON in ``contrasts/PAIR/record.json``.

No two runs of a study share initial weights or batch order (:mod:`cka_lab.study.plan`), so a compared
pair (scratch_s, condition_s) and a control pair (scratch_i, scratch_j) share the same thing: nothing.
Every seed pair enters the control, so that its variance is measured, not assumed away.

All contrasts of a study probe the same clean crops (``[analysis]`` patch, n_samples, seed 0), so their
numbers are comparable; the noise of a denoising input is drawn per crop.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from cka_lab.study.plan import plan_runs
from cka_lab.study.runner import StudyPaths
from cka_lab.study.spec import StudySpec, task_kind

__all__ = ["ContrastPlan", "ContrastRecord", "plan_contrasts", "run_contrasts", "record_folder"]


@dataclass(frozen=True)
class ContrastPlan:
    """``kind``: ``pretrain`` (scratch vs a condition, one seed), ``seed`` (one condition, two seeds), ``task`` (SR vs DN)."""

    pair: str
    kind: str
    run_a: str
    run_b: str
    task_a: str
    task_b: str
    target: str = ""
    condition: str = ""
    seed: int = -1
    seed_b: int = -1  # seed contrasts: the seeds of run_a (seed) and run_b (seed_b)


@dataclass
class ContrastRecord:
    """What the study keeps of one contrast (numbers only; NaN stored as null)."""

    plan: ContrastPlan
    layers: list[str]
    protocol: str
    within_a: list[list[float]]
    within_b: list[list[float]]
    cross: list[list[float]]
    same_layer: list[float]  # cross-model CKA of each layer with itself
    same_layer_mean: float
    same_layer_lower: float  # probe-resampling interval of the mean (nan when not available)
    same_layer_upper: float
    probe_control_a: float = float("nan")  # CKA between two disjoint probe draws of model A (same layers, mean)
    attention: list[dict] = field(default_factory=list)  # model, stage, kind, locality, lower, upper, entropy_rel
    layers_b: list[str] = field(default_factory=list)  # model B's layers when they differ from ``layers`` (else empty)

    def matrix(self, which: str) -> np.ndarray:
        return np.asarray(getattr(self, which), dtype=np.float64)


def plan_contrasts(spec: StudySpec) -> list[ContrastPlan]:
    """Every contrast the study needs (the seed-vs-seed control of the scratch condition for every pair of seeds)."""
    runs = {r.name: r for r in plan_runs(spec) if r.kind != "pretrain"}
    seeds = spec.study.seeds
    scratch = spec.scratch
    out: list[ContrastPlan] = []
    for target in spec.tasks.targets:
        for seed in seeds:
            for cond in spec.conditions_for(target):
                if cond.name == scratch:
                    continue
                a, b = f"{target}-{scratch}-s{seed}", f"{target}-{cond.name}-s{seed}"
                out.append(ContrastPlan(f"{target}_{scratch}_vs_{cond.name}_s{seed}", "pretrain", a, b, target, target,
                                        target, cond.name, seed))
        for i, si in enumerate(seeds):
            for sj in seeds[i + 1:]:
                a, b = f"{target}-{scratch}-s{si}", f"{target}-{scratch}-s{sj}"
                out.append(ContrastPlan(f"{target}_{scratch}_s{si}_vs_s{sj}", "seed", a, b, target,
                                        target, target, scratch, si, sj))
    sr = [t for t in spec.tasks.targets if task_kind(t) == "sr"]
    dn = [t for t in spec.tasks.targets if task_kind(t) == "dn"]
    if sr and dn:
        for seed in seeds:
            a, b = f"{sr[0]}-{scratch}-s{seed}", f"{dn[0]}-{scratch}-s{seed}"
            out.append(ContrastPlan(f"{sr[0]}_vs_{dn[0]}_{scratch}_s{seed}", "task", a, b, sr[0], dn[0],
                                    condition=scratch, seed=seed))
    missing = [p for p in out if p.run_a not in runs or p.run_b not in runs]
    assert not missing, missing  # plan_runs and plan_contrasts share their naming
    return out


def _strict(obj):
    if isinstance(obj, float):
        return None if not math.isfinite(obj) else obj
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    if isinstance(obj, np.generic):
        return _strict(obj.item())
    return obj


def _unstrict(obj):
    if obj is None:
        return float("nan")
    if isinstance(obj, list):
        return [_unstrict(v) for v in obj]
    return obj


def save_record(path: Path, record: ContrastRecord) -> None:
    from cka_lab.io import write_bytes

    data = _strict(asdict(record))
    write_bytes(path, json.dumps(data, indent=1, allow_nan=False).encode("utf-8"))


def load_record(path: Path) -> ContrastRecord:
    raw = json.loads(Path(path).read_text(encoding="utf-8"))
    plan = ContrastPlan(**raw.pop("plan"))
    for key in ("within_a", "within_b", "cross", "same_layer"):
        raw[key] = _unstrict(raw[key])
    for key in ("same_layer_mean", "same_layer_lower", "same_layer_upper", "probe_control_a"):
        raw[key] = float("nan") if raw.get(key) is None else raw[key]
    raw["attention"] = [{k: (float("nan") if v is None else v) for k, v in row.items()} for row in raw["attention"]]
    return ContrastRecord(plan=plan, **raw)


def record_folder(paths: StudyPaths, protocol: str = "default") -> Path:
    """Where a protocol's records live: ``contrasts/`` for the default, ``contrasts/protocol-<name>/`` otherwise."""
    return paths.contrasts if protocol == "default" else paths.contrasts / f"protocol-{protocol}"


def run_contrasts(spec: StudySpec, paths: StudyPaths, measure: Callable[[StudySpec, StudyPaths, ContrastPlan], ContrastRecord],
                  *, say: Callable[[str], None] = print, protocol: str = "default") -> list[ContrastRecord]:
    """Run every contrast not yet saved under ``protocol``, with ``measure`` (see
    :func:`cka_lab.study.measure.measure_contrast`)."""
    records = []
    for plan in plan_contrasts(spec):
        path = record_folder(paths, protocol) / plan.pair / "record.json"
        if not path.exists():
            say(f"[study] contrast {plan.pair} ({plan.kind}{'' if protocol == 'default' else ', protocol ' + protocol})")
            path.parent.mkdir(parents=True, exist_ok=True)
            save_record(path, measure(spec, paths, plan))
        records.append(load_record(path))
    return records
