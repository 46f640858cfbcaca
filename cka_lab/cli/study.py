"""``cka-lab study STUDY.toml [--out DIR] [--resume] [--max-runs N]``: a whole pre-training study.

Trains every run of the study (tasks x conditions x seeds, pre-trainings shared), evaluates every target
model, runs the contrasts (scratch vs each pre-trained condition within a seed, seed vs seed as the
control, SR vs DN) and writes the tables and one PDF. ``STUDY`` is a file or a bundled preset name
(``tiny``, ``paper-cpu``, ``paper-small``, ``paper-small-cpu``). ``torchrun --nproc_per_node N -m cka_lab.study ...`` spreads the runs over N GPUs.
"""

from __future__ import annotations

import argparse

__all__ = ["add_arguments", "add_parser", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The study's own arguments (:func:`cka_lab.study.launch.add_arguments`); imported when used, so that
    ``cka-lab`` starts without loading the study library."""
    from cka_lab.study.launch import add_arguments as study_arguments

    study_arguments(p)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "study",
        help="a pre-training study: train, evaluate, contrast and report a grid of runs",
        description=__doc__.split("\n\n", 1)[1],
    )
    add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cka_lab.study.launch import run_from_args

    return run_from_args(args)
