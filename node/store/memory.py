"""The chunk store in memory, for tests and simulations (chosen by `StoreConfig.in_memory`).

It keeps the `ChunkStore` contract (node.store.base) exactly as the disk store does,
refusals and capacity included, so that code tested against it behaves the same on
disk. It has nothing to recover and nothing to corrupt: the bytes are immutable
`bytes` objects, so `get` returns them without hashing again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType

from node.errors import ChunkNotFound, StoreError
from node.quota import chunk_cost
from node.store.base import (
    ChunkInfo,
    StoreStatistics,
    check_chunk,
    describe_chunk_id,
    other_group_log,
    refuse_if_full,
    warn_if_other_group,
)
from node.store.config import StoreConfig
from protocol.audit import stripe
from protocol.chunk import GroupRecord

__all__ = ["MemoryChunkStore"]


class MemoryChunkStore:
    """Chunks in a dict, under the same rules as `DiskChunkStore`."""

    def __init__(
        self, config: StoreConfig | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        """An empty store; `clock` gives the stored time of new chunks."""
        self._config = config or StoreConfig(in_memory=True)
        self._clock = clock
        self._other_group_log = other_group_log()
        self._guard = threading.Lock()
        self._chunks: dict[bytes, tuple[bytes, ChunkInfo]] = {}
        self._used = 0
        self._closed = False

    def close(self) -> None:
        """Close the store, dropping its chunks. Closing twice is harmless."""
        with self._guard:
            self._closed = True
            self._chunks.clear()
            self._used = 0

    def __enter__(self) -> MemoryChunkStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def config(self) -> StoreConfig:
        """The configuration the store was made with."""
        return self._config

    @property
    def used_bytes(self) -> int:
        """What the chunks held cost on disk (node/quota.py)."""
        with self._guard:
            return self._used

    def put(self, chunk_id: bytes, data: bytes, group: GroupRecord) -> None:
        """Hold `data` under `chunk_id` with its group record."""
        check_chunk(chunk_id, data, group, self._config)  # hashes; outside the lock
        with self._guard:
            self._check_open()
            held = self._chunks.get(chunk_id)
            if held is not None:
                warn_if_other_group(chunk_id, held[1].group, group, self._other_group_log)
                return
            cost = chunk_cost(len(data), group.n)
            refuse_if_full(self._used, cost, self._config.capacity, chunk_id)
            info = ChunkInfo(chunk_id, len(data), group, float(self._clock()))
            self._chunks[chunk_id] = (bytes(data), info)
            self._used += cost

    def get(self, chunk_id: bytes) -> bytes:
        """The chunk's bytes."""
        with self._guard:
            return self._held(chunk_id)[0]

    def has(self, chunk_id: bytes) -> bool:
        """Whether the chunk is held."""
        with self._guard:
            self._check_open()
            return chunk_id in self._chunks

    def read_ranges(self, chunk_id: bytes, offsets: Sequence[int], length: int) -> bytes | None:
        """The bytes at `offsets` (ChunkStore.read_ranges)."""
        with self._guard:
            data, _ = self._held(chunk_id)
        return stripe(data, offsets, length)

    def info(self, chunk_id: bytes) -> ChunkInfo:
        """The chunk's size, group record and time stored."""
        with self._guard:
            return self._held(chunk_id)[1]

    def group(self, chunk_id: bytes) -> GroupRecord:
        """The chunk's group record."""
        return self.info(chunk_id).group

    def delete(self, chunk_id: bytes) -> None:
        """Forget the chunk; `ChunkNotFound` if it is not held."""
        with self._guard:
            data, info = self._held(chunk_id)
            del self._chunks[chunk_id]
            self._used -= chunk_cost(len(data), info.group.n)

    def chunk_ids(self) -> Iterator[bytes]:
        """The ids held when iteration starts, in increasing order."""
        with self._guard:
            self._check_open()
            ids = sorted(self._chunks)
        yield from ids

    def statistics(self) -> StoreStatistics:
        """Chunks and bytes held, the capacity and what it still allows."""
        with self._guard:
            self._check_open()
            capacity = self._config.capacity
            return StoreStatistics(
                chunks=len(self._chunks),
                used_bytes=self._used,
                capacity=capacity,
                free_bytes=max(0, capacity - self._used),
                corrupt_dropped=0,
            )

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("the in-memory chunk store is closed")

    def _held(self, chunk_id: bytes) -> tuple[bytes, ChunkInfo]:
        self._check_open()
        held = self._chunks.get(chunk_id) if isinstance(chunk_id, bytes) else None
        if held is None:
            raise ChunkNotFound(f"chunk {describe_chunk_id(chunk_id)} is not in this store")
        return held
