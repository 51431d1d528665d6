"""Peers caught lying, remembered and avoided.

A holder that serves bytes that are not the chunk it was asked for, or fails an audit
(protocol/audit.py), is *caught*: the node records it (its id, why, when, how often),
logs it once at WARNING, and for `AVOID_FOR` seconds after the last time does not fetch
from it or place chunks on it. `freehold peers` lists them. A holder is never caught for
not answering or for saying it does not hold a chunk: those are failures, not lies.

With a path, the record lives in its own SQLite file (`<data-dir>/peers.sqlite3`) and
survives a restart; times there are wall-clock (UNIX) seconds. Calls are rare (a lie
costs the liar a request first) and small, so they run on the caller's thread.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from node.errors import StoreError
from protocol.identity import NodeId

__all__ = ["AVOID_FOR", "FORGET_AFTER", "Liar", "Liars"]

logger = logging.getLogger(__name__)

AVOID_FOR: Final = 7 * 24 * 3600.0
"""Seconds a peer is avoided after it was last caught."""
FORGET_AFTER: Final = 4
"""A record is deleted once its peer has not been caught for this many AVOID_FORs:
peers with throwaway identities must not grow the file for ever."""

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS liars (
    node_id BLOB PRIMARY KEY CHECK (length(node_id) = 32),
    reason TEXT NOT NULL,
    first_caught REAL NOT NULL,
    last_caught REAL NOT NULL,
    times INTEGER NOT NULL CHECK (times >= 1)
)
"""


@dataclass(frozen=True, slots=True)
class Liar:
    """One peer caught lying: the latest reason, when first and last, how often."""

    node_id: NodeId
    reason: str
    first_caught: float
    last_caught: float
    times: int


class Liars:
    """The peers this node caught lying (module docstring)."""

    def __init__(
        self,
        path: Path | None = None,
        *,
        clock: Callable[[], float] = time.time,
        avoid_for: float = AVOID_FOR,
    ) -> None:
        self._clock = clock
        self._avoid_for = avoid_for
        self._known: dict[NodeId, Liar] = {}
        self._database: sqlite3.Connection | None = None
        if path is not None:
            try:
                self._database = sqlite3.connect(path, isolation_level=None)
                self._database.execute(_SCHEMA)
                self._database.execute(
                    "DELETE FROM liars WHERE last_caught < ?",
                    (self._clock() - FORGET_AFTER * avoid_for,),
                )
                rows = self._database.execute(
                    "SELECT node_id, reason, first_caught, last_caught, times FROM liars"
                ).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"cannot open the record of lying peers {path}: {exc}") from exc
            for node_id, reason, first, last, times in rows:
                self._known[NodeId(node_id)] = Liar(NodeId(node_id), reason, first, last, times)

    def caught(self, node_id: NodeId, reason: str) -> None:
        """Record that `node_id` lied (`reason` says how); logged the first time it is
        caught, and again only once it was forgiven and caught anew."""
        now = self._clock()
        known = self._known.get(node_id)
        if known is None or not self._avoiding(known, now):
            logger.warning("peer %s caught lying: %s; avoided for now", node_id.hex(), reason)
        first = known.first_caught if known is not None else now
        times = known.times + 1 if known is not None else 1
        liar = Liar(node_id, reason, first, now, times)
        self._known[node_id] = liar
        if self._database is not None:
            try:
                self._database.execute(
                    "INSERT OR REPLACE INTO liars VALUES (?, ?, ?, ?, ?)",
                    (node_id.value, reason, first, now, times),
                )
            except sqlite3.Error as exc:  # the record is kept in memory regardless
                logger.error("cannot save the record of a lying peer: %s", exc)

    def avoided(self, node_id: NodeId) -> bool:
        """Whether `node_id` was caught lying within the last `avoid_for` seconds."""
        known = self._known.get(node_id)
        return known is not None and self._avoiding(known, self._clock())

    def _avoiding(self, liar: Liar, now: float) -> bool:
        return now - liar.last_caught < self._avoid_for

    def entries(self) -> list[Liar]:
        """Every peer ever caught, most recently caught first."""
        return sorted(self._known.values(), key=lambda liar: -liar.last_caught)

    def close(self) -> None:
        if self._database is not None:
            self._database.close()
            self._database = None
