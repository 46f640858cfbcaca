"""CKA matrices as heatmaps and tables.

Conventions: rows (y axis) are the layers of model A, columns (x axis) those of model B, the first
layer at the bottom-left as in Nguyen et al. (2021). One colour scale, ``vmin``..``vmax`` (0..1 by
default), so that figures made separately can be compared; NaN cells (undefined CKA) are grey.

Figures are built with ``matplotlib.figure.Figure`` directly, never through pyplot: importing or
calling this module changes no global matplotlib state, and saving renders with the Agg canvas.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from cka_lab.errors import CkaLabError
from cka_lab.io import atomic_write, write_csv

__all__ = [
    "HeatmapPanel",
    "HeatmapStyle",
    "cka_table",
    "plot_cka_heatmap",
    "plot_cka_heatmaps",
    "save_figure",
    "shorten_names",
]

COLORBAR_LABEL = "linear CKA"


def _as_array(matrix: object) -> np.ndarray:
    """A (La, Lb) tensor / array / nested list -> float64 numpy array."""
    if hasattr(matrix, "detach"):
        matrix = matrix.detach().cpu().double().numpy()  # type: ignore[union-attr]
    array = np.asarray(matrix, dtype=np.float64)
    if array.ndim != 2:
        raise CkaLabError(f"a CKA matrix must be 2-D (layers_a × layers_b), got shape {array.shape}")
    return array


def cka_table(
    matrix: object, layers_a: Sequence[str], layers_b: Sequence[str], csv_path: str | Path | None = None
) -> pd.DataFrame:
    """The CKA matrix as a DataFrame (index: layers_a, columns: layers_b), optionally written to CSV.

    Args:
        matrix: (La, Lb) tensor or array, e.g. ``MinibatchCKA.compute()``.
        layers_a, layers_b: the La row and Lb column names.
        csv_path: if given, the table is written there (parent folders are created).
    """
    array = _as_array(matrix)
    if array.shape != (len(layers_a), len(layers_b)):
        raise CkaLabError(
            f"matrix shape {array.shape} does not match {len(layers_a)} layers_a × {len(layers_b)} layers_b"
        )
    frame = pd.DataFrame(array, index=pd.Index(list(layers_a), name="layer_a"), columns=list(layers_b))
    frame.columns.name = "layer_b"
    if csv_path is not None:
        write_csv(csv_path, frame)
    return frame


def shorten_names(names: Sequence[str]) -> tuple[str, list[str]]:
    """Strip the dotted prefix and suffix shared by all names: ``(pattern, short names)``.

    ``["body.layers.0.attn", "body.layers.1.attn"]`` -> ``("body.layers.*.attn", ["0", "1"])``; the
    pattern is "" when nothing is shared. Every short name keeps at least one component.
    """
    parts = [name.split(".") for name in names]
    if len(parts) < 2:
        return "", list(names)
    head = 0
    while all(len(p) > head + 1 for p in parts) and len({p[head] for p in parts}) == 1:
        head += 1
    tail = 0
    while all(len(p) > head + tail + 1 for p in parts) and len({p[-1 - tail] for p in parts}) == 1:
        tail += 1
    if head == tail == 0:
        return "", list(names)
    short = [".".join(p[head : len(p) - tail]) for p in parts]
    pattern = ".".join(parts[0][:head] + ["*"] + parts[0][len(parts[0]) - tail :])
    return pattern, short


@dataclass(frozen=True)
class HeatmapPanel:
    """One CKA matrix to draw.

    Attributes:
        matrix: (La, Lb) CKA values.
        layers_a: La layer names of model A (rows, y axis).
        layers_b: Lb layer names of model B (columns, x axis).
        name_a, name_b: model names for the axis labels and the default title.
        title: panel title; default ``"<name_a> vs <name_b>"``.
        stages_a, stages_b: indices where a new stage (group of layers) starts; a line is drawn
            before each, e.g. ``(4, 8)`` for three stages of four layers.
    """

    matrix: object
    layers_a: Sequence[str]
    layers_b: Sequence[str]
    name_a: str = "model A"
    name_b: str = "model B"
    title: str | None = None
    stages_a: Sequence[int] = field(default=())
    stages_b: Sequence[int] = field(default=())


@dataclass(frozen=True)
class HeatmapStyle:
    """The colour scale of CKA heatmaps, shared by every panel of a figure.

    Attributes:
        vmin, vmax: the colour scale (0..1 by default, so that figures made separately compare).
        cmap: a matplotlib colormap name.
        annotate: print the values in the cells; None: only when a panel has at most 12 layers a side.
    """

    vmin: float = 0.0
    vmax: float = 1.0
    cmap: str = "magma"
    annotate: bool | None = None


def _options(cls, given: dict, base=None):
    """``base`` (or ``cls()``) with the keywords of ``given`` that are fields of ``cls`` (taken out of ``given``)."""
    names = [f.name for f in fields(cls)]
    mine = {k: given.pop(k) for k in list(given) if k in names}
    return replace(base or cls(), **mine) if mine else (base or cls())


def _no_more(given: dict, caller: str, known: Sequence[str]) -> None:
    if given:
        raise CkaLabError(f"{caller} got unknown option(s) {', '.join(sorted(given))}: use {', '.join(known)}")


def _tick_fontsize(n: int) -> float:
    return 9.0 if n <= 16 else 7.5 if n <= 32 else 6.0 if n <= 48 else 5.0


def _cell_inches(n_rows: int, n_cols: int) -> float:
    """0.45 inch per cell up to 20 layers, then the heatmap stays about 9 inches wide."""
    return float(np.clip(9.0 / max(n_rows, n_cols, 1), 0.15, 0.45))


def _panel_inches(n_rows: int, n_cols: int) -> tuple[float, float]:
    cell = _cell_inches(n_rows, n_cols)
    return max(2.5, cell * n_cols), max(2.5, cell * n_rows)


def _label_inches(names: Sequence[str], fontsize: float) -> float:
    return 0.6 * fontsize / 72 * max((len(n) for n in names), default=1)


def _axis_label(name: str, pattern: str) -> str:
    return f"{name} layers" + (f"  ({pattern})" if pattern else "")


def _draw_panel(ax: object, panel: HeatmapPanel, vmin: float, vmax: float, cmap: str, annotate: bool | None) -> None:
    frame = cka_table(panel.matrix, panel.layers_a, panel.layers_b)
    prefix_a, short_a = shorten_names(list(frame.index))
    prefix_b, short_b = shorten_names(list(frame.columns))
    n_a, n_b = frame.shape
    if annotate is None:
        annotate = max(n_a, n_b) <= 12
    fs_a, fs_b = _tick_fontsize(n_a), _tick_fontsize(n_b)
    sns.heatmap(
        frame.to_numpy(),
        ax=ax,
        vmin=vmin,
        vmax=vmax,
        cmap=cmap,
        cbar=False,
        square=False,
        annot=annotate,
        fmt=".2f",
        annot_kws={"fontsize": max(5.0, min(fs_a, fs_b) - 1)},
        xticklabels=short_b,
        yticklabels=short_a,
        linewidths=0,
    )
    ax.set_facecolor("#c8c8c8")  # NaN cells
    ax.invert_yaxis()  # first layer at the bottom-left
    cell = max(_panel_inches(n_a, n_b)[0] / max(n_b, 1), 0.01)
    rotate = _label_inches(short_b, fs_b) > 0.9 * cell
    ax.tick_params(axis="x", labelsize=fs_b, labelrotation=90 if rotate else 0, length=2)
    ax.tick_params(axis="y", labelsize=fs_a, labelrotation=0, length=2)
    for boundary in panel.stages_a:
        if 0 < boundary < n_a:
            ax.axhline(boundary, color="white", linewidth=1.4)
    for boundary in panel.stages_b:
        if 0 < boundary < n_b:
            ax.axvline(boundary, color="white", linewidth=1.4)
    ax.set_ylabel(_axis_label(panel.name_a, prefix_a), fontsize=10)
    ax.set_xlabel(_axis_label(panel.name_b, prefix_b), fontsize=10)
    ax.set_title(panel.title or f"{panel.name_a} vs {panel.name_b}", fontsize=11)


def plot_cka_heatmaps(
    panels: Sequence[HeatmapPanel],
    style: HeatmapStyle | None = None,
    *,
    suptitle: str | None = None,
    path: str | Path | None = None,
    **style_fields,
) -> Figure:
    """Several CKA heatmaps in one row with one shared colour scale and colorbar ("linear CKA").

    Args:
        panels: the matrices to draw, left to right.
        style: the colour scale shared by all panels (:class:`HeatmapStyle`); its fields may also be
            given as keywords (``vmin=``, ``vmax=``, ``cmap=``, ``annotate=``).
        suptitle: a title above all panels.
        path: if given, the figure is also saved there (PNG, PDF, SVG by extension).

    Returns:
        The Figure.
    """
    style = _options(HeatmapStyle, style_fields, style)
    _no_more(style_fields, "plot_cka_heatmaps", [f.name for f in fields(HeatmapStyle)])
    vmin, vmax, cmap, annotate = style.vmin, style.vmax, style.cmap, style.annotate
    if not panels:
        raise CkaLabError("plot_cka_heatmaps needs at least one panel")
    sizes = [_panel_inches(len(p.layers_a), len(p.layers_b)) for p in panels]
    left = max(_label_inches(shorten_names(list(p.layers_a))[1], _tick_fontsize(len(p.layers_a))) for p in panels)
    bottom = max(_label_inches(shorten_names(list(p.layers_b))[1], _tick_fontsize(len(p.layers_b))) for p in panels)
    width = sum(w for w, _ in sizes) + len(panels) * (left + 0.8) + 1.2
    height = max(h for _, h in sizes) + bottom + 1.3 + (0.4 if suptitle else 0.0)
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, len(panels), width_ratios=[w for w, _ in sizes], squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        _draw_panel(ax, panel, vmin, vmax, cmap, annotate)
    colorbar = fig.colorbar(
        ScalarMappable(norm=Normalize(vmin=vmin, vmax=vmax), cmap=cmap), ax=list(axes), fraction=0.05, pad=0.02,
        aspect=25,
    )
    colorbar.set_label(COLORBAR_LABEL, fontsize=10)
    if suptitle:
        fig.suptitle(suptitle, fontsize=12)
    if path is not None:
        save_figure(fig, path)
    return fig


def plot_cka_heatmap(
    matrix: object,
    layers_a: Sequence[str],
    layers_b: Sequence[str],
    style: HeatmapStyle | None = None,
    *,
    path: str | Path | None = None,
    **options,
) -> Figure:
    """One CKA heatmap: rows are ``layers_a`` of ``name_a``, columns ``layers_b`` of ``name_b``.

    ``options``: the other fields of :class:`HeatmapPanel` (``name_a``, ``name_b``, ``title``,
    ``stages_a``, ``stages_b``: the indices where a new group of layers starts, a white line is drawn
    there) and of :class:`HeatmapStyle` (``vmin``, ``vmax``, ``cmap``, ``annotate``), as keywords.
    Common dotted prefixes are moved from the tick labels to the axis labels. Returns the Figure (saved
    to ``path`` if given).
    """
    panel_fields = [f.name for f in fields(HeatmapPanel)][3:]
    panel = HeatmapPanel(matrix, layers_a, layers_b, **{k: options.pop(k) for k in list(options) if k in panel_fields})
    style = _options(HeatmapStyle, options, style)
    _no_more(options, "plot_cka_heatmap", panel_fields + [f.name for f in fields(HeatmapStyle)])
    return plot_cka_heatmaps([panel], style, path=path)


def save_figure(fig: Figure, path: str | Path, dpi: int = 150) -> Path:
    """Render ``fig`` with the Agg canvas (no global backend change) and write it to ``path``."""
    path = Path(path)
    FigureCanvasAgg(fig)  # attaches an Agg canvas to this figure only
    fmt = path.suffix.lower().lstrip(".") or "png"
    with atomic_write(path, "wb") as f:  # temp file beside path, fsync, rename
        fig.savefig(f, dpi=dpi, format=fmt)
    return path
