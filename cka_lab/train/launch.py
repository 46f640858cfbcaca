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
    p.add_argument("--split-batch", action="store_true", help=argparse.SUPPRESS)  # a rank started by cpu_ranks


def _argv(args: argparse.Namespace) -> list[str]:
    argv = [args.config]
    if args.resume:
        argv.append("--resume")
    for flag, value in (("--max-iters", args.max_iters), ("--out", args.out), ("--data-root", args.data_root)):
        if value is not None:
            argv += [flag, str(value)]
    return argv


def run_from_args(args: argparse.Namespace) -> int:
    """Train in this process, or, on a CPU outside torchrun, as the DDP ranks of :mod:`cka_lab.train.cpu_ranks`."""
    from cka_lab.train.config import load_config
    from cka_lab.train.cpu_ranks import cpu_processes, spawn_ranks
    from cka_lab.train.loop import train

    cfg = load_config(args.config, data_root=args.data_root)
    n = 1 if args.split_batch else cpu_processes(cfg)
    if n > 1:
        if cfg.schedule.batch_size % n:
            from cka_lab.errors import CkaLabError

            raise CkaLabError(f"run.processes = {n} does not divide schedule.batch_size = {cfg.schedule.batch_size}")
        print(f"{cfg.run.name}: {n} CPU processes of {cfg.run.threads or 1} thread(s), "
              f"{cfg.schedule.batch_size // n} patches per head each (run.processes; 1 trains in one process)", flush=True)
        return spawn_ranks(_argv(args), n, cfg.run.threads)
    train(cfg, out=args.out, resume=args.resume, max_iters=args.max_iters, split_batch=args.split_batch)
    return 0
