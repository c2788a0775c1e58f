"""alphacut/parallel.py: in_parts covers a range once, and split steps give the same bits."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from alphacut import parallel


def test_in_parts_covers_the_range_once_and_raises_errors() -> None:
    seen = np.zeros(103, np.int64)

    def mark(start: int, stop: int) -> None:
        seen[start:stop] += 1

    for parts in (1, 2, 3, 4, 200):
        seen[:] = 0
        parallel.in_parts(mark, 103, parts)
        assert (seen == 1).all()

    def fail(start: int, stop: int) -> None:
        raise ValueError("bad part")

    with pytest.raises(ValueError, match="bad part"):
        parallel.in_parts(fail, 10, 2)


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
