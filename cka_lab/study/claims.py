"""The paper's claims, each judged from the study's numbers (one :class:`~cka_lab.study.tables.Verdict` each).

Claims (Li et al., arXiv 2112.10175) and how they are measured here. The runs of different seeds share
nothing (no initial weights, no batch order: :mod:`cka_lab.study.plan`), so seeds are independent units:

0. *SR models show stage structure in CKA and DN models do not* (Fig. 2): :func:`stage_structure` of each
   scratch model's within-model map (CKA inside a stage minus across a boundary at equal depth distance),
   t over seeds for SR (0a) and paired SR - DN (0b); the same statistic on scratch seed-vs-seed maps is
   shown as the seed control.

1. *Pre-training improves SR*: the **transfer** -- PSNR(pre-trained) - PSNR(scratch-long), the gain over
   training from scratch for the same steps and patches -- per pre-trained condition, SR target; paired
   by seed, t-interval over seeds. (The gain over ``scratch`` and its split are in the gains table.)
2. *Pre-training helps SR much more than denoising*: transfer(SR) - transfer(DN), same condition.
3. *Multi-related pre-training beats single-task / multi-unrelated*: PSNR(related) - PSNR(single | unrelated).
4. *Pre-training changes SR models more than denoising models* (the paper: "barely changes denoising"):
   per target, the change ``mean_{i<j} CKA(scratch_i, scratch_j) - mean_s CKA(scratch_s, pre_s)`` (same-layer
   CKA, mean over layers): the control is every pair of scratch seeds, built like the compared pair (both
   pairs share nothing); the effect is the change of SR minus that of DN, with a leave-one-seed-out
   jackknife interval (:func:`~cka_lab.study.tables.jackknife_effect`), so the control's own variance is
   in the interval. Needs 3 seeds.
5. *Pre-training brings more local attention into higher layers of SR models*: locality (attention distance
   / uniform-attention distance) of the upper half of the stages, scratch minus pre-trained, paired by seed
   (t over independent seeds: the seed-to-seed variation is in the interval). Not decidable when no model
   of the contrast learnt attention (upper-stage entropy within :data:`UNIFORM_TOLERANCE` of uniform
   attention's): a locality difference between near-uniform maps is not a statement about local information.
   5b: *... and barely changes DN models*: that change for SR minus the one for DN, paired by seed.
6. *SR and denoising models are organised differently*: the seed-to-seed same-layer CKA (every pair of
   seeds, mean of both tasks) minus the SR-vs-DN same-layer CKA of each seed; seed jackknife.

The CKA claims (0, 4, 6) are judged under every protocol of ``[analysis] protocols`` (cka_lab's default
and the authors' layer set with biased full-batch CKA), all claims in one Holm family; an effect below
its unit's minimum (:data:`~cka_lab.study.tables.MIN_EFFECT`) is never "reproduced".

A PSNR claim (1-3) is decidable only where every compared model (each seed of each condition compared)
scores above the best trivial baseline of its target on the same images (bicubic for SR, the best of
the noisy input and its best Gaussian blur for DN); otherwise it is *not decidable at this scale* and says
which model falls short. All tested claims form one family: Holm's correction
(:func:`~cka_lab.study.tables.adjust_verdicts`) decides which are reproduced.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np
import pandas as pd

from cka_lab.models.names import stage_of
from cka_lab.study.contrasts import ContrastRecord
from cka_lab.study.spec import StudySpec, task_kind
from cka_lab.study.tables import Verdict, adjust_verdicts, jackknife_effect, paired_effect, undecidable, verdict

__all__ = ["judge_claims", "upper_locality", "upper_entropy_gap", "UNIFORM_TOLERANCE", "change_statistic",
           "organisation_statistic", "baseline_shortfall", "stage_structure",
           "finding_of"]

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


def _pair_mean(pairs: dict[tuple[int, int], float], seeds: Sequence[int]) -> float:
    keep = set(seeds)
    v = [x for (i, j), x in pairs.items() if i in keep and j in keep and np.isfinite(x)]
    return float(np.mean(v)) if v else float("nan")


def _seed_mean(values: dict[int, float], seeds: Sequence[int]) -> float:
    v = [values[s] for s in seeds if s in values and np.isfinite(values[s])]
    return float(np.mean(v)) if v else float("nan")


def change_statistic(control: dict[tuple[int, int], float], compared: dict[int, float], seeds: Sequence[int]) -> float:
    """``mean_{i<j} control[(i, j)] - mean_s compared[s]`` over the seeds given (NaN without a control pair).

    ``control``: CKA of the scratch models of seeds i and j; ``compared``: CKA(scratch_s, pre-trained_s).
    """
    return _pair_mean(control, seeds) - _seed_mean(compared, seeds)


def organisation_statistic(controls: Sequence[dict[tuple[int, int], float]], cross: dict[int, float],
                           seeds: Sequence[int]) -> float:
    """Mean over tasks of each task's seed-pair CKA, minus the mean over seeds of CKA(SR_s, DN_s)."""
    return float(np.mean([_pair_mean(c, seeds) for c in controls])) - _seed_mean(cross, seeds)


