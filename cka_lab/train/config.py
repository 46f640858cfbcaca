"""Training configuration: a TOML file read into nested frozen dataclasses.

A config file has these sections (every key is optional except ``model.arch``; the defaults are the
official EDT training settings)::

    [run]       name, out, seed, init_seed, data_seed, device, amp, precision, compile, threads, processes
    [model]     arch = "SRx2_EDTT", then any EDTConfig field to override (drop_path_rate, upsampler, ...)
    [data]      root, patch_size, augment, num_workers, sr, dn, dr
    [val]       every, sr, dn, dr, max_images, crop
    [optim]     lr, betas, eps, weight_decay, lr_schedule, milestones, gamma, warmup, min_lr, qk_lr_scale
    [schedule]  iterations, batch_size, ckpt_every, log_every, diagnostics, probe_size
    [finetune]  init, drop, strict

Paths
    Relative paths in the file resolve against the folder that holds the file. ``[data] root`` is
    the folder the data set names (``sr = ["train/Sun_Hays80"]``, ``val.sr = "sr/Set5"``) are
    relative to. Strings may use ``${VAR}`` or ``${VAR:-default}`` (environment variables), so the
    configs in ``checkpoints/configs/`` say ``root = "${CKA_LAB_DATA:-../../../shared/data}"``:
    ``$CKA_LAB_DATA`` when set, else ``shared/data`` next to the repository. ``--data-root`` on the
    command line overrides ``[data] root``.

Unknown sections or keys raise :class:`~cka_lab.errors.CkaLabError` naming the section, the key and
the closest valid key.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cka_lab.data.datasets import ImageSource
from cka_lab.errors import CkaLabError
from cka_lab.io.toml_config import check_scalar, close_match, expand_env, read_toml

__all__ = [
    "ImageSource",
    "RunConfig",
    "ModelConfig",
    "DataConfig",
    "ValConfig",
    "OptimConfig",
    "ScheduleConfig",
    "FinetuneConfig",
    "TrainConfig",
    "load_config",
    "parse_config",
    "config_to_dict",
    "config_differences",
    "RESUMABLE_KEYS",
    "LR_SCHEDULES",
    "PRECISIONS",
]


@dataclass(frozen=True)
class RunConfig:
    """Where and how the run happens.

    ``out`` is the run folder (checkpoints and CSV logs); default ``runs/<name>`` in the working
    directory. ``device`` is ``auto`` (CUDA when available), ``cpu`` or ``cuda[:N]``.

    ``precision`` is one of :data:`PRECISIONS`: ``auto`` (the default) is float32 on CPU and, where
    ``amp`` is true, mixed precision on CUDA (bf16 where supported, else fp16 with a grad scaler);
    ``fp32`` never autocasts; ``bf16`` autocasts to bfloat16 on CUDA or on a CPU with native bf16
    (AVX512-BF16 or AMX; elsewhere it is refused in one line, emulated bf16 being slow); ``fp16`` is
    CUDA only, with a grad scaler. ``compile = true`` trains through ``torch.compile`` (static
    shapes: the first steps compile, minutes on a CPU). ``threads`` sets ``torch.set_num_threads``
    (0: torch's default, or cores / processes under DDP on CPU). ``processes``: on a CPU, the DDP
    ranks ``cka-lab train`` starts itself (0: one per core when the batch divides evenly; see
    :mod:`cka_lab.train.cpu_ranks`).

    Seeds: ``init_seed`` seeds the initial weights and the training-time RNGs (drop-path masks);
    ``data_seed`` seeds the batches (which patches, their augmentation and noise, in which order). Each
    defaults to ``seed``, so a config that gives only ``seed`` behaves as before. Two runs share their
    initialisation exactly when their init seeds are equal (and their architectures draw the same
    weights), and their batch order when their data seeds are equal (and their data is the same).
    """

    name: str = ""
    out: Path | None = None
    seed: int = 0
    init_seed: int | None = None
    data_seed: int | None = None
    device: str = "auto"
    amp: bool = True
    precision: str = "auto"
    compile: bool = False
    threads: int = 0
    processes: int = 0

    def resolved_init_seed(self) -> int:
        """The seed of the initial weights and the training RNGs: ``init_seed``, else ``seed``."""
        return self.seed if self.init_seed is None else self.init_seed

    def resolved_data_seed(self) -> int:
        """The seed of the batch order: ``data_seed``, else ``seed``."""
        return self.seed if self.data_seed is None else self.data_seed


@dataclass(frozen=True)
class ModelConfig:
    """The network: an official architecture name plus EDTConfig field overrides.

    ``overrides`` holds every other key of the ``[model]`` table (e.g. ``drop_path_rate = 0.1``,
    ``upsampler = "pixelshuffle"``, ``depths = [2, 2]``); the task heads and the size come from
    ``arch`` only. ``image_size`` (the size of the stored shifted-window masks) defaults to the
    body-resolution patch size ``data.patch_size``.
    """

    arch: str = ""
    overrides: tuple[tuple[str, Any], ...] = ()

    def override_dict(self) -> dict[str, Any]:
        return {k: (tuple(v) if isinstance(v, list) else v) for k, v in self.overrides}


@dataclass(frozen=True)
class DataConfig:
    """Training data.

    ``patch_size`` is the patch at body resolution, i.e. the LR patch of SR heads (official: 48).
    Denoising / deraining heads that downsample get ``patch_size * 2**depth`` (192) patches; SF
    heads get ``patch_size``. ``sr`` / ``dn`` are folders of clean images (strings, or tables
    ``{path = "...", reduce = 2}``), ``dr`` folders holding ``rain/`` and ``norain/`` pairs. Each is
    needed only when the model has a head of that kind.
    """

    root: Path = Path(".")
    patch_size: int = 48
    augment: bool = True
    num_workers: int = 0
    sr: tuple[ImageSource, ...] = ()
    dn: tuple[ImageSource, ...] = ()
    dr: tuple[Path, ...] = ()


@dataclass(frozen=True)
class ValConfig:
    """Validation every ``every`` iterations (0: never; always at the end when a set is given).

    ``sr`` is a Set5-style folder (``HR/x{s}`` + ``LR_bicubic/x{s}``, or a folder of HR images),
    ``dn`` a folder of clean images (noise by the official protocol: ``np.random.seed(0)`` once per
    noise level, images in sorted order), ``dr`` a folder with ``rain/`` and ``norain/``.
    ``max_images`` keeps the first N images of each set (0: all); ``crop`` centre-crops every input
    to at most ``crop x crop`` pixels (0: full images) -- full-image validation of EDT-B on a CPU is
    slow.
    """

    every: int = 0
    sr: Path | None = None
    dn: Path | None = None
    dr: Path | None = None
    max_images: int = 0
    crop: int = 0


@dataclass(frozen=True)
class OptimConfig:
    """Adam and its learning-rate schedule (defaults: the official EDT recipe).

    Official: lr 2e-4, betas (0.9, 0.99), eps 1e-8, no warm-up, multi-step decay halving the lr at
    the milestones. ``lr_schedule`` is ``"multistep"`` (the lr times ``gamma`` at each milestone) or
    ``"cosine"`` (from ``lr`` down to ``min_lr`` over the iterations after the warm-up; milestones
    and gamma unused). ``warmup`` is a linear warm-up: step ``t`` (0-based) runs at
    ``lr * min(1, (t + 1) / warmup)`` times the decay factor.

    ``milestones`` and ``warmup`` are iteration numbers; floats below 1 are fractions of
    ``schedule.iterations`` (the official ``[250000, 400000, 450000, 475000]`` of 500k is
    ``[0.5, 0.8, 0.9, 0.95]``). The schedule is a pure function of the iteration and the config:
    on ``--resume`` it is rebuilt from the config given (:mod:`cka_lab.train.schedule`).

    ``qk_lr_scale`` runs the query and key rows of every ``qkv`` projection at that multiple of the
    lr (:mod:`cka_lab.train.qk_lr`; 1: the official single lr). A departure from the official recipe.
    """

    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-8
    weight_decay: float = 0.0
    lr_schedule: str = "multistep"
    milestones: tuple[float, ...] = ()
    gamma: float = 0.5
    warmup: float = 0.0
    min_lr: float = 0.0
    qk_lr_scale: float = 1.0


@dataclass(frozen=True)
class ScheduleConfig:
    """Length and bookkeeping. ``batch_size`` is per head and per process.

    ``diagnostics`` (on by default) adds to every row of ``train_log.csv``, per stage, the
    update-to-weight ratios of q, k and v over the log interval and the attention entropy and logit
    spread on a fixed probe batch of ``probe_size`` training patches per head
    (:mod:`cka_lab.train.diagnostics`); it does not change the training.
    """

    iterations: int = 1000
    batch_size: int = 4
    ckpt_every: int = 100
    log_every: int = 10
    diagnostics: bool = True
    probe_size: int = 2


@dataclass(frozen=True)
class FinetuneConfig:
    """Initialise from a pre-trained checkpoint (cka_lab or official ``.pth``).

    ``drop`` removes every checkpoint key containing one of its strings (the official
    ``FILTER_LIST`` rule, e.g. ``["x3", "x4"]``). ``strict = true`` requires the rest to match the
    model key for key; ``strict = false`` leaves model weights the checkpoint lacks at their fresh
    initialisation (shape mismatches are always errors).
    """

    init: Path | None = None
    drop: tuple[str, ...] = ()
    strict: bool = True


@dataclass(frozen=True)
class TrainConfig:
    """A whole training run. ``source`` is the config file and ``text`` its TOML text."""

    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    val: ValConfig = field(default_factory=ValConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    source: Path | None = None
    text: str = ""

    def _iterations(self, value: float) -> int:
        return int(round(value * self.schedule.iterations)) if isinstance(value, float) and value < 1 else int(value)

    def resolved_milestones(self) -> list[int]:
        """Milestones as iteration numbers, sorted."""
        return sorted(self._iterations(m) for m in self.optim.milestones)

    def resolved_warmup(self) -> int:
        """Warm-up length in iterations."""
        return self._iterations(self.optim.warmup)


_SECTIONS: dict[str, type] = {
    "run": RunConfig,
    "model": ModelConfig,
    "data": DataConfig,
    "val": ValConfig,
    "optim": OptimConfig,
    "schedule": ScheduleConfig,
    "finetune": FinetuneConfig,
}

#: Keys that may differ between a run and its ``--resume`` (``section.key``).
RESUMABLE_KEYS = frozenset(
    {
        "run.name",
        "run.out",
        "run.device",
        "run.threads",
        "run.processes",
        "run.compile",
        "data.num_workers",
        "data.root",
        "schedule.iterations",
        "schedule.ckpt_every",
        "schedule.log_every",
        "schedule.diagnostics",
        "schedule.probe_size",
        # the lr schedule is rebuilt from the config on --resume (the optimizer's own settings are not)
        "optim.lr_schedule",
        "optim.milestones",
        "optim.gamma",
        "optim.warmup",
        "optim.min_lr",
        "val.every",
        "val.max_images",
        "val.crop",
        "val.sr",
        "val.dn",
        "val.dr",
        "finetune.init",
    }
)

#: Values of ``optim.lr_schedule``.
LR_SCHEDULES = ("multistep", "cosine")

#: Values of ``run.precision``.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

_close = close_match
_expand = expand_env
_scalar = check_scalar


def _path(value: Any, where: str, base: Path) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise CkaLabError(f"{where} must be a path string, got {value!r}")
    p = Path(os.path.expanduser(_expand(value, where)))
    return p if p.is_absolute() else (base / p)


def _source(value: Any, where: str, base: Path) -> ImageSource:
    if isinstance(value, str):
        return ImageSource(_path(value, where, base))
    if isinstance(value, dict):
        keys = ("path", "reduce", "weight")
        unknown = [k for k in value if k not in keys]
        if unknown:
            raise CkaLabError(f"{where}: unknown key {unknown[0]!r}{_close(unknown[0], keys)}; "
                              "an image source is a path string or {path = \"...\", reduce = 2, weight = 1.0}")
        if "path" not in value:
            raise CkaLabError(f"{where}: an image source table needs a 'path'")
        reduce = _scalar(value.get("reduce", 1), int, f"{where}.reduce")
        if reduce < 1:
            raise CkaLabError(f"{where}.reduce must be >= 1, got {reduce}")
        weight = None
        if "weight" in value:
            weight = _scalar(value["weight"], float, f"{where}.weight")
            if not weight > 0:
                raise CkaLabError(f"{where}.weight must be > 0, got {weight}")
        return ImageSource(_path(value["path"], f"{where}.path", base), reduce, weight)
    raise CkaLabError(f"{where} must be a path string or a table {{path = ..., reduce = ...}}, got {value!r}")


def _convert(value: Any, tp: Any, where: str, base: Path) -> Any:
    """Check and convert one TOML value to the annotated field type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(value, args[0], where, base)
    if tp is Path:
        return _path(value, where, base)
    if tp is ImageSource:
        return _source(value, where, base)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list):
            if args and args[-1] is Ellipsis and not isinstance(value, (dict, bool)):
                value = [value]  # a single value where a list is expected
            else:
                raise CkaLabError(f"{where} must be a list, got {value!r}")
        if args and args[-1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{where}[{i}]", base) for i, v in enumerate(value))
        if len(value) != len(args):
            raise CkaLabError(f"{where} must be a list of {len(args)} values, got {value!r}")
        return tuple(_convert(v, a, f"{where}[{i}]", base) for i, (v, a) in enumerate(zip(value, args)))
    return _scalar(value, tp, where)


def _section(name: str, cls: type, table: Any, base: Path) -> Any:
    if not isinstance(table, dict):
        raise CkaLabError(f"[{name}] must be a table (a [{name}] section), got {table!r}")
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    if cls is ModelConfig:
        return _model_section(table)
    kwargs = {}
    for key, value in table.items():
        if key not in fields:
            raise CkaLabError(f"[{name}] has no key {key!r}{_close(key, fields)}; valid keys: {', '.join(fields)}")
        kwargs[key] = _convert(value, hints[key], f"{name}.{key}", base)
    return cls(**kwargs)


#: [model] numbers with a range: key -> (test, the range in words).
_MODEL_RANGES = {
    "drop_path_rate": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "mlp_ratio": (lambda v: v > 0, "> 0"),
}


def _check_finite(value: Any, where: str) -> None:
    """Refuse (one line, naming the field) an inf or nan anywhere in a [model] value."""
    if isinstance(value, float) and not math.isfinite(value):
        raise CkaLabError(f"{where} must be a finite number, got {value!r}")
    if isinstance(value, list):
        for i, v in enumerate(value):
            _check_finite(v, f"{where}[{i}]")


def _model_section(table: dict) -> ModelConfig:
    from cka_lab.models.registry import EDTConfig

    fixed = {"scales", "noise_levels", "rain_levels", "size", "sf"}
    allowed = [f.name for f in dataclasses.fields(EDTConfig) if f.name not in fixed]
    if "arch" not in table:
        raise CkaLabError("[model] needs arch = \"<official name>\", e.g. arch = \"SRx2_EDTT\"")
    arch = _scalar(table["arch"], str, "model.arch")
    overrides = []
    for key, value in table.items():
        if key == "arch":
            continue
        if key in fixed:
            raise CkaLabError(f"[model] {key!r} comes from the architecture name; change model.arch instead")
        if key not in allowed:
            raise CkaLabError(
                f"[model] has no key {key!r}{_close(key, ['arch'] + allowed)}; valid keys: arch, {', '.join(allowed)}"
            )
        _check_finite(value, f"model.{key}")
        if key in _MODEL_RANGES and isinstance(value, (int, float)) and not _MODEL_RANGES[key][0](value):
            raise CkaLabError(f"model.{key} must be {_MODEL_RANGES[key][1]}, got {value!r}")
        overrides.append((key, tuple(value) if isinstance(value, list) else value))
    cfg = ModelConfig(arch=arch, overrides=tuple(sorted(overrides)))
    # Fail now, not after the data is loaded, on a bad name or override.
    from cka_lab.models.registry import config_from_name

    try:
        config_from_name(arch, **cfg.override_dict())
    except TypeError as exc:
        raise CkaLabError(f"[model] bad override: {exc}") from None
    return cfg


def parse_config(text: str, *, source: Path | None = None, data_root: str | Path | None = None) -> TrainConfig:
    """Parse TOML text into a :class:`TrainConfig` (relative paths resolve against ``source``'s folder)."""
    where = str(source) if source else "config"
    raw = read_toml(text, where)
    base = source.resolve().parent if source else Path.cwd()
    unknown = [k for k in raw if k not in _SECTIONS]
    if unknown:
        key = unknown[0]
        kind = "section" if isinstance(raw[key], dict) else "top-level key"
        raise CkaLabError(
            f"{where}: unknown {kind} {key!r}{_close(key, _SECTIONS)}; sections are {', '.join(f'[{s}]' for s in _SECTIONS)}"
        )
    if "model" not in raw:
        raise CkaLabError(f"{where}: missing [model] section with arch = \"<official name>\", e.g. \"SRx2_EDTT\"")
    data_table = raw.get("data", {})
    if data_root is not None:
        root = Path(os.path.expanduser(str(data_root))).resolve()
    elif isinstance(data_table, dict) and "root" in data_table:
        root = _path(data_table["root"], "data.root", base).resolve()
    else:
        root = base
    parts: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        # data set names ([data] sr/dn/dr, [val] sr/dn/dr) are relative to [data] root
        parts[name] = _section(name, cls, raw.get(name, {}), root if name in ("data", "val") else base)
    parts["data"] = dataclasses.replace(parts["data"], root=root)
    name = parts["run"].name or (source.stem if source else "run")
    if name in (".", "..") or "/" in name or "\\" in name or name.startswith(".") or "\0" in name:
        raise CkaLabError(f"{where}: [run] name {name!r} must be a plain folder name (no '/', no leading '.'): "
                          "the run folder is runs/<name>; set [run] out for another place")
    parts["run"] = dataclasses.replace(parts["run"], name=name)
    cfg = TrainConfig(**parts, source=source.resolve() if source else None, text=text)
    _validate(cfg, where)
    return cfg


def _validate(cfg: TrainConfig, where: str) -> None:
    s, o, d, v = cfg.schedule, cfg.optim, cfg.data, cfg.val
    for key, value, low in (
        ("schedule.iterations", s.iterations, 1),
        ("schedule.batch_size", s.batch_size, 1),
        ("schedule.ckpt_every", s.ckpt_every, 1),
        ("schedule.log_every", s.log_every, 1),
        ("data.patch_size", d.patch_size, 1),
        ("data.num_workers", d.num_workers, 0),
        ("val.every", v.every, 0),
        ("val.max_images", v.max_images, 0),
        ("val.crop", v.crop, 0),
        ("run.threads", cfg.run.threads, 0),
        ("run.processes", cfg.run.processes, 0),
        ("run.seed", cfg.run.seed, 0),
        ("run.init_seed", cfg.run.resolved_init_seed(), 0),
        ("run.data_seed", cfg.run.resolved_data_seed(), 0),
    ):
        if value < low:
            raise CkaLabError(f"{where}: {key} must be >= {low}, got {value}")
    if o.lr <= 0:
        raise CkaLabError(f"{where}: optim.lr must be > 0, got {o.lr}")
    if not all(0 <= b < 1 for b in o.betas):
        raise CkaLabError(f"{where}: optim.betas must be in [0, 1), got {list(o.betas)}")
    if not (0 < o.eps < 1):
        raise CkaLabError(f"{where}: optim.eps must be in (0, 1), got {o.eps}")
    if o.weight_decay < 0:
        raise CkaLabError(f"{where}: optim.weight_decay must be >= 0, got {o.weight_decay}")
    if o.lr_schedule not in LR_SCHEDULES:
        raise CkaLabError(f"{where}: optim.lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {o.lr_schedule!r}")
    if any(m <= 0 for m in o.milestones):
        raise CkaLabError(f"{where}: optim.milestones must be positive, got {list(o.milestones)}")
    if any(m >= 1 and m != int(m) for m in o.milestones):
        raise CkaLabError(f"{where}: optim.milestones must be iterations (whole numbers) or fractions below 1, got {list(o.milestones)}")
    if o.lr_schedule == "cosine" and o.milestones:
        raise CkaLabError(f"{where}: optim.milestones apply to lr_schedule = \"multistep\" only (cosine decays smoothly); remove them")
    if not (0 < o.gamma <= 1):
        raise CkaLabError(f"{where}: optim.gamma must be in (0, 1], got {o.gamma}")
    if o.warmup < 0 or (o.warmup >= 1 and o.warmup != int(o.warmup)):
        raise CkaLabError(f"{where}: optim.warmup must be a number of iterations >= 0 or a fraction below 1, got {o.warmup}")
    if cfg.resolved_warmup() > s.iterations:
        raise CkaLabError(f"{where}: optim.warmup ({cfg.resolved_warmup()} iterations) is longer than schedule.iterations ({s.iterations})")
    if not (0 < o.qk_lr_scale <= 1000):
        raise CkaLabError(f"{where}: optim.qk_lr_scale must be in (0, 1000], got {o.qk_lr_scale}")
    if not (0 <= o.min_lr <= o.lr):
        raise CkaLabError(f"{where}: optim.min_lr must be in [0, optim.lr], got {o.min_lr}")
    if not (1 <= s.probe_size <= 64):
        raise CkaLabError(f"{where}: schedule.probe_size must be in 1..64, got {s.probe_size}")
    if cfg.run.precision not in PRECISIONS:
        raise CkaLabError(f"{where}: run.precision must be one of {', '.join(PRECISIONS)}, got {cfg.run.precision!r}")
    if cfg.run.device != "auto" and not re.fullmatch(r"cpu|cuda(:\d+)?", cfg.run.device):
        raise CkaLabError(f"{where}: run.device must be auto, cpu, cuda or cuda:N, got {cfg.run.device!r}")


_MAX_CONFIG_BYTES = 1 << 20


def load_config(path: str | Path, *, data_root: str | Path | None = None) -> TrainConfig:
    """Read a TOML training config. ``data_root`` replaces ``[data] root`` (relative to the CWD)."""
    from cka_lab.io.inputs import open_input

    path = Path(path)
    try:  # a folder, a FIFO or a huge file is refused before it is read
        with open_input(path, "config file", max_bytes=_MAX_CONFIG_BYTES, hint="a training config is a small TOML file") as f:
            text = f.read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CkaLabError(f"cannot read config {str(path)!r}: {exc}") from None
    return parse_config(text, source=path, data_root=data_root)


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, ImageSource):
        out = {"path": str(value.path), "reduce": value.reduce}
        if value.weight is not None:
            out["weight"] = value.weight
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _relative_to(p: Path, root: Path) -> Path:
    try:
        return p.resolve().relative_to(root)
    except ValueError:
        return p


