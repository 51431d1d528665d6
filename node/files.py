"""Putting files on the network and getting them back (DESIGN.md#files).

Placement. The n chunks of a segment go to n distinct nodes among those closest (by the
DHT's XOR metric) to the segment's first chunk id, the "group key": each chunk, in
order, to the candidate closest to its own id that holds no other chunk of the segment.
A node that refuses (full, gone, busy) is replaced by the next candidate; only when
fewer nodes than n can be reached does a node take a second chunk of the segment. The
manifest is stored whole (a group of k = n = 1) on up to n nodes closest to its id.
Each holder announces a provider record per chunk. An upload fails, saying why, when a
segment keeps fewer than k chunks, or when fewer than `happy` distinct nodes took
shares.

Retrieval. A segment's first chunks are fetched straight from the nodes that
placement most likely chose, as far as our routing table tells, while such guesses
prove right in this download. When they do not, or those nodes fail, the nodes closest
to a segment's group key are asked which of its chunks they hold (HAS_CHUNKS, one
request each), and then everyone a lookup finds and the provider records name. k
chunks are fetched in parallel, data blocks first (no erasure decoding needed); a fetch
that fails or is slower than `HEDGE_AFTER` starts another one for a chunk not yet asked
for, and the first k valid chunks win. Every chunk's hash is checked before use
(protocol/encoding).

Pipelines. Encoding and decoding run in worker threads (they release the GIL): the
encoder's thread reads the source and yields segments through a channel while the
previous segment is being placed; a download fetches the next segment while the last
one is decoded and written. Memory holds a few segments, whatever the file size.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final

import nacl.utils
import trio
import trio.lowlevel

from dht.contact import Contact
from dht.errors import DhtError
from dht.service import DhtService
from node.chunks import ChunkService, Offload, in_thread
from node.errors import (
    ConnectionClosed,
    ConnectionFailed,
    NodeError,
    PlacementFailed,
    RequestTimeout,
    TransportError,
    Unreadable,
)
from node.transport import Transport
from protocol.capability import ReadCapability, VerifyCapability
from protocol.chunk import MAX_CHUNK_SIZE, GroupRecord, chunk_id
from protocol.encoding import (
    Candidate,
    EncodedSegment,
    Parity,
    decode_segment,
    zfec_parity,
)
from protocol.identity import NodeId, RandomBytes
from protocol.manifest import EncodingParams, FileInfo, Manifest
from protocol.messages import (
    ChunkData,
    ChunksHeld,
    ChunkStored,
    FetchChunk,
    HasChunks,
    StoreChunk,
)
from protocol.stream import Encoder

__all__ = [
    "FileNetwork",
    "FileReport",
    "check_file",
    "get_file",
    "put_file",
]

logger = logging.getLogger(__name__)

# A chunk fetch slower than this starts a second one for another chunk (hedging).
HEDGE_AFTER: Final = 2.0
CHUNK_TIMEOUT: Final = 30.0
QUERY_TIMEOUT: Final = 5.0
# Chunk stores of one upload in flight at once: each holds a chunk (about 1.4 MiB with
# the defaults) and its encrypted frame in memory. With parity by ISA-L, 4 left the CPUs
# waiting on holders' fsyncs: 6 took a 100 MiB put from 90-94 to 97-101 MB/s here, and
# the uploader's peak RSS stays under 90 MiB through a 1 GiB put.
TRANSFERS_IN_FLIGHT: Final = 6
# Encoded segments waiting between the encoder's thread and the placement, and being
# placed at once (each holds its chunks until stored: about 14 MiB with the defaults).
SEGMENTS_QUEUED: Final = 0
SEGMENTS_PLACING: Final = 2
# Segments being encoded at once in the worker threads. One keeps an upload's memory
# down (each is about 21 MiB at its peak) and still encodes at about 200 MB/s, more
# than the network takes; the second thread serves the store and the transport.
ENCODING_WINDOW: Final = 1
# Segments of a download being fetched at once (k chunks each: about 4 MiB).
SEGMENTS_FETCHING: Final = 3

Progress = Callable[[int, int], Awaitable[None]]


@dataclass(slots=True)
class FileNetwork:
    """What putting and getting files needs from the node."""

    transport: Transport
    dht: DhtService
    chunks: ChunkService
    own_contact: Contact | None  # None when this node takes no chunks itself
    executor: ThreadPoolExecutor | None  # None: encode and decode inline (simulations)
    params: EncodingParams
    happy: int
    offload: Offload = in_thread
    random_bytes: RandomBytes = nacl.utils.random
    parity: Parity = zfec_parity  # node/isal.py's best_parity() in a node


@dataclass(slots=True)
class _Placement:
    """Which nodes took shares of one upload."""

    holders: set[NodeId] = field(default_factory=set)
    chunks_stored: int = 0
    refusals: list[str] = field(default_factory=list)
    # Every node that answered, once a lookup showed the network has fewer than k.
    everyone: list[Contact] = field(default_factory=list)


def _reasons(placement: _Placement) -> str:
    """The most common reasons nodes gave for not taking chunks, for an error message."""
    if not placement.refusals:
        return ""
    counts = Counter(placement.refusals)
    listed = "; ".join(f"{count} x {reason}" for reason, count in counts.most_common(2))
    return f" (nodes said: {listed})"


# ------------------------------------------------------------------------- talking


async def _candidates(
    net: FileNetwork, key: bytes, everyone: list[Contact] | None = None
) -> list[Contact]:
    """The nodes closest to `key` that answered a lookup, us included, closest first.

    With `everyone` (a list the caller keeps across calls), a lookup that found fewer
    than k nodes, which means the network has no more that answer, is remembered in it,
    and later calls sort it instead of looking up again: an upload to a small network
    then makes one lookup, not one per segment."""
    if everyone:
        contacts = list(everyone)
    else:
        try:
            found = await net.dht.find_node(NodeId(key))
        except DhtError as exc:
            raise PlacementFailed(f"looking up nodes failed: {exc}") from None
        contacts = list(found)
        if net.own_contact is not None:
            contacts.append(net.own_contact)
        # Two segments placed at once may both have looked up: keep one answer.
        if everyone is not None and not everyone and len(found) < net.dht.config.k:
            everyone.extend(contacts)
    target = int.from_bytes(key, "big")
    contacts.sort(key=lambda contact: int(contact.node_id) ^ target)
    return contacts


def _forget(contacts: list[Contact], gone: Contact) -> None:
    contacts[:] = [contact for contact in contacts if contact.node_id != gone.node_id]


def _is_self(net: FileNetwork, contact: Contact) -> bool:
    return net.own_contact is not None and contact.node_id == net.own_contact.node_id


async def _store(net: FileNetwork, contact: Contact, data: bytes, group: GroupRecord) -> None:
    """Store one chunk on `contact`; raises NodeError (transport or refusal) if not."""
    if _is_self(net, contact):
        await net.chunks.store_local(data, group)
        return
    message = StoreChunk(group, data)
    answer = await net.transport.request(
        contact.address, message, node_id=contact.node_id, timeout=CHUNK_TIMEOUT
    )
    if not isinstance(answer, ChunkStored):
        raise TransportError(f"{contact.node_id.short()} answered {type(answer).__name__}")


async def _fetch(net: FileNetwork, contact: Contact, wanted: bytes) -> bytes:
    """Chunk `wanted` from `contact`, checked against its id; raises NodeError if not."""
    if _is_self(net, contact):
        return await net.offload(net.chunks.store.get, wanted)  # type: ignore[no-any-return]
    answer = await net.transport.request(
        contact.address, FetchChunk(wanted), node_id=contact.node_id, timeout=CHUNK_TIMEOUT
    )
    if not isinstance(answer, ChunkData):
        raise TransportError(f"{contact.node_id.short()} answered {type(answer).__name__}")
    # Hashed off the event loop (in a worker thread, where blake3 runs without the GIL).
    if await net.offload(chunk_id, answer.data) != wanted:
        raise TransportError(f"{contact.node_id.short()} sent bytes that are not the chunk")
    return answer.data


async def _held(net: FileNetwork, contact: Contact, ids: Sequence[bytes]) -> list[bool]:
    if _is_self(net, contact):
        store = net.chunks.store
        return await net.offload(lambda: [store.has(each) for each in ids])  # type: ignore[no-any-return]
    answer = await net.transport.request(
        contact.address, HasChunks(tuple(ids)), node_id=contact.node_id, timeout=QUERY_TIMEOUT
    )
    if not isinstance(answer, ChunksHeld) or len(answer.held) != len(ids):
        raise TransportError(f"{contact.node_id.short()} answered HAS_CHUNKS wrongly")
    return list(answer.held)


def _closest(contacts: Iterable[Contact], key: bytes) -> Contact | None:
    """Placement's rule for one chunk: the contact closest to its id (XOR metric)."""
    target = int.from_bytes(key, "big")
    return min(contacts, key=lambda contact: int(contact.node_id) ^ target, default=None)


