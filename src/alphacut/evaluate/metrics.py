"""Quality metrics for a predicted alpha against a ground-truth alpha (pure array work, no I/O).

Every function takes ``pred`` and ``gt``: float arrays in 0..1 of the same HxW shape, at the
image's original resolution, and returns a Python float.

* ``mae``: mean of ``|pred - gt|`` over all pixels.
* ``mse``: mean of ``(pred - gt)**2`` over all pixels.
* ``sad``: sum of ``|pred - gt|`` over all pixels (0..1 scale), divided by 1000.
* ``iou``: intersection over union of ``pred >= 0.5`` and ``gt >= 0.5``; 1.0 if both are empty.
* ``max_f_measure``: ``gt`` binarised at 0.5; ``pred`` quantised to 256 levels
  (``round(255 * pred)``) and binarised at each of the 256 thresholds ``t = 0..255``
  (positive where level >= t); F_beta = (1 + b2) P R / (b2 P + R) with b2 = 0.3 at each
  threshold; the maximum over thresholds. Per image (no min-max rescaling of ``pred``).
* ``band_mae``: MAE restricted to the band around the GT edge (see ``edge_band``).
* ``boundary_f_measure``: the boundary F-score of DAVIS (Perazzi et al. 2016), see there.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

METRIC_NAMES = ("iou", "mae", "max_f", "sad", "mse", "band_mae", "boundary_f")
BETA2 = 0.3


def _pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.ndim != 2 or pred.shape != gt.shape:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must be HxW of the same shape")
    return pred, gt


def mae(pred: np.ndarray, gt: np.ndarray) -> float:
    pred, gt = _pair(pred, gt)
    return float(np.mean(np.abs(pred - gt)))


def mse(pred: np.ndarray, gt: np.ndarray) -> float:
    pred, gt = _pair(pred, gt)
    return float(np.mean((pred - gt) ** 2))


def sad(pred: np.ndarray, gt: np.ndarray) -> float:
    """Sum of absolute differences of the 0..1 alphas, in thousands (the matting convention)."""
    pred, gt = _pair(pred, gt)
    return float(np.sum(np.abs(pred - gt)) / 1000.0)


def iou(pred: np.ndarray, gt: np.ndarray, threshold: float = 0.5) -> float:
    pred, gt = _pair(pred, gt)
    p, g = pred >= threshold, gt >= threshold
    union = int(np.count_nonzero(p | g))
    if union == 0:
        return 1.0
    return float(np.count_nonzero(p & g) / union)


def max_f_measure(pred: np.ndarray, gt: np.ndarray, beta2: float = BETA2) -> float:
    """Maximum F_beta over 256 thresholds, from two 256-bin histograms (no per-threshold pass)."""
    pred, gt = _pair(pred, gt)
    levels = np.clip(np.rint(pred * 255.0), 0, 255).astype(np.intp)
    g = gt >= 0.5
    fg_hist = np.bincount(levels[g], minlength=256)
    bg_hist = np.bincount(levels[~g], minlength=256)
    # tp[t] = foreground pixels with level >= t; likewise fp for background pixels.
    tp = np.cumsum(fg_hist[::-1])[::-1].astype(np.float64)
    fp = np.cumsum(bg_hist[::-1])[::-1].astype(np.float64)
    positives = float(np.count_nonzero(g))
    zeros = np.zeros(256)
    precision = np.divide(tp, tp + fp, out=zeros.copy(), where=(tp + fp) > 0)
    recall = tp / positives if positives else zeros.copy()
    denom = beta2 * precision + recall
    f = np.divide((1.0 + beta2) * precision * recall, denom, out=zeros.copy(), where=denom > 0)
    return float(f.max())


def _distance_to(target: np.ndarray) -> np.ndarray:
    """Exact Euclidean distance from every pixel to the nearest True pixel of ``target``."""
    return cv2.distanceTransform((~target).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


def band_radius(shape: tuple[int, ...]) -> int:
    """Default band radius: max(3, round(1% of the image diagonal)) pixels."""
    return max(3, round(0.01 * math.hypot(shape[0], shape[1])))


def edge_band(gt: np.ndarray, radius: int | None = None) -> np.ndarray:
    """Pixels within ``radius`` of the GT edge, on either side of it (boolean HxW).

    The GT is binarised at 0.5. A foreground pixel's distance is the Euclidean distance
    (pixel centre to pixel centre) to the nearest background pixel, and a background pixel's
    the distance to the nearest foreground pixel, so the pixels touching the edge on both sides
    have distance 1 (4-neighbours) or sqrt(2) (diagonal). The band is every pixel with
    distance <= ``radius``: about ``2 * radius`` pixels wide in all. ``radius`` defaults to
    ``band_radius``: max(3, round(1% of the diagonal)). The image border is not an edge. With
    no edge (GT all foreground or all background) the band is empty.
    """
    g = np.asarray(gt, dtype=np.float64) >= 0.5
    radius = band_radius(g.shape) if radius is None else radius
    if g.all() or not g.any():
        return np.zeros(g.shape, dtype=bool)
    dist = np.where(g, _distance_to(~g), _distance_to(g))
    return dist <= radius


def band_mae(pred: np.ndarray, gt: np.ndarray, radius: int | None = None) -> float:
    """Mean ``|pred - gt|`` over ``edge_band(gt, radius)``; NaN if the GT has no edge."""
    pred, gt = _pair(pred, gt)
    band = edge_band(gt, radius)
    if not band.any():
        return math.nan
    return float(np.mean(np.abs(pred[band] - gt[band])))


def boundary(mask: np.ndarray) -> np.ndarray:
    """Inner boundary of a boolean mask: True pixels with a False 4-neighbour.

    Pixels outside the image are not background (the frame is not a boundary).
    """
    m = np.pad(mask, 1, mode="edge")
    interior = m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    inner: np.ndarray = mask & ~interior
    return inner


def boundary_tolerance(shape: tuple[int, ...]) -> int:
    """DAVIS's tolerance: ceil(0.008 * diagonal) pixels (at least 1)."""
    return max(1, math.ceil(0.008 * math.hypot(shape[0], shape[1])))


