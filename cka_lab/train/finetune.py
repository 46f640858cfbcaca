"""Initialise a model from a pre-trained checkpoint before fine-tuning.

``drop`` removes every checkpoint key that contains one of its strings (the official
``FILTER_LIST`` rule). With ``strict`` the rest must match the model key for key
(:func:`cka_lab.models.load_weights`); without it, model weights that the checkpoint lacks keep their
fresh initialisation and checkpoint keys the model lacks are ignored -- shapes must still agree.

The pre-trained and the fine-tuned model must be the same EDT size (T/S/B/L, SF or not): a
checkpoint of another size is refused with one line naming both architectures.

Official EDT-T example: the SRx2x3x4 pre-trained model uses ``pixelshuffle`` tails, the official
SRx2 fine-tune ``pixelshuffledirect``. Either keep the pre-trained tail (``[model] upsampler =
"pixelshuffle"``, ``drop = ["x3", "x4"]``, strict) -- what the bundled configs do -- or drop the
upsampler too (``drop = ["x3", "x4", "tail_sr_x2.2", "tail_sr_x2.3"]``, ``strict = false``) and
let it start fresh.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from cka_lab.errors import CkaLabError
from cka_lab.models.checkpoint import Checkpoint, infer_edt, is_mask_key, load_weights, read_checkpoint
from cka_lab.models.edt import EDT

__all__ = ["InitReport", "init_from_checkpoint"]


@dataclass
class InitReport:
    """What an initialisation loaded: counts of tensors, and the model keys left at fresh init."""

    path: Path
    arch: str
    loaded: int
    dropped: int
    fresh: list[str] = field(default_factory=list)

    def describe(self) -> str:
        line = f"initialised from {self.path} ({self.arch}): {self.loaded} tensors loaded, {self.dropped} dropped"
        if self.fresh:
            line += f", {len(self.fresh)} left at fresh init (first: {self.fresh[0]})"
        return line


def _size_signature(cfg) -> tuple:
    return (cfg.embed_dim, tuple(cfg.depths), tuple(cfg.num_heads), cfg.num_feat, cfg.sf, cfg.depth)


def init_from_checkpoint(model: EDT, path: str | Path, drop=(), strict: bool = True) -> InitReport:
    """Load pre-trained weights into ``model`` (see the module docstring). Returns what was loaded."""
    path = Path(path)
    ckpt = read_checkpoint(path)
    try:
        src_cfg = ckpt.config or infer_edt(ckpt.state_dict)
    except CkaLabError:
        raise CkaLabError(f"finetune.init {path} is not an EDT checkpoint (no EDT head/body keys)") from None
    if _size_signature(src_cfg) != _size_signature(model.config):
        raise CkaLabError(
            f"finetune.init {path} is a {src_cfg.name} checkpoint, another architecture than the model "
            f"{model.config.name} (embed_dim {src_cfg.embed_dim} vs {model.config.embed_dim}, "
            f"depths {list(src_cfg.depths)} vs {list(model.config.depths)}): fine-tune a model of the same size"
        )
    drop = [d for d in drop if d]
    kept = OrderedDict((k, v) for k, v in ckpt.state_dict.items() if not any(d in k for d in drop))
    n_dropped = len(ckpt.state_dict) - len(kept)
    if strict:
        load_weights(model, Checkpoint(ckpt.path, kept, ckpt.format, ckpt.config, ckpt.meta, ckpt.train))
        return InitReport(path, src_cfg.name, len(kept), n_dropped)
    own = model.state_dict()
    usable = OrderedDict()
    for key, value in kept.items():
        if is_mask_key(key) or key not in own:
            continue
        if own[key].shape != value.shape:
            raise CkaLabError(
                f"{str(path)!r} does not fit {model.config.name}: {key} has shape {tuple(value.shape)} in the "
                f"checkpoint but {tuple(own[key].shape)} in the model; add it to finetune.drop to start it fresh"
            )
        usable[key] = value
    if not any(k.startswith("body.") for k in usable):
        raise CkaLabError(f"finetune.init {path} shares no body weights with {model.config.name}: check finetune.drop")
    model.load_state_dict(usable, strict=False)
    fresh = [k for k in own if k not in usable and not is_mask_key(k)]
    return InitReport(path, src_cfg.name, len(usable), n_dropped, fresh)
