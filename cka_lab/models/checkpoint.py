"""Reading and writing EDT weights: official ``.pth`` files and cka_lab's own checkpoints.

Every file is read with ``torch.load(..., weights_only=True)``: a file that would run code when
unpickled is refused, never executed.

* Official layout (``utils/model_opr.py``): the file *is* the state dict, a flat name -> tensor
  mapping, including the shifted-window mask buffers ``...blocks.{odd}.attn_mask_h/v`` sized for the
  training patch. Common wrappers (``params``, ``params_ema``, ``state_dict``, ``model``) and a
  ``module.`` prefix are accepted too.
* cka_lab layout: ``{"format": "cka_lab/1", "arch": <official name>, "model": state_dict,
  "config": {EDTConfig fields}, "meta": {...}, "train": {...}}``. Mask buffers are left out
  (they are recomputed), which keeps EDT-T files near 4 MB. ``meta`` always records what wrote the
  weights (:data:`PROVENANCE_KEYS`): ``torch`` and ``cka_lab`` versions, ``git_commit`` of the cka_lab
  checkout (None outside a git checkout), ``device`` and ``precision``; the caller's values win, so an
  exported file keeps those of the training run.
"""

from __future__ import annotations

import functools
import io
import math
import os
import pickle
import subprocess
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import Tensor

from cka_lab.errors import CkaLabError
from cka_lab.tasks import RAIN_LEVELS, parse_task
from cka_lab.io import atomic_write
from cka_lab.models.edt import EDT
from cka_lab.models.registry import SIZES, EDTConfig, config_from_name

__all__ = [
    "FORMAT",
    "Checkpoint",
    "read_checkpoint",
    "load_weights",
    "load_model",
    "infer_edt",
    "save_checkpoint",
    "atomic_torch_save",
    "is_mask_key",
    "PROVENANCE_KEYS",
    "provenance",
    "git_commit",
]

FORMAT = "cka_lab/1"
_WRAPPERS = ("params_ema", "params", "state_dict", "model", "net", "network")


def is_mask_key(key: str) -> bool:
    """Shifted-window mask buffers: derived from the input size, never learned."""
    return key.endswith(".attn_mask_h") or key.endswith(".attn_mask_v")


@dataclass
class Checkpoint:
    """What a weights file holds: the state dict and, for cka_lab files, its config and metadata."""

    path: Path
    state_dict: "OrderedDict[str, Tensor]"
    format: str  # "cka_lab/1" or "official"
    config: EDTConfig | None = None
    meta: dict = field(default_factory=dict)
    train: dict | None = None

    @property
    def arch(self) -> str:
        return (self.config or infer_edt(self.state_dict)).name


def _max_checkpoint_bytes() -> int:
    from cka_lab.models.bounds import available_memory

    return available_memory("cpu")


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)`` of a file checked first: a regular file (a FIFO would block
    forever) that fits in memory. torch's warnings are silenced: the outcome is one line either way."""
    from cka_lab.io.inputs import open_input

    with open_input(path, "checkpoint", max_bytes=_max_checkpoint_bytes(),
                    hint="free some memory, or load it on a machine with more") as f:
        magic = f.read(4)
        if not (magic.startswith(b"PK\x03\x04") or magic[:1] == b"\x80"):  # zip (torch.save) or a raw pickle
            raise CkaLabError(f"{str(path)!r} is not a PyTorch checkpoint (it is neither a torch.save zip nor a pickle)")
        f.seek(0)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4", "looks like a TorchScript archive"
                return torch.load(f, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a file that is not a checkpoint
            raise _load_error(path, exc) from None


def _load_error(path: Path, exc: Exception) -> CkaLabError:
    """One line for a file ``torch.load(weights_only=True)`` refused; never torch's advice to load unsafely."""
    msg = str(exc)
    if isinstance(exc, pickle.UnpicklingError) or "weights only load failed" in msg.lower():
        if "global" in msg.lower() or "reduce" in msg.lower():
            return CkaLabError(
                f"refusing to load {str(path)!r}: it holds pickled Python objects that could run code "
                "(only tensors and plain types are accepted); re-save it as a state dict from a trusted source"
            )
    if "TorchScript" in msg:
        return CkaLabError(f"{str(path)!r} is a TorchScript archive, not a checkpoint: save the model's state_dict "
                           "with torch.save and load that")
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip() and "weights_only" not in ln
             and "weights only load failed" not in ln.lower()]
    first = lines[0] if lines else type(exc).__name__
    for cut in ("In PyTorch 2.6", "Re-running `torch.load`"):  # torch's advice, when on the same line
        first = first.split(cut, 1)[0].strip() or type(exc).__name__
    if "weights only load failed" in msg.lower():
        return CkaLabError(f"refusing to load {str(path)!r}: the safe (weights-only) loader cannot read it "
                           f"({_clip(first)}); re-save it with torch.save from a trusted source")
    return CkaLabError(f"{str(path)!r} is not a PyTorch checkpoint ({_clip(first)})")


