"""``cka-lab study STUDY.toml [--out DIR] [--resume] [--max-runs N]``: a whole pre-training study.

Trains every run of the study (tasks x conditions x seeds, pre-trainings shared), evaluates every target
model, runs the contrasts (scratch vs each pre-trained condition within a seed, seed vs seed as the
control, SR vs DN) and writes the tables and one PDF. ``STUDY`` is a file or a bundled preset name
(``tiny``, ``paper-small``, ``paper-small-cpu``). ``torchrun --nproc_per_node N -m cka_lab.study ...`` spreads the runs over N GPUs.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", metavar="STUDY.toml", help="study file, or a bundled preset: tiny, paper-small, paper-small-cpu")
    p.add_argument("--out", default=None, metavar="DIR", help="study folder (default: studies/<name>)")
    p.add_argument("--resume", action="store_true", help="continue the study in --out where it stopped")
    p.add_argument("--max-runs", type=int, default=None, metavar="N",
                   help="train at most N runs now, then stop (continue later with --resume)")
    p.add_argument("--device", default="auto", help="device for evaluation and analysis (training: [study] devices)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "study",
        help="a pre-training study: train, evaluate, contrast and report a grid of runs",
        description=__doc__.split("\n\n", 1)[1],
    )
    add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cka_lab.study.orchestrate import study_from_args

    return study_from_args(args)
