"""``cka-lab train CONFIG.toml [--resume] [--max-iters N] [--out DIR] [--data-root DIR]``."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    from cka_lab.train.launch import add_arguments, run_from_args

    p = sub.add_parser(
        "train",
        help="train an EDT from a TOML config (resumable; DDP under torchrun)",
        description="Train an EDT as CONFIG.toml describes. Checkpoints (last.pt, best.pt) and CSV logs go to "
        "the run folder. For several processes use: torchrun --nproc_per_node N -m cka_lab.train CONFIG.toml.",
    )
    add_arguments(p)
    p.set_defaults(func=run_from_args)
