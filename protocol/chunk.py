"""The chunk: what every holder keeps, and the group record it is kept with.

docs/PROTOCOL.md#chunks and #group-records. A chunk is one erasure-coded block of a
file's ciphertext (or a manifest, or a part of one), named by the BLAKE3-256 hash of its
bytes and nothing else. Every chunk travels and is stored with its group record: k, n,
its index in 0..n-1 and the ids of all n chunks of its group, its own at position
`index`. With it a holder can watch its siblings and repair the group without the
file's key or manifest.

This module is the one home of those definitions: the chunk id and its size, the
largest group, the largest chunk, hashing, and `GroupRecord`, which is at once the
store's record and the wire's struct (STORE_CHUNK and CHUNK carry it as it is).

What it promises:

- A `GroupRecord` that exists is valid: its constructor checks every field and raises
  `InvalidGroupRecord` (a `RemoteProtocolError`, since records come from peers and from
  disk), never anything else, whatever it is given. On the wire the codec also checks
  each field's limits before the record is built.
- `chunk_id` is the only way a chunk is named; `check_chunk` the only way bytes are
  checked against a name.
- Sans-I/O: pure functions and values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Final

import blake3

from protocol.aead import BytesLike
from protocol.errors import InvalidGroupRecord
from protocol.schema import Bytes, Int, Items

__all__ = [
    "CHUNK_ID_SIZE",
    "MAX_CHUNK_SIZE",
    "MAX_SHARES",
    "ChunkId",
    "GroupRecord",
    "chunk_id",
    "is_chunk",
]

CHUNK_ID_SIZE: Final = 32
"""Bytes in a chunk id: the BLAKE3-256 hash of the chunk's bytes."""

MAX_SHARES: Final = 256
"""Largest n, and so the most chunks in one group: zfec numbers blocks with one byte."""

MAX_CHUNK_SIZE: Final = 4 * 1024 * 1024 + 16 * 1024
"""Largest chunk on the wire: a 4 MiB segment with k = 1, its tag and zfec padding,
with room to spare; it fits one frame (protocol/messages.py's DEFAULT_MAX_FRAME_SIZE)
beside the group record of a full group."""

ChunkId = Annotated[bytes, Bytes(exact_len=CHUNK_ID_SIZE)]
"""A chunk id as a wire field."""


def chunk_id(data: BytesLike) -> bytes:
    """The id of a chunk: BLAKE3-256 of its bytes."""
    return blake3.blake3(data).digest()


def is_chunk(identifier: bytes, data: BytesLike) -> bool:
    """Whether `data` is the chunk named `identifier` (it hashes to it)."""
    return chunk_id(data) == identifier


@dataclass(frozen=True, slots=True)
class GroupRecord:
    """k-of-n, this chunk's index, and the ids of the group's n chunks (its own
    included): any k of the n chunks `chunk_ids` rebuild the group's data, and the
    chunk this record is kept with is `chunk_ids[index]`."""

    k: Annotated[int, Int(min=1, max=MAX_SHARES)]
    n: Annotated[int, Int(min=1, max=MAX_SHARES)]
    index: Annotated[int, Int(min=0, max=MAX_SHARES - 1)]
    chunk_ids: Annotated[tuple[ChunkId, ...], Items(min_items=1, max_items=MAX_SHARES)]

    def __post_init__(self) -> None:
        problem = _problem(self.k, self.n, self.index, self.chunk_ids)
        if problem is not None:
            raise InvalidGroupRecord(f"invalid group record: {problem}")

    @property
    def chunk_id(self) -> bytes:
        """The id of the chunk this record belongs to: `chunk_ids[index]`."""
        return self.chunk_ids[self.index]

    @classmethod
    def single(cls, identifier: bytes) -> GroupRecord:
        """The record of a chunk that is a group of its own (k = n = 1): a manifest or a
        part of one, replicated rather than erasure-coded."""
        return cls(1, 1, 0, (identifier,))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _kind(value: object) -> str:
    if isinstance(value, list | tuple):
        return f"a list of {len(value)}"
    return type(value).__name__


def _problem(k: object, n: object, index: object, chunk_ids: object) -> str | None:
    """What is wrong with these fields, or None if they make a record."""
    for name, value in (("k", k), ("n", n), ("index", index)):
        if not _is_int(value):
            return f"{name} must be an integer, not {_kind(value)}"
    assert isinstance(k, int) and isinstance(n, int) and isinstance(index, int)
    if not 1 <= n <= MAX_SHARES:
        return f"n = {n} is outside 1..{MAX_SHARES}"
    if not 1 <= k <= n:
        return f"k = {k} is outside 1..n (n = {n})"
    if not 0 <= index < n:
        return f"index = {index} is outside 0..n-1 (n = {n})"
    if not isinstance(chunk_ids, tuple):
        return f"chunk ids must be a tuple, not {_kind(chunk_ids)}"
    if len(chunk_ids) != n:
        return f"{len(chunk_ids)} chunk ids for n = {n}"
    for position, identifier in enumerate(chunk_ids):
        if not isinstance(identifier, bytes) or len(identifier) != CHUNK_ID_SIZE:
            return (
                f"chunk id {position} must be {CHUNK_ID_SIZE} bytes, not "
                f"{len(identifier) if isinstance(identifier, bytes) else _kind(identifier)}"
            )
    return None
