"""Intervals and controls: when is a CKA effect larger than chance?

Everything here works on numbers the estimators already produced, so it costs no forward pass:

* **Intervals** -- the metrics package's bias-corrected jackknife over resampling units (HSIC units of
  ``unit_size`` crops for unbiased-minibatch, 128 crops give 16; groups of crops for biased-full). Maps
  and differences between maps are *paired*: replicate g leaves the same unit out of every layer of
  both models, so a difference's interval accounts for their correlation.
* **Probe-draw control** -- the same model's CKA map measured on two disjoint halves of the probe crops
  (even and odd resampling units); ``|CKA(draw 1) - CKA(draw 2)|`` is how much a map moves when
  nothing but the probe draw changes. A half has N/2 crops, so this control is larger than the
  draw-to-draw change of a full-N map (about 2x: two half-size estimates): a conservative bar.
* **Seed-to-seed control** -- where two checkpoints differ only in their training seed
  (:func:`seed_pair`), ``|CKA(seed s) - CKA(seed s')|`` is how much a map moves by training noise alone.

A finding states an effect only where it exceeds both: its interval excludes zero *and* its size is
above every available control at that cell (:func:`decide`); otherwise "not decidable at this scale".
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from cka_lab.metrics.cka import jackknife_interval

__all__ = [
    "Decision",
    "MIN_UNITS",
    "decide",
    "paired_jackknife",
    "probe_draw_control",
    "config_key",
    "seed_pair",
]


MIN_UNITS = 8
"""Fewest resampling units (jackknife units or groups) for which a finding is stated at all."""


def paired_jackknife(estimate: np.ndarray, replicates: Tensor | None,
                     blocks: Sequence[tuple[Sequence[int], Sequence[int]]],
                     differences: Sequence[tuple[int, int]] = (), *, level: float = 0.95,
                     ) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[tuple[np.ndarray, np.ndarray]]]:
    """Jackknife intervals of CKA blocks and of differences between blocks (paired: replicate g leaves
    the same unit out of every block).

    Args:
        estimate: (L, L) CKA over all units; replicates: (G, L, L) leave-one-out replicates (None: no
            interval, NaN bounds).
        blocks: (rows, cols) index lists; block k is ``estimate[rows][:, cols]``.
        differences: pairs (k, m) of equally shaped blocks: intervals of ``block k - block m``.

    Returns:
        ([(low, high) per block], [(low, high) per difference]): the bias-corrected jackknife interval
        of the metrics package (:func:`~cka_lab.metrics.cka.jackknife_interval`), float64 arrays.
    """
    est = torch.as_tensor(np.asarray(estimate, dtype=np.float64))

    def sub(x: Tensor, rows, cols) -> Tensor:
        return x[..., list(rows), :][..., list(cols)]

    def interval(e: Tensor, r: Tensor | None) -> tuple[np.ndarray, np.ndarray]:
        if r is None or r.shape[0] < 2:
            nan = np.full(tuple(e.shape), np.nan)
            return nan, nan.copy()
        low, high, _ = jackknife_interval(e, r, level)
        return low.numpy(), high.numpy()

    out_blocks = [interval(sub(est, r, c), None if replicates is None else sub(replicates, r, c)) for r, c in blocks]
    out_diffs = []
    for k, m in differences:
        (rk, ck), (rm, cm) = blocks[k], blocks[m]
        e = sub(est, rk, ck) - sub(est, rm, cm)
        r = None if replicates is None else sub(replicates, rk, ck) - sub(replicates, rm, cm)
        out_diffs.append(interval(e, r))
    return out_blocks, out_diffs


def probe_draw_control(halves: tuple[np.ndarray, np.ndarray] | None, rows: Sequence[int],
                       cols: Sequence[int]) -> np.ndarray | None:
    """``|CKA(first draw) - CKA(second draw)|`` of one block, the two draws being disjoint halves of the
    crops (even and odd resampling units); None without two draws."""
    if halves is None:
        return None
    r, c = list(rows), list(cols)
    return np.abs(halves[0][np.ix_(r, c)] - halves[1][np.ix_(r, c)])


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
