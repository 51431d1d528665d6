"""The disk chunk store's index: chunks/index.sqlite, one row per acknowledged chunk
with its size, its group record and the time it was stored. Every SQL statement of the
store is here.

What it promises:

- It uses a database only if it is new or a Freehold chunk index (`PRAGMA
  application_id`) of this schema version (`PRAGMA user_version`); any other is
  refused with a `StoreError` and left as it was.
- A row holds only what a `GroupRecord` accepts: the table's CHECK constraints repeat
  its rules. A row that still does not make a record (a file edited by hand) reads as
  a `StoreError`, never as a wrong record.
- A write is one transaction, committed before the method returns. Every SQLite error
  comes out as a `StoreError` naming what was being done, a full disk as `StoreFull`.
- It takes no lock: the store calls it with its own lock held (node.store.disk).

Why `synchronous = FULL` and not WAL's usual NORMAL. NORMAL loses a committed
transaction on a power cut (never on a process kill); here the chunk's file is already
durable, so a lost row would make recovery take an acknowledged chunk for an orphan and
delete it. FULL costs one more fsync (of the WAL) per put.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from node.errors import StoreError, StoreFull
from node.quota import chunk_cost
from node.store.base import ChunkInfo
from node.store.layout import INDEX_NAME
from protocol.chunk import CHUNK_ID_SIZE, MAX_SHARES, GroupRecord
from protocol.errors import InvalidGroupRecord

__all__ = ["APPLICATION_ID", "SCHEMA_VERSION", "ChunkIndex"]

APPLICATION_ID: Final = 0x46484353
"""`PRAGMA application_id` of a Freehold chunk index: "FHCS" in ASCII."""

SCHEMA_VERSION: Final = 1
"""`PRAGMA user_version` of the schema below. A change of schema increments it."""

# How long an index write waits for another connection's lock before failing.
BUSY_TIMEOUT: Final = 1.0

# The CHECK constraints repeat GroupRecord's rules, so no row the code would refuse can
# be written, whatever the bug.
_SCHEMA: Final = f"""
    CREATE TABLE IF NOT EXISTS chunks (
        chunk_id BLOB PRIMARY KEY NOT NULL,
        size INTEGER NOT NULL,
        k INTEGER NOT NULL,
        n INTEGER NOT NULL,
        share_index INTEGER NOT NULL,
        -- The n ids of the group, {CHUNK_ID_SIZE} bytes each, in share order.
        sibling_ids BLOB NOT NULL,
        -- UNIX seconds.
        stored_at REAL NOT NULL,
        CHECK (typeof(chunk_id) = 'blob' AND length(chunk_id) = {CHUNK_ID_SIZE}),
        CHECK (typeof(size) = 'integer' AND size >= 0),
        CHECK (typeof(n) = 'integer' AND n BETWEEN 1 AND {MAX_SHARES}),
        CHECK (typeof(k) = 'integer' AND k BETWEEN 1 AND n),
        CHECK (typeof(share_index) = 'integer' AND share_index BETWEEN 0 AND n - 1),
        CHECK (typeof(sibling_ids) = 'blob' AND length(sibling_ids) = {CHUNK_ID_SIZE} * n
               AND substr(sibling_ids, {CHUNK_ID_SIZE} * share_index + 1, {CHUNK_ID_SIZE})
                   = chunk_id),
        CHECK (typeof(stored_at) = 'real')
    ) WITHOUT ROWID
