"""The analysis side of the CKA estimators: one accumulator interface over :mod:`cka_lab.metrics.cka`.

* ``unbiased-minibatch`` -- :class:`~cka_lab.metrics.cka.MinibatchCKA`, fed one resampling unit of
  ``unit_size`` crops at a time; the per-unit HSIC terms are kept, so intervals, differences between
  maps and the probe-draw control all come from one set of numbers (:mod:`cka_lab.analysis.controls`).
* ``biased-full`` -- the exact full-batch linear CKA (Kornblith et al. 2019), computed group by group of
  layers over several passes of the same crops (``cka_by_passes`` of the metrics package).

Layer names here are "keys" that can hold both models' layers at once (``A|body.layers.0``), so one
accumulator gives the A x A, B x B and A x B maps with every Gram computed once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from cka_lab.errors import CkaLabError
from cka_lab.metrics.cka import MIN_BATCH, MinibatchCKA

__all__ = ["ESTIMATORS", "DEFAULT_UNIT_SIZE", "UnitTerms", "UnitCKA", "full_cka", "resolve_unit_size"]

ESTIMATORS = ("unbiased-minibatch", "biased-full")
DEFAULT_UNIT_SIZE = 8
"""Crops per resampling unit of the unbiased estimator: 128 crops give 16 units, 1024 give 128."""


def resolve_unit_size(unit_size: int | None, batch_size: int, n_samples: int) -> int:
    """The unit size to use: ``unit_size`` or ``min(8, batch_size)``; units must tile the forward
    batches, and a last short unit must keep the unbiased HSIC's 4 samples (one-line errors)."""
    unit = unit_size or min(DEFAULT_UNIT_SIZE, batch_size)
    if unit < MIN_BATCH:
        raise CkaLabError(f"a resampling unit of {unit} crops is too small: the unbiased HSIC needs at least "
                          f"{MIN_BATCH}; use --batch-size >= {MIN_BATCH}")
    if batch_size % unit:
        raise CkaLabError(f"--batch-size {batch_size} is not a multiple of the resampling unit ({unit} crops): "
                          f"use a batch size of {max(unit, batch_size // unit * unit)} or {(batch_size // unit + 1) * unit}")
    rest = n_samples % unit
    if rest and rest < MIN_BATCH:
        raise CkaLabError(f"--n-samples {n_samples} leaves a last unit of {rest} crops (< {MIN_BATCH}): "
                          f"use a multiple of {unit}")
    return unit


@dataclass
class UnitTerms:
    """Per-unit HSIC terms of a keyed accumulator: ``cross (U, L, L)``, ``self (U, L)``, float64 CPU,
    units in global crop order; ``sizes (U,)`` crops per unit."""

    keys: list[str]
    cross: Tensor
    self_terms: Tensor
    sizes: Tensor

    @property
    def n_units(self) -> int:
        return int(self.cross.shape[0])

    @property
    def n_samples(self) -> int:
        return int(self.sizes.sum())


class UnitCKA:
    """Streaming unbiased minibatch CKA over keyed layers, one update per resampling unit."""

    estimator = "unbiased-minibatch"

    def __init__(self, keys: Sequence[str], unit_size: int) -> None:
        self.keys = list(keys)
        self.unit_size = int(unit_size)
        self.metric = MinibatchCKA(self.keys, self.keys, keep_batches=True)
        self._sizes: list[int] = []

    def update(self, feats: Mapping[str, Tensor]) -> None:
        """One forward batch: ``feats`` key -> (B, ...) features; B must be a multiple of the unit size
        (a last short unit of at least 4 crops is allowed)."""
        n = next(iter(feats.values())).shape[0]
        for start in range(0, n, self.unit_size):
            unit = {k: v[start:start + self.unit_size] for k, v in feats.items()}
            self.metric.update(unit, unit)
            self._sizes.append(min(self.unit_size, n - start))

    def all_reduce(self) -> None:
        """Gather every rank's units in rank order (ranks hold contiguous blocks of crops)."""
        import torch.distributed as dist

        self.metric.all_reduce()
        gathered: list[object] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, self._sizes)
        self._sizes = [s for part in gathered for s in part]  # type: ignore[union-attr]

    def terms(self) -> UnitTerms:
        if not self.metric.batches:
            raise CkaLabError("no probe crop was run: give at least one batch")
        cross = torch.stack([b[0] for b in self.metric.batches]).cpu()
        self_terms = torch.stack([b[1] for b in self.metric.batches]).cpu()
        return UnitTerms(self.keys, cross, self_terms, torch.tensor(self._sizes, dtype=torch.float64))


def full_cka(keys: Sequence[str], run: Callable[[list[str]], Iterator[Mapping[str, Tensor]]], *,
             n_samples: int, feature_numel: Mapping[str, int], max_bytes: int | None = None):
    """Exact biased full-batch linear CKA between every pair of ``keys``, over several passes.

    ``run(group)`` makes one full pass over the same probe crops with hooks on the keys of ``group``
    only and yields key -> (B, ...) features per batch. Returns the metrics package's result
    (``matrix``, ``lower``, ``upper``, ...).
    """
    try:
        from cka_lab.metrics.cka import cka_by_passes
    except ImportError:  # pragma: no cover - the metrics package predates the estimator
        raise CkaLabError("the biased-full estimator needs cka_lab.metrics.cka.cka_by_passes, which this "
                          "installation lacks; use --estimator unbiased-minibatch") from None
    return cka_by_passes("biased-full", list(keys), list(keys), lambda ga, gb: run(sorted(set(ga) | set(gb))),
                         n_samples=n_samples, feature_numel=dict(feature_numel), max_bytes=max_bytes)
