"""DHT persistence: round trips, restarts, the clock conversion, schema and file checks."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from dht.config import DhtConfig
from dht.contact import Address, Contact
from dht.errors import DhtError, StorageError
from dht.providers import LocalProvisions, ProviderRecord, ProviderStore, Provision
from dht.storage import APPLICATION_ID, MEMORY, SCHEMA_VERSION, ContactRecord, DhtStorage
from protocol.identity import NodeId

HOUR = 3600.0
TTL = 48 * HOUR
REPUBLISH = 22 * HOUR
# Two readings of the same instant: the DHT's (trio) clock and the wall clock. Whole
# numbers, so that converting between them is exact and results compare with ==.
NOW = 1000.0
WALL = 1_700_000_000.0

T = TypeVar("T")


def node(number: int) -> NodeId:
    return NodeId.from_int(number)


def contact(number: int) -> Contact:
    return Contact(node(number), (f"192.0.2.{number}", 4000 + number))


RECORDS = [
    ProviderRecord(node(101), contact(1), NOW + TTL),
    ProviderRecord(node(101), contact(2), NOW + 10 * HOUR),
    ProviderRecord(node(102), contact(1), NOW + 1.5),
]
PROVISIONS = [Provision(node(201), None), Provision(node(202), NOW - 3 * HOUR)]
CONTACTS = [ContactRecord(contact(1), NOW - 60.0), ContactRecord(contact(3), NOW)]


def save_all(storage: DhtStorage, *, now: float = NOW, wall_time: float = WALL) -> None:
    storage.save_records(RECORDS, now=now, wall_time=wall_time)
    storage.save_provisions(PROVISIONS, now=now, wall_time=wall_time)
    storage.save_contacts(CONTACTS, now=now, wall_time=wall_time)


def by_repr(items: Iterable[T]) -> list[T]:
    """The items in a fixed order, to compare lists whose order the database chooses."""
    return sorted(items, key=repr)


@pytest.fixture(params=["file", "memory"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DhtStorage]:
    path = tmp_path / "dht.sqlite" if request.param == "file" else MEMORY
    with DhtStorage.open(path) as opened:
        yield opened


# ---------------------------------------------------------------------- round trips


def test_round_trip_of_all_three_tables(storage: DhtStorage) -> None:
    """What is saved is loaded back equal, on disk and in memory."""
    save_all(storage)
    assert by_repr(storage.load_records(now=NOW, wall_time=WALL)) == by_repr(RECORDS)
    assert by_repr(storage.load_provisions(now=NOW, wall_time=WALL)) == by_repr(PROVISIONS)
    assert by_repr(storage.load_contacts(now=NOW, wall_time=WALL)) == by_repr(CONTACTS)


def test_empty_database_loads_nothing(storage: DhtStorage) -> None:
    """A new database has three empty tables."""
    assert storage.load_records(now=NOW, wall_time=WALL) == []
    assert storage.load_provisions(now=NOW, wall_time=WALL) == []
    assert storage.load_contacts(now=NOW, wall_time=WALL) == []


def test_save_replaces_everything(storage: DhtStorage) -> None:
    """Each save replaces the whole table, dropping rows no longer passed."""
    save_all(storage)
    storage.save_records(RECORDS[:1], now=NOW, wall_time=WALL)
    storage.save_provisions([], now=NOW, wall_time=WALL)
    storage.save_contacts(CONTACTS[1:], now=NOW, wall_time=WALL)
    assert storage.load_records(now=NOW, wall_time=WALL) == RECORDS[:1]
    assert storage.load_provisions(now=NOW, wall_time=WALL) == []
    assert storage.load_contacts(now=NOW, wall_time=WALL) == CONTACTS[1:]


def test_add_record_upserts(storage: DhtStorage) -> None:
    """add_record inserts a new record and updates the address and expiry of a known one."""
    storage.save_records(RECORDS[:1], now=NOW, wall_time=WALL)
    moved = ProviderRecord(node(101), Contact(node(1), ("198.51.100.7", 9000)), NOW + TTL + HOUR)
    storage.add_record(moved, now=NOW, wall_time=WALL)
    storage.add_record(RECORDS[2], now=NOW, wall_time=WALL)
    assert by_repr(storage.load_records(now=NOW, wall_time=WALL)) == by_repr([moved, RECORDS[2]])


def test_failed_save_changes_nothing(storage: DhtStorage) -> None:
    """A save that fails part way raises StorageError and leaves the previous rows."""
    save_all(storage)
    bad = ContactRecord(Contact(node(9), ("192.0.2.9", 70_000)), NOW)
    with pytest.raises(StorageError):
        storage.save_contacts([CONTACTS[0], bad], now=NOW, wall_time=WALL)
    assert by_repr(storage.load_contacts(now=NOW, wall_time=WALL)) == by_repr(CONTACTS)


# ---------------------------------------------------------------------- restarts and time


def test_restart_loads_what_was_saved(tmp_path: Path) -> None:
    """Save, close, reopen: the loaded state equals the saved state."""
    path = tmp_path / "dht.sqlite"
    with DhtStorage.open(path) as storage:
        save_all(storage)
    with DhtStorage.open(path) as storage:
        assert by_repr(storage.load_records(now=NOW, wall_time=WALL)) == by_repr(RECORDS)
        assert by_repr(storage.load_provisions(now=NOW, wall_time=WALL)) == by_repr(PROVISIONS)
        assert by_repr(storage.load_contacts(now=NOW, wall_time=WALL)) == by_repr(CONTACTS)


def test_times_move_to_the_new_clock_and_downtime_counts(tmp_path: Path) -> None:
    """After a restart, times are on the new trio clock and the time spent down is gone."""
    path = tmp_path / "dht.sqlite"
    with DhtStorage.open(path) as storage:
        save_all(storage)
    # The new process's trio clock starts near zero; the node was down 2 hours.
    new_now, down = 5.0, 2 * HOUR
    with DhtStorage.open(path) as storage:
        records = storage.load_records(now=new_now, wall_time=WALL + down)
        provisions = storage.load_provisions(now=new_now, wall_time=WALL + down)
        contacts = storage.load_contacts(now=new_now, wall_time=WALL + down)
    shift = new_now - NOW - down
    # The record with 1.5 s left expired while the node was down.
    assert by_repr(records) == by_repr(
        [ProviderRecord(r.key, r.provider, r.expires_at + shift) for r in RECORDS[:2]]
    )
    assert by_repr(provisions) == by_repr(
        [Provision(node(201), None), Provision(node(202), NOW - 3 * HOUR + shift)]
    )
    assert by_repr(contacts) == by_repr(
        [ContactRecord(c.contact, c.last_seen + shift) for c in CONTACTS]
    )


def test_restart_of_the_stores_after_a_long_stop(tmp_path: Path) -> None:
    """A node down 20 h restores records with 20 h less to live, and republishes at once."""
    path = tmp_path / "dht.sqlite"
    providers = ProviderStore(DhtConfig())
    provisions = LocalProvisions()
    # In clock order: the store takes a reading earlier than one it has seen as the later.
    providers.add(node(101), contact(2), NOW - 40 * HOUR)  # expires at NOW + 8 h
    providers.add(node(101), contact(1), NOW)  # expires at NOW + 48 h
    provisions.provide(node(201))
    provisions.published(node(201), NOW - 3 * HOUR)
    with DhtStorage.open(path) as storage:
        storage.save_records(providers.records(), now=NOW, wall_time=WALL)
        storage.save_provisions(provisions.records(), now=NOW, wall_time=WALL)

    new_now, wall = 0.0, WALL + 20 * HOUR
    restored, restored_provisions = ProviderStore(DhtConfig()), LocalProvisions()
    with DhtStorage.open(path) as storage:
        kept = restored.restore(storage.load_records(now=new_now, wall_time=wall), new_now)
        restored_provisions.restore(storage.load_provisions(now=new_now, wall_time=wall), new_now)
    assert kept == 1
    assert restored.get(node(101), 28 * HOUR - 0.001, 10) == [contact(1)]
    assert restored.get(node(101), 28 * HOUR, 10) == []
    # Announced 3 h before a 20 h stop: 23 h ago, so due now.
    assert restored_provisions.due_for_republish(new_now, REPUBLISH) == [node(201)]


# ---------------------------------------------------------------------- the file itself


def test_schema_version_and_application_id_are_set(tmp_path: Path) -> None:
    """A new database carries this schema version and the Freehold DHT application id."""
    path = tmp_path / "dht.sqlite"
    DhtStorage.open(path).close()
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert raw.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    finally:
        raw.close()


def test_other_schema_version_is_refused(tmp_path: Path) -> None:
    """A database of another schema version is refused with StorageError naming it."""
    path = tmp_path / "dht.sqlite"
    DhtStorage.open(path).close()
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(StorageError, match=f"schema version {SCHEMA_VERSION + 1}"):
        DhtStorage.open(path)


@pytest.mark.parametrize(
    "setup",
    ["CREATE TABLE chunks (id BLOB)", "PRAGMA application_id = 1234"],
    ids=["other-tables", "other-application-id"],
)
def test_foreign_database_is_refused(tmp_path: Path, setup: str) -> None:
    """Another application's SQLite database is refused and left as it was."""
    path = tmp_path / "other.sqlite"
    raw = sqlite3.connect(path)
    raw.execute(setup)
    raw.commit()
    raw.close()
    with pytest.raises(StorageError):
        DhtStorage.open(path)
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    finally:
        raw.close()