def _known_near(net: FileNetwork, key: bytes) -> list[Contact]:
    """The nodes of our own routing table closest to `key`, and this node."""
    known = net.dht.routing.closest(NodeId(key), net.dht.config.k)
    if net.own_contact is not None:
        known.append(net.own_contact)
    return known


def _likely_holders(known: Sequence[Contact], ids: Sequence[bytes]) -> list[Contact]:
    """`known` in the order placement would have used them for `ids`: each id's
    closest node not yet chosen, id by id (the rest after)."""
    left = list(known)
    order: list[Contact] = []
    for key in ids:
        best = _closest(left, key)
        if best is None:
            break
        left.remove(best)
        order.append(best)
    return order + left


async def _locate(
    net: FileNetwork,
    ids: Sequence[bytes],
    *,
    enough: int | None = None,
    skip: Iterable[NodeId] = (),
) -> list[list[Contact]]:
    """For each of `ids`, the live nodes that say they hold it: those a lookup finds
    closest to ids[0], then, for ids none of them holds, the nodes named by provider
    records (a record may outlive its holder, so only the answer counts).

    With `enough` (a reader's question: where are enough chunks?), the nodes closest to
    ids[0] in our own routing table are asked first, with no lookup (in a network small
    enough that we know everyone, that is all it takes): first the `enough` that
    placement most likely chose for the first ids, then the others, and the asking
    stops as soon as `enough` ids have a holder. Without it (a check's question: who holds what?),
    everyone the lookup finds is asked. Nodes in `skip` (found unreachable) are not."""
    holders: list[list[Contact]] = [[] for _ in ids]
    asked: set[NodeId] = set(skip)

    def satisfied() -> bool:
        located = sum(1 for found in holders if found)
        return located == len(ids) if enough is None else located >= enough

    async def ask(contact: Contact, scope: trio.CancelScope) -> None:
        try:
            flags = await _held(net, contact, ids)
        except NodeError as exc:
            logger.debug("%s did not say what it holds: %s", contact.node_id.short(), exc)
            return
        for position, flag in enumerate(flags):
            if flag:
                holders[position].append(contact)
        if enough is not None and satisfied():
            scope.cancel()  # the others' answers would not change what we fetch

    async def ask_all(contacts: Iterable[Contact]) -> None:
        async with trio.open_nursery() as nursery:
            for contact in contacts:
                if contact.node_id not in asked:
                    asked.add(contact.node_id)
                    nursery.start_soon(ask, contact, nursery.cancel_scope)

    if enough is not None:
        likely = _likely_holders(_known_near(net, ids[0]), ids)
        await ask_all(likely[:enough])  # most often enough on its own
        if not satisfied():
            await ask_all(likely[enough:])
    if not satisfied():
        await ask_all(await _candidates(net, ids[0]))
    missing = [position for position, found in enumerate(holders) if not found]
    if missing and not satisfied():
        named: dict[NodeId, Contact] = {}

        async def providers_of(position: int) -> None:
            try:
                found = await net.dht.find_providers(NodeId(ids[position]))
            except DhtError:
                return
            for contact in found:
                named.setdefault(contact.node_id, contact)

        async with trio.open_nursery() as nursery:
            for position in missing:
                nursery.start_soon(providers_of, position)
        await ask_all(named.values())
    return holders


