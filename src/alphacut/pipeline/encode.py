"""Encode output arrays to bytes (PNG by default)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def encode_png(array: np.ndarray, compress_level: int = 1) -> bytes:
    """PNG bytes of an HxW (grayscale) or HxWx3/4 uint8 array.

    Level 1 is several times faster than zlib's default 6 on large cutouts for a file that is
    only modestly larger; the level is configurable (``ALPHACUT_PNG_COMPRESS_LEVEL``).
    """
    image = Image.fromarray(array)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()
