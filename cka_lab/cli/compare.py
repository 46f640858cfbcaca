"""``cka-lab compare A B``: layer-by-layer CKA between two checkpoints, as heatmap, CSV and JSON."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from cka_lab.cli._common import (
    add_device_arg,
    check_probe_args,
    parse_layers,
    probe_tasks,
    resolve_device,
    writable_dir,
)
from cka_lab.io import write_csv, write_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="CKA between every layer of two checkpoints (heatmap, CSV, JSON)",
        description="Streaming minibatch linear CKA (unbiased HSIC) between the layers of two EDT checkpoints "
        "(cka_lab or official .pth; same or different architectures) on the same probe crops.",
    )
    p.add_argument("ckpt_a", metavar="A", help="first checkpoint")
    p.add_argument("ckpt_b", metavar="B", help="second checkpoint")
    p.add_argument("--arch-a", default=None, help="architecture of A (default: inferred from the weights)")
    p.add_argument("--arch-b", default=None, help="architecture of B (default: inferred from the weights)")
    p.add_argument("--task", default=None,
                   help="head to probe: one task for both (x2) or A,B (x2,g25); default: each model's first head")
    p.add_argument("--layers", default=None,
                   help="comma-separated module names or glob patterns for both models "
                        "(default: body.layers.*.residual_group.blocks.*)")
    p.add_argument("--features", choices=("update", "output"), default="update",
                   help="update: what each layer adds to the residual stream (output - input, the default); "
                        "output: the layer's output itself, which in EDT carries the patch embedding through "
                        "every block")
    p.add_argument("--data", default=None, help="folder of probe images (default: the images bundled with cka_lab)")
    p.add_argument("--patch", type=int, default=None, help="probe crop size (default: 48, or 96 for a downsampling head)")
    p.add_argument("--n-samples", type=int, default=256, help="number of probe crops (default 256)")
    p.add_argument("--batch-size", type=int, default=32, help="crops per batch, at least 4 (default 32)")
    p.add_argument("--seed", type=int, default=0, help="seed of the crop positions and noise (default 0)")
    p.add_argument("--out", default="out/compare", help="output folder (default out/compare)")
    add_device_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cka_lab.analysis.compare import compare_models, probe_loader, short_layer_name, stage_starts
    from cka_lab.models import load_model
    from cka_lab.plots import plot_cka_heatmap, save_figure

    check_probe_args(args)
    parse_layers(args.layers)
    device = resolve_device(args.device)
    out = writable_dir(Path(args.out))
    model_a = load_model(args.ckpt_a, arch=args.arch_a)
    model_b = load_model(args.ckpt_b, arch=args.arch_b)
    task_a, task_b = probe_tasks(args.task, model_a, model_b)
    patch = args.patch if args.patch is not None else max(
        48, model_a.config.pad_multiple(task_a), model_b.config.pad_multiple(task_b))
    layers = parse_layers(args.layers)
    batches, label = probe_loader(
        args.data, patch=patch, n_samples=args.n_samples, seed=args.seed, batch_size=args.batch_size
    )
    name_a, name_b = Path(args.ckpt_a).stem, Path(args.ckpt_b).stem
    if name_a == name_b:
        name_a, name_b = f"{name_a} (A)", f"{name_b} (B)"
    result = compare_models(
        model_a, model_b, batches, task_a=task_a, task_b=task_b, layers_a=layers, layers_b=layers,
        name_a=name_a, name_b=name_b, seed=args.seed, device=device, data_label=label, features=args.features,
    )
    result.meta.update({"ckpt_a": str(args.ckpt_a), "ckpt_b": str(args.ckpt_b)})
    fig = plot_cka_heatmap(
        result.matrix, [short_layer_name(n) for n in result.layers_a], [short_layer_name(n) for n in result.layers_b],
        name_a=f"{name_a} ({result.arch_a}, {task_a})", name_b=f"{name_b} ({result.arch_b}, {task_b})",
        title=f"linear CKA of layer {args.features}s, {result.n_samples} crops of {result.patch}px",
        stages_a=stage_starts(result.layers_a), stages_b=stage_starts(result.layers_b),
    )
    for ext in ("png", "svg"):
        save_figure(fig, out / f"cka.{ext}")
    write_csv(out / "cka.csv", result.table())
    if result.ci_low is not None:
        write_csv(out / "cka_long.csv", result.long_table(), index=False)
    summary = result.summary()
    write_json(out / "summary.json", summary)  # strict JSON: NaN written as null
    _print_summary(result, summary, out)
    return 0


def _print_summary(result, summary: dict, out: Path) -> None:
    print(f"{result.name_a} [{result.arch_a}, {result.task_a}] vs {result.name_b} [{result.arch_b}, {result.task_b}]: "
          f"{len(result.layers_a)}x{len(result.layers_b)} layers, {result.n_samples} crops ({result.n_batches} batches)")
    if "mean_diagonal_cka" in summary:
        low = summary["min_diagonal"]
        print(f"  same-layer CKA: mean {summary['mean_diagonal_cka']:.3f}, lowest {low['cka']:.3f} at {low['layer']}")
    m = result.matrix
    print(f"  all pairs: mean {np.nanmean(m):.3f}, min {np.nanmin(m):.3f}, max {np.nanmax(m):.3f}")
    print(f"  wrote {out / 'cka.png'}, cka.svg, cka.csv, summary.json")
