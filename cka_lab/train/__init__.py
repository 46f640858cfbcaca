"""Training EDT models: TOML configs, patch batches, the loop, DDP, resumable checkpoints.

``load_config(path)`` -> :class:`TrainConfig`; ``train(cfg, out=..., resume=..., max_iters=...)``
-> :class:`TrainResult`. Command lines: ``cka-lab train CONFIG.toml`` and
``torchrun --nproc_per_node N -m cka_lab.train CONFIG.toml``.

Names are imported lazily, so that ``cka-lab --help`` does not load torch.
"""

from __future__ import annotations

import importlib

__all__ = ["TrainConfig", "TrainResult", "load_config", "parse_config", "train"]

_WHERE = {
    "TrainConfig": "cka_lab.train.config",
    "load_config": "cka_lab.train.config",
    "parse_config": "cka_lab.train.config",
    "TrainResult": "cka_lab.train.loop",
    "train": "cka_lab.train.loop",
}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'cka_lab.train' has no attribute {name!r}")
