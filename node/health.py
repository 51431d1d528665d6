"""What a node's steward knows of its groups' health, kept across restarts.

The steward (node/steward.py) records, after each audit, what its plan
(node/stewardship.py) knows of the group: which slots have been missing since when,
which were lied about, how many chunks the audit proved, how many repairs. When the
node starts again the plan is given it back, so a holder that went silent before the
restart still counts as lost once `repair_grace` after it first went missing, not a
grace after the restart. The repair counters `freehold status` shows are kept too.

With a path, the record is a SQLite file (`<data-dir>/health.sqlite3`); times there
are wall-clock (UNIX) seconds, the plan's are the event loop's, and the caller says
what the two clocks read now. Losing the file loses no data, only time: the groups are
watched anew. Writes are one small row per audit, in WAL mode without a sync per
commit, on the caller's thread.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import msgpack

from node.errors import StoreError
from node.stewardship import GroupHealth, Slot, Stewardship
from protocol.identity import NODE_ID_SIZE, NodeId

__all__ = ["HEALTH_FILE", "HealthBook", "SavedHealth"]

logger = logging.getLogger(__name__)

HEALTH_FILE: Final = "health.sqlite3"

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS groups (
    group_key BLOB PRIMARY KEY CHECK (length(group_key) = 32),
    live INTEGER,
    repairs INTEGER NOT NULL,
    slots BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS totals (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class SavedHealth:
    """One group's health as saved: times are wall-clock seconds."""

    live: int | None
    repairs: int
    missing_since: dict[Slot, float]
    lied_about: frozenset[Slot]
    proven: frozenset[Slot]


def _pack_slot(slot: Slot) -> int | bytes:
    return slot.value if isinstance(slot, NodeId) else slot


def _unpack_slot(raw: object) -> Slot:
    if isinstance(raw, bytes) and len(raw) == NODE_ID_SIZE:
        return NodeId(raw)
    if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw < 1 << 16:
        return raw
    raise ValueError(f"not a slot: {raw!r}")


def _pack(health: GroupHealth, to_wall: float) -> bytes:
    """The slots of `health` as msgpack: [[slot, missing since or None, lied], ...] for
    the missing ones, then [slot] for the proven ones (copies only)."""
    missing: list[list[int | bytes | float | bool | None]] = [
        [_pack_slot(slot), since + to_wall, slot in health.lied_about]
        for slot, since in health.missing_since.items()
    ]
    missing += [
        [_pack_slot(slot), None, True]
        for slot in health.lied_about
        if slot not in health.missing_since
    ]
    proven: list[list[int | bytes | float | bool | None]] = (
        [[_pack_slot(slot)] for slot in health.proven] if health.copies else []
    )
    packed: bytes = msgpack.packb(missing + proven)
    return packed


def _unpack(blob: bytes) -> tuple[dict[Slot, float], set[Slot], set[Slot]]:
    missing: dict[Slot, float] = {}
    lied: set[Slot] = set()
    proven: set[Slot] = set()
    rows = msgpack.unpackb(blob, strict_map_key=True)
    if not isinstance(rows, list):
        raise ValueError("slots are not a list")
    for row in rows:
        if not isinstance(row, list) or len(row) not in (1, 3):
            raise ValueError(f"not a slot row: {row!r}")
        slot = _unpack_slot(row[0])
        if len(row) == 1:
            proven.add(slot)
            continue
        since, lied_about = row[1], row[2]
        if isinstance(since, float | int) and not isinstance(since, bool):
            missing[slot] = float(since)
        elif since is not None:
            raise ValueError(f"not a time: {since!r}")
        if lied_about is True:
            lied.add(slot)
    return missing, lied, proven


class HealthBook:
    """The saved health of the groups a node watches (module docstring)."""

    def __init__(self, path: Path | None = None) -> None:
        self._database: sqlite3.Connection | None = None
        if path is not None:
            try:
                self._database = sqlite3.connect(path, isolation_level=None)
                self._database.execute("PRAGMA journal_mode=WAL")
                self._database.execute("PRAGMA synchronous=NORMAL")
                self._database.executescript(_SCHEMA)
            except sqlite3.Error as exc:
                raise StoreError(f"cannot open the record of segment health {path}: {exc}") from exc

    def load(self, keep: Iterable[bytes]) -> dict[bytes, SavedHealth]:
        """The saved health of the groups in `keep`; the others' rows are deleted (we
        no longer hold a chunk of them). A damaged row is dropped and logged."""
        if self._database is None:
            return {}
        wanted = set(keep)
        saved: dict[bytes, SavedHealth] = {}
        dropped: list[bytes] = []
        try:
            rows = self._database.execute(
                "SELECT group_key, live, repairs, slots FROM groups"
            ).fetchall()
            for key, live, repairs, blob in rows:
                if key not in wanted:
                    dropped.append(key)
                    continue
                try:
                    missing, lied, proven = _unpack(blob)
                except (ValueError, msgpack.UnpackException) as exc:
                    logger.warning("dropping the damaged health of group %s: %s", key.hex(), exc)
                    dropped.append(key)
                    continue
                saved[key] = SavedHealth(live, repairs, missing, frozenset(lied), frozenset(proven))
            self._database.executemany(
                "DELETE FROM groups WHERE group_key = ?", [(key,) for key in dropped]
            )
        except sqlite3.Error as exc:
            logger.error("cannot read the record of segment health: %s", exc)
        return saved

    def restore(self, plan: Stewardship, *, to_wall: float) -> None:
        """Give `plan` back what was saved of the groups it watches (the others' rows
        are deleted); `to_wall` is what to add to the plan's clock to make it wall-clock."""
        for key, saved in self.load(plan.groups).items():
            plan.restore(
                key,
                live=saved.live,
                repairs=saved.repairs,
                missing_since={slot: t - to_wall for slot, t in saved.missing_since.items()},
                lied_about=saved.lied_about,
                proven=saved.proven,
            )

    def save(self, group_key: bytes, health: GroupHealth, *, to_wall: float) -> None:
        """Record `health` (its times plus `to_wall` are wall-clock seconds)."""
        if self._database is None:
            return
        try:
            self._database.execute(
                "INSERT OR REPLACE INTO groups VALUES (?, ?, ?, ?)",
                (group_key, health.live, health.repairs, _pack(health, to_wall)),
            )
        except sqlite3.Error as exc:  # the plan keeps it in memory regardless
            logger.error("cannot save the health of a group: %s", exc)

    def forget(self, group_key: bytes) -> None:
        if self._database is None:
            return
        try:
            self._database.execute("DELETE FROM groups WHERE group_key = ?", (group_key,))
        except sqlite3.Error as exc:
            logger.error("cannot forget the health of a group: %s", exc)

    def totals(self) -> dict[str, int]:
        """The saved repair counters."""
        if self._database is None:
            return {}
        try:
            rows = self._database.execute("SELECT name, value FROM totals").fetchall()
        except sqlite3.Error as exc:
            logger.error("cannot read the repair counters: %s", exc)
            return {}
        return {name: value for name, value in rows}

    def save_totals(self, totals: Mapping[str, int]) -> None:
        if self._database is None:
            return
        try:
            self._database.executemany(
                "INSERT OR REPLACE INTO totals VALUES (?, ?)", list(totals.items())
            )
        except sqlite3.Error as exc:
            logger.error("cannot save the repair counters: %s", exc)

    def close(self) -> None:
        if self._database is not None:
            self._database.close()
            self._database = None
