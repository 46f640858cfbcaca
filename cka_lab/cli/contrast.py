"""``cka-lab contrast A B``: two models side by side -- CKA maps, their difference, cross-model CKA,
attention distances -- as figures and tables in one folder."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cka_lab.cli._common import (add_analysis_args, check_probe_args, check_probe_bounds, probe_tasks, spec_from_args,
                                 writable_dir)
from cka_lab.io import write_csv, write_json


def add_probe_args(p: argparse.ArgumentParser) -> None:
    """The options shared by ``contrast`` and ``report``: what to probe and how."""
    add_analysis_args(p, n_samples=128)
    p.add_argument("--same-task", action="store_true",
                   help="refuse models probed on different heads (a pre-trained vs scratch contrast)")
    p.add_argument("--no-attention", action="store_true", help="skip attention statistics")
    p.add_argument("--no-controls", action="store_true", help="skip the probe-draw control")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "contrast",
        help="contrast two checkpoints: CKA maps, difference, cross-model CKA, attention distance",
        description="Run both models once over the probe crops and write, to --out: side-by-side layer x layer "
        "CKA heatmaps, their difference, the cross-model CKA heatmap, attention-distance curves per block with "
        "bands over heads, and the numbers behind them as CSV and JSON.",
    )
    p.add_argument("ckpt_a", metavar="A", help="first checkpoint (e.g. the from-scratch model)")
    p.add_argument("ckpt_b", metavar="B", help="second checkpoint (e.g. the pre-trained model)")
    add_probe_args(p)
    p.add_argument("--out", default="out/contrast", help="output folder (default out/contrast)")
    p.set_defaults(func=run)


def model_label(path: str | Path) -> str:
    return Path(path).stem


@dataclass(frozen=True)
class ProbedCheckpoint:
    """A loaded checkpoint and the head it is probed on: one side of a contrast."""

    path: str
    model: Any
    task: str


def probed_pair(args: argparse.Namespace, model_a, model_b, ckpts: tuple[str, str], device="cpu"):
    """The two sides of a contrast from loaded models and the options (``--task``), the probe sizes checked
    against the memory of ``device`` -> (ProbedCheckpoint, ProbedCheckpoint)."""
    task_a, task_b = probe_tasks(args.task, model_a, model_b)
    check_probe_bounds(args, [(model_a, task_a), (model_b, task_b)], device)
    return ProbedCheckpoint(str(ckpts[0]), model_a, task_a), ProbedCheckpoint(str(ckpts[1]), model_b, task_b)


def run_contrast(a: ProbedCheckpoint, b: ProbedCheckpoint, spec, *, same_task: bool = False, device="cpu",
                 progress: bool | None = None, attention_cache=None):
    """Contrast two loaded checkpoints as ``spec`` (an AnalysisSpec) says -> Contrast, labelled by file name.

    ``attention_cache`` (an :class:`~cka_lab.analysis.attention_cache.AttentionCache`) is shared by the
    contrasts of one command, so that each model's attention statistics are measured once."""
    from cka_lab.analysis.contrast import contrast_models

    name_a, name_b = model_label(a.path), model_label(b.path)
    if name_a == name_b:
        name_a, name_b = f"{name_a} (A)", f"{name_b} (B)"
    result = contrast_models(a.model, b.model, spec, task_a=a.task, task_b=b.task, name_a=name_a, name_b=name_b,
                             same_task=same_task, device=device, progress=progress, attention_cache=attention_cache)
    result.meta.update({
        "ckpt_a": a.path, "ckpt_b": b.path,
        "checkpoint_a": getattr(a.model, "checkpoint_info", {}), "checkpoint_b": getattr(b.model, "checkpoint_info", {}),
    })
    return result


def _save_table(df, path: Path, *, index: bool = True) -> Path:
    """Every CSV of a contrast is written here (one place for the write): atomically, no link followed."""
    return write_csv(path, df, index=index)