"""


class ChunkIndex:
    """The open index of the store at `root`. Create with `ChunkIndex.open(root)`."""

    def __init__(self, root: Path, connection: sqlite3.Connection) -> None:
        """Wrap a connection to a checked index; use `open` instead."""
        self._root = root
        self._connection = connection

    @classmethod
    def open(cls, root: Path) -> ChunkIndex:
        """Open the index, check that it is ours (or new), set WAL, create the schema."""
        path = root / INDEX_NAME
        try:
            connection = sqlite3.connect(
                path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the chunk index {path}: {exc}") from exc
        try:
            application_id = connection.execute("PRAGMA application_id").fetchone()[0]
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            fresh = application_id == 0 and version == 0
            if fresh:
                (objects,) = connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
                if objects:
                    raise StoreError(f"{path} is an SQLite database of another application")
            elif application_id != APPLICATION_ID:
                raise StoreError(f"{path} is not a Freehold chunk index")
            elif version != SCHEMA_VERSION:
                raise StoreError(
                    f"chunk index {path} has schema version {version}; "
                    f"this Freehold reads version {SCHEMA_VERSION}"
                )
            # Set only once the file is known to be ours: WAL is a persistent property.
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = FULL")  # see the module docstring
            if fresh:
                connection.execute("BEGIN IMMEDIATE")
                connection.execute(_SCHEMA)
                connection.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                connection.execute("COMMIT")
        except sqlite3.Error as exc:
            connection.close()
            raise StoreError(f"{path} is not a usable chunk index: {exc}") from exc
        except BaseException:
            connection.close()
            raise
        return cls(root, connection)

    def close(self) -> None:
        """Close the connection."""
        try:
            self._connection.close()
        except sqlite3.Error as exc:
            raise StoreError(f"closing the chunk index in {self._root}: {exc}") from exc

    def row(self, chunk_id: bytes) -> ChunkInfo | None:
        """The chunk's row, or None (also for what is not a chunk id at all)."""
        if not isinstance(chunk_id, bytes) or len(chunk_id) != CHUNK_ID_SIZE:
            return None
        rows = self._query(
            "reading the index",
            "SELECT size, k, n, share_index, sibling_ids, stored_at FROM chunks WHERE chunk_id = ?",
            (chunk_id,),
        )
        if not rows:
            return None
        size, k, n, index, siblings, stored_at = rows[0]
        # The CHECK constraints keep bad rows out of a file we wrote; a row that still
        # does not make a record (a file edited by hand) is damage, reported as such.
        if not (
            isinstance(size, int)
            and isinstance(k, int)
            and isinstance(n, int)
            and isinstance(index, int)
            and isinstance(siblings, bytes)
            and isinstance(stored_at, float)
        ):
            raise StoreError(f"damaged index row for chunk {chunk_id.hex()} in {self._root}")
        ids = tuple(
            siblings[start : start + CHUNK_ID_SIZE]
            for start in range(0, len(siblings), CHUNK_ID_SIZE)
        )
        try:
            group = GroupRecord(k, n, index, ids)
        except InvalidGroupRecord as exc:
            raise StoreError(
                f"damaged index row for chunk {chunk_id.hex()} in {self._root}: {exc}"
            ) from exc
        return ChunkInfo(chunk_id, size, group, stored_at)

    def insert(self, chunk_id: bytes, size: int, group: GroupRecord, stored_at: float) -> None:
        """Add the chunk's row."""
        with self._transaction(f"indexing chunk {chunk_id.hex()}") as connection:
            connection.execute(
                "INSERT INTO chunks (chunk_id, size, k, n, share_index, sibling_ids, stored_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    chunk_id,
                    size,
                    group.k,
                    group.n,
                    group.index,
                    b"".join(group.chunk_ids),
                    float(stored_at),
                ),
            )

    def delete(self, chunk_ids: Iterable[bytes], doing: str) -> None:
        """Remove the rows of these chunks, in one transaction; `doing` names it in errors."""
        with self._transaction(doing) as connection:
            connection.executemany(
                "DELETE FROM chunks WHERE chunk_id = ?", [(chunk_id,) for chunk_id in chunk_ids]
            )

    def ids_after(self, after: bytes, limit: int) -> list[bytes]:
        """Up to `limit` ids greater than `after`, in increasing order."""
        rows = self._query(
            "listing chunks",
            "SELECT chunk_id FROM chunks WHERE chunk_id > ? ORDER BY chunk_id LIMIT ?",
            (after, limit),
        )
        return [_stored_id(chunk_id) for (chunk_id,) in rows]

    def sizes_under_prefix(self, prefix: int) -> dict[bytes, object]:
        """The stored size of every chunk whose id starts with the byte `prefix`."""
        low = bytes([prefix]) + bytes(CHUNK_ID_SIZE - 1)
        high = bytes([prefix]) + b"\xff" * (CHUNK_ID_SIZE - 1)
        rows = self._query(
            "reading the index",
            "SELECT chunk_id, size FROM chunks WHERE chunk_id BETWEEN ? AND ?",
            (low, high),
        )
        return {_stored_id(chunk_id): size for chunk_id, size in rows}

    def totals(self) -> tuple[int, int]:
        """How many chunks the index holds, and their cost on disk (node/quota.py)."""
        rows = self._query("counting chunks", "SELECT size, n FROM chunks", ())
        count = len(rows)
        used = 0
        for size, n in rows:
            assert isinstance(size, int) and isinstance(n, int)
            used += chunk_cost(size, n)
        assert isinstance(count, int) and isinstance(used, int)
        return count, used

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            message = f"{doing} in the chunk index in {self._root}: {exc}"
            if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
                raise StoreFull(f"{message}; free some disk space") from exc
            raise StoreError(message) from exc

    @contextmanager
    def _transaction(self, doing: str) -> Iterator[sqlite3.Connection]:
        connection = self._connection
        with self._errors(doing):
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
            try:
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise

    def _query(
        self, doing: str, sql: str, parameters: tuple[object, ...]
    ) -> list[tuple[object, ...]]:
        with self._errors(doing):
            rows: list[tuple[object, ...]] = self._connection.execute(sql, parameters).fetchall()
        return rows


def _stored_id(value: object) -> bytes:
    if isinstance(value, bytes) and len(value) == CHUNK_ID_SIZE:
        return value
    raise StoreError("damaged chunk id in the chunk index")
