"""The study's PDF: title page (design, budgets, data overlap, baselines, hardware), the claims with verdicts
and their table (effect, interval, raw and Holm-adjusted p), scores with error bars beside the trivial
baselines, the design table (steps and patches per condition), CKA maps averaged over seeds next to the
seed-to-seed control, same-layer CKA curves against the control, attention locality against uniform
attention, and the tables behind them.

Every page names the protocol (estimator, layer set, feature kind, probe N) that produced its numbers.
"""

from __future__ import annotations

import re
import textwrap
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.backends.backend_pdf import PdfPages  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from cka_lab.reports.pages import table_pages  # noqa: E402

__all__ = ["StudyReportContent", "write_study_report"]

A4 = (11.69, 8.27)


def _text_pages(title: str, lines: Sequence[str], *, footer: str = "", width: int = 150) -> list[Figure]:
    """As many A4 pages as the lines need (a paragraph is never split; later pages say "(continued)"); a line
    that starts with ``"## "`` is a bold heading."""
    figs: list[Figure] = []
    fig, y = None, 0.0
    for line in lines:
        heading = line.startswith("## ")  # a heading line: bold, no hanging indent
        line = line[3:] if heading else line
        wrapped = textwrap.wrap(line, width) or [""]
        if fig is None or y - 0.026 * len(wrapped) < 0.06:
            fig = plt.figure(figsize=A4)
            fig.text(0.05, 0.94, title + (" (continued)" if figs else ""), fontsize=17, weight="bold", va="top")
            if footer:
                fig.text(0.05, 0.025, footer, fontsize=7.5, color="0.35")
            figs.append(fig)
            y = 0.87
        for i, w in enumerate(wrapped):
            fig.text(0.06 if i else 0.05, y, w, fontsize=10.5 if heading else 9.5, va="top", family="DejaVu Sans",
                     weight="bold" if heading else "normal")
            y -= 0.026
        y -= 0.008
    return figs


def _scores_figure(scores: pd.DataFrame, footer: str, baselines: pd.DataFrame | None = None) -> Figure:
    targets = list(scores.target.unique())
    fig, axes = plt.subplots(1, len(targets), figsize=A4, squeeze=False)
    for ax, t in zip(axes[0], targets):
        s = scores[scores.target == t]
        order = list(s.condition.unique())
        sns.pointplot(data=s, x="condition", y="psnr", order=order, errorbar="sd", ax=ax, color="0.2",
                      markers="_", capsize=0.2, linestyle="none")
        sns.stripplot(data=s, x="condition", y="psnr", order=order, hue="seed", ax=ax, size=7, jitter=0.08,
                      palette="deep")
        if baselines is not None and not baselines.empty:
            for (_, b), ls in zip(baselines[baselines.target == t].iterrows(), ("--", ":", "-.")):
                ax.axhline(b.psnr, color="0.45", lw=1.2, ls=ls)
                ax.text(0.01, b.psnr, f" {b.baseline} {b.psnr:.2f} dB", color="0.3", fontsize=8, va="bottom",
                        transform=ax.get_yaxis_transform())
        ax.set_title(f"{t}: PSNR per seed (dots), mean +- std (bars)\n{s.dataset.iloc[0]}, {int(s.images.iloc[0])} images"
                     + ("; lines: trivial baselines" if baselines is not None and not baselines.empty else ""))
        ax.set_ylabel("PSNR (dB)")
        ax.set_xlabel("")
        ax.legend(title="seed", fontsize=8)
    fig.suptitle("Restoration quality by condition", fontsize=15, weight="bold")
    fig.text(0.05, 0.015, footer, fontsize=7.5, color="0.35")
    fig.tight_layout(rect=(0, 0.03, 1, 0.95))
    return fig


def _heatmaps_figure(title: str, panels: Sequence[tuple[str, np.ndarray]], stage_edges: Sequence[int], footer: str) -> Figure:
    n = len(panels)
    ncols = n if n <= 3 else 2 if n == 4 else 3  # two rows beyond three panels: larger maps
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=A4, squeeze=False)
    fig.subplots_adjust(left=0.05, right=0.88, top=0.86 if nrows > 1 else 0.82, bottom=0.08 if nrows > 1 else 0.12,
                        wspace=0.35, hspace=0.45)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, (label, m) in zip(axes.flat, panels):
        im = ax.imshow(m, vmin=0, vmax=1, cmap="magma", origin="lower")
        for e in stage_edges:
            ax.axhline(e - 0.5, color="w", lw=0.6)
            ax.axvline(e - 0.5, color="w", lw=0.6)
        lines = [w for part in label.split("\n") for w in textwrap.wrap(part, 40 if ncols <= 2 else 30)]
        ax.set_title("\n".join(lines), fontsize=9)
        ax.set_xlabel("layer")
        ax.set_ylabel("layer")
    fig.colorbar(im, cax=fig.add_axes([0.9, 0.25, 0.015, 0.45]), label="CKA")
    fig.suptitle("\n".join(textwrap.wrap(title, 110)), fontsize=13, weight="bold")
    fig.text(0.05, 0.015, footer, fontsize=7.5, color="0.35")
    return fig


