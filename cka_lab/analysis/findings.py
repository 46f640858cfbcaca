"""Every sentence that states a finding, in one place: attention against uniform attention, and what a
contrast of two models shows (the report's findings page and the command line's summary lines).

Sentences about attention that a reader can trust: an effect is stated only beyond its interval.

A locality or sharpness sentence is written for a row of an attention table only where the
confidence interval of the normalised effect (``locality = distance / uniform_distance``,
``entropy_rel = entropy / uniform_entropy``) excludes 1, the value of uniform attention in the same
windows and masks (and by more than a numerical ``tolerance`` for float32 attention maps). Every other
row is reported as indistinguishable from uniform attention, with its numbers.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from cka_lab.errors import CkaLabError
from cka_lab.models.names import short_layer_name

if TYPE_CHECKING:
    from cka_lab.analysis.contrast import Contrast

__all__ = ["attention_findings", "console_findings", "contrast_attention_findings", "contrast_findings",
           "format_interval", "format_number"]

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


def format_number(x: float | None, digits: int = 3) -> str:
    """``0.912`` with ``digits`` decimals, ``n/a`` for None, NaN or inf."""
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def format_interval(low: float, high: float) -> str:
    """``[-0.0120, +0.0340]``, or ``[interval n/a]`` where either end is not finite."""
    return "[interval n/a]" if not (np.isfinite(low) and np.isfinite(high)) else f"[{low:+.4f}, {high:+.4f}]"


def contrast_findings(c: Contrast) -> list[str]:
    """Plain statements, with numbers, of what one contrast shows. A difference between the maps is
    stated only where it exceeds its interval and every control; otherwise the finding says it is not
    decidable at this scale, with the numbers that make it so."""
    s = c.summary()
    ctl = s["controls"]
    out = [f"Protocol: {c.protocol} ({s['n_units']} resampling units; {c.cross.data})."]
    parts = []
    for key, name in (("probe_draw_a", c.name_a), ("probe_draw_b", c.name_b)):
        if ctl.get(key):
            parts.append(f"{name} {ctl[key]['median']:.3f} median / {ctl[key]['max']:.3f} max")
    seed = ctl.get("seed_to_seed")
    out.append(
        "Controls: probe-draw (|CKA on one half of the crops - CKA on the other|): "
        + ("; ".join(parts) if parts else "not computed")
        + ". Seed-to-seed: "
        + (f"{seed['median']:.3f} median / {seed['max']:.3f} max ({ctl.get('seed_pair', '')})." if seed else
           "none (no two checkpoints here differ only in their training seed).")
    )
    out.append(
        f"Within-model similarity (mean layer x layer CKA): {c.name_a} {format_number(s['mean_cka_a'])}, "
        f"{c.name_b} {format_number(s['mean_cka_b'])}."
    )
    if c.comparable:
        e = s["difference_effect"]
        if e["decidable"]:
            more = c.name_a if e["difference"] > 0 else c.name_b
            out.append(
                f"{e['stated_cells']} of {e['tested_cells']} layer pairs differ: Benjamini-Hochberg adjusted p <= "
                f"{e['fdr']:g} over the {e['tested_cells']} cells above the diagonal, |difference| >= {e['min_effect']:g} "
                f"and above every control (median |difference| of the stated cells {format_number(e['median_abs_stated'], 4)}). "
                f"Largest (a selected cell: quoted because it is largest, so its size is biased upward) at "
                f"({e['layer_i']}, {e['layer_j']}): {e['difference']:+.4f} {format_interval(e['low'], e['high'])}, "
                f"p {e['p']:.2g}, adjusted {e['p_adjusted']:.2g}, control {format_number(e['control'], 4)}: {more} treats "
                f"these layers as more alike."
            )
        elif e["n_units"] < e["min_units"]:
            out.append(
                f"Not decidable at this scale: {e['n_units']} resampling units, fewer than the {e['min_units']} an "
                f"interval needs here. Largest |difference| at ({e['layer_i']}, {e['layer_j']}): {e['difference']:+.4f}."
            )
        else:
            p_text = (f", p {e['p']:.2g}, adjusted {e['p_adjusted']:.2g}" if e.get("p") is not None
                      and e.get("p_adjusted") is not None else "")
            out.append(
                f"No difference between the two maps passes Benjamini-Hochberg over its {e['tested_cells']} cells, "
                f"the {e['min_effect']:g} floor and the controls: not decidable at this scale. Largest |difference| "
                f"at ({e['layer_i']}, {e['layer_j']}): {e['difference']:+.3f} {format_interval(e['low'], e['high'])}"
                f"{p_text}, control {format_number(e['control'])}."
            )
    out.append(f"Intervals: {c.cross.meta.get('unit', '')}.")
    if c.cross.same_layers:
        diag = np.diag(c.cross.matrix)
        names = [short_layer_name(n) for n in c.cross.layers_a]
        k = int(np.nanargmin(diag))
        lo = hi = float("nan")
        if c.cross.ci_low is not None:
            lo, hi = float(c.cross.ci_low[k, k]), float(c.cross.ci_high[k, k])
        out.append(
            f"Across models the same layer has CKA {format_number(s.get('mean_cross_same_layer_cka', np.nan))} on average"
            + (" {}".format(format_interval(*s["mean_cross_same_layer_interval"])) if s.get("mean_cross_same_layer_interval")
               else "") + "; "
            f"lowest at {names[k]}: {format_number(diag[k])} [{format_number(lo)}, {format_number(hi)}]."
        )
    out += contrast_attention_findings(c)
    return out


def contrast_attention_findings(c: Contrast) -> list[str]:
    """Attention statements from the stage tables: a locality or sharpness sentence only where the
    interval of the normalised effect excludes uniform attention (:func:`attention_findings`)."""
    if c.attention_stages_a is None or c.attention_stages_b is None:
        return []
    table = c.attention_layers
    out = []
    for line in attention_findings(table):
        if line.startswith("Indistinguishable from uniform attention"):
            n = line.count("(locality ") - 1  # one per group; the sentence's own "(locality and entropy ...)"
            line = (f"Attention in {n} of {len(table)} (model, stage, window kind, strip direction) groups is "
                    "indistinguishable from uniform attention in the same windows and masks: its locality and entropy "
                    "intervals include 1 (numbers on the table page). No locality statement is made for them.")
        out.append(line)
    return out


def console_findings(c: Contrast) -> list[str]:
    """The short findings the command line prints under a contrast's numbers: the difference between the
    maps (stated only beyond its interval and the controls) and how many attention groups differ from uniform."""
    out = []
    eff = c.summary().get("difference_effect")
    if eff:
        if eff["decidable"]:
            out.append(f"{eff['stated_cells']} of {eff['tested_cells']} layer pairs differ (Benjamini-Hochberg q <= "
                       f"{eff['fdr']:g}, |diff| >= {eff['min_effect']:g}, above the controls; median |diff| "
                       f"{eff['median_abs_stated']:.4f}); largest (selected, so biased upward) at ({eff['layer_i']}, "
                       f"{eff['layer_j']}): {eff['difference']:+.4f}, p {eff['p']:.2g}, adjusted {eff['p_adjusted']:.2g}")
        else:
            out.append("no difference between the maps exceeds its interval and the controls: not decidable at this scale")
    if c.attention_stages_a is not None:
        t = c.attention_layers
        stated = [f for f in attention_findings(t) if not f.startswith(("Indistinguishable", "No interval"))]
        out.append(f"attention: {len(stated)} of {len(t)} (model, stage, window kind, direction) groups differ from "
                   "uniform attention beyond their interval (attention_layers.csv)")
    return out
