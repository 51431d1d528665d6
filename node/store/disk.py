"""The chunk store on disk: one file per chunk under <data-dir>/chunks/, an SQLite index.

The store owns <data-dir>/chunks/ and everything in it:

    chunks/lock            held (flock) while a store is open: one process at a time
    chunks/index.sqlite    the index (WAL, so also -wal and -shm files beside it)
    chunks/tmp/            temp files of puts in progress
    chunks/ab/abcd...      a chunk, named by the 64 hex digits of its id, in the
                           directory of its first two (256 directories of fan-out)

node.store.layout holds these names and the low-level calls on the files;
node.store.index holds the SQLite index, its schema and every query;
node.store.recovery is what `open` does after a crash, and why a row can lose its file.

What it promises, on top of the `ChunkStore` contract (node.store.base):

- Acknowledged means durable. `put` writes the bytes to a temp file, fsyncs it, renames
  it into place and fsyncs the directory, and only then inserts the index row and
  commits it with `synchronous = FULL` (node.store.index says why). When `put` returns,
  the chunk survives a kill of the process at any instant and, as far as the disk
  honours fsync, a power cut.
- A put that fails, for any reason (capacity, a full disk or quota, an I/O error, a bad
  chunk), leaves no file behind and the index as it was.
- A crash leaves at worst temp files and chunk files without an index row (written but
  not acknowledged). `open` deletes both, so after a restart every acknowledged chunk
  is present and the index and the files agree.
- Every `get` verifies the bytes against the id. `open` lists and stats every chunk file
  but reads none: rehashing them all would read the whole store back at disk speed
  (over half an hour per terabyte even from an SSD) before the node could start.
  Damage is found when a chunk is read.

A corrupt chunk is deleted, not quarantined: its bytes are worth nothing (any k of its
siblings rebuild it) and a quarantine directory would need a size limit of its own. The
warning logged names the chunk and what was wrong.

Threads. One lock guards the SQLite connection and the counters; writing, reading and
hashing chunk bytes happen outside it, so a slow put does not hold up reads. A put
reserves its size under the lock before writing, so puts running together never exceed
the capacity; a put of an id whose put is in flight waits for that one to finish.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Final

from node.errors import ChunkDamaged, ChunkNotFound, StoreError, StoreFull
from node.quota import chunk_cost
from node.store.base import (
    ChunkInfo,
    StoreStatistics,
    check_chunk,
    describe_chunk_id,
    format_size,
    other_group_log,
    refuse_if_full,
    warn_if_other_group,
)
from node.store.config import StoreConfig
from node.store.index import ChunkIndex
from node.store.layout import (
    CHUNKS_DIRECTORY,
    LOCK_NAME,
    TEMP_DIRECTORY,
    TEMP_SUFFIX,
    chunk_path,
    drop_cached,
    fsync_directory,
    read_at_most,
    remove_quietly,
)
from node.store.recovery import RecoveryReport, recover
from protocol import chunk
from protocol.chunk import GroupRecord

__all__ = ["DiskChunkStore", "WriteFunction"]

logger = logging.getLogger(__name__)

WriteFunction = Callable[[int, memoryview], int]
"""Writes some of the bytes to a file descriptor and says how many: `os.write`."""

# Ids read per query by `chunk_ids()`, so that iterating a big store holds neither the
# lock nor every id at once.
ID_PAGE_SIZE: Final = 1024
# The errors that mean "no room": a full file system, or the user's quota used up.
_NO_SPACE: Final = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up"}


class DiskChunkStore:
    """Chunks in files, indexed in SQLite. Create with `DiskChunkStore.open(data_dir)`;
    its `recovery` then says what the open cleaned up."""

    def __init__(
        self,
        root: Path,
        config: StoreConfig,
        index: ChunkIndex,
        lock_descriptor: int,
        *,
        write: WriteFunction,
        clock: Callable[[], float],
    ) -> None:
        """Wrap a prepared index and held lock; use `open` instead."""
        self._root = root
        self._temp_directory = root / TEMP_DIRECTORY
        self._config = config
        self._index: ChunkIndex | None = index
        self._lock_descriptor = lock_descriptor
        self._write = write
        self._clock = clock
        self._other_group_log = other_group_log()
        # Guards everything below, and the index.
        self._guard = threading.Condition()
        self._used = 0
        self._chunks = 0
        self._reserved = 0  # bytes of puts writing their file now
        self._in_flight: set[bytes] = set()
        self._corrupt_dropped = 0
        self.recovery = RecoveryReport()

    @classmethod
    def open(
        cls,
        data_dir: str | Path,
        config: StoreConfig | None = None,
        *,
        write: WriteFunction = os.write,
        clock: Callable[[], float] = time.time,
    ) -> DiskChunkStore:
        """Open (or create) the store under `<data_dir>/chunks/` and recover from a crash.

        `write` is the function every chunk byte goes through (`os.write`; it may write
        fewer bytes than asked); `clock` gives the stored time of new chunks. Raises
        `StoreError` if the directory cannot be used, another process has the store
        open, or the index is not a Freehold chunk index of this schema version.
        """
        config = config or StoreConfig()
        root = Path(data_dir) / CHUNKS_DIRECTORY
        try:
            if not root.is_dir():
                root.mkdir(mode=0o700, parents=True)
                fsync_directory(root.parent)  # the store's first chunk must not vanish
            lock_descriptor = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot open the chunk store at {root}: {exc}") from exc
        try:
            try:
                fcntl.flock(lock_descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreError(
                    f"the chunk store at {root} is in use by another process "
                    "(is another Freehold node running on this data directory?)"
                ) from None
            except OSError as exc:
                raise StoreError(f"cannot lock the chunk store at {root}: {exc}") from exc
            index = ChunkIndex.open(root)
        except BaseException:
            os.close(lock_descriptor)
            raise
        store = cls(root, config, index, lock_descriptor, write=write, clock=clock)
        try:
            store._recover()
        except BaseException:
            store.close()
            raise
        return store

    def close(self) -> None:
        """Close the index and release the store. Closing twice is harmless."""
        with self._guard:
            index, self._index = self._index, None
            if index is None:
                return
            self._guard.notify_all()  # puts waiting on an id in flight see the store closed
            try:
                index.close()
            finally:
                os.close(self._lock_descriptor)  # releases the flock

    def __enter__(self) -> DiskChunkStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ the interface

    @property
    def config(self) -> StoreConfig:
        """The configuration the store was opened with."""
        return self._config

    @property
    def root(self) -> Path:
        """The directory the store owns: `<data-dir>/chunks`."""
        return self._root

    @property
    def used_bytes(self) -> int:
        """What the acknowledged chunks held cost on disk (node/quota.py)."""
        with self._guard:
            return self._used

    def put(self, chunk_id: bytes, data: bytes, group: GroupRecord) -> None:
        """Store `data` under `chunk_id` with its group record; durable on return."""
        check_chunk(chunk_id, data, group, self._config)  # hashes; outside the lock
        size = len(data)
        cost = chunk_cost(size, group.n)
        with self._guard:
            while chunk_id in self._in_flight:
                self._guard.wait()
            row = self._row(chunk_id)
            if row is not None:
                warn_if_other_group(chunk_id, row.group, group, self._other_group_log)
                return
            refuse_if_full(self._used + self._reserved, cost, self._config.capacity, chunk_id)
            self._reserved += cost
            self._in_flight.add(chunk_id)
        acknowledged = False
        try:
            path = self._write_file(chunk_id, data)
            try:
                with self._guard:
                    self._opened_index().insert(chunk_id, size, group, self._clock())
                    self._used += cost
                    self._chunks += 1
                    self._reserved -= cost
                    acknowledged = True
            finally:
                if not acknowledged:
                    remove_quietly(path)
        finally:
            with self._guard:
                if not acknowledged:
                    self._reserved -= cost
                self._in_flight.discard(chunk_id)
                self._guard.notify_all()

    def get(self, chunk_id: bytes) -> bytes:
        """The chunk's bytes, verified against its id; `ChunkDamaged` (and the chunk is
        dropped) if its file is damaged or gone."""
        descriptor, size, path = self._open_chunk(chunk_id)
        try:
            try:
                opened = os.fstat(descriptor)
                data = read_at_most(descriptor, size + 1)
            except OSError as exc:
                raise StoreError(f"cannot read chunk file {path}: {exc}") from exc
            if len(data) != size:
                problem = f"its file holds {len(data)} bytes, not {size}"
            elif (actual := chunk.chunk_id(data)) != chunk_id:
                problem = f"its bytes hash to {actual.hex()}"
            else:
                return data
            with self._guard:
                self._drop_if_same_file(chunk_id, opened, problem)
            raise ChunkDamaged(
                f"chunk {chunk_id.hex()} was corrupt on disk ({problem}); "
                "it has been deleted and will not be offered again"
            )
        finally:
            os.close(descriptor)

    def read_ranges(self, chunk_id: bytes, offsets: Sequence[int], length: int) -> bytes | None:
        """The bytes at `offsets` as the chunk's file holds them now (ChunkStore.read_ranges):
        a few preads, not the whole chunk. A missing file drops the chunk (ChunkDamaged)."""
        descriptor, size, path = self._open_chunk(chunk_id)
        try:
            if any(offset < 0 or offset + length > size for offset in offsets):
                return None
            try:
                pieces = [os.pread(descriptor, length, offset) for offset in offsets]
            except OSError as exc:
                raise StoreError(f"cannot read chunk file {path}: {exc}") from exc
            # A file shorter than the index says answers short: the audit fails it.
            return b"".join(pieces)
        finally:
            os.close(descriptor)

    def _open_chunk(self, chunk_id: bytes) -> tuple[int, int, Path]:
        """The chunk's open file, its size by the index, and its path; the caller
        closes it. Opened under the lock, so a concurrent delete happens wholly before
        (not found) or after (we still read the file we opened). A missing file drops
        the chunk: ChunkDamaged."""
        with self._guard:
            size = self._size(chunk_id)
            path = self._path(chunk_id)
            try:
                return os.open(path, os.O_RDONLY), size, path
            except FileNotFoundError:
                self._drop(chunk_id, "its file is missing")
                raise ChunkDamaged(
                    f"chunk {chunk_id.hex()} was lost: its file {path} is missing; "
                    "it has been dropped from the index"
                ) from None
            except OSError as exc:
                raise StoreError(f"cannot open chunk file {path}: {exc}") from exc

    def has(self, chunk_id: bytes) -> bool:
        """Whether the index holds the chunk (`get` is what verifies the bytes)."""
        with self._guard:
            return self._row(chunk_id) is not None

    def info(self, chunk_id: bytes) -> ChunkInfo:
        """The chunk's size, group record and time stored."""
        with self._guard:
            row = self._row(chunk_id)
        if row is None:
            raise ChunkNotFound(f"chunk {describe_chunk_id(chunk_id)} is not in this store")
        return row

    def group(self, chunk_id: bytes) -> GroupRecord:
        """The chunk's group record."""
        return self.info(chunk_id).group

    def delete(self, chunk_id: bytes) -> None:
        """Forget the chunk and free its space; `ChunkNotFound` if it is not held."""
        with self._guard:
            cost = self._cost(chunk_id)
            # The row goes first: a crash in between leaves a file without a row, which
            # `open` removes, never a row without its file.
            self._opened_index().delete([chunk_id], f"deleting chunk {chunk_id.hex()}")
            self._used -= cost
            self._chunks -= 1
            remove_quietly(self._path(chunk_id))

    def chunk_ids(self) -> Iterator[bytes]:
        """The ids held, in increasing order, read a page at a time. Chunks put or
        deleted while iterating may or may not be seen."""
        after = b""  # sorts before every id
        while True:
            with self._guard:
                page = self._opened_index().ids_after(after, ID_PAGE_SIZE)
            yield from page
            if len(page) < ID_PAGE_SIZE:
                return
            after = page[-1]

    def statistics(self) -> StoreStatistics:
        """Chunks and bytes held, the capacity and what it still allows."""
        with self._guard:
            self._opened_index()
            capacity = self._config.capacity
            return StoreStatistics(
                chunks=self._chunks,
                used_bytes=self._used,
                capacity=capacity,
                free_bytes=max(0, capacity - self._used - self._reserved),
                corrupt_dropped=self._corrupt_dropped,
            )

    # ------------------------------------------------------------------ files

    def _path(self, chunk_id: bytes) -> Path:
        return chunk_path(self._root, chunk_id)

    def _write_file(self, chunk_id: bytes, data: bytes) -> Path:
        """Write the chunk's file durably (temp, fsync, rename, fsync the directory) and
        return its path; on any failure remove what was written and raise."""
        path = self._path(chunk_id)
        temp: str | None = None
        renamed = False
        try:
            descriptor, temp = tempfile.mkstemp(
                prefix=chunk_id.hex()[:16] + "-", suffix=TEMP_SUFFIX, dir=self._temp_directory
            )
            try:
                remaining = memoryview(data)
                while remaining:
                    written = self._write(descriptor, remaining)
                    if written <= 0:
                        raise OSError(errno.EIO, "the write made no progress")
                    remaining = remaining[written:]
                os.fsync(descriptor)
                drop_cached(descriptor)
            finally:
                os.close(descriptor)
            os.rename(temp, path)
            renamed = True
            fsync_directory(path.parent)
        except BaseException as exc:
            if renamed:
                remove_quietly(path)
            elif temp is not None:
                remove_quietly(Path(temp))
            if isinstance(exc, OSError):
                raise self._write_error(exc, chunk_id, len(data)) from exc
            raise
        return path

    def _write_error(self, exc: OSError, chunk_id: bytes, size: int) -> StoreError:
        doing = f"cannot store chunk {chunk_id.hex()} ({format_size(size)}) in {self._root}"
        if exc.errno in _NO_SPACE:
            return StoreFull(
                f"{doing}: {_NO_SPACE[exc.errno]} ({exc.strerror}); "
                "free some space or lower the store's capacity"
            )
        return StoreError(f"{doing}: {exc}")

    def _drop(self, chunk_id: bytes, problem: str) -> None:
        """Forget a chunk found damaged: its row, its file, its cost in the counters."""
        logger.warning("dropping chunk %s from %s: %s", chunk_id.hex(), self._root, problem)
        cost = self._cost(chunk_id)
        self._opened_index().delete([chunk_id], f"dropping corrupt chunk {chunk_id.hex()}")
        self._used -= cost
        self._chunks -= 1
        self._corrupt_dropped += 1
        remove_quietly(self._path(chunk_id))

    def _drop_if_same_file(self, chunk_id: bytes, opened: os.stat_result, problem: str) -> None:
        """`_drop`, unless the chunk went (or was put anew) while we read it."""
        if self._index is None:
            return
        row = self._row(chunk_id)
        if row is None:
            return
        try:
            current = os.stat(self._path(chunk_id))
        except OSError:
            current = None
        if current is not None and (current.st_dev, current.st_ino) != (
            opened.st_dev,
            opened.st_ino,
        ):
            return
        self._drop(chunk_id, problem)

    # ------------------------------------------------------------------ recovery

    def _recover(self) -> None:
        """Recover from a crash (node.store.recovery), then count what is held."""
        index = self._opened_index()
        recovery = recover(self._root, index)
        self._chunks, self._used = index.totals()
        self.recovery = recovery

    # ------------------------------------------------------------------ the index

    def _opened_index(self) -> ChunkIndex:
        if self._index is None:
            raise StoreError(f"the chunk store at {self._root} is closed")
        return self._index

    def _row(self, chunk_id: bytes) -> ChunkInfo | None:
        """The chunk's row, or None. Call with the lock held."""
        return self._opened_index().row(chunk_id)

    def _cost(self, chunk_id: bytes) -> int:
        """The held chunk's cost on disk (node/quota.py); `ChunkNotFound` if it is not
        held. Lock held."""
        row = self._row(chunk_id)
        if row is None:
            raise ChunkNotFound(f"chunk {describe_chunk_id(chunk_id)} is not in this store")
        return chunk_cost(row.size, row.group.n)

    def _size(self, chunk_id: bytes) -> int:
        """The held chunk's size; `ChunkNotFound` if it is not held. Lock held."""
        row = self._row(chunk_id)
        if row is None:
            raise ChunkNotFound(f"chunk {describe_chunk_id(chunk_id)} is not in this store")
        return row.size
