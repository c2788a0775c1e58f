"""preprocess: the fast paths give exactly what the plain Pillow + numpy pipeline gives."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from alphacut.models.registry import ISNET_IMGLY_MEAN, ISNET_IMGLY_STD, ModelSpec
from alphacut.pipeline import parallel, segment

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
    out = segment.preprocess(image, SPEC)
    assert out.shape == (3, 64, 64) and out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, _reference(image, SPEC))


@pytest.mark.parametrize(
    "source,size",
    [((1201, 907), 256), ((2100, 1500), 1024), ((1201, 907), 257), ((1201, 907), 1024)],
)
def test_banded_resize_of_large_images_is_bit_identical(monkeypatch, source, size):
    image = _photo(*source)
    monkeypatch.setattr(segment, "TILED_RESIZE_MIN_PIXELS", 1)
    monkeypatch.setattr(parallel.os, "sched_getaffinity", lambda pid: {0, 1, 2})
    spec = ModelSpec("isnet", "isnet.onnx", size, ISNET_IMGLY_MEAN, ISNET_IMGLY_STD, "test")
    banded = segment.resize_bilinear(image, size)
    whole = np.asarray(image.resize((size, size), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(banded, whole)
    np.testing.assert_array_equal(segment.preprocess(image, spec), _reference(image, spec))


def test_in_parts_covers_the_range_once_and_raises_errors() -> None:
    from alphacut.pipeline.parallel import in_parts

    seen = np.zeros(103, np.int64)

    def mark(start: int, stop: int) -> None:
        seen[start:stop] += 1

    for parts in (1, 2, 3, 4, 200):
        seen[:] = 0
        in_parts(mark, 103, parts)
        assert (seen == 1).all()

    def fail(start: int, stop: int) -> None:
        raise ValueError("bad part")

    with pytest.raises(ValueError, match="bad part"):
        in_parts(fail, 10, 2)


def test_large_photo_steps_give_the_same_bits_in_parallel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Guided upsampling, decontamination and the cutout split large photos over threads."""
    from alphacut.pipeline.compose import cutout
    from alphacut.pipeline.foreground import soft_edge_colours
    from alphacut.pipeline.refine import guided_upsample_mask

    rng = np.random.default_rng(3)
    photo = rng.integers(0, 256, (1500, 1400, 3), dtype=np.uint8)
    low = np.zeros((128, 128), np.float32)
    low[30:100, 20:90] = 1.0
    low = cv2.GaussianBlur(low, (9, 9), 3.0)

    def run() -> tuple[np.ndarray, ...]:
        mask = guided_upsample_mask(photo, low, tile=128)
        flat, colours = soft_edge_colours(photo, mask)
        return mask, flat, colours, cutout(photo, mask)

    monkeypatch.setattr(parallel, "PARALLEL_PIXELS", 10**12)
    serial = run()
    monkeypatch.setattr(parallel, "PARALLEL_PIXELS", 1)
    monkeypatch.setattr(parallel, "parts_for_this_machine", lambda: 3)
    spread = run()
    assert all(np.array_equal(a, b) for a, b in zip(serial, spread, strict=True))
