"""Run a study: train every run, evaluate every target model, contrast them, write tables and a PDF.

The study folder ``OUT`` holds::

    study.toml          the study file of the latest invocation (a folder belongs to the study whose trained runs
                        its fingerprint names: comments, [eval] and [analysis] may change on --resume)
    study.json          name, fingerprint, cka_lab and torch versions, hardware
    configs/RUN.toml    each run's training config (runnable by hand with cka-lab train)
    runs/RUN/           each run's training folder (last.pt, train.csv, ...)
    models/RUN.pt       the run's final weights -- written last, so its presence marks the run as done
    eval/RUN.json       PSNR/SSIM of a target model on its test set
    contrasts/PAIR/     CKA, attention and control tables of one contrast
    tables/*.csv        the tables behind the report;   report.pdf
    findings.md         the report's claims page as Markdown (the sentences the README and notebooks quote)

Every step is skipped when its output exists, and every output is written atomically, so a killed
study continues with ``--resume`` where it stopped: finished runs are not redone, an interrupted run
continues from its last checkpoint (cka_lab's resume reproduces the uninterrupted losses exactly).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import tomli_w
import torch

from cka_lab import __version__
from cka_lab.errors import CkaLabError
from cka_lab.io import open_append, write_bytes
from cka_lab.io.lock import LOCK_NAME
from cka_lab.runtime import TORCHRUN_VARIABLES, rank_world, resolve_device
from cka_lab.study.plan import Run, plan_runs, run_config
from cka_lab.study.spec import StudySpec

__all__ = ["StudyPaths", "prepare_folder", "train_runs", "evaluate_runs", "hardware_description", "device_slots"]


@dataclass(frozen=True)
class StudyPaths:
    root: Path

    @property
    def configs(self) -> Path:
        return self.root / "configs"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def contrasts(self) -> Path:
        return self.root / "contrasts"

    @property
    def tables(self) -> Path:
        return self.root / "tables"

    @property
    def report(self) -> Path:
        return self.root / "report.pdf"

    def model(self, run: str) -> Path:
        return self.models / f"{run}.pt"


def _atomic_write(path: Path, data: bytes) -> None:
    write_bytes(path, data)


def hardware_description(device: str = "cpu") -> str:
    """One line naming the hardware, for the report's title page."""
    if device.startswith("cuda") and torch.cuda.is_available():
        names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
        return f"{torch.cuda.device_count()} x {', '.join(names)} (CUDA), {os.cpu_count()} CPU cores"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU only: {cpu}, {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()} cores"


def device_slots(spec: StudySpec) -> list[str]:
    """One entry per run that may go at once: each device repeated ``runs_per_device`` times."""
    devices = []
    for d in spec.study.devices:
        if d in ("auto", "cuda") and resolve_device(d, setting="[study] devices").type == "cuda":
            devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]  # every GPU
        else:
            devices.append("cpu" if d == "auto" else d)
    return [d for d in devices for _ in range(spec.study.runs_per_device)]


def prepare_folder(spec: StudySpec, out: Path, *, resume: bool) -> StudyPaths:
    """Create (or, with ``resume``, re-open) the study folder; refuse one made by another study file."""
    paths = StudyPaths(Path(out))
    marker = paths.root / "study.json"
    if marker.exists():
        try:
            meta = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CkaLabError(f"{marker} is unreadable ({exc}): not a study folder, choose another --out") from None
        if meta.get("fingerprint") != spec.fingerprint:
            raise CkaLabError(
                f"{paths.root} holds the study {meta.get('name')!r} made by another study file (fingerprint "
                f"{meta.get('fingerprint')} != {spec.fingerprint}): choose another --out or use that file"
            )
        if not resume:
            raise CkaLabError(f"{paths.root} already holds this study: add --resume to continue it, or choose another --out")
        _atomic_write(paths.root / "study.toml", spec.text.encode("utf-8"))  # the file of this invocation
        return paths
    if paths.root.exists() and any(p.name != LOCK_NAME for p in paths.root.iterdir()):  # its lock is ours
        raise CkaLabError(f"{paths.root} exists and is not empty: choose another --out for a new study")
    for d in (paths.root, paths.configs, paths.runs, paths.models, paths.eval, paths.contrasts, paths.tables):
        d.mkdir(parents=True, exist_ok=True)
    _atomic_write(paths.root / "study.toml", spec.text.encode("utf-8"))
    meta = {"name": spec.study.name, "fingerprint": spec.fingerprint, "cka_lab": __version__,
            "torch": torch.__version__, "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    _atomic_write(marker, json.dumps(meta, indent=2).encode("utf-8"))
    return paths


def _write_config(spec: StudySpec, paths: StudyPaths, run: Run, device: str) -> Path:
    cfg = run_config(spec, run, models_dir=paths.models.resolve(), device=device)
    path = paths.configs / f"{run.name}.toml"
    text = f"# run {run.name} of study {spec.study.name} ({run.kind}), written by cka-lab study\n" + tomli_w.dumps(cfg)
    _atomic_write(path, text.encode("utf-8"))
    return path


def _clean_env() -> dict[str, str]:
    """The environment of a child training: without torchrun's variables (each run is one process)."""
    return {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARIABLES}


def _train_one(spec: StudySpec, paths: StudyPaths, run: Run, device: str, in_process: bool) -> None:
    """Train (or continue) one run and export its weights to ``models/RUN.pt``."""
    from cka_lab.train.export import export_weights

    config = _write_config(spec, paths, run, device)
    out = paths.runs / run.name
    resume = (out / "last.pt").exists()
    if out.exists() and not resume:
        shutil.rmtree(out)  # a run killed before its first checkpoint: start it again
    if in_process:
        from cka_lab.train.config import load_config
        from cka_lab.train.loop import train

        train(load_config(config), out=out, resume=resume)
    else:
        cmd = [sys.executable, "-m", "cka_lab.train", str(config), "--out", str(out)] + (["--resume"] if resume else [])
        log = paths.runs / f"{run.name}.log"
        with open_append(log) as fh:  # O_APPEND | O_NOFOLLOW
            proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=_clean_env())
        if proc.returncode != 0:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
            raise CkaLabError(f"run {run.name} failed (exit {proc.returncode}): {tail[0]} -- see {log}")
    export_weights(out / "last.pt", paths.model(run.name))


