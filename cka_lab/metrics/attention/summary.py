"""Tables of attention statistics against their uniform baselines, with jackknife intervals over crops.

Input: for each attention site (one layer, block and direction) the per-crop, per-head sums of
:func:`~cka_lab.metrics.attention.stats.attention_row_stats` plus the uniform-attention sums
``u_dist`` / ``u_entropy`` / ``u_max`` / ``u_dx`` / ``u_dy`` (each ``(C, h)``, C crops). Output: one
row per head, or per group of heads pooled over crops (e.g. per layer, kind and direction), with

- ``distance`` / ``uniform_distance`` (input pixels) and ``locality = distance / uniform_distance``,
- ``entropy`` / ``uniform_entropy`` (nats) and ``entropy_rel = entropy / uniform_entropy``,
- ``max_weight`` / ``uniform_max_weight``,

all means over query rows, and jackknife confidence intervals (``*_lower`` / ``*_upper``) for
``locality`` and ``entropy_rel``: delete-one-crop estimates of the ratio of sums, Student-t quantile
with ``C - 1`` degrees of freedom. The crop is the resampling unit, so the intervals do not depend on
the batch size or the crop order; fewer than 2 crops give NaN intervals.

Plain and shifted blocks have different uniform baselines (the shifted-window masks shorten the
rows), so every grouping keeps them apart: ``by`` must contain ``kind``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from torch import Tensor

from cka_lab.errors import CkaLabError
from cka_lab.metrics.jackknife import jackknife_interval

__all__ = [
    "SiteInfo",
    "HEAD_COLUMNS",
    "GROUP_KEYS",
    "jackknife_ratio",
    "attention_table",
    "locality_summary",
]

# Identity columns of a head row, outermost first.
GROUP_KEYS = ("layer", "block", "kind", "direction", "head")
# The contract of every head table (in this order); further columns follow (see attention_table).
HEAD_COLUMNS = (
    "layer", "block", "kind", "direction", "head",
    "distance", "uniform_distance", "locality", "locality_lower", "locality_upper",
    "entropy", "uniform_entropy", "entropy_rel", "entropy_rel_lower", "entropy_rel_upper",
    "max_weight", "uniform_max_weight", "n", "n_crops",
)  # fmt: skip


@dataclass(frozen=True)
class SiteInfo:
    """Where an attention map comes from: module name, stage, block, ``plain|shifted``, strip direction."""

    module: str
    layer: int
    block: int
    kind: str
    direction: str


def jackknife_ratio(num: Tensor, den: Tensor, confidence: float = 0.95) -> tuple[float, float, float]:
    """``sum(num) / sum(den)`` and its delete-one jackknife interval; ``num, den: (C,)`` per-unit sums.

    Returns ``(ratio, lower, upper)``; the interval is ``ratio +- t * se`` with
    ``se**2 = (C-1)/C * sum_c (r_(-c) - mean r_(-c))**2`` and ``t`` the Student-t quantile of ``C - 1``
    degrees of freedom (NaN bounds for C < 2).
    """
    num, den = num.double().flatten(), den.double().flatten()
    ratio = float(num.sum() / den.sum())
    if num.numel() < 2:
        return ratio, math.nan, math.nan
    loo = (num.sum() - num) / (den.sum() - den)  # (C,)
    low, high, _ = jackknife_interval(torch.tensor(ratio, dtype=torch.float64), loo, confidence, bias_corrected=False)
    return ratio, float(low), float(high)


def _check_by(by: Sequence[str]) -> tuple[str, ...]:
    by = tuple(by)
    if unknown := [c for c in by if c not in GROUP_KEYS]:
        raise CkaLabError(f"cannot group attention heads by {unknown}: use columns among {', '.join(GROUP_KEYS)}")
    if "kind" not in by:
        raise CkaLabError(
            "attention summaries must group by 'kind': plain and shifted blocks have different uniform baselines"
        )
    return by


def _ratio_columns(s: dict[str, Tensor], confidence: float) -> dict[str, float]:
    """The contract's statistics from per-crop sums ``s[key]: (C,)`` of one head or group of heads."""
    n = float(s["n"].sum())
    loc, loc_lo, loc_hi = jackknife_ratio(s["dist"], s["u_dist"], confidence)
    ent, ent_lo, ent_hi = jackknife_ratio(s["entropy"], s["u_entropy"], confidence)
    mean = float(s["dist"].sum()) / n
    return {
        "distance": mean,
        "uniform_distance": float(s["u_dist"].sum()) / n,
        "locality": loc,
        "locality_lower": loc_lo,
        "locality_upper": loc_hi,
        "entropy": float(s["entropy"].sum()) / n,
        "uniform_entropy": float(s["u_entropy"].sum()) / n,
        "entropy_rel": ent,
        "entropy_rel_lower": ent_lo,
        "entropy_rel_upper": ent_hi,
        "max_weight": float(s["max_weight"].sum()) / n,
        "uniform_max_weight": float(s["u_max"].sum()) / n,
        "n": int(round(n)),
        "n_crops": int(s["n"].numel()),
        "confidence": confidence,
        "std": math.sqrt(max(float(s["dist_sq"].sum()) / n - mean**2, 0.0)),
        "mean_dx": float(s["dx"].sum()) / n,
        "mean_dy": float(s["dy"].sum()) / n,
        "uniform_dx": float(s["u_dx"].sum()) / n,
        "uniform_dy": float(s["u_dy"].sum()) / n,
        **{k: float(v.sum()) / n for k, v in s.items() if k.startswith("within_")},
    }


