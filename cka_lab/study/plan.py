"""The run graph of a study: which trainings, in which order, each as an ordinary training config.

Every run is a normal ``cka-lab train`` run whose TOML config the study writes to ``OUT/configs/`` (so
any run can be inspected or re-run by hand). Pre-trainings are shared: conditions and targets that ask
for the same pre-training task set at the same seed use one run.

Names: ``pre-<tasks>-s<seed>`` (e.g. ``pre-x2x3x4-s0``), ``<target>-<condition>-s<seed>`` for scratch
runs and fine-tunes (``x2-scratch-s0``, ``g25-related-s1``).

Seeds. Each run's ``[run]`` has ``seed`` (the study seed, which also fixes its diagnostics probe) and
its own ``init_seed`` and ``data_seed``, digests of the run's name (:func:`run_seeds`). So no two runs
of a study share their initial weights or their batch order; a fine-tune starts from its pre-training's
weights and nothing else. That is the design the CKA claims need (:mod:`cka_lab.study.claims`): the
compared pair (scratch, pre-trained at one seed) and its control (two scratch runs) share nothing, so
the control is built like the pair it judges. (With one seed for everything, as before, a single-task
pre-training started from exactly the scratch run's weights and every fine-tune saw its scratch run's
batches: CKA(scratch, pre-trained) was inflated against a control that shared nothing.) Sharing both,
the alternative, leaves no control: two runs that share init and batches and differ in nothing else
are the same run. The price: PSNR gains lose the variance reduction of common random numbers; their
t-intervals over seeds stay valid, the seeds being independent.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cka_lab.errors import CkaLabError
from cka_lab.models.registry import config_from_name
from cka_lab.study.spec import StudySpec, task_kind

__all__ = ["Run", "plan_runs", "arch_name", "run_config", "run_seeds", "scratch_long_budget", "condition_compute"]


def arch_name(tasks: tuple[str, ...], size: str) -> str:
    """``("x2", "g25"), "T" -> "SRx2DNg25_EDTT"`` (tasks in official head order)."""
    sr = "".join(t for t in tasks if task_kind(t) == "sr")
    dn = "".join(t for t in tasks if task_kind(t) == "dn")
    return f"{'SR' + sr if sr else ''}{'DN' + dn if dn else ''}_EDT{size}"


@dataclass(frozen=True)
class Run:
    """One training run of the study.

    ``kind``: ``pretrain``, ``scratch`` or ``finetune``. ``target`` and ``condition`` are empty for
    pre-trainings; ``init`` names the pre-training a fine-tune starts from; ``drop`` the checkpoint keys
    it leaves out (the other heads, the official FILTER_LIST rule).
    """

    name: str
    kind: str
    seed: int
    tasks: tuple[str, ...]
    target: str = ""
    condition: str = ""
    init: str = ""
    drop: tuple[str, ...] = ()
    iterations: int = 0
    batch_size: int = 0
    depends: tuple[str, ...] = ()
    arch: str = ""
    init_seed: int = 0
    data_seed: int = 0


def run_seeds(name: str) -> tuple[int, int]:
    """``(init_seed, data_seed)`` of a run: the first 31 bits of SHA-256 of ``"<name>/init"`` and ``"<name>/data"``."""
    def digest(role: str) -> int:
        return int.from_bytes(hashlib.sha256(f"{name}/{role}".encode()).digest()[:4], "big") & 0x7FFFFFFF

    return digest("init"), digest("data")


def condition_compute(spec: StudySpec, target: str, cond) -> tuple[int, int]:
    """``(steps, patches)`` a model of ``cond`` for ``target`` is trained with, pre-training included.

    Patches are counted per head: a pre-training with k heads draws k batches per step.
    """
    b = spec.budget
    pre_bs = b.pretrain_batch_size or b.batch_size
    if cond.is_scratch_long:
        it, bs = scratch_long_budget(spec, target)
        return it, it * bs
    tasks = cond.pretrain_tasks(target, spec.tasks.targets)
    if not tasks:
        return b.iterations, b.iterations * b.batch_size
    return b.pretrain_iterations + b.iterations, len(tasks) * pre_bs * b.pretrain_iterations + b.iterations * b.batch_size


def scratch_long_budget(spec: StudySpec, target: str) -> tuple[int, int]:
    """``(iterations, batch_size)`` of the equal-compute scratch run of ``target``: the steps of
    pre-training + fine-tuning, at the smallest batch that gives at least the patches of the largest
    pre-training + fine-tune of that target (e.g. pre-training 160 it x 3 heads x 4 + fine-tune 80 x 4
    = 2240 patches in 240 steps: batch 10, 2400 patches). With single-task pre-training at the target's
    batch size this is exactly the pre-training + fine-tune's budget."""
    b = spec.budget
    steps = b.pretrain_iterations + b.iterations
    patches = [condition_compute(spec, target, c)[1] for c in spec.pretrained if c.applies(target)]
    if not patches:
        return b.iterations, b.batch_size
    return steps, max(b.batch_size, math.ceil(max(patches) / steps))


