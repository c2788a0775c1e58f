"""Alpha matting: refine the model's mask where it is uncertain (hair, fur, soft edges).

The closed-form solver's cost grows with the number of pixels, so we solve on the bounding box
of the unknown band only, at a bounded working resolution, and bring the result back to full
size. If the solver fails, the caller gets the plain mask and a log line, never a hang.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AlphaMattingParams:
    foreground_threshold: int = 240
    background_threshold: int = 20
    erode_size: int = 5
    max_side: int = 1024  # working resolution of the solver (long side, pixels)
    max_unknown: int = 400_000  # unknown pixels the solver may see at once


def build_trimap(mask: np.ndarray, params: AlphaMattingParams) -> np.ndarray:
    """0 = background, 255 = foreground, 128 = unknown; both sure regions eroded (rembg's way)."""
    foreground = (mask > params.foreground_threshold).astype(np.uint8)
    background = (mask < params.background_threshold).astype(np.uint8)
    if params.erode_size > 0:
        kernel = np.ones((params.erode_size, params.erode_size), np.uint8)
        foreground = cv2.erode(foreground, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
        background = cv2.erode(background, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    trimap = np.full(mask.shape, 128, dtype=np.uint8)
    trimap[foreground == 1] = 255
    trimap[background == 1] = 0
    return trimap


def _unknown_box(trimap: np.ndarray, margin: int) -> tuple[int, int, int, int] | None:
    ys, xs = np.nonzero(trimap == 128)
    if ys.size == 0:
        return None
    h, w = trimap.shape
    return (
        max(0, int(ys.min()) - margin),
        min(h, int(ys.max()) + margin + 1),
        max(0, int(xs.min()) - margin),
        min(w, int(xs.max()) + margin + 1),
    )


def _solve_alpha(image: np.ndarray, trimap: np.ndarray) -> np.ndarray:
    from pymatting import estimate_alpha_cf  # heavy import (numba); only when matting

    return estimate_alpha_cf(
        image.astype(np.float64) / 255.0, trimap.astype(np.float64) / 255.0
    ).astype(np.float32)


def alpha_matting(image: np.ndarray, mask: np.ndarray, params: AlphaMattingParams) -> np.ndarray:
    """Refined uint8 alpha for ``image`` (HxWx3 uint8) given the model's ``mask`` (HxW uint8)."""
    trimap = build_trimap(mask, params)
    box = _unknown_box(trimap, margin=max(8, params.erode_size * 2))
    if box is None:
        return mask
    y0, y1, x0, x1 = box
    crop_img, crop_tri = image[y0:y1, x0:x1], trimap[y0:y1, x0:x1]
    h, w = crop_tri.shape
    scale = min(1.0, params.max_side / max(h, w))
    unknown = int((crop_tri == 128).sum()) * scale * scale
    if unknown > params.max_unknown:
        scale *= (params.max_unknown / unknown) ** 0.5
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        small_img = cv2.resize(crop_img, size, interpolation=cv2.INTER_AREA)
        small_tri = cv2.resize(crop_tri, size, interpolation=cv2.INTER_NEAREST)
    else:
        small_img, small_tri = crop_img, crop_tri
    try:
        alpha = _solve_alpha(small_img, small_tri)
    except Exception:  # the solver is third-party numerics; the plain mask is a safe answer
        log.warning("alpha matting failed; returning the plain mask", exc_info=True)
        return mask
    if not np.isfinite(alpha).all():
        log.warning("alpha matting diverged; returning the plain mask")
        return mask
    if scale < 1.0:
        alpha = cv2.resize(alpha, (w, h), interpolation=cv2.INTER_LINEAR)
    refined = np.clip(alpha * 255.0 + 0.5, 0, 255).astype(np.uint8)
    # Keep the sure regions exactly; only the unknown band takes the solver's answer.
    refined = np.where(crop_tri == 128, refined, crop_tri)
    out = trimap.copy()
    out[y0:y1, x0:x1] = refined
    return out
