"""Attention against its uniform baseline: locality and relative entropy per stage, with intervals.

Draws a table of :meth:`cka_lab.metrics.attention.AttentionDistance.summary` (optionally with a
``model`` column for several models): ``locality = distance / uniform_distance`` and
``entropy_rel = entropy / uniform_entropy`` per stage, plain and shifted blocks as separate series,
jackknife intervals as error bars and the value of uniform attention (1) as a reference line, so a
reader sees at once whether a head is more local or sharper than its windows would make it anyway.
Built without pyplot, like the other figures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from cka_lab.errors import CkaLabError

from .heatmap import save_figure

__all__ = ["plot_locality"]

_NEEDED = ("layer", "kind", "direction", "locality", "locality_lower", "locality_upper",
           "entropy_rel", "entropy_rel_lower", "entropy_rel_upper", "n_crops")  # fmt: skip
_STYLE = {"plain": ("o", "-"), "shifted": ("s", "--")}
_ROWS = (("locality", "locality\n(distance / uniform distance)"), ("entropy_rel", "entropy / uniform entropy"))


def plot_locality(summary: pd.DataFrame, *, title: str | None = None, path: str | Path | None = None) -> Figure:
    """A 2 x D grid (rows: locality, relative entropy; columns: strip directions) of per-stage values.

    ``summary``: one row per (layer, kind, direction[, model]) with the columns of
    ``AttentionDistance.summary()``. Error bars are the tables' confidence intervals; the dashed grey
    line at 1 is uniform attention in the same windows and masks.
    """
    if missing := [c for c in _NEEDED if c not in summary.columns]:
        raise CkaLabError(f"locality table lacks columns {missing}: pass AttentionDistance.summary()")
    if summary.empty:
        raise CkaLabError("locality table is empty: no attention was recorded")
    df = summary if "model" in summary.columns else summary.assign(model="")
    models = list(dict.fromkeys(df["model"]))
    palette = dict(zip(models, sns.color_palette("colorblind", len(models))))
    directions = [d for d in ("horizontal", "vertical") if d in set(df["direction"])]
    fig = Figure(figsize=(4.6 * len(directions) + 2.2, 6.4), layout="constrained")
    axes = np.asarray(fig.subplots(2, len(directions), sharex=True, squeeze=False))
    offsets = {k: (i - 0.5) * 0.12 for i, k in enumerate(_STYLE)}
    for (col, label), row_axes in zip(_ROWS, axes):
        for ax, direction in zip(row_axes, directions):
            ax.axhline(1.0, color="0.45", linestyle=":", linewidth=1.2, zorder=0, label="uniform attention")
            for model in models:
                for kind, (marker, line) in _STYLE.items():
                    c = df[(df["model"] == model) & (df["kind"] == kind) & (df["direction"] == direction)]
                    if c.empty:
                        continue
                    c = c.sort_values("layer")
                    x = c["layer"].to_numpy(dtype=float) + offsets[kind]
                    y = c[col].to_numpy(dtype=float)
                    err = np.vstack([y - c[f"{col}_lower"].to_numpy(float), c[f"{col}_upper"].to_numpy(float) - y])
                    name = f"{model} {kind}".strip()
                    ax.errorbar(x, y, yerr=np.abs(err), color=palette[model], marker=marker, linestyle=line,
                                markersize=4, linewidth=1.3, capsize=2.5, label=name)  # fmt: skip
            ax.set_title(f"{direction} strip windows", fontsize=10)
            ax.grid(axis="y", color="0.92")
            sns.despine(ax=ax)
        row_axes[0].set_ylabel(label)
    for ax in axes[-1]:
        ax.set_xlabel("stage")
        ax.set_xticks(sorted(set(int(v) for v in df["layer"])))
    handles, labels = axes[0, 0].get_legend_handles_labels()
    level = float(df["confidence"].iloc[0]) if "confidence" in df.columns else 0.95
    n = int(df["n_crops"].min())
    fig.legend(handles, labels, loc="outside right center", fontsize=8.5, frameon=False,
               title=f"bars: {level:.0%} jackknife CI\nover {n} crops", title_fontsize=8)  # fmt: skip
    if title:
        fig.suptitle(title, fontsize=12)
    if path is not None:
        save_figure(fig, path)
    return fig
