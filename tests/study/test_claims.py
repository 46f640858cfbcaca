"""Claim 5 (more local attention in pre-trained SR models) is judged only where attention was learnt."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

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


def test_same_layer_values_match_layers_by_short_name():
    from cka_lab.study.measure import same_layer_values

    a = ["head_sr_x2.0", "body.layers.0.residual_group.blocks.0", "tail_sr_x2.3"]
    b = ["head_dn_g25.0", "body.layers.0.residual_group.blocks.0"]
    cross = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.4]])
    v = same_layer_values(cross, a, b)
    assert v[0] == 0.9 and v[1] == 0.8 and np.isnan(v[2])


def test_cka_claims_are_judged_under_every_protocol_in_one_family():

    spec = parse_study(STUDY.replace('targets = ["x2"]', 'targets = ["x2", "g25"]').replace(
        'target_sr = ["b"]', 'target_sr = ["b"]\npretrain_dn = ["a"]\ntarget_dn = ["b"]'))
    names = [f"body.layers.{s}.residual_group.blocks.{b}" for s in range(2) for b in range(3)]
    blocks = np.kron(np.eye(2), np.ones((3, 3))) * 0.3 + 0.7  # stage structure 0.3
    flat = np.full((6, 6), 0.9)  # none

    def task(seed, sr_map):
        plan = ContrastPlan(f"t{seed}", "task", f"x2-scratch-s{seed}", f"g25-scratch-s{seed}", "x2", "g25",
                            condition="scratch", seed=seed)
        return ContrastRecord(plan, names, "", (sr_map + 0.01 * seed).tolist(), flat.tolist(), flat.tolist(),
                              [0.5] * 6, 0.5, float("nan"), float("nan"))

    default = [task(s, blocks) for s in (0, 1, 2)]
    paper = [task(s, flat) for s in (0, 1, 2)]
    scores = pd.DataFrame(columns=["target", "condition", "seed", "psnr"])
    verdicts = judge_claims(spec, scores, default, protocols={"default": default, "paper": paper})
    stage = {v.protocol: v for v in verdicts if v.claim.startswith("x2 models show stage structure")}
    assert set(stage) == {"default", "paper"}
    assert stage["default"].effect.mean == pytest.approx(0.3) and stage["default"].status == "reproduced"
    assert stage["paper"].effect.mean == pytest.approx(0.0, abs=1e-12)
    assert stage["paper"].status == "not decidable at this scale"
    tested = [v for v in verdicts if v.tested]
    assert all(np.isfinite(v.p_adjusted) for v in tested)  # one Holm family over both protocols


def test_a_significant_effect_below_the_minimum_is_not_reproduced():
    from cka_lab.study.tables import adjust_verdicts, paired_effect, verdict

    tiny = verdict("c", paired_effect([0.004, 0.005, 0.006, 0.005]), what="d", unit="CKA")
    big = verdict("c", paired_effect([0.04, 0.05, 0.06, 0.05]), what="d", unit="CKA")
    tiny, big = adjust_verdicts([tiny, big])
    assert tiny.p_adjusted < 0.05 and tiny.status == "not decidable at this scale" and "minimum effect" in tiny.evidence
    assert big.status == "reproduced"


def test_findings_markdown_quotes_the_report_sentences_under_their_findings():
    from cka_lab.study.tables import FINDINGS, Effect, findings_markdown, undecidable, verdict

    e = Effect(mean=0.3, std=0.05, n=3, lower=0.18, upper=0.42, p=0.01)
    vs = [verdict("Claim one", e, what="x", unit="CKA"),
          undecidable("Claim two", None, "too few seeds")]
    vs = [type(v)(**{**v.__dict__, "finding": f}) for v, f in zip(vs, ("a", "gains"))]
    md = findings_markdown("demo: judged", vs, ["Hardware: test."])
    lines = md.splitlines()
    assert lines[0] == "# demo: judged" and "Hardware: test." in lines
    assert "Verdicts: 1 reproduced, 0 not reproduced, 1 not decidable at this scale (of 2 claims)." in lines
    assert lines.index(f"## {FINDINGS['a']}") < lines.index(f"1. {vs[0].sentence()}")
    assert lines.index(f"## {FINDINGS['gains']}") < lines.index(f"2. {vs[1].sentence()}")



def test_an_effect_reads_n_a_where_it_has_no_value():
    from cka_lab.study.tables import Effect

    nan = float("nan")
    assert Effect(nan, nan, 1, nan, nan).describe("CKA") == "n/a CKA (n = 1, no interval)"
    assert Effect(0.25, nan, 1, nan, nan).describe("dB") == "+0.25 dB (n = 1, no interval)"
    assert Effect(0.25, 0.1, 3, 0.0, 0.5).describe("dB") == "+0.25 dB (95 % CI +0.00 to +0.50, t over seeds, n = 3)"


def test_the_wall_time_line_says_when_an_invocation_measured_no_contrast():
    from cka_lab.study.orchestrate import _wall_time_line

    wall = pd.DataFrame({"run": ["a", "b"], "kind": ["scratch", "scratch"], "wall_time_s": [3600.0, 1800.0]})

    class Study:  # the two fields the line reads
        devices, runs_per_device = ["cpu"], 2

    class Spec:
        study = Study

    line = _wall_time_line(Spec, wall, 120.0, measured=0)
    assert "training 1.5 h of run time over 2 of 2 runs" in line and "2 run(s) at once" in line
    assert "this invocation 2 min, measuring no contrast (every contrast was saved by an earlier invocation" in line
    assert "(evaluation, 12 contrasts and this report included)" in _wall_time_line(Spec, wall, 600.0, measured=12)


def test_the_title_page_names_each_departure_from_the_official_optimiser():
    from cka_lab.study import preset_path
    from cka_lab.study.orchestrate import _optim_line

    line = _optim_line(parse_study(preset_path("paper-cpu").read_text()))
    for departure in ("lr 0.002 (official 0.0002)", "finetune_lr 0.001 (official lr 0.0002)", "eps 1e-15 (official 1e-08)",
                      "qk_lr_scale 4 (official 1)", "warmup 0.05 (official 0)",
                      "milestones (0.6, 0.8, 0.9) (official (0.5, 0.8, 0.9, 0.95))"):
        assert departure in line, departure
    assert "betas" not in line.split("Departures")[1]  # (0.9, 0.99) is the official pair
    tiny = parse_study(preset_path("tiny").read_text())  # lr 2e-4 and nothing else
    assert _optim_line(tiny).endswith("recipe: none.")
