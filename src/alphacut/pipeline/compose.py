"""Turn an image and an alpha into the requested output array."""

from __future__ import annotations

import numpy as np


def cutout(rgb: np.ndarray, alpha: np.ndarray, foreground: np.ndarray | None = None) -> np.ndarray:
    """RGBA array: colour from ``foreground`` (decontaminated) if given, else the image."""
    colour = foreground if foreground is not None else rgb
    out = np.empty((*alpha.shape, 4), dtype=np.uint8)
    out[..., :3] = colour
    out[..., 3] = alpha
    return out


def invert(alpha: np.ndarray) -> np.ndarray:
    return 255 - alpha
