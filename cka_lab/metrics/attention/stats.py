"""Per-crop, per-head sums over the query rows of a window-attention map (the functional core).

For a window attention map ``a`` of shape ``(B*nW, h, N, N)`` (rows: queries, columns: keys, each row
sums to 1) and the offset ``(dy, dx)`` of key ``k`` from query ``q`` inside their window, a row's

- attention distance is ``sum_k a[q, k] * |(dy, dx)|`` (Raghu et al. 2021), times the input pixels
  per token,
- entropy is ``-sum_k a[q, k] log a[q, k]`` (nats); given the logits ``z`` the map is the softmax of,
  it is computed without a logarithm per weight as ``log(sum_k e**z) - sum_k a z`` with
  ``log(sum_k e**z) = max_k z - log max_k a`` (the largest weight sits at the largest logit),
- largest weight is ``max_k a[q, k]``.

The sums over the rows of each crop (the ``nW`` windows of one image) are kept apart, so a statistic's
uncertainty can be estimated by resampling crops, and the sums of a crop do not depend on how crops
were batched. Masked keys of shifted windows get weight ``~e**-100`` and add nothing.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cka_lab.errors import CkaLabError

__all__ = ["ROW_STATS", "window_offsets", "attention_row_stats", "attention_distance_sums"]

# Per-head sums over query rows that attention_row_stats returns (plus ``within_<r>`` for each radius).
ROW_STATS = ("n", "dist", "dist_sq", "dx", "dy", "entropy", "max_weight")


def window_offsets(wh: int, ww: int) -> tuple[Tensor, Tensor]:
    """``(dy, dx)``, each ``(N, N)`` float64, N = wh*ww: key minus query position, row-major tokens."""
    rows = torch.arange(wh, dtype=torch.float64).repeat_interleave(ww)
    cols = torch.arange(ww, dtype=torch.float64).repeat(wh)
    return rows[None, :] - rows[:, None], cols[None, :] - cols[:, None]


def attention_row_stats(
    attn: Tensor,
    window: tuple[int, int],
    *,
    pixel_size: float = 1.0,
    radii: tuple[float, ...] = (),
    crops: int = 1,
    logits: Tensor | None = None,
) -> dict[str, Tensor]:
    """Per-crop, per-head sums over query rows of one attention map.

    ``attn: (B*nW, h, N, N)`` with ``N = wh*ww`` and its windows crop-major (as the EDT partitions
    them), ``crops = B`` -> dict of ``(B, h)`` float64 tensors on ``attn``'s device, keys
    :data:`ROW_STATS` and ``within_<r>``: ``n`` (query rows), ``dist`` / ``dist_sq`` (sum of the
    per-row distance and of its square, input pixels), ``dx`` / ``dy`` (per-row mean |dx|, |dy|),
    ``entropy`` (nats), ``max_weight`` and ``within_<r>`` (attention mass at distance <= r pixels).
    ``logits`` (same shape as ``attn``, ``attn = softmax(logits, -1)``, masked keys included) lets the
    entropy skip one logarithm per weight -- the costliest pass; without them it is ``-sum xlogy(a, a)``.
    """
    wh, ww = window
    N = wh * ww
    if attn.ndim != 4 or attn.shape[-1] != N or attn.shape[-2] != N:
        raise CkaLabError(f"attention map of shape {tuple(attn.shape)} does not fit a {wh}x{ww} window")
    if crops < 1 or attn.shape[0] % crops:
        raise CkaLabError(f"{attn.shape[0]} attention windows do not split into {crops} crops of equal size")
    if logits is not None and logits.shape != attn.shape:
        raise CkaLabError(f"logits of shape {tuple(logits.shape)} do not match the attention map {tuple(attn.shape)}")
    dy, dx = window_offsets(wh, ww)
    dy, dx = dy.to(attn.device) * pixel_size, dx.to(attn.device) * pixel_size
    dist = torch.sqrt(dy**2 + dx**2)
    h = attn.shape[1]
    a = (attn if attn.dtype == torch.float64 else attn.float()).reshape(crops, -1, h, N, N)
    z = None if logits is None else logits.to(a.dtype).reshape(a.shape)
    # One pass each for the per-row distance, entropy and max in the map's precision (float32 at
    # least; the rows are needed for the spread), over chunks of crops so that the temporaries stay
    # small; every other statistic contracts the per-crop (h, N, N) sum of the map in float64.
    chunk = max(1, _CHUNK_ELEMENTS // a[0].numel())
    parts = [_row_sums(a[i : i + chunk], dist.to(a.dtype), None if z is None else z[i : i + chunk])
             for i in range(0, crops, chunk)]
    out = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    a_sum = a.sum(1).double()  # (B, h, N, N)
    out["n"] = torch.full((crops, h), float(a.shape[1] * N), dtype=torch.float64, device=a.device)
    out["dx"] = (a_sum * dx.abs()).sum(dim=(2, 3))
    out["dy"] = (a_sum * dy.abs()).sum(dim=(2, 3))
    for r in radii:
        out[f"within_{r:g}"] = (a_sum * (dist <= r + 1e-9).double()).sum(dim=(2, 3))
    return {k: out[k] for k in ROW_STATS + tuple(f"within_{r:g}" for r in radii)}


_CHUNK_ELEMENTS = 1 << 22  # attention weights per chunk of crops in attention_row_stats (16 MiB in float32:
# the temporaries of a chunk stay in cache; 1.5x faster than 64 MiB chunks, measured on 48 px SR crops)


def _row_sums(a: Tensor, dist: Tensor, z: Tensor | None = None) -> dict[str, Tensor]:
    """``a, z: (b, nW, h, N, N)``, ``dist: (N, N)`` -> per-crop sums over rows, each ``(b, h)`` float64."""
    per_row = (a * dist).sum(-1).double()  # (b, nW, h, N)
    a_max = a.amax(-1)
    if z is None:
        entropy = -torch.special.xlogy(a, a).sum(-1).double()
    else:  # log-sum-exp of the row minus the expected logit: H = lse * sum(a) - sum(a z), sum(a) = 1
        entropy = (z.amax(-1) - a_max.log()).double() - (a * z).sum(-1).double()
    return {
        "dist": per_row.sum(dim=(1, 3)),
        "dist_sq": (per_row**2).sum(dim=(1, 3)),
        "entropy": entropy.sum(dim=(1, 3)),
        "max_weight": a_max.double().sum(dim=(1, 3)),
    }


def attention_distance_sums(
    attn: Tensor, window: tuple[int, int], pixel_size: float = 1.0, radii: tuple[float, ...] = ()
) -> dict[str, Tensor]:
    """:func:`attention_row_stats` summed over all crops: dict of ``(h,)`` float64 CPU tensors."""
    stats = attention_row_stats(attn, window, pixel_size=pixel_size, radii=radii)
    return {k: v.sum(0).cpu() for k, v in stats.items()}
