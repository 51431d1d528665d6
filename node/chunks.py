"""The chunk RPCs a storage node serves: STORE_CHUNK, FETCH_CHUNK, HAS_CHUNKS and
AUDIT_CHUNKS.

docs/PROTOCOL.md#chunk-messages. What it promises:

- A chunk is acknowledged (CHUNK_STORED) only once the store has it durably; bytes that
  do not hash to the id, an inconsistent group record, a chunk over the size limit or a
  full store are refused with an ERROR the sender can act on, and never stored. With a
  lease keeper (node/keeper.py) a store also passes the quotas (OVER_QUOTA past a key's
  or a prefix's share), gets its upload lease once stored, and is answered BUSY while
  the garbage collector deletes that chunk.
- The disk work runs in worker threads (`trio.to_thread`; `inline` for simulations),
  so a slow disk never stalls the node's event loop; at most `MAX_CHUNK_JOBS` chunk
  requests are served at once, and at most `MAX_CHUNK_JOBS_PER_PEER` for one peer
  (each holds a chunk in memory), so no peer can make us buffer unbounded data or
  starve the others.
- Every chunk stored is announced on the DHT (a provider record under its id) by one
  background task, one announcement at a time, off the path of the acknowledgement,
  once no chunk arrived for `ANNOUNCE_QUIET` seconds. None is lost: a chunk that finds
  the backlog full goes straight to the DHT's provisions, which its republisher
  announces; and at start every chunk the store holds that the DHT does not provide
  (the node was killed before the provisions were saved) is announced again.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol

import trio

from node.errors import (
    ChunkMismatch,
    ChunkNotFound,
    ChunkTooLarge,
    LeaseRefused,
    NodeError,
    OverQuota,
    RequestRejected,
    StoreError,
    StoreFull,
)
from node.store import ChunkStore
from node.transport import Peer, Transport
from protocol.chunk import GroupRecord
from protocol.identity import NodeId
from protocol.messages import (
    AuditChunks,
    ChunkData,
    ChunksAudited,
    ChunksHeld,
    ChunkStored,
    ErrorCode,
    FetchChunk,
    HasChunks,
    Message,
    StoreChunk,
)

if TYPE_CHECKING:
    from node.keeper import LeaseKeeper

__all__ = [
    "MAX_CHUNK_JOBS",
    "MAX_CHUNK_JOBS_PER_PEER",
    "ChunkService",
    "Offload",
    "in_thread",
    "in_threads",
    "inline",
    "refusal",
]

logger = logging.getLogger(__name__)

MAX_CHUNK_JOBS: Final = 16
MAX_CHUNK_JOBS_PER_PEER: Final = 8
# Chunk ids waiting to be announced; past this, a chunk goes straight to the DHT's
# provisions (announced by its republisher, without the quiet-period pacing).
MAX_ANNOUNCE_BACKLOG: Final = 100_000

# Announcements wait until no chunk arrived for this long: an upload in progress keeps
# the CPU for itself, and its chunks are found meanwhile by asking the nodes near each
# segment's group key (node/files/locate.py), which is where they were placed.
ANNOUNCE_QUIET: Final = 1.0

ProvideFunction = Callable[[NodeId], Awaitable[int]]


class Provisions(Protocol):
    """The DHT's record of the keys this node provides (dht.service.DhtService): a key
    given to `provide_later` is announced by the DHT's republisher, and kept across
    restarts."""

    def provide_later(self, key: NodeId) -> None: ...

    def provides(self, key: NodeId) -> bool: ...


Offload = Callable[..., Awaitable[Any]]
"""How blocking work (disk, hashing, coding) is run: `in_thread`, or `inline`."""


# The ERROR a peer gets for a request our rules refuse (a store, a lease), by the error
# that refused it: its code, and what goes before the error's own words.
_REFUSALS: Final[tuple[tuple[type[NodeError], ErrorCode, str], ...]] = (
    (OverQuota, ErrorCode.OVER_QUOTA, ""),
    (StoreFull, ErrorCode.REFUSED, "full: "),
    (ChunkTooLarge, ErrorCode.TOO_LARGE, ""),
    (ChunkMismatch, ErrorCode.BAD_REQUEST, ""),
    (LeaseRefused, ErrorCode.REFUSED, ""),
)


def refusal(exc: NodeError) -> RequestRejected:
    """The ERROR for a request refused with `exc` (one of `_REFUSALS`' errors)."""
    for kind, code, before in _REFUSALS:
        if isinstance(exc, kind):
            return RequestRejected(code, f"{before}{exc}")
    raise AssertionError(f"{type(exc).__name__} is not a refusal")


async def in_thread(function: Callable[..., Any], *arguments: Any) -> Any:
    """Run `function(*arguments)` in a worker thread: the event loop goes on meanwhile."""
    return await trio.to_thread.run_sync(function, *arguments)


def in_threads(limit: int) -> Offload:
    """An `Offload` that runs work in worker threads, at most `limit` at once."""
    limiter = trio.CapacityLimiter(limit)

    async def run(function: Callable[..., Any], *arguments: Any) -> Any:
        return await trio.to_thread.run_sync(function, *arguments, limiter=limiter)

    return run


async def inline(function: Callable[..., Any], *arguments: Any) -> Any:
    """Run `function(*arguments)` in the event loop's thread. For simulations under
    trio's MockClock: a worker thread's real time would let the virtual clock jump
    past every timeout, and threads would make runs unrepeatable."""
    await trio.lowlevel.checkpoint()
    return function(*arguments)


class ChunkService:
    """Serves the chunk RPCs from `store` and announces what it stores."""

    def __init__(
        self,
        store: ChunkStore,
        transport: Transport,
        provide: ProvideFunction,
        *,
        provisions: Provisions | None = None,
        offload: Offload = in_thread,
    ) -> None:
        """`provide` announces a chunk now; `provisions`, the DHT's list of what we
        provide, takes what the backlog cannot and tells what a restart must announce
        again (None: neither, for tests of the handlers alone)."""
        self.store = store
        self._transport = transport
        self._offload = offload
        self._provide = provide
        self._provisions = provisions
        self.on_stored: Callable[[GroupRecord, int], None] | None = None
        """Told of each chunk stored (its group record and size): the steward."""
        self.keeper: LeaseKeeper | None = None
        """The lease keeper (node/keeper.py): quotas before a store, the upload's
        lease after; None keeps every chunk for ever (tests of the handlers alone)."""
        self.on_audited: Callable[[Sequence[bytes]], None] | None = None
        """Told of the chunks we hold that each peer's audit asked for: the steward,
        which then need not audit those groups itself for a while."""
        self._jobs = trio.Semaphore(MAX_CHUNK_JOBS)
        self._per_peer: Counter[NodeId] = Counter()
        self._announce_send, self._announce_receive = trio.open_memory_channel[bytes](
            MAX_ANNOUNCE_BACKLOG
        )
        self._last_store = -math.inf
        self._announcing = False
        self.stored = 0
        self.served = 0
        self.refused = 0
        transport.add_handler(StoreChunk, self.handle_store_chunk)
        transport.add_handler(FetchChunk, self.handle_fetch_chunk)
        transport.add_handler(HasChunks, self.handle_has_chunks)
        transport.add_handler(AuditChunks, self.handle_audit_chunks)
        self.audited = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Announce stored chunks, one at a time, until cancelled; while chunks keep
        arriving, wait for a quiet moment first (see `ANNOUNCE_QUIET`). First, announce
        again what the store holds and the DHT does not provide (`reannounce_held`)."""
        task_status.started()
        await self.reannounce_held()
        async for chunk_id in self._announce_receive:
            self._announcing = True
            quiet_at = self._last_store + ANNOUNCE_QUIET
            while trio.current_time() < quiet_at:
                await trio.sleep_until(quiet_at)
                quiet_at = self._last_store + ANNOUNCE_QUIET
            try:
                await self._provide(NodeId(chunk_id))
            except Exception as exc:  # the DHT's errors: the republish will try again
                logger.info("announcing chunk %s failed: %s", chunk_id.hex()[:8], exc)
            finally:
                self._announcing = False

    @property
    def announcements_pending(self) -> int:
        """Chunks stored but not yet announced on the DHT."""
        waiting = self._announce_send.statistics().current_buffer_used
        return waiting + (1 if self._announcing else 0)

    def announce(self, chunk_id: bytes) -> None:
        """Queue a provider record for `chunk_id`; with the backlog full, hand it to the
        DHT's provisions, whose republisher announces it (never dropped)."""
        try:
            self._announce_send.send_nowait(chunk_id)
        except trio.WouldBlock:
            if self._provisions is not None:
                self._provisions.provide_later(NodeId(chunk_id))
            else:
                logger.warning("announcement backlog full; chunk %s not announced", chunk_id.hex())

    async def reannounce_held(self) -> int:
        """Announce every chunk the store holds that the DHT does not provide: a node
        killed before its provisions were saved (every few minutes) forgot those it
        had been announcing, but its store kept the chunks. How many were missing."""
        if self._provisions is None:
            return 0
        provisions = self._provisions
        held = await self._offload(lambda: list(self.store.chunk_ids()))
        missing = [chunk_id for chunk_id in held if not provisions.provides(NodeId(chunk_id))]
        if missing:
            logger.info("announcing %d stored chunks the DHT did not provide", len(missing))
        for chunk_id in missing:
            self.announce(chunk_id)
        return len(missing)

    async def store_local(self, data: bytes, group: GroupRecord) -> None:
        """Store a chunk of our own upload (same checks as a peer's) and announce it."""
        await self._put(data, group, None, None)
        self._stored(group, len(data))

    async def _put(
        self, data: bytes, group: GroupRecord, sender: NodeId | None, host: str | None
    ) -> None:
        """Store the chunk under the keeper's rules (node/keeper.py): quotas before,
        the upload's lease after, never while the collector deletes it."""
        keeper = self.keeper
        if keeper is None:
            await self._offload(self.store.put, group.chunk_id, data, group)
            return
        store = keeper.begin_store(sender or keeper.own, host, len(data), group.n, group.chunk_id)
        stored = False
        try:
            await self._offload(self.store.put, group.chunk_id, data, group)
            stored = True
        finally:
            keeper.end_store(store, stored=stored)

    def _stored(self, group: GroupRecord, size: int) -> None:
        self._last_store = trio.current_time()
        self.stored += 1
        self.announce(group.chunk_id)
        if self.on_stored is not None:
            self.on_stored(group, size)

    # -- handlers ---------------------------------------------------------------------

    async def handle_store_chunk(self, peer: Peer, message: Message) -> Message:
        assert isinstance(message, StoreChunk)
        async with self._job(peer):
            group = message.group
            try:
                await self._put(message.data, group, peer.node_id, peer.address[0])
            except (OverQuota, StoreFull, ChunkTooLarge, ChunkMismatch) as exc:
                self.refused += 1
                raise refusal(exc) from None
            except StoreError as exc:
                logger.error("storing a chunk failed: %s", exc)
                raise RequestRejected(ErrorCode.INTERNAL, "the store failed") from None
        self._stored(group, len(message.data))
        return ChunkStored(self.store.statistics().free_bytes)

    async def handle_fetch_chunk(self, peer: Peer, message: Message) -> Message:
        assert isinstance(message, FetchChunk)
        async with self._job(peer, large_answer=True):
            try:
                data = await self._offload(self.store.get, message.chunk_id)
                group = await self._offload(self.store.group, message.chunk_id)
            except ChunkNotFound:  # ChunkDamaged included: it is gone now
                raise RequestRejected(ErrorCode.NOT_FOUND, "no such chunk here") from None
            except StoreError as exc:
                logger.error("reading a chunk failed: %s", exc)
                raise RequestRejected(ErrorCode.INTERNAL, "the store failed") from None
        self.served += 1
        return ChunkData(group, data)

    async def handle_has_chunks(self, peer: Peer, message: Message) -> Message:
        assert isinstance(message, HasChunks)
        async with self._job(peer):
            held = await self._offload(self._held, message.chunk_ids)
        return ChunksHeld(held)

    async def handle_audit_chunks(self, peer: Peer, message: Message) -> Message:
        assert isinstance(message, AuditChunks)
        async with self._job(peer, large_answer=True):
            try:
                answers = await self._offload(
                    self.audit, message.chunk_ids, message.offsets, message.length
                )
            except StoreError as exc:
                logger.error("reading a chunk for an audit failed: %s", exc)
                raise RequestRejected(ErrorCode.INTERNAL, "the store failed") from None
        self.audited += len(message.chunk_ids)
        if self.on_audited is not None:
            held = [c for c, answer in zip(message.chunk_ids, answers, strict=True) if answer]
            if held:
                self.on_audited(held)
        return ChunksAudited(answers)

    def audit(
        self, chunk_ids: Sequence[bytes], offsets: Sequence[int], length: int
    ) -> tuple[bytes | None, ...]:
        """Each chunk's bytes at `offsets` (an audit's answer), None for a chunk not
        held, lost or too short. Blocking: the store's reads."""
        answers: list[bytes | None] = []
        for chunk_id in chunk_ids:
            try:
                answers.append(self.store.read_ranges(chunk_id, offsets, length))
            except ChunkNotFound:  # ChunkDamaged included: it is gone now
                answers.append(None)
        return tuple(answers)

    def _held(self, chunk_ids: tuple[bytes, ...]) -> tuple[bool, ...]:
        return tuple(self.store.has(chunk_id) for chunk_id in chunk_ids)

    def _job(self, peer: Peer, *, large_answer: bool = False) -> _Job:
        return _Job(self, peer, large_answer)


class _Job:
    """One chunk request's slot: global and per-peer limits (BUSY past the peer's).
    A request with a large answer is refused BUSY also when answers already made and
    not yet sent are over their budget (node/transport/budget.py), checked once the
    slot is ours: what waited for it must not add to a backlog that grew meanwhile."""

    def __init__(self, service: ChunkService, peer: Peer, large_answer: bool) -> None:
        self._service = service
        self._peer = peer.node_id
        self._whole_peer = peer
        self._large_answer = large_answer

    async def __aenter__(self) -> None:
        counts = self._service._per_peer
        if counts[self._peer] >= MAX_CHUNK_JOBS_PER_PEER:
            raise RequestRejected(
                ErrorCode.BUSY, f"at most {MAX_CHUNK_JOBS_PER_PEER} chunk requests at once"
            )
        counts[self._peer] += 1
        try:
            await self._service._jobs.acquire()
        except BaseException:
            self._release_peer()
            raise
        if self._large_answer:
            refusal = self._service._transport.answer_refusal(self._whole_peer)
            if refusal is not None:
                await self.__aexit__()
                raise RequestRejected(ErrorCode.BUSY, refusal)

    async def __aexit__(self, *exc_info: object) -> None:
        self._service._jobs.release()
        self._release_peer()

    def _release_peer(self) -> None:
        counts = self._service._per_peer
        counts[self._peer] -= 1
        if counts[self._peer] <= 0:
            del counts[self._peer]
