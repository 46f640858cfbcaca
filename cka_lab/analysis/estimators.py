"""The analysis side of the CKA estimators: resampling units and jackknife groups chosen from the probe plan.

The CKA itself is the metrics package's one driver, :func:`~cka_lab.metrics.cka.cka_by_passes`, run
over "keys" that hold both models' layers at once (``A|body.layers.0``, see
:mod:`cka_lab.analysis.measure`), so one estimate gives the A x A, B x B and A x B maps with every Gram
computed once, and jackknife replicates that are *paired* across the maps (one left-out unit for all
cells), which is what the interval of a difference between two maps needs. Here: the unit size
(:func:`resolve_unit_size`), jackknife groups of whole images for biased-full (:func:`image_groups`)
and the check that units of unbiased-minibatch hold whole images.
"""

from __future__ import annotations

import numpy as np

from cka_lab.errors import CkaLabError
from cka_lab.metrics.cka import DEFAULT_UNIT_SIZE, ESTIMATORS, MIN_BATCH, N_GROUPS, group_bounds

__all__ = ["ESTIMATORS", "DEFAULT_UNIT_SIZE", "FULL_GROUPS", "check_units_hold_whole_images", "image_groups",
           "resolve_unit_size"]

FULL_GROUPS = N_GROUPS
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
