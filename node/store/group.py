"""A chunk's group record: which erasure-coded group it belongs to, and where.

Every chunk is stored with the record of its group (DESIGN.md#durability-without-an-owner):
k, n, the chunk's index in 0..n-1 and the ids of all n chunks of the group, its own at
position `index`. With it a holder can watch its siblings and repair the group without
the file's key or manifest.

A `GroupRecord` that exists is valid: the constructor checks every field and raises
`InvalidGroupRecord`, never anything else, whatever it is given. `to_wire` gives plain
msgpack-able values and `from_wire` reads them back with the same checks, so the record
can travel in a message as it is stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from node.errors import InvalidGroupRecord

__all__ = ["CHUNK_ID_SIZE", "MAX_SHARES", "GroupRecord"]

CHUNK_ID_SIZE: Final = 32
"""Bytes in a chunk id: the BLAKE3-256 hash of the chunk's bytes."""

MAX_SHARES: Final = 256
"""Largest n: zfec codes at most 256 shares."""

_WIRE_FIELDS: Final = 4


@dataclass(frozen=True, slots=True)
class GroupRecord:
    """k-of-n, this chunk's index, and the ids of the group's n chunks (its own included)."""

    k: int
    n: int
    index: int
    chunk_ids: tuple[bytes, ...]

    def __post_init__(self) -> None:
        problem = _problem(self.k, self.n, self.index, self.chunk_ids)
        if problem is not None:
            raise InvalidGroupRecord(f"invalid group record: {problem}")

    @property
    def chunk_id(self) -> bytes:
        """The id of the chunk this record belongs to: `chunk_ids[index]`."""
        return self.chunk_ids[self.index]

    def to_wire(self) -> list[object]:
        """`[k, n, index, [id, ...]]`: ints and bytes only, ready for msgpack."""
        return [self.k, self.n, self.index, list(self.chunk_ids)]

    @classmethod
    def from_wire(cls, value: object) -> GroupRecord:
        """The record that `to_wire` gave (lists or tuples); `InvalidGroupRecord` for
        anything else."""
        if not isinstance(value, list | tuple) or len(value) != _WIRE_FIELDS:
            raise InvalidGroupRecord(
                f"invalid group record: expected [k, n, index, chunk ids], got {_kind(value)}"
            )
        k, n, index, chunk_ids = value
        if not isinstance(chunk_ids, list | tuple):
            raise InvalidGroupRecord(
                f"invalid group record: chunk ids must be a list, not {_kind(chunk_ids)}"
            )
        if len(chunk_ids) > MAX_SHARES:  # before copying a list of any length
            raise InvalidGroupRecord(
                f"invalid group record: {len(chunk_ids)} chunk ids, at most {MAX_SHARES}"
            )
        return cls(k, n, index, tuple(chunk_ids))


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
    for position, chunk_id in enumerate(chunk_ids):
        if not isinstance(chunk_id, bytes) or len(chunk_id) != CHUNK_ID_SIZE:
            return (
                f"chunk id {position} must be {CHUNK_ID_SIZE} bytes, not "
                f"{len(chunk_id) if isinstance(chunk_id, bytes) else _kind(chunk_id)}"
            )
    return None