def baseline_shortfall(scores: pd.DataFrame, target: str, conditions: Sequence[str]) -> str:
    """Empty when every model of ``conditions`` for ``target`` beats the best trivial baseline; else why not."""
    if "baseline_psnr" not in scores:
        return ""
    s = scores[(scores.target == target) & scores.condition.isin(conditions)]
    bad = s[~(s["over_baseline"] > 0)]
    if bad.empty:
        return ""
    worst = bad.loc[bad["psnr"].idxmin()]
    return (f"{len(bad)} of {len(s)} {target} models of {', '.join(conditions)} do not beat the best trivial baseline "
            f"({worst['best_baseline']} {worst['baseline_psnr']:.2f} dB on the same images; lowest: {worst['run']} "
            f"{worst['psnr']:.2f} dB), so a PSNR difference between them says nothing about what they learnt")


def _psnr_claim(claim: str, d: pd.Series, what: str, short: str) -> Verdict:
    effect = paired_effect(d.dropna())
    if short:
        return undecidable(claim, effect, short, what=what)
    return verdict(claim, effect, what=what)


def judge_claims(spec: StudySpec, scores: pd.DataFrame, records: list[ContrastRecord], *,
                 protocols: Mapping[str, list[ContrastRecord]] | None = None) -> list[Verdict]:
    """Every claim the study's design can address, Holm-adjusted over the tested ones.

    ``records``: the contrasts under the study's default protocol (attention claims use them);
    ``protocols``: the records under each CKA protocol (default: ``{"default": records}``); the CKA
    claims (0a, 0b, 4, 6) are judged under each, all in one Holm family."""
    scratch, long = spec.scratch, spec.scratch_long
    conds = spec.pretrained
    sr = [t for t in spec.tasks.targets if task_kind(t) == "sr"]
    dn = [t for t in spec.tasks.targets if task_kind(t) == "dn"]
    by_kind = {k: [r for r in records if r.plan.kind == k] for k in ("pretrain", "seed", "task")}
    protocols = dict(protocols) if protocols else {"default": records}
    out: list[Verdict] = []
    for name, recs in protocols.items():
        out += _stage_claims(spec, recs, name if len(protocols) > 1 else "")

    def transfer(target: str, cond: str) -> pd.Series:
        return (_psnr(scores, target, cond) - _psnr(scores, target, long)).dropna()

    def short(target: str, *cs: str) -> str:
        return baseline_shortfall(scores, target, cs)

    # 1 -- pre-training improves SR beyond the same compute from scratch (transfer)
    for t in sr:
        for c in (c for c in conds if c.applies(t)):
            out.append(_psnr_claim(f"Pre-training ({c.name}) improves {t} beyond training from scratch for the same "
                                   f"steps and patches ({long})", transfer(t, c.name),
                                   f"transfer PSNR({c.name}) - PSNR({long}) on {spec.eval.sr}", short(t, c.name, long)))
    # 2 -- more for SR than for DN
    if sr and dn:
        for c in (c for c in conds if c.applies(sr[0]) and c.applies(dn[0])):
            d = (transfer(sr[0], c.name) - transfer(dn[0], c.name)).dropna()
            why = "; ".join(x for x in (short(sr[0], c.name, long), short(dn[0], c.name, long)) if x)
            out.append(_psnr_claim(f"Pre-training ({c.name}) helps {sr[0]} more than {dn[0]}", d,
                                   "transfer(SR) - transfer(DN)", why))
    # 3 -- multi-related beats single-task and multi-unrelated
    related = [c.name for c in conds if c.pretrain == "related"]
    for other_kind in ("same", "unrelated"):
        others = [c.name for c in conds if c.pretrain == other_kind]
        for t in spec.tasks.targets:
            for r in related:
                for o in others:
                    if not (spec.condition(r).applies(t) and spec.condition(o).applies(t)):
                        continue
                    d = (_psnr(scores, t, r) - _psnr(scores, t, o)).dropna()
                    label = "single-task" if other_kind == "same" else "multi-unrelated"
                    out.append(_psnr_claim(f"Multi-related pre-training ({r}) beats {label} ({o}) on {t}", d,
                                           f"PSNR({r}) - PSNR({o})", short(t, r, o)))
    # 4 -- pre-training changes SR more than DN, against every pair of scratch seeds (each CKA protocol)
    for pname, precs in protocols.items():
        out += _change_claims(spec, precs, pname if len(protocols) > 1 else "")
    # 5 -- more local attention in the upper stages of pre-trained SR models
    for t in sr:
        for c in (c for c in conds if c.applies(t)):
            recs = [r for r in by_kind["pretrain"] if r.plan.target == t and r.plan.condition == c.name]
            d = pd.Series({r.plan.seed: upper_locality(r, r.plan.run_a) - upper_locality(r, r.plan.run_b)
                           for r in recs}, dtype=float)
            effect = paired_effect(d.dropna())
            gaps = [upper_entropy_gap(r, m) for r in recs for m in (r.plan.run_a, r.plan.run_b)]
            gaps = [g for g in gaps if np.isfinite(g)]
            claim = f"Pre-training ({c.name}) makes attention in the upper stages of {t} models more local"
            what = "locality(scratch) - locality(pre), upper stages"
            if gaps and max(gaps) < UNIFORM_TOLERANCE:
                out.append(undecidable(claim, effect,
                                       f"no model learnt attention: upper-stage entropy is within {max(gaps):.2g} of "
                                       f"uniform attention's in every {scratch} and {c.name} model (below "
                                       f"{UNIFORM_TOLERANCE:g}), so locality differences say nothing about local "
                                       "information", what=what, unit="(distance / uniform)"))
                continue
            out.append(verdict(claim, effect, what=what, unit="(distance / uniform)"))
    # 5b -- ... and barely changes DN models: the change of SR minus that of DN, paired by seed
    if sr and dn:
        for c in (c for c in conds if c.applies(sr[0]) and c.applies(dn[0])):
            change = {}
            gaps = []
            for t in (sr[0], dn[0]):
                recs = [r for r in by_kind["pretrain"] if r.plan.target == t and r.plan.condition == c.name]
                change[t] = pd.Series({r.plan.seed: upper_locality(r, r.plan.run_a) - upper_locality(r, r.plan.run_b)
                                       for r in recs}, dtype=float)
                gaps += [upper_entropy_gap(r, m) for r in recs for m in (r.plan.run_a, r.plan.run_b)]
            gaps = [g for g in gaps if np.isfinite(g)]
            d = (change[sr[0]] - change[dn[0]]).dropna()
            effect = paired_effect(d)
            dn_only = paired_effect(change[dn[0]].dropna())
            claim = (f"Pre-training ({c.name}) makes upper-stage attention more local in {sr[0]} models than in "
                     f"{dn[0]} models (barely changes DN)")
            what = f"[locality(scratch) - locality(pre)] {sr[0]} - {dn[0]}, upper stages"
            alone = f"the {dn[0]} change alone: {dn_only.describe('', 3)}"
            if not gaps or max(gaps) < UNIFORM_TOLERANCE:
                out.append(undecidable(claim, effect, "no model learnt attention (upper-stage entropy within "
                                       f"{UNIFORM_TOLERANCE:g} of uniform)", what=what, unit="(distance / uniform)"))
                continue
            out.append(verdict(claim, effect, what=what, context=alone, unit="(distance / uniform)"))
    # 6 -- SR and DN organised differently (each CKA protocol)
    for pname, precs in protocols.items():
        out += _organisation_claims(spec, precs, pname if len(protocols) > 1 else "")
    return adjust_verdicts([replace(v, finding=finding_of(v.claim)) for v in out])


