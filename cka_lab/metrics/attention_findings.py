"""Sentences about attention that a reader can trust: an effect is stated only beyond its interval.

A locality or sharpness sentence is written for a row of an attention table only where the
confidence interval of the normalised effect (``locality = distance / uniform_distance``,
``entropy_rel = entropy / uniform_entropy``) excludes 1, the value of uniform attention in the same
windows and masks (and by more than a numerical ``tolerance`` for float32 attention maps). Every other
row is reported as indistinguishable from uniform attention, with its numbers.
"""

from __future__ import annotations

import math

import pandas as pd

from cka_lab.errors import CkaLabError

__all__ = ["attention_findings"]

_LABELS = ("model", "layer", "block", "kind", "direction", "head")
_BOUNDS = ("locality_lower", "locality_upper", "entropy_rel_lower", "entropy_rel_upper")
_NEEDED = (
    "locality", "locality_lower", "locality_upper", "distance", "uniform_distance",
    "entropy_rel", "entropy_rel_lower", "entropy_rel_upper", "n_crops",
)  # fmt: skip


def _label(row: pd.Series) -> str:
    parts = []
    if "model" in row:
        parts.append(str(row["model"]))
    if "layer" in row:
        parts.append(f"stage {int(row['layer'])}")
    if "block" in row:
        parts.append(f"block {int(row['block'])}")
    if "kind" in row:
        parts.append(f"{row['kind']} windows")
    if "direction" in row:
        parts.append(f"{row['direction']} strips")
    if "head" in row:
        parts.append(f"head {int(row['head'])}")
    return ", ".join(parts)


def _ci(row: pd.Series, col: str) -> str:
    """``0.9950 (-0.50 %, 95% CI 0.9930-0.9970)``: the ratio, its difference from uniform, its interval."""
    level = row.get("confidence", 0.95)
    return (
        f"{row[col]:.4f} ({100 * (row[col] - 1):+.2f} %, {level:.0%} CI "
        f"{row[col + '_lower']:.4f}-{row[col + '_upper']:.4f})"
    )


def _beyond_one(row: pd.Series, col: str, tolerance: float) -> int:
    """+1 / -1 where the interval lies above / below 1 by more than ``tolerance``, else 0."""
    lo, hi = row[col + "_lower"], row[col + "_upper"]
    if lo > 1 + tolerance:
        return 1
    if hi < 1 - tolerance:
        return -1
    return 0


def attention_findings(table: pd.DataFrame, *, tolerance: float = 1e-4) -> list[str]:
    """Sentences for the rows of an attention table (``AttentionDistance.compute()`` or ``.summary()``).

    One sentence per row whose locality or entropy interval excludes 1 (beyond ``tolerance``); one
    closing sentence naming the rows indistinguishable from uniform attention, and one for rows
    without an interval (fewer than 2 crops). Labels use the columns among model, layer (stage),
    block, kind, direction and head that the table has.
    """
    if missing := [c for c in _NEEDED if c not in table.columns]:
        raise CkaLabError(f"attention table lacks columns {missing}: pass AttentionDistance.compute() or .summary()")
    if table.empty:
        raise CkaLabError("attention table is empty: no attention was recorded")
    label_cols = [c for c in _LABELS if c in table.columns]
    out, uniform, no_interval = [], [], []
    for _, row in table.iterrows():
        label = _label(row[label_cols])
        if any(math.isnan(row[c]) for c in _BOUNDS):
            no_interval.append(f"{label} (locality {row['locality']:.4f}, {int(row['n_crops'])} crop)")
            continue
        loc, ent = _beyond_one(row, "locality", tolerance), _beyond_one(row, "entropy_rel", tolerance)
        if not loc and not ent:
            uniform.append(f"{label} (locality {_ci(row, 'locality')}, entropy_rel {_ci(row, 'entropy_rel')})")
            continue
        parts = []
        if loc:
            parts.append(
                f"attends {'more locally' if loc < 0 else 'less locally'} than uniform attention in the same windows: "
                f"{row['distance']:.2f} px vs {row['uniform_distance']:.2f} px, locality {_ci(row, 'locality')}"
            )
        else:
            parts.append(
                f"its distance is indistinguishable from uniform attention's (locality {_ci(row, 'locality')})"
            )
        if ent:
            parts.append(
                f"its attention is {'sharper' if ent < 0 else 'flatter'} than uniform: entropy "
                f"{_ci(row, 'entropy_rel')} of the uniform entropy"
            )
        else:
            parts.append(f"its entropy is indistinguishable from uniform attention's ({_ci(row, 'entropy_rel')})")
        size = max(abs(row["locality"] - 1) if loc else 0.0, abs(row["entropy_rel"] - 1) if ent else 0.0)
        caveat = (" Detectable, but under 1 % from uniform: attention here is uniform for practical purposes."
                  if size < 0.01 else "")
        out.append(f"{label}: {'; '.join(parts)} ({int(row['n_crops'])} crops).{caveat}")
    if uniform:
        out.append(
            "Indistinguishable from uniform attention (locality and entropy intervals include 1): "
            f"{'; '.join(uniform)}."
        )
    if no_interval:
        out.append(f"No interval, so no finding (fewer than 2 crops): {'; '.join(no_interval)}.")
    return out
