"""Guided filter and edge-aware upsampling (pipeline/refine.py)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from alphacut.pipeline.filters import box_filter
from alphacut.pipeline.probability import probability_to_mask, upsample_probability
from alphacut.pipeline.refine import (
    COEFFICIENT_BAND_ROWS,
    STEEP,
    _coefficient_map,
    _coefficients,
    _resize_region,
    guided_filter,
    guided_upsample_mask,
    upsample_mask,
)
from tests.conftest import disc

RNG = np.random.default_rng(7)


# ---------------------------------------------------------------- guided filter


def test_guided_filter_with_a_flat_guide_is_a_box_blur():
    src = RNG.random((60, 80)).astype(np.float32)
    guide = np.full((60, 80, 3), 0.4, np.float32)
    out = guided_filter(guide, src, radius=3, eps=1e-3)
    # No guide structure: a = 0, b = the local mean, averaged once more.
    assert np.allclose(out, box_filter(box_filter(src, 3), 3), atol=1e-5)
    assert out.std() < src.std() / 3


def test_guided_filter_keeps_the_guides_edge():
    guide = np.zeros((40, 40), np.float32)
    guide[:, 20:] = 1.0
    src = guide + RNG.normal(0, 0.1, guide.shape).astype(np.float32)
    out = guided_filter(guide, src, radius=4, eps=1e-3)
    blurred = box_filter(src, 4)
    # Two pixels either side of the edge: the guided result is still on its side...
    assert np.abs(out[:, 18] - 0).max() < 0.15 and np.abs(out[:, 21] - 1).max() < 0.15
    # ...where a plain blur of the same size mixes both sides.
    assert blurred[:, 19].mean() > 0.3
    # And the noise is smoothed away.
    assert np.abs(out - guide).mean() < np.abs(src - guide).mean() / 2


def test_colour_guide_separates_colours_a_grey_guide_cannot():
    # Red and green of the same luminance: one edge for a colour guide, none for grey.
    guide = np.zeros((30, 30, 3), np.float32)
    guide[:, :15] = (0.6, 0.2, 0.2)
    guide[:, 15:] = (0.2, 0.4, 0.2)
    src = np.zeros((30, 30), np.float32)
    src[:, 15:] = 1.0
    colour = guided_filter(guide, src, radius=3, eps=1e-4)
    assert colour[:, 13].max() < 0.1 and colour[:, 16].min() > 0.9


def test_resize_region_matches_cv2_resize():
    array = RNG.random((50, 70, 4)).astype(np.float32)
    full = cv2.resize(array, (333, 211), interpolation=cv2.INTER_LINEAR)
    part = _resize_region(array, 333, 211, (37, 150), (20, 300))
    assert np.abs(full[37:150, 20:300] - part).max() < 1e-4


def test_fast_guided_upsampling_puts_the_edge_on_the_photo():
    truth = disc(400, 130)
    photo = np.where(truth[..., None] > 0, [200, 60, 40], [30, 90, 200]).astype(np.uint8)
    low = cv2.resize(truth, (100, 100), interpolation=cv2.INTER_AREA)  # a 4x coarser map
    guided = guided_upsample_mask(photo, low).astype(np.float32) / 255
    bilinear = cv2.resize(low, (400, 400), interpolation=cv2.INTER_LINEAR)
    assert guided.shape == truth.shape
    assert np.abs(guided - truth).mean() < np.abs(bilinear - truth).mean() / 2
    assert ((guided > 0.1) & (guided < 0.9)).sum() < ((bilinear > 0.1) & (bilinear < 0.9)).sum()


def test_guided_upsample_mask_matches_the_float_filter():
    """The uint8 shortcut on flat tiles gives what the float filter would, within a level."""
    photo = RNG.integers(0, 256, (700, 900, 3), dtype=np.uint8)
    photo[:, :450] = (RNG.random((700, 450, 3)) * 40 + 100).astype(np.uint8)
    low = np.zeros((100, 100), np.float32)
    low[30:70, 20:45] = 1.0
    low = cv2.GaussianBlur(low, (5, 5), 1.0)
    mask = guided_upsample_mask(photo, low, tile=64)
    assert mask.dtype == np.uint8 and mask.shape == (700, 900)
    assert mask[:100].max() == 0 and mask[350, 250] == 255  # flat tiles: exact 0 and 255
    small_guide = cv2.resize(photo, (100, 100), interpolation=cv2.INTER_AREA) / 255.0
    a, b = _coefficients(small_guide.astype(np.float32), low, 1, 1e-4)
    a_up = cv2.resize(a, (900, 700), interpolation=cv2.INTER_LINEAR)
    b_up = cv2.resize(b, (900, 700), interpolation=cv2.INTER_LINEAR)
    reference = probability_to_mask(
        np.clip((a_up * (photo / 255.0)).sum(-1) + b_up, 0, 1).astype(np.float32)
    )
    assert np.abs(mask.astype(int) - reference).max() <= 1


@pytest.mark.parametrize("radius", [1, 3])
@pytest.mark.parametrize("colour", [True, False])
def test_banded_coefficients_are_those_of_the_whole_map(radius: int, colour: bool) -> None:
    """Fitted band by band over the cores, the coefficients are those of one fit on the whole
    map up to float rounding (box filters keep running sums, which start at each band's top);
    a height that is no multiple of the band, a band boundary inside an edge."""
    height = 3 * COEFFICIENT_BAND_ROWS + 17
    guide = RNG.random((height, 150, 3) if colour else (height, 150), dtype=np.float32)
    src = np.zeros((height, 150), np.float32)
    src[COEFFICIENT_BAND_ROWS - 20 : 2 * COEFFICIENT_BAND_ROWS + 5, 40:90] = 1.0
    src = cv2.GaussianBlur(src, (9, 9), 2.0)
    coeffs, steep = _coefficient_map(guide, src, radius, 1e-4)
    a, b = _coefficients(guide, src, radius, 1e-4)
    np.testing.assert_allclose(coeffs[..., :-1], a, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(coeffs[..., -1], b, rtol=1e-5, atol=1e-7)
    assert np.array_equal(steep, (np.abs(a) > STEEP).any(axis=-1))
    assert steep.any() and not steep.all()


def test_upsample_mask_is_bilinear_when_the_photo_is_not_larger():
    prob = RNG.random((64, 64)).astype(np.float32)
    photo = np.zeros((50, 60, 3), np.uint8)
    assert np.array_equal(
        upsample_mask(prob, photo), probability_to_mask(upsample_probability(prob, 60, 50))
    )
    big = np.zeros((70, 60, 3), np.uint8)  # taller than the map: guided
    mask = upsample_mask(prob, big)
    assert mask.shape == (70, 60) and mask.dtype == np.uint8
