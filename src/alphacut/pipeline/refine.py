"""Edge-aware filtering: the guided filter (He et al.) and its fast, subsampled variant.

OpenCV's headless wheels have no ``ximgproc``, so the filter is written here with box filters
(``cv2.boxFilter``), which cost the same whatever the radius. The arithmetic is float32; the
upsampled result is a uint8 alpha.
"""

from __future__ import annotations

import cv2
import numpy as np

from alphacut.parallel import in_parts, parts_for, parts_for_this_machine
from alphacut.pipeline.filters import box_filter
from alphacut.pipeline.probability import probability_to_mask, upsample_probability


def _coefficients(
    guide: np.ndarray, src: np.ndarray, radius: int, eps: float
) -> tuple[np.ndarray, np.ndarray]:
    """The local linear model ``q = a . I + b`` (a: HxWxC, b: HxW), box-averaged."""
    mean_p = box_filter(src, radius)
    if guide.ndim == 2:
        mean_i = box_filter(guide, radius)
        cov = box_filter(guide * src, radius) - mean_i * mean_p
        var = box_filter(guide * guide, radius) - mean_i * mean_i
        a = cov / (var + eps)
        b = mean_p - a * mean_i
        return box_filter(a, radius)[..., None], box_filter(b, radius)
    mean_i = box_filter(guide, radius)  # HxWx3
    cov = box_filter(guide * src[..., None], radius) - mean_i * mean_p[..., None]

    def variance(i: int, j: int) -> np.ndarray:
        covariance: np.ndarray = box_filter(guide[..., i] * guide[..., j], radius)
        covariance -= mean_i[..., i] * mean_i[..., j]
        return covariance

    # Per-pixel 3x3 covariance of the guide, regularised and inverted in closed form
    # (cofactors; np.linalg.solve is several times slower): a colour guide separates edges a
    # grey one would merge (red fur on green grass).
    rr, rg, rb = variance(0, 0) + eps, variance(0, 1), variance(0, 2)
    gg, gb, bb = variance(1, 1) + eps, variance(1, 2), variance(2, 2) + eps
    inv_rr, inv_rg, inv_rb = gg * bb - gb * gb, gb * rb - rg * bb, rg * gb - gg * rb
    inv_gg, inv_gb, inv_bb = rr * bb - rb * rb, rb * rg - rr * gb, rr * gg - rg * rg
    det = rr * inv_rr + rg * inv_rg + rb * inv_rb
    c0, c1, c2 = cov[..., 0], cov[..., 1], cov[..., 2]
    a = (
        np.stack(
            [
                inv_rr * c0 + inv_rg * c1 + inv_rb * c2,
                inv_rg * c0 + inv_gg * c1 + inv_gb * c2,
                inv_rb * c0 + inv_gb * c1 + inv_bb * c2,
            ],
            axis=-1,
        )
        / det[..., None]
    )
    b = mean_p - np.einsum("...c,...c->...", a, mean_i)
    return box_filter(a, radius), box_filter(b, radius)


# Rows of the map per band when fitting the coefficients: a band's dozen temporaries then stay
# in the CPU's cache and the allocator's reused memory (1024^2 map, 2 cores: 0.09-0.13 s whole,
# 0.05 s in bands, 0.04 s in bands on two threads).
COEFFICIENT_BAND_ROWS = 64
# |a| under this moves the answer by under 0.1 of a grey level: such cells count as flat.
STEEP = 1e-4


