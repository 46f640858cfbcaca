"""Deterministic probe crops for analysis (CKA, attention distance), and the bundled sample images.

``probe_batches(images, patch=48, n_samples=64, seed=0, batch_size=16)`` gives float32 batches
``(B, 3, patch, patch)`` in [0, 1] (noisy inputs can leave [0, 1]). The crops depend only on the
sorted image list, their sizes, ``patch``, ``n_samples`` and ``seed``, not on ``batch_size``. They are
laid out *image by image*: with m usable images (large enough, in file-name order) each image gives
``c = crops_per_image(n_samples, m)`` consecutive crops (the smallest power of two >= n_samples / m, so
that ``c`` divides a resampling unit of 8 crops or is a multiple of it), from the first
``ceil(n_samples / c)`` images, at positions drawn from ``numpy.random.default_rng(seed)``. Crops of one
image are therefore never split between two resampling units of a multiple of ``c`` crops: the
resampling unit of the analysis is the image. ``ProbeCrop.image`` is the image's index. For a denoising task (``g15``,
``g25``, ``g50``) each crop gets Gaussian noise (``sigma / 255`` std, no clipping) from a generator
seeded with ``(seed, i)``, so it is the same whatever the batch size.

The package carries its own small images (``cka_lab/data/assets``, see its README for provenance):
``bundled_images("sr_lr_x2" | "sr_hr" | "clean" | "rain" | "norain" | "probes")``. ``probes`` (68 CBSD68
crops, see ``assets/probes_cbsd68/PROVENANCE.csv``) is the default probe set of the analysis.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cka_lab.data.images import image_size, list_images, read_uint8
from cka_lab.errors import CkaLabError
from cka_lab.tasks import TASK_KEYS, parse_task

ASSETS_DIR = Path(__file__).resolve().parent / "assets"

#: kind -> (folder under assets/, description)
BUNDLED_KINDS: dict[str, tuple[str, str]] = {
    "sr_lr_x2": ("sr_lr_x2", "Set5 official bicubic LR x2 (5 images, 114x172 to 256x256)"),
    "sr_hr": ("sr_hr", "Set5 HR for x2 (5 images, 228x344 to 512x512), pairs with sr_lr_x2 by sorted name"),
    "clean": ("clean", "McMaster color test images, 240x240 crops (3 images)"),
    "rain": ("rain", "Rain100L test rain images, 240x240 crops (2 images)"),
    "norain": ("norain", "Rain100L clean backgrounds of the 'rain' images, same crops (2 images)"),
    "probes": ("probes_cbsd68", "CBSD68 192x192 centre crops (68 images), the default analysis probe set"),
}

def bundled_images(kind: str = "sr_lr_x2") -> list[Path]:
    """Paths of the images bundled with the package for ``kind``, sorted by file name.

    Kinds: ``sr_lr_x2``, ``sr_hr``, ``clean``, ``rain``, ``norain``, ``probes`` (see :data:`BUNDLED_KINDS`).
    """
    if kind not in BUNDLED_KINDS:
        raise CkaLabError(f"unknown bundled image kind {kind!r}; use one of {', '.join(BUNDLED_KINDS)}")
    folder = ASSETS_DIR / BUNDLED_KINDS[kind][0]
    if not folder.is_dir():
        raise CkaLabError(f"bundled images for {kind!r} are missing from {folder}; reinstall cka_lab")
    return list_images(folder)


@dataclass(frozen=True)
class ProbeCrop:
    """One probe sample: a ``size x size`` crop of ``path`` with its top-left corner at ``(top, left)``."""

    index: int
    path: Path
    top: int
    left: int
    size: int
    image: int = 0  # index of the image among the images used (the resampling unit of the analysis)


def crops_per_image(n_samples: int, n_images: int) -> int:
    """Crops taken from each image: the smallest power of two >= ``n_samples / n_images`` (1 when there are
    at least as many images as crops). A power of two divides a unit of 8 crops, or is a multiple of it."""
    c = 1
    while c * n_images < n_samples:
        c *= 2
    return c


def crop_noise(seed: int, index: int, sigma: float, shape: tuple[int, ...]) -> np.ndarray:
    """The Gaussian noise of probe crop ``index``: float32 ``shape`` with std ``sigma / 255``.

    Drawn from ``numpy.random.default_rng([seed, index])``, so a crop's noise depends only on the seed
    and its own index -- not on the batch it lands in, the batch size, the order of the batches or the
    rank that runs it. The same standard-normal field serves every sigma (common random numbers).
    """
    rng = np.random.default_rng([int(seed), int(index)])
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(sigma / 255.0)


def _int_arg(name: str, value: object, *, minimum: int) -> int:
    """``value`` as an int >= ``minimum``, or a CkaLabError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise CkaLabError(f"{name} must be {what}, got {value!r}")
    return int(value)


def _resolve_images(paths_or_dir: str | Path | Sequence[str | Path]) -> list[Path]:
    if isinstance(paths_or_dir, (str, Path)):
        p = Path(paths_or_dir)
        if p.is_dir():
            return list_images(p)
        if p.is_file():
            return [p]
        raise CkaLabError(f"probe images not found: {p} (pass a folder of images or a list of image files)")
    paths = sorted((Path(p) for p in paths_or_dir), key=lambda q: (q.name, str(q)))
    if not paths:
        raise CkaLabError("no probe images given; pass a folder of images or a non-empty list of files")
    for p in paths:
        if not p.is_file():
            raise CkaLabError(f"probe image not found: {p} (check the path)")
    return paths