def plan_runs(spec: StudySpec) -> list[Run]:
    """Every run of the study in an order where each run comes after the runs it depends on.

    Seed by seed (a seed's pre-trainings, then its scratch runs and fine-tunes), so that a study stopped
    midway has whole seeds; a condition limited to some targets (``targets``) gets runs for those only.
    """
    b, size = spec.budget, spec.study.size
    pre_bs = b.pretrain_batch_size or b.batch_size
    ordered: list[Run] = []
    for seed in spec.study.seeds:
        pre: dict[str, Run] = {}
        targets: list[Run] = []
        for target in spec.tasks.targets:
            for cond in spec.conditions_for(target):
                tasks = cond.pretrain_tasks(target, spec.tasks.targets)
                if not tasks:
                    it, bs = scratch_long_budget(spec, target) if cond.is_scratch_long else (b.iterations, b.batch_size)
                    targets.append(Run(f"{target}-{cond.name}-s{seed}", "scratch", seed, (target,), target,
                                       cond.name, iterations=it, batch_size=bs))
                    continue
                pname = f"pre-{''.join(tasks)}-s{seed}"
                if pname not in pre:
                    pre[pname] = Run(pname, "pretrain", seed, tasks, iterations=b.pretrain_iterations,
                                     batch_size=pre_bs)
                drop = tuple(t for t in tasks if t != target)
                targets.append(Run(f"{target}-{cond.name}-s{seed}", "finetune", seed, (target,), target, cond.name,
                                   init=pname, drop=drop, iterations=b.iterations, batch_size=b.batch_size,
                                   depends=(pname,)))
        ordered += [*pre.values(), *targets]
    runs = [replace(r, arch=arch_name(r.tasks, size), init_seed=run_seeds(r.name)[0], data_seed=run_seeds(r.name)[1])
            for r in ordered]
    seeds = [s for r in runs for s in (r.init_seed, r.data_seed)]
    if len(set(seeds)) != len(seeds):  # 31-bit digests of distinct names: never seen, but never silent
        raise CkaLabError("two runs of the study got the same derived seed: rename a condition")
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise CkaLabError(f"two conditions give the same run name {dup!r}: rename one of them")
    for r in runs:
        config_from_name(r.arch)  # every architecture must exist
    return runs


def _sources(values: tuple[Any, ...]) -> list[Any]:
    return [dict(v) if isinstance(v, dict) else str(v) for v in values]


def run_config(spec: StudySpec, run: Run, *, models_dir: Path, device: str) -> dict[str, dict[str, Any]]:
    """The training config (as TOML tables) of one run.

    SR models of a study all use the ``pixelshuffle`` upsampler (the official multi-scale one), so that a
    scratch x2 model and one fine-tuned from x2+x3+x4 have the same architecture and can be compared.
    """
    kinds = {task_kind(t) for t in run.tasks}
    data: dict[str, Any] = {"root": str(spec.data_root), "patch_size": spec.data.patch_size,
                            "num_workers": spec.data.num_workers}
    for kind in ("sr", "dn"):
        if kind in kinds:
            src = getattr(spec.data, f"{'pretrain' if run.kind == 'pretrain' else 'target'}_{kind}")
            if not src:
                raise CkaLabError(f"run {run.name} needs [data] {'pretrain' if run.kind == 'pretrain' else 'target'}_{kind} images")
            data[kind] = _sources(src)
    model: dict[str, Any] = {"arch": run.arch}
    if "sr" in kinds:
        model["upsampler"] = "pixelshuffle"
    optim = spec.optim_dict()
    lr_key = "pretrain_lr" if run.kind == "pretrain" else "finetune_lr" if run.kind == "finetune" else None
    for key in ("pretrain_lr", "finetune_lr"):
        value = optim.pop(key, None)
        if key == lr_key and value is not None:
            optim["lr"] = value
    cfg: dict[str, dict[str, Any]] = {
        "run": {"name": run.name, "seed": run.seed, "init_seed": run.init_seed, "data_seed": run.data_seed,
                "device": device, "threads": spec.study.threads},
        "model": model,
        "data": data,
        "optim": optim,
        "schedule": {"iterations": run.iterations, "batch_size": run.batch_size,
                     "ckpt_every": spec.budget.ckpt_every, "log_every": spec.budget.log_every},
    }
    if run.kind == "finetune":
        cfg["finetune"] = {"init": str(models_dir / f"{run.init}.pt"), "drop": list(run.drop), "strict": True}
    return cfg
