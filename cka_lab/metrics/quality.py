"""PSNR and SSIM by the field's (and EDT's official) convention.

What the official ``calculate_psnr_ssim(img1, img2, to_y, bd)`` does, and so what this module does:

1. Both images are uint8 (float tensors go through the official ``tensor2img`` first: clamp to
   [0, 1], x255, round half to even -- "uint8 rounding" -- so a float model output is scored as the
   PNG it would be saved as).
2. Cast to float64 on the 0..255 scale.
3. ``y_channel=True``: Y = (65.481 R + 128.553 G + 24.966 B) / 255 + 16, not rounded
   (:func:`cka_lab.data.images.rgb_to_y`). One-channel (gray) images are first repeated to three
   channels, as the official reader (``cv2.IMREAD_COLOR``) would.
4. ``crop_border=b``: drop ``b`` pixels on every side of both images.
5. PSNR = 20 log10(255 / sqrt(MSE)), MSE over all remaining values (all channels when not Y);
   ``inf`` for identical images.
6. SSIM: Gaussian window 11x11, sigma 1.5 (``outer(k, k)`` with k = cv2.getGaussianKernel(11, 1.5),
   the normalised sampled Gaussian), local statistics filtered per channel, then only the "valid"
   part ``[5:-5, 5:-5]`` kept (so the border mode never matters; the official cv2.filter2D uses
   BORDER_REFLECT_101, scipy's ``mode='mirror'`` here), C1 = (0.01*255)^2, C2 = (0.03*255)^2, mean of
   the SSIM map over all pixels and channels.

Images are RGB here (the official code holds BGR; PSNR/SSIM are symmetric in the channel order and Y
uses each channel with its own weight, so results are the same).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage

from cka_lab.data.images import rgb_to_y, to_uint8
from cka_lab.errors import CkaLabError
from cka_lab.tasks import parse_task

SSIM_WINDOW_SIZE = 11
SSIM_SIGMA = 1.5
SSIM_C1 = (0.01 * 255) ** 2
SSIM_C2 = (0.03 * 255) ** 2


def gaussian_kernel_1d(size: int = SSIM_WINDOW_SIZE, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """Normalised sampled Gaussian ``(size,)`` float64: what ``cv2.getGaussianKernel(size, sigma)`` gives.

    ``k[i] = exp(-(i - (size-1)/2)^2 / (2 sigma^2))``, divided by its sum.
    """
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    k = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return k / k.sum()


def _as_uint8_hwc(img: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    """uint8 ``(H, W, C)`` from a uint8 array (HWC or HW) or a float tensor in [0, 1] (uint8 rounding)."""
    if isinstance(img, torch.Tensor):
        if img.is_floating_point():
            return to_uint8(img)
        raise CkaLabError(
            f"{name}: tensors must be float in [0, 1] (got {img.dtype}); pass uint8 data as a numpy array"
        )
    if not isinstance(img, np.ndarray):
        raise CkaLabError(f"{name}: expected a uint8 numpy array (H, W, C) or a float tensor, got {type(img).__name__}")
    if img.dtype != np.uint8:
        raise CkaLabError(
            f"{name}: numpy images must be uint8 (got {img.dtype}); convert floats in [0, 1] with "
            "cka_lab.data.images.to_uint8(torch.from_numpy(x)) or pass a float tensor"
        )
    if img.ndim == 2:
        return img[:, :, None]
    if img.ndim != 3:
        raise CkaLabError(f"{name}: expected an image array (H, W, C), got shape {img.shape}")
    return img


def _prepare(img1, img2, crop_border: int, y_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    """Both images as float64 ``(H', W', C')`` on 0..255, after the Y conversion and border crop."""
    a = _as_uint8_hwc(img1, "img1")
    b = _as_uint8_hwc(img2, "img2")
    if a.shape != b.shape:
        raise CkaLabError(f"images differ in shape: {a.shape} vs {b.shape} (crop or resize one to match)")
    if a.shape[2] not in (1, 3):
        raise CkaLabError(f"images need 1 or 3 channels, got {a.shape[2]}")
    bd = int(crop_border)
    if bd < 0:
        raise CkaLabError(f"crop_border must be >= 0, got {crop_border}")
    h, w = a.shape[:2]
    if 2 * bd >= min(h, w):
        raise CkaLabError(f"crop_border={bd} leaves nothing of a {h}x{w} image; use a smaller border")
    if y_channel:
        if a.shape[2] == 1:
            a, b = np.repeat(a, 3, axis=2), np.repeat(b, 3, axis=2)
        fa, fb = rgb_to_y(a)[:, :, None], rgb_to_y(b)[:, :, None]
    else:
        fa, fb = a.astype(np.float64), b.astype(np.float64)
    if bd:
        fa, fb = fa[bd:-bd, bd:-bd], fb[bd:-bd, bd:-bd]
    return fa, fb


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return float("inf")
    return 20.0 * math.log10(255.0 / math.sqrt(mse))


def _filter(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Separable 2-D Gaussian filter of ``(H, W)``, then the valid crop ``[r:-r, r:-r]``."""
    r = (k.size - 1) // 2
    y = ndimage.correlate1d(x, k, axis=0, mode="mirror")
    y = ndimage.correlate1d(y, k, axis=1, mode="mirror")
    return y[r:-r, r:-r]


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    h, w = a.shape[:2]
    if min(h, w) < SSIM_WINDOW_SIZE:
        raise CkaLabError(
            f"SSIM needs at least {SSIM_WINDOW_SIZE}x{SSIM_WINDOW_SIZE} pixels after the border crop, got {h}x{w}"
        )
    k = gaussian_kernel_1d()
    maps = []
    for c in range(a.shape[2]):
        x, y = a[:, :, c], b[:, :, c]
        mu_x, mu_y = _filter(x, k), _filter(y, k)
        mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
        var_x = _filter(x * x, k) - mu_xx
        var_y = _filter(y * y, k) - mu_yy
        cov = _filter(x * y, k) - mu_xy
        num = (2 * mu_xy + SSIM_C1) * (2 * cov + SSIM_C2)
        den = (mu_xx + mu_yy + SSIM_C1) * (var_x + var_y + SSIM_C2)
        maps.append(num / den)
    return float(np.mean(np.stack(maps, axis=-1)))


def psnr(img1: np.ndarray | torch.Tensor, img2: np.ndarray | torch.Tensor, *,
         crop_border: int = 0, y_channel: bool = False) -> float:
    """PSNR in dB between two images (official convention, see the module docstring).

    Images: uint8 arrays ``(H, W, 3)`` / ``(H, W)`` RGB, or float tensors ``(1, C, H, W)`` in [0, 1],
    which are rounded to uint8 first ("uint8 rounding"). Returns ``inf`` when they are identical.
    """
    a, b = _prepare(img1, img2, crop_border, y_channel)
    return _psnr(a, b)


def ssim(img1: np.ndarray | torch.Tensor, img2: np.ndarray | torch.Tensor, *,
         crop_border: int = 0, y_channel: bool = False) -> float:
    """SSIM between two images (official convention: 11x11 Gaussian window, sigma 1.5, valid region).

    Same inputs as :func:`psnr`. For three channels the SSIM map is averaged over all channels.
    """
    a, b = _prepare(img1, img2, crop_border, y_channel)
    return _ssim(a, b)


def psnr_ssim(img1: np.ndarray | torch.Tensor, img2: np.ndarray | torch.Tensor, *,
              crop_border: int = 0, y_channel: bool = False) -> tuple[float, float]:
    """``(psnr, ssim)`` in one call (the inputs are converted once)."""
    a, b = _prepare(img1, img2, crop_border, y_channel)
    return _psnr(a, b), _ssim(a, b)


def task_metric_settings(task: str) -> tuple[bool, int]:
    """``(y_channel, crop_border)`` that the official test script uses for a task.

    * SR ``x2``/``x3``/``x4`` (any ``x<s>``): Y channel, border = scale.
    * Denoising ``g15``/``g25``/``g50`` (any ``g<sigma>``): RGB, no border.
    * Deraining ``L``/``H`` (also ``dr_L``/``dr_H``): Y channel, no border.
    """
    t = str(task).strip()
    parsed = parse_task(t.removeprefix("dr_") if t in ("dr_L", "dr_H") else t)
    if parsed.kind == "sr":
        return True, parsed.scale
    return parsed.kind == "dr", 0
