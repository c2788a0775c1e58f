"""Mask clean-up: the binary, smooth-edged mask that ``post_process_mask`` promises.

Every step is sized relative to the subject, so the same call works on thumbnails and 12 MP
photos, and every step was kept only if it did not lower IoU on any evaluation subset (horse,
davis, am, sod; see the README's Quality section). What that ruled out: a morphological
opening (erases hair and legs), dropping every island under 1% of the subject (hair strands
and detached parts are islands too), and filling every small hole (the gap between a horse's
legs is a hole the model is sure about).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

# Islands: smaller than this share of the largest part AND this far (share of the image
# diagonal) from every large part. A speck next to the subject is usually a hair strand or a
# detached paw; a speck across the frame is noise.
ISLAND_FRACTION = 0.05
ISLAND_DISTANCE = 0.05
# Holes: background regions smaller than this share of the largest background region that
# the model was never sure about (every pixel's mask value above HOLE_SURE_BACKGROUND).
HOLE_FRACTION = 0.01
HOLE_SURE_BACKGROUND = 31


def _components(binary: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    areas = stats[:, cv2.CC_STAT_AREA].copy()
    areas[0] = 0  # label 0 is the other class
    return count, labels, areas


def remove_far_islands(
    binary: np.ndarray, fraction: float = ISLAND_FRACTION, distance: float = ISLAND_DISTANCE
) -> np.ndarray:
    """Drop small foreground parts that lie far from every large part (binary uint8 0/1)."""
    count, labels, areas = _components(binary)
    if count <= 2:
        return binary
    large = areas >= areas.max() * fraction
    large[0] = False
    small = ~large
    small[0] = False
    if not small.any():
        return binary
    core = large[labels]
    reach = cv2.distanceTransform((~core).astype(np.uint8), cv2.DIST_L2, 3)
    nearest = np.full(count, np.inf)
    np.minimum.at(nearest, labels.ravel(), reach.ravel())
    drop = small & (nearest > distance * math.hypot(*binary.shape))
    keep = np.ones(count, np.uint8)
    keep[0] = 0
    keep[drop] = 0
    kept: np.ndarray = keep[labels]
    return kept


def fill_unsure_holes(
    binary: np.ndarray,
    mask: np.ndarray,
    fraction: float = HOLE_FRACTION,
    sure_background: int = HOLE_SURE_BACKGROUND,
) -> np.ndarray:
    """Fill small background regions where no pixel was sure background (``mask`` uint8)."""
    count, labels, areas = _components(1 - binary)
    if count <= 2:
        return binary
    lowest = np.full(count, 255, np.int32)
    np.minimum.at(lowest, labels.ravel(), mask.ravel())
    fill = (areas < areas.max() * fraction) & (lowest > sure_background)
    fill[0] = False
    if not fill.any():
        return binary
    return np.where(fill[labels], np.uint8(1), binary)


def post_process_mask(mask: np.ndarray) -> np.ndarray:
    """Binarise at 0.5, drop far islands, fill unsure holes, smooth the edge, re-threshold.

    ``mask`` is uint8 0..255; the result is uint8 with only 0 and 255.
    """
    binary = (mask > 127).astype(np.uint8)
    if binary.any():
        binary = remove_far_islands(binary)
        binary = fill_unsure_holes(binary, mask)
    sigma = max(1.0, min(mask.shape) / 500.0)
    smooth = cv2.GaussianBlur(binary.astype(np.float32), (0, 0), sigmaX=sigma)
    return np.where(smooth >= 0.5, 255, 0).astype(np.uint8)
