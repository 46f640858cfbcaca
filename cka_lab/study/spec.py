"""A pre-training study file (TOML) read into frozen dataclasses.

A study compares, for each target task and seed, a model trained from scratch with models fine-tuned
from pre-trainings (the design of Li et al., arXiv 2112.10175, Sec. 4)::

    [study]     name, seeds, devices, runs_per_device, threads
    [tasks]     targets = ["x2", "g25"]               target tasks (one scratch + fine-tunes each)
    [conditions.NAME]
                pretrain = "none" | "same" | "related" | "unrelated" | ["x2", "x3", ...]
                budget = "target" | "total"           (from-scratch conditions only; default "target")
    [data]      root, patch_size, pretrain_sr, pretrain_dn, target_sr, target_dn
    [budget]    pretrain_iterations, iterations, batch_size, pretrain_batch_size, ckpt_every, log_every
    [optim]     passed to every run's [optim] (lr, betas, eps, milestones, ...); pretrain_lr, finetune_lr
    [eval]      sr, dn (test sets), max_images, crop
    [analysis]  patch, n_samples, batch_size, estimator, layers, features, attention

``pretrain`` keywords: ``none`` (from scratch), ``same`` (the target task alone, e.g. SR x2),
``related`` (every level of the target's kind: SR x2+x3+x4, DN g15+g25+g50 -- the paper's multi-related
pre-training), ``unrelated`` (the target plus one task of another kind from ``[tasks] targets``, e.g. SR x2
+ DN g25 -- the paper's multi-unrelated mix). A list names the pre-training tasks explicitly; it must
contain the target task, so that the fine-tune has a pre-trained head and tail to start from.

Fair design (what a gain over scratch is made of):

* **Equal compute.** A fine-tune gets the same budget (``budget.iterations``) as the matching scratch
  run, so a pre-trained model has had more training than ``scratch``. A from-scratch condition with
  ``budget = "total"`` (the condition ``scratch-long``) trains from scratch for the total steps of
  pre-training + fine-tuning (``pretrain_iterations + iterations``) at the batch that gives it at least as
  many patches as the largest pre-training + fine-tune of its target (:func:`scratch_long_budget`). A gain
  over scratch then splits into *extra training* (scratch-long - scratch) and *transfer* (pre-trained -
  scratch-long); the claims about pre-training are judged on the transfer. Every study with a pre-trained
  condition has one: when the file names none, ``[conditions.scratch-long] pretrain = "none", budget =
  "total"`` is added (:attr:`Condition.added`).
* **Disjoint evaluation.** A training source (pre-training or target) that is, contains or lies inside
  an evaluation folder (``[eval] sr`` / ``dn`` of the study's target kinds) is refused in one line.
* **Named overlap.** Where the pre-training corpus includes the target's training set (the same folder
  at the same reduction, or a folder above it), :meth:`StudySpec.pretrain_overlap` names it and the
  report and ``tables/design.csv`` say so.
* **Seeds.** Every run gets its own initialisation and data-order seeds (:mod:`cka_lab.study.plan`), so
  two runs share neither unless one is fine-tuned from the other.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cka_lab.errors import CkaLabError
from cka_lab.io.toml_config import check_scalar, close_match, expand_env, read_toml
from cka_lab.tasks import TASK_KEYS, parse_task

__all__ = [
    "StudySpec",
    "StudyMeta",
    "TaskSet",
    "Condition",
    "StudyData",
    "Budget",
    "EvalSpec",
    "AnalysisSettings",
    "load_study",
    "parse_study",
    "task_kind",
    "PRETRAIN_KEYWORDS",
    "BUDGETS",
    "SCRATCH_LONG",
]

PRETRAIN_KEYWORDS = ("none", "same", "related", "unrelated")
BUDGETS = ("target", "total")
SCRATCH_LONG = "scratch-long"
"""The name of the equal-compute from-scratch condition a study gets when its file names none."""
_RELATED = {"sr": ("x2", "x3", "x4"), "dn": ("g15", "g25", "g50"), "dr": ("L", "H")}


def task_kind(task: str) -> str:
    """``x2 -> sr``, ``g25 -> dn``, ``L -> dr``."""
    if task not in TASK_KEYS:
        raise CkaLabError(f"unknown task {task!r}{_close(task, TASK_KEYS)}; tasks are {' '.join(TASK_KEYS)}")
    return parse_task(task).kind


_close = close_match


@dataclass(frozen=True)
class StudyMeta:
    """``devices``: ``["auto"]``, ``["cpu"]`` or ``["cuda:0", "cuda:1"]``; ``runs_per_device`` runs share one."""

    name: str = "study"
    seeds: tuple[int, ...] = (0, 1)
    devices: tuple[str, ...] = ("auto",)
    runs_per_device: int = 1
    threads: int = 0
    size: str = "T"


@dataclass(frozen=True)
class TaskSet:
    targets: tuple[str, ...] = ("x2", "g25")


@dataclass(frozen=True)
class Condition:
    """A way to obtain a model for a target task: ``pretrain`` is a keyword or a task list."""

    name: str
    pretrain: str | tuple[str, ...] = "none"
    budget: str = "target"  # "total": from scratch for the steps and patches of pre-training + fine-tuning
    added: bool = False  # added by the study (the equal-compute control), not named in the file
    targets: tuple[str, ...] = ()  # the targets this condition is trained for; empty: every target

    def applies(self, target: str) -> bool:
        """Whether the study trains ``target`` under this condition (``targets`` empty: every target)."""
        return not self.targets or target in self.targets

    @property
    def from_scratch(self) -> bool:
        return self.pretrain == "none"

    @property
    def is_scratch(self) -> bool:
        """From scratch at the target budget: the reference every gain is measured from."""
        return self.pretrain == "none" and self.budget == "target"

    @property
    def is_scratch_long(self) -> bool:
        """From scratch at the total budget of pre-training + fine-tuning (equal compute)."""
        return self.pretrain == "none" and self.budget == "total"

    def pretrain_tasks(self, target: str, targets: tuple[str, ...]) -> tuple[str, ...]:
        """The tasks of the pre-training for ``target`` (empty for scratch), in official head order."""
        kind = task_kind(target)
        if self.pretrain == "none":
            return ()
        if self.pretrain == "same":
            tasks = (target,)
        elif self.pretrain == "related":
            tasks = _RELATED[kind]
        elif self.pretrain == "unrelated":
            others = [t for t in targets if task_kind(t) != kind]
            if not others:
                raise CkaLabError(
                    f"condition {self.name!r}: 'unrelated' pre-training for {target} needs a target task of "
                    f"another kind in [tasks] targets (have {', '.join(targets)}), or list the tasks explicitly"
                )
            tasks = (target, others[0])
        else:
            tasks = tuple(self.pretrain)
            if target not in tasks:
                raise CkaLabError(
                    f"condition {self.name!r}: its pre-training ({'+'.join(tasks)}) has no {target} head, so a "
                    f"{target} fine-tune cannot start from it; add {target!r} to its pretrain list"
                )
        return tuple(t for t in TASK_KEYS if t in tasks)  # official head order


@dataclass(frozen=True)
class StudyData:
    """Sources are folders under ``root`` (strings or ``{path, reduce}`` tables), as in training configs."""

    root: str = "${CKA_LAB_DATA:-data}"
    patch_size: int = 48
    pretrain_sr: tuple[Any, ...] = ()
    pretrain_dn: tuple[Any, ...] = ()
    target_sr: tuple[Any, ...] = ()
    target_dn: tuple[Any, ...] = ()
    num_workers: int = 0


@dataclass(frozen=True)
class Budget:
    pretrain_iterations: int = 1000
    iterations: int = 1000
    batch_size: int = 4
    pretrain_batch_size: int = 0  # 0: batch_size
    ckpt_every: int = 100
    log_every: int = 10


@dataclass(frozen=True)
class EvalSpec:
    sr: str = "sr/Set5"
    dn: str = "denoise/McMaster"
    max_images: int = 0
    crop: int = 0


@dataclass(frozen=True)
class AnalysisSettings:
    patch: int = 0  # 0: each model at its training size (SR LR 48 px, downsampling DN 192 px for EDT-T)
    n_samples: int = 128
    batch_size: int = 16
    estimator: str = "unbiased-minibatch"
    layers: str = "default"
    features: str = ""  # "" : the layer set's default (update for default, output for paper)
    attention: bool = True
    # the CKA protocols every contrast is measured under: "default" (the settings above) and "paper" (the
    # EDT authors' layer set with biased full-batch CKA); the CKA claims are judged under each
    protocols: tuple[str, ...] = ("default",)


PROTOCOLS = ("default", "paper")


@dataclass(frozen=True)
class StudySpec:
    """A whole study. ``text`` is the TOML text; ``fingerprint`` ties a folder to the file's trained runs."""

    study: StudyMeta = field(default_factory=StudyMeta)
    tasks: TaskSet = field(default_factory=TaskSet)
    conditions: tuple[Condition, ...] = ()
    data: StudyData = field(default_factory=StudyData)
    budget: Budget = field(default_factory=Budget)
    optim: tuple[tuple[str, Any], ...] = ()
    eval: EvalSpec = field(default_factory=EvalSpec)
    analysis: AnalysisSettings = field(default_factory=AnalysisSettings)
    source: Path | None = None
    text: str = ""

    @property
    def fingerprint(self) -> str:
        """Digest of what decides the trained runs: the study's name, seeds and size, its tasks, conditions,
        data, budget and optimiser. Comments, devices, evaluation and analysis settings are left out, so a
        study folder can be evaluated and analysed again under a revised ``[eval]`` or ``[analysis]``."""
        trained = {"study": [self.study.name, list(self.study.seeds), self.study.size],
                   "tasks": dataclasses.asdict(self.tasks), "data": dataclasses.asdict(self.data),
                   "conditions": [dataclasses.asdict(c) for c in self.conditions],
                   "budget": dataclasses.asdict(self.budget), "optim": [list(kv) for kv in self.optim]}
        blob = json.dumps(trained, sort_keys=True, default=list).encode("utf-8")
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def data_root(self) -> Path:
        base = self.source.parent if self.source else Path.cwd()
        return (base / os.path.expanduser(_expand(self.data.root, "data.root"))).resolve()

    def optim_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.optim}

    @property
    def scratch(self) -> str:
        """The name of the from-scratch condition at the target budget."""
        return next(c.name for c in self.conditions if c.is_scratch)

    @property
    def scratch_long(self) -> str | None:
        """The name of the equal-compute from-scratch condition (None in a study without pre-training)."""
        return next((c.name for c in self.conditions if c.is_scratch_long), None)

    def condition(self, name: str) -> Condition:
        """The condition called ``name``."""
        return next(c for c in self.conditions if c.name == name)

    def conditions_for(self, target: str) -> tuple[Condition, ...]:
        """The conditions ``target`` is trained under, in file order."""
        return tuple(c for c in self.conditions if c.applies(target))

    @property
    def pretrained(self) -> tuple[Condition, ...]:
        """The pre-trained conditions (fine-tunes), in file order."""
        return tuple(c for c in self.conditions if not c.from_scratch)

    def source_path(self, source: Any) -> Path:
        """A ``[data]`` source (a string or ``{path, reduce}``) as an absolute path under the data root."""
        return (self.data_root / (source["path"] if isinstance(source, dict) else str(source))).resolve()

    def eval_path(self, kind: str) -> Path:
        """The evaluation folder of a target kind (``sr`` or ``dn``) under the data root."""
        return (self.data_root / getattr(self.eval, kind)).resolve()

    def pretrain_overlap(self, kind: str, pretrain_kinds: tuple[str, ...] = ()) -> list[str]:
        """The target training sources of ``kind`` that the pre-training corpus (``pretrain_<k>`` for each k
        of ``pretrain_kinds``, default ``kind``) includes -- same folder at the same reduction, or a
        pre-training folder above the target's -- as ``"path (1/r size)"`` texts."""
        out = []
        pre = [p for k in (pretrain_kinds or (kind,)) for p in getattr(self.data, f"pretrain_{k}")]
        for t in getattr(self.data, f"target_{kind}"):
            tp, tr = self.source_path(t), _reduce(t)
            for p in pre:
                pp, pr = self.source_path(p), _reduce(p)
                if (pp == tp and pr == tr) or pp in tp.parents:
                    out.append(describe_source(t))
                    break
        return out


