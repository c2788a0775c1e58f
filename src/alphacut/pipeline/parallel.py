"""One small thread pool for the pipeline's data-parallel steps (banded resize, PNG deflate).

Those steps split one image into a few parts that run in C with the GIL released. A task in
this pool never waits on another task of the pool, so the steps can share it safely.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

MAX_PARTS = 4  # parts per image, and threads in the pool

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def shared_pool() -> ThreadPoolExecutor:
    """The process-wide pool, created on first use."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(MAX_PARTS, thread_name_prefix="alphacut-parts")
        return _pool


def parts_for_this_machine() -> int:
    """How many parts to split into: the usable cores, at most MAX_PARTS."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_PARTS))
