"""Foreground colour estimation ("decontamination") for the cutout's soft edge.

A semi-transparent edge pixel of the photo is a mix ``I = a F + (1 - a) B`` of the subject's
colour F and the background's B. A cutout that keeps ``I`` as its colour carries the old
background into every new one (a green fringe around hair shot on grass). We estimate F with
the two-pass blur fusion of Forte & Pitié, "Approximate Fast Foreground Colour Estimation"
(ICIP 2021): box-filtered foreground and background means, then a per-pixel correction that
satisfies the compositing equation.

Cost: both passes only need local *means* of F and B, which are smooth, so they are computed
on a grid coarse enough that the narrow pass spans a few cells, and the final per-pixel
correction (which carries the photo's full detail) runs at full resolution on the soft pixels
alone. A 12 MP photo costs tens of milliseconds instead of seconds.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from alphacut.parallel import in_parts, parts_for
from alphacut.pipeline.filters import box_filter
from alphacut.pipeline.regions import nonzero_box

# Radii of the two passes as a share of the image diagonal (the paper's 90 and 6 pixels on
# its ~1-2 MP images), with floors so that thumbnails still average over a neighbourhood.
WIDE_RADIUS = 0.045
NARROW_RADIUS = 0.003
NARROW_CELLS = 3  # the coarse grid keeps at least this many cells in the narrow radius
WIDE_CELLS = 24  # and the wide pass runs on a grid with about this many cells in its radius
SOFT_LOW, SOFT_HIGH = 1, 254  # alpha (uint8) strictly between these is a soft edge pixel
SOFT_PIXEL_COST = 8  # see soft_edge_colours
_SOFT_LUT = ((np.arange(256) > SOFT_LOW) & (np.arange(256) < SOFT_HIGH)).astype(np.uint8)
_EPS = 1e-5


def _means(
    fg: np.ndarray, bg: np.ndarray, alpha: np.ndarray, radius: int, scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Alpha-weighted local means of F and (1 - alpha)-weighted means of B.

    With ``scale`` < 1 the box filters run on a grid that much coarser and come back
    bilinearly: the means are smooth, so little is lost.
    """
    a3 = alpha[..., None]
    stacks = [alpha, fg * a3, bg * (1.0 - a3)]
    if scale < 1.0:
        h, w = alpha.shape
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        small_radius = max(1, round(radius * scale))
        stacks = [
            cv2.resize(
                box_filter(cv2.resize(s, size, interpolation=cv2.INTER_AREA), small_radius),
                (w, h),
                interpolation=cv2.INTER_LINEAR,
            )
            for s in stacks
        ]
    else:
        stacks = [box_filter(s, radius) for s in stacks]
    mean_a, mean_fa, mean_bb = stacks
    mean_f = mean_fa / (mean_a[..., None] + _EPS)
    mean_b = mean_bb / (1.0 - mean_a[..., None] + _EPS)
    return mean_f, mean_b


def _correct(
    image: np.ndarray, alpha: np.ndarray, mean_f: np.ndarray, mean_b: np.ndarray
) -> np.ndarray:
    """F = mean_F + a (I - a mean_F - (1 - a) mean_B), clipped: the compositing equation."""
    a = alpha[..., None]
    fg: np.ndarray = mean_f + a * (image - a * mean_f - (1.0 - a) * mean_b)
    np.clip(fg, 0.0, 1.0, out=fg)
    return fg


