"""Alpha matting: refine the model's mask where it is uncertain (hair, fur, soft edges).

The trimap's unknown band is where the model itself is unsure (its probability between the two
thresholds), widened by an erosion of the sure regions that grows with the image (the user's
``erode_size`` is the minimum). The closed-form solver (Levin et al.) costs
time and memory with the number of unknown pixels, so it runs only on the box around the band,
at a bounded working resolution, and its answer is brought back to full size with the image
as guide (fast guided upsampling), so that edges land on the photo's edges, not on the
working grid. A solver that fails, diverges, or re-segments instead of refining (turns a large
part of the subject into background, or the reverse) is not trusted: that region keeps the
plain mask, and a log line says so.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from alphacut.pipeline.probability import probability_to_mask
from alphacut.pipeline.refine import guided_upsample_mask
from alphacut.pipeline.regions import nonzero_box

if TYPE_CHECKING:
    from scipy import sparse

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AlphaMattingParams:
    foreground_threshold: int = 240
    background_threshold: int = 20
    erode_size: int = 5
    max_side: int = 768  # working resolution of the solver (long side, pixels)
    max_unknown: int = 100_000  # unknown pixels the solver may see at once (time and memory)
    # Erosion kernel relative to the image diagonal: 0.008 is 8 px on an 800x600 photo and
    # 40 px on a 12 MP one, the same band in the subject's terms.
    erode_fraction: float = 0.008
    # A region of the unknown band whose solved alpha flips (across 0.5) more pixels than
    # this share of the whole subject is re-segmentation, not refinement: it keeps the mask.
    max_flip: float = 0.3
    max_iterations: int = 100  # conjugate-gradient cap: a bound on time, whatever the image


def erode_kernel_size(shape: tuple[int, int], params: AlphaMattingParams) -> int:
    """Side of the square erosion kernel at full resolution: grows with the diagonal."""
    diagonal = math.hypot(shape[0], shape[1])
    return max(params.erode_size, round(params.erode_fraction * diagonal))


def build_trimap(
    mask: np.ndarray, params: AlphaMattingParams, kernel_size: int | None = None
) -> np.ndarray:
    """0 = background, 255 = foreground, 128 = unknown.

    Sure regions are the mask above / below the thresholds, eroded by a square kernel of
    ``kernel_size`` (default ``erode_kernel_size``), so the unknown band covers the model's
    uncertain pixels plus a margin on both sides.
    """
    size = erode_kernel_size(mask.shape, params) if kernel_size is None else kernel_size
    foreground: np.ndarray = (mask > params.foreground_threshold).astype(np.uint8)
    background: np.ndarray = (mask < params.background_threshold).astype(np.uint8)
    if size > 1:
        kernel = np.ones((size, size), np.uint8)
        foreground = cv2.erode(foreground, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
        background = cv2.erode(background, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    trimap = np.full(mask.shape, 128, dtype=np.uint8)
    trimap[foreground == 1] = 255
    trimap[background == 1] = 0
    return trimap


def conjugate_gradient(
    matrix: sparse.csr_matrix,
    rhs: np.ndarray,
    x0: np.ndarray,
    max_iterations: int,
    rtol: float = 1e-4,
) -> np.ndarray:
    """Jacobi-preconditioned conjugate gradient that returns its iterate after
    ``max_iterations`` instead of raising (pymatting's ``cg`` raises). The cap is the time
    bound; started from the model's mask it is as good as a converged solve (docs/quality.md)."""
    # float32 halves the memory traffic of every iteration; a capped solve needs no more.
    matrix = matrix.astype(np.float32)
    inv_diag = (1.0 / np.maximum(matrix.diagonal(), 1e-12)).astype(np.float32)
    x = x0.astype(np.float32)
    r = rhs.astype(np.float32) - matrix @ x
    z = inv_diag * r
    p = z.copy()
    rz = float(r @ z)
    stop = (rtol * float(np.linalg.norm(rhs))) ** 2
    for _ in range(max_iterations):
        if float(r @ r) <= stop or rz <= 0.0:
            break
        ap = matrix @ p
        step = rz / float(p @ ap)
        x += step * p
        r -= step * ap
        np.multiply(inv_diag, r, out=z)
        rz_next = float(r @ z)
        p *= rz_next / rz
        p += z
        rz = rz_next
    return x


def solve_alpha(
    image: np.ndarray, trimap: np.ndarray, initial: np.ndarray, max_iterations: int = 100
) -> np.ndarray:
    """Closed-form matting of ``image`` (HxWx3 uint8) on ``trimap``; float32 alpha 0..1.

    The matting Laplacian (Levin et al.) is built for the windows that touch an unknown
    pixel (pipeline/laplacian.py); the system is solved for the unknown pixels only,
    starting from ``initial`` (the model's soft mask).
    """
    # Imported here: scipy costs every process ~0.1 s to import, and only matting uses it.
    from alphacut.pipeline.laplacian import unknown_system

    known_fg = (trimap == 255).ravel()
    unknown = (trimap == 128).ravel()
    lap_unknown, rhs = unknown_system(image.astype(np.float64) / 255.0, trimap)
    x0 = initial.ravel()[unknown].astype(np.float64)
    alpha = known_fg.astype(np.float64)
    alpha[unknown] = conjugate_gradient(lap_unknown, rhs, x0, max_iterations)
    solved: np.ndarray = np.clip(alpha, 0.0, 1.0).reshape(trimap.shape).astype(np.float32)
    return solved


def reject_resegmentation(
    alpha: np.ndarray, prior: np.ndarray, trimap: np.ndarray, max_flip: float
) -> tuple[np.ndarray, np.ndarray | None]:
    """Put ``prior`` back in every unknown region where ``alpha`` re-segments the subject.

    A connected region of the unknown band is rejected when the pixels whose side of 0.5 the
    solver changed outnumber ``max_flip`` times the whole subject (prior >= 0.5): matting
    should move edges, not delete a plant against a busy background. Returns the checked
    alpha and the boolean map of rejected pixels (None when none was rejected).
    """
    flipped = ((alpha >= 0.5) != (prior >= 0.5)) & (trimap == 128)
    limit = max_flip * max(1, int(np.count_nonzero(prior >= 0.5)))
    if np.count_nonzero(flipped) <= limit:
        return alpha, None
    count, labels = cv2.connectedComponents((trimap == 128).astype(np.uint8), connectivity=8)
    flips_per_region = np.bincount(labels[flipped], minlength=count)
    bad = np.flatnonzero(flips_per_region > limit)
    if bad.size == 0:
        return alpha, None
    revert = np.isin(labels, bad)
    return np.where(revert, prior, alpha), revert


def alpha_matting(image: np.ndarray, mask: np.ndarray, params: AlphaMattingParams) -> np.ndarray:
    """Refined uint8 alpha for ``image`` (HxWx3 uint8) given the model's ``mask`` (HxW uint8)."""
    started = time.perf_counter()
    kernel = erode_kernel_size(mask.shape, params)
    fg_t, bg_t = params.foreground_threshold, params.background_threshold
    # Lookup tables: one pass over a 12 MP mask each, where comparisons make temporaries.
    levels = np.arange(256)
    unsure = cv2.LUT(mask, ((levels >= bg_t) & (levels <= fg_t)).astype(np.uint8))
    # Outside the unknown band the answer is the sure value, exactly as in rembg's trimap.
    out = cv2.LUT(
        mask, np.where(levels > fg_t, 255, np.where(levels < bg_t, 0, levels)).astype(np.uint8)
    )
    region = nonzero_box(unsure, margin=kernel + 2)
    if region is None:
        return out
    crop_img, crop_mask = image[region.slices], mask[region.slices]
    h, w = crop_mask.shape
    scale = min(1.0, params.max_side / max(h, w))
    small_mask = _resize(crop_mask, scale, cv2.INTER_AREA)
    small_kernel = max(1, round(kernel * scale))
    trimap = build_trimap(small_mask, params, small_kernel)
    unknown = int(np.count_nonzero(trimap == 128))
    if unknown > params.max_unknown:  # a bigger band: a coarser grid, same time budget
        scale *= math.sqrt(params.max_unknown / unknown)
        small_mask = _resize(crop_mask, scale, cv2.INTER_AREA)
        small_kernel = max(1, round(kernel * scale))
        trimap = build_trimap(small_mask, params, small_kernel)
    small_img = _resize(crop_img, scale, cv2.INTER_AREA)
    prior = small_mask.astype(np.float32) * (1.0 / 255.0)
    try:
        alpha = solve_alpha(small_img, trimap, prior, params.max_iterations)
    except Exception:  # numerics on odd inputs: the plain mask is a safe answer
        log.warning("alpha matting failed; keeping the plain mask", exc_info=True)
        return mask
    if not np.isfinite(alpha).all():
        log.warning("alpha matting diverged; keeping the plain mask")
        return mask
    alpha, revert = reject_resegmentation(alpha, prior, trimap, params.max_flip)
    if revert is not None:
        log.warning(
            "alpha matting re-segmented part of a %dx%d image; that region keeps the plain mask",
            mask.shape[1],
            mask.shape[0],
        )
    if scale < 1.0:
        # Edge-aware return to full size: the fine structure follows the photo.
        refined = guided_upsample_mask(crop_img, alpha)
        trimap = cv2.resize(trimap, (w, h), interpolation=cv2.INTER_NEAREST)
        if revert is not None:
            revert = (
                cv2.resize(revert.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
            )
    else:
        refined = probability_to_mask(alpha)
    band = (trimap == 128) | (unsure[region.slices] > 0)
    out_crop = out[region.slices]
    if revert is not None:
        np.copyto(out_crop, crop_mask, where=revert)
        band &= ~revert
    np.copyto(out_crop, refined, where=band)
    log.debug(
        "alpha matting: %dx%d box at scale %.2f, %d unknown, %.2f s",
        w,
        h,
        scale,
        unknown,
        time.perf_counter() - started,
    )
    return out


def _resize(array: np.ndarray, scale: float, interpolation: int) -> np.ndarray:
    if scale >= 1.0:
        return array
    h, w = array.shape[:2]
    return cv2.resize(
        array, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=interpolation
    )
