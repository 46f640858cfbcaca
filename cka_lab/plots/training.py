"""A training run at a glance: loss, validation PSNR, and whether attention is learning.

:func:`plot_training_log` takes the CSV logs of a run as DataFrames (``train_log.csv``,
``val_log.csv`` and ``attn_heads.csv``; see :mod:`cka_lab.train.diagnostics`) and draws eight panels:

1. training L1 loss (log scale);
2. validation PSNR per task;
3. learning rate;
4. q, k and v update-to-weight ratios per log interval (log scale; the mean over stages, the band
   spanning the stages);
5. attention focus per stage, ``1 - H/Hmax`` on a log scale (0 is uniform attention: it has learnt
   nothing), plain blocks solid and shifted blocks dashed (the legend gives the last ``H/Hmax``);
6. the fraction of heads at or below 0.95 of uniform entropy ("learnt") per stage, plain solid,
   shifted dashed;
7. logit spread per stage (within-row std of the pre-softmax scores), plain and shifted;
8. every head at the last logged iteration: relative entropy by stage/block (rows) and
   direction/head (columns), from ``attn_heads.csv``.

Logs written without diagnostics leave panels 4-8 with a note; logs of older versions (one
``s{i}_attn_entropy_rel`` column per stage, plain and shifted blocks averaged) are drawn as such.
Figures are built with ``matplotlib.figure.Figure`` directly (no pyplot state); save with
:func:`cka_lab.plots.save_figure`.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cka_lab.errors import CkaLabError

__all__ = ["plot_training_log", "log_stages", "numeric_log"]

_STAGE = re.compile(r"^s(\d+)_(?:plain_entropy_rel|attn_entropy_rel)$")
_PARTS = {"q": "#1f77b4", "k": "#d62728", "v": "#7f7f7f"}
_KINDS = {"plain": "-", "shifted": "--"}


def log_stages(train_log: pd.DataFrame) -> list[int]:
    """Stages with diagnostic columns in a training log (``s{i}_plain_entropy_rel``, or the older
    ``s{i}_attn_entropy_rel``), sorted."""
    return sorted({int(m.group(1)) for c in train_log.columns if (m := _STAGE.match(str(c)))})


def _kind_columns(tl: pd.DataFrame, stat: str, s: int) -> list[tuple[str, str]]:
    """``(label, column)`` of stage ``s``'s statistic: plain and shifted where logged, else the old mean."""
    cols = [(k, f"s{s}_{k}_{stat}") for k in _KINDS if f"s{s}_{k}_{stat}" in tl.columns]
    old = {"entropy_rel": f"s{s}_attn_entropy_rel", "logit_spread": f"s{s}_logit_spread"}.get(stat)
    if not cols and old in tl.columns:
        cols = [("both", old)]
    return cols


def numeric_log(log: pd.DataFrame, keep: tuple[str, ...] = ()) -> pd.DataFrame:
    """``log`` with every column but ``keep`` numeric: text, garbage and +-inf become NaN (a diverged run
    logs inf/NaN losses), rows without an iteration number are dropped."""
    out = log.copy()
    for col in out.columns:
        if col not in keep:
            out[col] = pd.to_numeric(out[col], errors="coerce")
    num = [c for c in out.columns if c not in keep]
    out[num] = out[num].replace([np.inf, -np.inf], np.nan)
    return out[out["iteration"].notna()] if "iteration" in out.columns else out


def _note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def _has(df: pd.DataFrame, cols: list[str]) -> bool:
    return all(c in df.columns for c in cols) and not df[cols].isna().all().all()


def _panel_stat(ax, tl, it, stages, palette, stat: str, title: str, *, focus: bool = False) -> None:
    ax.set_title(title)
    drawn = False
    for s, color in zip(stages, palette):
        for kind, col in _kind_columns(tl, stat, s):
            vals = tl[col].to_numpy(dtype=float)
            if np.isnan(vals).all():
                continue
            last = vals[~np.isnan(vals)][-1]
            y = np.clip(1.0 - vals, 1e-7, None) if focus else vals
            label = f"s{s} {kind}" + (f": H/Hmax {last:.4f}" if focus else f": {last:.2f}")
            ax.plot(it, y, color=color, lw=1.5, ls=_KINDS.get(kind, "-"), label=label)
            drawn = True
    if not drawn:
        _note(ax, "no attention diagnostics in this log\n(schedule.diagnostics = true)")
        return
    if focus:
        ax.set_yscale("log")
    ax.legend(fontsize=6.5, frameon=False, ncol=2, title="last value", title_fontsize=6.5)


def _panel_heads(fig, ax, heads: pd.DataFrame | None) -> None:
    ax.set_title("every head, last log row: H/Hmax")
    need = {"iteration", "stage", "block", "direction", "head", "entropy_rel"}
    if heads is None or heads.empty or not need <= set(heads.columns):
        _note(ax, "no attn_heads.csv in this run")
        return
    last = heads[heads["iteration"] == heads["iteration"].max()]
    grid = last.pivot_table(index=["stage", "block"], columns=["direction", "head"], values="entropy_rel")
    im = ax.imshow(grid.to_numpy(dtype=float), cmap="magma", vmin=min(0.5, float(np.nanmin(grid.to_numpy()))),
                   vmax=1.0, aspect="auto", interpolation="nearest")
    ax.set_yticks(range(len(grid.index)), [f"s{s}b{b}{'*' if b % 2 else ''}" for s, b in grid.index], fontsize=5)
    ax.set_xticks(range(len(grid.columns)), [f"{'hv'[d]}{h}" for d, h in grid.columns], fontsize=5)
    ax.set_xlabel(f"direction (h / v) and head; * shifted block; iteration {int(last['iteration'].iloc[0])}")
    fig.colorbar(im, ax=ax, shrink=0.8, label="H/Hmax (1 = uniform)")