# ------------------------------------------------------------------------- putting


async def put_file(
    net: FileNetwork,
    source: Any,
    *,
    size: int,
    name: str = "",
    progress: Progress | None = None,
) -> ReadCapability:
    """Encode `source` (a file object or an iterable of blocks, read in a worker
    thread) of `size` bytes, place its chunks and manifest, and return the capability."""
    encoder = Encoder(
        source,
        random_bytes=net.random_bytes,
        size=size,
        name=name,
        params=net.params,
        executor=net.executor,
        window=ENCODING_WINDOW,
        parity=net.parity,
    )
    placement = _Placement()
    send, receive = trio.open_memory_channel[EncodedSegment](SEGMENTS_QUEUED)

    def produce() -> None:
        for segment in encoder.segments():
            trio.from_thread.run(send.send, segment)
            del segment  # not kept while the next one is encoded

    async def run_encoder_inline() -> None:
        async with send:
            for segment in encoder.segments():
                await send.send(segment)
                del segment

    async def run_encoder() -> None:
        # The channel is closed here, in trio's thread: closing it from the worker
        # thread would wake the receiving task from outside trio (a 0-byte file, which
        # has no segment, crashed the node with TrioInternalError that way).
        async with send:
            await trio.to_thread.run_sync(produce, abandon_on_cancel=False)

    done = 0
    transfers = trio.Semaphore(TRANSFERS_IN_FLIGHT)
    placing = trio.Semaphore(SEGMENTS_PLACING)

    async def place(index: int, ids: tuple[bytes, ...], pending: list[bytes | None]) -> None:
        nonlocal done
        try:
            await _place_segment(net, index, ids, pending, placement, transfers)
        finally:
            placing.release()
        done = min(size, done + net.params.segment_size)
        if progress is not None:
            await progress(done, size)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_encoder if net.executor is not None else run_encoder_inline)
        async with receive:
            # Several segments are placed at once: one segment's stores wait on the
            # holders' fsyncs, and placing them one by one left the CPUs idle.
            while True:
                await placing.acquire()
                try:
                    segment = await receive.receive()
                except trio.EndOfChannel:
                    placing.release()
                    break
                # Only the chunks' bytes go on, in a list the placement empties as
                # nodes take them: nothing else keeps the segment alive.
                ids = tuple(chunk.chunk_id for chunk in segment.chunks)
                pending: list[bytes | None] = [chunk.data for chunk in segment.chunks]
                index = segment.index
                del segment
                nursery.start_soon(place, index, ids, pending)
                del pending
    manifest_bytes = encoder.manifest_bytes
    await _place_manifest(net, encoder.manifest_id, manifest_bytes, placement)
    if len(placement.holders) < net.happy:
        raise PlacementFailed(
            f"only {len(placement.holders)} distinct nodes took shares, {net.happy} needed "
            f"(is the network big enough, and are its nodes reachable and not full?)"
            f"{_reasons(placement)}"
        )
    return encoder.read_capability


