"""SQLite persistence of the DHT's state: provider records, our provisions, contacts.

The DHT keeps its state in memory (`ProviderStore`, `LocalProvisions`, the routing
table) and saves it here at a modest interval and at shutdown, so that a restarted node
still knows its peers and the records it was asked to keep (DESIGN.md#dht). Each
`save_*` replaces a whole table in one transaction; `save_record_changes` writes only
what changed in the provider records since the last save (`ProviderStore.take_changes`),
in one transaction too; `add_record` upserts one record.

Crash safety: every save is one SQLite transaction in WAL mode, so a process killed at
any instant leaves the file as of the last committed save (tests/dht/test_storage.py
kills a writer mid-save). It loses at most the changes made since then.

The database is its own file (for instance `<data-dir>/dht.sqlite`): it owns the file's
`PRAGMA application_id` and `PRAGMA user_version`, which is how `open` tells a Freehold
DHT database of this schema version from a foreign or corrupt file. A missing file (or
an empty one) gets the schema. On disk the journal is WAL. ":memory:" gives a private
in-memory database, for tests and simulations.

Time. The DHT runs on trio's clock, which starts anywhere and is virtual in tests, so
its values mean nothing once the process is gone. Every save and load therefore takes
two readings of "now": `now` on the DHT's clock and `wall_time` on the wall clock (UNIX
seconds, `time.time()`; a simulation may pass its virtual clock for both). The database
holds wall-clock times: a value `t` is saved as `wall_time + (t - now)` and loaded back
as `now + (stored - wall_time)`. So time spent stopped counts: after a day down, a
record has a day less to live and a key announced 22 h before the stop is due at once,
which is what the peers holding our records see. The trade-off is that a wall clock set
wrong (or stepped) between save and load shifts every time by that error; the stores
bound the harm when they restore (no expiry beyond `now` + ttl, no announcement in the
future).

Every failure is a `StorageError`; no sqlite3 exception leaks out. A connection is not
for concurrent use: call it from one thread at a time (trio's single thread, or one
worker thread at a time through `trio.to_thread.run_sync`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final

from dht.contact import Contact
from dht.errors import StorageError
from dht.providers import ProviderRecord, Provision
from protocol.identity import NODE_ID_SIZE, NodeId

__all__ = ["APPLICATION_ID", "MEMORY", "SCHEMA_VERSION", "ContactRecord", "DhtStorage"]

MEMORY: Final = ":memory:"
"""The path that opens a private in-memory database."""

APPLICATION_ID: Final = 0x46484454
"""`PRAGMA application_id` of a Freehold DHT database: "FHDT" in ASCII."""

SCHEMA_VERSION: Final = 1
"""`PRAGMA user_version` of the schema below. A change of schema increments it."""

MAX_PORT: Final = 65535  # the schema checks the same bound

# How long a write waits for another connection's lock before failing.
BUSY_TIMEOUT: Final = 1.0

_SCHEMA: Final = (
    """
    CREATE TABLE IF NOT EXISTS provider_records (
        key BLOB NOT NULL CHECK (typeof(key) = 'blob' AND length(key) = 32),
        provider_id BLOB NOT NULL
            CHECK (typeof(provider_id) = 'blob' AND length(provider_id) = 32),
        host TEXT NOT NULL CHECK (typeof(host) = 'text'),
        port INTEGER NOT NULL CHECK (typeof(port) = 'integer' AND port BETWEEN 0 AND 65535),
        expires_at REAL NOT NULL CHECK (typeof(expires_at) = 'real'),
        PRIMARY KEY (key, provider_id)
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE IF NOT EXISTS local_provisions (
        key BLOB PRIMARY KEY NOT NULL CHECK (typeof(key) = 'blob' AND length(key) = 32),
        -- NULL: provided but not announced yet.
        last_published REAL CHECK (last_published IS NULL OR typeof(last_published) = 'real')
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE IF NOT EXISTS routing_contacts (
        node_id BLOB PRIMARY KEY NOT NULL
            CHECK (typeof(node_id) = 'blob' AND length(node_id) = 32),
        host TEXT NOT NULL CHECK (typeof(host) = 'text'),
        port INTEGER NOT NULL CHECK (typeof(port) = 'integer' AND port BETWEEN 0 AND 65535),
        last_seen REAL NOT NULL CHECK (typeof(last_seen) = 'real')
    ) WITHOUT ROWID
    """,
)


@dataclass(frozen=True, slots=True)
class ContactRecord:
    """A routing table contact and when we last heard from it (the DHT's clock)."""

    contact: Contact
    last_seen: float


def _to_wall(value: float, now: float, wall_time: float) -> float:
    return wall_time + (value - now)


def _from_wall(stored: float, now: float, wall_time: float) -> float:
    return now + (stored - wall_time)


class DhtStorage:
    """An open DHT database. Create with `DhtStorage.open(path)`; `close()` when done."""

    def __init__(self, connection: sqlite3.Connection, name: str) -> None:
        """Wrap a connection that `open` has checked; use `open` instead."""
        self._connection: sqlite3.Connection | None = connection
        self._name = name

    @classmethod
    def open(cls, path: str | Path) -> DhtStorage:
        """Open the database at `path` (created if missing), or in memory for ":memory:".

        Raises `StorageError` if the file cannot be opened, is not an SQLite database, is
        another application's database, or has a schema version this code does not read.
        """
        name = str(path)
        try:
            connection = sqlite3.connect(
                name, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open DHT database {name}: {exc}") from exc
        try:
            _prepare(connection, name, on_disk=name != MEMORY)
        except BaseException:
            connection.close()
            raise
        return cls(connection, name)

    def close(self) -> None:
        """Close the database. Closing twice is harmless."""
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()
            except sqlite3.Error as exc:
                raise StorageError(f"closing DHT database {self._name}: {exc}") from exc

    def __enter__(self) -> DhtStorage:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def journal_mode(self) -> str:
        """SQLite's journal mode: "wal" on disk, "memory" in memory."""
        with self._errors("reading the journal mode"):
            row = self._open_connection().execute("PRAGMA journal_mode").fetchone()
        return str(row[0])

    # ------------------------------------------------------------------ provider records

    def save_records(
        self, records: Iterable[ProviderRecord], *, now: float, wall_time: float
    ) -> None:
        """Replace every saved provider record with `records`, in one transaction."""
        rows = [self._record_row(record, now, wall_time) for record in records]
        with self._transaction("saving provider records") as connection:
            connection.execute("DELETE FROM provider_records")
            connection.executemany(
                "INSERT INTO provider_records (key, provider_id, host, port, expires_at) "
                "VALUES (?, ?, ?, ?, ?)",
                rows,
            )

    def save_record_changes(
        self,
        records: Iterable[ProviderRecord],
        removed: Iterable[tuple[NodeId, NodeId]],
        *,
        full: bool,
        now: float,
        wall_time: float,
    ) -> None:
        """In one transaction: delete every saved record if `full`, else the rows of
        `removed` (key, provider id); then insert or update each of `records`."""
        rows = [self._record_row(record, now, wall_time) for record in records]
        with self._transaction("saving provider record changes") as connection:
            if full:
                connection.execute("DELETE FROM provider_records")
            else:
                connection.executemany(
                    "DELETE FROM provider_records WHERE key = ? AND provider_id = ?",
                    [(key.value, provider_id.value) for key, provider_id in removed],
                )
            connection.executemany(
                "INSERT INTO provider_records (key, provider_id, host, port, expires_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (key, provider_id) DO UPDATE SET "
                "host = excluded.host, port = excluded.port, expires_at = excluded.expires_at",
                rows,
            )

    def add_record(self, record: ProviderRecord, *, now: float, wall_time: float) -> None:
        """Insert `record`, or update the saved one for the same key and provider."""
        with self._transaction("adding a provider record") as connection:
            connection.execute(
                "INSERT INTO provider_records (key, provider_id, host, port, expires_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (key, provider_id) DO UPDATE SET "
                "host = excluded.host, port = excluded.port, expires_at = excluded.expires_at",
                self._record_row(record, now, wall_time),
            )

    def load_records(self, *, now: float, wall_time: float) -> list[ProviderRecord]:
        """The saved provider records not yet expired at `wall_time`, on the DHT's clock."""
        rows = self._query(
            "loading provider records",
            "SELECT key, provider_id, host, port, expires_at FROM provider_records "
            "WHERE expires_at > ? ORDER BY key, provider_id",
            (wall_time,),
        )
        where = f"provider_records of DHT database {self._name}"
        return [
            ProviderRecord(
                _node_id(key, where),
                Contact(_node_id(provider_id, where), (_host(host, where), _port(port, where))),
                _from_wall(_time(expires_at, where), now, wall_time),
            )
            for key, provider_id, host, port, expires_at in rows
        ]

    # ------------------------------------------------------------------ local provisions

    def save_provisions(
        self, provisions: Iterable[Provision], *, now: float, wall_time: float
    ) -> None:
        """Replace every saved provision with `provisions`, in one transaction."""
        rows = [
            (
                provision.key.value,
                None
                if provision.last_published is None
                else _to_wall(float(provision.last_published), now, wall_time),
            )
            for provision in provisions
        ]
        with self._transaction("saving provisions") as connection:
            connection.execute("DELETE FROM local_provisions")
            connection.executemany(
                "INSERT INTO local_provisions (key, last_published) VALUES (?, ?)", rows
            )

    def load_provisions(self, *, now: float, wall_time: float) -> list[Provision]:
        """The saved provisions, their announcement times on the DHT's clock."""
        rows = self._query(
            "loading provisions",
            "SELECT key, last_published FROM local_provisions ORDER BY key",
            (),
        )
        where = f"local_provisions of DHT database {self._name}"
        return [
            Provision(
                _node_id(key, where),
                None if last is None else _from_wall(_time(last, where), now, wall_time),
            )
            for key, last in rows
        ]

    # ------------------------------------------------------------------ routing contacts

    def save_contacts(
        self, records: Iterable[ContactRecord], *, now: float, wall_time: float
    ) -> None:
        """Replace every saved routing contact with `records`, in one transaction."""
        rows = [
            (
                record.contact.node_id.value,
                record.contact.address[0],
                record.contact.address[1],
                _to_wall(float(record.last_seen), now, wall_time),
            )
            for record in records
        ]
        with self._transaction("saving routing contacts") as connection:
            connection.execute("DELETE FROM routing_contacts")
            connection.executemany(
                "INSERT INTO routing_contacts (node_id, host, port, last_seen) VALUES (?, ?, ?, ?)",
                rows,
            )

    def load_contacts(self, *, now: float, wall_time: float) -> list[ContactRecord]:
        """The saved routing contacts, `last_seen` on the DHT's clock."""
        rows = self._query(
            "loading routing contacts",
            "SELECT node_id, host, port, last_seen FROM routing_contacts ORDER BY node_id",
            (),
        )
        where = f"routing_contacts of DHT database {self._name}"
        return [
            ContactRecord(
                Contact(_node_id(node_id, where), (_host(host, where), _port(port, where))),
                _from_wall(_time(last_seen, where), now, wall_time),
            )
            for node_id, host, port, last_seen in rows
        ]

    # ------------------------------------------------------------------ internals

    @staticmethod
    def _record_row(
        record: ProviderRecord, now: float, wall_time: float
    ) -> tuple[bytes, bytes, str, int, float]:
        return (
            record.key.value,
            record.provider.node_id.value,
            record.provider.address[0],
            record.provider.address[1],
            _to_wall(float(record.expires_at), now, wall_time),
        )

    def _open_connection(self) -> sqlite3.Connection:
        if self._connection is None:
            raise StorageError(f"DHT database {self._name} is closed")
        return self._connection

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise StorageError(f"{doing} in DHT database {self._name}: {exc}") from exc

    @contextmanager
    def _transaction(self, doing: str) -> Iterator[sqlite3.Connection]:
        connection = self._open_connection()
        with self._errors(doing):
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    def _query(
        self, doing: str, sql: str, parameters: tuple[object, ...]
    ) -> list[tuple[object, ...]]:
        connection = self._open_connection()
        with self._errors(doing):
            rows: list[tuple[object, ...]] = connection.execute(sql, parameters).fetchall()
        return rows


# The CHECK constraints keep bad rows out of a file we wrote; a row that still does not
# make a record (a file edited by hand) is corruption, reported as such, not a crash.


def _node_id(value: object, where: str) -> NodeId:
    if isinstance(value, bytes) and len(value) == NODE_ID_SIZE:
        return NodeId(value)
    raise StorageError(f"corrupt id in {where}")


def _host(value: object, where: str) -> str:
    if isinstance(value, str):
        return value
    raise StorageError(f"corrupt host in {where}")


def _port(value: object, where: str) -> int:
    if isinstance(value, int) and 0 <= value <= MAX_PORT:
        return value
    raise StorageError(f"corrupt port in {where}")


def _time(value: object, where: str) -> float:
    if isinstance(value, float):
        return value
    raise StorageError(f"corrupt time in {where}")


def _prepare(connection: sqlite3.Connection, name: str, *, on_disk: bool) -> None:
    """Check that the database is ours (or empty), set WAL on disk, create the schema."""
    try:
        application_id = connection.execute("PRAGMA application_id").fetchone()[0]
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        fresh = application_id == 0 and version == 0
        if fresh:
            (objects,) = connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
            if objects:
                raise StorageError(f"{name} is an SQLite database of another application")
        elif application_id != APPLICATION_ID:
            raise StorageError(f"{name} is not a Freehold DHT database")
        elif version != SCHEMA_VERSION:
            raise StorageError(
                f"DHT database {name} has schema version {version}; "
                f"this Freehold reads version {SCHEMA_VERSION}"
            )
        if on_disk:
            # Set only once the file is known to be ours: WAL is a persistent property.
            # NORMAL is safe with WAL (no corruption on power loss, at worst the last
            # save is lost), and this state is saved again at the next interval.
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = NORMAL")
        if fresh:
            connection.execute("BEGIN IMMEDIATE")
            try:
                for statement in _SCHEMA:
                    connection.execute(statement)
                connection.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
    except sqlite3.Error as exc:
        raise StorageError(f"{name} is not a usable DHT database: {exc}") from exc
