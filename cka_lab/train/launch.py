"""Command-line arguments of a training run, shared by ``cka-lab train`` and ``python -m cka_lab.train``."""

from __future__ import annotations

import argparse

__all__ = ["add_arguments", "run_from_args"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", metavar="CONFIG.toml", help="training config (see cka_lab/train/config.py)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.add_argument("--max-iters", type=int, default=None, metavar="N",
                   help="stop at iteration N instead of schedule.iterations (the lr schedule is unchanged)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="run folder for checkpoints and logs (default: [run] out, else runs/<config name>)")
    p.add_argument("--data-root", default=None, metavar="DIR", help="use DIR as [data] root")


def run_from_args(args: argparse.Namespace) -> int:
    from cka_lab.train.config import load_config
    from cka_lab.train.loop import train

    cfg = load_config(args.config, data_root=args.data_root)
    train(cfg, out=args.out, resume=args.resume, max_iters=args.max_iters)
    return 0
