"""The autocast dtype of a training run, from ``[run] precision`` / ``amp`` and the device."""

from __future__ import annotations

import torch

from cka_lab.errors import CkaLabError
from cka_lab.models.edt import bf16_autocast
from cka_lab.train.config import RunConfig

__all__ = ["autocast_dtype", "precision_label"]


def autocast_dtype(run: RunConfig, device: torch.device) -> torch.dtype | None:
    """``torch.bfloat16`` / ``torch.float16`` to autocast the forward in, or ``None`` for float32.

    ``auto``: mixed precision on CUDA when ``run.amp`` (bf16 where supported, else fp16), float32 on
    CPU. ``bf16`` on a device without native bfloat16 and ``fp16`` off CUDA raise one line.
    """
    device = torch.device(device)
    if run.precision == "fp32":
        return None
    if run.precision == "auto":
        if run.amp and device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return None
    if run.precision == "bf16":
        bf16_autocast(device)  # refuses, in one line, where bf16 is emulated or absent
        return torch.bfloat16
    if run.precision == "fp16":
        if device.type != "cuda":
            raise CkaLabError(f"run.precision = \"fp16\" needs CUDA (this run is on {device.type}): use \"bf16\" or \"fp32\"")
        return torch.float16
    raise CkaLabError(f"run.precision must be auto, fp32, bf16 or fp16, got {run.precision!r}")


def precision_label(dtype: torch.dtype | None) -> str:
    """``"float32"`` or ``"bfloat16 autocast"`` / ``"float16 autocast"`` (checkpoint metadata, logs)."""
    return f"{str(dtype).replace('torch.', '')} autocast" if dtype else "float32"