async def _place_segment(
    net: FileNetwork,
    index: int,
    ids: tuple[bytes, ...],
    pending: list[bytes | None],
    placement: _Placement,
    limit: trio.Semaphore,
) -> None:
    """Place segment `index`'s chunks (`pending`, by block number); each entry is let
    go (set to None) once a node has it, not when the whole segment is done."""
    params = net.params
    candidates = await _candidates(net, ids[0], placement.everyone)
    if not candidates:
        raise PlacementFailed("no node to store chunks on: is the node connected?")
    taken: set[NodeId] = set()  # nodes holding a chunk of this segment (or asked for one)
    stored = 0

    def next_candidate(target: bytes, tried: set[NodeId]) -> Contact | None:
        fresh = [c for c in candidates if c.node_id not in taken and c.node_id not in tried]
        return _closest(fresh or [c for c in candidates if c.node_id not in tried], target)

    async def place(number: int, contact: Contact | None) -> None:
        nonlocal stored
        data = pending[number]
        assert data is not None
        group = GroupRecord(params.k, params.n, number, ids)
        tried: set[NodeId] = set()
        while True:
            if contact is None:
                contact = next_candidate(ids[number], tried)
            if contact is None:
                logger.warning("no node took chunk %d of segment %d", number, index)
                return
            tried.add(contact.node_id)
            taken.add(contact.node_id)
            try:
                async with limit:
                    await _store(net, contact, data, group)
            except NodeError as exc:
                placement.refusals.append(str(exc))
                logger.info("%s did not take a chunk: %s", contact.node_id.short(), exc)
                if isinstance(exc, ConnectionFailed | ConnectionClosed | RequestTimeout):
                    _forget(placement.everyone, contact)  # unreachable: not for later segments
                contact = None
                continue
            pending[number] = None
            stored += 1
            placement.holders.add(contact.node_id)
            placement.chunks_stored += 1
            return

    # The first choices are made here, chunk by chunk in order, as the rule says and
    # readers guess (_likely_holders): not in whatever order the scheduler starts the
    # tasks, which trio varies on purpose.
    first: list[Contact | None] = []
    for number in range(params.n):
        contact = next_candidate(ids[number], set())
        if contact is not None:
            taken.add(contact.node_id)
        first.append(contact)
    async with trio.open_nursery() as nursery:
        for number, contact in enumerate(first):
            nursery.start_soon(place, number, contact)
    if stored < params.k:
        raise PlacementFailed(
            f"segment {index}: only {stored} of its {params.n} chunks were stored, "
            f"{params.k} needed to read it back{_reasons(placement)}"
        )