def _reduce(source: Any) -> int:
    return int(source.get("reduce", 1)) if isinstance(source, dict) else 1


def describe_source(source: Any) -> str:
    """``"a"`` -> ``"a"``; ``{"path": "b", "reduce": 2}`` -> ``"b (1/2 size)"``."""
    path = source["path"] if isinstance(source, dict) else str(source)
    return f"{path} (1/{_reduce(source)} size)" if _reduce(source) != 1 else str(path)


_SECTIONS = {
    "study": StudyMeta,
    "tasks": TaskSet,
    "data": StudyData,
    "budget": Budget,
    "eval": EvalSpec,
    "analysis": AnalysisSettings,
}


_expand = expand_env


def _section(name: str, cls: type, table: Any, where: str) -> Any:
    if not isinstance(table, dict):
        raise CkaLabError(f"{where}: [{name}] must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in table.items():
        if key not in fields:
            raise CkaLabError(f"{where}: unknown key {key!r} in [{name}]{_close(key, fields)}; keys are {', '.join(fields)}")
        default = fields[key].default
        if isinstance(default, tuple):
            if not isinstance(value, list):
                raise CkaLabError(f"{where}: [{name}] {key} must be a list, got {value!r}")
            value = tuple(value)
        elif isinstance(default, (bool, int, float, str)):  # checked, the value kept as written
            check_scalar(value, type(default), f"{where}: [{name}] {key}")
        values[key] = value
    return cls(**values)


def _conditions(table: Any, where: str) -> tuple[Condition, ...]:
    if not isinstance(table, dict) or not table:
        raise CkaLabError(f"{where}: [conditions] needs at least one condition, e.g. [conditions.scratch] pretrain = \"none\"")
    out = []
    for name, body in table.items():
        if not isinstance(body, dict):
            raise CkaLabError(f"{where}: [conditions.{name}] must be a table with pretrain = ...")
        keys = ("pretrain", "budget", "targets")
        extra = [k for k in body if k not in keys]
        if extra:
            raise CkaLabError(f"{where}: unknown key {extra[0]!r} in [conditions.{name}]{_close(extra[0], keys)}; "
                              "the keys are pretrain, budget and targets")
        only = body.get("targets", [])
        if not isinstance(only, list) or not all(isinstance(t, str) for t in only):
            raise CkaLabError(f"{where}: [conditions.{name}] targets must be a list of target tasks, e.g. [\"x2\"]")
        budget = body.get("budget", "target")
        if budget not in BUDGETS:
            raise CkaLabError(f"{where}: [conditions.{name}] budget = {budget!r}; use \"target\" or \"total\"")
        pre = body.get("pretrain", "none")
        if budget == "total" and pre != "none":
            raise CkaLabError(f"{where}: [conditions.{name}] budget = \"total\" is for from-scratch conditions "
                              "(pretrain = \"none\"): a fine-tune already gets pre-training + its target budget")
        if isinstance(pre, str):
            if pre not in PRETRAIN_KEYWORDS:
                raise CkaLabError(
                    f"{where}: [conditions.{name}] pretrain = {pre!r}{_close(pre, PRETRAIN_KEYWORDS)}; use "
                    f"{', '.join(PRETRAIN_KEYWORDS)} or a list of tasks"
                )
        elif isinstance(pre, list) and pre and all(isinstance(t, str) for t in pre):
            for t in pre:
                if t not in TASK_KEYS:
                    raise CkaLabError(
                        f"{where}: [conditions.{name}] names unknown task {t!r}{_close(t, TASK_KEYS)}; "
                        f"tasks are {' '.join(TASK_KEYS)}"
                    )
            pre = tuple(pre)
        else:
            raise CkaLabError(f"{where}: [conditions.{name}] pretrain must be a keyword or a non-empty list of tasks")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
            raise CkaLabError(f"{where}: condition name {name!r} must be letters, digits, '-' and '_'")
        out.append(Condition(name, pre, budget, targets=tuple(only)))
    if any(c.pretrain != "none" for c in out) and not any(c.is_scratch_long for c in out):
        if any(c.name == SCRATCH_LONG for c in out):
            raise CkaLabError(f"{where}: [conditions.{SCRATCH_LONG}] is the equal-compute control's name: give it "
                              "budget = \"total\" (from scratch for pre-training + fine-tuning) or rename it")
        out.append(Condition(SCRATCH_LONG, "none", "total", added=True))
    return tuple(out)


def parse_study(text: str, *, source: Path | None = None) -> StudySpec:
    """Parse and validate a study file's TOML text (one-line :class:`CkaLabError` on any problem)."""
    where = str(source) if source else "study"
    raw = read_toml(text, where)
    known = (*_SECTIONS, "conditions", "optim")
    for key in raw:
        if key not in known:
            raise CkaLabError(f"{where}: unknown section [{key}]{_close(key, known)}; sections are {', '.join(known)}")
    parts = {name: _section(name, cls, raw.get(name, {}), where) for name, cls in _SECTIONS.items()}
    optim = raw.get("optim", {})
    if not isinstance(optim, dict):
        raise CkaLabError(f"{where}: [optim] must be a table")
    spec = StudySpec(
        **parts,
        conditions=_conditions(raw.get("conditions"), where),
        optim=tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in optim.items()),
        source=source.resolve() if source else None,
        text=text,
    )
    _validate(spec, where)
    return spec


