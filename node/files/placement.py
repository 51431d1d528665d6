"""Putting a file on the network: encode it, place every chunk, then the manifest.

docs/PROTOCOL.md#placing-a-file. The n chunks of a segment go to n distinct nodes among
those closest (XOR) to the segment's first chunk id, the "group key": each chunk, in
block order, to the candidate closest to its own id that holds no other chunk of the
segment (node/files/locate.py). A node that refuses (full, gone, busy) is replaced by
the next candidate; only when fewer nodes than n can be reached does a node take a
second chunk of the segment. The manifest, and the parts and index of a large one
(protocol/manifest_index.py), are each stored whole (a group of one) on up to n nodes
closest to their ids. Each holder announces a provider record per chunk. An upload
fails, saying why, when a segment keeps fewer than k chunks, or when fewer than `happy`
distinct nodes took shares.

Pipeline: the file is pushed through a `protocol.stream.FileEncoder` by one task, which
reads a regular file straight into the encoder's buffer and encodes each segment in a
worker thread (one hand-off per segment), or takes a stream's blocks as they come in the
event loop; segments go through an unbuffered channel to the placement, which places
`SEGMENTS_PLACING` of them at once with `TRANSFERS_IN_FLIGHT` chunk stores in flight.
Memory holds a few segments, whatever the file size.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterable, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import trio

from dht.contact import Contact
from node.errors import (
    ConnectionClosed,
    ConnectionFailed,
    NodeError,
    PlacementFailed,
    RequestTimeout,
)
from node.files.locate import candidates, closest
from node.files.network import FileNetwork
from protocol.capability import ReadCapability
from protocol.chunk import MAX_CHUNK_SIZE, GroupRecord
from protocol.encoding import EncodedSegment
from protocol.identity import NodeId
from protocol.manifest_index import StoredManifest
from protocol.stream import FileEncoder, fill_from

__all__ = [
    "SEGMENTS_PLACING",
    "TRANSFERS_IN_FLIGHT",
    "Placement",
    "place_manifest",
    "place_segment",
    "put_file",
]

logger = logging.getLogger(__name__)

# Chunk stores of one upload in flight at once: each holds a chunk (about 1.4 MiB with
# the defaults) and its encrypted frame in memory. With parity by ISA-L, 4 left the CPUs
# waiting on holders' fsyncs: 6 took a 100 MiB put from 90-94 to 97-101 MB/s here, and
# the uploader's peak RSS stays under 90 MiB through a 1 GiB put.
TRANSFERS_IN_FLIGHT: Final = 6
# Encoded segments being placed at once (each holds its chunks until stored: about
# 14 MiB with the defaults). The encoder works on the next one meanwhile, so one
# segment is being encoded while these are placed: that keeps an upload's memory down
# and still encodes at about 200 MB/s, more than the network takes.
SEGMENTS_PLACING: Final = 2

Progress = Callable[[int, int], Awaitable[None]]


@dataclass(slots=True)
class Placement:
    """Which nodes took shares of one upload."""

    holders: set[NodeId] = field(default_factory=set)
    chunks_stored: int = 0
    refusals: list[str] = field(default_factory=list)
    # Every node that answered, once a lookup showed the network has fewer than k.
    everyone: list[Contact] = field(default_factory=list)
    # What each node took: where the uploader sends the file's lease once it is placed.
    stored_on: dict[NodeId, tuple[Contact, list[bytes]]] = field(default_factory=dict)

    def took(self, contact: Contact, chunk_id: bytes) -> None:
        """`contact` acknowledged `chunk_id`."""
        self.holders.add(contact.node_id)
        self.stored_on.setdefault(contact.node_id, (contact, []))[1].append(chunk_id)

    def reasons(self) -> str:
        """The most common reasons nodes gave for not taking chunks, for a message."""
        if not self.refusals:
            return ""
        counts = Counter(self.refusals)
        listed = "; ".join(f"{count} x {reason}" for reason, count in counts.most_common(2))
        return f" (nodes said: {listed})"


def _forget(contacts: list[Contact], gone: Contact) -> None:
    contacts[:] = [contact for contact in contacts if contact.node_id != gone.node_id]


async def _encode(
    net: FileNetwork,
    encoder: FileEncoder,
    source: Any,
    send: trio.MemorySendChannel[EncodedSegment],
) -> None:
    """Push `source` through `encoder`, sending each encoded segment in order.

    A file object is read straight into the encoder's buffer and the segment encoded
    in the same worker thread: one hand-off per segment. An async iterable of blocks (a
    stream from the control socket) is taken as its blocks come, in the event loop,
    and only the encoding goes to a worker thread."""

    def read_and_encode() -> EncodedSegment | None:
        fill_from(encoder, source)
        plaintext = encoder.next_plaintext()
        if plaintext is None:  # every byte in, every segment given: the source ended
            encoder.end_of_data()
            return None
        return encoder.encode(plaintext)

    async def send_ready() -> None:
        while (plaintext := encoder.next_plaintext()) is not None:
            segment = await net.codec(encoder.encode, plaintext)
            del plaintext
            encoder.record(segment)
            await send.send(segment)
            del segment

    async with send:
        if isinstance(source, AsyncIterable):
            async for block in source:
                encoder.receive_data(block)
                await send_ready()
            encoder.end_of_data()
            await send_ready()
            return
        while True:
            segment = await net.codec(read_and_encode)
            if segment is None:
                return
            encoder.record(segment)
            await send.send(segment)
            del segment


async def put_file(
    net: FileNetwork,
    source: Any,
    *,
    size: int,
    name: str = "",
    progress: Progress | None = None,
    placement: Placement | None = None,
) -> ReadCapability:
    """Encode `source` of `size` bytes, place its chunks and manifest, and return the
    capability. `source` is a binary file object with `readinto` (read in a worker
    thread) or an async iterable of byte blocks. `placement`, if given, is filled with
    who took what (the owner sends them the file's lease: node/files/leasing.py)."""
    if not isinstance(source, AsyncIterable) and not hasattr(source, "readinto"):
        raise TypeError("put_file reads a file object with readinto, or an async iterable")
    settings = net.settings
    encoder = FileEncoder(
        size=size,
        random_bytes=net.random_bytes,
        name=name,
        params=settings.params,
        parity=net.parity,
        manifest_part_size=settings.manifest_part_size,
    )
    placement = placement if placement is not None else Placement()
    # The channel is closed in trio's thread (by _encode's task), never from a worker
    # thread: that would wake the receiving task from outside trio (a 0-byte file, which
    # has no segment, crashed the node with TrioInternalError that way).
    send, receive = trio.open_memory_channel[EncodedSegment](0)
    done = 0
    transfers = trio.Semaphore(TRANSFERS_IN_FLIGHT)
    placing = trio.Semaphore(SEGMENTS_PLACING)

    async def place(index: int, ids: tuple[bytes, ...], pending: list[bytes | None]) -> None:
        nonlocal done
        try:
            await place_segment(net, index, ids, pending, placement, transfers)
        finally:
            placing.release()
        done = min(size, done + settings.params.segment_size)
        if progress is not None:
            await progress(done, size)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_encode, net, encoder, source, send)
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
    await place_manifest(net, encoder.stored_manifest, placement)
    if len(placement.holders) < settings.happy:
        raise PlacementFailed(
            f"only {len(placement.holders)} distinct nodes took shares, {settings.happy} "
            f"needed (is the network big enough, and are its nodes reachable and not full?)"
            f"{placement.reasons()}"
        )
    return encoder.read_capability


