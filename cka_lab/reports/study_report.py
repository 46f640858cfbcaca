"""The study's PDF: title page (design, budgets, hardware), the claims with verdicts, scores with error bars,
CKA maps averaged over seeds next to the seed-to-seed control, same-layer CKA curves against the control,
attention locality against uniform attention, and the tables behind them.

Every page names the protocol (estimator, layer set, feature kind, probe N) that produced its numbers.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.backends.backend_pdf import PdfPages  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

__all__ = ["write_study_report"]

A4 = (11.69, 8.27)


def _text_page(title: str, lines: Sequence[str], *, footer: str = "", width: int = 120) -> Figure:
    fig = plt.figure(figsize=A4)
    fig.text(0.05, 0.94, title, fontsize=17, weight="bold", va="top")
    y = 0.87
    for line in lines:
        wrapped = textwrap.wrap(line, width) or [""]
        for i, w in enumerate(wrapped):
            fig.text(0.06 if i else 0.05, y, w, fontsize=9.5, va="top", family="DejaVu Sans")
            y -= 0.026
        y -= 0.008
        if y < 0.06:
            break
    if footer:
        fig.text(0.05, 0.025, footer, fontsize=7.5, color="0.35")
    return fig


def _table_page(title: str, df: pd.DataFrame, *, footer: str = "", digits: int = 3) -> Figure:
    fig = plt.figure(figsize=A4)
    fig.text(0.05, 0.94, title, fontsize=15, weight="bold", va="top")
    ax = fig.add_axes([0.04, 0.08, 0.92, 0.8])
    ax.axis("off")
    shown = df.copy()
    for c in shown.columns:
        if pd.api.types.is_float_dtype(shown[c]):
            shown[c] = shown[c].map(lambda v: "n/a" if not np.isfinite(v) else f"{v:.{digits}f}")
    table = ax.table(cellText=shown.values[:40], colLabels=list(shown.columns), loc="upper center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(7.5 if len(shown.columns) > 8 else 8.5)
    table.scale(1, 1.25)
    if footer:
        fig.text(0.05, 0.025, footer, fontsize=7.5, color="0.35")
    return fig


def _scores_figure(scores: pd.DataFrame, footer: str) -> Figure:
    targets = list(scores.target.unique())
    fig, axes = plt.subplots(1, len(targets), figsize=A4, squeeze=False)
    for ax, t in zip(axes[0], targets):
        s = scores[scores.target == t]
        order = list(s.condition.unique())
        sns.pointplot(data=s, x="condition", y="psnr", order=order, errorbar="sd", ax=ax, color="0.2",
                      markers="_", capsize=0.2, linestyle="none")
        sns.stripplot(data=s, x="condition", y="psnr", order=order, hue="seed", ax=ax, size=7, jitter=0.08,
                      palette="deep")
        ax.set_title(f"{t}: PSNR per seed (dots), mean +- std (bars)\n{s.dataset.iloc[0]}, {int(s.images.iloc[0])} images")
        ax.set_ylabel("PSNR (dB)")
        ax.set_xlabel("")
        ax.legend(title="seed", fontsize=8)
    fig.suptitle("Restoration quality by condition", fontsize=15, weight="bold")
    fig.text(0.05, 0.015, footer, fontsize=7.5, color="0.35")
    fig.tight_layout(rect=(0, 0.03, 1, 0.95))
    return fig


def _heatmaps_figure(title: str, panels: Sequence[tuple[str, np.ndarray]], stage_edges: Sequence[int], footer: str) -> Figure:
    fig, axes = plt.subplots(1, len(panels), figsize=A4, squeeze=False)
    fig.subplots_adjust(left=0.05, right=0.88, top=0.82, bottom=0.12, wspace=0.35)
    for ax, (label, m) in zip(axes[0], panels):
        im = ax.imshow(m, vmin=0, vmax=1, cmap="magma", origin="lower")
        for e in stage_edges:
            ax.axhline(e - 0.5, color="w", lw=0.6)
            ax.axvline(e - 0.5, color="w", lw=0.6)
        lines = [w for part in label.split("\n") for w in textwrap.wrap(part, 22)]  # narrow panels: no overlap
        ax.set_title("\n".join(lines), fontsize=9)
        ax.set_xlabel("layer")
        ax.set_ylabel("layer")
    fig.colorbar(im, cax=fig.add_axes([0.9, 0.25, 0.015, 0.45]), label="CKA")
    fig.suptitle("\n".join(textwrap.wrap(title, 110)), fontsize=13, weight="bold")
    fig.text(0.05, 0.015, footer, fontsize=7.5, color="0.35")
    return fig


def _curves_figure(title: str, curves: Mapping[str, Sequence[np.ndarray]], control: Mapping[str, np.ndarray],
                   ylabel: str, footer: str, *, hline: float | None = None) -> Figure:
    fig, ax = plt.subplots(figsize=A4)
    palette = sns.color_palette("deep", len(curves) + 1)
    for (label, series), color in zip(curves.items(), palette):
        for i, y in enumerate(series):
            ax.plot(np.arange(len(y)), y, color=color, lw=1.6, alpha=0.9, label=label if i == 0 else None)
    for label, y in control.items():
        ax.plot(np.arange(len(y)), y, color="0.3", lw=2, ls="--", label=label)
    if hline is not None:
        ax.axhline(hline, color="0.5", lw=1, ls=":", label="uniform attention")
    ax.set_xlabel("layer index")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=13, weight="bold")
    fig.text(0.05, 0.015, footer, fontsize=7.5, color="0.35")
    return fig


def write_study_report(path: Path, *, title_lines: Sequence[str], verdicts: Sequence[str], scores: pd.DataFrame,
                       summary: pd.DataFrame, gains: pd.DataFrame, heatmaps: Sequence[tuple[str, list, list]],
                       curves: Sequence[tuple[str, dict, dict]], locality: pd.DataFrame, protocol: str,
                       hardware: str, study_name: str) -> Path:
    """Write the study PDF atomically (temporary file in the target folder, then rename)."""
    import io

    from cka_lab.io import write_bytes

    footer = f"study {study_name} -- {protocol} -- {hardware}"
    figs: list[Figure] = [_text_page(f"Pre-training study '{study_name}'", title_lines, footer=footer),
                          _text_page("The paper's claims, judged from these numbers", verdicts, footer=footer),
                          _scores_figure(scores, footer),
                          _table_page("Scores: mean +- std over seeds", summary, footer=footer),
                          _table_page("Gain over training from scratch (paired by seed, 95 % t-interval over seeds)",
                                      gains, footer=footer)]
    for title, panels, edges in heatmaps:
        figs.append(_heatmaps_figure(title, panels, edges, footer))
    for title, series, control in curves:
        figs.append(_curves_figure(title, series, control, "same-layer CKA", footer))
    if not locality.empty:
        fig, ax = plt.subplots(figsize=A4)
        groups = locality.assign(model=locality["model"].str.replace(r"-s\d+$", "", regex=True))
        sns.pointplot(data=groups, x="stage", y="locality", hue="model", errorbar="sd", dodge=0.3, ax=ax,
                      capsize=0.1)
        ax.axhline(1.0, color="0.4", ls=":", lw=1.2)
        ax.text(0.02, 1.0, " uniform attention", color="0.3", fontsize=8, va="bottom", transform=ax.get_yaxis_transform())
        ax.set_ylabel("attention distance / uniform-attention distance")
        ax.set_title("Attention locality per stage: mean over blocks, heads and seeds (bars: sd over seeds);\n"
                     "< 1: more local than uniform attention under the same windows and masks",
                     fontsize=12, weight="bold")
        fig.text(0.05, 0.015, footer, fontsize=7.5, color="0.35")
        figs.append(fig)
    buf = io.BytesIO()
    with PdfPages(buf) as pdf:
        for f in figs:
            pdf.savefig(f)
            plt.close(f)
    write_bytes(Path(path), buf.getvalue())
    return Path(path)
