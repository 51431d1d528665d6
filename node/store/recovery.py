"""What `DiskChunkStore.open` does before the store is used: remove a crash's leftovers
and make the index and the chunk files agree (node.store.disk states the promise).

`recover` creates tmp/ and any missing fan-out directory, then lists and stats every
file once, reading none (node.store.disk says why), and:

- removes every temp file: a put that never finished;
- removes every chunk file without an index row: written, never acknowledged;
- drops every index row whose file is missing or of the wrong size (see below);
- leaves alone, with a warning, whatever is not a file of a name the store writes.

An index row without its file, or with a file of the wrong size, cannot come from a
crash: the file is durable before its row exists, and `delete` removes the row before
the file. It means something outside the store: a file deleted or truncated by hand, a
damaged file system, a disk that acknowledged an fsync it did not do, a restore from an
inconsistent backup. `open` drops such rows with a warning, and the chunk is lost to
this node; the network repairs its group (DESIGN.md#durability-without-an-owner).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from node.errors import StoreError
from node.store.index import ChunkIndex
from node.store.layout import (
    TEMP_DIRECTORY,
    chunk_id_from_name,
    chunk_path,
    fsync_directory,
    remove_quietly,
)

__all__ = ["RecoveryReport", "recover"]

# These lines are the disk store's, so they keep its logger's name (as node.store.base
# logs as node.store).
logger = logging.getLogger("node.store.disk")


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What `open` cleaned up: leftovers of a crash, and damage found in the index."""

    temp_files_removed: int = 0
    # Chunk files without an index row: written, never acknowledged.
    unacknowledged_removed: int = 0
    # Index rows dropped because their file was missing or of the wrong size.
    damaged_rows_dropped: int = 0


def recover(root: Path, index: ChunkIndex) -> RecoveryReport:
    """Remove a crash's leftovers under `root` and make `index` and the files agree."""
    try:
        temp_directory = root / TEMP_DIRECTORY
        temp_directory.mkdir(mode=0o700, exist_ok=True)
        temp_files_removed = _remove_temp_files(temp_directory)
        created = False
        unacknowledged = 0
        damaged: list[tuple[bytes, str]] = []
        for prefix in range(256):
            directory = root / f"{prefix:02x}"
            if not directory.is_dir():
                directory.mkdir(mode=0o700)
                created = True
            removed, bad_rows = _reconcile(index, prefix, directory)
            unacknowledged += removed
            damaged.extend(bad_rows)
        if created:
            fsync_directory(root)
    except OSError as exc:
        raise StoreError(f"cannot recover the chunk store at {root}: {exc}") from exc
    if damaged:
        index.delete([key for key, _ in damaged], "dropping damaged rows")
    for chunk_id, problem in damaged:
        logger.warning(
            "chunk %s in %s was lost (%s); dropped from the index",
            chunk_id.hex(),
            root,
            problem,
        )
        remove_quietly(chunk_path(root, chunk_id))
    if temp_files_removed or unacknowledged:
        logger.info(
            "chunk store %s: removed %d temp files and %d unacknowledged chunk files",
            root,
            temp_files_removed,
            unacknowledged,
        )
    return RecoveryReport(temp_files_removed, unacknowledged, len(damaged))


def _remove_temp_files(temp_directory: Path) -> int:
    removed = 0
    with os.scandir(temp_directory) as entries:
        for entry in entries:
            if entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed += 1
            else:
                logger.warning("leaving %s alone: not a temp file of ours", entry.path)
    return removed


def _reconcile(
    index: ChunkIndex, prefix: int, directory: Path
) -> tuple[int, list[tuple[bytes, str]]]:
    """Compare one fan-out directory with its index rows. Deletes files without a
    row; returns how many, and the rows whose file is missing or of the wrong size."""
    sizes = index.sizes_under_prefix(prefix)
    damaged: list[tuple[bytes, str]] = []
    removed = 0
    with os.scandir(directory) as entries:
        for entry in entries:
            chunk_id = chunk_id_from_name(entry.name, directory.name)
            if chunk_id is None or not entry.is_file(follow_symlinks=False):
                logger.warning("leaving %s alone: not a chunk file", entry.path)
                continue
            if chunk_id not in sizes:
                os.unlink(entry.path)  # written but never acknowledged
                removed += 1
                continue
            size = sizes.pop(chunk_id)
            actual = entry.stat(follow_symlinks=False).st_size
            if actual != size:
                damaged.append((chunk_id, f"its file holds {actual} bytes, not {size}"))
    damaged.extend((chunk_id, "its file is missing") for chunk_id in sizes)
    return removed, damaged
