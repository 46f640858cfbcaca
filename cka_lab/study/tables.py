"""The study's tables: scores per run beside the trivial baselines, mean +- std over seeds, gains over
scratch split into extra training and transfer, with intervals; verdicts with raw and Holm-adjusted p.

Seeds are the error bars: a gain is the difference ``PSNR(condition, seed) - PSNR(scratch, seed)``, its
interval a Student-t interval over seeds (none with one seed); the runs of different seeds share nothing,
so the differences are independent. Effects of CKA claims, which compare pairs of models against pairs of
models, get a leave-one-seed-out jackknife interval instead (:func:`jackknife_effect`).

A claim is *reproduced* when its effect is in the paper's direction, at least the minimum effect of its
unit (:data:`MIN_EFFECT`) and its Holm-adjusted p-value (over every claim of the study that was tested) is
at most 0.05, *not reproduced* when it is in the other direction at that level, and *not decidable at this
scale* otherwise -- or without a test at all when a
precondition fails (models that do not beat their trivial baselines, attention never learnt, too few
seeds); the sentence says which, with numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from scipy import stats

from cka_lab.metrics.jackknife import jackknife_se
from cka_lab.metrics.multiplicity import holm

__all__ = ["Effect", "paired_effect", "jackknife_effect", "scores_frame", "score_summary", "gains", "baselines_frame",
           "model_table", "FINDINGS", "Verdict", "verdict", "undecidable", "adjust_verdicts", "verdict_table", "ALPHA", "UNDECIDABLE",
           "MIN_EFFECT", "findings_markdown"]

ALPHA = 0.05
"""Family-wise error of the study's claims (Holm)."""

UNDECIDABLE = "not decidable at this scale"


@dataclass(frozen=True)
class Effect:
    """A mean effect over ``n`` paired units with a two-sided ``level`` t-interval (NaN bounds when n < 2)."""

    mean: float
    std: float
    n: int
    lower: float
    upper: float
    level: float = 0.95
    p: float = float("nan")  # two-sided p of "the effect is 0" (t with n - 1 degrees of freedom)
    method: str = "t over seeds"

    def describe(self, unit: str = "dB", digits: int = 2) -> str:
        value = (f"{self.mean:+.{digits}f}" if np.isfinite(self.mean) else "n/a") + (f" {unit}" if unit else "")
        if self.n < 2 or not np.isfinite(self.lower):
            return f"{value} (n = {self.n}, no interval)"
        return (f"{value} ({int(self.level * 100)} % CI {self.lower:+.{digits}f} to "
                f"{self.upper:+.{digits}f}, {self.method}, n = {self.n})")


def _t_effect(mean: float, se: float, n: int, level: float, method: str, std: float = float("nan")) -> Effect:
    """``mean`` with the t-interval and two-sided p of standard error ``se`` on ``n - 1`` degrees of freedom."""
    if n < 2 or not np.isfinite(se) or not np.isfinite(mean):
        return Effect(mean, std, n, float("nan"), float("nan"), level, float("nan"), method)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * se)
    if se > 0:
        p = float(2 * stats.t.sf(abs(mean) / se, n - 1))
    else:
        p = 1.0 if mean == 0 else 0.0
    return Effect(mean, std, n, mean - half, mean + half, level, p, method)