def _curves_figure(title: str, curves: Mapping[str, Sequence[np.ndarray]], control: Mapping[str, np.ndarray],
                   ylabel: str, footer: str) -> Figure:
    """One line per compared condition, the mean over its seeds with the range of the seeds as a band, and the
    control pairs the same way in grey: ``curves``: ``{label: [(L,) per seed]}``; ``control``:
    ``{"control: <what> seed i vs j": (L,)}``, grouped by ``<what>`` (the pairs of one group are averaged)."""
    fig, ax = plt.subplots(figsize=A4)
    palette = sns.color_palette("deep", max(1, len(curves)))

    def band(ys: Sequence[np.ndarray], color, label: str, unit: str, **line) -> None:
        sizes = {len(y) for y in ys}
        if len(sizes) > 1:  # curves of different lengths (layer sets differ): drawn one by one
            for i, y in enumerate(ys):
                ax.plot(np.arange(len(y)), y, color=color, label=label if i == 0 else None, **line)
            return
        m = np.vstack([np.asarray(y, dtype=float) for y in ys])
        x, n = np.arange(m.shape[1]), m.shape[0]
        with warnings.catch_warnings():  # a layer with no value in any seed stays a gap
            warnings.simplefilter("ignore", RuntimeWarning)
            mean, lo, hi = np.nanmean(m, 0), np.nanmin(m, 0), np.nanmax(m, 0)
        ax.plot(x, mean, color=color, label=label + (f" (mean of {n} {unit}; band: their range)" if n > 1 else ""), **line)
        if n > 1:
            ax.fill_between(x, lo, hi, color=color, alpha=0.18, lw=0)

    for (label, series), color in zip(curves.items(), palette):
        if len(series):
            band(series, color, label, "seeds", lw=1.8)
    groups: dict[str, list[np.ndarray]] = {}
    for label, y in control.items():
        groups.setdefault(re.sub(r" seed \d+ vs \d+$", "", label), []).append(np.asarray(y))
    greys = ["0.25", "0.55", "0.4"]
    for (label, ys), grey in zip(groups.items(), greys * len(groups)):
        band(ys, grey, label, "seed pairs", lw=2, ls="--")
    ax.set_xlabel("layer index")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=13, weight="bold")
    fig.text(0.05, 0.015, footer, fontsize=7.5, color="0.35")
    return fig


def _numbered(verdicts: Sequence[str], findings: Sequence[str] | None) -> list[str]:
    """The verdict sentences numbered in order, under a heading wherever their finding changes."""
    out, last = [], None
    for i, v in enumerate(verdicts):
        if findings is not None and findings[i] != last:
            last = findings[i]
            out.append(f"## {last}")
        out.append(f"{i + 1}. {v}")
    return out


@dataclass(frozen=True)
class StudyReportContent:
    """What the study PDF shows, in report order.

    ``title_lines``: the title page (``"## "`` starts a heading); ``verdicts``: one sentence per claim, with
    ``findings`` (per verdict, the paper's finding it tests: a heading is written where it changes);
    ``claims``: the verdict table (:func:`cka_lab.study.tables.verdict_table`); ``scores`` / ``summary`` /
    ``gains``: per model, per condition, gains over scratch; ``baselines``: target, baseline, psnr (lines on the
    score page); ``models``: one row per model, PSNR beside its baseline and attention entropy per stage
    (:func:`cka_lab.study.tables.model_table`); ``design``: steps and patches per condition; ``heatmaps``:
    ``(title, [(panel title, (L, L) matrix)], stage starts)``; ``curves``: ``(title, {label: [(L,) per seed]},
    {control label: (L,)})``; ``locality``: attention locality rows. ``protocol`` and ``hardware`` go in every
    page's footer.
    """

    study_name: str
    hardware: str
    protocol: str
    title_lines: Sequence[str]
    verdicts: Sequence[str]
    scores: pd.DataFrame
    summary: pd.DataFrame
    gains: pd.DataFrame
    locality: pd.DataFrame = field(default_factory=pd.DataFrame)
    heatmaps: Sequence[tuple[str, list, list]] = ()
    curves: Sequence[tuple[str, dict, dict]] = ()
    baselines: pd.DataFrame | None = None
    claims: pd.DataFrame | None = None
    design: pd.DataFrame | None = None
    models: pd.DataFrame | None = None
    findings: Sequence[str] | None = None


