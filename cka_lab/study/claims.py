"""The paper's claims, each judged from the study's numbers (one :class:`~cka_lab.study.tables.Verdict` each).

Claims (Li et al., arXiv 2112.10175) and how they are measured here -- every effect is paired by seed and
its interval is a t-interval over seeds; CKA effects are measured against the seed-to-seed control:

1. *Pre-training improves SR*: PSNR gain of each pre-trained condition over scratch, SR target.
2. *Pre-training helps SR much more than denoising*: gain(SR) - gain(DN), same condition, paired by seed.
3. *Multi-related pre-training beats single-task / multi-unrelated*: PSNR(related) - PSNR(single | unrelated).
4. *Pre-training changes SR models more than denoising models* (the paper: "barely changes denoising"):
   the drop of same-layer CKA between scratch and pre-trained models below the seed-to-seed CKA,
   ``(ctrl - cka(scratch, pre))``, SR minus DN.
5. *Pre-training brings more local attention into higher layers of SR models*: locality (attention distance
   / uniform-attention distance) of the upper half of the stages, scratch minus pre-trained, paired by seed,
   against the seed-to-seed difference of the scratch models. Not decidable when no model of the contrast
   learnt attention (upper-stage entropy within :data:`UNIFORM_TOLERANCE` of uniform attention's): a
   locality difference between near-uniform maps is not a statement about local information.
6. *SR and denoising models are organised differently*: seed-to-seed same-layer CKA (mean of both tasks)
   minus the SR-vs-DN same-layer CKA, per seed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cka_lab.study.contrasts import ContrastRecord
from cka_lab.study.spec import StudySpec, task_kind
from cka_lab.study.tables import Verdict, paired_effect, verdict

__all__ = ["judge_claims", "upper_locality", "upper_entropy_gap", "UNIFORM_TOLERANCE"]

UNIFORM_TOLERANCE = 1e-3
"""Attention whose entropy is within this fraction of uniform attention's has not been learnt."""


def _psnr(scores: pd.DataFrame, target: str, cond: str) -> pd.Series:
    s = scores[(scores.target == target) & (scores.condition == cond)]
    return s.set_index("seed")["psnr"]


