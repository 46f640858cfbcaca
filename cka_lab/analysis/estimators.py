"""The analysis side of the CKA estimators: keyed accumulators over :mod:`cka_lab.metrics.cka`.

Layer names here are "keys" that hold both models' layers at once (``A|body.layers.0``), so one
estimate gives the A x A, B x B and A x B maps with every Gram computed once, and jackknife replicates
that are *paired* across the maps (one left-out unit for all cells), which is what the interval of a
difference between two maps needs.

* ``unbiased-minibatch`` -- :class:`~cka_lab.metrics.cka.MinibatchCKA` with HSIC units of ``unit_size``
  crops, one pass. Units alternate between two accumulators (even and odd units): their maps are the
  two disjoint probe draws of the probe-draw control, and merged they are the full estimate with its
  delete-one-unit jackknife.
* ``biased-full`` -- the exact full-batch linear CKA: the metrics package's pass planner
  (:func:`~cka_lab.metrics.cka.plan_passes`) splits the keys into groups whose features fit the memory
  budget next to all N x N Grams; each group is one pass over the same crops through a
  :class:`~cka_lab.metrics.cka.FullBatchCKA` (features gathered over ranks under torchrun). The centred
  Grams then give the estimate, the delete-a-group jackknife of the *debiased* CKA of the same crops
  (:func:`deleted_group_unbiased`: intervals that cover at D >= N) and the two half-draw maps (the
  Grams of the even and odd units, re-centred).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from cka_lab.errors import CkaLabError
from cka_lab.metrics.cka import (
    DEFAULT_MAX_BYTES,
    DEFAULT_UNIT_SIZE,
    ESTIMATORS,
    MIN_BATCH,
    FullBatchCKA,
    LayerGrams,
    MinibatchCKA,
    deleted_group_inner,
    deleted_group_unbiased,
    group_bounds,
    is_constant,
    plan_passes,
)

__all__ = ["ESTIMATORS", "DEFAULT_UNIT_SIZE", "FULL_GROUPS", "KeyedEstimate", "UnitCKA", "check_units_hold_whole_images",
           "full_keyed_cka", "image_groups", "resolve_unit_size"]

FULL_GROUPS = 32
"""Jackknife groups of crops for biased-full (the metrics package's default)."""


def resolve_unit_size(unit_size: int | None, batch_size: int, n_samples: int) -> int:
    """The unit size to use: ``unit_size`` or 8 (``min(8, batch_size)`` for tiny batches); units must tile
    the forward batches and a last short unit must keep the unbiased HSIC's 4 crops (one-line errors)."""
    unit = unit_size or min(DEFAULT_UNIT_SIZE, batch_size)
    if unit < MIN_BATCH:
        flag = "--unit-size" if unit_size else "--batch-size"
        raise CkaLabError(f"a resampling unit of {unit} crops is too small: the unbiased HSIC needs at least "
                          f"{MIN_BATCH}; use {flag} >= {MIN_BATCH}")
    if batch_size % unit:
        sizes = sorted({max(unit, batch_size // unit * unit), (batch_size // unit + 1) * unit})
        raise CkaLabError(f"--batch-size {batch_size} is not a multiple of the resampling unit ({unit} crops): "
                          f"use a batch size of {' or '.join(map(str, sizes))}")
    rest = n_samples % unit
    if rest and rest < MIN_BATCH:
        raise CkaLabError(f"--n-samples {n_samples} leaves a last unit of {rest} crops (< {MIN_BATCH}): "
                          f"use a multiple of {unit}")
    return unit


def image_groups(images: np.ndarray, n_groups: int = FULL_GROUPS) -> list[tuple[int, int]]:
    """Jackknife groups of whole images: ``images`` (N,) the image of each crop, crops of one image
    consecutive -> ``min(n_groups, n_images)`` contiguous (start, stop) crop ranges of near-equal numbers
    of images."""
    images = np.asarray(images)
    starts = np.flatnonzero(np.r_[True, images[1:] != images[:-1]])  # first crop of each image
    if len(np.unique(images)) != len(starts):
        raise CkaLabError("the crops of one image must be consecutive to group the jackknife by image")
    edges = [starts[i] for i, _ in group_bounds(len(starts), n_groups)] + [len(images)]
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def check_units_hold_whole_images(images: np.ndarray, unit_size: int) -> None:
    """Refuse (one line) units of ``unit_size`` consecutive crops that split an image's crops between two
    units: the jackknife over units would then not be a resampling of images."""
    images = np.asarray(images)
    units = np.arange(len(images)) // unit_size
    for img in np.unique(images):
        if len(np.unique(units[images == img])) > 1:
            per = int((images == img).sum())
            raise CkaLabError(f"a resampling unit of {unit_size} crops splits the {per} crops of one probe image "
                              f"between two units: use --unit-size a multiple of {per}, or fewer --n-samples")


def _ratio(xy: Tensor, xx: Tensor, yy: Tensor, dead: Tensor) -> Tensor:
    """(..., L, L) inner products and (..., L) self terms -> CKA, NaN for dead (constant) keys."""
    denom = (xx.clamp(min=0).unsqueeze(-1) * yy.clamp(min=0).unsqueeze(-2)).sqrt()
    ok = (denom > 0) & ~dead.unsqueeze(-1) & ~dead.unsqueeze(-2)
    return torch.where(ok, xy / torch.where(ok, denom, torch.ones_like(denom)), torch.full_like(xy, math.nan))


@dataclass
class KeyedEstimate:
    """CKA between every pair of keys, with paired jackknife replicates and the two half-draw maps.

    Attributes:
        estimate: (L, L) float64 CKA.
        replicates: (G, L, L) float64 leave-one-unit (or group) out replicates, or None (G < 2); for
            biased-full the replicates of the debiased CKA (``interval_estimate``), whose intervals cover
            at feature dimensions D >= N where the biased estimate's do not.
        halves: two (L, L) maps of the even and the odd units (disjoint crops), or None.
        n_samples, n_units: crops, and jackknife units/groups.
        unit: the resampling unit in words; constant: keys flagged constant; passes: passes made.
    """

    keys: list[str]
    estimate: np.ndarray
    replicates: Tensor | None
    halves: tuple[np.ndarray, np.ndarray] | None
    n_samples: int
    n_units: int
    unit: str
    constant: list[str]
    passes: int = 1
    interval_estimate: np.ndarray | None = None  # (L, L) what the replicates estimate, when not ``estimate``

    @property
    def centre_estimate(self) -> np.ndarray:
        """The (L, L) estimate the jackknife replicates belong to: the debiased CKA for biased-full."""
        return self.estimate if self.interval_estimate is None else self.interval_estimate


class UnitCKA:
    """Streaming unbiased minibatch CKA over keys; units alternate between two accumulators."""

    estimator = "unbiased-minibatch"

    def __init__(self, keys: Sequence[str], unit_size: int) -> None:
        self.keys = list(keys)
        self.unit_size = int(unit_size)
        self.parts = [MinibatchCKA(self.keys, self.keys, keep_batches=True, unit_size=self.unit_size)
                      for _ in range(2)]

    def update(self, first_index: int, feats: Mapping[str, Tensor]) -> None:
        """One forward batch of crops ``first_index ..``: key -> (B, ...) features; the batch starts at
        a unit boundary (batches are multiples of the unit size)."""
        n = next(iter(feats.values())).shape[0]
        for start in range(0, n, self.unit_size):
            unit = {k: v[start:start + self.unit_size] for k, v in feats.items()}
            self.parts[((first_index + start) // self.unit_size) % 2].update(unit, unit)

    def finish(self, distributed: bool = False) -> KeyedEstimate:
        """All-reduce (under torchrun), then the half maps and the merged estimate with its jackknife."""
        if distributed:
            for part in self.parts:
                part.all_reduce()
        counts = [part.n_units for part in self.parts]
        if not sum(counts):
            raise CkaLabError("no probe crop was run: give at least one batch")
        halves = None
        if all(counts):
            halves = tuple(part.compute().cpu().numpy() for part in self.parts)
        total = MinibatchCKA(self.keys, self.keys, keep_batches=True, unit_size=self.unit_size)
        for part in self.parts:
            if part.n_units:
                total.merge(part)
        const = total.constant_layers()[0]
        replicates = None
        if total.n_units >= 2:
            estimate, replicates = total.jackknife()
        else:
            estimate = total.compute().cpu()
        return KeyedEstimate(self.keys, estimate.numpy(), replicates, halves, total.n_samples, total.n_units,
                             f"HSIC unit of {self.unit_size} crops", const)


def _half_maps(grams: LayerGrams, n: int, unit: int, dead: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The biased CKA of the even and the odd units of crops, from the full centred Grams."""
    idx = torch.arange(n)
    out = []
    for parity in (0, 1):
        sel = idx[(idx // unit) % 2 == parity]
        g = grams.grams[:, sel][:, :, sel]
        g = g - g.mean(-1, keepdim=True)
        g = g - g.mean(-2, keepdim=True)  # re-centred over the half: the half's own centred Gram
        flat = g.reshape(g.shape[0], -1)
        inner = flat @ flat.T
        out.append(_ratio(inner, inner.diagonal(), inner.diagonal(), dead).cpu().numpy())
    return out[0], out[1]


def full_keyed_cka(keys: Sequence[str], run: Callable[[list[str]], Iterable[Mapping[str, Tensor]]], *,
                   n_samples: int, feature_numel: Mapping[str, int], unit_size: int,
                   max_bytes: int = DEFAULT_MAX_BYTES, distributed: bool = False,
                   n_groups: int = FULL_GROUPS, bounds: Sequence[tuple[int, int]] | None = None) -> KeyedEstimate:
    """Exact biased full-batch linear CKA between every pair of ``keys``, in as few passes as fit.

    ``run(group)`` makes one full pass over the same probe crops in the same order, with hooks on the
    keys of ``group`` only, and yields key -> (B, ...) features per batch (this rank's shard under
    torchrun: contiguous, in rank order). One-line errors (from the pass planner) when the N x N
    Grams or one layer's features do not fit ``max_bytes``.
    """
    keys = list(keys)
    n = n_samples
    plan = plan_passes(keys, [], n_samples=n, feature_numel=dict(feature_numel), max_bytes=max_bytes)
    store = LayerGrams(torch.empty(len(keys), n, n, dtype=torch.float64), torch.empty(len(keys), dtype=torch.float64),
                       torch.empty(len(keys), dtype=torch.float64))
    index = {k: i for i, k in enumerate(keys)}
    for group, _ in plan:
        acc = FullBatchCKA(group, [], max_bytes=max_bytes)
        for feats in run(group):
            acc.update(feats, {})
        if distributed:
            acc.all_reduce()
        if acc.n_samples != n:
            raise CkaLabError(f"a pass over the probes yielded {acc.n_samples} crops, expected {n}")
        grams = acc.centred_grams()[0]
        del acc
        for k, name in enumerate(group):
            i = index[name]
            store.grams[i], store.square[i], store.centred[i] = grams.grams[k], grams.square[k], grams.centred[k]
        del grams
    dead = is_constant(store.square, store.centred)
    const = [k for k, d in zip(keys, dead.tolist()) if d]
    if const:  # as the minibatch estimator does: the layer is named, its CKA is NaN
        warnings.warn(f"layer {', '.join(repr(k) for k in const)} has constant features over all {n} samples; "
                      "its CKA is undefined and set to NaN", stacklevel=2)
    bounds = group_bounds(n, n_groups) if bounds is None else [(int(a), int(b)) for a, b in bounds]
    full, _ = deleted_group_inner(store.grams, store.grams, [(0, n)])
    estimate = _ratio(full, full.diagonal(), full.diagonal(), dead)
    replicates = debiased = None
    if len(bounds) >= 2 and n - max(e - s for s, e in bounds) >= 4:
        # intervals from the debiased CKA of the same crops (see cka_lab.metrics.cka.full): the biased
        # estimate's jackknife does not cover at feature dimensions D >= N
        u_full, u_deleted = deleted_group_unbiased(store.grams, store.grams, bounds)
        debiased = _ratio(u_full, u_full.diagonal(), u_full.diagonal(), dead).cpu().numpy()
        selfs = u_deleted.diagonal(dim1=-2, dim2=-1)  # (G, L)
        replicates = _ratio(u_deleted, selfs, selfs, dead)
    halves = _half_maps(store, n, unit_size, dead) if n >= 4 * unit_size else None
    return KeyedEstimate(keys, estimate.cpu().numpy(), replicates, halves, n, len(bounds),
                         f"jackknife group of {max(e - s for s, e in bounds)} crops", const, len(plan),
                         interval_estimate=debiased)
