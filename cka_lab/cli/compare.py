"""``cka-lab compare A B``: layer-by-layer CKA between two checkpoints, as heatmap, CSV and JSON."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import numpy as np

from cka_lab.cli._common import (Session, add_analysis_args, check_probe_args, check_probe_bounds, probe_tasks,
                                 spec_from_args, writable_dir)
from cka_lab.io import folder_lock, write_csv, write_json
from cka_lab.io.output_set import output_set


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="CKA between every layer of two checkpoints (heatmap, CSV, JSON)",
        description="Linear CKA between the layers of two EDT checkpoints (cka_lab or official .pth; same or "
        "different architectures) on the same probe crops: the streaming unbiased minibatch estimator (default) "
        "or the exact biased full-batch one (--estimator biased-full), on cka_lab's layers or the EDT authors' "
        "(--layers paper).",
    )
    p.add_argument("ckpt_a", metavar="A", help="first checkpoint")
    p.add_argument("ckpt_b", metavar="B", help="second checkpoint")
    p.add_argument("--arch-a", default=None, help="architecture of A (default: inferred from the weights)")
    p.add_argument("--arch-b", default=None, help="architecture of B (default: inferred from the weights)")
    add_analysis_args(p, n_samples=256)
    p.add_argument("--out", default="out/compare", help="output folder (default out/compare)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cka_lab.analysis.compare import compare_models
    from cka_lab.models.names import short_layer_name, stage_starts
    from cka_lab.models import load_model
    from cka_lab.plots import plot_cka_heatmap

    check_probe_args(args)
    spec = spec_from_args(args, attention=False, controls=False)
    with Session(args.device) as session, contextlib.ExitStack() as held:
        out = Path(args.out)
        if session.writes:  # the folder is locked from before the work until its files are in place
            held.enter_context(folder_lock(writable_dir(out)))
        model_a = load_model(args.ckpt_a, arch=args.arch_a)
        model_b = load_model(args.ckpt_b, arch=args.arch_b)
        task_a, task_b = probe_tasks(args.task, model_a, model_b)
        check_probe_bounds(args, [(model_a, task_a), (model_b, task_b)], session.device)
        name_a, name_b = Path(args.ckpt_a).stem, Path(args.ckpt_b).stem
        if name_a == name_b:
            name_a, name_b = f"{name_a} (A)", f"{name_b} (B)"
        result = compare_models(model_a, model_b, spec, task_a=task_a, task_b=task_b, name_a=name_a, name_b=name_b,
                                device=session.device)
        if not session.writes:
            return 0
        result.meta.update({"ckpt_a": str(args.ckpt_a), "ckpt_b": str(args.ckpt_b)})
        fig = plot_cka_heatmap(
            result.matrix, [short_layer_name(n) for n in result.layers_a], [short_layer_name(n) for n in result.layers_b],
            name_a=f"{name_a} ({result.arch_a}, {task_a})", name_b=f"{name_b} ({result.arch_b}, {task_b})",
            title=f"linear CKA: {result.protocol}, crops of {result.patch}px",
            stages_a=stage_starts(result.layers_a), stages_b=stage_starts(result.layers_b),
        )
        with output_set(out, OUTPUT_FILES) as staging:  # all files, or (on a failure) none: never a mix of runs
            _write(staging, fig, result)
    _print_summary(result, result.summary(), out)
    return 0


#: Every file ``compare`` may write into its folder (one set: an earlier run's file the new set lacks is removed).
OUTPUT_FILES = ("cka.png", "cka.svg", "cka.csv", "cka_long.csv", "summary.json")


def _write(out: Path, fig, result) -> None:
    """Every file of ``compare``, written in this one place."""
    from cka_lab.plots import save_figure

    for ext in ("png", "svg"):
        save_figure(fig, out / f"cka.{ext}")
    table = result.table()
    table.index.name = f"layer ({result.protocol})"
    write_csv(out / "cka.csv", table)
    if result.ci_low is not None:
        long = result.long_table().assign(estimator=result.estimator, layer_set=result.layer_set,
                                          features=result.features, n_samples=result.n_samples)
        write_csv(out / "cka_long.csv", long, index=False)
    write_json(out / "summary.json", result.summary())  # strict JSON: NaN written as null


def _print_summary(result, summary: dict, out: Path) -> None:
    print(f"{result.name_a} [{result.arch_a}, {result.task_a}] vs {result.name_b} [{result.arch_b}, {result.task_b}]: "
          f"{len(result.layers_a)}x{len(result.layers_b)} layers; {result.protocol} ({result.n_units} units)")
    if "mean_diagonal_cka" in summary:
        low = summary["min_diagonal"]
        print(f"  same-layer CKA: mean {summary['mean_diagonal_cka']:.3f}, lowest {low['cka']:.3f} at {low['layer']}")
    m = result.matrix
    print(f"  all pairs: mean {np.nanmean(m):.3f}, min {np.nanmin(m):.3f}, max {np.nanmax(m):.3f}")
    print(f"  wrote {out / 'cka.png'}, cka.svg, cka.csv, summary.json")
