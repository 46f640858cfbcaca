"""The fair study design: equal compute (scratch-long), disjoint evaluation data, named overlap, a seed pair
per run, controls built like the pair they judge (with their variance), baselines and Holm in the verdicts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cka_lab.errors import CkaLabError
from cka_lab.study import parse_study, preset_path
from cka_lab.study.claims import baseline_shortfall, change_statistic, judge_claims, organisation_statistic
from cka_lab.study.contrasts import ContrastPlan, ContrastRecord, plan_contrasts
from cka_lab.study.plan import condition_compute, plan_runs, run_config, scratch_long_budget
from cka_lab.study.tables import (
    Verdict,
    adjust_verdicts,
    gains,
    jackknife_effect,
    paired_effect,
    score_summary,
    scores_frame,
    verdict,
    verdict_table,
)

BASE = """
[study]
seeds = [0, 1, 2]
[tasks]
targets = ["x2", "g25"]
[conditions.scratch]
pretrain = "none"
[conditions.single]
pretrain = "same"
[conditions.related]
pretrain = "related"
[data]
root = "/data"
pretrain_sr = [{ path = "train/big", reduce = 1 }, { path = "train/small", reduce = 2 }]
pretrain_dn = ["train/big"]
target_sr = [{ path = "train/small", reduce = 2 }]
target_dn = ["train/small"]
[budget]
pretrain_iterations = 7
iterations = 5
batch_size = 4
"""


# -- equal compute ------------------------------------------------------------------------------------

def test_scratch_long_is_added_with_the_steps_and_patches_of_the_largest_pretraining():
    spec = parse_study(BASE)
    long = next(c for c in spec.conditions if c.is_scratch_long)
    assert long.name == "scratch-long" and long.added and spec.scratch == "scratch"
    # related x2+x3+x4: 3 heads x 4 x 7 + 4 x 5 = 104 patches in 12 steps -> batch ceil(104 / 12) = 9
    assert condition_compute(spec, "x2", spec.pretrained[1]) == (12, 104)
    assert condition_compute(spec, "x2", spec.pretrained[0]) == (12, 48)
    assert scratch_long_budget(spec, "x2") == (12, 9)
    runs = {r.name: r for r in plan_runs(spec)}
    assert (runs["x2-scratch-long-s1"].iterations, runs["x2-scratch-long-s1"].batch_size) == (12, 9)
    assert runs["x2-scratch-long-s1"].kind == "scratch" and not runs["x2-scratch-long-s1"].depends


def test_single_task_pretraining_alone_gives_scratch_long_exactly_its_budget():
    spec = parse_study(BASE.replace('[conditions.related]\npretrain = "related"\n', ""))
    assert scratch_long_budget(spec, "x2") == (12, 4)  # 4 x 7 + 4 x 5 = 48 = 12 x 4


def test_an_explicit_scratch_long_condition_is_used_and_bad_ones_get_one_line():
    spec = parse_study(BASE + '[conditions.long]\npretrain = "none"\nbudget = "total"\n')
    assert spec.scratch_long == "long" and [c.name for c in spec.conditions].count("scratch-long") == 0
    for extra, msg in (('[conditions.x]\npretrain = "same"\nbudget = "total"\n', "is for from-scratch conditions"),
                       ('[conditions.x]\npretrain = "none"\nbudget = "long"\n', "use \"target\" or \"total\""),
                       ('[conditions.scratch-long]\npretrain = "none"\n', "equal-compute control's name"),
                       ('[conditions.again]\npretrain = "none"\n', "are the same")):
        with pytest.raises(CkaLabError, match=msg) as exc:
            parse_study(BASE + extra)
        assert "\n" not in str(exc.value)


def test_every_bundled_preset_has_scratch_long():
    for name in ("tiny", "paper-small", "paper-small-cpu"):
        spec = parse_study(preset_path(name).read_text(), source=preset_path(name))
        assert spec.scratch_long == "scratch-long"
        assert not next(c for c in spec.conditions if c.is_scratch_long).added  # named in the file


# -- data -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("source", ['"sr/Set5"', '"sr/Set5/HR"', '"sr"', '{ path = "denoise/McMaster", reduce = 2 }'])
def test_a_training_source_overlapping_an_evaluation_folder_is_refused(source):
    text = BASE.replace('pretrain_dn = ["train/big"]', f"pretrain_dn = [{source}]")
    with pytest.raises(CkaLabError, match="overlaps the evaluation folder") as exc:
        parse_study(text)
    assert "\n" not in str(exc.value)


def test_the_pretraining_corpus_including_the_targets_training_set_is_named():
    spec = parse_study(BASE)
    assert spec.pretrain_overlap("sr") == ["train/small (1/2 size)"]  # same folder, same reduction
    assert spec.pretrain_overlap("dn") == []  # train/big does not hold train/small
    inside = parse_study(BASE.replace('pretrain_dn = ["train/big"]', 'pretrain_dn = ["train"]'))
    assert inside.pretrain_overlap("dn") == ["train/small"]  # a folder above the target's
    other = parse_study(BASE.replace('{ path = "train/small", reduce = 2 }]\npretrain_dn',
                                     '{ path = "train/small", reduce = 3 }]\npretrain_dn'))
    assert other.pretrain_overlap("sr") == []  # another reduction: other pixels


# -- seeds: no two runs share an initialisation or a batch order ------------------------------------------

def test_every_run_has_its_own_init_and_data_seed(tmp_path):
    spec = parse_study(BASE)
    runs = plan_runs(spec)
    seeds = [s for r in runs for s in (r.init_seed, r.data_seed)]
    assert len(set(seeds)) == len(seeds) == 2 * len(runs)
    r = next(r for r in runs if r.name == "x2-single-s0")
    cfg = run_config(spec, r, models_dir=tmp_path, device="cpu")["run"]
    assert (cfg["seed"], cfg["init_seed"], cfg["data_seed"]) == (0, r.init_seed, r.data_seed)
    # stable: the seeds are digests of the run's name, not of its position in the plan
    fewer = parse_study(BASE.replace('[conditions.single]\npretrain = "same"\n', ""))
    assert next(q for q in plan_runs(fewer) if q.name == "x2-related-s2").init_seed == \
        next(q for q in runs if q.name == "x2-related-s2").init_seed


def test_the_control_uses_every_pair_of_scratch_seeds():
    seeds = [(p.seed, p.seed_b) for p in plan_contrasts(parse_study(BASE)) if p.kind == "seed" and p.target == "x2"]
    assert seeds == [(0, 1), (0, 2), (1, 2)]


# -- statistics -----------------------------------------------------------------------------------------

def test_jackknife_of_a_mean_is_the_t_interval():
    v = np.array([0.3, -0.1, 0.5, 0.2, 0.0])
    jk = jackknife_effect(lambda idx: float(v[list(idx)].mean()), len(v))
    t = paired_effect(v)
    assert jk.mean == pytest.approx(t.mean) and jk.lower == pytest.approx(t.lower) and jk.p == pytest.approx(t.p)
    assert np.isnan(jackknife_effect(lambda idx: 1.0, 2).lower)  # two seeds: no interval


def test_change_and_organisation_statistics_by_hand():
    control = {(0, 1): 0.8, (0, 2): 0.7, (1, 2): 0.6}
    compared = {0: 0.5, 1: 0.4, 2: 0.3}
    assert change_statistic(control, compared, [0, 1, 2]) == pytest.approx(0.7 - 0.4)
    assert change_statistic(control, compared, [0, 2]) == pytest.approx(0.7 - 0.4)
    assert np.isnan(change_statistic(control, compared, [1]))
    assert organisation_statistic([control, {(0, 1): 0.9, (0, 2): 0.9, (1, 2): 0.9}], {0: 0.1, 1: 0.2, 2: 0.3},
                                  [0, 1, 2]) == pytest.approx((0.7 + 0.9) / 2 - 0.2)


def _linear_cka(x, y):
    x, y = x - x.mean(0), y - y.mean(0)
    return np.linalg.norm(x.T @ y) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def _null_study(n, rng, n_probe=48, q=6, d=24):
    """CKA values of a study with no true effect: per task, scratch and 'pre-trained' models are drawn
    alike -- shared task structure, a model-specific part and a model-specific noise level (some models
    are less similar to every other: the effect that makes a shared control's noise matter)."""
    out = {}
    for task in ("sr", "dn"):
        z, w = rng.normal(size=(n_probe, q)), rng.normal(size=(q, d))

        def model(z=z, w=w):
            return z @ (w + 0.7 * rng.normal(size=(q, d))) + np.exp(0.6 * rng.normal()) * rng.normal(size=(n_probe, d))

        s, p = [model() for _ in range(n)], [model() for _ in range(n)]
        out[task] = ({(i, j): _linear_cka(s[i], s[j]) for i in range(n) for j in range(i + 1, n)},
                     {i: _linear_cka(s[i], p[i]) for i in range(n)})
    return out


@pytest.mark.parametrize("n, reps", [(3, 2000), (5, 600)])
def test_no_true_effect_gives_at_most_the_nominal_false_reproduced_rate(n, reps):
    """Claim 4's test (control = every pair of scratch seeds, seed jackknife): false "reproduced" (lower
    bound above 0) at most 2.5 % + Monte-Carlo error; the old test (one pair subtracted as a constant)
    is above it -- measured here 2.1 % vs 3.2 % at 3 seeds, 1.7 % vs 11 % at 5."""
    rng = np.random.default_rng(n)
    new = old = 0
    for _ in range(reps):
        sim = _null_study(n, rng)

        def stat(idx, sim=sim):
            return change_statistic(*sim["sr"], idx) - change_statistic(*sim["dn"], idx)

        new += jackknife_effect(stat, n).lower > 0
        d = [(sim["sr"][0][(0, 1)] - sim["sr"][1][s]) - (sim["dn"][0][(0, 1)] - sim["dn"][1][s]) for s in range(n)]
        old += paired_effect(d).lower > 0
    se = np.sqrt(0.025 * 0.975 / reps)
    assert new / reps <= 0.025 + 1.5 * se, (new / reps, old / reps)
    assert old / reps > new / reps
    if n == 5:
        assert old / reps > 0.06


def test_holm_decides_and_the_table_shows_raw_and_adjusted_p():
    def claim(name, p, mean=1.0):
        from cka_lab.study.tables import Effect
        half = 0.5 if p < 0.05 else 2.0  # an interval that excludes 0 exactly when p < 0.05
        return verdict(name, Effect(mean, 1.0, 5, mean - half, mean + half, p=p), what="d")

    out = adjust_verdicts([claim("a", 0.01), claim("b", 0.04), claim("c", 0.03, mean=-1.0), claim("d", 0.5)])
    # sorted 0.01, 0.03, 0.04, 0.5 -> 4 x 0.01, 3 x 0.03, max(0.09, 2 x 0.04), max(0.09, 0.5)
    assert [round(v.p_adjusted, 6) for v in out] == [0.04, 0.09, 0.09, 0.5]
    assert out[0].status == "reproduced"
    assert all(v.status == "not decidable at this scale" for v in out[1:])
    assert "after Holm's correction over the 4 claims" in out[1].evidence
    table = verdict_table(out)
    assert list(table.p) == [0.01, 0.04, 0.03, 0.5] and table.p_holm.iloc[0] == pytest.approx(0.04)
    assert "Holm-adjusted p = 0.04" in out[0].sentence()


def test_a_psnr_claim_between_models_below_their_baseline_is_not_decidable_and_left_out_of_holm():
    spec = parse_study(BASE.replace("seeds = [0, 1, 2]", "seeds = [0, 1, 2, 3]"))
    results = []
    for t in ("x2", "g25"):
        for c, base in (("scratch", 30.0), ("scratch-long", 31.0), ("single", 33.0), ("related", 34.0)):
            for s in range(4):
                results.append({"run": f"{t}-{c}-s{s}", "target": t, "condition": c, "seed": s,
                                "psnr": base + 0.1 * s + (0.05 if c == "related" and s % 2 else 0), "ssim": 0.9,
                                "dataset": "d", "images": 2})
    baselines = pd.DataFrame([{"target": "x2", "baseline": "bicubic", "psnr": 32.0, "ssim": 0.9, "images": 2,
                               "dataset": "d", "detail": ""},
                              {"target": "g25", "baseline": "noisy", "psnr": 20.0, "ssim": 0.3, "images": 2,
                               "dataset": "d", "detail": ""},
                              {"target": "g25", "baseline": "blur", "psnr": 25.0, "ssim": 0.6, "images": 2,
                               "dataset": "d", "detail": "sigma 1"}])
    scores = scores_frame(results, baselines)
    assert set(scores[scores.target == "g25"].best_baseline) == {"blur"}
    assert "bicubic" in baseline_shortfall(scores, "x2", ["single", "scratch-long"])  # scratch-long 31 < 32
    assert baseline_shortfall(scores, "x2", ["single", "related"]) == ""
    verdicts = {v.claim: v for v in judge_claims(spec, scores, [])}
    transfer = verdicts["Pre-training (single) improves x2 beyond training from scratch for the same steps and "
                        "patches (scratch-long)"]
    assert transfer.status == "not decidable at this scale" and not transfer.tested
    assert "do not beat the best trivial baseline" in transfer.evidence and np.isnan(transfer.p_adjusted)
    assert np.isfinite(transfer.p)  # shown, but not in the family
    related = verdicts["Multi-related pre-training (related) beats single-task (single) on x2"]
    assert related.tested and related.status == "reproduced"  # both above bicubic; +1 dB every seed
    summary = score_summary(scores, baselines)
    assert list(summary[summary.condition.str.startswith("baseline")].condition) == \
        ["baseline: bicubic", "baseline: noisy", "baseline: blur"]
    row = summary[(summary.target == "x2") & (summary.condition == "scratch-long")].iloc[0]
    assert row.beats_baselines == False  # noqa: E712 (a numpy bool)
    g = gains(scores, "scratch", "scratch-long").set_index(["target", "condition"])
    assert g.loc[("x2", "scratch-long"), "psnr_gain"] == pytest.approx(1.0)  # extra training
    assert g.loc[("x2", "single"), "transfer"] == pytest.approx(2.0)  # single - scratch-long
    assert g.loc[("x2", "single"), "psnr_gain"] == pytest.approx(3.0)  # = extra training + transfer


def test_cka_claim_from_records_uses_every_seed_pair():
    spec = parse_study(BASE)

    def rec(kind, target, cond, seed, value, seed_b=-1):
        plan = ContrastPlan("p", kind, "a", "b", target, target, target, cond, seed, seed_b)
        return ContrastRecord(plan, [], "", [], [], [], [], value, float("nan"), float("nan"))

    records = []
    for t, ctrl, comp in (("x2", (0.9, 0.8, 0.85), (0.5, 0.6, 0.55)), ("g25", (0.9, 0.9, 0.9), (0.88, 0.89, 0.9))):
        records += [rec("seed", t, "scratch", i, v, j) for (i, j), v in zip([(0, 1), (0, 2), (1, 2)], ctrl)]
        records += [rec("pretrain", t, "single", s, v) for s, v in enumerate(comp)]
    v = next(v for v in judge_claims(spec, pd.DataFrame(columns=["target", "condition", "seed", "psnr"]), records)
             if v.claim.startswith("Pre-training (single) changes x2"))
    assert v.effect.mean == pytest.approx((0.85 - 0.55) - (0.9 - 0.89))
    assert v.effect.method == "seed jackknife" and v.effect.n == 3 and np.isfinite(v.effect.lower)


def test_verdict_without_enough_seeds_is_not_tested():
    v = verdict("c", paired_effect([1.0]), what="d")
    assert isinstance(v, Verdict) and not v.tested and v.status == "not decidable at this scale"
