"""Read and write images, and the official uint8 / Y-channel conventions.

Conventions (the official EDT ones, see ``fixtures/edt/README.md`` §3 and §5):

* In memory an image is a float32 tensor ``(1, C, H, W)``, RGB, values in [0, 1]
  (``uint8 / 255``), or a uint8 numpy array ``(H, W, C)``, RGB.
* Gray files are read as three equal channels by default (``channels=3``), like OpenCV's
  ``cv2.IMREAD_COLOR``; ``channels=None`` keeps the channels the file has.
* Float -> uint8 ("uint8 rounding") is the official ``tensor2img``: clamp to [0, 1], multiply by 255
  in float32, numpy ``round`` (half to even), cast to uint8.
* Y channel is the official ``bgr2ycbcr(only_y=True)`` (BT.601, studio swing), in float64 on 0..255
  values, with no rounding.

* 16-bit files, colour or gray, are reduced to 8 bits by keeping each sample's high byte
  (``v // 256``): what Pillow does when it opens 16-bit colour, done the same way for 16-bit gray.
* Images larger than :data:`MAX_PIXELS` are refused in one line from their header, before decoding;
  Pillow's decompression-bomb limit is set to the same number.

Only Pillow is used (no OpenCV).
"""

from __future__ import annotations

from pathlib import Path
import warnings
from typing import TypeVar

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from cka_lab.errors import CkaLabError
from cka_lab.io import atomic_write

#: The largest image cka_lab reads or writes, in pixels (24000 x 24000 = 576 M fits).
MAX_PIXELS = 600_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # deliberately: Pillow refuses a larger header as a decompression bomb

_SIXTEEN_BIT_GRAY = ("I;16", "I;16B", "I;16L")

#: File name suffixes (lower case) that :func:`list_images` picks up and :func:`write_image` writes.
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")

_PIL_FORMATS = {
    ".png": "PNG",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".bmp": "BMP",
}

# Pillow modes that hold 8-bit samples, and what they convert to without changing values.
_EIGHT_BIT_MODES = {"L": "L", "LA": "LA", "RGB": "RGB", "RGBA": "RGBA", "1": "L", "CMYK": "RGB",
                    "YCbCr": "RGB", "LAB": None, "HSV": None}

# Y = (65.481 R + 128.553 G + 24.966 B) / 255 + 16 on 0..255 values (BT.601 studio swing).
_Y_WEIGHTS_RGB = np.array([65.481, 128.553, 24.966], dtype=np.float64)
# The same weights in B, G, R order: the official code sums in that order (identical up to float ulps).
_Y_WEIGHTS_BGR = _Y_WEIGHTS_RGB[::-1].copy()

ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, torch.Tensor)


