"""The chunk store's limits and backend, in one validated frozen dataclass (h2's model)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["StoreConfig"]

MiB: Final = 1024 * 1024
GiB: Final = 1024 * MiB

# A chunk is read whole into memory and hashed in one call; beyond this a "chunk" is a
# mistake, whatever the configuration says.
MAX_CHUNK_SIZE_LIMIT: Final = 256 * MiB


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """How much the store may hold, the largest chunk, and where chunks live."""

    # Bytes of chunk data this node agrees to hold: the disk space it donates. Only chunk
    # bytes count; the index and the file system's block rounding take a little more.
    # A store reopened with a capacity below what it holds keeps its chunks and refuses
    # new ones until it is under the capacity again.
    capacity: int = 10 * GiB
    # Largest chunk accepted. The default segment (4 MiB) split 3-of-10 gives chunks of
    # about 1.4 MiB; a whole segment as one chunk still fits with room to spare.
    max_chunk_size: int = 16 * MiB
    # Keep chunks in memory (`MemoryChunkStore`) instead of under <data-dir>/chunks/:
    # tests and simulations choose their storage by configuration (issue 6).
    in_memory: bool = False

    def __post_init__(self) -> None:
        for name in ("capacity", "max_chunk_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"StoreConfig.{name} must be an integer number of bytes")
        if self.capacity < 0:
            raise ValueError("StoreConfig.capacity must not be negative")
        if not 1 <= self.max_chunk_size <= MAX_CHUNK_SIZE_LIMIT:
            raise ValueError(
                f"StoreConfig.max_chunk_size must be between 1 byte and "
                f"{MAX_CHUNK_SIZE_LIMIT // MiB} MiB"
            )