async def _place_manifest(
    net: FileNetwork, manifest_id: bytes, data: bytes, placement: _Placement
) -> None:
    if len(data) > MAX_CHUNK_SIZE:
        raise PlacementFailed(
            f"the manifest has {len(data)} bytes, over the {MAX_CHUNK_SIZE}-byte chunk "
            "limit: use a larger segment size for a file this big"
        )
    group = GroupRecord.single(manifest_id)
    candidates = (await _candidates(net, manifest_id, placement.everyone))[: net.params.n]
    stored = 0

    async def place(contact: Contact) -> None:
        nonlocal stored
        try:
            await _store(net, contact, data, group)
        except NodeError as exc:
            logger.info("%s did not take the manifest: %s", contact.node_id.short(), exc)
            return
        stored += 1
        placement.holders.add(contact.node_id)

    async with trio.open_nursery() as nursery:
        for contact in candidates:
            nursery.start_soon(place, contact)
    if not stored:
        raise PlacementFailed("no node took the manifest")


# ------------------------------------------------------------------------- getting


async def fetch_manifest(net: FileNetwork, manifest_id: bytes) -> Manifest:
    """The manifest named `manifest_id`, from any node that holds it."""
    problems: list[str] = []
    tried: set[NodeId] = set()
    # The first holder found is usually enough; only if none of those found first gives
    # it is everyone asked (a reader stops locating early: `_locate`'s `enough`).
    for enough in (1, None):
        for contact in (await _locate(net, [manifest_id], enough=enough))[0]:
            if contact.node_id in tried:
                continue
            tried.add(contact.node_id)
            try:
                data = await _fetch(net, contact, manifest_id)
            except NodeError as exc:
                problems.append(str(exc))
                continue
            return Manifest.parse(data, manifest_id)
    detail = f" ({'; '.join(problems[:3])})" if problems else ""
    raise Unreadable(f"no reachable node holds the manifest {manifest_id.hex()[:16]}…{detail}")


@dataclass(slots=True)
class _Guesses:
    """How often a download found a chunk on the node placement most likely chose.

    While these guesses are right at least as often as not, a segment's first chunks
    are fetched from those nodes straight away, with no HAS_CHUNKS round first (in a
    network small enough that we know everyone they are nearly always right). Once
    they are mostly wrong (a large network, where our routing table holds few of the
    nodes placement saw) the segments ask first, for the rest of the download."""

    right: int = 0
    wrong: int = 0

    def worth_it(self) -> bool:
        return self.right >= self.wrong


