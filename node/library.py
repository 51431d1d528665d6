"""The files this node's owner put or keeps: `freehold ls`, and what renewal renews.

One row per file: its capability (the read capability of a file we put, which holds
the key; a verify capability for one we only keep), name, size, when it was put, and
the lease we last sent for it. The file is `<data-dir>/files.sqlite3`, mode 0600: it
holds keys, never leaves the machine, and nothing in it is sent to anyone (the
leases are sent; their signatures are made from the node's identity). Losing it loses
no data on the network, only the node's memory of what to renew: the leases then run
out, and with them the files.

`pending` marks a file whose last lease round did not reach every chunk (a holder
down, a put cut short): node/renewal.py tries it again soon rather than at the next
renewal point.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from node.errors import StoreError

__all__ = ["LIBRARY_FILE", "Library", "OwnFile"]

LIBRARY_FILE: Final = "files.sqlite3"

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS files (
    manifest_id BLOB PRIMARY KEY,
    capability TEXT NOT NULL,
    name TEXT NOT NULL,
    size INTEGER,
    put_at REAL NOT NULL,
    lease_issued INTEGER NOT NULL,
    lease_expires INTEGER NOT NULL,
    pending INTEGER NOT NULL,
    tried_at REAL NOT NULL
) WITHOUT ROWID;
"""


@dataclass(frozen=True, slots=True)
class OwnFile:
    """One file of the owner's."""

    manifest_id: bytes
    capability: str
    name: str
    size: int | None
    put_at: float
    lease_issued: int
    lease_expires: int
    pending: bool
    tried_at: float


class Library:
    """The owner's files (module docstring); `path` None keeps them in memory."""

    def __init__(self, path: Path | None) -> None:
        where = ":memory:" if path is None else str(path)
        self._where = where
        try:
            if path is not None:
                descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
                os.close(descriptor)
                os.chmod(path, 0o600)
            self._db = sqlite3.connect(where, isolation_level=None, check_same_thread=False)
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the file list {where}: {exc}") from exc

    def close(self) -> None:
        self._db.close()

    def add(self, entry: OwnFile) -> None:
        """Record a file (replacing what was known of it)."""
        self._run(
            "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                entry.manifest_id,
                entry.capability,
                entry.name,
                entry.size,
                entry.put_at,
                entry.lease_issued,
                entry.lease_expires,
                int(entry.pending),
                entry.tried_at,
            ),
        )

    def leased(
        self, manifest_id: bytes, issued: int, expires: int, *, pending: bool, now: float
    ) -> None:
        """A lease round for the file was made."""
        self._run(
            "UPDATE files SET lease_issued = ?, lease_expires = ?, pending = ?, tried_at = ? "
            "WHERE manifest_id = ?",
            (issued, expires, int(pending), now, manifest_id),
        )

    def tried(self, manifest_id: bytes, now: float) -> None:
        """A lease round failed before any lease went out."""
        self._run(
            "UPDATE files SET pending = 1, tried_at = ? WHERE manifest_id = ?", (now, manifest_id)
        )

    def remove(self, manifest_id: bytes) -> bool:
        """Forget a file; whether it was there."""
        with self._errors():
            cursor = self._db.execute("DELETE FROM files WHERE manifest_id = ?", (manifest_id,))
        return cursor.rowcount > 0

    def get(self, manifest_id: bytes) -> OwnFile | None:
        rows = self._select("WHERE manifest_id = ?", (manifest_id,))
        return rows[0] if rows else None

    def files(self) -> list[OwnFile]:
        """Every file, oldest first."""
        return self._select("ORDER BY put_at, manifest_id", ())

    def due(self, now: float, renew_at: float, retry: float) -> list[OwnFile]:
        """The files to lease again: within `renew_at` of their lease's end, or
        pending and not tried for `retry` seconds."""
        return self._select(
            "WHERE lease_expires - ? <= ? OR (pending AND tried_at + ? <= ?) "
            "ORDER BY lease_expires",
            (now, renew_at, retry, now),
        )

    def _select(self, where: str, parameters: tuple[object, ...]) -> list[OwnFile]:
        with self._errors():
            rows = self._db.execute(
                "SELECT manifest_id, capability, name, size, put_at, lease_issued, "
                f"lease_expires, pending, tried_at FROM files {where}",
                parameters,
            ).fetchall()
        return [
            OwnFile(bytes(m), c, n, s, p, i, e, bool(pending), t)
            for m, c, n, s, p, i, e, pending, t in rows
        ]

    def _run(self, sql: str, parameters: tuple[object, ...]) -> None:
        with self._errors():
            self._db.execute(sql, parameters)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise StoreError(f"the file list {self._where}: {exc}") from exc