def test_corrupt_file_raises_storage_error(tmp_path: Path) -> None:
    """A file that is not an SQLite database gives StorageError, not a sqlite3 error."""
    path = tmp_path / "dht.sqlite"
    path.write_bytes(b"definitely not a database, " * 200)
    with pytest.raises(DhtError) as raised:
        DhtStorage.open(path)
    assert isinstance(raised.value, StorageError)
    assert not isinstance(raised.value, sqlite3.Error)


def test_truncated_database_raises_storage_error(tmp_path: Path) -> None:
    """A database cut in half gives StorageError when opened or read."""
    path = tmp_path / "dht.sqlite"
    many = [
        ProviderRecord(node(number), contact(number % 200), NOW + HOUR) for number in range(1, 3001)
    ]
    with DhtStorage.open(path) as storage:
        storage.save_records(many, now=NOW, wall_time=WALL)
    with path.open("r+b") as file:
        file.truncate(path.stat().st_size // 2)
    with pytest.raises(StorageError), DhtStorage.open(path) as storage:
        storage.load_records(now=NOW, wall_time=WALL)


def test_corrupt_row_raises_storage_error(tmp_path: Path) -> None:
    """A row that makes no record (a hand-edited file) gives StorageError on load."""
    path = tmp_path / "dht.sqlite"
    DhtStorage.open(path).close()
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA ignore_check_constraints = ON")
    raw.execute("INSERT INTO routing_contacts VALUES (x'00', 'host', 1, 0.0)")
    raw.commit()
    raw.close()
    with DhtStorage.open(path) as storage, pytest.raises(StorageError, match="corrupt id"):
        storage.load_contacts(now=NOW, wall_time=WALL)


def test_unopenable_path_raises_storage_error(tmp_path: Path) -> None:
    """A path in a missing directory gives StorageError."""
    with pytest.raises(StorageError):
        DhtStorage.open(tmp_path / "missing" / "dht.sqlite")


def test_wal_on_disk_and_memory_in_memory(tmp_path: Path) -> None:
    """A database on disk runs in WAL mode (kept in the file); ":memory:" does not."""
    path = tmp_path / "dht.sqlite"
    with DhtStorage.open(path) as storage:
        assert storage.journal_mode == "wal"
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        raw.close()
    with DhtStorage.open(MEMORY) as storage:
        assert storage.journal_mode == "memory"


def test_closed_storage_raises_storage_error() -> None:
    """Using a closed database gives StorageError; closing twice is harmless."""
    storage = DhtStorage.open(MEMORY)
    storage.close()
    storage.close()
    with pytest.raises(StorageError, match="closed"):
        storage.load_records(now=NOW, wall_time=WALL)


# ---------------------------------------------------------------------- incremental saves


def loaded_rows(storage: DhtStorage, now: float) -> list[tuple[NodeId, NodeId, Address, float]]:
    return sorted(
        (record.key, record.provider.node_id, record.provider.address, record.expires_at)
        for record in storage.load_records(now=now, wall_time=now + WALL - NOW)
    )


def stored_rows(
    store: ProviderStore, now: float = -1.0
) -> list[tuple[NodeId, NodeId, Address, float]]:
    """The store's records live at `now` (the load leaves out the others)."""
    return sorted(
        (record.key, record.provider.node_id, record.provider.address, record.expires_at)
        for record in store.records()
        if record.expires_at > now
    )


def save_changes(store: ProviderStore, storage: DhtStorage, now: float) -> int:
    """Save what changed as the service does; return how many rows were written."""
    changes = store.take_changes()
    records: list[ProviderRecord] = []
    while batch := changes.take_records(3):
        records.extend(batch)
    storage.save_record_changes(
        records, changes.removed, full=changes.full, now=now, wall_time=now + WALL - NOW
    )
    return len(records) + len(changes.removed)


def test_incremental_saves_keep_the_table_equal_to_the_store(storage: DhtStorage) -> None:
    """Saving only the changes (added, refreshed, moved, evicted, expired) after each
    round leaves the saved table equal to the store, and a store restored from it answers
    the same; each save writes only what changed."""
    store = ProviderStore(DhtConfig(max_records=20, max_records_per_prefix=None))
    for number in range(15):
        store.add(node(300 + number), contact(number % 5), NOW + number)
    assert save_changes(store, storage, NOW + 20) == 15
    assert loaded_rows(storage, NOW + 20) == stored_rows(store)
    store.add(node(300), contact(0), NOW + 30)  # refreshed
    store.add(node(301), Contact(node(1), ("192.0.2.1", 5000)), NOW + 31)  # moved port
    for number in range(8):  # fills the budget, then evicts from 192.0.2.0/24
        store.add(node(400 + number), Contact(node(50 + number), ("203.0.113.9", 4000)), NOW + 32)
    assert store.statistics().evicted == 3
    assert save_changes(store, storage, NOW + 40) == 2 + 8 + 3
    assert loaded_rows(storage, NOW + 40) == stored_rows(store)
    assert store.expire(NOW + 7.5 + TTL) == 3  # three saved records expired
    assert save_changes(store, storage, NOW + 8 + TTL) == 3
    assert loaded_rows(storage, NOW + 8 + TTL) == stored_rows(store, NOW + 8 + TTL)
    assert save_changes(store, storage, NOW + 9 + TTL) == 0
    restored = ProviderStore(DhtConfig(max_records=20, max_records_per_prefix=None))
    later = NOW + 9 + TTL
    restored.restore(storage.load_records(now=later, wall_time=later + WALL - NOW), later)
    assert stored_rows(restored) == stored_rows(store, later)
    # Restored records count as saved: nothing to write until something changes.
    assert save_changes(restored, storage, later + 1) == 0


def test_a_full_save_after_a_failure_replaces_the_table(storage: DhtStorage) -> None:
    """After a failed save the next one rewrites the whole table, rows of the failed
    save's changes included."""
    store = ProviderStore(DhtConfig())
    store.add(node(300), contact(1), NOW)
    save_changes(store, storage, NOW)
    store.add(node(301), contact(2), NOW + 1)
    store.take_changes()  # taken, but the save fails:
    store.save_failed()
    storage.save_records(
        [ProviderRecord(node(999), contact(9), NOW + TTL)], now=NOW, wall_time=WALL
    )
    assert save_changes(store, storage, NOW + 2) == 2
    assert loaded_rows(storage, NOW + 2) == stored_rows(store)


def test_a_writer_killed_mid_save_leaves_the_last_committed_state(tmp_path: Path) -> None:
    """SIGKILL at any moment of a stream of incremental saves leaves a database that
    opens, and holds exactly the state of the last save reported done (or of the next
    one, if it committed before the kill); never a mix."""
    path = tmp_path / "dht.sqlite"
    writer = Path(__file__).with_name("records_writer.py")
    root = Path(__file__).parents[2]
    for seed, rounds in ((1, 3), (2, 5), (3, 8)):
        path.unlink(missing_ok=True)
        child = subprocess.Popen(
            [sys.executable, str(writer), str(path), str(seed)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=root,
            env={**os.environ, "PYTHONPATH": str(root)},
        )
        assert child.stdout is not None
        digests: dict[int, str] = {}
        saved = 0
        try:
            while saved < rounds:
                line = child.stdout.readline()
                saved = _note(line, digests, saved)
            # The next save is under way (each takes tens of ms): kill it in its course.
            time.sleep(0.005 * seed)
            child.send_signal(signal.SIGKILL)
            rest = child.stdout.read()
        finally:
            child.kill()
            child.wait()
        for line in rest.splitlines():
            saved = _note(line, digests, saved)
        with DhtStorage.open(path) as reopened:
            rows = reopened.load_records(now=0.0, wall_time=0.0)
        # The last round saved, or the one being saved if it had committed; never a mix.
        allowed = {digests[saved]} | ({digests[saved + 1]} if saved + 1 in digests else set())
        assert saved >= rounds
        assert records_digest(rows) in allowed


def _note(line: str, digests: dict[int, str], saved: int) -> int:
    """Read one of the writer's lines: the digest of a save begun, or a save done."""
    words = line.split()
    if words[0] == "saving":
        digests[int(words[1])] = words[2]
        return saved
    assert words[0] == "saved", line
    return int(words[1])


def records_digest(records: list[ProviderRecord]) -> str:
    rows = sorted(
        (record.key.value, record.provider.node_id.value, record.provider.address[1])
        for record in records
    )
    return hashlib.sha256(repr(rows).encode()).hexdigest()
