"""Local-mean filtering shared by the guided filter and decontamination."""

from __future__ import annotations

import cv2
import numpy as np


def box_filter(array: np.ndarray, radius: int) -> np.ndarray:
    """Mean over a (2r+1)² window; the border is reflected, so edges are not darkened."""
    size = 2 * radius + 1
    return cv2.boxFilter(array, -1, (size, size), normalize=True, borderType=cv2.BORDER_REFLECT)