def attention_table(
    sites: Sequence[tuple[SiteInfo, dict[str, Tensor]]],
    by: Sequence[str] | None = None,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """One row per head (``by=None``) or per group of heads pooled over crops.

    ``sites``: ``(SiteInfo, sums)`` with ``sums[key]: (C, h)`` per-crop sums (same C everywhere).
    Head rows have :data:`HEAD_COLUMNS`, then ``confidence``, ``std`` (spread of the per-row distance),
    ``mean_dx`` / ``mean_dy``, ``uniform_dx`` / ``uniform_dy``, ``within_<r>`` (attention mass within
    r pixels), and ``module``, ``shifted`` and ``mean`` (= ``distance``), kept for older callers.
    Group rows (``by`` among :data:`GROUP_KEYS`, containing ``kind``) have ``by``, ``n_heads``, the same
    statistics for the pooled heads, and the spread of the heads' distances ``head_min`` /
    ``head_max`` / ``head_std`` (input pixels).
    """
    if not sites:
        raise CkaLabError("no attention was recorded: run forward passes inside the `with` block first")
    by = None if by is None else _check_by(by)
    crops = {int(sums["n"].shape[0]) for _, sums in sites}
    if len(crops) != 1:
        raise CkaLabError(
            f"attention sites saw different numbers of crops ({sorted(crops)}): run every site on every crop"
        )
    groups: dict[tuple, dict] = {}  # key -> {"meta", "info", "sums": per-crop sums (C,), "heads": head distances}
    for info, sums in sites:
        for h in range(sums["n"].shape[1]):
            meta = {"layer": info.layer, "block": info.block, "kind": info.kind, "direction": info.direction, "head": h}
            head = {k: v[:, h].double().cpu() for k, v in sums.items()}
            g = groups.setdefault(tuple(meta[c] for c in by or GROUP_KEYS), {"meta": meta, "info": info, "heads": []})
            g["sums"] = {k: g["sums"][k] + v for k, v in head.items()} if "sums" in g else head
            g["heads"].append(float(head["dist"].sum() / head["n"].sum()))
    rows = []
    for key, g in groups.items():
        cols = _ratio_columns(g["sums"], confidence)
        if by is None:
            compat = {"module": g["info"].module, "shifted": g["info"].kind == "shifted", "mean": cols["distance"]}
            rows.append({**g["meta"], **cols, **compat})
        else:
            heads = torch.tensor(g["heads"], dtype=torch.float64)
            spread = {
                "head_min": float(heads.min()),
                "head_max": float(heads.max()),
                "head_std": float(heads.std(unbiased=False)),
            }
            rows.append({**dict(zip(by, key)), "n_heads": len(g["heads"]), **cols, **spread})
    return pd.DataFrame(rows)


def locality_summary(df: pd.DataFrame, by: Sequence[str] = ("layer", "kind", "direction")) -> pd.DataFrame:
    """Per group of heads of a head table (``AttentionDistance.compute()``): means over the heads.

    Columns: ``by``, ``n_heads``, ``distance`` / ``uniform_distance`` / ``locality`` / ``entropy`` /
    ``uniform_entropy`` / ``entropy_rel`` / ``max_weight`` / ``uniform_max_weight`` (means over heads;
    heads of one group have equal row counts, so these equal the pooled ratios), ``head_min`` /
    ``head_max`` / ``head_std`` (spread of the heads' distances, input pixels), ``within_<r>``, and
    ``mean_distance`` (= ``distance``, the column of the former per-layer summary). No intervals: a
    head table has no per-crop sums; ``AttentionDistance.summary()`` pools crops and gives intervals.
    Grouping always separates plain from shifted blocks (``by`` must contain ``kind``).
    """
    by = list(_check_by(by))
    if missing := set(by) - set(df.columns) | {"distance", "uniform_distance"} - set(df.columns):
        raise CkaLabError(f"attention table lacks columns {sorted(missing)}: pass AttentionDistance.compute()")
    means = [
        c for c in ("distance", "uniform_distance", "locality", "entropy", "uniform_entropy", "entropy_rel",
                    "max_weight", "uniform_max_weight") if c in df.columns
    ] + [c for c in df.columns if c.startswith("within_")]  # fmt: skip
    g = df.groupby(by, sort=False)
    out = g[means].mean()
    out.insert(0, "n_heads", g.size())
    out["head_min"] = g["distance"].min()
    out["head_max"] = g["distance"].max()
    out["head_std"] = g["distance"].std(ddof=0)
    out["mean_distance"] = out["distance"]
    return out.reset_index()
