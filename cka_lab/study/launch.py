"""Command-line arguments of a study, shared by ``cka-lab study`` and ``python -m cka_lab.study``."""

from __future__ import annotations

import argparse

__all__ = ["add_arguments", "run_from_args"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    from cka_lab.study import preset_names

    p.add_argument("study", metavar="STUDY.toml", help=f"study file, or a bundled preset: {', '.join(preset_names())}")
    p.add_argument("--out", default=None, metavar="DIR", help="study folder (default: studies/<name>)")
    p.add_argument("--resume", action="store_true", help="continue the study in --out where it stopped")
    p.add_argument("--max-runs", type=int, default=None, metavar="N",
                   help="train at most N runs now, then stop (continue later with --resume)")
    p.add_argument("--device", default="auto", help="device for evaluation and analysis (training: [study] devices)")


def run_from_args(args: argparse.Namespace) -> int:
    """Run (or, with ``--resume``, continue) the study the parsed arguments name."""
    from cka_lab.study.orchestrate import study_from_args

    return study_from_args(args)
