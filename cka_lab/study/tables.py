"""The study's tables: scores per run, mean +- std over seeds, gains over scratch with intervals, verdicts.

Seeds are the error bars: a gain is the paired difference ``PSNR(condition, seed) - PSNR(scratch, seed)``,
its interval a Student-t interval over seeds (none with one seed). A claim is *reproduced* when the
interval of its effect excludes zero in the paper's direction, *not reproduced* when it excludes zero in
the other direction, and *not decidable at this scale* otherwise -- the sentence says which, with numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

__all__ = ["Effect", "paired_effect", "scores_frame", "score_summary", "gains", "Verdict", "verdict"]


@dataclass(frozen=True)
class Effect:
    """A mean effect over ``n`` paired units with a two-sided ``level`` t-interval (NaN bounds when n < 2)."""

    mean: float
    std: float
    n: int
    lower: float
    upper: float
    level: float = 0.95

    def describe(self, unit: str = "dB", digits: int = 2) -> str:
        if self.n < 2 or not np.isfinite(self.lower):
            return f"{self.mean:+.{digits}f} {unit} (n = {self.n}, no interval)"
        return (f"{self.mean:+.{digits}f} {unit} ({int(self.level * 100)} % CI {self.lower:+.{digits}f} to "
                f"{self.upper:+.{digits}f}, n = {self.n})")


def paired_effect(values, level: float = 0.95) -> Effect:
    """Mean of paired differences with a t-interval (finite values only)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    n = int(v.size)
    if n == 0:
        return Effect(float("nan"), float("nan"), 0, float("nan"), float("nan"), level)
    mean = float(v.mean())
    if n < 2:
        return Effect(mean, float("nan"), n, float("nan"), float("nan"), level)
    std = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * std / np.sqrt(n))
    return Effect(mean, std, n, mean - half, mean + half, level)


def scores_frame(results: list[dict]) -> pd.DataFrame:
    """One row per evaluated model: run, target, condition, seed, psnr, ssim, dataset, images."""
    cols = ["run", "target", "condition", "seed", "psnr", "ssim", "dataset", "images"]
    return pd.DataFrame([{c: r[c] for c in cols} for r in results], columns=cols)


def score_summary(scores: pd.DataFrame) -> pd.DataFrame:
    """Mean +- std over seeds per target and condition."""
    g = scores.groupby(["target", "condition"], sort=False)
    out = g.agg(seeds=("seed", "nunique"), psnr_mean=("psnr", "mean"), psnr_std=("psnr", "std"),
                ssim_mean=("ssim", "mean"), ssim_std=("ssim", "std")).reset_index()
    return out


def _paired(scores: pd.DataFrame, target: str, cond: str, base: str, metric: str) -> list[float]:
    s = scores[scores.target == target].pivot_table(index="seed", columns="condition", values=metric)
    if cond not in s or base not in s:
        return []
    return list((s[cond] - s[base]).dropna())


def gains(scores: pd.DataFrame, scratch: str) -> pd.DataFrame:
    """Per target and pre-trained condition: PSNR/SSIM gain over ``scratch``, paired by seed, with intervals."""
    rows = []
    for target in scores.target.unique():
        for cond in scores[scores.target == target].condition.unique():
            if cond == scratch:
                continue
            p = paired_effect(_paired(scores, target, cond, scratch, "psnr"))
            s = paired_effect(_paired(scores, target, cond, scratch, "ssim"))
            rows.append({"target": target, "condition": cond, "seeds": p.n, "psnr_gain": p.mean,
                         "psnr_gain_lower": p.lower, "psnr_gain_upper": p.upper, "ssim_gain": s.mean,
                         "ssim_gain_lower": s.lower, "ssim_gain_upper": s.upper})
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Verdict:
    """One of the paper's claims, judged from the numbers."""

    claim: str
    status: str  # "reproduced" | "not reproduced" | "not decidable at this scale" | "not tested"
    evidence: str

    def sentence(self) -> str:
        return f"{self.claim}: {self.status.upper()} -- {self.evidence}"


def verdict(claim: str, effect: Effect, *, what: str, unit: str = "dB", control: float | None = None,
            control_what: str = "") -> Verdict:
    """Judge an effect whose paper direction is positive.

    Reproduced when the interval's lower end is above zero (and above ``control``, the size of the same
    difference by chance, when one is given); not reproduced when the upper end is below zero; otherwise
    not decidable at this scale.
    """
    text = f"{what} = {effect.describe(unit)}"
    if control is not None and np.isfinite(control):
        text += f"; {control_what} {control:.3g} {unit}".rstrip()
    if effect.n < 2 or not np.isfinite(effect.lower):
        return Verdict(claim, "not decidable at this scale", text + " (needs at least 2 seeds for an interval)")
    floor = max(0.0, control) if control is not None and np.isfinite(control) else 0.0
    if effect.lower > floor:
        return Verdict(claim, "reproduced", text)
    if effect.upper < 0:
        return Verdict(claim, "not reproduced", text + " (the opposite direction)")
    reason = "the interval includes zero" if effect.lower <= 0 else "the effect does not exceed the control"
    return Verdict(claim, "not decidable at this scale", f"{text} ({reason})")