def write_study_report(path: Path, content: StudyReportContent) -> Path:
    """Write the study PDF of ``content`` atomically (temporary file in the target folder, then rename)."""
    c = content
    title_lines, verdicts, scores, summary, gains = c.title_lines, c.verdicts, c.scores, c.summary, c.gains
    heatmaps, curves, locality, protocol, hardware = c.heatmaps, c.curves, c.locality, c.protocol, c.hardware
    study_name, baselines, claims, design, models, findings = (c.study_name, c.baselines, c.claims, c.design,
                                                               c.models, c.findings)
    import io

    from cka_lab.io import write_bytes

    footer = f"study {study_name} -- {protocol} -- {hardware}"
    figs: list[Figure] = [*_text_pages(f"Pre-training study '{study_name}'", title_lines, footer=footer),
                          *_text_pages("The paper's claims, judged from these numbers",
                                       _numbered(verdicts, findings), footer=footer)]
    if claims is not None and not claims.empty:
        cols = ["claim", "protocol", "status", "effect", "lower", "upper", "unit", "n", "p", "p_holm"]
        shown = claims.reindex(columns=cols).copy()
        shown["protocol"] = shown["protocol"].fillna("").replace("", "-")
        shown["claim"] = [f"{i + 1}. " + textwrap.shorten(re.sub(r" \[\w+ protocol\]$", "", c), 72, placeholder=" ...")
                          for i, c in enumerate(shown["claim"])]
        shown["status"] = shown["status"].str.replace(" at this scale", "", regex=False)
        figs += table_pages("Claims: effect, 95 % interval, raw p and Holm-adjusted p (over the tested claims)",
                            [("", shown)], footer=footer, digits=4,
                            note="n/a in p_holm: not tested (a precondition failed: baselines not beaten, attention not "
                            "learnt, too few seeds), so not in Holm's family. Full sentences: the claims pages; "
                            "tables/claims.csv.")
    figs.append(_scores_figure(scores, footer, baselines))
    figs += table_pages("Scores: mean +- std over seeds, and the trivial baselines on the same images",
                        [("", summary)], footer=footer)
    figs += table_pages("PSNR gain over scratch = extra training + transfer (dB)",
                        [("", gains[[c for c in gains.columns if not c.startswith("ssim") and c != "part"]])],
                        footer=footer,
                        note="psnr_gain: condition - scratch (for scratch-long: the extra training); transfer: "
                        "condition - scratch-long; paired by seed, 95 % t-intervals over seeds. SSIM gains: "
                        "tables/gains.csv.")
    if models is not None and not models.empty:
        shown = models.drop(columns=[c for c in ("target", "condition", "seed") if c in models])
        figs += table_pages("Per model: PSNR (dB) and baseline; attention entropy / uniform per stage", [("", shown)],
                            footer=footer, note="Baseline: the best trivial restoration on the same images. H/Hmax: "
                            "attention entropy / uniform attention's (1 = uniform), mean over blocks and heads; "
                            "max(1-H/Hmax): its largest 1 - H/Hmax over the stages.")
    if design is not None and not design.empty:
        figs += table_pages("Design: training steps and patches per condition (pre-training included), data overlap",
                            [("", design.drop(columns=["pretrain_data", "target_data"]).rename(
                                columns={"pretrain_includes_target_data": "pre-training includes target data"}))],
                            footer=footer)
    for title, panels, edges in heatmaps:
        figs.append(_heatmaps_figure(title, panels, edges, footer))
    for title, series, control in curves:
        figs.append(_curves_figure(title, series, control, "same-layer CKA", footer))
    if not locality.empty:
        fig, ax = plt.subplots(figsize=A4)
        # one value per (model, seed, stage): a model appears once per contrast it is in, and plain and shifted
        # windows are averaged, so that the bars are the spread over seeds only
        per_seed = (locality.drop_duplicates(["model", "stage", "kind"])
                    .groupby(["model", "stage"], as_index=False)["locality"].mean())
        groups = per_seed.assign(model=per_seed["model"].str.replace(r"-s\d+$", "", regex=True))
        sns.pointplot(data=groups, x="stage", y="locality", hue="model", errorbar="sd", dodge=0.3, ax=ax,
                      capsize=0.1)
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1), frameon=False)
        fig.subplots_adjust(right=0.8)
        ax.axhline(1.0, color="0.4", ls=":", lw=1.2)
        ax.text(0.02, 1.0, " uniform attention", color="0.3", fontsize=8, va="bottom", transform=ax.get_yaxis_transform())
        ax.set_ylabel("attention distance / uniform-attention distance")
        ax.set_title("Attention locality per stage: mean over blocks, heads, window kinds and seeds (bars: sd over "
                     "seeds);\n"
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
