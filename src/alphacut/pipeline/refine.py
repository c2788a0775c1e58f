"""Edge-aware filtering: the guided filter (He et al.) and its fast, subsampled variant.

OpenCV's headless wheels have no ``ximgproc``, so the filter is written here with box filters
(``cv2.boxFilter``), which cost the same whatever the radius. Everything is float32.
"""

from __future__ import annotations

import cv2
import numpy as np


def box(array: np.ndarray, radius: int) -> np.ndarray:
    """Mean over a (2r+1)² window; the border is reflected, so edges are not darkened."""
    size = 2 * radius + 1
    return cv2.boxFilter(array, -1, (size, size), normalize=True,
                         borderType=cv2.BORDER_REFLECT)


def _coefficients(guide: np.ndarray, src: np.ndarray, radius: int,
                  eps: float) -> tuple[np.ndarray, np.ndarray]:
    """The local linear model ``q = a . I + b`` (a: HxWxC, b: HxW), box-averaged."""
    mean_p = box(src, radius)
    if guide.ndim == 2:
        mean_i = box(guide, radius)
        cov = box(guide * src, radius) - mean_i * mean_p
        var = box(guide * guide, radius) - mean_i * mean_i
        a = cov / (var + eps)
        b = mean_p - a * mean_i
        return box(a, radius)[..., None], box(b, radius)
    mean_i = box(guide, radius)  # HxWx3
    cov = box(guide * src[..., None], radius) - mean_i * mean_p[..., None]
    # Per-pixel 3x3 covariance of the guide, regularised, inverted in closed form: a colour
    # guide separates edges a grey one would merge (red fur on green grass).
    sigma = np.empty((*src.shape, 3, 3), np.float32)
    for i in range(3):
        for j in range(i, 3):
            v = box(guide[..., i] * guide[..., j], radius) - mean_i[..., i] * mean_i[..., j]
            sigma[..., i, j] = v
            sigma[..., j, i] = v
    sigma[..., [0, 1, 2], [0, 1, 2]] += eps
    a = np.linalg.solve(sigma, cov[..., None])[..., 0]
    b = mean_p - np.einsum("...c,...c->...", a, mean_i)
    return box(a, radius), box(b, radius)


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
        return a[..., 0] * guide + b
    return np.einsum("...c,...c->...", a, guide) + b


def fast_guided_upsample(guide: np.ndarray, src: np.ndarray, radius: int, eps: float
                         ) -> np.ndarray:
    """Guided filter of a low-resolution ``src`` to the size of the full-resolution ``guide``.

    The linear coefficients are fitted at ``src``'s resolution against a downscaled guide and
    upsampled bilinearly (the fast guided filter, He & Sun 2015): cost at full resolution is
    one bilinear resize and a dot product, yet edges follow the full-resolution guide.
    ``radius`` is in ``src`` pixels. ``guide`` is uint8 or 0..1 float.
    """
    height, width = guide.shape[:2]
    small_h, small_w = src.shape
    scale = 1.0 / 255.0 if guide.dtype == np.uint8 else 1.0
    small_guide = cv2.resize(guide, (small_w, small_h), interpolation=cv2.INTER_AREA)
    small_guide = small_guide.astype(np.float32) * scale
    a, b = _coefficients(small_guide, np.asarray(src, np.float32), radius, eps)
    a = cv2.resize(a, (width, height), interpolation=cv2.INTER_LINEAR)
    b = cv2.resize(b, (width, height), interpolation=cv2.INTER_LINEAR)
    if a.ndim == 2:
        a = a[..., None]
    return _apply(a, b, guide.astype(np.float32) * scale)