def _open_uint8(path: str | Path) -> np.ndarray:
    """Decode a file into a uint8 array ``(H, W, C)`` with the channels the file has (1, 2, 3 or 4)."""
    path = Path(path)
    if not path.exists():
        raise CkaLabError(f"image file not found: {path} (check the path)")
    if path.is_dir():
        raise CkaLabError(f"expected an image file but got a folder: {path} (pass a file, or use list_images)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # over the limit: refused, not warned
            im = Image.open(path)
        with im:
            _check_size(path, im.size)
            im.load()
            mode = im.mode
            if mode in _SIXTEEN_BIT_GRAY or (mode == "I" and im.format == "PNG"):  # PNG 16-bit gray
                wide = np.array(im)
                arr = (wide.astype(np.uint32) >> 8).astype(np.uint8)  # the high byte, as Pillow does for colour
                return np.ascontiguousarray(arr[:, :, None])
            if mode == "P" or mode == "PA":
                im = im.convert("RGBA" if ("transparency" in im.info or mode == "PA") else "RGB")
            elif mode in ("I", "F"):
                raise CkaLabError(
                    f"{path} is a {mode} (32-bit integer or float) image; only 8- and 16-bit images are supported "
                    "(convert it to 8-bit first)"
                )
            elif mode not in _EIGHT_BIT_MODES or _EIGHT_BIT_MODES[mode] is None:
                raise CkaLabError(f"{path} has Pillow mode {mode!r}, which is not supported (save it as 8-bit RGB)")
            else:
                target = _EIGHT_BIT_MODES[mode]
                if target != mode:
                    im = im.convert(target)
            arr = np.array(im, dtype=np.uint8)  # a writable copy
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _too_large(path, None) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise CkaLabError(f"cannot read {path} as an image ({type(exc).__name__}); is it a PNG/TIF/JPG file?") from exc
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return np.ascontiguousarray(arr)


def _too_large(path: str | Path, size: tuple[int, int] | None) -> CkaLabError:
    dims = f"{size[0]}x{size[1]} px, " if size else ""
    return CkaLabError(f"{path} is too large ({dims}over the limit of {MAX_PIXELS / 1e6:.0f} megapixels): "
                       "split it into parts first")


def _check_size(path: str | Path, size: tuple[int, int]) -> None:
    if size[0] * size[1] > MAX_PIXELS:
        raise _too_large(path, size)


def _fit_channels(arr: np.ndarray, channels: int | None, path: str | Path) -> np.ndarray:
    """Give ``arr (H, W, C)`` the requested channel count, or raise a CkaLabError."""
    have = arr.shape[2]
    if channels is None or channels == have:
        return arr
    if channels not in (1, 3):
        raise CkaLabError(f"channels must be 1, 3 or None, got {channels!r}")
    if channels == 3 and have == 1:
        return np.repeat(arr, 3, axis=2)  # gray -> 3 equal channels, like cv2.IMREAD_COLOR
    kind = {2: "gray + alpha (2 channels)", 4: "RGBA (4 channels, has alpha)"}.get(have, f"{have}-channel")
    if channels == 3:
        raise CkaLabError(
            f"{path} is {kind} but 3 channels (RGB) are needed; save it as RGB without alpha "
            "(e.g. Image.open(p).convert('RGB').save(p))"
        )
    raise CkaLabError(
        f"{path} has {have} channels but 1 (gray) is needed; convert it to gray first, "
        "or read it with channels=3 and use rgb_to_y"
    )


def read_uint8(path: str | Path, channels: int | None = 3) -> np.ndarray:
    """Read an image file as a uint8 array ``(H, W, C)``, RGB channel order.

    ``channels=3`` (default) gives RGB and turns gray into three equal channels; ``channels=1`` needs
    a gray file; ``channels=None`` keeps what the file has. Raises :class:`CkaLabError` for a missing
    or unreadable file, and for a channel count that does not fit (alpha channels are never dropped
    silently).
    """
    return _fit_channels(_open_uint8(path), channels, path)


def read_image(path: str | Path, channels: int | None = 3) -> torch.Tensor:
    """Read an image file as a float32 tensor ``(1, C, H, W)`` in [0, 1] (``uint8 / 255``), RGB.

    Same channel rules as :func:`read_uint8`. The values equal the official input pipeline's
    (``astype(float32) / 255.0``) bit for bit.
    """
    arr = read_uint8(path, channels)
    return uint8_to_tensor(arr)


def uint8_to_tensor(arr: np.ndarray) -> torch.Tensor:
    """uint8 array ``(H, W, C)`` or ``(H, W)`` -> float32 tensor ``(1, C, H, W)`` in [0, 1]."""
    if arr.dtype != np.uint8:
        raise CkaLabError(f"expected a uint8 image array, got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise CkaLabError(f"expected an image array of shape (H, W, C), got {arr.shape}")
    chw = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).to(torch.float32)
    return (chw / 255.0).unsqueeze(0)


def to_uint8(tensor: torch.Tensor) -> np.ndarray:
    """Float image tensor in [0, 1] -> uint8 array ``(H, W, C)``, RGB: the official ``tensor2img``.

    Accepts ``(1, C, H, W)``, ``(C, H, W)`` or ``(H, W)``. Steps, as the official code: cast to
    float32, clamp to [0, 1], multiply by 255 (float32), numpy ``round`` (half to even), cast to
    uint8. So 0.5/255 -> 0 and 1.5/255 -> 2.
    """
    if not isinstance(tensor, torch.Tensor):
        raise CkaLabError(f"to_uint8 expects a torch tensor, got {type(tensor).__name__}")
    t = tensor.detach()
    if t.dim() == 4:
        if t.shape[0] != 1:
            raise CkaLabError(f"to_uint8 takes one image, got a batch of {t.shape[0]} (index it first)")
        t = t[0]
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() != 3:
        raise CkaLabError(f"expected an image tensor (1, C, H, W) or (C, H, W), got shape {tuple(tensor.shape)}")
    chw = t.float().clamp(0, 1).cpu().numpy()
    hwc = np.transpose(chw, (1, 2, 0)) * np.float32(255.0)
    return np.ascontiguousarray(hwc.round().astype(np.uint8))


def write_image(path: str | Path, image: torch.Tensor | np.ndarray, *, jpeg_quality: int = 95) -> Path:
    """Write an image; the format follows the suffix (.png, .tif/.tiff, .jpg/.jpeg, .bmp).

    ``image`` is a float tensor ``(1, C, H, W)`` / ``(C, H, W)`` in [0, 1] (converted with
    :func:`to_uint8`, i.e. clamped and rounded half to even) or a uint8 array ``(H, W, C)`` / ``(H, W)``,
    RGB. C is 1 or 3. Parent folders are created. Returns the path. PNG/TIF/BMP are lossless, so a
    uint8 image read back with :func:`read_uint8` is identical.
    """
    path = Path(path)
    fmt = _PIL_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise CkaLabError(
            f"cannot write {path}: unknown image suffix {path.suffix!r}; use one of {', '.join(_PIL_FORMATS)}"
        )
    if isinstance(image, torch.Tensor):
        arr = to_uint8(image)
    elif isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise CkaLabError(
                f"write_image takes uint8 arrays or float tensors in [0, 1], got an array of dtype {image.dtype}"
            )
        arr = image if image.ndim == 3 else image[:, :, None]
    else:
        raise CkaLabError(f"write_image takes a tensor or a uint8 array, got {type(image).__name__}")
    if arr.ndim != 3 or arr.shape[2] not in (1, 3):
        raise CkaLabError(f"write_image needs 1 or 3 channels, got array shape {arr.shape}")
    pil = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
    kwargs = {"quality": int(jpeg_quality)} if fmt == "JPEG" else {}
    with atomic_write(path, "wb") as f:  # temp file beside path, fsync, rename: never a half-written image
        pil.save(f, format=fmt, **kwargs)
    return path


def rgb_to_y(img: ArrayOrTensor) -> ArrayOrTensor:
    """Luma Y of the official ``bgr2ycbcr(only_y=True)``: ``(65.481 R + 128.553 G + 24.966 B) / 255 + 16``.

    * numpy ``(H, W, 3)`` RGB, uint8 or float on the 0..255 scale -> float64 ``(H, W)`` on 0..255
      (16..235 for in-range input). No rounding, as in the official metric code.
    * torch ``(N, 3, H, W)`` RGB in [0, 1] -> ``(N, 1, H, W)`` in [0, 1] (the same formula divided by
      255), in the tensor's dtype.
    """
    if isinstance(img, torch.Tensor):
        if img.dim() != 4 or img.shape[1] != 3:
            raise CkaLabError(f"rgb_to_y expects a tensor (N, 3, H, W), got shape {tuple(img.shape)}")
        w = torch.as_tensor(_Y_WEIGHTS_RGB / 255.0, dtype=img.dtype, device=img.device).view(1, 3, 1, 1)
        return (img * w).sum(dim=1, keepdim=True) + 16.0 / 255.0
    arr = np.asarray(img)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise CkaLabError(f"rgb_to_y expects an RGB array (H, W, 3), got shape {arr.shape}")
    return arr[:, :, ::-1].astype(np.float64) @ _Y_WEIGHTS_BGR / 255.0 + 16.0


def modcrop(img: ArrayOrTensor, scale: int) -> ArrayOrTensor:
    """Crop the bottom/right so that height and width are multiples of ``scale`` (top-left anchored).

    numpy arrays are ``(H, W)`` or ``(H, W, C)``; tensors are ``(..., H, W)``. This is how the
    official ``HR/x{s}`` files were made from the originals.
    """
    s = int(scale)
    if s < 1:
        raise CkaLabError(f"modcrop scale must be a positive integer, got {scale!r}")
    if isinstance(img, torch.Tensor):
        h, w = img.shape[-2:]
        return img[..., : h - h % s, : w - w % s]
    if img.ndim not in (2, 3):
        raise CkaLabError(f"modcrop expects an array (H, W) or (H, W, C), got shape {img.shape}")
    h, w = img.shape[:2]
    return img[: h - h % s, : w - w % s]


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside ``folder`` (suffixes in :data:`IMAGE_EXTENSIONS`), sorted by name.

    Sorting by file name is the official pairing rule (``babyx2.png`` <-> ``baby.png``). Hidden files
    are skipped. Raises :class:`CkaLabError` if the folder is missing or holds no image.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CkaLabError(f"image folder not found: {folder} (check the path)")
    files = sorted(
        (p for p in folder.iterdir()
         if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS),
        key=lambda p: p.name,
    )
    if not files:
        raise CkaLabError(
            f"no images in {folder}; expected files ending in {', '.join(IMAGE_EXTENSIONS)}"
        )
    return files


def image_size(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` of an image file, read from its header only."""
    path = Path(path)
    if not path.is_file():
        raise CkaLabError(f"image file not found: {path} (check the path)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _too_large(path, None) from None
    except (UnidentifiedImageError, OSError) as exc:
        raise CkaLabError(f"cannot read {path} as an image ({type(exc).__name__}); is it a PNG/TIF/JPG file?") from exc
    return h, w
