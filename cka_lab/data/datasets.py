"""Paired patch datasets for training (SR / Gaussian denoising / deraining) and paired evaluation sets.

Training patch sets hold their images decoded in memory and draw one sample from a
``numpy.random.Generator`` per call, so a sample is a pure function of the generator's state: seed
the generator from (seed, iteration, rank, head) and the data of a run is reproducible and resumable
without saving loader state (see :mod:`cka_lab.train.batches`).

Images are drawn in proportion to their number of possible patches (every patch of the training
set equally likely), or, when the sources carry a ``weight``, each source gets its share of the
patches (:func:`image_weights`).

* :class:`SRPatchSet`: each HR image is modcropped to the scale and downscaled *once* with MATLAB
  bicubic (:func:`cka_lab.data.degrade.imresize`, the convention the official LR files follow);
  a sample is an aligned crop ``LR (3, p, p)`` / ``HR (3, s*p, s*p)`` of the two.
* :class:`NoisyPatchSet`: a clean crop ``(3, p, p)`` and the same crop plus fresh Gaussian noise of
  std ``sigma / 255`` (no clipping, as the test protocol).
* :class:`RainPatchSet`: aligned crops of ``rain/`` and ``norain/`` pairs.

All three apply the same random horizontal flip, vertical flip and transpose (90-degree rotation)
to input and target when ``augment`` is on. Tensors are float32 in [0, 1] (noisy inputs can leave
it), channels RGB; gray files become three equal channels.

Evaluation sets (:func:`eval_pairs`) give whole images: ``EvalPair.input (1, 3, h, w)`` float32 and
``EvalPair.target (H, W, 3)`` uint8, paired by sorted file name as the official test script.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cka_lab.data.degrade import add_gaussian_noise, imresize, official_noisy
from cka_lab.data.images import list_images, modcrop, read_uint8, uint8_to_tensor
from cka_lab.errors import CkaLabError
from cka_lab.tasks import parse_task

__all__ = [
    "ImageSource",
    "TrainImage",
    "RainPair",
    "EvalPair",
    "load_images",
    "patch_counts",
    "image_weights",
    "read_rain_pairs",
    "augment_arrays",
    "SRPatchSet",
    "NoisyPatchSet",
    "RainPatchSet",
    "sr_eval_pairs",
    "dn_eval_pairs",
    "dr_eval_pairs",
    "eval_pairs",
    "select_pairs",
    "pixel_digest",
]


@dataclass(frozen=True)
class ImageSource:
    """A folder of images; ``reduce`` shrinks each by an integer factor on load (Pillow ``reduce``).

    ``weight`` is the source's share of the training patches relative to the other sources' weights
    (``None``: no fixed share; see :func:`image_weights`).
    """

    path: Path
    reduce: int = 1
    weight: float | None = None


@dataclass(frozen=True)
class TrainImage:
    """A decoded training image: ``pixels (H, W, 3)`` uint8 RGB, and the digest of the file's pixels.

    ``source`` is the index of its :class:`ImageSource` in the list it was loaded from, and
    ``source_weight`` that source's ``weight``.
    """

    name: str
    pixels: np.ndarray
    digest: str
    source: int = 0
    source_weight: float | None = None


@dataclass(frozen=True)
class RainPair:
    """A rain image and its clean background, both ``(H, W, 3)`` uint8 RGB, same size."""

    name: str
    rain: np.ndarray
    norain: np.ndarray
    digest: str  # of the clean background


@dataclass(frozen=True)
class EvalPair:
    """One evaluation image: ``input (1, 3, h, w)`` float32 and ``target (s*h, s*w, 3)`` uint8."""

    name: str
    input: torch.Tensor
    target: np.ndarray


def pixel_digest(pixels: np.ndarray) -> str:
    """SHA-1 of an image's shape and pixel bytes: equal for pixel-identical images in any file format."""
    h = hashlib.sha1(repr(pixels.shape).encode())
    h.update(np.ascontiguousarray(pixels).tobytes())
    return h.hexdigest()


def _as_sources(sources: Sequence[ImageSource | str | Path]) -> list[ImageSource]:
    out = []
    for s in sources:
        if isinstance(s, (str, Path)):
            out.append(ImageSource(Path(s)))
        else:
            out.append(ImageSource(Path(s.path), int(getattr(s, "reduce", 1)), getattr(s, "weight", None)))
    return out


