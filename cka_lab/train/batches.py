"""Training batches as a pure function of (seed, iteration, rank, head), and the data a config asks for.

:class:`StepBatches` is a map-style dataset indexed by iteration: item ``it`` is the whole step,
one ``(input (B, 3, h, w), target (B, 3, H, W))`` batch per head in the model's task order. Head
``k`` of iteration ``it`` on rank ``r`` draws its ``B`` samples from
``numpy.random.default_rng([seed, it, r, k])``; nothing else is random, so a resumed run sees exactly
the batches an uninterrupted one would, whatever ``num_workers`` is.

:func:`build_patch_sets` turns the config's data folders into one patch set per head:

* SR head ``x{s}``: :class:`~cka_lab.data.datasets.SRPatchSet` over ``[data] sr``, LR patch
  ``patch_size``;
* denoising head ``g{sigma}``: :class:`~cka_lab.data.datasets.NoisyPatchSet` over ``[data] dn``;
* rain head ``L``/``H``: :class:`~cka_lab.data.datasets.RainPatchSet` over ``[data] dr`` (the same
  folders for both levels).

Denoising and rain heads of non-SF models downsample ``depth`` times, so their patches are
``patch_size * 2**depth`` (192 for 48) and every head's body input is ``patch_size``: all heads go
through the body as one batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cka_lab.data.datasets import (
    NoisyPatchSet,
    RainPatchSet,
    SRPatchSet,
    TrainImage,
    load_images,
    read_rain_pairs,
)
from cka_lab.errors import CkaLabError
from cka_lab.models.registry import EDTConfig
from cka_lab.train.config import TrainConfig

__all__ = ["PatchSet", "StepBatches", "TrainingData", "build_patch_sets", "check_patch_size", "head_patch_size", "step_loader"]


class PatchSet(Protocol):
    def sample(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]: ...

    def __len__(self) -> int: ...


def head_patch_size(model_cfg: EDTConfig, task: str, patch_size: int) -> int:
    """Input patch of a head: ``patch_size`` for SR and SF heads, ``patch_size * 2**depth`` otherwise."""
    return patch_size * model_cfg.token_stride(task)


def check_patch_size(model_cfg: EDTConfig, patch_size: int) -> None:
    """The body-resolution patch must be a multiple of both attention window sides."""
    m = math.lcm(*model_cfg.window_size)
    if patch_size % m:
        raise CkaLabError(
            f"data.patch_size {patch_size} is not a multiple of {m} (the attention window {model_cfg.window_size[0]}x"
            f"{model_cfg.window_size[1]}): use {m}, {2 * m}, {3 * m}, ..."
        )


@dataclass
class TrainingData:
    """The patch sets of a run (one per head, in task order) and the digests of their clean images."""

    tasks: tuple[str, ...]
    sets: list[PatchSet]
    patch_sizes: list[int]
    digests: dict[str, str]  # pixel digest -> "folder/file" of every clean training image

    def describe(self) -> str:
        parts = [f"{t}: {len(s)} images, {p}px" for t, s, p in zip(self.tasks, self.sets, self.patch_sizes)]
        return "; ".join(parts)


def build_patch_sets(cfg: TrainConfig, model_cfg: EDTConfig) -> TrainingData:
    """Load the training images the model's heads need and build one patch set per head."""
    d = cfg.data
    check_patch_size(model_cfg, d.patch_size)
    kinds = {h.kind for h in model_cfg.heads}
    need = {"sr": ("sr", d.sr), "dn": ("dn", d.dn), "dr": ("dr", d.dr)}
    for kind in sorted(kinds):
        key, value = need[kind]
        if not value:
            tasks = ", ".join(h.key for h in model_cfg.heads if h.kind == kind)
            raise CkaLabError(f"the model has {kind.upper()} heads ({tasks}) but [data] {key} lists no training folders")
    sr_images: list[TrainImage] = load_images(d.sr) if "sr" in kinds else []
    dn_images: list[TrainImage] = load_images(d.dn) if "dn" in kinds else []
    rain = [pair for folder in d.dr for pair in read_rain_pairs(folder)] if "dr" in kinds else []
    digests = {img.digest: img.name for img in sr_images + dn_images}
    digests.update({pr.digest: f"norain/{pr.name}" for pr in rain})
    sets: list[PatchSet] = []
    sizes = []
    for head in model_cfg.heads:
        p = head_patch_size(model_cfg, head.key, d.patch_size)
        sizes.append(p)
        if head.kind == "sr":
            sets.append(SRPatchSet(sr_images, head.out_scale, p, d.augment))
        elif head.kind == "dn":
            sets.append(NoisyPatchSet(dn_images, float(head.level), p, d.augment))
        else:
            sets.append(RainPatchSet(rain, p, d.augment))
    return TrainingData(model_cfg.tasks, sets, sizes, digests)


class StepBatches(Dataset):
    """Iteration -> ``[(input (B, 3, h, w), target (B, 3, H, W)) for each head]`` on one rank."""

    def __init__(self, sets: Sequence[PatchSet], batch_size: int, seed: int, rank: int = 0):
        if seed < 0:
            raise CkaLabError(f"run.seed must be >= 0, got {seed}")
        self.sets = list(sets)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rank = int(rank)

    def __len__(self) -> int:  # indexable by any iteration; the sampler decides the range
        return 2**62

    def head_batch(self, iteration: int, head: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, int(iteration), self.rank, head])
        xs, ys = zip(*(self.sets[head].sample(rng) for _ in range(self.batch_size)))
        return torch.stack(xs), torch.stack(ys)

    def __getitem__(self, iteration: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [self.head_batch(iteration, k) for k in range(len(self.sets))]


def step_loader(batches: StepBatches, start: int, stop: int, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """A loader over iterations ``start .. stop-1`` (workers prefetch whole steps, in order).

    It has its own ``torch.Generator`` so that making it never draws from the global RNG (whose
    state is part of the training state).
    """
    return DataLoader(
        batches,
        batch_size=None,
        sampler=range(start, stop),
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(0),
        prefetch_factor=2 if num_workers else None,
        persistent_workers=False,
    )