def train_runs(spec: StudySpec, paths: StudyPaths, *, max_runs: int | None = None,
               say: Callable[[str], None] = print, rank: int = 0, world: int = 1) -> list[Run]:
    """Train every run not yet done, dependencies first, spread over the device slots.

    One slot trains in this process; several slots train in child processes, one run per slot at a
    time. Under torchrun (``world > 1``) rank ``r`` trains the runs ``r, r + world, ...`` of the plan on
    its own device and waits for the pre-trainings its fine-tunes need. ``max_runs`` stops after that
    many trainings (continue with ``--resume``). Returns the runs trained now.
    """
    runs = plan_runs(spec)
    todo = [r for i, r in enumerate(runs) if i % world == rank and not paths.model(r.name).exists()]
    if max_runs is not None:
        todo = todo[:max_runs]
    if world > 1:
        slots = [f"cuda:{rank_world().local_rank}" if torch.cuda.is_available() else "cpu"]
    else:
        slots = device_slots(spec)
    in_process = len(slots) == 1 and world == 1
    if rank == 0:
        for r in runs:  # every run's config is on disk from the start (rewritten with its device at launch)
            if not (paths.configs / f"{r.name}.toml").exists():
                _write_config(spec, paths, r, slots[0])
    done: list[Run] = []
    free = list(slots)
    pending = list(todo)
    running: dict = {}
    with ThreadPoolExecutor(max_workers=len(slots)) as pool:
        while pending or running:
            ready = [r for r in pending if all(paths.model(d).exists() for d in r.depends)]
            while ready and free:
                run = ready.pop(0)
                pending.remove(run)
                device = free.pop(0)
                say(f"[study] training {run.name} ({run.kind}, {run.arch}, {run.iterations} it) on {device}")
                running[pool.submit(_train_one, spec, paths, run, device, in_process)] = (run, device)
            if not running:
                if world > 1:  # another rank is training a dependency
                    time.sleep(2.0)
                    continue
                missing = {d for r in pending for d in r.depends if not paths.model(d).exists()}
                raise CkaLabError(f"runs {', '.join(r.name for r in pending)} wait for {', '.join(sorted(missing))}, "
                                  "which this invocation does not train: continue with --resume")
            finished, _ = wait(list(running), timeout=2.0 if world > 1 else None, return_when=FIRST_COMPLETED)
            for fut in finished:
                run, device = running.pop(fut)
                fut.result()  # re-raises a failed run's error
                free.append(device)
                done.append(run)
    return done


def evaluate_runs(spec: StudySpec, paths: StudyPaths, *, device: str = "cpu",
                  say: Callable[[str], None] = print) -> list[dict]:
    """PSNR/SSIM of every target model on its task's test set (``eval/RUN.json``), by the official protocol."""
    from cka_lab.data.datasets import eval_pairs
    from cka_lab.metrics.quality import task_metric_settings
    from cka_lab.models import load_model
    from cka_lab.study.spec import task_kind
    from cka_lab.train.validate import evaluate_pairs

    results = []
    pairs_cache: dict[str, object] = {}
    for run in plan_runs(spec):
        if run.kind == "pretrain":
            continue
        path = paths.eval / f"{run.name}.json"
        if not path.exists():
            kind = task_kind(run.target)
            dataset = spec.data_root / getattr(spec.eval, kind)
            if run.target not in pairs_cache:
                pairs_cache[run.target] = eval_pairs(dataset, run.target, max_images=spec.eval.max_images,
                                                     crop=spec.eval.crop)
            model = load_model(paths.model(run.name), device=torch.device(device))
            score = evaluate_pairs(model, pairs_cache[run.target], run.target, torch.device(device))
            y, border = task_metric_settings(run.target)
            result = {"run": run.name, "target": run.target, "condition": run.condition, "seed": run.seed,
                      "kind": run.kind, "arch": model.config.name, "dataset": str(getattr(spec.eval, kind)),
                      "images": score.images, "y_channel": y, "crop_border": border,
                      "psnr": score.psnr, "ssim": score.ssim,
                      "per_image": [{"name": s.name, "psnr": s.psnr, "ssim": s.ssim} for s in score.per_image]}
            _atomic_write(path, json.dumps(result, indent=2).encode("utf-8"))
            say(f"[study] {run.name}: PSNR {score.psnr:.3f} dB, SSIM {score.ssim:.4f} on {result['dataset']}")
        results.append(json.loads(path.read_text(encoding="utf-8")))
    return results