def _clip(text: str, limit: int = 160) -> str:
    """``text`` cut to at most ``limit`` characters at a word boundary, with "..." when cut."""
    if len(text) <= limit:
        return text
    cut = text[: limit + 1].rsplit(" ", 1)[0].rstrip(" ,;:")
    return (cut if len(cut) > limit // 2 else text[:limit]) + " ..."


def _as_state_dict(obj: Any, path: Path) -> "OrderedDict[str, Tensor]":
    if isinstance(obj, Mapping):
        for key in _WRAPPERS:
            if key in obj and isinstance(obj[key], Mapping) and obj[key] and not isinstance(obj[key], Tensor):
                inner = obj[key]
                if all(isinstance(v, Tensor) for v in inner.values()):
                    obj = inner
                    break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CkaLabError(
            f"{str(path)!r} holds no state dict (expected a mapping of parameter names to tensors)"
        )
    sd = OrderedDict((str(k), v) for k, v in obj.items())
    if all(k.startswith("module.") for k in sd):
        sd = OrderedDict((k[len("module.") :], v) for k, v in sd.items())
    return sd


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a cka_lab or official weights file (``weights_only=True``) without building a model."""
    path = Path(path)
    obj = _torch_load(path)
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        for key in ("config", "model"):
            if key not in obj:
                raise _damaged(path, f"it has no {key!r} entry")
        cfg = _config_from(obj["config"], path)
        sd = _as_state_dict(obj["model"], path)
        meta = obj.get("meta")
        _check_fields(meta, _META_TYPES, "meta", path)
        _check_val(meta, path)
        _check_fields(obj.get("train"), _TRAIN_TYPES, "train", path)
        return Checkpoint(path, sd, FORMAT, cfg, dict(meta or {}), obj.get("train"))
    return Checkpoint(path, _as_state_dict(obj, path), "official")


# What each entry of a cka_lab checkpoint must be: a damaged file (any field of the wrong type) is one line.
_NUMBER = (int, float)
_META_TYPES: dict[str, tuple] = {
    **{k: (str, type(None)) for k in ("torch", "cka_lab", "git_commit", "device", "precision", "run", "config_file",
                                      "config_toml")},
    "iteration": (int, type(None)),
    "val": (Mapping, type(None)),
}
_TRAIN_TYPES: dict[str, tuple] = {
    "iteration": (int,), "optimizer": (Mapping,), "scheduler": (Mapping,), "scaler": (Mapping, type(None)),
    "rng": (list, tuple), "world_size": (int,), "config": (Mapping,), "config_toml": (str,),
    "best_psnr": (*_NUMBER, type(None)),
}


def _kind(value: Any) -> str:
    return {list: "a list", tuple: "a list", str: "a string", int: "an integer", float: "a number", bool: "a boolean",
            type(None): "null"}.get(type(value), f"a {type(value).__name__}")


def _damaged(path: Path, what: str) -> CkaLabError:
    return CkaLabError(f"{str(path)!r} is a damaged cka_lab checkpoint: {what}; re-save it, or use another file")


def _check_fields(entry: Any, types: Mapping[str, tuple], name: str, path: Path) -> None:
    """``entry`` (``meta`` / ``train``) must be a table (or absent) whose known keys have their types."""
    if entry is None:
        return
    if not isinstance(entry, Mapping):
        raise _damaged(path, f"its {name!r} is {_kind(entry)}, expected a table")
    for key, value in entry.items():
        if not isinstance(key, str):
            raise _damaged(path, f"its {name!r} has the key {key!r}, expected names")
        want = types.get(key)
        if want is not None and (not isinstance(value, want) or (isinstance(value, bool) and bool not in want)):
            raise _damaged(path, f"{name}.{key} is {_kind(value)}")


def _check_val(meta: Any, path: Path) -> None:
    """``meta.val``: task -> {psnr, ssim, images} with numbers (or null)."""
    val = meta.get("val") if isinstance(meta, Mapping) else None
    for task, score in (val or {}).items():
        if not isinstance(score, Mapping):
            raise _damaged(path, f"meta.val.{task} is {_kind(score)}, expected a table")
        for k in ("psnr", "ssim"):
            v = score.get(k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, _NUMBER)):
                raise _damaged(path, f"meta.val.{task}.{k} is {_kind(v)}")


def _config_from(d: Any, path: Path) -> EDTConfig:
    """The EDTConfig of a checkpoint's ``config`` entry, every field checked against its default's type."""
    if not isinstance(d, Mapping):
        raise _damaged(path, f"its 'config' is {_kind(d)}, expected a table")
    defaults = EDTConfig()
    for key, value in d.items():
        if not isinstance(key, str) or not hasattr(defaults, key):
            raise _damaged(path, f"its config has the unknown field {key!r}")
        default = getattr(defaults, key)
        if isinstance(default, tuple):
            items = value if isinstance(value, (list, tuple)) else None
            elem = type(default[0]) if default else (str if key == "rain_levels" else int)
            if items is None or not all(_is_a(v, elem) for v in items):
                raise _damaged(path, f"config.{key} is {_kind(value)} {value!r:.40}, expected a list of {elem.__name__}s")
        elif not _is_a(value, type(default)):
            raise _damaged(path, f"config.{key} is {_kind(value)} {value!r:.40}, expected {_kind(default)}")
        elif isinstance(value, int) and not isinstance(value, bool) and value < 0:
            raise _damaged(path, f"config.{key} is {value}, expected a size >= 0")
    try:
        return EDTConfig.from_dict(dict(d))
    except (TypeError, ValueError) as exc:
        raise _damaged(path, f"its config does not describe an EDT ({exc})") from None


def _is_a(value: Any, tp: type) -> bool:
    if tp is float:
        return isinstance(value, _NUMBER) and not isinstance(value, bool) and math.isfinite(value)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


# --------------------------------------------------------------------------------------------------
# Inferring the architecture from a state dict
# --------------------------------------------------------------------------------------------------


def _bad(what: str) -> CkaLabError:
    return CkaLabError(f"not an EDT state dict: {what}")


def _heads_in(sd: Mapping[str, Tensor]) -> tuple[list[int], list[int], list[str]]:
    scales, noise, rain = [], [], []
    for key in sd:
        if not key.endswith(".0.weight") or not key.startswith("head_"):
            continue
        kind, _, level = key[len("head_") : -len(".0.weight")].partition("_")
        try:
            task = parse_task(level)
        except CkaLabError:
            task = None
        if task is not None and task.kind == kind:
            {"sr": scales, "dn": noise, "dr": rain}[kind].append(task.level)
        else:
            raise _bad(f"head key {key!r} names no task (expected head_sr_x<scale>, head_dn_g<sigma> or head_dr_L/H)")
    return sorted(scales), sorted(noise), [r for r in RAIN_LEVELS if r in rain]


def _shape(sd: Mapping[str, Tensor], key: str, ndim: int) -> tuple[int, ...]:
    """The shape of ``sd[key]``, which must exist and have ``ndim`` dimensions (one line otherwise)."""
    if key not in sd:
        raise _bad(f"{key} is missing")
    shape = tuple(sd[key].shape)
    if len(shape) != ndim or 0 in shape:
        raise _bad(f"{key} has shape {shape}, expected a non-empty {ndim}-D tensor")
    return shape


def _indices(keys: Iterable[str], prefix: str, what: str) -> int:
    """The count of ``prefix<i>.`` entries, which must be numbered 0, 1, ..., n-1 (one line otherwise)."""
    found = set()
    for k in keys:
        if k.startswith(prefix):
            part = k[len(prefix):].split(".", 1)[0]
            if not part.isdigit():
                raise _bad(f"{what} index {part!r} in {k!r} is not a number")
            found.add(int(part))
    if not found:
        raise _bad(f"no {what}s ({prefix}<i>.* keys)")
    if max(found) != len(found) - 1:
        missing = next(i for i in range(len(found) + 1) if i not in found)
        raise _bad(f"{what}s are numbered {min(found)}..{max(found)} but {prefix}{missing} is missing")
    return len(found)


def infer_edt(state_dict: Mapping[str, Tensor]) -> EDTConfig:
    """Recover the :class:`EDTConfig` (tasks, size, SF, upsampler, widths) from a state dict's keys and shapes.

    A state dict that is not a whole EDT (a head that names no task, a layer or block index that is not a
    number or leaves a gap, a weight of the wrong rank, no layers) is refused in one line (CkaLabError).
    """
    sd = state_dict
    scales, noise, rain = _heads_in(sd)
    if not (scales or noise or rain) or "body.patch_embed.norm.weight" not in sd:
        raise _bad("no head_<task>.0.weight or body.patch_embed keys found")
    embed = _shape(sd, "body.patch_embed.norm.weight", 1)[0]
    n_layers = _indices(sd, "body.layers.", "layer")
    depths = tuple(
        _indices(sd, f"body.layers.{i}.residual_group.blocks.", f"block of layer {i}") for i in range(n_layers)
    )
    first = f"head_sr_x{scales[0]}" if scales else (f"head_dn_g{noise[0]}" if noise else f"head_dr_{rain[0]}")
    num_feat, in_ch = _shape(sd, f"{first}.0.weight", 4)[:2]
    depth = sum(1 for k in sd if k.startswith(f"{first}.") and k.endswith(".conv_1.weight"))
    other = f"head_dn_g{noise[0]}" if noise else (f"head_dr_{rain[0]}" if rain else None)
    sf = other is not None and f"{other}.1.conv_down.weight" not in sd
    upsampler = "pixelshuffle"
    if scales and f"tail_sr_x{scales[0]}.{depth + 1}.weight" not in sd:
        upsampler = "pixelshuffledirect"
    size = next((s for s, spec in SIZES.items() if spec.embed_dim == embed and spec.depths == depths), None)
    if size is None:
        raise CkaLabError(
            f"EDT state dict with embed_dim {embed} and depths {depths} matches no EDT size (T/S/B/L)"
        )
    hidden = _shape(sd, "body.layers.0.residual_group.blocks.0.mlp.fc1.weight", 2)[0]
    mask = next((v for k, v in sd.items() if is_mask_key(k)), None)
    cfg = config_from_name(
        "_".join([_tasks_name(scales, noise, rain), f"EDT{size}{'SF' if sf else ''}"]),
        num_feat=int(num_feat),
        in_channels=int(in_ch),
        depth=int(depth),
        upsampler=upsampler,
        mlp_ratio=hidden / embed,
    )
    if mask is not None and mask.ndim >= 2:
        n_win, n_tok = mask.shape[0], mask.shape[1]
        side = round((n_win * n_tok) ** 0.5)
        if side * side == n_win * n_tok:
            cfg = _replace(cfg, image_size=side)
    return cfg


def _replace(cfg: EDTConfig, **kw) -> EDTConfig:
    import dataclasses

    return dataclasses.replace(cfg, **kw)


def _tasks_name(scales, noise, rain) -> str:
    out = ""
    if scales:
        out += "SR" + "".join(f"x{s}" for s in scales)
    if noise:
        out += "DN" + "".join(f"g{n}" for n in noise)
    if rain:
        out += "DR" + "".join(f"{r.lower()}s" for r in rain)
    return out


# --------------------------------------------------------------------------------------------------
# Loading into a model
# --------------------------------------------------------------------------------------------------


def _filter(sd: Mapping[str, Tensor], drop: Iterable[str]) -> "OrderedDict[str, Tensor]":
    """Drop every key containing any of ``drop`` as a substring (the official filter-list rule)."""
    drop = [d for d in drop if d]
    return OrderedDict((k, v) for k, v in sd.items() if not any(d in k for d in drop))


def load_weights(model: EDT, path: str | os.PathLike | Checkpoint, *, drop: Iterable[str] = ()) -> EDT:
    """Load an official ``.pth`` or cka_lab checkpoint into ``model`` (strictly), returning the model.

    ``drop`` removes every checkpoint key that contains one of its strings, like the official
    ``FILTER_LIST`` (``drop=("x3", "x4")`` loads the x2 branch of an SRx2x3x4 model into an SRx2 one).
    Mask buffers may be present (official files, sized for the training patch) or absent (fixtures,
    cka_lab files); masks for other sizes are computed on the fly.
    """
    ckpt = path if isinstance(path, Checkpoint) else read_checkpoint(path)
    sd = _filter(ckpt.state_dict, drop)
    own = model.state_dict()
    name = getattr(model, "name", type(model).__name__)
    src = str(ckpt.path)
    for key, value in sd.items():
        if key in own and own[key].shape != value.shape and not is_mask_key(key):
            raise CkaLabError(
                f"{src!r} does not fit {name}: {key} has shape {tuple(value.shape)} in the checkpoint but "
                f"{tuple(own[key].shape)} in the model (checkpoint architecture: {_arch_or_unknown(sd)})"
            )
    unexpected = [k for k in sd if k not in own]
    if unexpected:
        raise CkaLabError(
            f"{src!r} does not fit {name}: the checkpoint has {unexpected[0]}"
            f"{f' and {len(unexpected) - 1} more keys' if len(unexpected) > 1 else ''} that the model lacks "
            f"(checkpoint architecture: {_arch_or_unknown(sd)}; pass drop=[...] to leave heads out)"
        )
    missing = [k for k in own if k not in sd and not is_mask_key(k)]
    if missing:
        raise CkaLabError(
            f"{src!r} does not fit {name}: the checkpoint lacks {missing[0]}"
            f"{f' and {len(missing) - 1} more keys' if len(missing) > 1 else ''} "
            f"(checkpoint architecture: {_arch_or_unknown(sd)})"
        )
    usable = OrderedDict(
        (k, v) for k, v in sd.items() if not is_mask_key(k) or own[k].shape == v.shape
    )
    bad = [k for k, v in usable.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CkaLabError(f"{src!r} has NaN or infinite values in {bad[0]}: the weights are damaged")
    model.load_state_dict(usable, strict=False)
    return model


def _arch_or_unknown(sd: Mapping[str, Tensor]) -> str:
    try:
        return infer_edt(sd).name
    except CkaLabError:
        return "not EDT"


def load_model(
    path: str | os.PathLike, *, arch: str | None = None, drop: Iterable[str] = (), device: str | torch.device = "cpu"
) -> EDT:
    """Build the right EDT for a weights file and load it: ``arch`` overrides the inferred architecture.

    Returns the model in eval mode, with ``model.checkpoint_info`` describing where it came from.
    """
    ckpt = read_checkpoint(path)
    sd = _filter(ckpt.state_dict, drop)
    if arch is not None:
        cfg = config_from_name(arch)
    elif ckpt.config is not None and not drop:
        cfg = ckpt.config
        _check_config_fits_weights(cfg, sd, ckpt.path)
    else:
        cfg = infer_edt(sd)
    from cka_lab.models.bounds import available_memory, check_fits, stored_mask_bytes

    check_fits(stored_mask_bytes(cfg), available_memory("cpu"), f"the attention masks of image_size {cfg.image_size} "
               f"in {str(ckpt.path)!r}", "its config is damaged, or give --arch")
    model = EDT(cfg)
    load_weights(model, Checkpoint(ckpt.path, sd, ckpt.format, ckpt.config, ckpt.meta, ckpt.train))
    model.checkpoint_info = {"path": str(ckpt.path), "format": ckpt.format, **ckpt.meta}
    return model.to(device).eval()


def _check_config_fits_weights(cfg: EDTConfig, sd: Mapping[str, Tensor], path: Path) -> None:
    """A checkpoint's config must describe its own weights (a damaged one is refused before a model is built)."""
    if len(cfg.window_size) != 2 or min(cfg.window_size) < 1 or len(cfg.num_heads) != len(cfg.depths):
        raise _damaged(path, f"its config has window_size {list(cfg.window_size)}, {len(cfg.depths)} depths and "
                             f"{len(cfg.num_heads)} head counts")
    try:
        embed = _shape(sd, "body.patch_embed.norm.weight", 1)[0]
        n_layers = _indices(sd, "body.layers.", "layer")
        depths = tuple(_indices(sd, f"body.layers.{i}.residual_group.blocks.", f"block of layer {i}")
                       for i in range(n_layers))
    except CkaLabError as exc:
        raise _damaged(path, str(exc)) from None
    if embed != cfg.embed_dim or depths != tuple(cfg.depths):
        raise _damaged(path, f"its config says embed_dim {cfg.embed_dim}, depths {list(cfg.depths)} but its weights "
                             f"have embed_dim {embed}, depths {list(depths)}")


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    A crash while writing leaves the previous file at ``path`` intact.
    """
    path = Path(path)
    buf = io.BytesIO()
    torch.save(obj, buf)
    with atomic_write(path, "wb") as f:  # temp file (O_EXCL | O_NOFOLLOW) beside path, fsync, rename
        f.write(buf.getbuffer())
    return path


PROVENANCE_KEYS = ("torch", "cka_lab", "git_commit", "device", "precision")


@functools.cache
def git_commit() -> str | None:
    """``git rev-parse HEAD`` of the checkout cka_lab is imported from; None when there is none (silently)."""
    pkg = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(
            ["git", "-C", str(pkg), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out if len(out) == 40 and all(c in "0123456789abcdef" for c in out) else None


def provenance(model: torch.nn.Module) -> dict[str, Any]:
    """What is writing these weights: torch and cka_lab versions, git commit, the model's device and dtype."""
    import cka_lab

    p = next(iter(model.parameters()), None)
    return {
        "torch": str(torch.__version__),  # TorchVersion, a str subclass, would not load with weights_only
        "cka_lab": str(cka_lab.__version__),
        "git_commit": git_commit(),
        "device": str(p.device) if p is not None else "cpu",
        "precision": str(p.dtype).replace("torch.", "") if p is not None else "float32",
    }


def save_checkpoint(
    path: str | os.PathLike,
    model: EDT,
    *,
    meta: Mapping[str, Any] | None = None,
    train: Mapping[str, Any] | None = None,
) -> Path:
    """Write a cka_lab checkpoint atomically (mask buffers left out; they are recomputed on load).

    ``meta`` is stored with :func:`provenance` filled in underneath it (keys the caller gives win).
    """
    model = getattr(model, "module", model)
    sd = OrderedDict((k, v.detach().cpu()) for k, v in model.state_dict().items() if not is_mask_key(k))
    obj = {
        "format": FORMAT,
        "arch": model.config.name,
        "model": sd,
        "config": model.config.to_dict(),
        "meta": {**provenance(model), **dict(meta or {})},
    }
    if train is not None:
        obj["train"] = dict(train)
    return atomic_torch_save(obj, path)