def _upper_values(record: ContrastRecord, model: str, key: str) -> list[float]:
    """``key`` of one model's attention rows in the upper half of the body stages (finite values only)."""
    rows = [r for r in record.attention if r.get("model") == model and np.isfinite(r.get(key, np.nan))]
    stages = sorted({int(r["stage"]) for r in rows})
    upper = set(stages[len(stages) // 2:])
    return [float(r[key]) for r in rows if int(r["stage"]) in upper]


def upper_locality(record: ContrastRecord, model: str) -> float:
    """Mean locality (distance / uniform distance) over the upper half of the body stages of one model."""
    values = _upper_values(record, model, "locality")
    return float(np.mean(values)) if values else float("nan")


def upper_entropy_gap(record: ContrastRecord, model: str) -> float:
    """Largest ``1 - entropy / uniform entropy`` over the upper half of the body stages of one model."""
    values = _upper_values(record, model, "entropy_rel")
    return float(max(1.0 - v for v in values)) if values else float("nan")


def _scratch(spec: StudySpec) -> str:
    return next(c.name for c in spec.conditions if c.from_scratch)


def judge_claims(spec: StudySpec, scores: pd.DataFrame, records: list[ContrastRecord]) -> list[Verdict]:
    scratch = _scratch(spec)
    conds = [c for c in spec.conditions if not c.from_scratch]
    sr = [t for t in spec.tasks.targets if task_kind(t) == "sr"]
    dn = [t for t in spec.tasks.targets if task_kind(t) == "dn"]
    by_kind = {k: [r for r in records if r.plan.kind == k] for k in ("pretrain", "seed", "task")}
    out: list[Verdict] = []

    def gain(target: str, cond: str) -> pd.Series:
        return (_psnr(scores, target, cond) - _psnr(scores, target, scratch)).dropna()

    # 1 -- pre-training improves SR
    for t in sr:
        for c in conds:
            out.append(verdict(f"Pre-training ({c.name}) improves {t} over training from scratch",
                               paired_effect(gain(t, c.name)), what=f"PSNR gain on {spec.eval.sr}"))
    # 2 -- more for SR than for DN
    if sr and dn:
        for c in conds:
            d = (gain(sr[0], c.name) - gain(dn[0], c.name)).dropna()
            out.append(verdict(f"Pre-training ({c.name}) helps {sr[0]} more than {dn[0]}", paired_effect(d),
                               what="gain(SR) - gain(DN)"))
    # 3 -- multi-related beats single-task and multi-unrelated
    related = [c.name for c in conds if c.pretrain == "related"]
    for other_kind in ("same", "unrelated"):
        others = [c.name for c in conds if c.pretrain == other_kind]
        for t in spec.tasks.targets:
            for r in related:
                for o in others:
                    d = (_psnr(scores, t, r) - _psnr(scores, t, o)).dropna()
                    label = "single-task" if other_kind == "same" else "multi-unrelated"
                    out.append(verdict(f"Multi-related pre-training ({r}) beats {label} ({o}) on {t}",
                                       paired_effect(d), what=f"PSNR({r}) - PSNR({o})"))
    # 4 -- pre-training changes SR more than DN (relative to the seed-to-seed control)
    ctrl = {r.plan.target: r.same_layer_mean for r in by_kind["seed"] if r.plan.condition == scratch}
    if sr and dn and sr[0] in ctrl and dn[0] in ctrl:
        for c in conds:
            change = {}
            for t in (sr[0], dn[0]):
                change[t] = pd.Series({r.plan.seed: ctrl[t] - r.same_layer_mean for r in by_kind["pretrain"]
                                       if r.plan.target == t and r.plan.condition == c.name})
            d = (change[sr[0]] - change[dn[0]]).dropna()
            out.append(verdict(f"Pre-training ({c.name}) changes {sr[0]} models more than {dn[0]} models "
                               "(same-layer CKA below the seed-to-seed control)", paired_effect(d),
                               what="[ctrl - CKA(scratch, pre)] SR - DN", unit="CKA"))
    # 5 -- more local attention in the upper stages of pre-trained SR models
    for t in sr:
        seed_rec = [r for r in by_kind["seed"] if r.plan.target == t and r.plan.condition == scratch]
        control = (abs(upper_locality(seed_rec[0], seed_rec[0].plan.run_a)
                       - upper_locality(seed_rec[0], seed_rec[0].plan.run_b)) if seed_rec else None)
        for c in conds:
            recs = [r for r in by_kind["pretrain"] if r.plan.target == t and r.plan.condition == c.name]
            d = pd.Series({r.plan.seed: upper_locality(r, r.plan.run_a) - upper_locality(r, r.plan.run_b)
                           for r in recs})
            gaps = [upper_entropy_gap(r, m) for r in recs for m in (r.plan.run_a, r.plan.run_b)]
            gaps = [g for g in gaps if np.isfinite(g)]
            claim = f"Pre-training ({c.name}) makes attention in the upper stages of {t} models more local"
            if gaps and max(gaps) < UNIFORM_TOLERANCE:
                out.append(Verdict(claim, "not decidable at this scale",
                                   f"no model learnt attention: upper-stage entropy is within {max(gaps):.2g} of uniform "
                                   f"attention's in every scratch and {c.name} model (below {UNIFORM_TOLERANCE:g}), so "
                                   f"locality differences (locality(scratch) - locality(pre) = "
                                   f"{paired_effect(d.dropna()).describe('', digits=6).replace('  ', ' ')}) say nothing about local information"))
                continue
            out.append(verdict(claim, paired_effect(d.dropna()), what="locality(scratch) - locality(pre), upper stages",
                               unit="(distance / uniform)", control=control,
                               control_what="seed-to-seed |difference| of scratch models"))
    # 6 -- SR and DN organised differently
    if sr and dn and sr[0] in ctrl and dn[0] in ctrl:
        base = (ctrl[sr[0]] + ctrl[dn[0]]) / 2
        d = pd.Series({r.plan.seed: base - r.same_layer_mean for r in by_kind["task"]})
        out.append(verdict(f"{sr[0]} and {dn[0]} models are organised differently layer by layer",
                           paired_effect(d.dropna()), what="seed-to-seed CKA - CKA(SR, DN), same layer", unit="CKA"))
    return out
