"""What a holder keeps, for whom, and until when: the lease book.

Every chunk in the store is kept under at least one lease (protocol/lease.py), or,
for `upload_length` after it arrived, under the upload that brought it: an upload that
never completes leaves nothing behind for long. The book records, beside each chunk's
cost (node/quota.py), who keeps it and until when, who pays for it, and which chunks
nobody keeps any more.

| state     | what it means                                  | leaves it when                   |
|-----------|------------------------------------------------|----------------------------------|
| kept      | a lease or the upload's lease is running        | the last one ends: trash         |
| trash     | nobody keeps it; still held, served, counted   | a lease comes back: kept         |
|           |                                                | `trash_grace` of running: deleted |

The rules:

1. A lease is taken only if `protocol.lease.problem` finds nothing wrong, and counts
   for at most `max_length` after it was issued. Per (key, manifest) the book keeps
   the record issued last; an older one changes nothing, so a replayed lease cannot
   undo a release. A release ends its key's lease and nobody else's. A record that is
   no newer than the one kept still covers the chunks it names while that one runs (a
   repairer carrying the lease to a rebuilt chunk); otherwise it is ignored, and its
   answer says no chunk was taken.
2. A lease covers the chunks it was sent with that this node holds, and each cover has
   a payer: the lease's own key when that key's node sent it, else the node that sent
   it (a repairer carrying the lease, or anyone who saw it). Nobody can charge a key
   for chunks its own node did not name; a cover the key's node sends takes the charge
   over. A payer's upload lease on a chunk ends when it covers the chunk.
3. Charges: a payer (and the prefix of the request that made the charge) is charged a
   chunk's cost, once however many leases it keeps it under, plus `COVER_COST` per
   lease, for as long as its row exists: the sweep removes the rows of leases and
   upload leases that ended on chunks someone else still keeps, and the rows of a
   chunk in the trash go only with the chunk. So a charge never changes but by a write
   or a sweep, and letting data lapse frees no quota before it frees the disk.
4. Time in trash is counted in the node's running time (`sweep`'s `elapsed`), never
   from the wall clock: a clock that jumps a year ahead sends chunks to the trash, but
   deletes nothing until `trash_grace` of real running has passed, in which a renewal
   brings them back. Only a sweep takes a chunk out of the trash, if a lease then
   runs: a lease that ends between two sweeps does not reset the grace.
5. A chunk is deleted only by `sweep` naming it: trash for `trash_grace`, and no lease
   running at that moment. The caller deletes it from the store, then `forget`s it; a
   kill in between leaves a row for a chunk the store no longer has, which `reconcile`
   drops at the next start. A chunk the store has and the book does not (killed
   between the store's commit and the book's) gets an upload lease at the next start,
   as if it had just arrived; and when the book is new beside a store that is not
   (an upgrade), every chunk gets a lease of `length`, so that owners have time to
   renew.

Counters: what each payer and prefix is charged is counted exactly by `recount` (at
open and after each sweep) and, between sweeps, changed by exactly what each write
changes, measured in its own transaction (`_charged` before and after, for the chunks
it touches); a write that would take its payer or prefix past a share is rolled back.
Charges do not depend on the time (rule 3), so the counters and `recount` agree at
every moment.
Stores in flight are reserved (`admit` and `release`), so that concurrent stores
cannot pass a share together.

With a path, the book is `<data-dir>/leases.sqlite3` (WAL, synchronous = FULL: a lease
acknowledged is a lease kept); without, SQLite in memory, for simulations. Times are
the node's lease clock (node/keeper.py), wall-clock seconds.
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
from node.quota import COVER_COST, QuotaSettings, Usage, over_quota, room_for_others
from protocol.identity import NodeId
from protocol.lease import Lease, effective_expiry, problem

__all__ = ["LEASES_FILE", "LeaseBook", "LeaseSettings", "LeaseSummary", "Reservation"]

LEASES_FILE: Final = "leases.sqlite3"

DAY: Final = 24 * 3600.0

_APPLICATION_ID: Final = 0x46484C42  # "FHLB"
_VERSION: Final = 1
# The most leases a repairer carries for one chunk (`leases_for`).
MAX_CARRIED: Final = 8
# A payer no key stands for: chunks found in the store without a record (rule 5).
_NOBODY: Final = b""

_SCHEMA: Final = """
CREATE TABLE chunks (
    chunk_id BLOB PRIMARY KEY,
    cost INTEGER NOT NULL,
    -- Running seconds spent in the trash so far; NULL while kept.
    trash REAL
) WITHOUT ROWID;
CREATE TABLE uploads (
    chunk_id BLOB PRIMARY KEY,
    payer BLOB NOT NULL,
    prefix TEXT,
    until REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX uploads_by_payer ON uploads (payer);
CREATE TABLE leases (
    public_key BLOB NOT NULL,
    manifest_id BLOB NOT NULL,
    issued INTEGER NOT NULL,
    until REAL NOT NULL,
    -- The record as signed: its signed bytes, then its signature.
    record BLOB NOT NULL,
    PRIMARY KEY (public_key, manifest_id)
) WITHOUT ROWID;
CREATE TABLE covers (
    chunk_id BLOB NOT NULL,
    public_key BLOB NOT NULL,
    manifest_id BLOB NOT NULL,
    payer BLOB NOT NULL,
    prefix TEXT,
    PRIMARY KEY (chunk_id, public_key, manifest_id)
) WITHOUT ROWID;
CREATE INDEX covers_by_lease ON covers (public_key, manifest_id);
"""

# Whether a chunk (column or parameter `{c}`) is kept at :now.
_KEPT: Final = """(
    EXISTS (SELECT 1 FROM uploads u WHERE u.chunk_id = {c} AND u.until > :now)
    OR EXISTS (SELECT 1 FROM covers v JOIN leases l USING (public_key, manifest_id)
               WHERE v.chunk_id = {c} AND l.until > :now)
)"""

# What is charged (rule 3), whatever the time: every row that exists. A row that ended
# charges until the sweep removes it (on a chunk someone still keeps) or the chunk is
# deleted (in the trash), so no charge comes back with no write, nor goes.
# (chunk_id, payer, prefix, cost, covers): covers is 1 for a cover row (it costs a row
# of the book besides), 0 for an upload row.
_CHARGED: Final = """
    SELECT v.chunk_id AS chunk_id, v.payer AS payer, v.prefix AS prefix, c.cost AS cost,
           1 AS covers
    FROM covers v JOIN chunks c USING (chunk_id)
    UNION ALL
    SELECT u.chunk_id, u.payer, u.prefix, c.cost, 0 FROM uploads u JOIN chunks c USING (chunk_id)
"""

# The same for one chunk (:chunk), with every lookup by key.
_CHARGED_ONE: Final = """
    SELECT v.payer, v.prefix, c.cost, 1 FROM covers v JOIN chunks c USING (chunk_id)
    WHERE v.chunk_id = :chunk
    UNION ALL
    SELECT u.payer, u.prefix, c.cost, 0 FROM uploads u JOIN chunks c USING (chunk_id)
    WHERE u.chunk_id = :chunk
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
    trash_chunks: int
    trash_bytes: int
    leases: int


@dataclass(frozen=True, slots=True)
class Reservation:
    """Bytes set aside by `admit` for a store in flight; given back by `release`."""

    payer: bytes
    prefix: str | None
    cost: int


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
        self._by_payer: Counter[bytes] = Counter()
        self._by_prefix: Counter[str] = Counter()
        self._reserved_payer: Counter[bytes] = Counter()
        self._reserved_prefix: Counter[str] = Counter()
        self._reserved = 0

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------------ charges

    def usage(self, payer: NodeId, prefix: str | None, used: int) -> Usage:
        """What the quota rules read for a party (stores in flight included), beside
        the store's `used` bytes."""
        return Usage(
            used=used + self._reserved,
            owner=self._by_payer[self.own],
            key=self._by_payer[payer.value] + self._reserved_payer[payer.value],
            prefix=(self._by_prefix[prefix] + self._reserved_prefix[prefix])
            if prefix is not None
            else 0,
        )

    def admit(
        self, payer: NodeId, prefix: str | None, cost: int, used: int, capacity: int
    ) -> Reservation | None:
        """Set `cost` bytes aside for a store charged to `payer` and `prefix`, or
        raise: `StoreFull` for the owner's reserve, `OverQuota` for a share (node/quota.py).
        The owner's own are bounded by the store's capacity alone (None: nothing set
        aside). Give the reservation back with `release` once the store is done."""
        if payer.value == self.own:
            return None
        usage = self.usage(payer, prefix, used)
        if not room_for_others(self.quota, capacity, usage, cost):
            raise StoreFull("full: the rest of this node is its owner's reserve")
        reason = over_quota(self.quota, capacity, usage, cost, has_prefix=prefix is not None)
        if reason is not None:
            raise OverQuota(f"over quota: {reason}")
        self._reserved += cost
        self._reserved_payer[payer.value] += cost
        if prefix is not None:
            self._reserved_prefix[prefix] += cost
        return Reservation(payer.value, prefix, cost)

    def release(self, reservation: Reservation | None) -> None:
        """Give back what `admit` set aside."""
        if reservation is None:
            return
        self._reserved -= reservation.cost
        self._reserved_payer[reservation.payer] -= reservation.cost
        if reservation.prefix is not None:
            self._reserved_prefix[reservation.prefix] -= reservation.cost

    def recount(self) -> None:
        """Count every charge again, exactly (rule 3: charges do not depend on time)."""
        self._by_payer.clear()
        self._by_prefix.clear()
        payers, prefixes = _tally(self._read(_CHARGED, {}))
        self._by_payer.update(payers)
        self._by_prefix.update(prefixes)

    def _charged(self, chunk_ids: Iterable[bytes]) -> tuple[Counter[bytes], Counter[str]]:
        """What these chunks charge, per payer and per prefix (rule 3)."""
        rows: list[tuple[Any, ...]] = []
        for chunk_id in chunk_ids:
            rows += [(chunk_id, *row) for row in self._read(_CHARGED_ONE, {"chunk": chunk_id})]
        return _tally(rows)

    @contextmanager
    def _charging(
        self,
        doing: str,
        chunk_ids: list[bytes],
        *,
        check: tuple[NodeId, str | None, int, int] | None = None,
    ) -> Iterator[None]:
        """One write transaction over `chunk_ids`: the counters change by exactly what
        it changes; with `check` (payer, prefix, used, capacity), a write that takes the
        payer or the prefix past its share is rolled back (`OverQuota`)."""
        with self._write(doing):
            self._db.execute("BEGIN IMMEDIATE")
            payers_before, prefixes_before = self._charged(chunk_ids)
            yield
            payers, prefixes = self._charged(chunk_ids)
            payers.subtract(payers_before)
            prefixes.subtract(prefixes_before)
            if check is not None:
                payer, prefix, used, capacity = check
                if payer.value != self.own:
                    reason = over_quota(
                        self.quota,
                        capacity,
                        self.usage(payer, prefix, used),
                        payers[payer.value],
                        prefix_cost=prefixes[prefix] if prefix is not None else 0,
                        has_prefix=prefix is not None,
                    )
                    if reason is not None:
                        self._db.execute("ROLLBACK")
                        raise OverQuota(f"over quota: {reason}")
            self._db.execute("COMMIT")
        self._by_payer.update(payers)
        self._by_prefix.update(prefixes)

    # ------------------------------------------------------------------ chunks

    def add_upload(
        self,
        chunk_id: bytes,
        cost: int,
        payer: NodeId,
        prefix: str | None,
        now: float,
        reservation: Reservation | None = None,
        *,
        admitted: bool = True,
    ) -> None:
        """A chunk arrived from `payer` (at `prefix`): kept `upload_length` under its
        upload, unless something already keeps it (a store again then changes nothing,
        and renews nothing) or it was not `admitted` under the quotas (it was kept
        when its store began: as if stored then). Gives back `reservation`."""
        until = now + self.settings.upload_length
        try:
            with self._charging("recording an upload", [chunk_id]):
                self._db.execute(
                    "INSERT INTO chunks (chunk_id, cost, trash) VALUES (?, ?, NULL) "
                    "ON CONFLICT (chunk_id) DO NOTHING",
                    (chunk_id, cost),
                )
                if admitted and not self._kept(chunk_id, now):
                    self._db.execute(
                        "INSERT OR REPLACE INTO uploads (chunk_id, payer, prefix, until) "
                        "VALUES (?, ?, ?, ?)",
                        (chunk_id, payer.value, prefix, until),
                    )
        finally:
            self.release(reservation)

    def add_lease(
        self,
        lease: Lease,
        chunk_ids: Iterable[bytes],
        sender: NodeId | None,
        prefix: str | None,
        now: float,
        *,
        used: int,
        capacity: int,
    ) -> list[bool]:
        """Take `lease`, sent by `sender` (None: this node) from `prefix`, for those of
        `chunk_ids` this node holds (rules 1 and 2); one flag per id: whether the lease
        now keeps it here (for a release: whether it is held). Raises `LeaseRefused`
        for a lease that breaks a rule, `OverQuota` when the charges it adds do not fit
        (nothing changes then)."""
        reason = problem(lease, now, skew=self.settings.skew)
        until = effective_expiry(lease, self.settings.max_length)
        if reason is None and not lease.is_release and until <= now:
            reason = f"it was issued over {self.settings.max_length:.0f} s ago"
        if reason is not None:
            raise LeaseRefused(f"lease refused: {reason}")
        ids = list(chunk_ids)
        held = [chunk_id for chunk_id in dict.fromkeys(ids) if self._known(chunk_id)]
        key = (lease.public_key, lease.manifest_id)
        rows = self._read(
            "SELECT issued, until FROM leases WHERE public_key = ? AND manifest_id = ?", key
        )
        newer = not rows or lease.issued > rows[0][0]
        running = bool(rows) and rows[0][1] > now
        if not newer and (lease.is_release or not running):
            return [False] * len(ids)  # rule 1: ignored
        if not rows and (not held or lease.is_release):
            return [False] * len(ids)  # a record that would keep or end nothing here
        holder = lease.holder
        sender = sender if sender is not None else NodeId(self.own)
        payer = holder if sender == holder else sender
        check = None if lease.is_release else (payer, prefix, used, capacity)
        # Charges do not depend on time (rule 3): a record's new expiry changes no
        # charge, only the covers this one adds do.
        with self._charging("taking a lease", held, check=check):
            if newer:
                self._db.execute(
                    "INSERT INTO leases (public_key, manifest_id, issued, until, record) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (public_key, manifest_id) DO UPDATE "
                    "SET issued = excluded.issued, until = excluded.until, "
                    "record = excluded.record",
                    (*key, lease.issued, until, lease.signed_bytes() + lease.signature),
                )
            if not lease.is_release:
                # Rule 2: a cover the key's node sends takes the charge over.
                self._db.executemany(
                    "INSERT INTO covers (chunk_id, public_key, manifest_id, payer, prefix) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (chunk_id, public_key, manifest_id) "
                    "DO UPDATE SET payer = excluded.payer, prefix = excluded.prefix "
                    "WHERE excluded.payer = ?",
                    [(chunk_id, *key, payer.value, prefix, holder.value) for chunk_id in held],
                )
                self._db.executemany(
                    "DELETE FROM uploads WHERE chunk_id = ? AND payer = ?",
                    [(chunk_id, payer.value) for chunk_id in held],
                )
        taken = set(held)
        return [chunk_id in taken for chunk_id in ids]

    def forget(self, chunk_ids: Iterable[bytes]) -> None:
        """Drop every row of these chunks: the store deleted them (rule 5). Their
        charges end."""
        ids = list(chunk_ids)
        if not ids:
            return
        with self._charging("forgetting chunks", ids):
            self._delete_rows(ids)

    def known(self) -> set[bytes]:
        """The chunks the book has rows for: read before listing the store, for
        `reconcile`."""
        return {bytes(c) for (c,) in self._read("SELECT chunk_id FROM chunks", {})}

    def reconcile(
        self, known: set[bytes], held: Iterable[tuple[bytes, int]], now: float
    ) -> tuple[int, int]:
        """Make the book agree with the store, whose chunks (id, cost) are `held`
        (rule 5), listed after `known` was read: a chunk stored in between is in both
        or only in `held`, never taken for gone. How many rows were dropped and how
        many chunks were given a lease."""
        held_costs = dict(held)
        gone = known - held_costs.keys()
        fresh = [c for c in held_costs if c not in known]
        # An upgrade (a new book beside chunks) gives owners a whole lease to renew; a
        # chunk the book missed (a kill) is as if it had just arrived.
        length = self.settings.length if self.created else self.settings.upload_length
        with self._write("making the lease book agree with the store"):
            self._db.execute("BEGIN IMMEDIATE")
            self._delete_rows(gone)
            self._db.executemany(
                "INSERT OR IGNORE INTO chunks (chunk_id, cost, trash) VALUES (?, ?, NULL)",
                [(c, held_costs[c]) for c in fresh],
            )
            self._db.executemany(
                "INSERT OR IGNORE INTO uploads (chunk_id, payer, prefix, until) "
                "VALUES (?, ?, NULL, ?)",
                [(c, _NOBODY, now + length) for c in fresh],
            )
            self._db.execute("COMMIT")
        self.created = False
        self.recount()
        return len(gone), len(fresh)

    def sweep(self, now: float, elapsed: float) -> list[bytes]:
        """Move chunks nobody keeps to the trash and kept ones out of it, add `elapsed`
        running seconds to the trash's clock (rule 4), drop what no longer charges
        anyone, and name the chunks whose grace is over (rule 5): the caller deletes
        them, then `forget`s them."""
        kept = _KEPT.format(c="chunks.chunk_id")
        parameters = {"now": now, "elapsed": max(0.0, elapsed)}
        with self._write("sweeping the lease book"):
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                f"UPDATE chunks SET trash = NULL WHERE trash IS NOT NULL AND {kept}", parameters
            )
            self._db.execute(
                "UPDATE chunks SET trash = trash + :elapsed WHERE trash IS NOT NULL", parameters
            )
            self._db.execute(
                f"UPDATE chunks SET trash = 0 WHERE trash IS NULL AND NOT {kept}", parameters
            )
            # Leases and upload leases that ended on chunks still kept by others charge
            # nobody any more (rule 3); on chunks in the trash they charge until the end.
            self._db.execute(
                "DELETE FROM covers WHERE chunk_id IN (SELECT chunk_id FROM chunks "
                "WHERE trash IS NULL) AND (public_key, manifest_id) IN "
                "(SELECT public_key, manifest_id FROM leases WHERE until <= :now)",
                parameters,
            )
            self._db.execute(
                "DELETE FROM uploads WHERE until <= :now AND chunk_id IN "
                "(SELECT chunk_id FROM chunks WHERE trash IS NULL)",
                parameters,
            )
            # A record with no cover left, that any older one would also have ended by
            # now, protects nothing (rule 1): dropped.
            self._db.execute(
                "DELETE FROM leases WHERE until <= :now AND issued + :max < :now AND NOT "
                "EXISTS (SELECT 1 FROM covers v WHERE v.public_key = leases.public_key "
                "AND v.manifest_id = leases.manifest_id)",
                {**parameters, "max": self.settings.max_length},
            )
            self._db.execute("COMMIT")
        self.recount()
        due = self._read(
            "SELECT chunk_id FROM chunks WHERE trash >= ? ORDER BY chunk_id",
            (self.settings.trash_grace,),
        )
        return [bytes(chunk_id) for (chunk_id,) in due]

    # ------------------------------------------------------------------ questions

    def kept(self, chunk_id: bytes, now: float) -> bool:
        """Whether some lease (or the upload's) keeps the chunk at `now`."""
        return self._kept(chunk_id, now)

    def leased(self, chunk_id: bytes, now: float) -> bool:
        """Whether a signed lease (not only its upload's) keeps the chunk at `now`."""
        rows = self._read(
            "SELECT 1 FROM covers v JOIN leases l USING (public_key, manifest_id) "
            "WHERE v.chunk_id = ? AND l.until > ? LIMIT 1",
            (chunk_id, now),
        )
        return bool(rows)

    def in_trash(self, chunk_id: bytes) -> bool:
        rows = self._read("SELECT trash FROM chunks WHERE chunk_id = ?", (chunk_id,))
        return bool(rows) and rows[0][0] is not None

    def leases_on(self, chunk_id: bytes, now: float) -> list[tuple[Lease, bytes]]:
        """Every running lease that covers the chunk, with the payer of its cover."""
        rows = self._read(
            "SELECT l.record, v.payer FROM covers v JOIN leases l USING (public_key, manifest_id) "
            "WHERE v.chunk_id = ? AND l.until > ? ORDER BY l.until DESC, l.public_key",
            (chunk_id, now),
        )
        return [(_parse(bytes(record)), bytes(payer)) for record, payer in rows]

    def leases_for(self, chunk_id: bytes, now: float) -> list[Lease]:
        """The running leases that cover the chunk, as named by their keys' own nodes,
        at most `MAX_CARRIED`, the longest first: what a repairer carries to the
        holders of the chunks it rebuilds (a lease only someone else named here may
        be anyone's, and would be charged to the repairer there)."""
        own = [
            lease for lease, payer in self.leases_on(chunk_id, now) if lease.holder.value == payer
        ]
        return own[:MAX_CARRIED]

    def summary(self, now: float) -> LeaseSummary:
        ((trash_chunks, trash_bytes),) = self._read(
            "SELECT count(*), coalesce(sum(cost), 0) FROM chunks WHERE trash IS NOT NULL", {}
        )
        ((leases,),) = self._read("SELECT count(*) FROM leases WHERE until > :now", {"now": now})
        return LeaseSummary(
            owner_bytes=self._by_payer[self.own],
            trash_chunks=trash_chunks,
            trash_bytes=trash_bytes,
            leases=leases,
        )

    def charges(self) -> tuple[dict[bytes, int], dict[str, int]]:
        """What each payer (node id) and each prefix is charged now."""
        return (
            {payer: cost for payer, cost in self._by_payer.items() if cost},
            {prefix: cost for prefix, cost in self._by_prefix.items() if cost},
        )

    # ------------------------------------------------------------------ SQLite

    def _delete_rows(self, chunk_ids: Iterable[bytes]) -> None:
        """Every row of these chunks, in the transaction the caller holds."""
        rows = [(chunk_id,) for chunk_id in chunk_ids]
        for table in ("chunks", "uploads", "covers"):
            self._db.executemany(f"DELETE FROM {table} WHERE chunk_id = ?", rows)

    def _kept(self, chunk_id: bytes, now: float) -> bool:
        rows = self._read(f"SELECT {_KEPT.format(c=':chunk')}", {"chunk": chunk_id, "now": now})
        return bool(rows[0][0])

    def _known(self, chunk_id: bytes) -> bool:
        return bool(self._read("SELECT 1 FROM chunks WHERE chunk_id = ?", (chunk_id,)))

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


