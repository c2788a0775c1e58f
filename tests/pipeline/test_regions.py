"""pipeline/regions.py: boxes in one convention, (left, top, width, height)."""

from __future__ import annotations

import numpy as np

from alphacut.pipeline.regions import Box, nonzero_box


def test_nonzero_box_is_left_top_width_height_and_slices_the_pixels() -> None:
    flags = np.zeros((40, 60), np.uint8)
    flags[10:15, 20:32] = 1
    found = nonzero_box(flags)
    assert found == Box(20, 10, 12, 5)
    assert (found.right, found.bottom) == (32, 15)
    assert flags[found.slices].all() and flags[found.slices].size == np.count_nonzero(flags)


def test_nonzero_box_margin_is_clipped_to_the_array_and_empty_is_none() -> None:
    flags = np.zeros((40, 60), bool)
    flags[1, 58] = True
    assert nonzero_box(flags, margin=3) == Box(55, 0, 5, 5)
    assert nonzero_box(np.zeros((5, 5), bool)) is None
