"""A budget of image pixels in the pipeline at once, shared by the workers.

A job holds several full-size copies of its image while it runs (the float probability map,
the mask, the decontaminated colours, the RGBA cutout, the encoder's buffers): about 25 bytes
per pixel, 300 MB for a 12 MP photo. Counting jobs does not bound that; counting pixels does.
Small images run side by side as before, while two huge ones take turns instead of doubling
the server's peak memory.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class PixelBudget:
    """Blocks ``hold(n)`` while ``n`` more pixels would exceed ``limit``.

    A job larger than the whole budget still runs, alone, so nothing waits forever.
    ``limit <= 0`` disables the budget.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._changed = threading.Condition()

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        if self.limit <= 0:
            yield
            return
        with self._changed:
            self._changed.wait_for(lambda: self.used == 0 or self.used + pixels <= self.limit)
            self.used += pixels
        try:
            yield
        finally:
            with self._changed:
                self.used -= pixels
                self._changed.notify_all()
