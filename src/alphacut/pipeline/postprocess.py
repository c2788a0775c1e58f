"""Mask clean-up: the binary, smooth-edged mask that ``post_process_mask`` promises."""

from __future__ import annotations

import cv2
import numpy as np


def _remove_small_regions(binary: np.ndarray, min_fraction: float) -> np.ndarray:
    """Drop foreground islands smaller than ``min_fraction`` of the largest one."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if count <= 2:
        return binary
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.zeros(count, dtype=np.uint8)
    keep[1:] = (areas >= areas.max() * min_fraction).astype(np.uint8)
    return keep[labels]


def post_process_mask(mask: np.ndarray, island_fraction: float = 0.01) -> np.ndarray:
    """Opening, small-island removal, hole filling, Gaussian smoothing and re-threshold.

    ``mask`` is uint8 0..255; the result is uint8 with only 0 and 255. Islands and holes are
    sized relative to the subject, so the same call works on thumbnails and 12 MP photos.
    """
    binary = (mask > 127).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    binary = cv2.morphologyEx(binary, cv2.MORPH_OPEN, kernel)
    binary = _remove_small_regions(binary, island_fraction)
    # Holes are background islands: fill those much smaller than the subject.
    if binary.any():
        binary = 1 - _remove_small_regions(1 - binary, island_fraction)
    sigma = max(1.0, min(mask.shape) / 500.0)
    smooth = cv2.GaussianBlur(binary.astype(np.float32), (0, 0), sigmaX=sigma)
    return np.where(smooth >= 0.5, 255, 0).astype(np.uint8)
