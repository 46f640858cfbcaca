"""A PDF a researcher can send: title page with provenance, then per contrast the CKA maps, their
difference, cross-model CKA, attention distances, the tables behind them, and a findings page.

Pages are matplotlib figures written with ``PdfPages`` (no LaTeX, no extra dependency). Findings are
generated from the measured numbers only, so a report never claims what its data do not show.
"""

from __future__ import annotations

import hashlib
import os
import platform
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure

from cka_lab.models.names import short_layer_name, stage_starts
from cka_lab.analysis.contrast import Contrast
from cka_lab.analysis.findings import contrast_attention_findings as attention_findings  # noqa: F401 (kept name)
from cka_lab.analysis.findings import contrast_findings as findings
from cka_lab.errors import CkaLabError
from cka_lab.io import atomic_write
from cka_lab.plots import HeatmapPanel, plot_cka_heatmaps
from cka_lab.plots.contrast import plot_attention_distance, plot_cka_difference
from cka_lab.reports.pages import A4_LANDSCAPE, table_pages

__all__ = ["ModelInfo", "findings", "write_report", "model_info"]



@dataclass
class ModelInfo:
    """One analysed checkpoint, as the title page lists it."""

    name: str
    path: str
    arch: str
    tasks: Sequence[str]
    parameters: int
    sha256: str
    meta: Mapping = field(default_factory=dict)


def _sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_info(name: str, path: str | os.PathLike, model) -> ModelInfo:
    """Describe a loaded model (``load_model`` sets ``checkpoint_info``) for the title page."""
    meta = dict(getattr(model, "checkpoint_info", {}) or {})
    return ModelInfo(name=name, path=str(path), arch=model.name, tasks=tuple(model.tasks),
                     parameters=sum(p.numel() for p in model.parameters()), sha256=_sha256(path), meta=meta)


def _val_text(meta: Mapping) -> str:
    val = meta.get("val") or {}
    parts = [f"{t} {v['psnr']:.2f} dB / {v['ssim']:.4f}" for t, v in val.items() if v.get("psnr") is not None]
    return "; ".join(parts) if parts else "-"


def _text_pages(title: str, paragraphs: Sequence[str], width: int = 125) -> list[Figure]:
    """Wrapped paragraphs on as many landscape pages as they need (``"  - "`` items get a hanging indent)."""
    pages: list[Figure] = []
    fig, y = None, 0.0
    for p in paragraphs:
        indent = " " * (len(p) - len(p.lstrip(" -")))
        lines = textwrap.wrap(p, width, subsequent_indent=indent) or [""]
        if fig is None or y - 0.032 * len(lines) < 0.05:
            fig = Figure(figsize=A4_LANDSCAPE)
            head = title if not pages else f"{title} (continued)"
            fig.text(0.06, 0.93, head, fontsize=18, weight="bold", va="top")
            pages.append(fig)
            y = 0.86
        bold = not p.startswith(" ")
        for line in lines:
            fig.text(0.06, y, line, fontsize=10.5, weight="bold" if bold else None, va="top")
            y -= 0.032
        y -= 0.012
    return pages


def title_page(title: str, models: Sequence[ModelInfo], settings: Mapping[str, str]) -> Figure:
    import torch

    from cka_lab import __version__

    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"Generated {now} by cka_lab {__version__} (torch {torch.__version__}, numpy {np.__version__}, "
             f"Python {platform.python_version()}, {platform.system()} {platform.machine()})."]
    lines.append("Models")
    rows = []
    for m in models:
        meta = m.meta
        trained = f"run {meta['run']}, iteration {meta['iteration']}" if meta.get("run") else meta.get("format", "")
        rows.append(f"  {m.name}: {m.arch} ({', '.join(m.tasks)}), {m.parameters:,} parameters, "
                    f"sha256 {m.sha256[:12]}; {trained}; validation {_val_text(meta)}; file {m.path}")
    lines += rows
    lines.append("Probe data and settings")
    lines += [f"  {k}: {v}" for k, v in settings.items()]
    lines.append(
        "Method: linear CKA by the estimator named on every page -- unbiased-minibatch: the unbiased HSIC summed "
        "over resampling units (Nguyen, Raghu & Kornblith 2021); biased-full: the exact full-batch linear CKA "
        "(Kornblith et al. 2019), as the EDT authors computed their Fig. 2. Intervals: delete-one-unit jackknife over "
        "the resampling units (no seed), paired across maps. A difference is stated only where it exceeds its interval and every "
        "control. Attention distance = sum over keys of attention weight x query-key distance in input pixels, "
        "averaged over queries and images (Raghu et al. 2021)."
    )
    fig = Figure(figsize=A4_LANDSCAPE)
    wrapped = textwrap.wrap(title, 70)
    for k, part in enumerate(wrapped):
        fig.text(0.06, 0.93 - 0.045 * k, part, fontsize=18, weight="bold", va="top")
    y = 0.86 - 0.045 * (len(wrapped) - 1)
    for line in lines:
        heading = line in ("Models", "Probe data and settings")
        for part in (textwrap.wrap(line, 150, subsequent_indent="      ") or [""]):
            fig.text(0.06, y, part, fontsize=12 if heading else 9, weight="bold" if heading else None, va="top")
            y -= 0.03 if heading else 0.025
        y -= 0.008
    return fig


