"""Which pages of a file the page cache holds (mincore(2)), for tests of dropping them."""

from __future__ import annotations

import ctypes
import mmap
import os
from pathlib import Path

PAGE = mmap.PAGESIZE


def can_drop_pages(path: Path) -> bool:
    """Whether this file system lets a written, synced file leave the page cache."""
    if not hasattr(os, "posix_fadvise"):
        return False  # not this platform's call (macOS)
    with open(path, "wb", buffering=0) as file:
        file.write(os.urandom(16 * PAGE))
        os.fsync(file.fileno())
        os.posix_fadvise(file.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    return not any(resident_pages(path))


def resident_pages(path: Path) -> list[bool]:
    libc = ctypes.CDLL(None, use_errno=True)
    with open(path, "r+b") as file, mmap.mmap(file.fileno(), 0) as mapped:
        pages = (len(mapped) + PAGE - 1) // PAGE
        vector = (ctypes.c_ubyte * pages)()
        anchor = ctypes.c_char.from_buffer(mapped)
        try:
            address = ctypes.addressof(anchor)
            if libc.mincore(ctypes.c_void_p(address), ctypes.c_size_t(len(mapped)), vector):
                raise OSError(ctypes.get_errno(), "mincore")
        finally:
            del anchor
        return [bool(byte & 1) for byte in vector]