def boundary_f_measure(pred: np.ndarray, gt: np.ndarray, tolerance: int | None = None) -> float:
    """Boundary F-score (DAVIS "F"): both alphas binarised at 0.5, boundaries per ``boundary``.

    Precision: fraction of predicted boundary pixels within ``tolerance`` (Euclidean) of a GT
    boundary pixel; recall: fraction of GT boundary pixels within ``tolerance`` of a predicted
    boundary pixel; F = 2PR / (P + R). 1.0 when neither has a boundary, 0.0 when only one has.
    ``tolerance`` defaults to ``boundary_tolerance``: ceil(0.8% of the diagonal).
    """
    pred, gt = _pair(pred, gt)
    tolerance = boundary_tolerance(gt.shape) if tolerance is None else tolerance
    pb, gb = boundary(pred >= 0.5), boundary(gt >= 0.5)
    if not pb.any() and not gb.any():
        return 1.0
    if not pb.any() or not gb.any():
        return 0.0
    precision = float(np.mean(_distance_to(gb)[pb] <= tolerance))
    recall = float(np.mean(_distance_to(pb)[gb] <= tolerance))
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def compute_metrics(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Every metric of ``METRIC_NAMES`` for one image."""
    pred, gt = _pair(pred, gt)
    return {
        "iou": iou(pred, gt),
        "mae": mae(pred, gt),
        "max_f": max_f_measure(pred, gt),
        "sad": sad(pred, gt),
        "mse": mse(pred, gt),
        "band_mae": band_mae(pred, gt),
        "boundary_f": boundary_f_measure(pred, gt),
    }
