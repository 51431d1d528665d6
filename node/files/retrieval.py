"""Getting a file back: its manifest, then each segment's chunks, decoded in order.

docs/PROTOCOL.md#finding-and-fetching-a-file. The manifest is fetched from any node
that holds it (and, for a large one, its parts: protocol/manifest_index.py). Each
segment is gathered by a `SegmentFetch` (node/files/segment_fetch.py, whose header has
the rules: guesses, asking near the group key, then everywhere; data blocks first;
hedging), which this module drives: one task per fetch or locate it decides on.

Pipeline: `SEGMENTS_FETCHING` segments are gathered at once (a gather waits on lookups
and round trips more than on the CPU), and decoded (`protocol.stream.FileDecoder`, in a
worker thread: it releases the GIL) and written strictly in order, one segment decoded
while the one before it is written. Memory holds a few segments, whatever the file size.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Final

import trio

from node.errors import (
    ConnectionClosed,
    ConnectionFailed,
    NodeError,
    RequestTimeout,
    Unreadable,
    single_error,
)
from node.files.locate import known_near, likely_holders, locate
from node.files.network import FileNetwork
from node.files.segment_fetch import (
    Failure,
    Fetch,
    FetchState,
    Guesses,
    Locate,
    Scope,
    SegmentFetch,
)
from protocol.capability import ReadCapability, spell_id
from protocol.encoding import Candidate
from protocol.errors import TamperedManifest
from protocol.identity import NodeId
from protocol.manifest import FileInfo, Manifest
from protocol.manifest_index import (
    ManifestIndex,
    join_parts,
    part_length,
    part_size,
    read_root,
)
from protocol.stream import FileDecoder

__all__ = [
    "SEGMENTS_FETCHING",
    "fetch_manifest",
    "fetch_part_list",
    "fetch_parts",
    "fetch_root",
    "fetch_stored",
    "gather_segment",
    "get_file",
]

logger = logging.getLogger(__name__)

SEGMENTS_FETCHING: Final = 3
"""Segments of a download being fetched at once (k chunks each: about 4 MiB)."""

Progress = Callable[[int, int], Awaitable[None]]


async def fetch_stored(net: FileNetwork, identifier: bytes, what: str) -> bytes:
    """A chunk stored whole (a group of one: a manifest, a part or an index), from any
    node that holds it: the first holder found is usually enough; only if none of those
    gives it is everyone asked (a reader stops locating early: `locate`'s `enough`)."""
    problems: list[str] = []
    tried: set[NodeId] = set()
    for enough in (1, None):
        found = (await locate(net, [identifier], enough=enough))[0]
        # Nodes proven lying before come last (the hash protects us; they may be all).
        for contact in sorted(found, key=lambda contact: net.liars.avoided(contact.node_id)):
            if contact.node_id in tried:
                continue
            tried.add(contact.node_id)
            try:
                got = await net.client.fetch(contact, identifier)
            except NodeError as exc:
                problems.append(str(exc))
                continue
            if got.digest == identifier:
                return got.data
            net.liars.caught(contact.node_id, f"served bytes that are not the {what}")
            problems.append(f"{contact.node_id.short()} sent bytes that are not the chunk")
    detail = f" ({'; '.join(problems[:3])})" if problems else ""
    # Spelt as the capability spells it, so that the user can match it.
    raise Unreadable(f"no reachable node holds the {what} {spell_id(identifier)}{detail}")


async def fetch_root(net: FileNetwork, manifest_id: bytes) -> Manifest | ManifestIndex:
    """What is stored under `manifest_id`: the manifest, or the index of its parts."""
    return read_root(await fetch_stored(net, manifest_id, "manifest"), manifest_id)


async def fetch_parts(net: FileNetwork, index: ManifestIndex) -> Manifest:
    """The manifest joined from the parts `index` names (`fetch_part_list`)."""
    return join_parts(index, await fetch_part_list(net, index))


async def fetch_part_list(net: FileNetwork, index: ManifestIndex) -> list[bytes]:
    """The parts `index` names, in order, each checked: the first part, which gives
    every other part's length (`part_size`), then the others, each id once and a few
    at a time, each refused as soon as its length is wrong. No index, however crafted,
    makes this hold more than the manifest's size and one part."""
    first_id = index.part_ids[0]
    first = await fetch_stored(net, first_id, "manifest part 0")
    size = part_size(index, first)
    got: dict[bytes, bytes] = {first_id: first}
    limit = trio.Semaphore(SEGMENTS_FETCHING)  # each part is up to a chunk

    async def fetch_part(number: int, identifier: bytes) -> None:
        async with limit:
            data = await fetch_stored(net, identifier, f"manifest part {number}")
        if len(data) != part_length(index, number, size):
            raise TamperedManifest(
                f"manifest part {number} has {len(data)} bytes, "
                f"{part_length(index, number, size)} expected"
            )
        got[identifier] = data

    try:
        async with trio.open_nursery() as nursery:
            for number, identifier in enumerate(index.part_ids):
                if identifier not in got:
                    got[identifier] = b""  # claimed: a repeated id is fetched once
                    nursery.start_soon(fetch_part, number, identifier)
    except* (Unreadable, TamperedManifest) as group:
        # The first part found missing or wrong says it (others may be too): one
        # error, as for a manifest stored whole.
        raise single_error(group, (Unreadable, TamperedManifest)) from None
    return [got[identifier] for identifier in index.part_ids]


async def fetch_manifest(net: FileNetwork, manifest_id: bytes) -> Manifest:
    """The manifest named `manifest_id`, whole or joined from its parts."""
    root = await fetch_root(net, manifest_id)
    return await fetch_parts(net, root) if isinstance(root, ManifestIndex) else root


def _failure(exc: NodeError) -> Failure:
    if isinstance(exc, ConnectionFailed | ConnectionClosed | RequestTimeout):
        return Failure.UNREACHABLE
    return Failure.REFUSED


async def gather_segment(
    net: FileNetwork, manifest: Manifest, index: int, guesses: Guesses | None = None
) -> list[Candidate]:
    """k valid chunks of segment `index`, by block number: drives a `SegmentFetch`."""
    k = manifest.params.k
    ids = manifest.segment_chunk_ids(index)
    likely = None
    if guesses is not None and guesses.worth_it():
        likely = likely_holders(known_near(net, ids[0]), ids)
    fetch = SegmentFetch(
        ids, k, now=trio.current_time(), likely=likely, guesses=guesses, avoid=net.liars.avoided
    )
    changed = trio.Event()

    def reported() -> None:
        changed.set()

    async def run_fetch(action: Fetch) -> None:
        number, contact = action.number, action.contact
        try:
            got = await net.client.fetch(contact, ids[number])
        except NodeError as exc:
            fetch.failed(number, contact, _failure(exc), str(exc), trio.current_time())
        else:
            if got.digest != ids[number]:
                net.liars.caught(contact.node_id, "served bytes that are not the chunk asked for")
            fetch.fetched(number, contact, got.data, got.digest, trio.current_time())
        reported()

    async def run_locate(action: Locate) -> None:
        enough = k + 1 if action.scope is Scope.NEAR else None
        try:
            found = await locate(net, ids, enough=enough, skip=action.skip)
        except NodeError as exc:  # no lookup possible: no more holders, say why
            fetch.locate_failed(str(exc), trio.current_time())
        else:
            fetch.located(found, trio.current_time())
        reported()

    async with trio.open_nursery() as nursery:
        while True:
            for action in fetch.next_actions(trio.current_time()):
                if isinstance(action, Fetch):
                    nursery.start_soon(run_fetch, action)
                else:
                    nursery.start_soon(run_locate, action)
            if fetch.state is not FetchState.RUNNING:
                break
            changed = trio.Event()
            with trio.move_on_at(fetch.deadline):
                await changed.wait()
        nursery.cancel_scope.cancel()
    if fetch.state is not FetchState.DONE:
        problems = fetch.problems
        detail = f" ({'; '.join(problems[:3])})" if problems else ""
        raise Unreadable(
            f"segment {index}: {fetch.fetched_count} of the {k} chunks needed could be "
            f"fetched{detail}"
        )
    return fetch.result()


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
    decoder = FileDecoder(capability, manifest)  # WrongKey for a key that does not fit
    info = decoder.info
    if on_info is not None:
        await on_info(info)
    if progress is not None:
        await progress(0, info.size)  # the size, for the CLI's bar, before any segment
    count = decoder.segments_to_read
    window = trio.Semaphore(SEGMENTS_FETCHING)
    gathered: dict[int, list[Candidate]] = {}
    ready: dict[int, trio.Event] = {}

    def event(index: int) -> trio.Event:
        return ready.setdefault(index, trio.Event())

    guesses = Guesses()

    async def gather(index: int) -> None:
        gathered[index] = await gather_segment(net, manifest, index, guesses)
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
                # Each chunk was checked against its id as it came (the segment fetch,
                # or our own store's check): not hashed a second time.
                decoded = await net.codec(partial(decoder.decode, verified=True), index, candidates)
                del candidates
                plaintext = decoded.plaintext
                del decoded
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
