"""Byte budgets: how much memory peers may make a node hold, node-wide and per peer.

Identities are cheap and connections many, so a per-connection bound alone does not
bound memory: 20 peers each sending a maximum frame less one byte pinned 82.5 MiB, and
one that sent 64 FETCH_CHUNKs and never read pinned 60 MiB (issue 18, row 4). Two
budgets of `TransportConfig` bound what peers can pin, whatever their number:

| budget                         | counts                                | past it                 |
|--------------------------------|---------------------------------------|-------------------------|
| receive: `max_receive_buffer`, | each large frame being received: what | the link reads no more  |
| `max_receive_buffer_per_prefix`| has arrived plus a 256 KiB window, up | until room frees within |
|                                | to its length; a quarter kept for     | the frame's deadline    |
|                                | contacts we know (no prefix limit)    |                         |
| answers: `max_answer_backlog`, | answers made and not yet sent:        | FETCH_CHUNK and         |
| `max_answer_backlog_per_peer`  | waiting for room in a link, or queued | AUDIT_CHUNKS answered   |
|                                | in it                                 | BUSY                    |

All that links queue, small answers included, is metered node-wide (`SendMeter`): past
`max_send_queue` the connection with the most queued is cut off, so peers that send
requests and never read their answers (PINGs, say) hold at most that much.

A frame must arrive whole within `frame_timeout` of its first byte, budget wait
included, or its sender is cut off: a partial frame keeps neither its reservation nor
its connection. Small frames (under `SMALL_FRAME`) are not reserved: a connection holds
at most one partial frame, and the connection limits bound those.

`ByteBudget` is the receive budget's ledger: reservations by key (an address prefix)
under a node-wide limit and a per-key one, and a parking lot for the readers that wait.
"""

from __future__ import annotations

from collections import Counter

import trio

__all__ = ["SMALL_FRAME", "ByteBudget", "SendMeter"]

# Frames up to this size are read without a reservation.
SMALL_FRAME = 64 * 1024


class ByteBudget:
    """Bytes reserved by key, at most `limit` in all and `per_key` (None: no such
    limit) for one key, and at most `limit - kept` for reservations not `known` (a
    share kept for the contacts a node knows). `reserve` waits for room; `release`
    gives it back."""

    def __init__(self, limit: int, per_key: int | None, *, kept: int = 0) -> None:
        self.limit = limit
        self.per_key = per_key
        self.kept = kept
        self.used = 0
        self.used_unknown = 0
        self.high_water = 0
        self.waited = 0  # reservations that had to wait for room
        self._by_key: Counter[str] = Counter()
        self._room = trio.lowlevel.ParkingLot()

    def fits(self, size: int, key: str, *, known: bool = False) -> bool:
        """Whether `size` more bytes for `key` fit now."""
        if self.used + size > self.limit:
            return False
        if not known and self.used_unknown + size > self.limit - self.kept:
            return False
        return known or self.per_key is None or self._by_key[key] + size <= self.per_key

    def used_by(self, key: str) -> int:
        return self._by_key.get(key, 0)

    async def reserve(self, size: int, key: str, *, known: bool = False) -> None:
        """Reserve `size` bytes for `key`, waiting for room (cancellable)."""
        if not self.fits(size, key, known=known):
            self.waited += 1
            while not self.fits(size, key, known=known):
                await self._room.park()
        self.used += size
        if not known:
            self.used_unknown += size
        self._by_key[key] += size
        self.high_water = max(self.high_water, self.used)

    def release(self, size: int, key: str, *, known: bool = False) -> None:
        self.used -= size
        if not known:
            self.used_unknown -= size
        self._by_key[key] -= size
        if self._by_key[key] <= 0:
            del self._by_key[key]
        self._room.unpark_all()


class SendMeter:
    """Bytes queued in all of a node's links and not yet sent (each link adds and takes
    away its own), so that the transport can tell when the node holds too much for
    peers that do not read."""

    __slots__ = ("total",)

    def __init__(self) -> None:
        self.total = 0