def _noise_sigma(task: str | None) -> float | None:
    if task is None:
        return None
    t = str(task)
    try:
        return parse_task(t.removeprefix("dr_") if t in ("dr_L", "dr_H") else t).sigma
    except CkaLabError:
        raise CkaLabError(f"unknown task {task!r}; use one of {', '.join(TASK_KEYS)} (or None)") from None


def probe_plan(paths_or_dir: str | Path | Sequence[str | Path], *, patch: int, n_samples: int,
               seed: int = 0) -> list[ProbeCrop]:
    """Where each of the ``n_samples`` probe crops comes from (see the module docstring).

    Images smaller than ``patch`` in either dimension are skipped. Raises :class:`CkaLabError` when
    there is no image, when ``patch`` is larger than every image, or for non-positive sizes.
    """
    patch = _int_arg("patch", patch, minimum=1)
    n_samples = _int_arg("n_samples", n_samples, minimum=1)
    seed = _int_arg("seed", seed, minimum=0)
    paths = _resolve_images(paths_or_dir)
    sizes = [image_size(p) for p in paths]
    usable = [(p, hw) for p, hw in zip(paths, sizes) if hw[0] >= patch and hw[1] >= patch]
    if not usable:
        largest = max(sizes, key=lambda hw: min(hw))
        raise CkaLabError(
            f"patch {patch} is larger than every probe image (largest is {largest[0]}x{largest[1]}); "
            "use a smaller patch"
        )
    rng = np.random.default_rng(seed)
    per_image = crops_per_image(n_samples, len(usable))
    plan = []
    for i in range(n_samples):
        j = i // per_image
        path, (h, w) = usable[j]
        top = int(rng.integers(0, h - patch + 1))
        left = int(rng.integers(0, w - patch + 1))
        plan.append(ProbeCrop(i, path, top, left, patch, j))
    return plan


class ProbeBatches:
    """Batches of probe crops, float32 ``(B, 3, patch, patch)``; the last batch may be smaller.

    Re-iterable: every ``for`` loop (``iter()``) yields the same batches from the start, so two models
    can be run over identical probes. ``next()`` on the object itself walks one shared pass.
    ``plan`` lists the crops, ``len()`` is the number of batches.
    """

    def __init__(self, plan: list[ProbeCrop], batch_size: int, sigma: float | None, seed: int) -> None:
        self.plan = plan
        self.batch_size = batch_size
        self.sigma = sigma
        self.seed = seed
        self._cursor: Iterator[torch.Tensor] | None = None

    def __len__(self) -> int:
        return -(-len(self.plan) // self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self._generate()

    def __next__(self) -> torch.Tensor:
        if self._cursor is None:
            self._cursor = self._generate()
        return next(self._cursor)

    def _crop(self, crop: ProbeCrop, cache: dict[Path, np.ndarray]) -> np.ndarray:
        """float32 ``(3, patch, patch)`` in [0, 1] (plus noise for denoising tasks)."""
        if crop.path not in cache:
            cache[crop.path] = read_uint8(crop.path, channels=3)
        img = cache[crop.path]
        s = crop.size
        chw = img[crop.top:crop.top + s, crop.left:crop.left + s].transpose(2, 0, 1).astype(np.float32) / 255.0
        if self.sigma:
            chw = chw + crop_noise(self.seed, crop.index, self.sigma, chw.shape)
        return chw

    def batch(self, k: int, cache: dict[Path, np.ndarray] | None = None) -> torch.Tensor:
        """Batch number ``k`` alone: crops ``k * batch_size ..`` as ``(B, 3, patch, patch)``.

        ``cache`` (path -> decoded image) may be shared between calls to decode each image once.
        """
        if not 0 <= k < len(self):
            raise CkaLabError(f"batch {k} does not exist: there are {len(self)} batches")
        cache = {} if cache is None else cache
        chunk = self.plan[k * self.batch_size:(k + 1) * self.batch_size]
        return torch.from_numpy(np.stack([self._crop(c, cache) for c in chunk]))

    def _generate(self) -> Iterator[torch.Tensor]:
        cache: dict[Path, np.ndarray] = {}
        for k in range(len(self)):
            yield self.batch(k, cache)


def probe_batches(paths_or_dir: str | Path | Sequence[str | Path], *, patch: int, n_samples: int,
                  seed: int = 0, batch_size: int = 16, task: str | None = None) -> ProbeBatches:
    """Deterministic probe crops in batches: float32 tensors ``(B, 3, patch, patch)``.

    ``paths_or_dir``: a folder (its images, sorted by name), one image file, or a list of files
    (e.g. ``bundled_images("clean")``). Gray images are used as three equal channels. ``task``:
    ``None`` or an SR / deraining task gives the clean crops; ``g15``/``g25``/``g50`` adds seeded
    Gaussian noise. Same arguments -> same tensors, bit for bit. Errors (:class:`CkaLabError`) are
    raised here, not at the first batch: no images, ``patch`` larger than every image,
    ``batch_size < 1``, unknown task.
    """
    batch_size = _int_arg("batch_size", batch_size, minimum=1)
    sigma = _noise_sigma(task)
    plan = probe_plan(paths_or_dir, patch=patch, n_samples=n_samples, seed=seed)
    return ProbeBatches(plan, batch_size, sigma, int(seed))
