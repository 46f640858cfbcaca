"""Restoring large images in overlapping tiles, with memory bounded by the tile, not the image.

How a tile is cut (``m`` = the head's padding multiple, 24 for SR, 24*2**depth otherwise):

* the image is split into **cores** of ``tile x tile`` input pixels (``tile`` a multiple of ``m``), on
  the grid that starts at the top-left corner; the last core of a row/column holds what is left;
* each core is grown by ``overlap`` pixels of real context on every side (clipped to the image) and
  this tile is restored with :meth:`EDT.restore`; only the core of its output is kept
  (**overlap crop-and-paste**: every output pixel comes from exactly one tile, the one in whose core
  it lies, with at least ``overlap`` pixels of true context around it).

Why this equals the whole-image result: tile origins are multiples of ``m``, so the windows (and
shifted windows) inside a tile coincide with the whole image's; a tile touching the bottom/right
border is padded by the official rule to the same extent with the same mirrored pixels as the whole
image. EDT's shifted windows roll cyclically (the wrapped tokens are masked with a finite -100, as in
the official code), which ties the image's first rows/columns weakly to its last padded ones: on the
bundled EDT-T SR x2 model a plain top tile differed by 1.9e-4 there whatever the overlap, so a tile
touching the top/left border gets a band of the padded image's last ``overlap`` rows/columns appended.
What remains is the context beyond ``overlap`` px at a cut edge, whose influence on the core decays
fast (measured on the bundled EDT-T SR x2 model, 1 CPU thread: 1.1e-2 at the cut, 2.4e-7 beyond 24 px;
tiled vs whole with tile 48 and overlap 24: 3.1e-5). A weighted blend of overlapping tiles would
average two such approximations and need float accumulators for the whole output; crop-and-paste
needs neither and leaves no seam, since neighbouring cores both agree with the whole image.

``plan_tiles`` picks the tile size: the whole image if its estimated forward memory fits the budget
(a quarter of the available memory on CPU, half of the free memory on CUDA), else the largest core
whose tile fits. Images whose output exceeds :data:`MAX_OUTPUT_PIXELS` are refused in one line.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from cka_lab.data.images import MAX_PIXELS
from cka_lab.errors import CkaLabError

__all__ = [
    "MAX_OUTPUT_PIXELS",
    "DEFAULT_OVERLAP",
    "TilePlan",
    "check_pixel_limit",
    "check_tile_args",
    "forward_bytes_per_pixel",
    "memory_budget",
    "pad_index",
    "plan_tiles",
    "restore_tiled",
    "restore_tiled_uint8",
    "tile_spans",
]

#: Hard limit on the restored image: 600 megapixels (e.g. 24000 x 24000; a 12000^2 image at x2).
MAX_OUTPUT_PIXELS = MAX_PIXELS
#: Context kept around every core, in input pixels (rounded up to a multiple of the head's ``m``).
DEFAULT_OVERLAP = 96


@dataclass(frozen=True)
class TilePlan:
    """How to restore one image: ``tile`` core side in input pixels (0: the whole image at once) and the
    ``overlap`` of context on every side; ``bytes_per_tile`` the estimated forward memory of one tile."""

    tile: int
    overlap: int
    n_tiles: int
    bytes_per_tile: int

    @property
    def whole(self) -> bool:
        return self.tile == 0


def check_pixel_limit(h: int, w: int, scale: int, what: str = "image") -> None:
    """One line if an ``h x w`` input restored at ``scale`` exceeds :data:`MAX_OUTPUT_PIXELS`."""
    out = h * w * scale * scale
    if out > MAX_OUTPUT_PIXELS:
        raise CkaLabError(
            f"{what} is {w}x{h} px, {w * scale}x{h * scale} after restoring: more than the limit of "
            f"{MAX_OUTPUT_PIXELS / 1e6:.0f} megapixels of output; split it into parts first"
        )


def check_tile_args(tile: int | None, overlap: int | None) -> None:
    """One line for a negative ``--tile`` or ``--tile-overlap``."""
    if tile is not None and tile < 0:
        raise CkaLabError(f"--tile must be >= 0 (0: the whole image at once), got {tile}")
    if overlap is not None and overlap < 0:
        raise CkaLabError(f"--tile-overlap must be >= 0, got {overlap}")


def forward_bytes_per_pixel(cfg, task: str) -> float:
    """Estimated peak bytes of an inference forward pass per input pixel (float32, no autograd).

    The body holds a few token tensors of ``embed_dim`` and the MLP's hidden width per token, plus one
    attention matrix row of ``N = window area`` per head and token; the head/tail hold ``num_feat``
    feature maps at full (SR: output) resolution. A factor 2 covers temporaries.
    """
    head = cfg.head(task)
    wa = cfg.window_size[0] * cfg.window_size[1]
    tokens = 1.0 / cfg.token_stride(task) ** 2
    per_token = 6 * cfg.embed_dim + cfg.mlp_ratio * cfg.embed_dim + max(cfg.num_heads) * wa
    s = head.out_scale
    per_pixel_convs = 4 * cfg.num_feat * max(1, s * s) + 6 * 3 * s * s
    return 2 * 4 * (tokens * per_token + per_pixel_convs)


def memory_budget(device: torch.device | str) -> int:
    """Bytes one forward pass may use: half the free CUDA memory, or a quarter of the available RAM
    (:func:`cka_lab.models.bounds.available_memory`: also bounded by a cgroup limit or ``RLIMIT_AS``)."""
    from cka_lab.models.bounds import available_memory

    device = torch.device(device)
    return int(available_memory(device) * (0.5 if device.type == "cuda" else 0.25))


def tile_spans(n: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Along one axis of ``n`` pixels: ``(core_start, core_end, in_start, in_end)`` per tile.

    Cores ``[k*tile, min((k+1)*tile, n))`` cover ``0..n`` once; each input span adds ``overlap`` on both
    sides, clipped to ``[0, n)``. ``tile >= n`` (or 0) gives one span.
    """
    if tile <= 0 or tile >= n:
        return [(0, n, 0, n)]
    spans = []
    for c0 in range(0, n, tile):
        c1 = min(c0 + tile, n)
        spans.append((c0, c1, max(0, c0 - overlap), min(n, c1 + overlap)))
    return spans


