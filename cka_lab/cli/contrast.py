"""``cka-lab contrast A B``: two models side by side -- CKA maps, their difference, cross-model CKA,
attention distances -- as figures and tables in one folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from cka_lab.cli._common import (
    add_device_arg,
    check_probe_args,
    parse_layers,
    probe_tasks,
    resolve_device,
    writable_dir,
)
from cka_lab.io import write_csv, write_json


def add_probe_args(p: argparse.ArgumentParser) -> None:
    """The options shared by ``contrast`` and ``report``: what to probe and how."""
    p.add_argument("--task", default=None,
                   help="head to probe: one task for both (x2) or A,B (x2,g25); default: each model's first head")
    p.add_argument("--same-task", action="store_true",
                   help="refuse models probed on different heads (a pre-trained vs scratch contrast)")
    p.add_argument("--layers", default=None,
                   help="comma-separated module names or glob patterns (default: body.layers.*.residual_group.blocks.*)")
    p.add_argument("--features", choices=("update", "output"), default="update",
                   help="update: what each block adds to the residual stream (default); output: the block output")
    p.add_argument("--no-attention", action="store_true", help="skip attention distances")
    p.add_argument("--data", default=None, help="folder of probe images (default: the images bundled with cka_lab)")
    p.add_argument("--patch", type=int, default=None, help="probe crop size (default: 48, or 96 for a downsampling head)")
    p.add_argument("--n-samples", type=int, default=128, help="number of probe crops (default 128)")
    p.add_argument("--batch-size", type=int, default=32, help="crops per batch, at least 4 (default 32)")
    p.add_argument("--seed", type=int, default=0, help="seed of the crop positions and noise (default 0)")
    add_device_arg(p)


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


def run_contrast(ckpt_a: str, ckpt_b: str, args: argparse.Namespace, *, progress: bool | None = None):
    """Load two checkpoints and contrast them with the probe options in ``args`` -> Contrast."""
    from cka_lab.analysis.compare import probe_loader
    from cka_lab.analysis.contrast import contrast_models
    from cka_lab.models import load_model

    device = resolve_device(args.device)
    model_a = load_model(ckpt_a)
    model_b = load_model(ckpt_b)
    task_a, task_b = probe_tasks(args.task, model_a, model_b)
    patch = args.patch if args.patch is not None else max(
        48, model_a.config.pad_multiple(task_a), model_b.config.pad_multiple(task_b))
    layers = parse_layers(args.layers)
    batches, label = probe_loader(args.data, patch=patch, n_samples=args.n_samples, seed=args.seed,
                                  batch_size=args.batch_size)
    name_a, name_b = model_label(ckpt_a), model_label(ckpt_b)
    if name_a == name_b:
        name_a, name_b = f"{name_a} (A)", f"{name_b} (B)"
    result = contrast_models(
        model_a, model_b, batches, task_a=task_a, task_b=task_b, layers=layers, name_a=name_a, name_b=name_b,
        features=args.features, attention=not args.no_attention, same_task=args.same_task, seed=args.seed,
        device=device, data_label=label, progress=progress,
    )
    result.meta.update({
        "ckpt_a": str(ckpt_a), "ckpt_b": str(ckpt_b),
        "checkpoint_a": getattr(model_a, "checkpoint_info", {}), "checkpoint_b": getattr(model_b, "checkpoint_info", {}),
    })
    return result


def write_contrast(result, out: Path) -> list[Path]:
    """Every figure and table of a Contrast into ``out`` -> the paths written."""
    from cka_lab.analysis.compare import short_layer_name, stage_starts
    from cka_lab.plots import HeatmapPanel, plot_cka_heatmaps, save_figure
    from cka_lab.plots.contrast import plot_attention_distance, plot_cka_difference

    written: list[Path] = []
    short = [short_layer_name(n) for n in result.within_a.layers_a]
    short_b = [short_layer_name(n) for n in result.within_b.layers_a]
    st_a, st_b = stage_starts(result.within_a.layers_a), stage_starts(result.within_b.layers_a)
    what = f"layer {result.cross.features}s, {result.cross.n_samples} crops of {result.cross.patch}px"
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
    write_csv(out / "cka_a.csv", result.within_a.table())
    write_csv(out / "cka_b.csv", result.within_b.table())
    write_csv(out / "cka_cross.csv", result.cross.table())
    written += [out / "cka_a.csv", out / "cka_b.csv", out / "cka_cross.csv"]
    if result.comparable:
        fig = plot_cka_difference(result.difference, short, name_a=result.name_a, name_b=result.name_b, stages=st_a)
        written.append(save_figure(fig, out / "cka_difference.png"))
        from cka_lab.plots import cka_table

        write_csv(out / "cka_difference.csv", cka_table(result.difference, result.within_a.layers_a, result.within_a.layers_a))
        written.append(out / "cka_difference.csv")
    write_csv(out / "stages.csv", result.stage_table(), index=False)
    written.append(out / "stages.csv")
    if result.attention_a is not None:
        fig = plot_attention_distance(result.attention, title="attention distance per block")
        written.append(save_figure(fig, out / "attention_distance.png"))
        write_csv(out / "attention_heads.csv", result.attention, index=False)
        write_csv(out / "attention_layers.csv", result.attention_layers, index=False)
        written += [out / "attention_heads.csv", out / "attention_layers.csv"]
    write_json(out / "summary.json", result.summary())  # strict JSON: NaN written as null
    written.append(out / "summary.json")
    return written


def print_contrast(result) -> None:
    s = result.summary()
    print(f"{result.name_a} [{s['arch_a']}, {s['task_a']}] vs {result.name_b} [{s['arch_b']}, {s['task_b']}]: "
          f"{s['n_samples']} crops of {s['patch']}px, layer {s['features']}s")
    print(f"  mean CKA within {result.name_a} {s['mean_cka_a']:.3f}, within {result.name_b} {s['mean_cka_b']:.3f}, "
          f"across {s['mean_cross_cka']:.3f}"
          + (f" (same layer {s['mean_cross_same_layer_cka']:.3f})" if "mean_cross_same_layer_cka" in s else ""))
    if "attention_distance_a" in s:
        da = ", ".join(f"{v:.1f}" for v in s["attention_distance_a"].values())
        db = ", ".join(f"{v:.1f}" for v in s["attention_distance_b"].values())
        print(f"  attention distance per stage (px): {result.name_a} [{da}]  {result.name_b} [{db}]")


def run(args: argparse.Namespace) -> int:
    check_probe_args(args)
    parse_layers(args.layers)
    out = writable_dir(Path(args.out))
    result = run_contrast(args.ckpt_a, args.ckpt_b, args)
    written = write_contrast(result, out)
    print_contrast(result)
    print(f"  wrote {len(written)} files to {out}/ (cka_side_by_side.png, cka_difference.png, cka_cross.png, "
          "attention_distance.png, CSV tables, summary.json)")
    return 0