def _reduce(arr: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return arr
    return np.asarray(Image.fromarray(arr).reduce(factor), dtype=np.uint8)


def load_images(sources: Sequence[ImageSource | str | Path]) -> list[TrainImage]:
    """Decode every image of every source folder (sorted by name), RGB, reduced as the source says."""
    srcs = _as_sources(sources)
    weighted = [s.weight is not None for s in srcs]
    if any(weighted) and not all(weighted):
        lacking = srcs[weighted.index(False)].path
        raise CkaLabError(
            f"image source {lacking} has no weight but others do: give every source of the list a weight, or none "
            "(then images are drawn in proportion to their number of patches)"
        )
    images: list[TrainImage] = []
    for k, src in enumerate(srcs):
        for path in list_images(src.path):
            arr = read_uint8(path, channels=3)
            images.append(TrainImage(f"{src.path.name}/{path.name}", _reduce(arr, src.reduce), pixel_digest(arr),
                                     k, src.weight))
    if not images:
        raise CkaLabError("no training image folders given")
    return images


def patch_counts(shapes: Sequence[tuple[int, ...]], patch: int) -> np.ndarray:
    """Number of ``patch x patch`` crops of each image: ``(H - p + 1) * (W - p + 1)``, float64 ``(n,)``."""
    return np.array([max(0, h - patch + 1) * max(0, w - patch + 1) for h, w, *_ in shapes], dtype=np.float64)


def image_weights(counts: np.ndarray, sources: Sequence[int], source_weights: Sequence[float | None]) -> np.ndarray:
    """Probability of drawing each image, ``(n,)`` float64 summing to 1.

    Without source weights (all ``None``) an image is drawn in proportion to its patch count
    ``counts[i]``: every possible patch of the whole training set is equally likely. With weights
    (one per image, equal within a source) source ``s`` gets the share ``w_s / sum(w)`` and its
    images split that share in proportion to their patch counts.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.sum() <= 0:
        raise CkaLabError("no training image is large enough for one patch")
    if all(w is None for w in source_weights):
        return counts / counts.sum()
    if any(w is None for w in source_weights):
        raise CkaLabError("give every image source a weight, or none")
    sources = np.asarray(sources)
    weights = {int(s): float(w) for s, w in zip(sources, source_weights)}
    total = sum(weights.values())
    p = np.zeros_like(counts)
    for s, w in weights.items():
        sel = sources == s
        p[sel] = (w / total) * counts[sel] / counts[sel].sum()
    return p


class _ImageDraw:
    """Draws an image index with fixed probabilities from one ``rng.random()`` (inverse CDF)."""

    def __init__(self, probabilities: np.ndarray):
        self.probabilities = np.asarray(probabilities, dtype=np.float64)
        self.cdf = np.cumsum(self.probabilities)

    def __call__(self, rng: np.random.Generator) -> int:
        i = int(np.searchsorted(self.cdf, rng.random() * self.cdf[-1], side="right"))
        return min(i, len(self.cdf) - 1)


_RAIN_WORD = re.compile(r"(?i)(no)?rain[-_]?")


def _pair_key(stem: str) -> str:
    """``rain-001`` and ``norain-001`` -> ``001``; names without the word pair by their stem."""
    return _RAIN_WORD.sub("", stem, count=1) or stem


def _rain_files(folder: Path) -> list[tuple[str, Path, Path]]:
    folder = Path(folder)
    rain_dir, clean_dir = folder / "rain", folder / "norain"
    if not rain_dir.is_dir() or not clean_dir.is_dir():
        raise CkaLabError(f"deraining folder {folder} needs the subfolders rain/ and norain/ (rain-NNN / norain-NNN pairs)")
    rains = {_pair_key(p.stem): p for p in list_images(rain_dir)}
    cleans = {_pair_key(p.stem): p for p in list_images(clean_dir)}
    lonely = sorted(set(rains) ^ set(cleans))
    if lonely:
        key = lonely[0]
        have, lack = ("rain", "norain") if key in rains else ("norain", "rain")
        path = (rains if key in rains else cleans)[key]
        raise CkaLabError(
            f"unpaired file in {folder}: {have}/{path.name} has no partner in {lack}/ "
            f"({len(lonely)} unpaired in all; pairs are rain-NNN.png / norain-NNN.png)"
        )
    return [(key, rains[key], cleans[key]) for key in sorted(rains)]


def read_rain_pairs(folder: str | Path) -> list[RainPair]:
    """Read ``folder/rain`` and ``folder/norain``, paired by name (``rain-001`` <-> ``norain-001``).

    Raises :class:`CkaLabError` for a missing subfolder, an unpaired file or pairs of different sizes.
    """
    pairs = []
    for key, rp, cp in _rain_files(Path(folder)):
        rain, clean = read_uint8(rp), read_uint8(cp)
        if rain.shape != clean.shape:
            raise CkaLabError(f"{rp.name} is {rain.shape[1]}x{rain.shape[0]} but {cp.name} is {clean.shape[1]}x{clean.shape[0]}")
        pairs.append(RainPair(key, rain, clean, pixel_digest(clean)))
    return pairs


def augment_arrays(arrays: Sequence[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """The same random hflip / vflip / transpose (each with probability 1/2) on every ``(H, W, C)`` array.

    Flips plus a transpose give all 8 symmetries of the square (rotations by 90 degrees included).
    Draws exactly three numbers from ``rng``.
    """
    hflip, vflip, rot = rng.random(3) < 0.5
    out = []
    for a in arrays:
        if hflip:
            a = a[:, ::-1]
        if vflip:
            a = a[::-1]
        if rot:
            a = a.transpose(1, 0, 2)
        out.append(a)
    return out


def _to_tensor(a: np.ndarray) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` -> float32 ``(3, H, W)`` in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))).float().div_(255.0)


def _check_size(name: str, h: int, w: int, patch: int, what: str) -> None:
    if h < patch or w < patch:
        raise CkaLabError(
            f"training image {name} is {w}x{h}{what}, smaller than the {patch}x{patch} patch: "
            "lower data.patch_size or the source's reduce factor, or leave the image out"
        )


class SRPatchSet:
    """Aligned LR/HR patches for one SR scale.

    ``sample(rng) -> (lr (3, p, p), hr (3, s*p, s*p))``. The LR image of each HR image is
    ``imresize(modcrop(hr, s), 1/s)`` (MATLAB bicubic, uint8), computed once here; an LR patch at
    ``(top, left)`` pairs with the HR patch at ``(s*top, s*left)``.
    """

    def __init__(self, images: Sequence[TrainImage], scale: int, patch: int, augment: bool = True):
        self.scale, self.patch, self.augment = int(scale), int(patch), bool(augment)
        self.names: list[str] = []
        self.hr: list[np.ndarray] = []
        self.lr: list[np.ndarray] = []
        for img in images:
            hr = modcrop(img.pixels, self.scale)
            h, w = hr.shape[0] // self.scale, hr.shape[1] // self.scale
            _check_size(img.name, h, w, self.patch, f" at x{self.scale} LR size (HR {hr.shape[1]}x{hr.shape[0]})")
            self.names.append(img.name)
            self.hr.append(hr)
            self.lr.append(imresize(hr, 1.0 / self.scale))
        if not self.hr:
            raise CkaLabError("SR patch set needs at least one image")
        counts = patch_counts([a.shape for a in self.lr], self.patch)
        self._draw = _ImageDraw(image_weights(counts, [im.source for im in images], [im.source_weight for im in images]))
        self.probabilities = self._draw.probabilities  # (n,) chance of each image per sample

    def __len__(self) -> int:
        return len(self.hr)

    def locate(self, rng: np.random.Generator) -> tuple[int, int, int]:
        """Draw ``(image index, top, left)`` of an LR patch (images weighted by :attr:`probabilities`)."""
        i = self._draw(rng)
        h, w = self.lr[i].shape[:2]
        return i, int(rng.integers(h - self.patch + 1)), int(rng.integers(w - self.patch + 1))

    def sample(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        i, top, left = self.locate(rng)
        p, s = self.patch, self.scale
        lr = self.lr[i][top : top + p, left : left + p]
        hr = self.hr[i][s * top : s * (top + p), s * left : s * (left + p)]
        if self.augment:
            lr, hr = augment_arrays([lr, hr], rng)
        return _to_tensor(lr), _to_tensor(hr)


class NoisyPatchSet:
    """Clean patches and the same patches with fresh Gaussian noise (std ``sigma / 255``, unclipped).

    ``sample(rng) -> (noisy (3, p, p), clean (3, p, p))``; the noise comes from a torch generator
    seeded by ``rng``, so it is new for every sample and reproducible.
    """

    def __init__(self, images: Sequence[TrainImage], sigma: float, patch: int, augment: bool = True):
        self.sigma, self.patch, self.augment = float(sigma), int(patch), bool(augment)
        self.names = [img.name for img in images]
        self.images = [img.pixels for img in images]
        for img in images:
            _check_size(img.name, img.pixels.shape[0], img.pixels.shape[1], self.patch, "")
        if not self.images:
            raise CkaLabError("denoising patch set needs at least one image")
        counts = patch_counts([a.shape for a in self.images], self.patch)
        self._draw = _ImageDraw(image_weights(counts, [im.source for im in images], [im.source_weight for im in images]))
        self.probabilities = self._draw.probabilities  # (n,) chance of each image per sample

    def __len__(self) -> int:
        return len(self.images)

    def sample(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        i = self._draw(rng)
        img = self.images[i]
        top = int(rng.integers(img.shape[0] - self.patch + 1))
        left = int(rng.integers(img.shape[1] - self.patch + 1))
        clean = img[top : top + self.patch, left : left + self.patch]
        if self.augment:
            (clean,) = augment_arrays([clean], rng)
        target = _to_tensor(clean)
        gen = torch.Generator().manual_seed(int(rng.integers(2**63 - 1)))
        return add_gaussian_noise(target, self.sigma, gen), target


class RainPatchSet:
    """Aligned ``(rain (3, p, p), norain (3, p, p))`` crops of rain/norain pairs."""

    def __init__(self, pairs: Sequence[RainPair], patch: int, augment: bool = True):
        self.patch, self.augment = int(patch), bool(augment)
        self.pairs = list(pairs)
        for pr in self.pairs:
            _check_size(f"rain/{pr.name}", pr.rain.shape[0], pr.rain.shape[1], self.patch, "")
        if not self.pairs:
            raise CkaLabError("deraining patch set needs at least one rain/norain pair")

    def __len__(self) -> int:
        return len(self.pairs)

    def sample(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        pr = self.pairs[int(rng.integers(len(self.pairs)))]
        top = int(rng.integers(pr.rain.shape[0] - self.patch + 1))
        left = int(rng.integers(pr.rain.shape[1] - self.patch + 1))
        sl = (slice(top, top + self.patch), slice(left, left + self.patch))
        rain, clean = pr.rain[sl], pr.norain[sl]
        if self.augment:
            rain, clean = augment_arrays([rain, clean], rng)
        return _to_tensor(rain), _to_tensor(clean)


# --------------------------------------------------------------------------------------------------
# Evaluation sets: whole images, official pairing and degradation
# --------------------------------------------------------------------------------------------------


def _centre_crop(pair: EvalPair, crop: int, scale: int) -> EvalPair:
    """Crop the input to at most ``crop x crop`` around its centre, the target to the aligned region."""
    h, w = pair.input.shape[-2:]
    ch, cw = min(crop, h), min(crop, w)
    top, left = (h - ch) // 2, (w - cw) // 2
    x = pair.input[..., top : top + ch, left : left + cw].contiguous()
    t = pair.target[scale * top : scale * (top + ch), scale * left : scale * (left + cw)]
    return EvalPair(pair.name, x, np.ascontiguousarray(t))


def _sr_hr_folder(folder: Path, scale: int) -> tuple[Path, bool]:
    """HR folder of a Set5-style set and whether it is already modcropped to ``scale``."""
    for sub, cropped in ((folder / "HR" / f"x{scale}", True), (folder / "HR" / "original", False), (folder / "HR", False)):
        if sub.is_dir() and any(p.is_file() for p in sub.iterdir()):
            return sub, cropped
    return folder, False


def sr_eval_pairs(folder: str | Path, scale: int) -> list[EvalPair]:
    """SR pairs of a folder: Set5-style (``HR/x{s}`` or ``HR/original``, with ``LR_bicubic/x{s}``) or plain HR images.

    HR is modcropped to the scale; LR is read from ``LR_bicubic/x{s}`` when present (paired by sorted
    name: ``babyx2.png`` <-> ``baby.png``) and made with MATLAB bicubic otherwise.
    """
    folder, scale = Path(folder), int(scale)
    hr_dir, _ = _sr_hr_folder(folder, scale)
    hr_files = list_images(hr_dir)
    lr_dir = folder / "LR_bicubic" / f"x{scale}"
    lr_files = list_images(lr_dir) if lr_dir.is_dir() else None
    if lr_files is not None and len(lr_files) != len(hr_files):
        raise CkaLabError(f"{len(hr_files)} HR images in {hr_dir} but {len(lr_files)} LR images in {lr_dir}: they must pair one to one")
    pairs = []
    for k, hp in enumerate(hr_files):
        hr = modcrop(read_uint8(hp), scale)
        if lr_files is not None:
            lp = lr_files[k]
            if lp.stem not in (hp.stem, f"{hp.stem}x{scale}"):
                raise CkaLabError(f"unpaired file in {folder}: LR {lp.name} sorts next to HR {hp.name} (expected {hp.stem}x{scale}{lp.suffix})")
            lr = read_uint8(lp)
            if (lr.shape[0] * scale, lr.shape[1] * scale) != hr.shape[:2]:
                raise CkaLabError(f"LR {lp.name} is {lr.shape[1]}x{lr.shape[0]} but HR {hp.name} (modcropped) is {hr.shape[1]}x{hr.shape[0]}, not x{scale}")
        else:
            lr = imresize(hr, 1.0 / scale)
        pairs.append(EvalPair(hp.stem, uint8_to_tensor(lr), hr))
    return pairs


def dn_eval_pairs(folder: str | Path, sigma: float, seed: int = 0) -> list[EvalPair]:
    """Official denoising test inputs: ``np.random.seed(seed)`` once, noise per image in sorted order."""
    state = np.random.RandomState(seed)
    pairs = []
    for p in list_images(folder):
        clean = read_uint8(p)
        pairs.append(EvalPair(p.stem, official_noisy(clean, sigma, rng=state), clean))
    return pairs


def dr_eval_pairs(folder: str | Path) -> list[EvalPair]:
    """Deraining pairs of ``folder/rain`` and ``folder/norain`` (paired by name)."""
    return [EvalPair(pr.name, uint8_to_tensor(pr.rain), pr.norain) for pr in read_rain_pairs(folder)]


def select_pairs(pairs: Sequence[EvalPair], task: str, *, max_images: int = 0, crop: int = 0) -> list[EvalPair]:
    """The first ``max_images`` pairs (0: all), centre-cropped to ``crop x crop`` input pixels (0: whole)."""
    scale = parse_task(task).scale
    out = list(pairs[:max_images] if max_images else pairs)
    return [_centre_crop(p, crop, scale) for p in out] if crop else out


def eval_pairs(folder: str | Path, task: str, *, max_images: int = 0, crop: int = 0) -> list[EvalPair]:
    """Evaluation pairs of ``folder`` for a task key (``x2``, ``g25``, ``L``, ...).

    SR: :func:`sr_eval_pairs`; denoising: :func:`dn_eval_pairs` (official noise); deraining:
    :func:`dr_eval_pairs`. ``max_images`` keeps the first N (0: all; the noise of the kept images is
    the full protocol's). ``crop`` centre-crops the input to at most ``crop x crop`` pixels, after the
    noise is added (0: whole images).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CkaLabError(f"evaluation folder {folder} not found")
    t = parse_task(task)
    if t.kind == "sr":
        pairs = sr_eval_pairs(folder, t.scale)
    elif t.kind == "dn":
        pairs = dn_eval_pairs(folder, int(t.level))
    else:
        pairs = dr_eval_pairs(folder)
    return select_pairs(pairs, t.key, max_images=max_images, crop=crop)
