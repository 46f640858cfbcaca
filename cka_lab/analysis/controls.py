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

A finding states a cell only where all of these hold (:func:`decide`): its Benjamini-Hochberg adjusted
p-value over the cells of the heatmap is below ``1 - level`` (the raw p-value is the jackknife-t test of
the same interval: ``p < 1 - level`` exactly where the interval excludes zero), its size is at least
``min_effect`` (default :data:`MIN_EFFECT` = 0.01 CKA), and it is above every available control at that
cell; otherwise "not decidable at this scale". The family of a difference map is its cells above the
diagonal (the map is symmetric; the diagonal is 0 by construction), so an L x L map is
L(L-1)/2 tests. The largest stated cell is a *selected* cell: its size is biased upward by the
selection (the winner's curse), and the outputs say so.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from cka_lab.metrics.cka import jackknife_interval, jackknife_p_value
from cka_lab.metrics.multiplicity import benjamini_hochberg

__all__ = [
    "Decision",
    "MIN_EFFECT",
    "MIN_UNITS",
    "decide",
    "paired_jackknife",
    "paired_p_values",
    "same_layer_mean_interval",
    "probe_draw_control",
    "config_key",
    "seed_pair",
]


MIN_UNITS = 8
"""Fewest resampling units (jackknife units or groups) for which a finding is stated at all."""

MIN_EFFECT = 0.01
"""Smallest |difference of CKA| ever stated (``--min-effect``): below it a cell is not a finding, however
small its p-value (saturated body CKA near 1.0000 gives differences of 1e-5 with tiny intervals)."""


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


def paired_p_values(estimate: np.ndarray, replicates: Tensor | None,
                    blocks: Sequence[tuple[Sequence[int], Sequence[int]]],
                    differences: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """Two-sided jackknife-t p-values (H0: no difference) of each cell of ``block k - block m``, from the
    same paired replicates as :func:`paired_jackknife` (``p < 1 - level`` exactly where its interval
    excludes 0); NaN arrays without replicates."""
    est = torch.as_tensor(np.asarray(estimate, dtype=np.float64))
    out = []
    for k, m in differences:
        (rk, ck), (rm, cm) = blocks[k], blocks[m]
        e = est[list(rk)][:, list(ck)] - est[list(rm)][:, list(cm)]
        if replicates is None or replicates.shape[0] < 2:
            out.append(np.full(tuple(e.shape), np.nan))
            continue
        r = replicates[:, list(rk)][:, :, list(ck)] - replicates[:, list(rm)][:, :, list(cm)]
        out.append(jackknife_p_value(e, r).numpy())
    return out


def same_layer_mean_interval(estimate: np.ndarray, replicates: Tensor | None, rows: Sequence[int],
                             cols: Sequence[int], *, level: float = 0.95) -> tuple[float, float, float]:
    """The mean of the diagonal of one square block (e.g. cross-model CKA of each layer with itself) and
    its jackknife interval, from the paired replicates: each replicate's mean over the diagonal, then the
    bias-corrected jackknife of that mean (not the average of the per-cell bounds, which is too wide:
    it ignores that the cells move together but adds their half-widths). NaN cells (constant layers) are
    left out of every mean. Returns (mean, lower, upper); NaN bounds without replicates."""
    r, c = list(rows), list(cols)
    if len(r) != len(c):
        raise ValueError(f"a same-layer mean needs a square block, got {len(r)} x {len(c)}")
    est = np.asarray(estimate, dtype=np.float64)[r, c]
    keep = np.isfinite(est)
    if not keep.any():
        return float("nan"), float("nan"), float("nan")
    mean = float(est[keep].mean())
    if replicates is None or replicates.shape[0] < 2:
        return mean, float("nan"), float("nan")
    reps = replicates[:, r, c][:, torch.as_tensor(keep)].mean(1)  # (G,)
    low, high, _ = jackknife_interval(torch.tensor(mean, dtype=torch.float64), reps, level)
    return mean, float(low), float(high)


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
    """Whether an effect is stated, per cell: adjusted p below ``alpha`` (or, without p-values, the
    interval excludes 0), ``|effect| >= min_effect`` and ``|effect|`` above every control.

    ``p`` / ``q``: raw and Benjamini-Hochberg adjusted p-values (NaN outside the family: the diagonal and
    the cells below it of a symmetric map, NaN cells); None when no p-values were given."""

    effect: np.ndarray
    low: np.ndarray
    high: np.ndarray
    control: np.ndarray  # the largest control per cell (NaN where none is known)
    stated: np.ndarray  # bool
    p: np.ndarray | None = None
    q: np.ndarray | None = None
    min_effect: float = 0.0
    alpha: float = 0.05
    family: int = 0  # number of tests in the BH family

    def strongest(self) -> tuple[int, ...] | None:
        """Index of the largest stated |effect|, or None when nothing is decidable. The cell is chosen
        *because* it is largest: its size is selection-biased (winner's curse)."""
        if not self.stated.any():
            return None
        mag = np.where(self.stated, np.abs(self.effect), -np.inf)
        return tuple(int(i) for i in np.unravel_index(np.argmax(mag), mag.shape))


def decide(effect: np.ndarray, low: np.ndarray, high: np.ndarray, controls: Sequence[np.ndarray], *,
           p: np.ndarray | None = None, min_effect: float = MIN_EFFECT, alpha: float = 0.05,
           symmetric: bool = False) -> Decision:
    """Which cells of ``effect`` are stated (see the module doc).

    Args:
        effect, low, high: (L, L) effect and its interval.
        controls: arrays broadcastable to ``effect``; a cell without any finite control is never stated.
        p: raw two-sided p-values of the cells (None: the interval must exclude 0, no correction).
        min_effect: smallest |effect| stated (0 turns the floor off).
        alpha: the false discovery rate of the Benjamini-Hochberg step (``1 - level``).
        symmetric: ``effect`` is a symmetric map: the family is the cells above the diagonal, and each
            cell's adjusted p is mirrored below it.
    """
    effect = np.asarray(effect, dtype=np.float64)
    if not (np.isfinite(min_effect) and min_effect >= 0):
        raise ValueError(f"min_effect must be a number >= 0, got {min_effect!r}")
    stack = np.stack([np.broadcast_to(np.asarray(c, dtype=np.float64), effect.shape) for c in controls]) \
        if controls else np.full((1, *effect.shape), np.nan)
    finite = np.isfinite(stack).any(0)
    control = np.where(finite, np.nanmax(np.where(np.isfinite(stack), stack, -np.inf), axis=0), np.nan)
    big = (np.abs(effect) >= min_effect) & (np.abs(effect) > np.where(finite, control, np.inf)) & np.isfinite(effect)
    q = None
    family = 0
    if p is None:
        significant = (np.asarray(low) > 0) | (np.asarray(high) < 0)
        p_out = None
    else:
        p_out = np.array(p, dtype=np.float64)
        member = np.isfinite(p_out)
        if symmetric and effect.ndim == 2 and effect.shape[0] == effect.shape[1]:
            member &= np.triu(np.ones(effect.shape, dtype=bool), k=1)
        p_out = np.where(member, p_out, np.nan)
        q = benjamini_hochberg(p_out)
        if symmetric and effect.ndim == 2 and effect.shape[0] == effect.shape[1]:
            p_out = np.where(np.isfinite(p_out), p_out, p_out.T)
            q = np.where(np.isfinite(q), q, q.T)
        family = int(member.sum())
        significant = np.nan_to_num(q, nan=np.inf) <= alpha
    stated = significant & finite & big
    return Decision(effect, np.asarray(low), np.asarray(high), control, stated, p_out, q, float(min_effect),
                    float(alpha), family)


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