def paired_effect(values, level: float = 0.95) -> Effect:
    """Mean of paired differences with a t-interval and its two-sided p (finite values only)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    n = int(v.size)
    if n == 0:
        return Effect(float("nan"), float("nan"), 0, float("nan"), float("nan"), level)
    mean = float(v.mean())
    if n < 2:
        return Effect(mean, float("nan"), n, float("nan"), float("nan"), level)
    std = float(v.std(ddof=1))
    return _t_effect(mean, std / np.sqrt(n), n, level, "t over seeds", std)


def jackknife_effect(statistic: Callable[[Sequence[int]], float], n: int, level: float = 0.95) -> Effect:
    """A statistic of ``n`` independent units (seeds) with a leave-one-unit-out jackknife t-interval.

    ``statistic(units)`` computes the effect from the units listed (indices into ``range(n)``); it must
    be symmetric in them and may return NaN where it cannot be computed (e.g. a control mean over seed
    pairs with fewer than two seeds left). The estimate is ``statistic(all)``, its standard error
    ``sqrt((n-1)/n * sum_i (T_(-i) - mean T_(-))^2)``, the interval ``estimate +- t_(n-1) * se``.

    By the Efron-Stein inequality the jackknife variance of a symmetric statistic of independent units
    is biased upward, never downward, so the interval errs on the wide side; this is what lets a control
    made of every seed pair (each model in several pairs) enter with its variance. Needs every
    leave-one-out value finite (n >= 3 for a control over seed pairs); otherwise no interval.
    """
    full = float(statistic(list(range(n))))
    if n < 3:
        return Effect(full, float("nan"), n, float("nan"), float("nan"), level, float("nan"), "seed jackknife")
    loo = np.array([statistic([j for j in range(n) if j != i]) for i in range(n)], dtype=np.float64)
    if not np.all(np.isfinite(loo)) or not np.isfinite(full):
        return Effect(full, float("nan"), n, float("nan"), float("nan"), level, float("nan"), "seed jackknife")
    se = float(jackknife_se(loo)[1])
    return _t_effect(full, se, n, level, "seed jackknife", se * np.sqrt(n))


def baselines_frame(baselines: Sequence[dict]) -> pd.DataFrame:
    """One row per target and trivial baseline: target, baseline, psnr, ssim, images, dataset, detail."""
    cols = ["target", "baseline", "psnr", "ssim", "images", "dataset", "detail"]
    return pd.DataFrame([{c: b[c] for c in cols} for b in baselines], columns=cols)


def scores_frame(results: list[dict], baselines: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per evaluated model: run, target, condition, seed, psnr, ssim, dataset, images; with
    ``baselines`` (:func:`baselines_frame`) also the best baseline of its target, its PSNR and the margin
    ``over_baseline = psnr - baseline_psnr`` (same images, same protocol)."""
    cols = ["run", "target", "condition", "seed", "psnr", "ssim", "dataset", "images"]
    df = pd.DataFrame([{c: r[c] for c in cols} for r in results], columns=cols)
    if baselines is None or baselines.empty:
        return df
    best = baselines.loc[baselines.groupby("target")["psnr"].idxmax(), ["target", "baseline", "psnr"]]
    best = best.rename(columns={"baseline": "best_baseline", "psnr": "baseline_psnr"})
    df = df.merge(best, on="target", how="left")
    df["over_baseline"] = df["psnr"] - df["baseline_psnr"]
    return df


def model_table(scores: pd.DataFrame, attention: Sequence[dict]) -> pd.DataFrame:
    """One row per evaluated model: PSNR beside its best trivial baseline, and per body stage the attention
    entropy relative to uniform attention's (``H/Hmax s<i>``: mean over blocks and heads of both window kinds;
    1 = uniform, lower = sharper) with ``max(1-H/Hmax)``, its largest ``1 - H/Hmax`` over the stages (not the
    training diagnostics' "learnt", a fraction of heads).

    ``attention``: attention rows (model, stage, kind, entropy_rel) from the contrast records; a model in
    several contrasts has the same rows in each (measured once), so duplicates are dropped."""
    cols = [c for c in ("run", "target", "condition", "seed", "psnr", "best_baseline", "baseline_psnr", "over_baseline")
            if c in scores]
    out = scores[cols].copy()
    rows = pd.DataFrame(list(attention))
    if rows.empty or "entropy_rel" not in rows:
        return out
    rows = rows.drop_duplicates(subset=["model", "stage", "kind"])
    ent = rows.groupby(["model", "stage"])["entropy_rel"].mean().unstack("stage")
    ent.columns = [f"H/Hmax s{int(c)}" for c in ent.columns]
    ent["max(1-H/Hmax)"] = (1.0 - ent).max(axis=1)
    return out.merge(ent, left_on="run", right_index=True, how="left")


def score_summary(scores: pd.DataFrame, baselines: pd.DataFrame | None = None) -> pd.DataFrame:
    """Mean +- std over seeds per target and condition; the trivial baselines as rows of their own
    (``condition`` "baseline: NAME", no seeds), and ``beats_baselines``: every seed above the best one."""
    g = scores.groupby(["target", "condition"], sort=False)
    out = g.agg(seeds=("seed", "nunique"), psnr_mean=("psnr", "mean"), psnr_std=("psnr", "std"),
                ssim_mean=("ssim", "mean"), ssim_std=("ssim", "std")).reset_index()
    if baselines is None or baselines.empty or "over_baseline" not in scores:
        return out
    out["beats_baselines"] = list(g["over_baseline"].min().gt(0).reindex(
        pd.MultiIndex.from_frame(out[["target", "condition"]])))
    rows = [{"target": b.target, "condition": f"baseline: {b.baseline}", "seeds": 0, "psnr_mean": b.psnr,
             "psnr_std": float("nan"), "ssim_mean": b.ssim, "ssim_std": float("nan"), "beats_baselines": None}
            for b in baselines.itertuples()]
    out = pd.concat([out, pd.DataFrame(rows)], ignore_index=True)
    order = {t: i for i, t in enumerate(scores.target.unique())}
    return out.sort_values("target", key=lambda c: c.map(order), kind="stable").reset_index(drop=True)


