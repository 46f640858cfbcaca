"""Trivial baselines of a restoration task, scored exactly like a model on the same evaluation pairs.

A restoration model has learnt something only where it beats what needs no learning:

* SR ``x{s}``: ``bicubic`` -- MATLAB bicubic upscaling (:func:`cka_lab.data.degrade.imresize`) of the
  official LR input;
* denoising ``g{sigma}``: ``noisy`` -- the noisy input itself, and ``blur`` -- the best Gaussian blur of
  the noisy input over :data:`BLUR_SIGMAS` (one sigma for the whole set, the one of the highest mean
  PSNR: an oracle choice, so the baseline is as strong as a fixed blur can be on these images);
* deraining ``L``/``H``: ``rainy`` -- the rainy input itself.

Every baseline image goes through the model's scoring path: uint8 rounding of the float image, then
:func:`~cka_lab.metrics.quality.psnr_ssim` with the task's Y channel / border
(:func:`~cka_lab.metrics.quality.task_metric_settings`), on the same (possibly centre-cropped) pairs.
``cka-lab evaluate`` and the study's tables both call :func:`baseline_scores`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from cka_lab.data.degrade import imresize
from cka_lab.data.images import to_uint8
from cka_lab.errors import CkaLabError
from cka_lab.tasks import parse_task
from cka_lab.metrics.quality import gaussian_kernel_1d, psnr, psnr_ssim, task_metric_settings

__all__ = ["BLUR_SIGMAS", "BaselineScore", "baseline_scores", "baseline_names", "bicubic_upscale", "gaussian_blur"]

BLUR_SIGMAS = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)
"""The sigma grid (pixels) of the ``blur`` baseline of denoising."""


class ScoredPair(Protocol):
    """An evaluation pair (:class:`cka_lab.data.datasets.EvalPair`): ``input (1, 3, h, w)`` float in [0, 1]
    (may exceed it: noisy inputs are not clipped), ``target (H, W, 3)`` uint8."""

    name: str
    input: torch.Tensor
    target: np.ndarray


@dataclass(frozen=True)
class BaselineScore:
    """Mean PSNR (dB) / SSIM of one baseline over ``images`` images; ``detail`` e.g. ``"sigma 1.25"``."""

    name: str
    psnr: float
    ssim: float
    images: int
    detail: str = ""
    per_image: tuple[tuple[str, float, float], ...] = ()  # (image, psnr, ssim)

    def as_dict(self) -> dict:
        return {"name": self.name, "psnr": self.psnr, "ssim": self.ssim, "images": self.images, "detail": self.detail,
                "per_image": [{"name": n, "psnr": p, "ssim": s} for n, p, s in self.per_image]}


def baseline_names(task: str) -> tuple[str, ...]:
    """``x2 -> ("bicubic",)``, ``g25 -> ("noisy", "blur")``, ``L -> ("rainy",)``."""
    task_metric_settings(task)  # one line for an unknown task
    kind = parse_task(task).kind
    return ("bicubic",) if kind == "sr" else ("noisy", "blur") if kind == "dn" else ("rainy",)


def bicubic_upscale(x: torch.Tensor, scale: int) -> np.ndarray:
    """MATLAB bicubic ``x scale`` of an LR input ``(1, 3, h, w)`` (uint8-valued) -> uint8 ``(s h, s w, 3)``."""
    return imresize(to_uint8(x), float(scale))


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(1, C, H, W)`` float, kernel radius ``ceil(3 sigma)`` (at most
    ``min(H, W) - 1``), reflected borders, the normalised sampled kernel of :func:`gaussian_kernel_1d`."""
    if sigma <= 0:
        raise CkaLabError(f"blur sigma must be > 0, got {sigma}")
    h, w = x.shape[-2:]
    r = max(1, min(int(math.ceil(3 * sigma)), min(h, w) - 1))
    k = torch.as_tensor(gaussian_kernel_1d(2 * r + 1, sigma), dtype=torch.float64)
    c = x.shape[1]
    y = F.pad(x.to(torch.float64), (r, r, r, r), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return y.to(x.dtype)


def _score(name: str, images: Sequence[tuple[str, np.ndarray | torch.Tensor]], pairs: Sequence[ScoredPair],
           border: int, y: bool, detail: str = "") -> BaselineScore:
    rows = []
    for (n, img), pair in zip(images, pairs):
        p, s = psnr_ssim(img, pair.target, crop_border=border, y_channel=y)
        rows.append((n, p, s))
    return BaselineScore(name, float(np.mean([r[1] for r in rows])), float(np.mean([r[2] for r in rows])), len(rows),
                         detail, tuple(rows))


def baseline_scores(pairs: Sequence[ScoredPair], task: str, *,
                    blur_sigmas: Sequence[float] = BLUR_SIGMAS) -> list[BaselineScore]:
    """Every trivial baseline of ``task`` (:func:`baseline_names`) on ``pairs``, scored by the task's protocol."""
    if not pairs:
        raise CkaLabError(f"no images to score the baselines of task {task}")
    y, border = task_metric_settings(task)
    t = parse_task(task)
    if t.kind == "sr":
        ups = [(p.name, bicubic_upscale(p.input, t.scale)) for p in pairs]
        return [_score("bicubic", ups, pairs, border, y)]
    inputs = [(p.name, p.input) for p in pairs]
    if t.kind != "dn":
        return [_score("rainy", inputs, pairs, border, y)]
    if not blur_sigmas:
        raise CkaLabError("the blur baseline needs at least one sigma")
    # the sigma of the best mean PSNR, then its SSIM (PSNR alone to choose: SSIM is the slow part)
    means = [float(np.mean([psnr(gaussian_blur(p.input, s), p.target, crop_border=border, y_channel=y) for p in pairs]))
             for s in blur_sigmas]
    best = float(blur_sigmas[int(np.argmax(means))])
    blurred = [(p.name, gaussian_blur(p.input, best)) for p in pairs]
    grid = ", ".join(f"{s:g}" for s in blur_sigmas)
    return [_score("noisy", inputs, pairs, border, y),
            _score("blur", blurred, pairs, border, y, f"Gaussian sigma {best:g} px, the best of {grid}")]
