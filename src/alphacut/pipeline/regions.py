"""Bounding boxes: one convention, (left, top, width, height) in pixels, for every module."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Box(NamedTuple):
    """A rectangle of an image, in pixels: the columns left..right, the rows top..bottom."""

    left: int
    top: int
    width: int
    height: int

    @property
    def right(self) -> int:
        """One past the last column."""
        return self.left + self.width

    @property
    def bottom(self) -> int:
        """One past the last row."""
        return self.top + self.height

    @property
    def slices(self) -> tuple[slice, slice]:
        """``array[box.slices]`` is the box's part of an HxW(xC) array."""
        return slice(self.top, self.bottom), slice(self.left, self.right)

    def as_dict(self) -> dict[str, int]:
        return {"top": self.top, "left": self.left, "width": self.width, "height": self.height}


def nonzero_box(flags: np.ndarray, margin: int = 0) -> Box | None:
    """The box around the nonzero pixels of ``flags`` (HxW), widened by ``margin`` and clipped
    to the array; None if there are none."""
    rows = np.flatnonzero(flags.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(flags.any(axis=0))
    height, width = flags.shape
    top, bottom = max(0, int(rows[0]) - margin), min(height, int(rows[-1]) + margin + 1)
    left, right = max(0, int(cols[0]) - margin), min(width, int(cols[-1]) + margin + 1)
    return Box(left, top, right - left, bottom - top)
