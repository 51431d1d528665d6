"""glibc malloc tuning for the node's multi-MiB buffers.

With glibc's default thresholds, every buffer of a few MiB (a segment, a chunk, an
encrypted frame) is its own mmap, so each allocation page-faults its memory in again:
`python -m benchmarks encoding` measured 551 page faults per segment and two-thread
encoding at 1.55 x one thread, against 0 faults and 1.97 x with the thresholds below.
Raising M_MMAP_THRESHOLD keeps such buffers on the heap, where freed memory is reused;
M_TRIM_THRESHOLD must be set with it (setting one pins the other), and bounds how much
free heap the process keeps rather than returning to the system. The benchmark's 256
MiB keeps everything; 16 MiB here holds a few segments' worth, and kept the uploading
node of a 1 GiB put at 91 MiB of peak RSS where 64 MiB let it reach 114.

M_ARENA_MAX is 1: by default glibc gives each thread that allocates its own arena, and
each arena keeps up to the trim threshold of free memory; with the encoder's, the
decoder's and trio's worker threads all allocating multi-MiB buffers, the node that got
a 1 GiB file peaked at 119 MiB of RSS, and at 80 MiB with one arena. Threads here
allocate little besides those buffers, so they hardly contend for its lock.

Elsewhere than glibc (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import logging
from typing import Final

__all__ = ["ARENA_MAX", "MMAP_THRESHOLD", "TRIM_THRESHOLD", "tune_allocator"]

logger = logging.getLogger(__name__)

# malloc.h
_M_TRIM_THRESHOLD: Final = -1
_M_MMAP_THRESHOLD: Final = -3
_M_ARENA_MAX: Final = -8
MMAP_THRESHOLD: Final = 32 * 1024 * 1024
TRIM_THRESHOLD: Final = 16 * 1024 * 1024
ARENA_MAX: Final = 1


def tune_allocator(
    mmap_threshold: int = MMAP_THRESHOLD,
    trim_threshold: int = TRIM_THRESHOLD,
    arena_max: int = ARENA_MAX,
) -> bool:
    """Set glibc's malloc thresholds and arena count for this process; whether it could."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done: bool = (
        mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1
        and mallopt(_M_TRIM_THRESHOLD, trim_threshold) == 1
        and mallopt(_M_ARENA_MAX, arena_max) == 1
    )
    if not done:
        logger.info("mallopt refused the thresholds; keeping the C library's defaults")
    return done
