"""Trimap, closed-form matting and its fallbacks (pipeline/matting.py).

The real model on real photos is in test_matting_photos.py."""

from __future__ import annotations

import cv2
import numpy as np

from alphacut.pipeline import matting
from alphacut.pipeline.matting import (
    AlphaMattingParams,
    alpha_matting,
    build_trimap,
    erode_kernel_size,
    reject_resegmentation,
)
from tests.conftest import disc

RNG = np.random.default_rng(7)


# ---------------------------------------------------------------- trimap and matting


def test_trimap_band_scales_with_the_image_and_respects_erode_size():
    params = AlphaMattingParams()
    assert erode_kernel_size((600, 800), params) == 8  # 0.8% of a 1000 px diagonal
    assert erode_kernel_size((3000, 4000), params) == 40
    assert erode_kernel_size((60, 80), params) == params.erode_size  # the user's minimum
    assert erode_kernel_size((60, 80), AlphaMattingParams(erode_size=20)) == 20

    def band_width(size: int) -> float:
        mask = (disc(size, size / 3) * 255).astype(np.uint8)
        mask = cv2.GaussianBlur(mask, (0, 0), size / 200)
        trimap = build_trimap(mask, params)
        assert set(np.unique(trimap)) == {0, 128, 255}
        return (trimap == 128).sum() / (2 * np.pi * size / 3)

    small, large = band_width(400), band_width(1600)
    assert 3.0 < large / small < 5.0  # 4x the size, about 4x the band


def _matting_scene(size: int = 160) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A soft-edged subject (true alpha), its photo, and a blurry model-like mask of it."""
    alpha = cv2.GaussianBlur(disc(size, size / 3), (0, 0), 1.5)
    fg = np.array([230, 120, 40], np.float32)
    bg = np.array([40, 90, 200], np.float32)
    photo = (alpha[..., None] * fg + (1 - alpha[..., None]) * bg).astype(np.uint8)
    model = cv2.GaussianBlur(alpha, (0, 0), 5)
    return photo, (alpha * 255).astype(np.uint8), (model * 255 + 0.5).astype(np.uint8)


def _sad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).sum() / 255 / 1000)


def test_alpha_matting_sharpens_a_blurry_mask_towards_the_truth():
    photo, truth, model = _matting_scene()
    refined = alpha_matting(photo, model, AlphaMattingParams())
    assert refined.dtype == np.uint8 and refined.shape == model.shape
    assert _sad(refined, truth) < 0.5 * _sad(model, truth)


def test_alpha_matting_solver_failure_returns_the_plain_mask(monkeypatch, caplog):
    photo, _, model = _matting_scene()

    def broken(*args, **kwargs):
        raise RuntimeError("solver exploded")

    monkeypatch.setattr(matting, "solve_alpha", broken)
    assert np.array_equal(alpha_matting(photo, model, AlphaMattingParams()), model)
    assert "alpha matting failed" in caplog.text

    monkeypatch.setattr(
        matting,
        "solve_alpha",
        lambda image, trimap, *a, **k: np.full(trimap.shape, np.nan, np.float32),
    )
    assert np.array_equal(alpha_matting(photo, model, AlphaMattingParams()), model)


def test_alpha_matting_rejects_a_solver_that_deletes_the_subject(monkeypatch, caplog):
    photo, _, model = _matting_scene()
    # A solver that answers "background" everywhere it may: the am_GT26 failure mode.
    monkeypatch.setattr(
        matting, "solve_alpha", lambda image, trimap, *a, **k: (trimap == 255).astype(np.float32)
    )
    mask = model.copy()
    mask[40:120, 40:120] = np.maximum(mask[40:120, 40:120], 200)  # a large unsure subject
    out = alpha_matting(photo, mask, AlphaMattingParams())
    assert "re-segmented" in caplog.text
    band = (mask >= 20) & (mask <= 240)
    assert np.array_equal(out[band], mask[band])  # the plain mask, exactly


def test_reject_resegmentation_is_per_region():
    trimap = np.full((50, 100), 0, np.uint8)
    trimap[10:40, 5:45] = 128  # region A
    trimap[10:40, 55:95] = 128  # region B
    prior = np.where(trimap == 128, 0.8, 0.0).astype(np.float32)
    alpha = prior.copy()
    alpha[10:40, 5:45] = 0.0  # A flipped to background entirely
    alpha[10:12, 55:95] = 0.1  # B only nudged
    checked, rejected = reject_resegmentation(alpha, prior, trimap, max_flip=0.3)
    assert rejected is not None and rejected[20, 20] and not rejected[20, 70]
    assert np.array_equal(checked[:, :50], prior[:, :50])
    assert np.array_equal(checked[:, 50:], alpha[:, 50:])


def test_alpha_matting_without_an_unknown_band_thresholds_the_mask():
    photo = np.zeros((20, 20, 3), np.uint8)
    mask = np.zeros((20, 20), np.uint8)
    mask[5:15, 5:15] = 250
    mask[0, 0] = 10
    out = alpha_matting(photo, mask, AlphaMattingParams())
    assert out[0, 0] == 0 and out[10, 10] == 255
