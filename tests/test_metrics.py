"""Metric values checked against hand-computed numbers on tiny arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from alphacut.evaluate import metrics as m

# GT: a 2x2 square in a 4x4 image.
GT = np.array(
    [
        [0, 0, 0, 0],
        [0, 1, 1, 0],
        [0, 1, 1, 0],
        [0, 0, 0, 0],
    ],
    dtype=np.float64,
)
# Prediction: misses part of (1,2) and most of (2,1), adds half a pixel at the corner (3,3).
PRED = np.array(
    [
        [0, 0, 0, 0],
        [0, 1, 0.5, 0],
        [0, 0.25, 1, 0],
        [0, 0, 0, 0.5],
    ],
    dtype=np.float64,
)
# |PRED - GT| is 0.5 at (1,2), 0.75 at (2,1), 0.5 at (3,3): sum 1.75.


def test_mae_mse_sad() -> None:
    assert m.mae(PRED, GT) == pytest.approx(1.75 / 16)
    assert m.mse(PRED, GT) == pytest.approx((0.25 + 0.5625 + 0.25) / 16)
    assert m.sad(PRED, GT) == pytest.approx(1.75 / 1000)


def test_iou_at_half() -> None:
    # pred >= 0.5: (1,1) (1,2) (2,2) (3,3); gt: (1,1) (1,2) (2,1) (2,2) -> 3 / 5.
    assert m.iou(PRED, GT) == pytest.approx(0.6)
    assert m.iou(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0
    assert m.iou(np.zeros((3, 3)), np.ones((3, 3))) == 0.0


def test_max_f_measure_hand_computed() -> None:
    # Levels: 255 at (1,1) (2,2); 128 at (1,2) fg and (3,3) bg; 64 at (2,1); 0 elsewhere.
    # t in (128,255]: P=1, R=.5 -> F=.65/.8=.8125;  t in (64,128]: P=R=.75 -> .75;
    # t in (0,64]: P=.8, R=1 -> 1.04/1.24 (the maximum);  t=0: P=.25, R=1 -> .325/1.075.
    assert m.max_f_measure(PRED, GT) == pytest.approx(1.04 / 1.24)
    assert m.max_f_measure(GT, GT) == pytest.approx(1.0)
    # beta^2 = 1: plain F1, best again at P=.8, R=1 (F1 is only 2/3 at t > 128).
    assert m.max_f_measure(PRED, GT, beta2=1.0) == pytest.approx(2 * 0.8 / 1.8)


def test_max_f_measure_matches_a_per_threshold_loop() -> None:
    rng = np.random.default_rng(0)
    gt = (rng.random((40, 50)) > 0.6).astype(np.float64)
    pred = np.clip(gt * 0.6 + rng.random((40, 50)) * 0.5, 0, 1)
    levels = np.rint(pred * 255)
    best = 0.0
    for t in range(256):
        pos = levels >= t
        tp = np.sum(pos & (gt > 0.5))
        p = tp / pos.sum() if pos.sum() else 0.0
        r = tp / (gt > 0.5).sum()
        if p + r:
            best = max(best, 1.3 * p * r / (0.3 * p + r))
    assert m.max_f_measure(pred, gt) == pytest.approx(best)


def test_max_f_measure_empty_gt_is_zero() -> None:
    assert m.max_f_measure(np.zeros((4, 4)), np.zeros((4, 4))) == 0.0


def test_edge_band_geometry() -> None:
    # radius 1: the 4 fg pixels touch bg (distance 1); the 8 bg edge-centre pixels touch fg
    # (distance 1); the 4 corners are sqrt(2) from the nearest fg pixel: excluded.
    band = m.edge_band(GT, radius=1)
    corners = np.zeros((4, 4), bool)
    corners[[0, 0, 3, 3], [0, 3, 0, 3]] = True
    np.testing.assert_array_equal(band, ~corners)
    # Half-and-half split: radius 3 takes 3 columns on each side of the edge.
    gt = np.zeros((20, 20))
    gt[:, :10] = 1
    band = m.edge_band(gt, radius=3)
    assert band.sum() == 6 * 20
    assert band[:, 7:13].all()
    # No edge, no band; the image frame is not an edge.
    assert not m.edge_band(np.ones((5, 5)), radius=3).any()


def test_band_radius_default() -> None:
    assert m.band_radius((4, 4)) == 3  # the minimum
    assert m.band_radius((600, 800)) == 10  # 1% of the 1000 px diagonal


def test_band_mae() -> None:
    # radius 1 excludes the (3,3) corner: (0.5 + 0.75) / 12 pixels.
    assert m.band_mae(PRED, GT, radius=1) == pytest.approx(1.25 / 12)
    # The default radius (3) covers the whole 4x4 image.
    assert m.band_mae(PRED, GT) == pytest.approx(1.75 / 16)
    assert math.isnan(m.band_mae(np.zeros((4, 4)), np.zeros((4, 4))))


def test_boundary_pixels() -> None:
    mask = np.zeros((5, 5), bool)
    mask[1:4, 1:4] = True
    expected = mask.copy()
    expected[2, 2] = False  # the only interior pixel
    np.testing.assert_array_equal(m.boundary(mask), expected)
    assert not m.boundary(np.ones((4, 4), bool)).any()


def test_boundary_f_measure() -> None:
    # Pred boundary: (1,1) (1,2) (2,2) (3,3); GT boundary: the 2x2 square.
    # Tolerance 1 (the default for 4x4): (3,3) is sqrt(2) from (2,2) -> P = 3/4; every GT
    # boundary pixel has a pred boundary pixel within 1 -> R = 1. F = 1.5 / 1.75.
    assert m.boundary_tolerance((4, 4)) == 1
    assert m.boundary_f_measure(PRED, GT) == pytest.approx(1.5 / 1.75)
    assert m.boundary_f_measure(PRED, GT, tolerance=2) == pytest.approx(1.0)
    assert m.boundary_f_measure(GT, GT) == 1.0
    assert m.boundary_f_measure(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0
    assert m.boundary_f_measure(np.zeros((4, 4)), GT) == 0.0


def test_compute_metrics_perfect_and_keys() -> None:
    values = m.compute_metrics(GT, GT)
    assert tuple(values) == m.METRIC_NAMES
    assert values["mae"] == 0.0 and values["sad"] == 0.0 and values["mse"] == 0.0
    assert values["iou"] == 1.0 and values["boundary_f"] == 1.0 and values["band_mae"] == 0.0
    assert values["max_f"] == pytest.approx(1.0)


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError):
        m.mae(np.zeros((4, 4)), np.zeros((4, 5)))