async def _gather(
    net: FileNetwork, manifest: Manifest, index: int, guesses: _Guesses | None = None
) -> list[Candidate]:
    """k valid chunks of segment `index`: k fetches at a time, data blocks first, and one
    more (hedging) whenever none finished for HEDGE_AFTER seconds.

    Where the chunks are is found in up to three steps: the nodes placement most
    likely chose (see `_Guesses`); the nodes near the group key that say they hold
    chunks (`_locate` stopping at k + 1); everyone a lookup and the provider records
    name. The next step is taken when the holders found so far are used up, or when
    the hedge fires with none left to try; it skips nodes that did not answer."""
    k = manifest.params.k
    ids = manifest.segment_chunk_ids(index)
    options: dict[int, list[Contact]] = {}
    guessed: set[tuple[int, NodeId]] = set()
    if guesses is not None and guesses.worth_it():
        likely = _likely_holders(_known_near(net, ids[0]), ids)
        for number, contact in enumerate(likely[: k + 1]):
            options[number] = [contact]
            guessed.add((number, contact.node_id))
        steps = 0
    else:
        for number, found in enumerate(await _locate(net, ids, enough=k + 1)):
            if found:
                options[number] = list(found)
        steps = 1
    got: dict[int, bytes] = {}
    active: dict[int, NodeId] = {}  # chunk number -> node fetching it now
    tried: set[tuple[int, NodeId]] = set()
    unreachable: set[NodeId] = set()  # no answer at all: not asked again
    problems: list[str] = []
    changed = trio.Event()
    locating = False

    def next_option() -> tuple[int, Contact] | None:
        for number in sorted(options):  # the data blocks, 0..k-1, come first
            if number in got or number in active:
                continue
            left = options[number]
            while left:
                contact = left.pop(0)
                if contact.node_id not in unreachable:
                    tried.add((number, contact.node_id))
                    return number, contact
        return None

    async def locate_more(skip: set[NodeId]) -> None:
        # Take the next step, keeping the holders it names that were not tried yet.
        nonlocal locating
        try:
            if steps == 1:
                found = await _locate(net, ids, enough=k + 1, skip=skip)
            else:
                found = await _locate(net, ids, skip=skip)
            for number, holders in enumerate(found):
                known = options.setdefault(number, [])
                queued = {contact.node_id for contact in known}
                known.extend(
                    contact
                    for contact in holders
                    if (number, contact.node_id) not in tried and contact.node_id not in queued
                )
        except NodeError as exc:  # no lookup possible: no more holders, say why
            problems.append(f"finding more holders: {exc}")
        finally:
            locating = False
            changed.set()

    def start_locating(nursery: trio.Nursery) -> None:
        nonlocal steps, locating
        steps += 1
        locating = True
        # Nodes that did not answer are not asked again. Nodes slow to answer a fetch
        # now are not asked in the middle step either (a hung one would hold it up for
        # QUERY_TIMEOUT), but the last step asks them: slow is not gone, and a node may
        # hold other chunks of the segment than the one it is sending.
        skip = set(unreachable) if steps == 2 else unreachable | set(active.values())
        nursery.start_soon(locate_more, skip)

    async def fetch(number: int, contact: Contact) -> None:
        try:
            data = await _fetch(net, contact, ids[number])
        except NodeError as exc:
            problems.append(f"chunk {number} from {contact.node_id.short()}: {exc}")
            if isinstance(exc, ConnectionFailed | ConnectionClosed | RequestTimeout):
                unreachable.add(contact.node_id)
            if guesses is not None and (number, contact.node_id) in guessed:
                guesses.wrong += 1
        else:
            got.setdefault(number, data)
            if guesses is not None and (number, contact.node_id) in guessed:
                guesses.right += 1
        finally:
            del active[number]
            changed.set()

    def start(nursery: trio.Nursery, option: tuple[int, Contact]) -> None:
        number, contact = option
        active[number] = contact.node_id
        nursery.start_soon(fetch, number, contact)

    async with trio.open_nursery() as nursery:
        while len(got) < k:
            while len(active) < k - len(got):
                option = next_option()
                if option is None:
                    break
                start(nursery, option)
            if not active and not locating:
                if steps == 2:
                    break  # nothing running and nothing left to try
                start_locating(nursery)
            changed = trio.Event()
            with trio.move_on_after(HEDGE_AFTER) as hedge:
                await changed.wait()
            if hedge.cancelled_caught:
                # Slow: one more fetch, or, with no holder left to try, the next step
                # at once rather than when the slow fetches give up.
                option = next_option()
                if option is not None:
                    start(nursery, option)
                elif not locating and steps < 2:
                    start_locating(nursery)
        nursery.cancel_scope.cancel()
    if len(got) < k:
        detail = f" ({'; '.join(problems[:3])})" if problems else ""
        raise Unreadable(
            f"segment {index}: {len(got)} of the {k} chunks needed could be fetched{detail}"
        )
    return [(ids[number], got[number]) for number in sorted(got)[:k]]


