"""The output's size is bounded before it is allocated (issue 20, item 4).

Crop margins are pixels, so a tiny image can ask for a huge canvas: ``crop_margin`` 500 around
the subject of a 197-byte 1x60000 PNG is a 1001x61000 (61 MP) output, 2.5 s and +469 MB; on a
1x1000000 PNG, a 1 GP canvas (35 s, +7.7 GB). ``arrange`` now computes the canvas first and
refuses one over the pixel limit with ``ImageTooLarge`` (413). Scale, position and the
background never make an output larger than its canvas; the pure-function tests of the
options themselves are in test_options.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from alphacut.errors import ImageTooLarge
from alphacut.pipeline.compose import (
    DEFAULT_MAX_PIXELS,
    apply_background,
    arrange,
    canvas_box,
    compose_output,
)
from alphacut.pipeline.options import RemoveOptions
from alphacut.pipeline.regions import Box
from alphacut.pipeline.remove import remove_background


def _peak_rss_reset() -> int | None:
    """Reset the process's peak RSS (VmHWM) and return the current RSS; None if Linux cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status("VmRSS")
    except (OSError, LookupError):
        return None


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise LookupError(field)


def tall_cutout(height: int) -> tuple[np.ndarray, Box]:
    """A 1 x ``height`` opaque cutout: the subject is the whole image."""
    rgba = np.full((height, 1, 4), 255, np.uint8)
    return rgba, Box(0, 0, 1, height)


def test_crop_margin_around_a_thin_subject_is_refused_before_allocating() -> None:
    rgba, box = tall_cutout(60_000)
    before = _peak_rss_reset()
    started = time.process_time()
    with pytest.raises(ImageTooLarge) as info:
        arrange(rgba, box, RemoveOptions(crop=True, crop_margin=500))
    assert time.process_time() - started < 0.1
    if before is not None:
        assert _status("VmHWM") - before < 8 * 2**20
    assert info.value.status_code == 413
    assert info.value.message == (
        "the output would be 1001x61000 = 61061000 pixels (the subject's 1x60000 box with "
        "crop_margin 500 on each side); the limit is 50000000 pixels: use a smaller crop_margin"
    )


def test_a_gigapixel_canvas_is_refused_too() -> None:
    rgba, box = tall_cutout(1_000_000)
    with pytest.raises(ImageTooLarge, match="1001x1001000 = 1002001000 pixels"):
        compose_output(rgba, rgba[..., 3], RemoveOptions(crop=True, crop_margin=500))


def test_limit_boundary_and_the_given_limit() -> None:
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[10:20, 10:20] = 255  # a 10x10 subject: margin m makes a (10 + 2m)^2 canvas
    box = Box(10, 10, 10, 10)
    opts = RemoveOptions(crop=True, crop_margin=20)
    assert arrange(rgba, box, opts, max_pixels=2500).shape == (50, 50, 4)
    with pytest.raises(ImageTooLarge, match="50x50 = 2500 pixels.*limit is 2499 pixels"):
        arrange(rgba, box, opts, max_pixels=2499)
    # The default limit is ALPHACUT_MAX_PIXELS's default.
    assert DEFAULT_MAX_PIXELS == 50_000_000


def test_percentage_margins_count_as_well() -> None:
    """A 50% margin doubles each side: a subject filling the image makes 4x its pixels."""
    rgba = np.full((100, 100, 4), 255, np.uint8)
    box = Box(0, 0, 100, 100)
    opts = RemoveOptions(crop=True, crop_margin="50%")
    assert arrange(rgba, box, opts, max_pixels=40_000).shape == (200, 200, 4)
    with pytest.raises(ImageTooLarge, match="200x200 = 40000 pixels"):
        arrange(rgba, box, opts, max_pixels=39_999)


def test_an_output_no_larger_than_its_input_is_always_allowed() -> None:
    """The input passed the same limit: scale and position keep the input's canvas, and a
    crop without margin is inside it, even under a smaller limit."""
    rgba = np.zeros((80, 100, 4), np.uint8)
    rgba[20:60, 30:70] = 255
    box = Box(30, 20, 40, 40)
    for opts in (
        RemoveOptions(scale=1.0, position="bottom"),
        RemoveOptions(position="0%,0%"),
        RemoveOptions(crop=True),
        RemoveOptions(crop=True, crop_margin=5, scale="50%"),
    ):
        out = arrange(rgba, box, opts, max_pixels=10)
        assert out.shape[0] * out.shape[1] <= 80 * 100


def test_a_large_background_image_is_drawn_at_the_output_size() -> None:
    rgba = np.zeros((30, 20, 4), np.uint8)
    background = Image.new("RGB", (4000, 3000), (0, 255, 0))
    out = apply_background(rgba, None, background)
    assert out.shape == (30, 20, 3)


def test_the_pipeline_refuses_the_canvas_with_413() -> None:
    """remove_background on a 1x60000 white image with any predictor: the mask is the whole
    image; the crop margin's canvas is refused before it exists."""
    image = Image.new("RGB", (1, 60_000), (255, 255, 255))

    def predict(img: Image.Image) -> np.ndarray:
        return np.ones((8, 8), np.float32)

    with pytest.raises(ImageTooLarge, match="1001x61000"):
        remove_background(image, predict, RemoveOptions(crop=True, crop_margin=500))
    result = remove_background(image, predict, RemoveOptions(crop=True, crop_margin=20))
    assert result.output.shape[:2] == (60_040, 41)


margins = st.one_of(st.integers(0, 500).map(str), st.integers(0, 50).map(lambda p: f"{p}%"))


@settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    st.integers(1, 40),
    st.integers(1, 40),
    st.data(),
    st.booleans(),
    margins,
    st.one_of(st.none(), st.floats(0.01, 1.0)),
    st.one_of(st.none(), st.tuples(st.floats(0, 1), st.floats(0, 1))),
    st.integers(1, 20_000),
    st.booleans(),
)
def test_output_never_exceeds_the_bound(
    height: int,
    width: int,
    data: st.DataObject,
    crop: bool,
    margin: str,
    scale: float | None,
    position: tuple[float, float] | None,
    max_pixels: int,
    mask: bool,
) -> None:
    """Whatever the box and options: the output is the canvas computed beforehand, within
    max(limit, input), or refused with 413 before it is allocated."""
    top = data.draw(st.integers(0, height - 1))
    left = data.draw(st.integers(0, width - 1))
    box = Box(
        left, top, data.draw(st.integers(1, width - left)), data.draw(st.integers(1, height - top))
    )
    output = np.zeros((height, width) if mask else (height, width, 4), np.uint8)
    output[box.slices] = 255
    opts = RemoveOptions(crop=crop, crop_margin=margin, scale=scale, position=position)
    canvas = canvas_box(output.shape, box, opts)
    bound = max(max_pixels, height * width)
    if opts.moves_subject and canvas.width * canvas.height > bound:
        with pytest.raises(ImageTooLarge) as info:
            arrange(output, box, opts, max_pixels)
        assert info.value.status_code == 413
        return
    out = arrange(output, box, opts, max_pixels)
    assert out.shape[0] * out.shape[1] <= bound
    if opts.moves_subject:
        assert out.shape[:2] == (canvas.height, canvas.width)
    if out.ndim == 3:
        background = Image.new("RGB", (97, 13))
        assert apply_background(out, (1, 2, 3, 255), background).shape[:2] == out.shape[:2]