def _parse(record: bytes) -> Lease:
    """A lease from its stored record: the signed bytes (domain, manifest id, key,
    issued, expires), then the signature."""
    from protocol.lease import LEASE_DOMAIN

    body = record[len(LEASE_DOMAIN) :]
    return Lease(
        manifest_id=body[:32],
        public_key=body[32:64],
        issued=int.from_bytes(body[64:72], "big"),
        expires=int.from_bytes(body[72:80], "big"),
        signature=body[80:144],
    )


def _tally(rows: Iterable[tuple[Any, ...]]) -> tuple[Counter[bytes], Counter[str]]:
    """Charges per payer and per prefix from (chunk_id, payer, prefix, cost, covers)
    rows: a chunk's cost once per payer (and per prefix) that keeps it, and
    `COVER_COST` for every cover row (rule 3)."""
    payers: Counter[bytes] = Counter()
    prefixes: Counter[str] = Counter()
    by_payer: set[tuple[bytes, bytes]] = set()
    by_prefix: set[tuple[bytes, str]] = set()
    for chunk_id, payer, prefix, cost, covers in rows:
        payer = bytes(payer)
        chunk_id = bytes(chunk_id)
        extra = COVER_COST if covers else 0
        payers[payer] += extra + (cost if (chunk_id, payer) not in by_payer else 0)
        by_payer.add((chunk_id, payer))
        if prefix is not None:
            prefixes[prefix] += extra + (cost if (chunk_id, prefix) not in by_prefix else 0)
            by_prefix.add((chunk_id, prefix))
    return payers, prefixes
