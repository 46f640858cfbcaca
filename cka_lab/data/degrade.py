"""Degradations: MATLAB-style bicubic resizing and Gaussian noise (the official test protocols).

* :func:`imresize` is MATLAB's ``imresize(img, scale, 'bicubic')`` (antialiased when downscaling).
  For uint8 input it follows ``im2uint8(imresize(im2double(img), scale))``: divide by 255, resize in
  float64, multiply by 255, round half away from zero. That reproduces the official Set5
  ``LR_bicubic`` files bit-exactly for x2, x3 and x4 (checked in ``tests/data/test_degrade.py``).
* :func:`official_noisy` is EDT's denoising input: ``np.random.seed(seed)`` then
  ``np.random.normal(0, sigma, (H, W, 3))`` added in BGR order to the float image, no clipping.
* :func:`add_gaussian_noise` is the torch version for training (``sigma / 255`` std, no clipping).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from cka_lab.data.images import to_uint8, uint8_to_tensor
from cka_lab.errors import CkaLabError

KERNEL_WIDTH = 4.0  # support of the Keys cubic (a = -0.5), in input pixels, before antialiasing


def cubic(x: np.ndarray) -> np.ndarray:
    """Keys cubic convolution kernel with a = -0.5 (MATLAB's ``cubic``), support [-2, 2]."""
    ax = np.abs(x)
    ax2 = ax * ax
    ax3 = ax2 * ax
    inner = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
    outer = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return inner + outer


def contributions(in_length: int, out_length: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Weights and source indices of a 1-D MATLAB bicubic resize (MATLAB's ``contributions``).

    Returns ``weights (out_length, P)`` float64 (each row sums to 1) and ``indices (out_length, P)``
    int64, 0-based, already mirrored into ``[0, in_length)`` (symmetric padding: the edge pixel is
    repeated). Output pixel ``x`` (1-based) sits at input position ``u = x / scale + 0.5 (1 - 1/scale)``.
    When downscaling, the kernel is stretched by ``1/scale`` (antialiasing). Columns whose weights are
    all zero are dropped, as MATLAB does.
    """
    if scale < 1:
        width = KERNEL_WIDTH / scale

        def kernel(d: np.ndarray) -> np.ndarray:
            return scale * cubic(scale * d)
    else:
        width = KERNEL_WIDTH
        kernel = cubic
    x = np.arange(1, out_length + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - width / 2.0)
    taps = int(math.ceil(width)) + 2
    idx = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]  # 1-based source positions
    weights = kernel(u[:, None] - idx)
    total = np.zeros(out_length)
    for k in range(taps):  # sequential sum, tap by tap (the float rounding matters for exact ties)
        total = total + weights[:, k]
    weights = weights / total[:, None]
    mirror = np.concatenate([np.arange(in_length), np.arange(in_length - 1, -1, -1)])
    idx0 = mirror[np.mod(idx.astype(np.int64) - 1, 2 * in_length)]
    keep = np.any(weights != 0, axis=0)
    return weights[:, keep], idx0[:, keep]


def _resize_axis(a: np.ndarray, axis: int, out_length: int, scale: float) -> np.ndarray:
    """Resize float64 ``a`` along ``axis``: a weighted gather, accumulated tap by tap like MATLAB."""
    weights, idx = contributions(a.shape[axis], out_length, scale)
    src = np.moveaxis(a, axis, 0)
    bshape = (out_length,) + (1,) * (src.ndim - 1)
    out = np.zeros((out_length,) + src.shape[1:], dtype=np.float64)
    for k in range(weights.shape[1]):
        out += weights[:, k].reshape(bshape) * src[idx[:, k]]
    return np.moveaxis(out, 0, axis)


def _out_length(n: int, scale: float) -> int:
    exact = n * scale
    nearest = round(exact)
    return int(nearest) if abs(exact - nearest) < 1e-9 else int(math.ceil(exact))


def imresize(img: np.ndarray, scale: float) -> np.ndarray:
    """MATLAB ``imresize(img, scale)`` with the bicubic kernel, on ``(H, W)`` or ``(H, W, C)`` arrays.

    Output size is ``ceil(H * scale) x ceil(W * scale)`` (``scale=1/3`` on 255 gives 85). The
    dimension with the smaller scale goes first; with one scale for both, height then width.

    * uint8 in -> uint8 out: values are divided by 255, resized in float64, multiplied by 255 and
      rounded half away from zero (MATLAB ``im2double`` / ``im2uint8``), clipped to [0, 255].
    * float in -> same float dtype out, computed in float64, not clipped.
    """
    arr = np.asarray(img)
    if arr.ndim not in (2, 3):
        raise CkaLabError(f"imresize expects an image (H, W) or (H, W, C), got shape {arr.shape}")
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise CkaLabError(f"imresize scale must be a positive number, got {scale!r}")
    is_uint8 = arr.dtype == np.uint8
    if not is_uint8 and not np.issubdtype(arr.dtype, np.floating):
        raise CkaLabError(f"imresize takes uint8 or float arrays, got dtype {arr.dtype}")
    out = arr.astype(np.float64) / 255.0 if is_uint8 else arr.astype(np.float64)
    scale = float(scale)
    for axis in (0, 1):  # equal scales: height first, then width (MATLAB's stable sort of the scales)
        n_out = _out_length(arr.shape[axis], scale)
        if n_out < 1:
            raise CkaLabError(f"imresize by {scale} makes an empty image from shape {arr.shape}")
        out = _resize_axis(out, axis, n_out, scale)
    if is_uint8:
        return np.floor(np.clip(out * 255.0, 0.0, 255.0) + 0.5).astype(np.uint8)
    return out.astype(arr.dtype)


def bicubic_downscale(x: torch.Tensor, scale: int, *, uint8_rounding: bool = True) -> torch.Tensor:
    """MATLAB bicubic downscaling of a float tensor ``(N, C, H, W)`` in [0, 1] by an integer ``scale``.

    Returns ``(N, C, H / scale, W / scale)`` float32. H and W must be multiples of ``scale``
    (:func:`cka_lab.data.images.modcrop` first). With ``uint8_rounding`` (default) the input goes
    through the official ``tensor2img`` rounding, is resized as uint8 (exactly as the official LR
    files were made) and the result is ``uint8 / 255``; without it the resize runs on the float values
    and the output is neither rounded nor clipped.
    """
    if x.dim() != 4:
        raise CkaLabError(f"bicubic_downscale expects a tensor (N, C, H, W), got shape {tuple(x.shape)}")
    s = int(scale)
    if s != scale or s < 1:
        raise CkaLabError(f"bicubic_downscale scale must be a positive integer, got {scale!r}")
    h, w = x.shape[-2:]
    if h % s or w % s:
        raise CkaLabError(f"image size {h}x{w} is not a multiple of scale {s}; modcrop it first")
    outs = []
    for img in x.detach().cpu():
        if uint8_rounding:
            outs.append(uint8_to_tensor(imresize(to_uint8(img), 1.0 / s))[0])
        else:
            hwc = img.numpy().astype(np.float64).transpose(1, 2, 0)
            lr = imresize(hwc, 1.0 / s)
            outs.append(torch.from_numpy(np.ascontiguousarray(lr.transpose(2, 0, 1))).to(torch.float32))
    return torch.stack(outs).to(x.device)


def add_gaussian_noise(x: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``x + N(0, (sigma/255)^2)`` for ``x`` in [0, 1], any shape; fresh noise on every call, no clipping.

    Pass a seeded ``torch.Generator`` (on ``x``'s device) for reproducible noise.
    """
    if sigma < 0:
        raise CkaLabError(f"noise sigma must be >= 0 (on the 0..255 scale), got {sigma}")
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return x + noise * (float(sigma) / 255.0)


def official_noisy(clean: np.ndarray, sigma: float, seed: int = 0,
                   rng: np.random.RandomState | None = None) -> torch.Tensor:
    """EDT's noisy test input for a clean uint8 RGB image ``(H, W, 3)`` -> float32 ``(1, 3, H, W)``.

    As ``test_sample.py``: the image (BGR there) is cast to float32; noise
    ``np.random.normal(0, sigma, (H, W, 3))`` is drawn in float64 in **BGR** channel order from
    ``np.random.seed(seed)``; sum in float64, divided by 255, cast to float32. No clipping, no
    rounding. The global numpy random state is not touched: the stream comes from
    ``RandomState(seed)``, which equals ``np.random.seed(seed)``. To follow the official script over a
    folder (seed once, then images in sorted name order), pass one ``rng=np.random.RandomState(0)`` to
    every call; ``seed`` is then ignored.
    """
    arr = np.asarray(clean)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise CkaLabError(
            f"official_noisy needs a uint8 RGB array (H, W, 3), got dtype {arr.dtype} shape {arr.shape}"
        )
    if sigma < 0:
        raise CkaLabError(f"noise sigma must be >= 0 (on the 0..255 scale), got {sigma}")
    state = rng if rng is not None else np.random.RandomState(seed)
    bgr = arr[:, :, ::-1].astype(np.float32)
    noisy_bgr = bgr + state.normal(loc=0.0, scale=sigma, size=bgr.shape)  # float64
    chw = noisy_bgr[:, :, ::-1].transpose(2, 0, 1) / 255.0
    return torch.from_numpy(np.ascontiguousarray(chw)).float().unsqueeze(0)
