"""Plots and tables of analysis results (figures are returned, never shown)."""

from cka_lab.plots.heatmap import (
    HeatmapPanel,
    HeatmapStyle,
    cka_table,
    plot_cka_heatmap,
    plot_cka_heatmaps,
    save_figure,
    shorten_names,
)

__all__ = [
    "HeatmapPanel",
    "HeatmapStyle",
    "cka_table",
    "plot_cka_heatmap",
    "plot_cka_heatmaps",
    "save_figure",
    "shorten_names",
]
