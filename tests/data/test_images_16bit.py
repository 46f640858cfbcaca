"""16-bit images, colour and grey, are read one way: each sample's high byte (``v // 256``)."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from cka_lab.data.images import read_uint8
from cka_lab.errors import CkaLabError


def _png16(path, arr: np.ndarray) -> None:
    """A 16-bit PNG written by hand (Pillow cannot write 16-bit RGB): grey (H, W) or RGB (H, W, 3)."""
    h, w = arr.shape[:2]
    color_type = 2 if arr.ndim == 3 else 0
    raw = b"".join(b"\x00" + arr[i].astype(">u2").tobytes() for i in range(h))

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


VALUES = np.array([[0, 255, 256, 300], [511, 32768, 65279, 65535]], dtype=np.uint16)


def test_16_bit_grey_and_rgb_keep_the_high_byte(tmp_path):
    _png16(tmp_path / "g.png", VALUES)
    rgb = np.stack([VALUES, VALUES[::-1], VALUES[:, ::-1]], axis=2)
    _png16(tmp_path / "c.png", rgb)
    grey = read_uint8(tmp_path / "g.png", channels=None)
    colour = read_uint8(tmp_path / "c.png")
    assert grey.dtype == colour.dtype == np.uint8
    np.testing.assert_array_equal(grey[:, :, 0], VALUES // 256)
    np.testing.assert_array_equal(colour, rgb // 256)
    np.testing.assert_array_equal(read_uint8(tmp_path / "g.png"), np.repeat(grey, 3, axis=2))  # grey -> 3 channels


def test_a_32_bit_float_image_is_refused_in_one_line(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((4, 4), np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(CkaLabError, match="only 8- and 16-bit"):
        read_uint8(tmp_path / "f.tif")
