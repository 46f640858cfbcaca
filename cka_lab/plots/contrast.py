"""Figures for contrasting two models: CKA difference maps and attention-distance curves.

Plain inputs only (matrices, layer names, DataFrames), so these figures draw any contrast, stored or
fresh. Like :mod:`cka_lab.plots.heatmap`, figures are built without pyplot.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from cka_lab.errors import CkaLabError

from .heatmap import HeatmapPanel, _draw_panel, _panel_inches, save_figure

__all__ = ["plot_cka_difference", "plot_attention_distance", "attention_curves"]


def plot_cka_difference(
    difference: object,
    layers: Sequence[str],
    *,
    name_a: str = "A",
    name_b: str = "B",
    stages: Sequence[int] = (),
    limit: float | None = None,
    annotate: bool | None = None,
    stated: object | None = None,
    title: str | None = None,
    path: str | Path | None = None,
) -> Figure:
    """``CKA(A) - CKA(B)`` as a diverging heatmap (red: A more similar, blue: B), centred on 0.

    ``limit`` fixes the symmetric colour range (default: the largest |difference|, at least 0.05).
    ``stated`` (bool, same shape) marks with a dot the cells whose difference exceeds its interval and
    the controls; the title then says how many there are. ``title`` replaces the default title.
    """
    d = np.asarray(difference, dtype=float)
    if d.ndim != 2 or d.shape != (len(layers), len(layers)):
        raise CkaLabError(f"difference must be ({len(layers)}, {len(layers)}), got {d.shape}")
    lim = float(limit) if limit else max(0.05, float(np.nanmax(np.abs(d))) if np.isfinite(d).any() else 0.05)
    w, h = _panel_inches(*d.shape)
    fig = Figure(figsize=(w + 2.6, h + 1.9), layout="constrained")
    ax = fig.subplots()
    head = title or f"CKA({name_a}) - CKA({name_b})"
    if stated is not None:
        mask = np.asarray(stated, dtype=bool)
        if mask.shape != d.shape:
            raise CkaLabError(f"stated must have the shape of the difference {d.shape}, got {mask.shape}")
        head += (f"\n\u25cf: {int(mask.sum())} cells beyond their interval and the controls" if mask.any()
                 else "\nno cell exceeds its interval and the controls: not decidable at this scale")
    import textwrap

    width = max(30, int((w + 2.6) * 9))  # characters that fit the figure at the title's font size
    head = "\n".join(part for line in head.split("\n") for part in textwrap.wrap(line, width) or [""])
    panel = HeatmapPanel(d, layers, layers, name_a=f"{name_a} / {name_b}", name_b=f"{name_a} / {name_b}",
                         title=head, stages_a=stages, stages_b=stages)
    _draw_panel(ax, panel, -lim, lim, "RdBu_r", annotate)
    if stated is not None and mask.any():
        rows, cols = np.nonzero(mask)
        ax.scatter(cols + 0.5, rows + 0.5, s=max(2.0, 60.0 / max(d.shape)), c="black", marker="o", linewidths=0)
    cb = fig.colorbar(ScalarMappable(norm=Normalize(-lim, lim), cmap="RdBu_r"), ax=ax, fraction=0.05, pad=0.02)
    cb.set_label(f"CKA difference (+: {name_a} more similar)", fontsize=10)
    if path is not None:
        save_figure(fig, path)
    return fig


def attention_curves(attention: pd.DataFrame) -> pd.DataFrame:
    """Per model, block (in depth order) and direction: mean attention distance over heads, and the
    lowest and highest head. ``attention`` has the columns of ``AttentionDistance.compute()`` and a
    ``model`` column."""
    value = "locality" if "locality" in attention.columns else "mean"
    need = {"model", "layer", "block", "direction", "head", value}
    if missing := need - set(attention.columns):
        raise CkaLabError(f"attention table lacks columns {sorted(missing)}")
    g = attention.groupby(["model", "layer", "block", "direction"], sort=False)[value]
    out = g.agg(mean="mean", head_min="min", head_max="max").reset_index()
    out = out.sort_values(["layer", "block", "direction"], kind="stable")  # models keep their input order
    order = out[["layer", "block"]].drop_duplicates().sort_values(["layer", "block"])
    index = {(r.layer, r.block): i for i, r in enumerate(order.itertuples())}
    out["depth"] = [index[(r.layer, r.block)] for r in out.itertuples()]
    return out.reset_index(drop=True)


def plot_attention_distance(
    attention: pd.DataFrame,
    *,
    title: str | None = None,
    path: str | Path | None = None,
) -> Figure:
    """Attention locality (distance / distance of uniform attention in the same windows and masks) per
    block, one line per model, band = range over heads; the dashed line at 1 is uniform attention. A
    table without ``locality`` (the former format) is drawn as mean distance in input pixels.

    Two panels: horizontal-strip and vertical-strip attention. Stage boundaries are marked.
    """
    relative = "locality" in attention.columns
    curves = attention_curves(attention)
    models = list(dict.fromkeys(attention["model"]))
    palette = dict(zip(models, sns.color_palette("colorblind", len(models))))
    directions = [d for d in ("horizontal", "vertical") if d in set(curves["direction"])]
    fig = Figure(figsize=(5.2 * len(directions) + 1.8, 3.9), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(directions), sharey=True))
    stage_edges = curves.groupby("layer")["depth"].min().sort_index().to_numpy()[1:]
    n_depth = int(curves["depth"].max()) + 1
    for ax, direction in zip(axes, directions):
        for model in models:
            c = curves[(curves["model"] == model) & (curves["direction"] == direction)].sort_values("depth")
            ax.fill_between(c["depth"], c["head_min"], c["head_max"], color=palette[model], alpha=0.18, linewidth=0)
            ax.plot(c["depth"], c["mean"], color=palette[model], marker="o", markersize=3, linewidth=1.6, label=model)
        for edge in stage_edges:
            ax.axvline(edge - 0.5, color="0.75", linewidth=0.8, zorder=0)
        if relative:
            ax.axhline(1.0, color="0.4", linestyle="--", linewidth=0.9, zorder=0)
        ax.set_xlim(-0.5, n_depth - 0.5)
        ax.set_xticks(range(0, n_depth, max(1, n_depth // 12)))
        ax.set_xlabel("transformer block (depth)")
        ax.set_title(f"{direction} strip windows", fontsize=11)
        ax.grid(axis="y", color="0.92")
        sns.despine(ax=ax)
    axes[0].set_ylabel("locality (distance / uniform distance)" if relative else "mean attention distance (input px)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=8.5, frameon=False,
               title="line: mean over heads\nband: range over heads", title_fontsize=8)
    if title:
        fig.suptitle(title, fontsize=12)
    if path is not None:
        save_figure(fig, path)
    return fig