async def place_segment(
    net: FileNetwork,
    index: int,
    ids: tuple[bytes, ...],
    pending: list[bytes | None],
    placement: Placement,
    limit: trio.Semaphore,
) -> None:
    """Place segment `index`'s chunks (`pending`, by block number); each entry is let
    go (set to None) once a node has it, not when the whole segment is done."""
    params = net.settings.params
    nearby = [
        contact
        for contact in await candidates(net, ids[0], placement.everyone)
        if not net.liars.avoided(contact.node_id)  # caught lying: no chunk of ours
    ]
    if not nearby:
        raise PlacementFailed("no node to store chunks on: is the node connected?")
    taken: set[NodeId] = set()  # nodes holding a chunk of this segment (or asked for one)
    stored = 0

    def next_candidate(target: bytes, tried: set[NodeId]) -> Contact | None:
        fresh = [c for c in nearby if c.node_id not in taken and c.node_id not in tried]
        return closest(fresh or [c for c in nearby if c.node_id not in tried], target)

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
                    await net.client.store(contact, data, group)
            except NodeError as exc:
                placement.refusals.append(str(exc))
                logger.info("%s did not take a chunk: %s", contact.node_id.short(), exc)
                if isinstance(exc, ConnectionFailed | ConnectionClosed | RequestTimeout):
                    _forget(placement.everyone, contact)  # unreachable: not for later segments
                contact = None
                continue
            pending[number] = None
            stored += 1
            placement.took(contact, ids[number])
            placement.chunks_stored += 1
            return

    # The first choices are made here, chunk by chunk in order, as the rule says and
    # readers guess (likely_holders): not in whatever order the scheduler starts the
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
            f"{params.k} needed to read it back{placement.reasons()}"
        )


async def place_manifest(net: FileNetwork, stored: StoredManifest, placement: Placement) -> None:
    """Store the manifest's chunks (itself, or its parts and then its index), each whole
    on up to n nodes closest to its id; PlacementFailed if any is taken by none."""
    for identifier, data in stored.chunks:  # the root last: once it is found, all are
        what = "manifest" if identifier == stored.root_id else "a manifest part"
        await _place_whole(net, identifier, data, placement, what)


async def _place_whole(
    net: FileNetwork, identifier: bytes, data: bytes, placement: Placement, what: str
) -> None:
    if len(data) > MAX_CHUNK_SIZE:
        raise PlacementFailed(
            f"{what} has {len(data)} bytes, over the {MAX_CHUNK_SIZE}-byte chunk limit"
        )
    group = GroupRecord.single(identifier)
    nearby = [
        contact
        for contact in await candidates(net, identifier, placement.everyone)
        if not net.liars.avoided(contact.node_id)
    ][: net.settings.params.n]
    stored = 0

    async def place(contact: Contact) -> None:
        nonlocal stored
        try:
            await net.client.store(contact, data, group)
        except NodeError as exc:
            logger.info("%s did not take %s: %s", contact.node_id.short(), what, exc)
            return
        stored += 1
        placement.took(contact, identifier)

    async with trio.open_nursery() as nursery:
        for contact in nearby:
            nursery.start_soon(place, contact)
    if not stored:
        raise PlacementFailed(f"no node took the {what}")