def contrast_pages(c: Contrast) -> list[Figure]:
    """The figures of one contrast, in report order."""
    names_a = [short_layer_name(n) for n in c.within_a.layers_a]
    names_b = [short_layer_name(n) for n in c.within_b.layers_a]
    st_a, st_b = stage_starts(c.within_a.layers_a), stage_starts(c.within_b.layers_a)
    what = _caption(c)
    pages = [plot_cka_heatmaps(
        [HeatmapPanel(c.within_a.matrix, names_a, names_a, c.name_a, c.name_a, f"{c.name_a} ({c.cross.task_a})", st_a, st_a),
         HeatmapPanel(c.within_b.matrix, names_b, names_b, c.name_b, c.name_b, f"{c.name_b} ({c.cross.task_b})", st_b, st_b)],
        suptitle=f"{c.name_a} vs {c.name_b}: linear CKA within each model ({what})",
    )]
    if c.comparable:
        pages.append(plot_cka_difference(c.difference, names_a, name_a=c.name_a, name_b=c.name_b, stages=st_a,
                                         stated=c.difference_decision().stated,
                                         title=f"{c.name_a} vs {c.name_b}: CKA({c.name_a}) - CKA({c.name_b})\n{what}"))
    pages.append(plot_cka_heatmaps(
        [HeatmapPanel(c.cross.matrix, names_a, names_b, c.name_a, c.name_b, f"{c.name_a} vs {c.name_b}", st_a, st_b)],
        suptitle=f"linear CKA across models ({what})",
    ))
    if c.attention_a is not None:
        pages.append(plot_attention_distance(c.attention, title=f"{c.name_a} vs {c.name_b}: attention locality per block "
                                                                f"(N={c.cross.n_samples})"))
        from cka_lab.plots.attention import plot_locality

        pages.append(plot_locality(c.attention_layers, title=f"{c.name_a} vs {c.name_b}: attention against uniform "
                                                             f"attention per stage (N={c.cross.n_samples})"))
    tables = [("CKA per stage (within-stage mean off the diagonal; with later stages; same layer across models)",
               c.stage_table())]
    if c.attention_a is not None:
        cols = ["model", "layer", "kind", "direction", "distance", "uniform_distance", "locality", "locality_lower",
                "locality_upper", "entropy_rel", "entropy_rel_lower", "entropy_rel_upper"]
        t = c.attention_layers
        tables.append(("Attention per stage, plain and shifted windows apart: distance (input px) against uniform "
                       "attention in the same windows; locality = distance / uniform, entropy_rel = entropy / uniform, "
                       "with intervals", t[[x for x in cols if x in t.columns]]))
    pages += table_pages(f"{c.name_a} vs {c.name_b}: numbers ({what})", tables)
    return pages


def _caption(c: Contrast) -> str:
    pa, pb = c.cross.patch, c.cross.meta.get("patch_b", c.cross.patch)
    return f"{c.protocol}, crops of {pa}px" if pa == pb else f"{c.protocol}, crops of {pa}/{pb}px"


def write_report(
    path: str | os.PathLike,
    contrasts: Sequence[Contrast],
    models: Sequence[ModelInfo],
    *,
    title: str = "cka_lab report",
    settings: Mapping[str, str] | None = None,
) -> Path:
    """Write the PDF -> its path. Pages: title, then per contrast the within-model heatmaps, the
    difference map (same layers only), the cross-model heatmap, attention distances, a table page;
    last, the findings. Written to a temp file and renamed into place, so a failure leaves no half PDF."""
    if not contrasts:
        raise CkaLabError("a report needs at least one contrast")
    path = Path(path)
    if path.suffix.lower() != ".pdf":
        raise CkaLabError(f"report path {str(path)!r} must end in .pdf")
    with atomic_write(path, "wb") as f:  # a failure (full disk, ...) leaves no half PDF and no temp file
        with PdfPages(f, metadata={"Title": title, "Creator": "cka_lab"}) as pdf:
            pdf.savefig(title_page(title, models, settings or {}))
            for c in contrasts:
                for fig in contrast_pages(c):
                    pdf.savefig(fig)
            text = []
            for c in contrasts:
                text.append(f"{c.name_a} vs {c.name_b} ({_caption(c)})")
                text += [f"  - {f}" for f in findings(c)]
            for fig in _text_pages("Findings", text):
                pdf.savefig(fig)
    return path