async def get_file(
    net: FileNetwork,
    capability: ReadCapability,
    write: Callable[[memoryview], Awaitable[None]],
    *,
    progress: Progress | None = None,
    on_info: Callable[[FileInfo], Awaitable[None]] | None = None,
) -> FileInfo:
    """Fetch, verify, decode and decrypt the file; `write` gets its bytes in order."""
    manifest = await fetch_manifest(net, capability.manifest_id)
    info = manifest.unseal(capability.file_key)  # WrongKey for a key that does not fit
    if on_info is not None:
        await on_info(info)
    segment_size = manifest.params.segment_size
    count = math.ceil(info.size / segment_size)
    # Segments are gathered SEGMENTS_FETCHING at a time (each gather waits on lookups and
    # round trips more than on the CPU) and decoded and written strictly in order.
    window = trio.Semaphore(SEGMENTS_FETCHING)
    gathered: dict[int, list[Candidate]] = {}
    ready: dict[int, trio.Event] = {}

    def event(index: int) -> trio.Event:
        return ready.setdefault(index, trio.Event())

    guesses = _Guesses()

    async def gather(index: int) -> None:
        gathered[index] = await _gather(net, manifest, index, guesses)
        event(index).set()

    async def gather_all(nursery: trio.Nursery) -> None:
        for index in range(count):
            await window.acquire()
            nursery.start_soon(gather, index)

    async def decode_all(send: trio.MemorySendChannel[memoryview]) -> None:
        async with send:
            for index in range(count):
                # The event exists once either side asked for it: no busy wait, which
                # under a mock clock would keep virtual time from ever moving.
                await event(index).wait()
                del ready[index]
                candidates = gathered.pop(index)
                window.release()
                # Each chunk was checked against its id as it came (_fetch, or the
                # store's own check for ours): not hashed a second time.
                decoded = await net.offload(
                    partial(decode_segment, verified=True),
                    manifest,
                    capability.file_key,
                    index,
                    candidates,
                )
                del candidates
                plaintext = decoded.plaintext
                del decoded
                keep = info.size - index * segment_size
                if keep < len(plaintext):
                    plaintext = plaintext[:keep]
                await send.send(plaintext)
                del plaintext

    # A segment is decoded while the one before it is written: an unbuffered channel
    # between them, so at most one plaintext waits.
    send, receive = trio.open_memory_channel[memoryview](0)
    done = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(gather_all, nursery)
        nursery.start_soon(decode_all, send)
        async with receive:
            async for plaintext in receive:
                await write(plaintext)
                done += len(plaintext)
                del plaintext
                if progress is not None:
                    await progress(done, info.size)
    return info


# ------------------------------------------------------------------------ checking


@dataclass(frozen=True, slots=True)
class FileReport:
    """How many distinct chunks of each segment live nodes hold."""

    k: int
    n: int
    manifest_holders: int
    live_chunks: tuple[int, ...]

    @property
    def readable(self) -> bool:
        return self.manifest_holders > 0 and all(count >= self.k for count in self.live_chunks)

    @property
    def healthy(self) -> bool:
        return self.readable and all(count >= self.n for count in self.live_chunks)


async def check_file(net: FileNetwork, capability: VerifyCapability | ReadCapability) -> FileReport:
    """Ask the network which chunks of the file are held; needs no key."""
    manifest_holders = len((await _locate(net, [capability.manifest_id]))[0])
    try:
        manifest = await fetch_manifest(net, capability.manifest_id)
    except Unreadable:
        # No live node gave the manifest: the file is unreadable (a report, so that
        # `freehold check` exits 2 for it), not an error of the check itself.
        return FileReport(net.params.k, net.params.n, 0, ())
    live: list[int] = []
    for index in range(manifest.segment_count):
        holders = await _locate(net, manifest.segment_chunk_ids(index))
        live.append(sum(1 for found in holders if found))
    return FileReport(manifest.params.k, manifest.params.n, manifest_holders, tuple(live))
