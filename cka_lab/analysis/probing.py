"""Running models over probe crops: what each head is fed, patch checks, sharding, progress.

The shared helpers of :mod:`cka_lab.analysis.compare` and :mod:`cka_lab.analysis.contrast`.

Every probe crop has a global index (its position in the probe plan). What a model is fed for crop
``i`` depends only on the clean crop, the seed, ``i`` and the model's task and patch -- never on the
batch the crop lands in, the batch size, the batch order or the rank that runs it:

* every model sees the *whole* clean crop (the same image content), at its own probe size: a crop of
  C px is brought to a model probed at p < C px by the official MATLAB bicubic ``imresize`` with
  antialiasing (:func:`cka_lab.data.degrade.imresize`, uint8 in and out, as the official LR files were
  made). The crops are cut at the largest *region* of the targets: an SR x s head probed at p px covers
  ``s * p`` px of HR content, any other head p px. So an SR x2 model alone (48 px LR) gets the official
  bicubic LR of a 96 px HR crop; SR x2 next to EDT-T's denoising head (192 px, body 48 x 48 tokens) gets
  the 192 px crop downscaled x4 to 48 px, so both bodies see 48 x 48 tokens of the same image content
  (matched tokens per content);
* denoising heads (``g<sigma>``) get it plus Gaussian noise from :func:`cka_lab.data.probes.crop_noise`,
  seeded by ``(seed, i)``, added at the model's input size.

The default probe set is the 68 bundled CBSD68 crops (:func:`default_probe_images`), one resampling unit
per image (:func:`crop_images`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from cka_lab.data.probes import bundled_images, crop_noise, probe_batches
from cka_lab.errors import CkaLabError
from cka_lab.tasks import parse_task

__all__ = [
    "PROBE_LABEL",
    "IndexedBatch",
    "ProbedModel",
    "check_patch",
    "crop_images",
    "default_probe_images",
    "probe_region",
    "resampling_label",
    "indexed_batches",
    "model_input",
    "probe_loader",
    "progress_enabled",
    "run_model",
    "ProbeSequence",
    "prepare_probe",
    "probe_size",
    "shard_batches",
    "training_patch",
]

PROBE_LABEL = "bundled probe set: 68 CBSD68 crops, 192 px (not in training, not a scored test set)"


def progress_enabled() -> bool:
    """Progress bars on a terminal, off with ``CKA_LAB_NO_PROGRESS=1``."""
    return os.environ.get("CKA_LAB_NO_PROGRESS", "") in ("", "0") and sys.stderr.isatty()


def default_probe_images() -> list[Path]:
    """The default probe set: 68 CBSD68 crops of 192 x 192 px bundled with the package
    (``cka_lab/data/assets/probes_cbsd68``, provenance in its ``PROVENANCE.csv``).

    Why CBSD68: its images are BSDS test images, disjoint from the training data (Sun_Hays80 and the 400
    BSD training images, ``BSD400_gray``) and from the sets the bundled models and the studies are scored
    on (Set5, McMaster); 68 distinct natural images give 68 resampling units. (CBSD68 is a denoising test
    set elsewhere: do not use these probes for a study that scores on CBSD68.)"""
    return bundled_images("probes")


def crop_images(batches) -> np.ndarray | None:
    """(N,) int: the image index of every crop of a :class:`ProbeSequence` (its probe plan), or None for
    batches given by hand (each crop is then its own unit)."""
    if isinstance(batches, ProbeSequence):
        plan, bs = batches.batches.plan, batches.batches.batch_size
        return np.asarray([c.image for n in batches.numbers for c in plan[n * bs:(n + 1) * bs]], dtype=np.int64)
    return None


def resampling_label(images: np.ndarray | None, n_units: int, estimator: str) -> str:
    """What an interval is conditional on, in words, for the outputs."""
    if images is None:
        return (f"jackknife over {n_units} units of the given crops; conditional on these crops "
                "(the population is crops like them)")
    n_img = len(np.unique(images))
    per = int(np.bincount(images).max())
    what = "HSIC units" if estimator == "unbiased-minibatch" else "groups"
    return (f"jackknife over {n_units} {what} of whole images ({n_img} images, {per} crop(s) each): the "
            "population is natural images like the probe set; conditional on each image's crop position(s) "
            "and noise draw")


def _sigma(task: str | None) -> float | None:
    return parse_task(task).sigma if task else None


def model_input(x: Tensor, task: str | None, *, seed: int, first_index: int = 0, patch: int | None = None) -> Tensor:
    """What a head of ``task`` is fed for the clean crops ``x: (B, 3, P, P)`` with global indices
    ``first_index .. first_index + B - 1`` -> ``(B, 3, p, p)``, ``p = patch or P``.

    ``patch < P`` brings the whole crop to ``p x p`` by the official bicubic downscaling (MATLAB
    ``imresize`` with antialiasing, uint8 in and out): every model sees the same image content. Denoising tasks add per-crop noise seeded by ``(seed, crop index)``, drawn on the
    CPU so it is the same on every device.
    """
    size = x.shape[-1]
    p = size if patch is None else int(patch)
    if p > size or p < 1:
        raise CkaLabError(f"a model probed at {p} px cannot be fed {size} px crops; use crops of at least {p} px")
    if p < size:
        x = downscale(x, p)
    sigma = _sigma(task)
    if sigma is None:
        return x
    noise = torch.from_numpy(
        np.stack([crop_noise(seed, first_index + k, sigma, tuple(x.shape[1:])) for k in range(x.shape[0])])
    )
    return (x.cpu() + noise).to(x.device)


def downscale(x: Tensor, p: int) -> Tensor:
    """Clean crops ``(B, 3, P, P)`` in [0, 1] -> ``(B, 3, p, p)`` by MATLAB bicubic ``imresize(., p / P)``
    on uint8 (the official LR rounding), on the CPU."""
    from cka_lab.data.degrade import imresize

    size = x.shape[-1]
    out = []
    for img in x.detach().cpu():
        u8 = np.floor(img.clamp(0, 1).numpy().transpose(1, 2, 0) * 255.0 + 0.5).astype(np.uint8)
        small = imresize(u8, p / size)[:p, :p]
        out.append(torch.from_numpy(np.ascontiguousarray(small.transpose(2, 0, 1))).to(torch.float32) / 255.0)
    return torch.stack(out).to(x.device)


def probe_region(model: nn.Module, task: str | None, size: int | None) -> int | None:
    """The px of image content a model probed at ``size`` px covers: ``scale * size`` for an SR head
    (its input is the LR of an HR crop that large), ``size`` otherwise."""
    if size is None:
        return None
    cfg = getattr(model, "config", None)
    if cfg is None or task is None:
        return size
    head = cfg.head(task)
    return size * head.out_scale


def training_patch(model: nn.Module, task: str | None) -> int | None:
    """The input size a model was trained at for ``task``: the config's ``image_size`` (the body's
    training patch) times the head's downsampling (4 for EDT-T denoise/derain heads, 1 for SR); None
    for a model without an EDT config."""
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(cfg, "image_size"):
        return None
    return int(cfg.image_size) * cfg.token_stride(task or cfg.tasks[0])


def check_patch(model: nn.Module, task: str | None, patch: int) -> None:
    """Refuse, in one line, a probe size the head of ``task`` cannot take (not a multiple of its padding)."""
    cfg = getattr(model, "config", None)
    if cfg is None or task is None:
        return
    cfg.head(task)
    m = cfg.pad_multiple(task)
    if patch % m:
        raise CkaLabError(
            f"probe patch {patch} is not a multiple of {m}, which the {task} head of {cfg.name} needs: "
            f"use --patch {f'{patch // m * m} or {(patch // m + 1) * m}' if patch >= m else m}"
        )


def run_model(model: nn.Module, x: Tensor, task: str | None) -> None:
    """One forward pass of ``model`` on ``x`` through the head of ``task`` (plain ``model(x)`` otherwise)."""
    if task is not None and hasattr(model, "forward_task"):
        model.forward_task(x, task)
    else:
        model(x)


@dataclass(frozen=True)
class ProbedModel:
    """A model as probed: which head, and at which input size (None: the size of the crops)."""

    model: nn.Module
    task: str | None
    patch: int | None = None

    def feed(self, batch: IndexedBatch, seed: int) -> None:
        """Run the model on one batch of clean crops (its hooks record what they record)."""
        param = next(self.model.parameters(), None)
        x = batch.x if param is None else batch.x.to(param.device)
        run_model(self.model, model_input(x, self.task, seed=seed, first_index=batch.first, patch=self.patch),
                  self.task)


@dataclass(frozen=True)
class IndexedBatch:
    """Clean crops ``x: (B, 3, P, P)`` whose global crop indices are ``first .. first + B - 1``."""

    first: int
    x: Tensor

    @property
    def indices(self) -> range:
        return range(self.first, self.first + self.x.shape[0])


def indexed_batches(batches: Iterable[Tensor]) -> Iterator[IndexedBatch]:
    """Number the crops of a stream of batches in order: crop indices run on across batches."""
    first = 0
    for x in batches:
        if isinstance(x, IndexedBatch):
            yield x
            first = x.first + x.x.shape[0]
            continue
        yield IndexedBatch(first, x)
        first += x.shape[0]


class ProbeSequence(Sequence):
    """Probe batches as a lazy sequence of :class:`IndexedBatch`: crops are cut when iterated, so a
    slice (a rank's shard, half of the crops) costs nothing and no pass holds more than one batch."""

    def __init__(self, batches, numbers: range | None = None) -> None:
        self.batches = batches  # a cka_lab.data.probes.ProbeBatches
        self.numbers = range(len(batches)) if numbers is None else numbers

    def __len__(self) -> int:
        return len(self.numbers)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return ProbeSequence(self.batches, self.numbers[k])
        n = self.numbers[k]
        return IndexedBatch(n * self.batches.batch_size, self.batches.batch(n))

    def __iter__(self) -> Iterator[IndexedBatch]:
        cache: dict = {}
        for n in self.numbers:
            yield IndexedBatch(n * self.batches.batch_size, self.batches.batch(n, cache))


def shard_batches(batches: Sequence[IndexedBatch], rank: int, world_size: int) -> Sequence[IndexedBatch]:
    """The contiguous block of whole batches that ``rank`` of ``world_size`` runs.

    Contiguous blocks keep the crops of every rank in global order, so per-unit values gathered in
    rank order are in the same order as in one process. Ranks may get no batch (more ranks than batches).
    """
    n = len(batches)
    lo, hi = n * rank // world_size, n * (rank + 1) // world_size
    return batches[lo:hi]


def probe_loader(data: str | Path | None, *, patch: int, n_samples: int, seed: int, batch_size: int,
                 min_batch: int = 4):
    """Clean probe crops from ``data`` (a folder) or the bundled images -> (batches, label).

    ``min_batch``: the smallest batch the estimator accepts (4 for the unbiased HSIC, 1 otherwise).
    """
    if batch_size < min_batch:
        raise CkaLabError(
            f"--batch-size {batch_size} is too small: the unbiased HSIC estimator needs at least {min_batch} "
            "samples per batch"
        )
    images = default_probe_images() if data is None else data
    label = PROBE_LABEL if data is None else str(data)
    batches = probe_batches(images, patch=patch, n_samples=n_samples, seed=seed, batch_size=batch_size)
    if len(batches) and n_samples % batch_size and n_samples % batch_size < min_batch:
        raise CkaLabError(
            f"--n-samples {n_samples} with --batch-size {batch_size} leaves a last batch of "
            f"{n_samples % batch_size} (< {min_batch} samples): choose n-samples divisible by the batch size"
        )
    return batches, label


def probe_size(model: nn.Module, task: str | None, patch: int | None) -> int | None:
    """The input size a model is probed at: ``patch``, else its training size for ``task``, at least
    its head's padding multiple (None for a model without an EDT config and no ``patch``)."""
    if patch is not None:
        return int(patch)
    size = training_patch(model, task)
    cfg = getattr(model, "config", None)
    if size is not None and cfg is not None:
        m = cfg.pad_multiple(task or cfg.tasks[0])
        size = max(m, -(-size // m) * m)
    return size


def prepare_probe(probe, targets: Sequence[tuple[nn.Module, str | None]], batches: Iterable[Tensor] | None = None,
                  *, min_batch: int = 4) -> tuple[list[IndexedBatch], list[int | None], str]:
    """The probe batches for ``targets`` ((model, task) pairs) under a ``ProbeSpec``.

    Returns (batches with global crop indices, the input size of each target -- None: the whole crop --,
    a label of the data). Without ``batches``, crops are cut at the largest probe size of the targets
    (:func:`probe_size`) and each target is fed its centre; every size is checked against its head.
    """
    sizes = [probe_size(m, t, probe.patch) for m, t in targets]
    if batches is not None:
        out = list(indexed_batches(batches))
        if not out:
            raise CkaLabError("no probe batch given: pass at least one batch of crops")
        crop = out[0].x.shape[-1]
        sizes = [probe.patch if probe.patch is not None else None for _ in targets]
        label = "given batches"
    else:
        regions = [probe_region(m, t, s) for (m, t), s in zip(targets, sizes)]
        known = [r for r in regions if r is not None]
        crop = max(known) if known else 48
        sizes = [s if s is not None and s != crop else None for s in sizes]
        loader, label = probe_loader(probe.data, patch=crop, n_samples=probe.n_samples, seed=probe.seed,
                                     batch_size=probe.batch_size, min_batch=min_batch)
        out = ProbeSequence(loader)
    for (model, task), size in zip(targets, sizes):
        check_patch(model, task, size or crop)
    return out, sizes, label