def _paired(scores: pd.DataFrame, target: str, cond: str, base: str, metric: str) -> list[float]:
    s = scores[scores.target == target].pivot_table(index="seed", columns="condition", values=metric)
    if cond not in s or base not in s:
        return []
    return list((s[cond] - s[base]).dropna())


def gains(scores: pd.DataFrame, scratch: str, scratch_long: str | None = None) -> pd.DataFrame:
    """Per target and condition other than ``scratch``: PSNR/SSIM gain over ``scratch``, and with
    ``scratch_long`` its split into extra training (scratch-long - scratch: the row of scratch-long) and
    transfer (condition - scratch-long), each paired by seed with a 95 % t-interval over seeds."""
    rows = []
    for target in scores.target.unique():
        for cond in scores[scores.target == target].condition.unique():
            if cond == scratch:
                continue
            p = paired_effect(_paired(scores, target, cond, scratch, "psnr"))
            s = paired_effect(_paired(scores, target, cond, scratch, "ssim"))
            row = {"target": target, "condition": cond, "seeds": p.n, "psnr_gain": p.mean,
                   "psnr_gain_lower": p.lower, "psnr_gain_upper": p.upper}
            if scratch_long is not None:
                tr = paired_effect(_paired(scores, target, cond, scratch_long, "psnr")) if cond != scratch_long else None
                row["part"] = "extra training" if cond == scratch_long else "extra training + transfer"
                row["transfer"] = tr.mean if tr else float("nan")
                row["transfer_lower"] = tr.lower if tr else float("nan")
                row["transfer_upper"] = tr.upper if tr else float("nan")
            row.update({"ssim_gain": s.mean, "ssim_gain_lower": s.lower, "ssim_gain_upper": s.upper})
            rows.append(row)
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Verdict:
    """One of the paper's claims, judged from the numbers.

    ``p`` is the raw two-sided p of the claim's effect, ``p_adjusted`` its Holm-adjusted value over the
    claims that were tested (NaN for a claim not tested: ``tested`` False, a precondition failed).
    """

    claim: str
    status: str  # "reproduced" | "not reproduced" | "not decidable at this scale"
    evidence: str
    effect: Effect | None = None
    tested: bool = True
    p_adjusted: float = float("nan")
    unit: str = ""
    min_effect: float = 0.0  # the smallest effect (in ``unit``) that counts as reproduced
    protocol: str = ""  # the CKA protocol a CKA claim was judged under ("" for PSNR and attention claims)
    finding: str = ""  # the paper's finding the claim tests: a key of FINDINGS

    @property
    def p(self) -> float:
        return self.effect.p if self.effect is not None else float("nan")

    def sentence(self) -> str:
        ps = ""
        if np.isfinite(self.p):
            adj = f"{self.p_adjusted:.3g}" if np.isfinite(self.p_adjusted) else "not tested"
            ps = f" [p = {self.p:.3g}, Holm-adjusted p = {adj}]"
        return f"{self.claim}: {self.status.upper()} -- {self.evidence}{ps}"


FINDINGS = {
    "a": "(a) SR models show stage structure in CKA and DN models do not (Fig. 2)",
    "b": "(b) Pre-training brings more local attention into the higher layers of SR models and barely changes DN models",
    "c": "(c) Multi-related pre-training beats single-task and multi-unrelated pre-training",
    "gains": "Pre-training gives SR large gains and DN small ones",
}
"""The paper's findings (Li et al., arXiv 2112.10175) a study's claims are grouped under, in report order."""

MIN_EFFECT = {"dB": 0.05, "CKA": 0.01, "(distance / uniform)": 0.01}
"""The smallest effect a claim counts as reproduced, per unit: 0.05 dB of PSNR, 0.01 of CKA (the heatmaps'
``--min-effect``), 1 % of uniform attention's distance (the attention findings' floor)."""