def _round_up(v: int, m: int) -> int:
    return -(-v // m) * m


def plan_tiles(cfg, task: str, h: int, w: int, *, tile: int | None = None, overlap: int | None = None,
               budget: int | None = None, device: torch.device | str = "cpu") -> TilePlan:
    """Choose how to restore an ``h x w`` input with ``task``'s head.

    ``tile``: core side requested (``None``: automatic, 0: never tile); rounded up to the head's padding
    multiple ``m``. ``overlap`` (default :data:`DEFAULT_OVERLAP`) is rounded up to ``m`` as well.
    ``budget`` (bytes) defaults to :func:`memory_budget` of ``device``.
    """
    head = cfg.head(task)
    check_pixel_limit(h, w, head.out_scale)
    check_tile_args(tile, overlap)
    m = cfg.pad_multiple(task)
    ov = _round_up(DEFAULT_OVERLAP if overlap is None else overlap, m)
    bpp = forward_bytes_per_pixel(cfg, task)

    def padded(n: int) -> int:
        return (n // m + 1) * m

    whole_bytes = int(bpp * padded(h) * padded(w))
    if tile == 0 or (tile is None and whole_bytes <= (memory_budget(device) if budget is None else budget)):
        return TilePlan(0, 0, 1, whole_bytes)
    if tile is None:
        limit = memory_budget(device) if budget is None else budget
        side = int(math.sqrt(limit / bpp)) - 2 * ov - m  # the tile with its context and padding fits
        core = max(m, side // m * m)
    else:
        core = _round_up(tile, m)
    n = len(tile_spans(h, core, ov)) * len(tile_spans(w, core, ov))
    if n == 1:
        return TilePlan(0, 0, 1, whole_bytes)
    return TilePlan(core, ov, n, int(bpp * padded(min(h, core + 2 * ov)) * padded(min(w, core + 2 * ov))))


def pad_index(n: int, multiple: int) -> Tensor:
    """Source index of every row of :func:`cka_lab.models.edt.mirror_pad` of ``n`` rows: ``(n_pad,)`` int64."""
    from cka_lab.models.edt import mirror_pad

    return mirror_pad(torch.arange(n, dtype=torch.float64).view(1, 1, n, 1), multiple)[0, 0, :, 0].long()


def _axis_tiles(n: int, m: int, plan: TilePlan) -> list[tuple[Tensor, slice, slice]]:
    """Per tile along one axis: (source indices of the tile, core in image coordinates, core in the tile).

    A tile reaching the image's end takes the official mirror padding with it (as the whole image has).
    A tile that starts at 0 but stops short of the end gets a band of the whole padded image's last
    ``overlap`` rows appended: EDT's shifted windows roll cyclically (masked with a finite -100), which
    ties the image's first rows weakly to its last padded rows; the band gives the tile those rows.
    """
    padded = pad_index(n, m)
    out = []
    for c0, c1, i0, i1 in tile_spans(n, plan.tile, plan.overlap):
        if i1 == n:
            idx = padded[i0:]
        else:
            idx = padded[i0:i1]
            if i0 == 0 and plan.overlap:
                idx = torch.cat([idx, padded[len(padded) - plan.overlap:]])
        out.append((idx, slice(c0, c1), slice(c0 - i0, c1 - i0)))
    return out


def _tiles(h: int, w: int, m: int, plan: TilePlan) -> Iterator[tuple[Tensor, Tensor, slice, slice, slice, slice]]:
    """``(row_index, col_index, rows_core, cols_core, rows_core_in_tile, cols_core_in_tile)`` in input pixels."""
    cols = _axis_tiles(w, m, plan)
    for ridx, rcore, rin in _axis_tiles(h, m, plan):
        for cidx, ccore, cin in cols:
            yield ridx, cidx, rcore, ccore, rin, cin


def _scaled(sl: slice, s: int) -> slice:
    return slice(sl.start * s, sl.stop * s)


@torch.no_grad()
def restore_tiled(model, x: Tensor, task: str, plan: TilePlan) -> Tensor:
    """``x (1, 3, H, W)`` float in [0, 1] -> ``(1, 3, sH, sW)`` float on ``x``'s device, tile by tile.

    The output is allocated once; each tile's core is pasted in. With ``plan.whole`` this is
    :meth:`EDT.restore`.
    """
    if plan.whole:
        return model.restore(x, task)
    s = model.config.head(task).out_scale
    h, w = x.shape[-2:]
    out = torch.empty(x.shape[0], x.shape[1], h * s, w * s, dtype=x.dtype, device=x.device)
    for ridx, cidx, rcore, ccore, rin, cin in _tiles(h, w, model.config.pad_multiple(task), plan):
        tile = x.index_select(-2, ridx.to(x.device)).index_select(-1, cidx.to(x.device))
        y = model.forward_task(tile, task)
        out[..., _scaled(rcore, s), _scaled(ccore, s)] = y[..., _scaled(rin, s), _scaled(cin, s)]
    return out


@torch.no_grad()
def restore_tiled_uint8(model, image: np.ndarray, task: str, plan: TilePlan,
                        device: torch.device | str = "cpu", progress=None) -> np.ndarray:
    """uint8 ``(H, W, 3)`` -> restored uint8 ``(sH, sW, 3)`` (official rounding), tile by tile.

    Only the uint8 input and output are held whole; each tile is made float on ``device``, restored,
    rounded (:func:`cka_lab.data.images.to_uint8` semantics: clamp, x255 in float32, round half to
    even) and pasted. ``progress``: an optional callable taking the number of tiles done.
    """
    from cka_lab.data.images import to_uint8, uint8_to_tensor

    s = model.config.head(task).out_scale
    h, w = image.shape[:2]
    if plan.whole:
        return to_uint8(model.restore(uint8_to_tensor(image).to(device), task))
    out = np.empty((h * s, w * s, image.shape[2]), dtype=np.uint8)
    for k, (ridx, cidx, rcore, ccore, rin, cin) in enumerate(_tiles(h, w, model.config.pad_multiple(task), plan)):
        x = uint8_to_tensor(image[np.ix_(ridx.numpy(), cidx.numpy())]).to(device)
        y = model.forward_task(x, task)[..., _scaled(rin, s), _scaled(cin, s)]
        out[_scaled(rcore, s), _scaled(ccore, s)] = to_uint8(y)
        if progress is not None:
            progress(k + 1)
    return out
