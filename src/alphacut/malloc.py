"""glibc malloc settings for long-running processes (the server, folder runs of the CLI).

glibc's adaptive mmap threshold lets the 4-50 MB per-request buffers fragment the heap, so RSS
creeps up request after request. A fixed 13 MiB threshold (just above the 1024x1024
temporaries, which are then reused from the heap; larger buffers go back to the OS) and two
arenas keep it flat. Measurements: docs/performance.md (Memory).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_ARENA_MAX", "GLIBC_TUNABLES")


def tune_malloc(mmap_threshold: int = 13 << 20, arena_max: int = 2) -> bool:
    """Apply the settings above; True if they took. Call early, before threads start.

    Explicit ``MALLOC_*`` / ``GLIBC_TUNABLES`` environment settings win: then nothing changes.
    Not glibc (macOS, musl): nothing changes.
    """
    if not sys.platform.startswith("linux") or any(os.environ.get(k) for k in _USER_SETTINGS):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1
    done = bool(mallopt(M_ARENA_MAX, arena_max) == 1) and done
    if not done:
        log.debug("mallopt refused the settings (not glibc?)")
    return done