def _labelled(matrix_table, protocol: str):
    """A layer x layer table whose top-left cell names the protocol (``pd.read_csv(index_col=0)`` reads it)."""
    table = matrix_table.copy()
    table.index.name = f"layer ({protocol})"
    return table


def _with_protocol(df, c):
    return df.assign(estimator=c.cross.estimator, layer_set=c.cross.layer_set, features=c.cross.features,
                     n_samples=c.cross.n_samples)


def write_contrast(result, out: Path) -> list[Path]:
    """Every figure and table of a Contrast into ``out`` -> the paths written."""
    from cka_lab.models.names import short_layer_name, stage_starts
    from cka_lab.plots import HeatmapPanel, plot_cka_heatmaps, save_figure
    from cka_lab.plots.contrast import plot_attention_distance, plot_cka_difference

    written: list[Path] = []
    short = [short_layer_name(n) for n in result.within_a.layers_a]
    short_b = [short_layer_name(n) for n in result.within_b.layers_a]
    st_a, st_b = stage_starts(result.within_a.layers_a), stage_starts(result.within_b.layers_a)
    what = contrast_caption(result)
    fig = plot_cka_heatmaps(
        [HeatmapPanel(result.within_a.matrix, short, short, result.name_a, result.name_a,
                      f"{result.name_a} ({result.cross.task_a})", st_a, st_a),
         HeatmapPanel(result.within_b.matrix, short_b, short_b, result.name_b, result.name_b,
                      f"{result.name_b} ({result.cross.task_b})", st_b, st_b)],
        suptitle=f"linear CKA within each model ({what})",
    )
    for ext in ("png", "svg"):
        written.append(save_figure(fig, out / f"cka_side_by_side.{ext}"))
    fig = plot_cka_heatmaps(
        [HeatmapPanel(result.cross.matrix, short, short_b, result.name_a, result.name_b,
                      f"{result.name_a} vs {result.name_b}", st_a, st_b)],
        suptitle=f"linear CKA across models ({what})",
    )
    written.append(save_figure(fig, out / "cka_cross.png"))
    p = result.protocol
    written.append(_save_table(_labelled(result.within_a.table(), p), out / "cka_a.csv"))
    written.append(_save_table(_labelled(result.within_b.table(), p), out / "cka_b.csv"))
    written.append(_save_table(_labelled(result.cross.table(), p), out / "cka_cross.csv"))
    if result.comparable:
        fig = plot_cka_difference(result.difference, short, name_a=result.name_a, name_b=result.name_b, stages=st_a,
                                  stated=result.difference_decision().stated,
                                  title=f"CKA({result.name_a}) - CKA({result.name_b})\n{p}")
        written.append(save_figure(fig, out / "cka_difference.png"))
        from cka_lab.plots import cka_table

        layers = result.within_a.layers_a
        written.append(_save_table(_labelled(cka_table(result.difference, layers, layers), p), out / "cka_difference.csv"))
        written.append(_save_table(_with_protocol(difference_long_table(result), result), out / "cka_difference_long.csv",
                                   index=False))
    written.append(_save_table(_with_protocol(result.stage_table(), result), out / "stages.csv", index=False))
    if result.attention_a is not None:
        fig = plot_attention_distance(result.attention, title=f"attention locality per block (N={result.cross.n_samples})")
        written.append(save_figure(fig, out / "attention_distance.png"))
        from cka_lab.plots.attention import plot_locality

        fig = plot_locality(result.attention_layers, title=f"attention against uniform attention per stage "
                                                           f"(N={result.cross.n_samples})")
        written.append(save_figure(fig, out / "attention_locality.png"))
        written.append(_save_table(result.attention.assign(n_samples=result.cross.n_samples), out / "attention_heads.csv",
                                   index=False))
        written.append(_save_table(result.attention_layers.assign(n_samples=result.cross.n_samples),
                                   out / "attention_layers.csv", index=False))
    written.append(write_json(out / "summary.json", result.summary()))  # strict JSON: NaN written as null
    return written


