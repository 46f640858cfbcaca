"""The study from start to end: folder, trainings, evaluations, contrasts, tables, report."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from cka_lab.errors import CkaLabError
from cka_lab.study.runner import evaluate_runs, prepare_folder, train_runs
from cka_lab.study.spec import load_study

__all__ = ["study_from_args", "resolve_study_file"]


def resolve_study_file(name: str) -> Path:
    """A path, or the name of a bundled preset."""
    path = Path(name)
    if path.suffix == ".toml" or path.exists():
        return path
    from cka_lab.study import preset_path

    return preset_path(name)


def study_from_args(args: argparse.Namespace) -> int:
    spec = load_study(resolve_study_file(args.study))
    if args.max_runs is not None and args.max_runs < 0:
        raise CkaLabError(f"--max-runs must be >= 0, got {args.max_runs}")
    out = Path(args.out) if args.out else Path("studies") / spec.study.name
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    t0 = time.perf_counter()
    if rank == 0:
        paths = prepare_folder(spec, out, resume=args.resume)
    if world > 1:
        _wait_for(out / "study.json")
        paths = prepare_folder(spec, out, resume=True) if rank else paths
    trained = train_runs(spec, paths, max_runs=args.max_runs, rank=rank, world=world)
    if args.max_runs is not None:
        print(f"[study] trained {len(trained)} run(s) and stopped (--max-runs): continue with --resume")
        return 0
    if rank != 0:
        return 0
    if world > 1:
        from cka_lab.study.plan import plan_runs

        for r in plan_runs(spec):
            _wait_for(paths.model(r.name))
    evaluate_runs(spec, paths, device=_device(args.device))
    print(f"[study] {spec.study.name} done in {time.perf_counter() - t0:.0f} s: {paths.root}")
    return 0


def _device(name: str) -> str:
    from cka_lab.cli._common import resolve_device

    return str(resolve_device(name))


def _wait_for(path: Path, poll: float = 2.0) -> None:
    while not path.exists():
        time.sleep(poll)