def _validate(spec: StudySpec, where: str) -> None:
    targets = spec.tasks.targets
    if not targets:
        raise CkaLabError(f"{where}: [tasks] targets is empty: name at least one task, e.g. [\"x2\"]")
    for t in targets:
        if t not in TASK_KEYS:
            raise CkaLabError(f"{where}: [tasks] names unknown task {t!r}{_close(t, TASK_KEYS)}; tasks are {' '.join(TASK_KEYS)}")
        if task_kind(t) == "dr":
            raise CkaLabError(f"{where}: task {t!r}: deraining is not supported in studies yet (use SR and DN targets)")
    if len(set(targets)) != len(targets):
        raise CkaLabError(f"{where}: [tasks] targets lists a task twice: {list(targets)}")
    if not spec.study.seeds or len(set(spec.study.seeds)) != len(spec.study.seeds) or min(spec.study.seeds) < 0:
        raise CkaLabError(f"{where}: [study] seeds must be distinct non-negative integers, got {list(spec.study.seeds)}")
    if spec.study.size not in ("T", "S", "B", "L"):
        raise CkaLabError(f"{where}: [study] size must be T, S, B or L, got {spec.study.size!r}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", spec.study.name):
        raise CkaLabError(f"{where}: [study] name {spec.study.name!r} must be letters, digits, '.', '-' and '_'")
    for key in ("pretrain_iterations", "iterations", "batch_size", "ckpt_every", "log_every"):
        if getattr(spec.budget, key) < 1:
            raise CkaLabError(f"{where}: [budget] {key} must be >= 1, got {getattr(spec.budget, key)}")
    if spec.study.runs_per_device < 1:
        raise CkaLabError(f"{where}: [study] runs_per_device must be >= 1")
    if not any(c.is_scratch for c in spec.conditions):
        raise CkaLabError(f"{where}: the study needs a from-scratch condition (pretrain = \"none\") to measure gains against")
    for check in ("is_scratch", "is_scratch_long"):
        same = [c.name for c in spec.conditions if getattr(c, check)]
        if len(same) > 1:
            raise CkaLabError(f"{where}: conditions {' and '.join(same)} are the same (from scratch, budget "
                              f"{'total' if check == 'is_scratch_long' else 'target'}): keep one")
    for c in spec.conditions:
        for t in c.targets:
            if t not in targets:
                raise CkaLabError(f"{where}: [conditions.{c.name}] targets names {t!r}, which is not in [tasks] targets "
                                  f"({', '.join(targets)})")
        if c.from_scratch and c.targets:
            raise CkaLabError(f"{where}: [conditions.{c.name}] is a from-scratch condition: it is every target's "
                              "reference, so it cannot be limited to some targets (drop its targets key)")
        for t in targets:
            if c.applies(t):
                c.pretrain_tasks(t, targets)  # raises for heads that do not fit
    for t in targets:
        kind = task_kind(t)
        if not getattr(spec.data, f"target_{kind}"):
            raise CkaLabError(f"{where}: [data] target_{kind} is empty: the {t} runs need training images")
        if any(not c.from_scratch and c.applies(t) for c in spec.conditions) and not getattr(spec.data, f"pretrain_{kind}"):
            raise CkaLabError(f"{where}: [data] pretrain_{kind} is empty: the {t} pre-trainings need images")
    _check_disjoint(spec, where)
    bad = [p for p in spec.analysis.protocols if p not in PROTOCOLS]
    if bad or not spec.analysis.protocols or len(set(spec.analysis.protocols)) != len(spec.analysis.protocols):
        raise CkaLabError(f"{where}: [analysis] protocols must list distinct protocols out of {', '.join(PROTOCOLS)}, "
                          f"got {list(spec.analysis.protocols)}")
    if spec.analysis.n_samples < 8 or spec.analysis.batch_size < 4:
        raise CkaLabError(f"{where}: [analysis] needs n_samples >= 8 and batch_size >= 4")


def _check_disjoint(spec: StudySpec, where: str) -> None:
    """Refuse a training source that is, contains or lies inside an evaluation folder of the study."""
    kinds = sorted({task_kind(t) for t in spec.tasks.targets})
    evals = {k: spec.eval_path(k) for k in kinds}
    for key in ("pretrain_sr", "pretrain_dn", "target_sr", "target_dn"):
        for src in getattr(spec.data, key):
            sp = spec.source_path(src)
            for kind, ep in evals.items():
                if sp == ep or ep in sp.parents or sp in ep.parents:
                    raise CkaLabError(
                        f"{where}: [data] {key} source {describe_source(src)!r} overlaps the evaluation folder "
                        f"[eval] {kind} = {getattr(spec.eval, kind)!r}: keep the test images out of training")


def load_study(path: str | Path) -> StudySpec:
    """Read a study file (one-line :class:`CkaLabError` when missing or malformed)."""
    path = Path(path)
    if not path.is_file():
        raise CkaLabError(f"study file {str(path)!r} not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CkaLabError(f"cannot read study file {str(path)!r}: {exc}") from None
    return parse_study(text, source=path)
