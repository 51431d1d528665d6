"""The holder's side of leases: ADD_LEASE, quotas on stores, and the garbage collector.

docs/PROTOCOL.md#leases. `LeaseKeeper` drives the lease book (node/leases.py, which
holds the rules and their table) from the event loop:

- Before a peer's chunk is stored, `admit` applies the quota rules (node/quota.py) to
  the peer's key and network prefix; once stored, `stored` gives it its upload lease.
- ADD_LEASE takes a lease for the chunks named that this node holds, or refuses it:
  REFUSED for a lease that is forged, expired or from the future, OVER_QUOTA when its
  key or prefix would pass its share.
- Every `sweep_interval` the book is swept; the chunks whose time in the trash is over
  are deleted from the store one at a time, and withdrawn from the DHT. A chunk being
  deleted is neither leased nor stored again until it is gone (BUSY), so nothing
  acknowledged is ever deleted.

The lease clock. Leases are compared with `now()`: the wall clock read when the node
started, advanced by the event loop's clock since. A wall clock stepped while the node
runs (by hand, by NTP after a long drift) does not move it: a jump of a year neither
expires every lease at once nor extends any. A restart reads the wall clock again;
even then, a chunk expired by a wrong clock only goes to the trash, where it waits
`trash_grace` of running time before anything is deleted (node/leases.py rule 4).

Everything here runs on the event loop; only the store's reads and deletes go to
`offload`. The book's writes are small SQLite transactions (one per stored chunk, one
per lease), on the loop like the health book's.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import trio

from node.chunks import Offload, refusal
from node.errors import (
    ChunkNotFound,
    LeaseRefused,
    NodeError,
    OverQuota,
    RequestRejected,
    StoreError,
)
from node.leases import LeaseBook, Reservation
from node.quota import chunk_cost, network_prefix
from node.store import ChunkStore
from node.transport import Peer, Transport
from protocol.identity import NodeId
from protocol.lease import Lease
from protocol.messages import AddLease, ErrorCode, LeaseAdded, Message

__all__ = ["LeaseKeeper"]


@dataclass(frozen=True, slots=True)
class _Store:
    """A store in progress, between `begin_store` and `end_store`."""

    chunk_id: bytes
    cost: int
    sender: NodeId
    prefix: str | None
    reservation: Reservation | None
    admitted: bool
    """Whether the quotas admitted it: a chunk kept when its store began is not given
    an upload lease, even if what kept it ends meanwhile."""


logger = logging.getLogger(__name__)

# A sweep's elapsed running time is at most this many intervals: a node suspended for
# a week has not been running for a week.
MAX_SWEEP_GAP: Final = 2.0


class LeaseKeeper:
    """Serves ADD_LEASE, admits stores under the quotas, and collects the garbage."""

    def __init__(
        self,
        book: LeaseBook,
        store: ChunkStore,
        *,
        transport: Transport | None,
        offload: Offload,
        wall_clock: Callable[[], float],
        withdraw: Callable[[NodeId], None] | None = None,
    ) -> None:
        self.book = book
        self.store = store
        self._offload = offload
        self._withdraw = withdraw
        self._anchor = wall_clock() - trio.current_time()
        self.deleting: set[bytes] = set()
        self._storing: Counter[bytes] = Counter()
        self.deleted = 0
        self.refused = 0
        self.on_deleted: Callable[[bytes], None] | None = None
        if transport is not None:
            transport.add_handler(AddLease, self.handle_add_lease)

    @property
    def own(self) -> NodeId:
        """This node's id: its own chunks are charged to it, outside every share."""
        return NodeId(self.book.own)

    def now(self) -> float:
        """The lease clock (module docstring): wall-clock seconds at the loop's pace."""
        return self._anchor + trio.current_time()

    # ------------------------------------------------------------------ stores

    def begin_store(
        self, sender: NodeId, host: str | None, size: int, n: int, chunk_id: bytes
    ) -> _Store:
        """Before a chunk of `size` in a group of `n` is stored for `sender` at `host`
        (None: the owner's own): `RequestRejected` BUSY while the collector deletes
        it; unless a lease keeps it already, the quota rules of node/quota.py
        (`StoreFull`, `OverQuota`), with the bytes set aside until `end_store`. The
        collector leaves a chunk alone while a store of it is in progress."""
        if chunk_id in self.deleting:
            raise RequestRejected(ErrorCode.BUSY, "that chunk is being deleted; try again")
        prefix = network_prefix(host) if host is not None else None
        cost = chunk_cost(size, n)
        reservation = None
        admitted = not self.book.kept(chunk_id, self.now())
        if admitted:
            statistics = self.store.statistics()
            reservation = self.book.admit(
                sender, prefix, cost, statistics.used_bytes, statistics.capacity
            )
        self._storing[chunk_id] += 1
        return _Store(chunk_id, cost, sender, prefix, reservation, admitted)

    def end_store(self, store: _Store, *, stored: bool) -> None:
        """The store is over: if the chunk was stored, it is kept for a while under
        its upload; what `begin_store` set aside is given back."""
        self._storing[store.chunk_id] -= 1
        if self._storing[store.chunk_id] <= 0:
            del self._storing[store.chunk_id]
        if stored:
            self.book.add_upload(
                store.chunk_id,
                store.cost,
                store.sender,
                store.prefix,
                self.now(),
                store.reservation,
                admitted=store.admitted,
            )
        else:
            self.book.release(store.reservation)

    def leased(self, chunk_id: bytes) -> bool:
        """Whether a signed lease keeps the chunk now (the steward repairs only
        those: not expired data, nor an upload that was never leased)."""
        return self.book.leased(chunk_id, self.now())

    def leases_for(self, chunk_id: bytes) -> list[Lease]:
        """The running leases of a chunk, for a repairer to carry to new holders."""
        return self.book.leases_for(chunk_id, self.now())

    # ------------------------------------------------------------------ leases

    async def add_lease(
        self, lease: Lease, chunk_ids: tuple[bytes, ...], sender: NodeId | None, host: str | None
    ) -> list[bool]:
        """Take `lease` for the chunks of `chunk_ids` held here; one flag per id.
        Raises `LeaseRefused`, `OverQuota` or `StoreFull` (node/leases.py)."""
        held = await self._offload(lambda: [self.store.has(c) for c in chunk_ids])
        wanted = [c for c, h in zip(chunk_ids, held, strict=True) if h and c not in self.deleting]
        statistics = self.store.statistics()
        prefix = network_prefix(host) if host is not None else None
        taken = self.book.add_lease(
            lease,
            wanted,
            sender,
            prefix,
            self.now(),
            used=statistics.used_bytes,
            capacity=statistics.capacity,
        )
        covered = {c for c, flag in zip(wanted, taken, strict=True) if flag}
        return [c in covered for c in chunk_ids]

    async def handle_add_lease(self, peer: Peer, message: Message) -> Message:
        assert isinstance(message, AddLease)
        try:
            held = await self.add_lease(
                message.lease, message.chunk_ids, peer.node_id, peer.address[0]
            )
        except (LeaseRefused, OverQuota) as exc:
            self.refused += 1
            raise refusal(exc) from None
        except StoreError as exc:
            logger.error("taking a lease failed: %s", exc)
            raise RequestRejected(ErrorCode.INTERNAL, "the lease book failed") from None
        return LeaseAdded(tuple(held))

    # ------------------------------------------------------------------ collection

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Make the book agree with the store, then sweep every `sweep_interval`."""
        await self.reconcile()
        task_status.started()
        interval = self.book.settings.sweep_interval
        last = trio.current_time()
        while True:
            await trio.sleep(interval)
            now = trio.current_time()
            elapsed, last = min(now - last, MAX_SWEEP_GAP * interval), now
            try:
                await self.sweep(elapsed)
            except NodeError as exc:  # the disk: try again at the next sweep
                logger.error("collecting expired chunks failed: %s", exc)

    async def reconcile(self) -> None:
        """Give the book every chunk the store holds and drop what it does not
        (node/leases.py rule 5)."""

        def held() -> list[tuple[bytes, int]]:
            found = []
            for chunk_id in self.store.chunk_ids():
                try:
                    info = self.store.info(chunk_id)
                except ChunkNotFound:
                    continue
                found.append((chunk_id, chunk_cost(info.size, info.group.n)))
            return found

        known = self.book.known()
        gone, fresh = self.book.reconcile(known, await self._offload(held), self.now())
        if gone or fresh:
            logger.info(
                "lease book: %d rows of chunks no longer held dropped, %d chunks found "
                "without a lease given one",
                gone,
                fresh,
            )

    async def sweep(self, elapsed: float) -> int:
        """One sweep: trash what nobody keeps, delete what the grace is over for. How
        many chunks were deleted."""
        due = self.book.sweep(self.now(), elapsed)
        deleted = 0
        for chunk_id in due:
            if self.book.kept(chunk_id, self.now()) or chunk_id in self._storing:
                continue  # a lease came back, or a store is under way: not now
            self.deleting.add(chunk_id)
            try:
                with contextlib.suppress(ChunkNotFound):  # gone already: as good
                    await self._offload(self.store.delete, chunk_id)
            finally:
                self.deleting.discard(chunk_id)
            self.book.forget([chunk_id])
            if self._withdraw is not None:
                self._withdraw(NodeId(chunk_id))
            if self.on_deleted is not None:
                self.on_deleted(chunk_id)
            deleted += 1
        if deleted:
            logger.info("deleted %d chunks nobody leases any more", deleted)
        self.deleted += deleted
        return deleted
