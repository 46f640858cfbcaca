"""Attention distance: how far, in input pixels, each EDT attention head looks (Raghu et al. 2021).

For a window attention map ``a`` of shape ``(B*nW, h, N, N)`` (rows: queries, columns: keys, each row
sums to 1) and the distance ``D[q, k]`` between the positions of query ``q`` and key ``k`` inside their
window, the attention distance of a query is ``sum_k a[q, k] * D[q, k]``. Per head we report its mean
over queries and images and its spread (standard deviation over queries and images). Distances are
Euclidean in the body's token grid times the size of a token in input pixels (1 for SR heads and SF
models; ``2**depth`` = 4 for the denoise/derain heads that downsample). Horizontal and vertical
components (``|dx|``, ``|dy|``) are reported too.

Shifted windows: the block rolls the map before partitioning, so a window at the border holds tokens
from opposite image borders; the official mask (-100 before the softmax) gives those keys a weight of
about ``e**-100``, so they add nothing to the sums — the distance inside the rolled window is the true
distance for every key that gets weight.

Streaming: per head the hook keeps sums of the per-query distance, its square, the ``|dx|``/``|dy|``
components and the attention mass within each radius, plus a count; no attention map is stored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import Tensor, nn

from cka_lab.errors import CkaLabError

__all__ = [
    "window_offsets",
    "attention_distance_sums",
    "AttentionDistance",
    "attention_modules",
    "locality_summary",
]

_NAME = re.compile(r"(?:^|\.)layers\.(\d+)\.residual_group\.blocks\.(\d+)\.attns\.(\d+)$")
DIRECTIONS = ("horizontal", "vertical")


def window_offsets(wh: int, ww: int) -> tuple[Tensor, Tensor]:
    """``(dy, dx)``, each ``(N, N)`` float64, N = wh*ww: key minus query position, row-major tokens."""
    rows = torch.arange(wh, dtype=torch.float64).repeat_interleave(ww)
    cols = torch.arange(ww, dtype=torch.float64).repeat(wh)
    return rows[None, :] - rows[:, None], cols[None, :] - cols[:, None]


def attention_distance_sums(
    attn: Tensor, window: tuple[int, int], pixel_size: float = 1.0, radii: tuple[float, ...] = ()
) -> dict[str, Tensor]:
    """Per-head sums over queries of one attention map (the functional core).

    ``attn: (B', h, N, N)`` with ``N = wh*ww`` -> dict of ``(h,)`` float64 tensors: ``n`` (queries),
    ``dist`` / ``dist_sq`` (sum of per-query mean distance and of its square), ``dx`` / ``dy``
    (sums of per-query mean |dx|, |dy|) and ``within_<r>`` (sum of the attention mass at distance <= r),
    all in input pixels.
    """
    wh, ww = window
    if attn.ndim != 4 or attn.shape[-1] != wh * ww or attn.shape[-2] != wh * ww:
        raise CkaLabError(f"attention map of shape {tuple(attn.shape)} does not fit a {wh}x{ww} window")
    dy, dx = window_offsets(wh, ww)
    dy, dx = dy.to(attn.device) * pixel_size, dx.to(attn.device) * pixel_size
    dist = torch.sqrt(dy**2 + dx**2)
    # One float32 pass over the map for the per-query distances (needed for the spread), one reduction
    # over the batch; every other statistic contracts the small (h, N, N) batch sum in float64.
    a = attn if attn.dtype == torch.float64 else attn.float()
    per_query = (a * dist.to(a.dtype)).sum(-1).double()  # (B', h, N)
    a_sum = a.sum(0).double()  # (h, N, N)
    out = {
        "n": torch.full((a.shape[1],), float(a.shape[0] * a.shape[2]), dtype=torch.float64, device=a.device),
        "dist": per_query.sum(dim=(0, 2)),
        "dist_sq": (per_query**2).sum(dim=(0, 2)),
        "dx": (a_sum * dx.abs()).sum(dim=(1, 2)),
        "dy": (a_sum * dy.abs()).sum(dim=(1, 2)),
    }
    for r in radii:
        out[f"within_{r:g}"] = (a_sum * (dist <= r + 1e-9).double()).sum(dim=(1, 2))
    return {k: v.cpu() for k, v in out.items()}


@dataclass
class _Site:
    name: str
    layer: int
    block: int
    direction: str
    shifted: bool
    window: tuple[int, int]
    sums: dict[str, Tensor] = field(default_factory=dict)


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every window-attention module (one with a ``softmax`` and a ``window``)."""
    return [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(getattr(m, "softmax", None), nn.Softmax) and hasattr(m, "window") and _NAME.search(n)
    ]


class AttentionDistance:
    """Streaming attention-distance statistics for every EDT attention module, per layer, block and head.

    Use as a context manager around forward passes; hooks are removed when the block ends::

        with AttentionDistance(model, task="x2") as ad:
            for x in batches:
                model.forward_task(x, "x2")
        df = ad.compute()      # one row per (layer, block, direction, head)

    ``pixel_size`` (input pixels per body token) defaults to the task's: 2**depth for denoise/derain
    heads that downsample, else 1. ``radii`` (input pixels) set the locality columns ``within_<r>``.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        task: str | None = None,
        pixel_size: float | None = None,
        radii: tuple[float, ...] = (2, 4, 8),
    ):
        self.model = model
        self.radii = tuple(radii)
        self.pixel_size = float(pixel_size) if pixel_size is not None else _pixel_size(model, task)
        mods = attention_modules(model)
        if not mods:
            raise CkaLabError(
                f"{type(model).__name__} has no window-attention modules to measure: attention distance needs an EDT"
            )
        blocks = dict(model.named_modules())
        self._sites: list[tuple[_Site, nn.Module]] = []
        for name, mod in mods:
            layer, block, k = (int(g) for g in _NAME.search(name).groups())
            parent = blocks.get(name.rsplit(".attns.", 1)[0])
            shifted = getattr(parent, "shifts", None) is not None
            self._sites.append((_Site(name, layer, block, DIRECTIONS[k], shifted, tuple(mod.window)), mod))
        self._handles: list = []

    # -- hooks -----------------------------------------------------------------------------------
    def __enter__(self) -> "AttentionDistance":
        for site, mod in self._sites:
            self._handles.append(mod.softmax.register_forward_hook(self._hook(site)))
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, site: _Site):
        def hook(_module, _inputs, attn: Tensor) -> None:
            sums = attention_distance_sums(attn.detach(), site.window, self.pixel_size, self.radii)
            for key, value in sums.items():
                site.sums[key] = site.sums[key] + value if key in site.sums else value

        return hook

    # -- accumulator -----------------------------------------------------------------------------
    def reset(self) -> None:
        for site, _ in self._sites:
            site.sums = {}

    def compute(self) -> pd.DataFrame:
        """One row per (layer, block, direction, head): mean/std distance (input px), |dx|, |dy|, locality."""
        rows = []
        for site, _ in self._sites:
            if not site.sums:
                continue
            s = site.sums
            n = s["n"]
            mean = s["dist"] / n
            std = (s["dist_sq"] / n - mean**2).clamp_min(0).sqrt()
            for h in range(n.numel()):
                row = {
                    "module": site.name,
                    "layer": site.layer,
                    "block": site.block,
                    "direction": site.direction,
                    "shifted": site.shifted,
                    "head": h,
                    "mean": mean[h].item(),
                    "std": std[h].item(),
                    "n": int(n[h].item()),
                    "mean_dx": (s["dx"][h] / n[h]).item(),
                    "mean_dy": (s["dy"][h] / n[h]).item(),
                }
                for r in self.radii:
                    row[f"within_{r:g}"] = (s[f"within_{r:g}"][h] / n[h]).item()
                rows.append(row)
        if not rows:
            raise CkaLabError("no attention was recorded: run forward passes inside the `with` block first")
        return pd.DataFrame(rows)


def locality_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per layer (stage): mean attention distance over blocks, directions and heads, its spread over
    heads, and the mean share of attention within each radius."""
    within = [c for c in df.columns if c.startswith("within_")]
    g = df.groupby("layer")
    out = pd.DataFrame(
        {
            "mean_distance": g["mean"].mean(),
            "head_min": g["mean"].min(),
            "head_max": g["mean"].max(),
            "head_std": g["mean"].std(ddof=0),
            **{c: g[c].mean() for c in within},
        }
    )
    return out.reset_index()


def _pixel_size(model: nn.Module, task: str | None) -> float:
    cfg = getattr(model, "config", None)
    if cfg is None:
        return 1.0
    task = task or cfg.tasks[0]
    head = cfg.head(task)
    return float(2**cfg.depth) if head.kind != "sr" and not cfg.sf else 1.0
