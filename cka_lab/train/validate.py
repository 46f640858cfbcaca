"""Validation and evaluation: restore whole images with one head and score them by the task's convention.

PSNR / SSIM follow :func:`cka_lab.metrics.quality.task_metric_settings` (SR: Y channel, border =
scale; denoising: RGB, no border; deraining: Y, no border), on the uint8-rounded output, as the
official test script. Inputs are mirror-padded by :meth:`EDT.restore`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from cka_lab.data.datasets import EvalPair, eval_pairs, pixel_digest, select_pairs
from cka_lab.errors import CkaLabError
from cka_lab.metrics.quality import psnr_ssim, task_metric_settings
from cka_lab.models.edt import EDT

__all__ = ["ImageScore", "TaskScore", "evaluate_pairs", "ValidationSets"]


@dataclass(frozen=True)
class ImageScore:
    name: str
    psnr: float
    ssim: float


@dataclass(frozen=True)
class TaskScore:
    """Mean PSNR (dB) / SSIM of one task over ``images`` images, and the wall time it took."""

    task: str
    psnr: float
    ssim: float
    images: int
    seconds: float
    per_image: tuple[ImageScore, ...] = ()


@torch.no_grad()
def evaluate_pairs(model: EDT, pairs: Sequence[EvalPair], task: str, device: torch.device | str = "cpu",
                   restore: Callable[[Tensor], Tensor] | None = None) -> TaskScore:
    """Restore every pair's input with ``task``'s head and score it against the target.

    ``restore`` maps an input ``(1, 3, H, W)`` on ``device`` to its restored image (default
    ``model.restore(x, task)``; e.g. a tiled restore). The model is put in eval mode for the call and
    returned to its previous mode afterwards.
    """
    if not pairs:
        raise CkaLabError(f"no images to evaluate task {task}")
    model.config.head(task)
    y_channel, border = task_metric_settings(task)
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    scores = []
    try:
        for pair in pairs:
            x = pair.input.to(device)
            out = (restore(x) if restore is not None else model.restore(x, task)).float().cpu()
            p, s = psnr_ssim(out, pair.target, crop_border=border, y_channel=y_channel)
            scores.append(ImageScore(pair.name, p, s))
    finally:
        model.train(was_training)
    n = len(scores)
    return TaskScore(
        task,
        sum(s.psnr for s in scores) / n,
        sum(s.ssim for s in scores) / n,
        n,
        time.perf_counter() - t0,
        tuple(scores),
    )


class ValidationSets:
    """The validation pairs of each task of a model, read once.

    ``folders`` maps a head kind (``sr``, ``dn``, ``dr``) to its folder; tasks of kinds without a
    folder are not validated. ``digests`` of the (uncropped) targets let the caller check that no
    validation image is among the training images.
    """

    def __init__(self, tasks: Sequence[str], kinds: Sequence[str], folders: dict[str, Path | None],
                 max_images: int = 0, crop: int = 0):
        self.pairs: dict[str, list[EvalPair]] = {}
        self.digests: dict[str, str] = {}
        for task, kind in zip(tasks, kinds):
            folder = folders.get(kind)
            if folder is None:
                continue
            full = eval_pairs(folder, task)
            for pair in full:
                self.digests[pixel_digest(pair.target)] = f"{Path(folder).name}/{pair.name}"
            self.pairs[task] = select_pairs(full, task, max_images=max_images, crop=crop)

    @property
    def tasks(self) -> list[str]:
        return list(self.pairs)

    def __bool__(self) -> bool:
        return bool(self.pairs)

    def run(self, model: EDT, device: torch.device | str) -> dict[str, TaskScore]:
        return {task: evaluate_pairs(model, pairs, task, device) for task, pairs in self.pairs.items()}
