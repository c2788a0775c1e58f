"""The fast PNG writer: lossless round trips through Pillow, in every layout we write."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from PIL import Image

from alphacut.pipeline import png
from alphacut.pipeline.encode import encode_png

SHAPES = [(1, 1), (1, 7, 3), (2, 3, 4), (5, 1, 4), (97, 131), (64, 33, 3), (300, 257, 4)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("parts", [0, 1, 2, 3, 4])
def test_round_trip_is_lossless(shape, parts):
    array = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    data = png.encode(array, 1, parts)
    with Image.open(io.BytesIO(data)) as image:
        image.load()  # checks every CRC and the zlib stream's Adler-32
        assert image.mode == ("L" if len(shape) == 2 else {3: "RGB", 4: "RGBA"}[shape[2]])
        np.testing.assert_array_equal(np.asarray(image), array)


@pytest.mark.parametrize("level", [0, 1, 6, 9])
def test_levels_and_large_parallel_images(level):
    rng = np.random.default_rng(level)
    # A smooth gradient plus noise, large enough to take the parallel path by default.
    base = np.linspace(0, 255, 1500 * 800 * 4).reshape(1500, 800, 4)
    array = (base + rng.integers(0, 8, base.shape)).clip(0, 255).astype(np.uint8)
    assert array.nbytes >= png.PARALLEL_MIN_BYTES
    data = encode_png(array, level)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), array)


def test_non_contiguous_views_are_encoded():
    array = np.random.default_rng(3).integers(0, 256, (40, 60, 4), dtype=np.uint8)
    view = array[::2, 5:45]
    data = encode_png(view)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), view)


def test_other_arrays_still_go_through_pillow():
    array = (np.arange(12, dtype=np.uint16) * 5000).reshape(3, 4)
    assert not png.supports(array)
    data = encode_png(array)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), array)


def test_adler32_combine_matches_zlib():
    rng = np.random.default_rng(0)
    for len1, len2 in [(0, 5), (5, 0), (1000, 70000), (65521, 65521 * 3 + 7)]:
        a, b = rng.bytes(len1), rng.bytes(len2)
        assert png.adler32_combine(zlib.adler32(a), zlib.adler32(b), len(b)) == zlib.adler32(a + b)
