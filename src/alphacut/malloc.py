"""glibc malloc settings for long-running processes (the server, folder runs of the CLI).

Every request allocates and frees a few buffers of 4-50 MB: the decoded image, the probability
map, the cutout, the PNG. glibc raises its mmap threshold to the size of the largest block freed
so far (up to 32 MB); after that such buffers come from the heap arenas, whose fragmentation
keeps them, and the server's RSS creeps up request after request (bench/: +400 MB over 40
mixed requests, still rising). A fixed threshold hands every large buffer back to the OS
when it is freed, and two arenas keep per-thread arenas from multiplying the effect.

The threshold is 13 MiB, just above the largest temporaries of the per-image work at the
model's 1024x1024 resolution (a float32 map is 4 MiB, a 3-channel one 12 MiB): those are
allocated dozens of times per image by the guided filter and decontamination, and from the
heap they are reused instead of being mapped and page-faulted afresh each time. The buffers
of large photos (a 12 MP float map is 48 MB) still go back to the OS. Measured on the
200-request soak (bench/README.md): 1 MiB gave peak 1122 MB, final 851 MB, 0.378 img/s;
13 MiB gives peak 1222 MB, final 963 MB, flat (+11 MB per 100 requests), 0.415 img/s. On a
1.5 MP photo the guided upsampling and decontamination took 0.42 s instead of 0.68 s.
Without any setting RSS crept up by 400 MB over 40 requests.
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
    done = mallopt(M_ARENA_MAX, arena_max) == 1 and done
    if not done:
        log.debug("mallopt refused the settings (not glibc?)")
    return done