def contrast_caption(result) -> str:
    """The protocol line of a contrast's figures: estimator, layer set, features, N, crop sizes."""
    c = result.cross
    size = f"{c.patch}px" if c.meta.get("patch_b", c.patch) == c.patch else f"{c.patch}/{c.meta['patch_b']}px"
    return f"{result.protocol}, crops of {size}"


def difference_long_table(result):
    """One row per layer pair: the difference, its interval and the controls, and whether it is stated."""
    import numpy as np
    import pandas as pd

    dec = result.difference_decision()
    layers = result.within_a.layers_a
    rows = []
    for i, a in enumerate(layers):
        for j, b in enumerate(layers):
            rows.append({
                "layer_i": a, "layer_j": b, "cka_a": result.within_a.matrix[i, j], "cka_b": result.within_b.matrix[i, j],
                "difference": dec.effect[i, j], "low": dec.low[i, j], "high": dec.high[i, j],
                "p": None if dec.p is None or not np.isfinite(dec.p[i, j]) else float(dec.p[i, j]),
                "p_adjusted": None if dec.q is None or not np.isfinite(dec.q[i, j]) else float(dec.q[i, j]),
                "probe_draw_a": None if result.control_a is None else result.control_a[i, j],
                "probe_draw_b": None if result.control_b is None else result.control_b[i, j],
                "seed_to_seed": None if result.seed_control is None else result.seed_control[i, j],
                "stated": bool(dec.stated[i, j]),
            })
    return pd.DataFrame(rows)


def print_contrast(result) -> None:
    s = result.summary()
    print(f"{result.name_a} [{s['arch_a']}, {s['task_a']}] vs {result.name_b} [{s['arch_b']}, {s['task_b']}]: "
          f"{contrast_caption(result)}")
    print(f"  mean CKA within {result.name_a} {s['mean_cka_a']:.3f}, within {result.name_b} {s['mean_cka_b']:.3f}, "
          f"across {s['mean_cross_cka']:.3f}"
          + (f" (same layer {s['mean_cross_same_layer_cka']:.3f})" if "mean_cross_same_layer_cka" in s else ""))
    from cka_lab.analysis.findings import console_findings

    for line in console_findings(result):
        print(f"  {line}")


#: Every file ``contrast`` may write into its folder (one set: an earlier run's file the new set lacks is removed).
OUTPUT_FILES = ("cka_side_by_side.png", "cka_side_by_side.svg", "cka_cross.png", "cka_a.csv", "cka_b.csv",
                "cka_cross.csv", "cka_difference.png", "cka_difference.csv", "cka_difference_long.csv", "stages.csv",
                "attention_distance.png", "attention_locality.png", "attention_heads.csv", "attention_layers.csv",
                "summary.json")


def run(args: argparse.Namespace) -> int:
    import contextlib

    from cka_lab.cli._common import Session
    from cka_lab.io import folder_lock
    from cka_lab.io.output_set import output_set

    check_probe_args(args)
    with Session(args.device) as session, contextlib.ExitStack() as held:
        out = Path(args.out)
        if session.writes:  # the folder is locked from before the work until its files are in place
            held.enter_context(folder_lock(writable_dir(out)))
        from cka_lab.models import load_model

        spec = spec_from_args(args, attention=not args.no_attention, controls=not args.no_controls)
        side_a, side_b = probed_pair(args, load_model(args.ckpt_a), load_model(args.ckpt_b), (args.ckpt_a, args.ckpt_b),
                                     session.device)
        result = run_contrast(side_a, side_b, spec, same_task=args.same_task, device=session.device)
        if not session.writes:
            return 0
        with output_set(out, OUTPUT_FILES) as staging:  # all files, or (on a failure) none: never a mix of runs
            written = [out / p.name for p in write_contrast(result, staging)]
    print_contrast(result)
    print(f"  wrote {len(written)} files to {out}/ (cka_side_by_side.png, cka_difference.png, cka_cross.png, "
          "attention_distance.png, CSV tables, summary.json)")
    return 0
