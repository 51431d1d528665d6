"""Write a long output file front to back without filling the page cache with it.

A get writes the file it downloads once, front to back, and does not read it again.
Left to itself the kernel keeps every byte of it cached until memory runs short, so a
large download pushes out pages other programs use. `StreamingWriter` does what
`dd oflag=nocache` does: after each write it starts the writeback of what it wrote
(Linux `sync_file_range`), and once the data are more than `keep` bytes behind the
end of the file it waits for that range to be on disk and drops it from the cache
(`POSIX_FADV_DONTNEED`). A file no longer than `keep` stays cached whole.

It also makes the get faster on the VM we measure on, where a page the kernel has
not used before is expensive to touch: 100 MiB written to a new file in 4 MiB writes
cost 0.28 s of system time, and 0.03 s when each write's pages were written back and
dropped a few writes later, so that the kernel reused them. A 100 MiB get through the
10-node testnet went from 166-179 MB/s to 183-198 MB/s.

The price: past `keep` bytes a get goes no faster than the disk takes the data,
where the kernel would otherwise have buffered up to its dirty limit and written it
back after the get returned. Here 100 MiB was written, written back and dropped in
0.06 s, far above what the network delivers; on a slow disk a large get now takes
about as long as the data take to reach the disk.

Where `sync_file_range` does not exist (not Linux) or the file system refuses it,
the writer just writes.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
from typing import Any, Final, Protocol

__all__ = ["DEFAULT_KEEP", "StreamingWriter", "libc_sync_file_range"]

logger = logging.getLogger(__name__)

# How much of the end of the file stays cached: four 4 MiB segments.
DEFAULT_KEEP: Final = 16 * 1024 * 1024

# Dropped ranges end on a multiple of this: POSIX_FADV_DONTNEED drops only the page
# cache folios wholly inside its range, and a folio can be as large as 2 MiB (a huge
# page), so a range ending mid-folio would leave that folio, and the next range,
# starting mid-folio too, would skip it again.
_DROP_ALIGNMENT: Final = 2 * 1024 * 1024

# <linux/fs.h>
_WAIT_BEFORE: Final = 1
_WRITE: Final = 2
_WAIT_AFTER: Final = 4

# What a file system that cannot do it says; the writer then stops trying.
_UNSUPPORTED: Final = frozenset({errno.EINVAL, errno.ESPIPE, errno.ENOSYS, errno.EOPNOTSUPP})


class SyncFileRange(Protocol):
    def __call__(self, fd: int, offset: int, count: int, flags: int) -> int: ...


def libc_sync_file_range() -> SyncFileRange | None:
    """The C library's sync_file_range(2), raising OSError on failure; None where the
    C library has none. (The process's own symbols: `ctypes.util.find_library` would
    run ldconfig at import: 1.4 ms here.)"""
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int

    def sync_file_range(fd: int, offset: int, count: int, flags: int) -> int:
        if function(fd, offset, count, flags) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        return 0

    return sync_file_range


_SYSTEM: Final = libc_sync_file_range()


class StreamingWriter:
    """Writes all of each buffer given to it at the file's current position, and hands
    the pages of what lies more than `keep` bytes behind back to the kernel.

    OSError from the file (a full disk, an I/O error found by the writeback) is the
    caller's to report; an error that only says the file system cannot do the
    writeback turns the dropping off for this file.
    """

    def __init__(
        self,
        file: Any,
        *,
        keep: int = DEFAULT_KEEP,
        sync_file_range: SyncFileRange | None = _SYSTEM,
    ) -> None:
        if keep < 0:
            raise ValueError("keep must not be negative")
        self._file = file
        self._keep = keep
        self._sync = sync_file_range if hasattr(os, "posix_fadvise") else None
        self._fd: int = file.fileno()
        # Where this writer's bytes begin is known after its first write (in append
        # mode, not before): what was in the file before is not its to drop.
        self._dropped: int | None = None

    @property
    def dropping(self) -> bool:
        """Whether written pages are still being handed back."""
        return self._sync is not None

    def write(self, data: memoryview | bytes) -> None:
        view = memoryview(data).cast("B")
        size = view.nbytes
        if not size:
            return
        while view:
            view = view[self._file.write(view) :]
        end = os.lseek(self._fd, 0, os.SEEK_CUR)
        start = end - size
        if self._dropped is None:
            self._dropped = start
        if self._sync is not None:
            try:
                self._write_back(start, end)
            except OSError as exc:
                if exc.errno not in _UNSUPPORTED:
                    raise
                logger.debug("no writeback control for this output: %s", exc)
                self._sync = None

    def _write_back(self, start: int, end: int) -> None:
        assert self._sync is not None and self._dropped is not None
        self._sync(self._fd, start, end - start, _WRITE)
        behind = end - self._keep
        behind -= behind % _DROP_ALIGNMENT
        if behind > self._dropped:
            count = behind - self._dropped
            self._sync(self._fd, self._dropped, count, _WAIT_BEFORE | _WRITE | _WAIT_AFTER)
            os.posix_fadvise(self._fd, self._dropped, count, os.POSIX_FADV_DONTNEED)
            self._dropped = behind
