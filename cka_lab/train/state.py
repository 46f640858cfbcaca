"""Training state in checkpoints: RNG states as plain types, and the ``train`` entry of a checkpoint.

A training checkpoint is a cka_lab checkpoint (:func:`cka_lab.models.save_checkpoint`, written
atomically: temp file, fsync, rename) whose ``train`` entry holds::

    iteration     steps completed
    optimizer     optimizer.state_dict()
    scheduler     lr scheduler state_dict()
    scaler        AMP grad-scaler state_dict() or None
    rng           one entry per rank: {torch, numpy, python, cuda}
    world_size    processes of the run
    config        the resolved config (plain dict), compared on --resume
    config_toml   the config file's text
    best_psnr     best mean validation PSNR so far (None before any validation)

Everything is tensors and plain Python types, so ``torch.load(weights_only=True)`` reads it.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cka_lab.errors import CkaLabError
from cka_lab.models.checkpoint import Checkpoint, read_checkpoint

__all__ = ["capture_rng", "restore_rng", "seed_everything", "read_training_checkpoint", "LAST", "BEST"]

LAST = "last.pt"
BEST = "best.pt"


def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy's global RNG and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng() -> dict[str, Any]:
    """The global RNG states of torch (CPU, CUDA), numpy and python, as weights-only-loadable values."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": random.getstate(),
    }


def _to_tuple(x: Any) -> Any:
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def restore_rng(state: dict[str, Any]) -> None:
    """Set the global RNGs back to a :func:`capture_rng` result."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    random.setstate(_to_tuple(state["python"]))


def read_training_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint to resume from; it must hold a ``train`` entry."""
    ckpt = read_checkpoint(path)
    train = ckpt.train
    if not isinstance(train, dict) or "iteration" not in train or "optimizer" not in train:
        raise CkaLabError(
            f"{path} holds no training state (optimizer, iteration): it is a weights-only file; "
            "use it as [finetune] init instead of resuming from it"
        )
    return ckpt