def finding_of(claim: str) -> str:
    """The key of :data:`~cka_lab.study.tables.FINDINGS` a claim of :func:`judge_claims` tests."""
    if "stage structure" in claim or "organised differently" in claim:
        return "a"
    if "more local" in claim or "models more than" in claim:
        return "b"
    if claim.startswith("Multi-related pre-training"):
        return "c"
    return "gains"


def _controls(spec: StudySpec, records: Sequence[ContrastRecord]) -> dict[str, dict[tuple[int, int], float]]:
    return {t: {(r.plan.seed, r.plan.seed_b): r.same_layer_mean for r in records
                if r.plan.kind == "seed" and r.plan.target == t and r.plan.condition == spec.scratch}
            for t in spec.tasks.targets}


def _targets_by_kind(spec: StudySpec) -> tuple[list[str], list[str]]:
    """The study's SR targets and its DN targets, in file order."""
    return ([t for t in spec.tasks.targets if task_kind(t) == "sr"],
            [t for t in spec.tasks.targets if task_kind(t) == "dn"])


def _label(claim: str, protocol: str) -> str:
    return f"{claim} [{protocol} protocol]" if protocol else claim


def _change_claims(spec: StudySpec, records: Sequence[ContrastRecord], protocol: str) -> list[Verdict]:
    """Claim 4 under one CKA protocol: pre-training changes SR models more than DN models."""
    sr, dn = _targets_by_kind(spec)
    seeds = list(spec.study.seeds)
    if not (sr and dn):
        return []
    control = _controls(spec, records)
    out = []
    for c in (c for c in spec.pretrained if c.applies(sr[0]) and c.applies(dn[0])):
        comp = {t: {r.plan.seed: r.same_layer_mean for r in records
                    if r.plan.kind == "pretrain" and r.plan.target == t and r.plan.condition == c.name}
                for t in (sr[0], dn[0])}

        def stat(idx, comp=comp):
            s = [seeds[i] for i in idx]
            return (change_statistic(control[sr[0]], comp[sr[0]], s)
                    - change_statistic(control[dn[0]], comp[dn[0]], s))

        out.append(verdict(_label(f"Pre-training ({c.name}) changes {sr[0]} models more than {dn[0]} models "
                                  "(same-layer CKA below the seed-to-seed control)", protocol),
                           jackknife_effect(stat, len(seeds)),
                           what=(f"[control - CKA(scratch, pre)] SR - DN, control every pair of {len(seeds)} "
                                 "scratch seeds"), unit="CKA", protocol=protocol))
    return out


