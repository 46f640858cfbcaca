"""Intervals and controls: when is a CKA effect larger than chance?

Everything here works on numbers the estimators already produced, so it costs no forward pass:

* **Intervals** -- a percentile bootstrap over resampling units (``unit_size`` crops each; 128 crops
  give 16 units). Maps and differences between maps are resampled *paired*: one draw of units serves
  every layer of both models, so a difference's interval accounts for their correlation.
* **Probe-draw control** -- the same model's CKA map measured on two disjoint halves of the probe crops
  (first half of the units vs second half); ``|CKA(half 1) - CKA(half 2)|`` is how much a map moves
  when nothing but the probe draw changes. A half has N/2 crops, so this control is larger than the
  draw-to-draw change of a full-N map (about sqrt(2) x for independent draws): a conservative bar.
* **Seed-to-seed control** -- where two checkpoints differ only in their training seed
  (:func:`seed_pair`), ``|CKA(seed s) - CKA(seed s')|`` is how much a map moves by training noise alone.

A finding states an effect only where it exceeds both: its interval excludes zero *and* its size is
above every available control at that cell (:func:`decide`); otherwise "not decidable at this scale".
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "Decision",
    "MIN_UNITS",
    "cka_from_terms",
    "decide",
    "half_split",
    "paired_bootstrap",
    "probe_draw_control",
    "config_key",
    "seed_pair",
]


MIN_UNITS = 8
"""Fewest resampling units a bootstrap interval is computed from (fewer: NaN, nothing is decidable)."""


def cka_from_terms(cross: Tensor, self_terms: Tensor) -> Tensor:
    """``cross (..., L, L)`` and ``self_terms (..., L)`` HSIC sums -> ``(..., L, L)`` CKA, NaN where a
    self term is not positive (constant features)."""
    denom = (self_terms.unsqueeze(-1) * self_terms.unsqueeze(-2)).clamp_min(0).sqrt()
    good = (self_terms.unsqueeze(-1) > 0) & (self_terms.unsqueeze(-2) > 0)
    return torch.where(good, cross / torch.where(good, denom, torch.ones_like(denom)), torch.full_like(cross, math.nan))


def _counts(n_units: int, n_boot: int, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    draws = torch.randint(n_units, (n_boot, n_units), generator=gen)
    return torch.zeros(n_boot, n_units, dtype=torch.float64).scatter_add_(
        1, draws, torch.ones(n_boot, n_units, dtype=torch.float64))  # (n_boot, U)


def paired_bootstrap(cross: Tensor, self_terms: Tensor, blocks: Sequence[tuple[Sequence[int], Sequence[int]]],
                     differences: Sequence[tuple[int, int]] = (), *, n_boot: int = 1000, level: float = 0.95,
                     seed: int = 0) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[tuple[np.ndarray, np.ndarray]]]:
    """Percentile-bootstrap intervals of CKA blocks and of differences between blocks.

    Args:
        cross: (U, L, L) per-unit cross HSIC terms; self_terms: (U, L) per-unit self terms.
        blocks: (rows, cols) index lists into L; block k's CKA is ``CKA[rows][:, cols]``.
        differences: pairs (k, m) of blocks of equal shape: intervals of ``block k - block m``.

    Returns:
        ([(low, high) per block], [(low, high) per difference]), float64 arrays of the block shapes;
        every replicate resamples the same units for all blocks (paired).
    """
    n_units, n_keys = self_terms.shape
    if n_units < MIN_UNITS:
        nan = [(np.full((len(r), len(c)), np.nan),) * 2 for r, c in blocks]
        return nan, [nan[k] for k, _ in differences]
    counts = _counts(n_units, n_boot, seed)
    boot_self = counts @ self_terms  # (n_boot, L)
    alpha = (1 - level) / 2
    q = torch.tensor([alpha, 1 - alpha], dtype=torch.float64)
    reps = []
    out_blocks = []
    for rows, cols in blocks:
        r, c = torch.as_tensor(list(rows)), torch.as_tensor(list(cols))
        sub = cross[:, r][:, :, c].reshape(n_units, -1)  # (U, R*C)
        num = (counts @ sub).reshape(n_boot, len(r), len(c))
        den = (boot_self[:, r].unsqueeze(-1) * boot_self[:, c].unsqueeze(-2)).clamp_min(0).sqrt()
        rep = torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.full_like(num, math.nan))
        reps.append(rep)
        low, high = torch.nanquantile(rep, q, dim=0)
        out_blocks.append((low.numpy(), high.numpy()))
    out_diffs = []
    for k, m in differences:
        low, high = torch.nanquantile(reps[k] - reps[m], q, dim=0)
        out_diffs.append((low.numpy(), high.numpy()))
    return out_blocks, out_diffs


def half_split(n_units: int) -> tuple[slice, slice]:
    """The two disjoint probe draws: the first ``ceil(U/2)`` units and the rest."""
    h = (n_units + 1) // 2
    return slice(0, h), slice(h, n_units)


def probe_draw_control(cross: Tensor, self_terms: Tensor, rows: Sequence[int], cols: Sequence[int]) -> np.ndarray:
    """``|CKA(first half of the crops) - CKA(second half)|`` of one block (see the module docstring);
    NaN with fewer than 2 units."""
    n_units = self_terms.shape[0]
    r, c = torch.as_tensor(list(rows)), torch.as_tensor(list(cols))
    if n_units < 2:
        return np.full((len(r), len(c)), np.nan)
    maps = []
    for part in half_split(n_units):
        m = cka_from_terms(cross[part].sum(0), self_terms[part].sum(0))
        maps.append(m[r][:, c])
    return (maps[0] - maps[1]).abs().numpy()


@dataclass
class Decision:
    """Whether an effect is stated: per cell ``stated`` = interval excludes 0 and |effect| > every control."""

    effect: np.ndarray
    low: np.ndarray
    high: np.ndarray
    control: np.ndarray  # the largest control per cell (NaN where none is known)
    stated: np.ndarray  # bool

    def strongest(self) -> tuple[int, ...] | None:
        """Index of the largest stated |effect|, or None when nothing is decidable."""
        if not self.stated.any():
            return None
        mag = np.where(self.stated, np.abs(self.effect), -np.inf)
        return tuple(int(i) for i in np.unravel_index(np.argmax(mag), mag.shape))


def decide(effect: np.ndarray, low: np.ndarray, high: np.ndarray, controls: Sequence[np.ndarray]) -> Decision:
    """Cells where ``effect`` exceeds its interval (the interval excludes 0) and every control.

    A cell without any finite control is never stated: without a control there is no bar to clear.
    """
    effect = np.asarray(effect, dtype=np.float64)
    stack = np.stack([np.broadcast_to(np.asarray(c, dtype=np.float64), effect.shape) for c in controls]) \
        if controls else np.full((1, *effect.shape), np.nan)
    finite = np.isfinite(stack).any(0)
    control = np.where(finite, np.nanmax(np.where(np.isfinite(stack), stack, -np.inf), axis=0), np.nan)
    excludes = (np.asarray(low) > 0) | (np.asarray(high) < 0)
    stated = excludes & finite & (np.abs(effect) > np.where(finite, control, np.inf)) & np.isfinite(effect)
    return Decision(effect, np.asarray(low), np.asarray(high), control, stated)


_RUN_KEYS_IGNORED = {"seed", "name", "out"}


def _config_without_seed(meta: Mapping) -> tuple[dict, object] | None:
    text = meta.get("config_toml")
    if not text:
        return None
    try:
        cfg = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return None
    run = dict(cfg.get("run", {}))
    seed = run.get("seed")
    cfg["run"] = {k: v for k, v in run.items() if k not in _RUN_KEYS_IGNORED}
    return cfg, seed


def config_key(meta: Mapping) -> str | None:
    """The training configuration without its seed (and run name/folder), as a canonical string; None
    when the checkpoint carries no config."""
    import json

    got = _config_without_seed(meta)
    return None if got is None else json.dumps(got[0], sort_keys=True, default=str)


def seed_pair(meta_a: Mapping, meta_b: Mapping) -> bool:
    """Whether two checkpoints differ only in their training seed: both carry their training config
    (``config_toml``), the configs are equal apart from ``[run] seed`` (and the run's name and output
    folder), the seeds differ and so do the iterations trained (none: both equal)."""
    a, b = _config_without_seed(meta_a), _config_without_seed(meta_b)
    if a is None or b is None:
        return False
    return a[0] == b[0] and a[1] != b[1] and meta_a.get("iteration") == meta_b.get("iteration")