def _sample(
    array: np.ndarray, ys: np.ndarray, xs: np.ndarray, scale_y: float, scale_x: float
) -> np.ndarray:
    """Bilinear samples of ``array`` (hxwxC) at full-resolution pixels (ys, xs): NxC."""
    count = ys.size
    # cv2.remap takes maps under 32767 wide: lay the N points out as rows of 4096.
    cols = 4096
    rows = -(-count // cols)
    map_x = np.zeros(rows * cols, np.float32)
    map_y = np.zeros(rows * cols, np.float32)
    map_x[:count] = (xs + 0.5) * scale_x - 0.5
    map_y[:count] = (ys + 0.5) * scale_y - 0.5
    sampled = cv2.remap(
        array,
        map_x.reshape(rows, cols),
        map_y.reshape(rows, cols),
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
    return sampled.reshape(rows * cols, -1)[:count]


def soft_edge_colours(image: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The subject's own colour under the soft pixels of ``alpha`` (uint8 HxW), sparse.

    Returns the flat indices of the pixels with ``1 < alpha < 254`` and their estimated
    colours (uint8 Nx3), or None when there are none. Opaque and fully transparent pixels
    keep the image's colour, so callers write these into whatever array holds the output
    (the RGBA cutout) instead of copying the whole photo first (36 MB on 12 MP). Only the box
    around the soft pixels (plus the filters' reach) is read.
    """
    if alpha.dtype != np.uint8 or image.shape != (*alpha.shape, 3):
        raise ValueError(
            f"need uint8 alpha HxW and image HxWx3, got {alpha.dtype} "
            f"{alpha.shape} and {image.shape}"
        )
    soft = cv2.LUT(alpha, _SOFT_LUT)
    height, width = alpha.shape
    diagonal = math.hypot(height, width)
    wide = max(4, round(WIDE_RADIUS * diagonal))
    narrow = max(1, round(NARROW_RADIUS * diagonal))
    region = nonzero_box(soft, margin=wide + narrow)
    if region is None:
        return None
    y0, x0 = region.top, region.left
    flat = np.flatnonzero(soft)
    ys, xs = np.divmod(flat, width)
    crop_h, crop_w = region.height, region.width
    # The coarse grid: both passes' means live here.
    scale = min(1.0, NARROW_CELLS / narrow)
    grid_w, grid_h = max(1, round(crop_w * scale)), max(1, round(crop_h * scale))
    crop = image[region.slices]
    crop_a = alpha[region.slices]
    if scale < 1.0:
        crop = cv2.resize(crop, (grid_w, grid_h), interpolation=cv2.INTER_AREA)
        crop_a = cv2.resize(crop_a, (grid_w, grid_h), interpolation=cv2.INTER_AREA)
    small = crop.astype(np.float32) * (1.0 / 255.0)
    small_a = crop_a.astype(np.float32) * (1.0 / 255.0)
    wide_small = max(1, round(wide * scale))
    mean_f, mean_b = _means(small, small, small_a, wide_small, min(1.0, WIDE_CELLS / wide_small))
    fg = _correct(small, small_a, mean_f, mean_b)
    mean_f, mean_b = _means(fg, mean_b, small_a, max(1, round(narrow * scale)))
    # The final correction at full resolution, on the soft pixels only.
    grid = np.concatenate([mean_f, mean_b], axis=-1)
    colours = np.empty((flat.size, 3), np.uint8)
    image_pixels = np.ascontiguousarray(image).reshape(-1, 3)  # a view for a PIL array
    alpha_pixels = alpha.ravel()

    def correct(first: int, stop: int) -> None:
        means = _sample(
            grid, ys[first:stop] - y0, xs[first:stop] - x0, grid_h / crop_h, grid_w / crop_w
        )
        pixel = image_pixels[flat[first:stop]].astype(np.float32) * (1.0 / 255.0)
        a = alpha_pixels[flat[first:stop]].astype(np.float32) * (1.0 / 255.0)
        colour = _correct(pixel, a, means[:, :3], means[:, 3:])
        colours[first:stop] = (colour * 255.0 + 0.5).astype(np.uint8)

    # A 12 MP photo can have a million soft pixels: spread them over the cores. Each soft
    # pixel costs about as much as eight pixels of the other full-resolution steps.
    in_parts(correct, flat.size, parts_for(flat.size * SOFT_PIXEL_COST))
    return flat, colours


def estimate_foreground(image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The photo with the soft pixels of ``alpha`` given the subject's own colour (uint8
    HxWx3); see ``soft_edge_colours``."""
    out = np.array(image, dtype=np.uint8, order="C")  # C order: the flat view below writes
    found = soft_edge_colours(image, alpha)
    if found is not None:
        out.reshape(-1, 3)[found[0]] = found[1]
    return out