def _organisation_claims(spec: StudySpec, records: Sequence[ContrastRecord], protocol: str) -> list[Verdict]:
    """Claim 6 under one CKA protocol: SR and DN models are organised differently layer by layer."""
    sr, dn = _targets_by_kind(spec)
    seeds = list(spec.study.seeds)
    if not (sr and dn):
        return []
    control = _controls(spec, records)
    cross = {r.plan.seed: r.same_layer_mean for r in records if r.plan.kind == "task"}

    def organisation(idx):
        s = [seeds[i] for i in idx]
        return organisation_statistic([control[sr[0]], control[dn[0]]], cross, s)

    return [verdict(_label(f"{sr[0]} and {dn[0]} models are organised differently layer by layer", protocol),
                    jackknife_effect(organisation, len(seeds)),
                    what="seed-to-seed CKA (every pair) - CKA(SR, DN), same layer", unit="CKA", protocol=protocol)]


def stage_structure(matrix, layers: Sequence[str]) -> float:
    """How much more alike layers of one body stage are than layers of different stages at the same depth
    distance, from a within-model CKA map (the paper's Fig. 2 "stages").

    For each distance d >= 1 with pairs of both kinds, the mean CKA of the pairs (i, i + d) inside one
    stage minus the mean CKA of the pairs (i, i + d) that cross a stage boundary; the mean over d. Matching
    the distance removes the plain decay of CKA with depth, which any network shows: a map that only
    decays with distance scores 0. Layers outside the body (head, tail) are left out; NaN without two
    stages or with no distance that has both kinds of pair.

    >>> import numpy as np
    >>> names = [f"body.layers.{s}.residual_group.blocks.{b}" for s in (0, 1) for b in (0, 1)]
    >>> blocks = np.kron(np.eye(2), np.ones((2, 2))) * 0.5 + 0.5  # 1 inside a stage, 0.5 across
    >>> float(stage_structure(blocks, names))
    0.5
    >>> decay = 1.0 / (1.0 + np.abs(np.subtract.outer(np.arange(4), np.arange(4))))
    >>> float(stage_structure(decay, names))
    0.0
    """
    m = np.asarray(matrix, dtype=np.float64)
    stage = [stage_of(n) for n in layers]
    idx = [i for i, s in enumerate(stage) if s is not None]
    if m.ndim != 2 or m.shape[0] != len(layers) or len({stage[i] for i in idx}) < 2:
        return float("nan")
    diffs = []
    for d in range(1, len(idx)):
        inside, across = [], []
        for a, b in zip(idx, idx[d:]):
            v = m[a, b]
            if np.isfinite(v):
                (inside if stage[a] == stage[b] else across).append(v)
        if inside and across:
            diffs.append(np.mean(inside) - np.mean(across))
    return float(np.mean(diffs)) if diffs else float("nan")


