"""Uniform-attention baselines: what attention statistics a head would show if it attended uniformly.

A window-attention head that gives every key the same weight still has a mean attention distance: the
mean offset inside its window. For EDT's 6x24 strips that is 8.5 tokens, so a raw distance says more
about the window than about the head. This module computes, exactly, the statistics of uniform
attention under the same windows and shifted-window masks, for one body size ``H x W``:

- ``distance``: mean over query rows of the mean Euclidean key offset (times ``pixel_size``),
- ``entropy``: mean over rows of ``log k`` (nats), ``k`` the number of keys the row may attend to,
- ``max_weight``: mean over rows of ``1 / k`` (the largest weight of a uniform row),
- ``mean_dx`` / ``mean_dy``: the horizontal and vertical components of ``distance``.

Which keys a row may attend to. Plain blocks: every key of the window. Shifted blocks roll the map by
``-shift`` before partitioning, so the last window row/column holds tokens from the opposite image
border; the model adds -100 before the softmax between tokens on different sides of that wrap-around
seam (weight about ``e**-100``), which count here as not allowed. A rolled token at row ``i`` has
wrapped iff ``i >= H - shift_h`` (likewise for columns); a key is allowed iff it has wrapped in the
same way as its query along both axes. This is derived from the geometry, independently of the model's
mask code (a test checks that both agree).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

from cka_lab.errors import CkaLabError
from cka_lab.metrics.attention.stats import window_offsets

__all__ = ["UniformAttention", "shifted_window_regions", "uniform_attention_stats", "allowed_keys"]


@dataclass(frozen=True)
class UniformAttention:
    """Statistics of uniform attention over the allowed keys, means over all query rows of one image."""

    distance: float  # input pixels
    entropy: float  # nats
    max_weight: float
    mean_dx: float  # input pixels
    mean_dy: float  # input pixels
    rows: int  # query rows per image and head: H * W


def _check(size: tuple[int, int], window: tuple[int, int], shift: tuple[int, int] | None) -> None:
    (H, W), (wh, ww) = size, window
    if min(H, W, wh, ww) < 1 or H % wh or W % ww:
        raise CkaLabError(f"a {H}x{W} body map does not split into {wh}x{ww} windows: use a multiple of the window")
    if shift is not None and not (0 <= shift[0] < wh and 0 <= shift[1] < ww):
        raise CkaLabError(f"shift {tuple(shift)} must lie inside the {wh}x{ww} window (0 <= shift < window)")


def shifted_window_regions(
    size: tuple[int, int], window: tuple[int, int], shift: tuple[int, int] | None
) -> Tensor:
    """Region label of every token of every window, ``(nW, N)`` int64, windows and tokens row-major.

    Labels are ``2 * row_wrapped + col_wrapped`` of the token in the rolled map (all 0 without a shift):
    two tokens of a window may attend to each other iff their labels are equal.
    """
    _check(size, window, shift)
    (H, W), (wh, ww) = size, window
    sh, sw = shift if shift is not None else (0, 0)
    rows = (torch.arange(H) >= H - sh).long() if sh else torch.zeros(H, dtype=torch.long)
    cols = (torch.arange(W) >= W - sw).long() if sw else torch.zeros(W, dtype=torch.long)
    label = 2 * rows[:, None] + cols[None, :]  # (H, W)
    return label.view(H // wh, wh, W // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)


def allowed_keys(size: tuple[int, int], window: tuple[int, int], shift: tuple[int, int] | None) -> Tensor:
    """``(nW, N, N)`` bool: may query ``q`` (dim 1) of window ``w`` attend to key ``k`` (dim 2)."""
    labels = shifted_window_regions(size, window, shift)
    return labels[:, :, None] == labels[:, None, :]


@lru_cache(maxsize=64)
def uniform_attention_stats(
    window: tuple[int, int],
    size: tuple[int, int],
    shift: tuple[int, int] | None = None,
    pixel_size: float = 1.0,
) -> UniformAttention:
    """Exact statistics of uniform attention over the allowed keys of every window of an ``H x W`` map.

    ``window = (wh, ww)``, ``size = (H, W)`` the body map (tokens), ``shift = (sh, sw)`` for shifted
    blocks (``None`` for plain ones), ``pixel_size`` input pixels per body token. Windows with the same
    region pattern have the same statistics, so each distinct pattern is enumerated once (float64).
    """
    window, size = tuple(window), tuple(size)
    shift = tuple(shift) if shift is not None else None
    labels = shifted_window_regions(size, window, shift)
    patterns, counts = torch.unique(labels, dim=0, return_counts=True)  # (P, N), (P,)
    allowed = (patterns[:, :, None] == patterns[:, None, :]).double()  # (P, N, N)
    k = allowed.sum(-1)  # (P, N) allowed keys per row
    dy, dx = window_offsets(*window)
    dist = torch.sqrt(dy**2 + dx**2)
    w = counts.double()[:, None] / labels.shape[0] / labels.shape[1]  # weight of each row in the mean over rows

    def row_mean(per_row: Tensor) -> float:
        return float((per_row * w).sum())

    return UniformAttention(
        distance=pixel_size * row_mean((allowed * dist).sum(-1) / k),
        entropy=row_mean(torch.log(k)),
        max_weight=row_mean(1.0 / k),
        mean_dx=pixel_size * row_mean((allowed * dx.abs()).sum(-1) / k),
        mean_dy=pixel_size * row_mean((allowed * dy.abs()).sum(-1) / k),
        rows=size[0] * size[1],
    )
