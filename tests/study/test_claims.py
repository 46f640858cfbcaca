"""Claim 5 (more local attention in pre-trained SR models) is judged only where attention was learnt."""

from __future__ import annotations

import pandas as pd

from cka_lab.study import parse_study
from cka_lab.study.claims import UNIFORM_TOLERANCE, judge_claims, upper_entropy_gap
from cka_lab.study.contrasts import ContrastPlan, ContrastRecord

STUDY = """
[study]
seeds = [0, 1, 2]
[tasks]
targets = ["x2"]
[conditions.scratch]
pretrain = "none"
[conditions.single]
pretrain = "same"
[data]
pretrain_sr = ["a"]
target_sr = ["b"]
"""


def _record(kind, a, b, seed, loc_a, loc_b, ent):
    rows = [{"model": m, "stage": s, "kind": "plain", "locality": loc, "entropy_rel": ent}
            for m, loc in ((a, loc_a), (b, loc_b)) for s in range(4)]
    plan = ContrastPlan(f"{a}_vs_{b}", kind, a, b, "x2", "x2", "x2", "single" if kind == "pretrain" else "scratch", seed)
    return ContrastRecord(plan, [], "", [], [], [], [], 0.9, float("nan"), float("nan"), attention=rows)


def _claim5(entropy_rel):
    spec = parse_study(STUDY)
    scores = pd.DataFrame([{"target": "x2", "condition": c, "seed": s, "psnr": 30.0 + s}
                           for c in ("scratch", "single") for s in (0, 1, 2)])
    # pre-trained models 5 % more local than scratch in every seed, seed-to-seed difference 0.001
    records = [_record("pretrain", f"x2-scratch-s{s}", f"x2-single-s{s}", s, 1.0, 0.95 - 0.001 * s, entropy_rel)
               for s in (0, 1, 2)]
    records.append(_record("seed", "x2-scratch-s0", "x2-scratch-s1", -1, 1.0, 1.001, entropy_rel))
    return next(v for v in judge_claims(spec, scores, records) if "more local" in v.claim)


def test_a_locality_effect_between_learnt_attention_maps_is_judged():
    v = _claim5(entropy_rel=0.9)
    assert v.status == "reproduced", v.sentence()


def test_near_uniform_attention_makes_the_locality_claim_not_decidable():
    v = _claim5(entropy_rel=1.0 - UNIFORM_TOLERANCE / 10)
    assert v.status == "not decidable at this scale"
    assert "no model learnt attention" in v.evidence


def test_upper_entropy_gap_uses_the_upper_half_of_the_stages():
    r = _record("pretrain", "a", "b", 0, 1.0, 1.0, 1.0)
    r.attention[0]["entropy_rel"] = 0.5  # stage 0 of model a: lower half, ignored
    r.attention[3]["entropy_rel"] = 0.99  # stage 3 of model a
    assert abs(upper_entropy_gap(r, "a") - 0.01) < 1e-12
    assert upper_entropy_gap(r, "b") == 0.0