def config_to_dict(cfg: TrainConfig) -> dict[str, dict[str, Any]]:
    """The resolved config as plain types, section -> key -> value.

    Paths are strings; data set paths under ``data.root`` are written relative to it, so that the
    same run with its data moved elsewhere (``--data-root``) has the same dict.
    """
    root = cfg.data.root
    out: dict[str, dict[str, Any]] = {}
    for name in _SECTIONS:
        sec = getattr(cfg, name)
        if name == "model":
            out[name] = {"arch": sec.arch, **{k: _plain(v) for k, v in sec.overrides}}
            continue
        if name == "data":
            sec = dataclasses.replace(
                sec,
                sr=tuple(dataclasses.replace(s, path=_relative_to(s.path, root)) for s in sec.sr),
                dn=tuple(dataclasses.replace(s, path=_relative_to(s.path, root)) for s in sec.dn),
                dr=tuple(_relative_to(p, root) for p in sec.dr),
            )
        elif name == "val":
            sec = dataclasses.replace(
                sec, **{k: _relative_to(getattr(sec, k), root) for k in ("sr", "dn", "dr") if getattr(sec, k)}
            )
        out[name] = {f.name: _plain(getattr(sec, f.name)) for f in dataclasses.fields(sec)}
    return out


def _defaults(section: str) -> dict[str, Any]:
    cls = _SECTIONS.get(section)
    if cls is None or cls is ModelConfig:
        return {}
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = _plain(f.default)
    return out


def config_differences(old: dict, new: dict, *, ignore: frozenset[str] = RESUMABLE_KEYS) -> list[str]:
    """``section.key`` entries whose values differ between two :func:`config_to_dict` results.

    A key missing from one side (a config written before the key existed) counts as its default.
    """
    diffs = []
    for section in sorted(set(old) | set(new)):
        defaults = _defaults(section)
        a = {**defaults, **old.get(section, {})}
        b = {**defaults, **new.get(section, {})}
        for key in sorted(set(a) | set(b)):
            name = f"{section}.{key}"
            if name in ignore:
                continue
            if a.get(key) != b.get(key):
                diffs.append(f"{name} is {a.get(key)!r} there but {b.get(key)!r} here")
    return diffs