def _stage_claims(spec: StudySpec, records: Sequence[ContrastRecord], protocol: str) -> list[Verdict]:
    """Claims 0a/0b under one CKA protocol (Fig. 2): SR models show stage structure in their within-model
    CKA maps, and more than DN models do; from the scratch models of every seed (the SR-vs-DN contrasts hold
    both within-model maps), t over seeds, beside the structure that two scratch seeds of one task share
    (the seed control: the same statistic on their cross-model map)."""
    sr = [t for t in spec.tasks.targets if task_kind(t) == "sr"]
    dn = [t for t in spec.tasks.targets if task_kind(t) == "dn"]
    if not (sr and dn):
        return []
    task = [r for r in records if r.plan.kind == "task"]
    s_sr = pd.Series({r.plan.seed: stage_structure(r.within_a, r.layers) for r in task}, dtype=float)
    s_dn = pd.Series({r.plan.seed: stage_structure(r.within_b, r.layers_b or r.layers) for r in task}, dtype=float)

    def seed_control(t):
        v = [stage_structure(r.cross, r.layers) for r in records if r.plan.kind == "seed" and r.plan.target == t]
        v = [x for x in v if np.isfinite(x)]
        return f"{np.mean(v):+.3f} (mean of {len(v)} seed pairs)" if v else "n/a"

    control = f"seed control (the statistic on scratch seed-vs-seed maps): {sr[0]} {seed_control(sr[0])}, " \
              f"{dn[0]} {seed_control(dn[0])}"
    what = ("stage structure = mean over depth distance of [CKA inside a stage - CKA across a stage boundary], "
            "within-model maps of the scratch models")
    out = []
    a = paired_effect(s_sr.dropna())
    b = paired_effect((s_sr - s_dn).dropna())
    claim_a = _label(f"{sr[0]} models show stage structure in their layer-by-layer CKA (Fig. 2)", protocol)
    claim_b = _label(f"{sr[0]} models show more stage structure than {dn[0]} models (Fig. 2: DN models show none)",
                     protocol)
    if a.n == 0:
        return [undecidable(c, None, "no within-model CKA maps with two body stages", unit="CKA", protocol=protocol)
                for c in (claim_a, claim_b)]
    out.append(verdict(claim_a, a, what=f"{what}, {sr[0]}", context=control, unit="CKA", protocol=protocol))
    out.append(verdict(claim_b, b, what=f"{what}, {sr[0]} - {dn[0]} paired by seed", unit="CKA", protocol=protocol,
                       context=f"{dn[0]} alone: {paired_effect(s_dn.dropna()).describe('', 3)}; {control}"))
    return out

