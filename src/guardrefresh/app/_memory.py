"""Process-wide allocator settings for a long-running service (glibc only)."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

logger = logging.getLogger(__name__)

# From glibc's <malloc.h>.
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 128 * 1024
ARENA_MAX = 2


def tune_allocator() -> bool:
    """Make freed large buffers go back to the OS; returns whether it applied.

    Compaction and refreshes build snapshot-sized buffers in worker threads. glibc
    raises its mmap threshold dynamically after such frees and keeps the memory in
    per-thread arenas, so the process grew by about a snapshot per compaction
    (measured in the soak test: +15% to +45% RSS in 60 s; with these settings
    +1% to +2%). A fixed threshold and two arenas stop that. No-op elsewhere.
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(_M_ARENA_MAX, ARENA_MAX)
    )
    if not applied:
        logger.debug("mallopt refused the allocator settings")
    return applied
