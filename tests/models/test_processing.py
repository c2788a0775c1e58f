"""models/processing.py: the fast paths of preprocess give exactly the plain Pillow + numpy bits."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from alphacut import parallel
from alphacut.models import processing
from alphacut.models.registry import ISNET_IMGLY_MEAN, ISNET_IMGLY_STD, ModelSpec

SPEC = ModelSpec("isnet", "isnet.onnx", 64, ISNET_IMGLY_MEAN, ISNET_IMGLY_STD, "test")


def _reference(image: Image.Image, spec: ModelSpec) -> np.ndarray:
    resized = image.convert("RGB").resize((spec.input_size,) * 2, Image.Resampling.BILINEAR)
    array = np.asarray(resized, dtype=np.float32)
    mean = np.asarray(spec.mean, dtype=np.float32) * 255.0
    std = np.asarray(spec.std, dtype=np.float32) * 255.0
    return np.ascontiguousarray(((array - mean) * (1.0 / std)).transpose(2, 0, 1))


def _photo(width: int, height: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(width + height)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) % 256], axis=-1)
    noisy = (base + rng.integers(0, 40, base.shape)).clip(0, 255).astype(np.uint8)
    return Image.fromarray(noisy).convert(mode)


@pytest.mark.parametrize(
    "size,mode", [((50, 30), "RGB"), ((333, 517), "RGB"), ((200, 100), "L"), ((120, 90), "RGBA")]
)
def test_preprocess_matches_the_plain_pipeline(size, mode):
    image = _photo(*size, mode=mode)
    out = processing.preprocess(image, SPEC)
    assert out.shape == (3, 64, 64) and out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, _reference(image, SPEC))


@pytest.mark.parametrize(
    "source,size",
    [((1201, 907), 256), ((2100, 1500), 1024), ((1201, 907), 257), ((1201, 907), 1024)],
)
def test_banded_resize_of_large_images_is_bit_identical(monkeypatch, source, size):
    image = _photo(*source)
    monkeypatch.setattr(processing, "TILED_RESIZE_MIN_PIXELS", 1)
    monkeypatch.setattr(parallel.os, "sched_getaffinity", lambda pid: {0, 1, 2})
    spec = ModelSpec("isnet", "isnet.onnx", size, ISNET_IMGLY_MEAN, ISNET_IMGLY_STD, "test")
    banded = processing.resize_bilinear(image, size)
    whole = np.asarray(image.resize((size, size), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(banded, whole)
    np.testing.assert_array_equal(processing.preprocess(image, spec), _reference(image, spec))
