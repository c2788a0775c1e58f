"""Decontamination of soft edge colours (pipeline/foreground.py)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from alphacut.pipeline.foreground import estimate_foreground
from alphacut.pipeline.options import RemoveOptions
from alphacut.pipeline.remove import remove_background
from tests.conftest import subject_image

RNG = np.random.default_rng(7)


# ---------------------------------------------------------------- decontamination


def test_decontamination_removes_the_background_colour_from_edge_pixels():
    size = 300
    yy, xx = np.mgrid[:size, :size]
    alpha = np.clip((xx - 140) / 12.0, 0, 1).astype(np.float32)  # a 12 px soft edge
    fg = np.empty((size, size, 3), np.float32)
    fg[...] = (200, 150, 100)
    fg += (yy[..., None] % 7) * 3.0  # some texture
    green = np.array([0, 255, 0], np.float32)
    photo = (alpha[..., None] * fg + (1 - alpha[..., None]) * green + 0.5).astype(np.uint8)
    a8 = (alpha * 255 + 0.5).astype(np.uint8)
    out = estimate_foreground(photo, a8)
    soft = (a8 > 40) & (a8 < 220)
    before = np.abs(photo[soft].astype(float) - fg[soft]).mean()
    after = np.abs(out[soft].astype(float) - fg[soft]).mean()
    assert after < before / 4
    # The green cast is gone: the edge pixels' green is the subject's, not the screen's.
    assert np.abs(out[soft][:, 1] - fg[soft][:, 1]).mean() < 15
    # Any memory layout gives the same answer (a Fortran-ordered copy must not be lost).
    assert np.array_equal(estimate_foreground(np.asfortranarray(photo), a8), out)
    with pytest.raises(ValueError):
        estimate_foreground(np.dstack([photo, a8]), a8)  # RGBA, not RGB
    # Opaque and transparent pixels are untouched.
    hard = (a8 <= 1) | (a8 >= 254)
    assert np.array_equal(out[hard], photo[hard])


def test_decontamination_of_a_hard_mask_changes_nothing():
    photo = RNG.integers(0, 255, (30, 40, 3), dtype=np.uint8)
    mask = np.zeros((30, 40), np.uint8)
    mask[5:20, 5:30] = 255
    assert np.array_equal(estimate_foreground(photo, mask), photo)


def test_cutout_uses_decontaminated_colours_unless_disabled():
    image, _ = subject_image(80, 60)
    array = np.asarray(image)

    def predict(img: Image.Image) -> np.ndarray:
        # A soft-edged "probability" of the bright rectangle at 32 px.
        small = np.asarray(img.convert("L").resize((32, 32)), np.float32) / 255
        return cv2.GaussianBlur(small, (0, 0), 1.0)

    on = remove_background(image, predict, RemoveOptions())
    off = remove_background(image, predict, RemoveOptions(decontaminate=False))
    assert np.array_equal(on.mask, off.mask)
    assert np.array_equal(off.output[..., :3], array)
    soft = (on.mask > 1) & (on.mask < 254)
    assert soft.any() and "foreground" in on.timings
    # Edge pixels of the light subject over the dark background get lighter (less background).
    assert on.output[..., :3][soft].astype(int).sum() > off.output[..., :3][soft].astype(int).sum()
