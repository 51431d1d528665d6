"""What every chunk store shares: the `ChunkStore` interface, the records it returns,
and the checks a chunk passes before any store takes it.

The contract, for both backends (`DiskChunkStore`, `MemoryChunkStore`):

- A chunk id is the BLAKE3-256 hash of the chunk's bytes, exactly (32 bytes). `put`
  refuses bytes that do not hash to their id (`ChunkMismatch`), chunks over the size
  limit (`ChunkTooLarge`), a group record that is not this chunk's
  (`ChunkMismatch`) and a chunk that would take the store over its capacity
  (`StoreFull`). A refused put changes nothing: bad input never reaches the store.
- When `put` returns, the chunk is acknowledged: it is held, with its group record and
  the time it was stored, until `delete`.
- `put` of a chunk already held is idempotent: nothing is written again and nothing is
  counted twice. If the group record differs, the first one is kept and a warning is
  logged. The same bytes in two groups does not happen by chance (chunks are
  ciphertext under a fresh key per file) and a repairer re-creating a share produces
  the same bytes and the same record, so a different record is a mistake or a peer
  trying to redirect our repairs; the first record, the one the chunk was placed with,
  is the one to trust. The chunk itself is held either way, so the put succeeds.
- `get` returns the bytes only if they still hash to the id; a damaged chunk raises
  `ChunkDamaged` (a `ChunkNotFound`) and is dropped, so the node stops offering it.
- Every error is a `StoreError`; nothing else escapes, whatever ids, bytes and records
  a peer sends.
- A store is safe to call from several threads at once: the node calls it through
  `trio.to_thread.run_sync`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self

from node.errors import ChunkMismatch, ChunkTooLarge, StoreFull
from node.ratelog import RateLimitedLog
from node.store.config import StoreConfig
from protocol import chunk
from protocol.chunk import CHUNK_ID_SIZE, GroupRecord

__all__ = [
    "ChunkInfo",
    "ChunkStore",
    "StoreStatistics",
    "check_chunk",
    "describe_chunk_id",
    "format_size",
    "other_group_log",
    "refuse_if_full",
    "warn_if_other_group",
]

logger = logging.getLogger("node.store")


@dataclass(frozen=True, slots=True)
class ChunkInfo:
    """What the index knows of a chunk; `stored_at` is UNIX seconds (the store's clock)."""

    chunk_id: bytes
    size: int
    group: GroupRecord
    stored_at: float


@dataclass(frozen=True, slots=True)
class StoreStatistics:
    """Counters of a chunk store. Bytes are costs on disk (node/quota.py's `chunk_cost`:
    blocks, index row, group record), not chunk lengths; `free_bytes` is what the
    capacity still allows."""

    chunks: int
    used_bytes: int
    capacity: int
    free_bytes: int
    # Chunks found damaged or missing (and dropped) since the store was opened.
    corrupt_dropped: int


class ChunkStore(Protocol):
    """The chunk store interface; the module docstring states its contract."""

    @property
    def config(self) -> StoreConfig:
        """The configuration the store was opened with."""
        ...

    @property
    def used_bytes(self) -> int:
        """What the acknowledged chunks held cost on disk (node/quota.py)."""
        ...

    def put(self, chunk_id: bytes, data: bytes, group: GroupRecord) -> None:
        """Store `data` under `chunk_id` with its group record; acknowledged on return."""
        ...

    def get(self, chunk_id: bytes) -> bytes:
        """The chunk's bytes, verified against its id."""
        ...

    def has(self, chunk_id: bytes) -> bool:
        """Whether the chunk is held (by the index; `get` is what verifies the bytes)."""
        ...

    def read_ranges(self, chunk_id: bytes, offsets: Sequence[int], length: int) -> bytes | None:
        """`length` bytes of the chunk at each offset, joined, as they are on disk now
        (not checked against the id: an audit's answer, which the auditor judges); None
        if a range runs past the chunk's end. `ChunkNotFound` if it is not held."""
        ...

    def info(self, chunk_id: bytes) -> ChunkInfo:
        """The chunk's size, group record and time stored."""
        ...

    def group(self, chunk_id: bytes) -> GroupRecord:
        """The chunk's group record."""
        ...

    def delete(self, chunk_id: bytes) -> None:
        """Forget the chunk and free its space; `ChunkNotFound` if it is not held."""
        ...

    def chunk_ids(self) -> Iterator[bytes]:
        """The ids of the chunks held, in increasing order. Chunks put or deleted while
        iterating may or may not be seen."""
        ...

    def statistics(self) -> StoreStatistics:
        """The store's counters."""
        ...

    def close(self) -> None:
        """Close the store; closing twice is harmless, any other use raises StoreError."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...


def check_chunk(chunk_id: bytes, data: bytes, group: GroupRecord, config: StoreConfig) -> None:
    """Raise unless `data` may be stored as `chunk_id` in `group` under `config`.

    The size is checked before the hash, so an oversized chunk is refused unread.
    """
    if not isinstance(chunk_id, bytes) or len(chunk_id) != CHUNK_ID_SIZE:
        size = len(chunk_id) if isinstance(chunk_id, bytes) else type(chunk_id).__name__
        raise ChunkMismatch(f"a chunk id is {CHUNK_ID_SIZE} bytes (BLAKE3-256), not {size}")
    if not isinstance(group, GroupRecord):
        raise ChunkMismatch(f"expected a GroupRecord, not {type(group).__name__}")
    if group.chunk_id != chunk_id:
        raise ChunkMismatch(
            f"the group record has chunk {group.chunk_id.hex()} at index {group.index}, "
            f"not chunk {chunk_id.hex()}"
        )
    if len(data) > config.max_chunk_size:
        raise ChunkTooLarge(
            f"chunk {chunk_id.hex()} is {format_size(len(data))}; this store takes chunks "
            f"of at most {format_size(config.max_chunk_size)}"
        )
    actual = chunk.chunk_id(data)
    if actual != chunk_id:
        raise ChunkMismatch(f"the bytes offered as chunk {chunk_id.hex()} hash to {actual.hex()}")


def refuse_if_full(used: int, size: int, capacity: int, chunk_id: bytes) -> None:
    """Raise `StoreFull` if a chunk of `size` bytes does not fit beside `used` bytes."""
    if used + size > capacity:
        raise StoreFull(
            f"capacity {format_size(capacity)} reached: {format_size(used)} used, "
            f"chunk {chunk_id.hex()} needs {format_size(size)}"
        )


def other_group_log() -> RateLimitedLog:
    """A store's own budget for `warn_if_other_group`: a peer can offer a held chunk
    with another record as often as it likes, and gets a line a minute."""
    return RateLimitedLog(logger)


def warn_if_other_group(
    chunk_id: bytes, held: GroupRecord, offered: GroupRecord, log: RateLimitedLog
) -> None:
    """Log that a put of a chunk already held came with another group record, which is
    ignored (the module docstring says why)."""
    if held != offered:
        log.warning(
            "other group",
            "chunk %s is already held in group %d-of-%d at index %d; keeping that record "
            "and ignoring another (%d-of-%d at index %d)",
            chunk_id.hex(),
            held.k,
            held.n,
            held.index,
            offered.k,
            offered.n,
            offered.index,
        )


def describe_chunk_id(chunk_id: object) -> str:
    """A chunk id for a message: its hex digits, or the repr of something that is not one."""
    return chunk_id.hex() if isinstance(chunk_id, bytes) else repr(chunk_id)


def format_size(size: int) -> str:
    """`size` bytes for a person: "512 B", "1.4 MiB", "100 MiB"."""
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    value = float(size)
    unit = 0
    while abs(value) >= 1024 and unit < len(units) - 1:
        value /= 1024
        unit += 1
    if unit == 0:
        return f"{size} B"
    return f"{value:.1f}".removesuffix(".0") + f" {units[unit]}"
