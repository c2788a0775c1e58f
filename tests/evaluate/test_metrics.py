"""Metric values checked against hand-computed numbers on tiny arrays, and against pysodmetrics."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from alphacut.evaluate import metrics as m
from tests.conftest import PHOTOS, real_settings, requires_real_model

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


# --- Cross-check against pysodmetrics --------------------------------------------------------
# pysodmetrics (PyPI; package py_sod_metrics) is the reference implementation the salient-object
# papers report with. Its definitions, read from its 1.6.x source, and where ours differ:
#
# * Inputs: it takes uint8 maps and (``normalize=True``) divides pred by 255 and rescales it to
#   span 0..1 per image (MATLAB's ``mapminmax``), and binarises gt with ``gt > 128``. Ours take
#   0..1 alphas as they are (no min-max rescaling: an alpha that never reaches 1 is penalised)
#   and binarise gt with ``gt >= 0.5``. So: with uint8 maps that span 0..255 and a binary gt
#   both conventions agree, and for other maps ours equal its ``normalize=False`` path (pred as
#   0..1 floats, gt as booleans).
# * MAE: mean |pred - gt| against the binarised gt. Ours also takes a soft gt (matting); with a
#   binary gt the two agree.
# * max F: 256 thresholds on ``(pred * 255).astype(uint8)`` (floor; ours round, the same on maps
#   that come from uint8), positive where level >= t, beta^2 = 0.3, max over thresholds.
# * IoU: its binary IoU thresholds ``pred > 0.5``, ours ``pred >= 0.5`` (no uint8 level is 0.5
#   exactly); with an empty union it answers 0, ours 1.
# * Not ours, not compared: S-measure, E-measure, weighted F (its WeightedFmeasure), adaptive F.
#   Ours alone: SAD, MSE, band MAE, boundary F.


def _pysod():
    return pytest.importorskip(
        "py_sod_metrics", reason="pysodmetrics not installed (`make setup` installs it)"
    )


def _reference(pred_u8: np.ndarray, gt_u8: np.ndarray, normalize: bool = True) -> dict[str, float]:
    """MAE, max F and binary IoU from pysodmetrics for one uint8 pair."""
    sod = _pysod()
    pred: np.ndarray = pred_u8
    gt: np.ndarray = gt_u8
    if not normalize:
        pred, gt = pred_u8 / 255.0, gt_u8 > 128
    mae = sod.MAE()
    fm = sod.FmeasureV2(
        {
            "fm": sod.FmeasureHandler(with_dynamic=True, with_adaptive=False, beta=0.3),
            "iou": sod.IOUHandler(with_dynamic=False, with_adaptive=False, with_binary=True),
        }
    )
    mae.step(pred, gt, normalize=normalize)
    fm.step(pred, gt, normalize=normalize)
    results = fm.get_results()
    return {
        "mae": float(mae.get_results()["mae"]),
        "max_f": float(results["fm"]["dynamic"].max()),
        "iou": float(results["iou"]["binary"]),
    }


def _ours(pred_u8: np.ndarray, gt_u8: np.ndarray) -> dict[str, float]:
    pred, gt = pred_u8 / 255.0, gt_u8 / 255.0
    return {"mae": m.mae(pred, gt), "max_f": m.max_f_measure(pred, gt), "iou": m.iou(pred, gt)}


def _perturbed_gt(pred_u8: np.ndarray, seed: int) -> np.ndarray:
    """A binary 0/255 'ground truth' near the prediction: thresholded, shifted, with a hole."""
    rng = np.random.default_rng(seed)
    h, w = pred_u8.shape
    gt = np.where(pred_u8 >= 128, 255, 0).astype(np.uint8)
    gt = np.roll(gt, (int(rng.integers(-6, 7)), int(rng.integers(-6, 7))), axis=(0, 1))
    y, x = int(rng.integers(0, h - h // 5)), int(rng.integers(0, w - w // 5))
    gt[y : y + h // 5, x : x + w // 5] = 255 - gt[y : y + h // 5, x : x + w // 5]
    return gt


def _full_range(pred_u8: np.ndarray) -> np.ndarray:
    """The map with one pixel at 0 and one at 255, so its min-max rescaling changes nothing."""
    pred = pred_u8.copy()
    pred[0, 0], pred[-1, -1] = 0, 255
    return pred


def _synthetic_pairs() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, pred, gt): blurred noisy ellipses and the photos' grey levels as soft maps."""
    rng = np.random.default_rng(7)
    pairs = []
    for i, (h, w) in enumerate([(120, 160), (97, 203), (240, 180)]):
        canvas = np.zeros((h, w), np.float64)
        cv2.ellipse(canvas, (w // 2, h // 2), (w // 3, h // 4), 15 * i, 0, 360, 1.0, -1)
        soft = cv2.GaussianBlur(canvas, (0, 0), 3 + 2 * i) + rng.normal(0, 0.08, (h, w))
        pred = _full_range(np.clip(np.rint(soft * 255), 0, 255).astype(np.uint8))
        pairs.append((f"ellipse{i}", pred, _perturbed_gt(pred, i)))
    for i, name in enumerate(["animal-1.jpg", "car-1.jpg", "girl-1.jpg"]):
        grey = Image.open(PHOTOS / name).convert("L")
        grey = grey.resize((grey.width // 4, grey.height // 4), Image.Resampling.BILINEAR)
        pred = _full_range(np.asarray(grey))
        pairs.append((name, pred, _perturbed_gt(pred, 10 + i)))
    return pairs


@pytest.mark.parametrize(
    ("pred", "gt"), [pytest.param(pred, gt, id=name) for name, pred, gt in _synthetic_pairs()]
)
def test_mae_max_f_iou_match_pysodmetrics(pred: np.ndarray, gt: np.ndarray) -> None:
    """Full-range uint8 maps, binary gt: pysodmetrics' default path and ours agree exactly."""
    ours, theirs = _ours(pred, gt), _reference(pred, gt)
    assert 0.0 < ours["mae"] < 0.5 and 0.3 < ours["max_f"] < 1.0  # not a degenerate pair
    assert ours == pytest.approx(theirs, rel=1e-12, abs=1e-12)


def test_low_range_prediction_matches_pysodmetrics_without_rescaling() -> None:
    """A prediction that never passes 0.5: ours score it as it is, like ``normalize=False``.

    pysodmetrics' default path stretches it to 0..1 first, which would hide a washed-out
    alpha; that rescaling is deliberately not ours, so there the two differ.
    """
    _, pred, gt = _synthetic_pairs()[0]
    low = (pred // 2).astype(np.uint8)  # 0..127
    ours = _ours(low, gt)
    assert ours == pytest.approx(_reference(low, gt, normalize=False), rel=1e-12, abs=1e-12)
    assert ours["iou"] == 0.0 and ours["mae"] > _reference(low, gt)["mae"]


@pytest.mark.real_model
@requires_real_model
def test_metrics_match_pysodmetrics_on_real_model_masks(tmp_path: Path) -> None:
    """The real model's masks of the sample photos against perturbed copies of themselves."""
    _pysod()
    from alphacut.engine import Engine

    engine = Engine(real_settings(tmp_path / "home"))
    try:
        for i, name in enumerate(["animal-1.jpg", "car-1.jpg", "girl-1.jpg"]):
            mask = engine.remove(Image.open(PHOTOS / name).convert("RGB")).mask
            assert 0.02 < (mask > 127).mean() < 0.98  # found a subject, not everything
            pred, gt = _full_range(mask), _perturbed_gt(mask, 20 + i)
            ours, theirs = _ours(pred, gt), _reference(pred, gt)
            assert ours == pytest.approx(theirs, rel=1e-12, abs=1e-12), name
            assert ours == pytest.approx(_reference(pred, gt, normalize=False), abs=1e-12)
    finally:
        engine.close()
