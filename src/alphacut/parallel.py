"""One small thread pool for data-parallel image steps (the model input's banded resize, PNG
deflate, guided upsampling, cutout, decontamination of large photos).

Both the pipeline and the models' input preparation use it, so it lives above both. Those
steps split one image into a few parts that run in C with the GIL released. A task in
this pool never waits on another task of the pool, so the steps can share it safely.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

MAX_PARTS = 4  # parts per image, and threads in the pool
# Photos from this size on spread their full-resolution steps over the cores: below it, the
# steps take milliseconds and handing them to threads would cost more than it saves.
PARALLEL_PIXELS = 2_000_000

_POOL_PREFIX = "alphacut-parts"
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def shared_pool() -> ThreadPoolExecutor:
    """The process-wide pool, created on first use."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(MAX_PARTS, thread_name_prefix=_POOL_PREFIX)
        return _pool


def parts_for_this_machine() -> int:
    """How many parts to split into: the usable cores, at most MAX_PARTS."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_PARTS))


def parts_for(pixels: int) -> int:
    """How many parts a full-resolution step on an image of ``pixels`` should use."""
    return parts_for_this_machine() if pixels >= PARALLEL_PIXELS else 1


def in_parts(work: Callable[[int, int], None], total: int, parts: int) -> None:
    """Run ``work(start, stop)`` over ``range(total)`` split into ``parts`` contiguous pieces,
    on the shared pool when there is more than one; the first error is raised here.

    For steps whose numpy/OpenCV calls release the GIL and write disjoint slices: on a 12 MP
    photo they would otherwise leave the second core idle while a lone request finishes.
    """
    parts = max(1, min(parts, total))
    # A task of the pool must never wait on the pool (it could wait on itself): from inside
    # the pool, run in this thread.
    if threading.current_thread().name.startswith(_POOL_PREFIX):
        parts = 1
    if parts == 1:
        work(0, total)
        return
    bounds = [total * i // parts for i in range(parts + 1)]
    list(shared_pool().map(lambda i: work(bounds[i], bounds[i + 1]), range(parts)))