def _coefficient_map(
    guide: np.ndarray, src: np.ndarray, radius: int, eps: float
) -> tuple[np.ndarray, np.ndarray]:
    """``_coefficients`` as one HxWx(C+1) array (a's channels, then b: one remap serves both)
    and the cells where some |a| exceeds STEEP, computed band by band over the cores.

    Each band is fitted with ``2 * radius`` rows of context on either side (its two rounds of
    box filters each reach ``radius`` rows) and only its own rows are kept, so the result is
    that of one call on the whole map up to float rounding (box filters keep running sums that
    start at a band's top; identical on the maps tried). The bands do not depend on the number
    of cores: a map gives the same coefficients on every machine.
    """
    height, width = src.shape
    channels = guide.shape[2] if guide.ndim == 3 else 1
    coeffs = np.empty((height, width, channels + 1), np.float32)
    steep = np.empty((height, width), bool)
    context = 2 * radius

    def fit_bands(first: int, stop: int) -> None:
        rows = COEFFICIENT_BAND_ROWS
        for top in range(first * rows, min(height, stop * rows), rows):
            bottom = min(height, top + rows)
            start, end = max(0, top - context), min(height, bottom + context)
            a, b = _coefficients(guide[start:end], src[start:end], radius, eps)
            a, b = a[top - start : bottom - start], b[top - start : bottom - start]
            coeffs[top:bottom, :, :channels] = a
            coeffs[top:bottom, :, channels] = b
            # Channel by channel: numpy's max over a last axis of 3 is several times slower.
            band_steep = np.abs(a[..., 0]) > STEEP
            for c in range(1, channels):
                band_steep |= np.abs(a[..., c]) > STEEP
            steep[top:bottom] = band_steep

    # Always over the cores: the map has the model's input size (~1M cells for ISNet), tens of
    # milliseconds of work whatever the photo's size.
    in_parts(fit_bands, -(-height // COEFFICIENT_BAND_ROWS), parts_for_this_machine())
    return coeffs, steep


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """Edge-preserving smoothing of ``src`` (HxW) steered by ``guide`` (HxW or HxWx3, 0..1).

    Where the guide is flat the output is the local mean of ``src``; across the guide's edges
    ``src`` follows them. ``eps`` (in guide units squared) sets which edges count.
    """
    guide = np.asarray(guide, np.float32)
    src = np.asarray(src, np.float32)
    a, b = _coefficients(guide, src, radius, eps)
    return _apply(a, b, guide)


def _apply(a: np.ndarray, b: np.ndarray, guide: np.ndarray) -> np.ndarray:
    if guide.ndim == 2:
        flat: np.ndarray = a[..., 0] * guide + b
        return flat
    coloured: np.ndarray = np.einsum("...c,...c->...", a, guide) + b
    return coloured


def _resize_region(
    array: np.ndarray, width: int, height: int, rows: tuple[int, int], cols: tuple[int, int]
) -> np.ndarray:
    """``cv2.resize(array, (width, height), INTER_LINEAR)[top:bottom, left:right]``.

    cv2.resize has no region of interest; remap with the same pixel-centre mapping gives the
    same values, so a large output can be produced a tile at a time.
    """
    src_h, src_w = array.shape[:2]
    xs = (np.arange(*cols, dtype=np.float32) + 0.5) * (src_w / width) - 0.5
    ys = (np.arange(*rows, dtype=np.float32) + 0.5) * (src_h / height) - 0.5
    map_x = np.ascontiguousarray(np.broadcast_to(xs, (ys.size, xs.size)))
    map_y = np.ascontiguousarray(np.broadcast_to(ys[:, None], (ys.size, xs.size)))
    return cv2.remap(array, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def guided_upsample_mask(
    guide: np.ndarray, src: np.ndarray, radius: int = 1, eps: float = 1e-4, tile: int = 256
) -> np.ndarray:
    """Guided filter of a low-resolution ``src`` (0..1) to the size of the full-resolution
    ``guide``, as a uint8 alpha (HxW, 0..255).

    The linear coefficients ``q = a . I + b`` are fitted at ``src``'s resolution against a
    downscaled guide and upsampled bilinearly (the fast guided filter, He & Sun 2015): edges
    follow the full-resolution guide at the cost of a bilinear resize. Where ``src`` is flat
    (most of a photo: sure subject, sure background) ``a`` is zero and the answer is the
    resized ``b``, so the per-pixel dot product runs only on the tiles that hold an edge, and
    everything else is a uint8 resize: no full-size float map is ever made. ``radius`` is in
    ``src`` pixels; ``guide`` is uint8 RGB (or grey).
    """
    height, width = guide.shape[:2]
    small_h, small_w = src.shape
    small_guide = cv2.resize(guide, (small_w, small_h), interpolation=cv2.INTER_AREA)
    small_guide = small_guide.astype(np.float32) * (1.0 / 255.0)
    coeffs, steep = _coefficient_map(small_guide, np.asarray(src, np.float32), radius, eps)
    channels = coeffs.shape[-1] - 1
    # Flat tiles (a = 0): the answer is the resized b. Resizing the quantised b instead of
    # quantising the resized float is exact where b is 0 or 1 (sure subject, sure background)
    # and within one level where it is fractional.
    flat = probability_to_mask(coeffs[..., channels])
    out = cv2.resize(flat, (width, height), interpolation=cv2.INTER_LINEAR)
    active = cv2.dilate(steep.astype(np.uint8), np.ones((3, 3)))
    sy, sx = small_h / height, small_w / width

    def tile_rows(first: int, stop: int) -> None:
        for top in range(first * tile, min(height, stop * tile), tile):
            bottom = min(height, top + tile)
            y0, y1 = int(top * sy), min(small_h, int(bottom * sy) + 2)
            for left in range(0, width, tile):
                right = min(width, left + tile)
                x0, x1 = int(left * sx), min(small_w, int(right * sx) + 2)
                if not active[y0:y1, x0:x1].any():
                    continue
                part = _resize_region(coeffs, width, height, (top, bottom), (left, right))
                pixels = guide[top:bottom, left:right].astype(np.float32) * (1.0 / 255.0)
                if pixels.ndim == 2:
                    pixels = pixels[..., None]
                value = part[..., channels].copy()
                for c in range(channels):
                    value += part[..., c] * pixels[..., c]
                out[top:bottom, left:right] = probability_to_mask(value)

    rows = -(-height // tile)
    in_parts(tile_rows, rows, parts_for(height * width))
    return out


def upsample_mask(prob: np.ndarray, image: np.ndarray, guided: bool = True) -> np.ndarray:
    """The model's probability map as a uint8 alpha at the size of ``image`` (uint8 HxWx3).

    When the photo is larger than the map (in either axis), plain bilinear upsampling blurs
    the edge over several photo pixels; the fast guided filter puts it on the photo's own edge
    instead (measured in docs/quality.md). When the photo is no larger, there is nothing to
    recover: bilinear.
    """
    height, width = image.shape[:2]
    if not guided or (height <= prob.shape[0] and width <= prob.shape[1]):
        return probability_to_mask(upsample_probability(prob, width, height))
    return guided_upsample_mask(image, prob, radius=1, eps=1e-4)
