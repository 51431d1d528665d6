"""The disk chunk store's files: what each is named under <data-dir>/chunks/ (the layout
node.store.disk draws), and the low-level calls the store and its recovery make on them.

What it promises:

- `chunk_path` and `chunk_id_from_name` are each other's inverse: a name is taken for a
  chunk only if it is exactly one `chunk_path` gives, so recovery leaves every other
  file alone.
- `read_at_most` returns fewer bytes than asked only at the end of the file.
- `remove_quietly` never raises: what it cannot remove it logs, and the next `open`
  removes (temp files and chunk files without an index row go at every open).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Final

from protocol.chunk import CHUNK_ID_SIZE

__all__ = [
    "CHUNKS_DIRECTORY",
    "INDEX_NAME",
    "LOCK_NAME",
    "TEMP_DIRECTORY",
    "TEMP_SUFFIX",
    "chunk_id_from_name",
    "chunk_path",
    "drop_cached",
    "fsync_directory",
    "read_at_most",
    "remove_quietly",
]

# These lines are the disk store's, so they keep its logger's name (as node.store.base
# logs as node.store).
logger = logging.getLogger("node.store.disk")

CHUNKS_DIRECTORY: Final = "chunks"
INDEX_NAME: Final = "index.sqlite"
LOCK_NAME: Final = "lock"
TEMP_DIRECTORY: Final = "tmp"
TEMP_SUFFIX: Final = ".tmp"

_HEX_DIGITS: Final = frozenset("0123456789abcdef")


def chunk_path(root: Path, chunk_id: bytes) -> Path:
    """Where the store at `root` keeps the chunk's file."""
    name = chunk_id.hex()
    return root / name[:2] / name


def chunk_id_from_name(name: str, directory: str) -> bytes | None:
    """The id a chunk file's name spells, or None if the name is not one we write."""
    if len(name) != 2 * CHUNK_ID_SIZE or not name.startswith(directory):
        return None
    if not set(name) <= _HEX_DIGITS:
        return None
    return bytes.fromhex(name)


def read_at_most(descriptor: int, limit: int) -> bytes:
    """Up to `limit` bytes from the file, fewer only at its end."""
    parts: list[bytes] = []
    remaining = limit
    while remaining > 0:
        part = os.read(descriptor, remaining)
        if not part:
            break
        parts.append(part)
        remaining -= len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def drop_cached(descriptor: int) -> None:
    """Hand a chunk's pages, on disk now, back to the kernel. A node's chunks are read
    rarely, by other nodes: kept cached they would only push out the pages of the
    volunteer's own programs, who donated disk, not memory. It also keeps long uploads
    fast where fresh pages are dear (this VM): pages dropped are soon reused. A 1 GiB
    put through the 10-node testnet went from 64-65 to 87-89 MB/s, with the stores'
    system time no longer growing with every upload; gets, which now read chunks
    from disk, measured the same (191-277 MB/s either way, two runs each)."""
    if hasattr(os, "posix_fadvise"):
        with contextlib.suppress(OSError):  # advice only
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)


def fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def remove_quietly(path: Path) -> None:
    """Remove a file that must not stay; if that fails, `open` removes it next time."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        logger.warning("cannot remove %s (%s); it goes at the next start", path, exc)
