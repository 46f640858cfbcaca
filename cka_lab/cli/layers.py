"""``cka-lab layers CKPT``: the hookable modules of a model with their output shapes."""

from __future__ import annotations

import argparse
import fnmatch

import torch

from cka_lab.cli._common import add_model_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("layers", help="list hookable modules and their output shapes for an input size")
    add_model_args(p)
    p.add_argument("--task", default=None, help="head to run (default: the model's first)")
    p.add_argument("--size", type=int, default=None, help="input side in pixels (default: the head's padding multiple)")
    p.add_argument("--match", default="*", help="only names matching this glob, e.g. 'body.layers.*'")
    p.add_argument("--csv", default=None, help="also write the table to this CSV file")
    p.set_defaults(func=run)


class _TaskView(torch.nn.Module):
    """Calls one head of an EDT so that hooks see a single forward (module names get a 'model.' prefix)."""

    def __init__(self, model, task):
        super().__init__()
        self.model, self.task = model, task

    def forward(self, x):
        return self.model.forward_task(x, self.task)


def run(args: argparse.Namespace) -> int:
    from cka_lab.features import list_layers
    from cka_lab.models import load_model

    from cka_lab.errors import CkaLabError

    if args.size is not None and args.size < 1:
        raise CkaLabError(f"--size must be a positive side in pixels, got {args.size} "
                          "(leave it out for the head's padding multiple)")
    model = load_model(args.ckpt, arch=args.arch)
    task = args.task or model.tasks[0]
    model.config.head(task)
    size = args.size if args.size is not None else model.config.pad_multiple(task)
    if size % model.config.pad_multiple(task):
        raise CkaLabError(f"--size {size} is not a multiple of {model.config.pad_multiple(task)}, "
                          f"which the {task} head needs")
    from cka_lab.models.bounds import check_fits, inference_bytes
    from cka_lab.models.tiling import memory_budget

    check_fits(inference_bytes(model.config, task, size, size), memory_budget("cpu"),  # before the input exists
               f"a forward pass at --size {size}", "use a smaller --size (the shapes scale with it)")
    df = list_layers(_TaskView(model, task), torch.rand(1, 3, size, size))
    df = df[df["name"] != "model"].copy()
    df["name"] = df["name"].str.removeprefix("model.")
    df = df[df["calls"] > 0]
    matched = df[df["name"].map(lambda n: fnmatch.fnmatchcase(n, args.match))]
    if matched.empty:
        raise CkaLabError(f"--match {args.match!r} matches none of the {len(df)} modules of {model.name}: "
                          "run without --match to list them (e.g. 'body.layers.*')")
    df = matched
    df["output_shape"] = df["output_shape"].map(lambda s: "x".join(map(str, s)) if s else "-")
    print(f"{model.name}, task {task}, input 1x3x{size}x{size}: {len(df)} modules")
    print(df[["name", "class", "output_shape"]].to_string(index=False))
    if args.csv:
        from cka_lab.io import write_csv

        write_csv(args.csv, df, index=False)
    return 0