def plot_training_log(train_log: pd.DataFrame, val_log: pd.DataFrame | None = None, *, title: str = "",
                      heads: pd.DataFrame | None = None) -> Figure:
    """Eight panels of a run's logs (see the module docstring). ``train_log`` needs ``iteration`` and ``loss``."""
    for col in ("iteration", "loss"):
        if col not in train_log.columns:
            raise CkaLabError(f"the training log has no {col!r} column: is it a cka-lab train_log.csv?")
    if train_log.empty:
        raise CkaLabError("the training log has no rows yet")
    tl = numeric_log(train_log)
    if heads is not None:
        heads = numeric_log(heads, keep=("kind",))
    if tl.empty:
        raise CkaLabError("the training log has no row with an iteration number: is it a cka-lab train_log.csv?")
    tl = tl.sort_values("iteration")
    if val_log is not None and {"iteration", "task", "psnr"} <= set(val_log.columns):
        val_log = numeric_log(val_log, keep=("task",))
        val_log = val_log[val_log["psnr"].notna()]
    it = tl["iteration"].to_numpy()
    stages = log_stages(tl)
    palette = sns.color_palette("viridis", max(1, len(stages)))

    fig = Figure(figsize=(19, 8), layout="constrained")
    axes = fig.subplots(2, 4)
    (ax_loss, ax_val, ax_lr, ax_upd), (ax_ent, ax_learnt, ax_spread, ax_heads) = axes
    if title:
        fig.suptitle(title, fontsize=13)

    loss_cols = [c for c in tl.columns if c.startswith("loss_")]
    if len(loss_cols) > 1:
        for c in loss_cols:
            ax_loss.plot(it, tl[c], lw=1, alpha=0.7, label=c.removeprefix("loss_"))
    ax_loss.plot(it, tl["loss"], color="black", lw=1.6, label="mean" if len(loss_cols) > 1 else None)
    if (tl["loss"] > 0).any():
        ax_loss.set_yscale("log")
    if tl["loss"].isna().any():
        ax_loss.text(0.02, 0.02, f"{int(tl['loss'].isna().sum())} rows without a finite loss (not drawn)",
                     transform=ax_loss.transAxes, fontsize=8, color="#d62728")
    ax_loss.set_title("training loss (L1)")
    if len(loss_cols) > 1:
        ax_loss.legend(fontsize=8, frameon=False)

    if val_log is not None and not val_log.empty and {"iteration", "task", "psnr"} <= set(val_log.columns):
        for task, g in val_log.sort_values("iteration").groupby("task", sort=True):
            ax_val.plot(g["iteration"], g["psnr"], marker="o", ms=4, lw=1.4, label=str(task))
            last = g.iloc[-1]
            ax_val.annotate(f"{last['psnr']:.2f}", (last["iteration"], last["psnr"]), textcoords="offset points",
                            xytext=(4, 4), fontsize=8)
        ax_val.set_title("validation PSNR (dB)")
        ax_val.legend(fontsize=8, frameon=False, title="task", title_fontsize=8)
    else:
        ax_val.set_title("validation PSNR (dB)")
        _note(ax_val, "no validation in this run")

    if "lr" in tl.columns:
        ax_lr.plot(it, tl["lr"], color="#2ca02c", lw=1.6, drawstyle="steps-post")
        ax_lr.set_title("learning rate")
        ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        ax_lr.set_ylim(bottom=0)
    else:
        _note(ax_lr, "no lr column")

    _panel_stat(ax_ent, tl, it, stages, palette, "entropy_rel",
                "attention focus 1 - H/Hmax (0 = uniform); plain -, shifted --", focus=True)
    _panel_stat(ax_learnt, tl, it, stages, palette, "learnt", "fraction of heads with H/Hmax <= 0.95")
    if ax_learnt.has_data():
        ax_learnt.set_ylim(-0.02, 1.02)
    _panel_stat(ax_spread, tl, it, stages, palette, "logit_spread", "attention logit spread (std within a row)")
    _panel_heads(fig, ax_heads, heads)

    ax_upd.set_title("update / weight per log interval (q, k, v)")
    upd = {p: [f"s{s}_{p}_update_ratio" for s in stages] for p in _PARTS}
    if stages and all(_has(tl, cols) for cols in upd.values()):
        for p, color in _PARTS.items():
            vals = tl[upd[p]].to_numpy(dtype=float)
            ax_upd.plot(it, np.nanmean(vals, axis=1), color=color, lw=1.8, label=p)
            ax_upd.fill_between(it, np.nanmin(vals, axis=1), np.nanmax(vals, axis=1), color=color, alpha=0.18, lw=0)
        ax_upd.set_yscale("log")
        ax_upd.legend(fontsize=8, frameon=False, loc="upper right", title="mean over stages\nband: min-max", title_fontsize=7)
    else:
        _note(ax_upd, "no update ratios in this log")

    for ax in axes.flat:
        if ax.has_data() and ax is not ax_heads:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("iteration")
            ax.grid(True, color="0.92", lw=0.8)
            ax.set_axisbelow(True)
            for side in ("top", "right"):
                ax.spines[side].set_visible(False)
    return fig
