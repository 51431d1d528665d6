"""What a holder keeps, for whom, and until when: the lease book.

Every chunk in the store is kept under at least one lease (protocol/lease.py), or,
for `upload_length` after it arrived, under the upload that brought it: an upload that
never completes leaves nothing behind for long. The book records, beside each chunk's
cost (node/quota.py), who keeps it and until when, charges each party's key and
network prefix, and says which chunks nobody keeps any more.

| state     | what it means                                  | leaves it when                   |
|-----------|------------------------------------------------|----------------------------------|
| kept      | a lease or the upload's lease is running        | the last one ends: trash         |
| trash     | nobody keeps it; still held, served, counted   | a lease comes back: kept         |
|           |                                                | `trash_grace` of running: deleted |

The rules:

1. A lease is taken only if `protocol.lease.problem` finds nothing wrong, and counts
   for at most `max_length` after it was issued. Per (key, manifest) the book keeps
   the record issued last; an older one changes nothing, so a replayed lease cannot
   undo a release. A release ends its key's lease and nobody else's.
2. A lease covers the chunks it was sent with that this node holds. The upload lease
   of a chunk ends once a lease of the same node covers it (no double charge).
3. Time in trash is counted in the node's running time (`sweep`'s `elapsed`), never
   from the wall clock: a clock that jumps a year ahead sends chunks to the trash, but
   deletes nothing until `trash_grace` of real running has passed, in which a renewal
   brings them back.
4. A chunk is deleted only by `sweep` naming it: trash for `trash_grace`, and no lease
   running at that moment. The caller deletes it from the store, then `forget`s it; a
   kill in between leaves a row for a chunk the store no longer has, which `reconcile`
   drops at the next start. A chunk the store has and the book does not (killed
   between the store's commit and the book's) gets an upload lease at the next start,
   as if it had just arrived; and when the book is new beside a store that is not
   (an upgrade), every chunk gets a lease of `length`, so that owners have time to
   renew.

Counters: what each key and prefix keeps is counted exactly by `recount` (at open and
after each sweep) and kept up to date in between as leases come: between sweeps a
lease that ended still counts, which errs on the side of refusing.

With a path, the book is `<data-dir>/leases.sqlite3` (WAL; a commit per change, synced
with the WAL, so a lease acknowledged is a lease kept); without, SQLite in memory, for
simulations. Times are the node's lease clock (node/keeper.py), wall-clock seconds.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from node.errors import LeaseRefused, OverQuota, StoreError, StoreFull
from node.quota import QuotaSettings, Usage, over_quota, room_for_others
from protocol.identity import NodeId
from protocol.lease import Lease, effective_expiry, problem

__all__ = ["LEASES_FILE", "LeaseBook", "LeaseSettings", "LeaseSummary"]

LEASES_FILE: Final = "leases.sqlite3"

DAY: Final = 24 * 3600.0

_APPLICATION_ID: Final = 0x46484C42  # "FHLB"
_VERSION: Final = 1

_SCHEMA: Final = """
CREATE TABLE chunks (
    chunk_id BLOB PRIMARY KEY,
    cost INTEGER NOT NULL,
    -- Running seconds spent in the trash so far; NULL while kept.
    trash REAL
) WITHOUT ROWID;
CREATE TABLE uploads (
    chunk_id BLOB PRIMARY KEY,
    holder BLOB NOT NULL,
    prefix TEXT,
    until REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE leases (
    public_key BLOB NOT NULL,
    manifest_id BLOB NOT NULL,
    holder BLOB NOT NULL,
    issued INTEGER NOT NULL,
    expires INTEGER NOT NULL,
    signature BLOB NOT NULL,
    until REAL NOT NULL,
    prefix TEXT,
    PRIMARY KEY (public_key, manifest_id)
) WITHOUT ROWID;
CREATE TABLE covers (
    chunk_id BLOB NOT NULL,
    public_key BLOB NOT NULL,
    manifest_id BLOB NOT NULL,
    PRIMARY KEY (chunk_id, public_key, manifest_id)
) WITHOUT ROWID;
CREATE INDEX covers_by_lease ON covers (public_key, manifest_id);
"""

# Whether a chunk (column `chunk_id` of the outer query) is kept at :now.
_KEPT: Final = """(
    EXISTS (SELECT 1 FROM uploads u WHERE u.chunk_id = {c} AND u.until > :now)
    OR EXISTS (SELECT 1 FROM covers v JOIN leases l USING (public_key, manifest_id)
               WHERE v.chunk_id = {c} AND l.until > :now)
)"""

# Every running charge: (holder, prefix, cost) per kept chunk and party.
_CHARGES: Final = """
    SELECT u.holder AS holder, u.prefix AS prefix, c.cost AS cost
    FROM uploads u JOIN chunks c USING (chunk_id) WHERE u.until > :now
    UNION ALL
    SELECT l.holder, l.prefix, c.cost
    FROM covers v JOIN leases l USING (public_key, manifest_id) JOIN chunks c USING (chunk_id)
    WHERE l.until > :now
"""


@dataclass(frozen=True, slots=True)
class LeaseSettings:
    """Lease lengths and the trash's grace, in seconds (the defaults are justified in
    docs/PROTOCOL.md#leases)."""

    length: float = 90 * DAY
    renew_at: float = 30 * DAY
    max_length: float = 365 * DAY
    upload_length: float = DAY
    trash_grace: float = 7 * DAY
    skew: float = 600.0
    sweep_interval: float = 3600.0

    def __post_init__(self) -> None:
        if not 0 < self.renew_at < self.length <= self.max_length:
            raise ValueError("need 0 < lease renewal point < lease length <= maximum")
        if self.upload_length <= 0 or self.trash_grace < 0 or self.sweep_interval <= 0:
            raise ValueError("upload lease and sweep interval must be positive, grace >= 0")


@dataclass(frozen=True, slots=True)
class LeaseSummary:
    """The book's totals for `freehold status`: bytes by cost."""

    owner_bytes: int
    kept_chunks: int
    trash_chunks: int
    trash_bytes: int
    leases: int


class LeaseBook:
    """The lease book of one holder (the module docstring states its rules)."""

    def __init__(
        self,
        path: Path | None,
        own: NodeId,
        settings: LeaseSettings | None = None,
        quota: QuotaSettings | None = None,
    ) -> None:
        self.own = own.value
        self.settings = settings or LeaseSettings()
        self.quota = quota or QuotaSettings()
        where = ":memory:" if path is None else str(path)
        self._where = where
        try:
            self._db = sqlite3.connect(where, isolation_level=None, check_same_thread=False)
            application_id = self._db.execute("PRAGMA application_id").fetchone()[0]
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            self.created = application_id == 0 and version == 0
            if self.created:
                with self._write("creating the lease book"):
                    self._db.executescript("BEGIN;" + _SCHEMA + "COMMIT;")
                    self._db.execute(f"PRAGMA application_id = {_APPLICATION_ID}")
                    self._db.execute(f"PRAGMA user_version = {_VERSION}")
            elif application_id != _APPLICATION_ID or version != _VERSION:
                raise StoreError(f"{where} is not a Freehold lease book of version {_VERSION}")
            if path is not None:
                self._db.execute("PRAGMA journal_mode = WAL")
                self._db.execute("PRAGMA synchronous = FULL")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the lease book {where}: {exc}") from exc
        self._by_holder: Counter[bytes] = Counter()
        self._by_prefix: Counter[str] = Counter()

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------------ charges

    def usage(self, holder: NodeId, prefix: str | None, used: int) -> Usage:
        """What the quota rules read for a party, beside the store's `used` bytes."""
        return Usage(
            used=used,
            owner=self._by_holder[self.own],
            key=self._by_holder[holder.value],
            prefix=self._by_prefix[prefix] if prefix is not None else 0,
        )

    def admit(
        self, holder: NodeId, prefix: str | None, cost: int, used: int, capacity: int
    ) -> None:
        """Raise unless `cost` more bytes may be charged to `holder` and `prefix` (the
        rules of node/quota.py): `StoreFull` for the owner's reserve, `OverQuota` for a
        share. The owner's own are bounded by the store's capacity alone."""
        if holder.value == self.own or cost <= 0:
            return
        usage = self.usage(holder, prefix, used)
        if not room_for_others(self.quota, capacity, usage, cost):
            raise StoreFull("full: the rest of this node is its owner's reserve")
        reason = over_quota(self.quota, capacity, usage, cost, has_prefix=prefix is not None)
        if reason is not None:
            raise OverQuota(f"over quota: {reason}")

    def _charge(self, holder: bytes, prefix: str | None, cost: int) -> None:
        self._by_holder[holder] += cost
        if prefix is not None:
            self._by_prefix[prefix] += cost

    def recount(self, now: float) -> None:
        """Count every running charge again, exactly."""
        self._by_holder.clear()
        self._by_prefix.clear()
        rows = self._read(
            f"SELECT holder, prefix, sum(cost) FROM ({_CHARGES}) GROUP BY holder, prefix",
            {"now": now},
        )
        for holder, prefix, cost in rows:
            self._charge(bytes(holder), prefix, int(cost))

    # ------------------------------------------------------------------ chunks

    def add_upload(
        self, chunk_id: bytes, cost: int, holder: NodeId, prefix: str | None, now: float
    ) -> None:
        """A chunk arrived from `holder` (at `prefix`): kept `upload_length` under its
        upload unless a lease already keeps it (a store again changes nothing then)."""
        until = now + self.settings.upload_length
        with self._write("recording an upload"):
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT INTO chunks (chunk_id, cost, trash) VALUES (?, ?, NULL) "
                "ON CONFLICT (chunk_id) DO NOTHING",
                (chunk_id, cost),
            )
            if self._kept(chunk_id, now):
                self._db.execute("COMMIT")
                return
            self._db.execute(
                "INSERT OR REPLACE INTO uploads (chunk_id, holder, prefix, until) "
                "VALUES (?, ?, ?, ?)",
                (chunk_id, holder.value, prefix, until),
            )
            self._db.execute("UPDATE chunks SET trash = NULL WHERE chunk_id = ?", (chunk_id,))
            self._db.execute("COMMIT")
        self._charge(holder.value, prefix, self._cost(chunk_id))

    def add_lease(
        self,
        lease: Lease,
        chunk_ids: Iterable[bytes],
        prefix: str | None,
        now: float,
        *,
        used: int,
        capacity: int,
    ) -> list[bool]:
        """Take `lease` for those of `chunk_ids` this node holds (rules 1 and 2); one
        flag per id, whether it is held. Raises `LeaseRefused` for a lease that breaks
        a rule, `OverQuota`/`StoreFull` when its new charges do not fit (nothing changes
        then)."""
        reason = problem(lease, now, skew=self.settings.skew)
        until = effective_expiry(lease, self.settings.max_length)
        if reason is None and not lease.is_release and until <= now:
            reason = f"it was issued over {self.settings.max_length:.0f} s ago"
        if reason is not None:
            raise LeaseRefused(f"lease refused: {reason}")
        ids = list(chunk_ids)
        costs = self._costs(ids)
        held = [chunk_id in costs for chunk_id in ids]
        key = (lease.public_key, lease.manifest_id)
        rows = self._read(
            "SELECT issued, prefix FROM leases WHERE public_key = ? AND manifest_id = ?", key
        )
        newer = not rows or lease.issued > rows[0][0]
        was_running = bool(rows) and not self._lease_ended(key, now)
        if not newer and (lease.is_release or not was_running):
            return held  # rule 1: a record as new or newer is kept; this one changes nothing
        # A record no newer than the one kept, while that one runs (a repairer carrying
        # the lease to a new holder of the file's chunks): it covers those chunks too.
        charged_prefix = rows[0][1] if rows else prefix
        holder = lease.holder
        covered = {
            bytes(chunk_id)
            for (chunk_id,) in self._read(
                "SELECT chunk_id FROM covers WHERE public_key = ? AND manifest_id = ?", key
            )
        }
        new = (
            {}
            if lease.is_release
            else {c: cost for c, cost in costs.items() if not (was_running and c in covered)}
        )
        if not lease.is_release:
            self.admit(holder, charged_prefix, sum(new.values()), used, capacity)
        # Rule 2: the same node's upload lease on these chunks has done its job.
        uploads = (
            [
                (bytes(c), prefix_of_upload, costs[bytes(c)])
                for c in costs
                for (prefix_of_upload,) in self._read(
                    "SELECT prefix FROM uploads WHERE chunk_id = ? AND holder = ? AND until > ?",
                    (c, holder.value, now),
                )
            ]
            if not lease.is_release
            else []
        )
        with self._write("taking a lease"):
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT INTO leases (public_key, manifest_id, holder, issued, "
                "expires, signature, until, prefix) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (public_key, manifest_id) DO UPDATE SET issued = excluded.issued, "
                "expires = excluded.expires, signature = excluded.signature, "
                "until = excluded.until WHERE excluded.issued > leases.issued",
                (
                    *key,
                    holder.value,
                    lease.issued,
                    lease.expires,
                    lease.signature,
                    until,
                    charged_prefix,
                ),
            )
            if lease.is_release:
                self._db.execute("DELETE FROM covers WHERE public_key = ? AND manifest_id = ?", key)
            else:
                self._db.executemany(
                    "INSERT OR IGNORE INTO covers (chunk_id, public_key, manifest_id) "
                    "VALUES (?, ?, ?)",
                    [(chunk_id, *key) for chunk_id in costs],
                )
                self._db.executemany(
                    "DELETE FROM uploads WHERE chunk_id = ? AND holder = ?",
                    [(chunk_id, holder.value) for chunk_id, _, _ in uploads],
                )
                self._db.executemany(
                    "UPDATE chunks SET trash = NULL WHERE chunk_id = ?",
                    [(chunk_id,) for chunk_id in costs],
                )
            self._db.execute("COMMIT")
        if lease.is_release:
            self.recount(now)
            return held
        self._charge(holder.value, charged_prefix, sum(new.values()))
        for _, upload_prefix, cost in uploads:
            self._charge(holder.value, upload_prefix, -cost)
        return held

    def _lease_ended(self, key: tuple[bytes, bytes], now: float) -> bool:
        rows = self._read("SELECT until FROM leases WHERE public_key = ? AND manifest_id = ?", key)
        return not rows or rows[0][0] <= now

    def forget(self, chunk_ids: Iterable[bytes]) -> None:
        """Drop every row of these chunks: the store deleted them (rule 4)."""
        ids = [(chunk_id,) for chunk_id in chunk_ids]
        with self._write("forgetting chunks"):
            self._db.execute("BEGIN IMMEDIATE")
            for table in ("chunks", "uploads", "covers"):
                self._db.executemany(f"DELETE FROM {table} WHERE chunk_id = ?", ids)
            self._db.execute("COMMIT")

    def known(self) -> set[bytes]:
        """The chunks the book has rows for: read before listing the store, for
        `reconcile`."""
        return {bytes(c) for (c,) in self._read("SELECT chunk_id FROM chunks", {})}

    def reconcile(
        self, known: set[bytes], held: Iterable[tuple[bytes, int]], now: float
    ) -> tuple[int, int]:
        """Make the book agree with the store, whose chunks (id, cost) are `held`
        (rule 4), listed after `known` was read: a chunk stored in between is in both
        or only in `held`, never taken for gone. How many rows were dropped and how
        many chunks were given a lease."""
        held_costs = dict(held)
        gone = known - held_costs.keys()
        fresh = [c for c in held_costs if c not in known]
        self.forget(gone)
        # An upgrade (a new book beside chunks) gives owners a whole lease to renew; a
        # chunk the book missed (a kill) is as if it had just arrived.
        length = self.settings.length if self.created else self.settings.upload_length
        with self._write("recording chunks found in the store"):
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT OR IGNORE INTO chunks (chunk_id, cost, trash) VALUES (?, ?, NULL)",
                [(c, held_costs[c]) for c in fresh],
            )
            self._db.executemany(
                "INSERT OR IGNORE INTO uploads (chunk_id, holder, prefix, until) "
                "VALUES (?, ?, NULL, ?)",
                [(c, b"", now + length) for c in fresh],
            )
            self._db.execute("COMMIT")
        self.created = False
        self.recount(now)
        return len(gone), len(fresh)

    def sweep(self, now: float, elapsed: float) -> list[bytes]:
        """Move chunks nobody keeps to the trash and kept ones out of it, add `elapsed`
        running seconds to the trash's clock (rule 3), and name the chunks whose grace
        is over (rule 4): the caller deletes them, then `forget`s them."""
        kept = _KEPT.format(c="chunks.chunk_id")
        with self._write("sweeping the lease book"):
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                f"UPDATE chunks SET trash = NULL WHERE trash IS NOT NULL AND {kept}",
                {"now": now},
            )
            self._db.execute(
                "UPDATE chunks SET trash = trash + :elapsed WHERE trash IS NOT NULL",
                {"elapsed": max(0.0, elapsed)},
            )
            self._db.execute(
                f"UPDATE chunks SET trash = 0 WHERE trash IS NULL AND NOT {kept}", {"now": now}
            )
            # Leases long over are dropped with their covers; releases are kept as long
            # as an older record could still be replayed (rule 1).
            self._db.execute(
                "DELETE FROM covers WHERE (public_key, manifest_id) IN "
                "(SELECT public_key, manifest_id FROM leases WHERE until <= :now)",
                {"now": now},
            )
            self._db.execute(
                "DELETE FROM leases WHERE issued + :max < :now AND until <= :now",
                {"now": now, "max": self.settings.max_length},
            )
            self._db.execute("DELETE FROM uploads WHERE until <= :now", {"now": now})
            self._db.execute("COMMIT")
        self.recount(now)
        due = self._read(
            "SELECT chunk_id FROM chunks WHERE trash >= ? ORDER BY chunk_id",
            (self.settings.trash_grace,),
        )
        return [bytes(chunk_id) for (chunk_id,) in due]

    # ------------------------------------------------------------------ questions

    def kept(self, chunk_id: bytes, now: float) -> bool:
        """Whether some lease (or the upload's) keeps the chunk at `now`."""
        return self._kept(chunk_id, now)

    def in_trash(self, chunk_id: bytes) -> bool:
        rows = self._read("SELECT trash FROM chunks WHERE chunk_id = ?", (chunk_id,))
        return bool(rows) and rows[0][0] is not None

    def leases_for(self, chunk_id: bytes, now: float) -> list[Lease]:
        """The running leases that cover the chunk: what a repairer carries to the holders
        of the chunks it rebuilds."""
        rows = self._read(
            "SELECT l.manifest_id, l.public_key, l.issued, l.expires, l.signature "
            "FROM covers v JOIN leases l USING (public_key, manifest_id) "
            "WHERE v.chunk_id = ? AND l.until > ? ORDER BY l.public_key",
            (chunk_id, now),
        )
        return [Lease(bytes(m), bytes(k), i, e, bytes(s)) for m, k, i, e, s in rows]

    def summary(self, now: float) -> LeaseSummary:
        ((trash_chunks, trash_bytes),) = self._read(
            "SELECT count(*), coalesce(sum(cost), 0) FROM chunks WHERE trash IS NOT NULL", {}
        )
        ((chunks,),) = self._read("SELECT count(*) FROM chunks", {})
        ((leases,),) = self._read("SELECT count(*) FROM leases WHERE until > :now", {"now": now})
        return LeaseSummary(
            owner_bytes=self._by_holder[self.own],
            kept_chunks=chunks - trash_chunks,
            trash_chunks=trash_chunks,
            trash_bytes=trash_bytes,
            leases=leases,
        )

    def charges(self) -> tuple[dict[bytes, int], dict[str, int]]:
        """What each key (node id) and each prefix is charged now."""
        return dict(self._by_holder), dict(self._by_prefix)

    # ------------------------------------------------------------------ SQLite

    def _kept(self, chunk_id: bytes, now: float) -> bool:
        rows = self._read(f"SELECT {_KEPT.format(c=':chunk')}", {"chunk": chunk_id, "now": now})
        return bool(rows[0][0])

    def _cost(self, chunk_id: bytes) -> int:
        rows = self._read("SELECT cost FROM chunks WHERE chunk_id = ?", (chunk_id,))
        return int(rows[0][0]) if rows else 0

    def _costs(self, chunk_ids: list[bytes]) -> dict[bytes, int]:
        costs: dict[bytes, int] = {}
        for chunk_id in chunk_ids:
            rows = self._read("SELECT cost FROM chunks WHERE chunk_id = ?", (chunk_id,))
            if rows:
                costs[chunk_id] = int(rows[0][0])
        return costs

    def _read(self, sql: str, parameters: object) -> list[tuple[Any, ...]]:
        try:
            rows: list[tuple[Any, ...]] = self._db.execute(sql, parameters).fetchall()  # type: ignore[arg-type]
            return rows
        except sqlite3.Error as exc:
            raise StoreError(f"reading the lease book {self._where}: {exc}") from exc

    @contextmanager
    def _write(self, doing: str) -> Iterator[None]:
        try:
            try:
                yield
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreError(f"{doing} in the lease book {self._where}: {exc}") from exc