def verdict(claim: str, effect: Effect, *, what: str, unit: str = "dB", protocol: str = "",
            context: str = "") -> Verdict:
    """A claim whose paper direction is positive, tested by its effect's p-value (status settled by
    :func:`adjust_verdicts`; until then by the raw interval). The evidence reads ``what = effect``, then
    ``context`` (a control or a baseline beside it)."""
    text = f"{what} = {effect.describe(unit)}" + (f"; {context}" if context else "")
    floor = MIN_EFFECT.get(unit, 0.0)
    if effect.n < 2 or not np.isfinite(effect.lower):
        return Verdict(claim, UNDECIDABLE, text + " (needs more seeds for an interval)", effect, tested=False, unit=unit,
                       min_effect=floor, protocol=protocol)
    status = "reproduced" if effect.lower > 0 else "not reproduced" if effect.upper < 0 else UNDECIDABLE
    return Verdict(claim, status, text, effect, unit=unit, min_effect=floor, protocol=protocol)


def undecidable(claim: str, effect: Effect | None, reason: str, *, what: str = "", unit: str = "dB",
                protocol: str = "") -> Verdict:
    """A claim left untested because a precondition failed: ``reason`` says which, the effect is shown."""
    text = reason if effect is None or not what else f"{reason}; {what} = {effect.describe(unit)}"
    return Verdict(claim, UNDECIDABLE, text, effect, tested=False, unit=unit, protocol=protocol)


def adjust_verdicts(verdicts: Sequence[Verdict], alpha: float = ALPHA) -> list[Verdict]:
    """Holm over the tested claims: a claim is decided (reproduced / not reproduced, by the sign of its
    effect) only when its adjusted p is at most ``alpha``; the others become not decidable, saying why."""
    p = np.array([v.p if v.tested else np.nan for v in verdicts], dtype=np.float64)
    adj = holm(p)
    m = int(np.isfinite(p).sum())
    out = []
    for v, a in zip(verdicts, adj):
        if not v.tested or not np.isfinite(a):
            out.append(replace(v, p_adjusted=float("nan")))
            continue
        evidence = v.evidence
        if a <= alpha and abs(v.effect.mean) < v.min_effect:
            status = UNDECIDABLE
            evidence += (f" (significant after Holm's correction, but smaller than the minimum effect of "
                         f"{v.min_effect:g} {v.unit})")
        elif a <= alpha:
            status = "reproduced" if v.effect.mean > 0 else "not reproduced"
            if status == "not reproduced":
                evidence += " (the opposite direction)"
        else:
            status = UNDECIDABLE
            evidence += (" (the claim's interval includes zero)" if v.effect.lower <= 0 <= v.effect.upper else
                         f" (not significant after Holm's correction over the {m} claims tested)")
        out.append(replace(v, status=status, evidence=evidence, p_adjusted=float(a)))
    return out


def findings_markdown(title: str, verdicts: Sequence[Verdict], preamble: Sequence[str] = ()) -> str:
    """The report's claims page as Markdown: the same sentences, numbers and order, under the paper's findings.

    For the README and the notebooks to quote the study's own words (``findings.md`` beside ``report.pdf``).
    The counts line tallies the verdicts by status.
    """
    counts = {s: sum(v.status == s for v in verdicts)
              for s in ("reproduced", "not reproduced", "not decidable at this scale")}
    lines = [f"# {title}", "", *preamble, *([""] if preamble else []),
             "Verdicts: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + f" (of {len(verdicts)} claims).", ""]
    last = None
    for i, v in enumerate(verdicts, 1):
        head = FINDINGS.get(v.finding, "Other claims")
        if head != last:
            lines += ["", f"## {head}", ""] if last is not None else [f"## {head}", ""]
            last = head
        lines.append(f"{i}. {v.sentence()}")
    return "\n".join(lines) + "\n"


def verdict_table(verdicts: Sequence[Verdict]) -> pd.DataFrame:
    """finding, claim, protocol, status, effect, lower, upper, unit, min_effect, n, method, p, p_holm, tested,
    evidence."""
    return pd.DataFrame([{
        "finding": v.finding, "claim": v.claim, "protocol": v.protocol, "status": v.status,
        "effect": v.effect.mean if v.effect else float("nan"),
        "lower": v.effect.lower if v.effect else float("nan"),
        "upper": v.effect.upper if v.effect else float("nan"),
        "unit": v.unit, "min_effect": v.min_effect, "n": v.effect.n if v.effect else 0, "method": v.effect.method if v.effect else "",
        "p": v.p, "p_holm": v.p_adjusted, "tested": v.tested, "evidence": v.evidence} for v in verdicts])
