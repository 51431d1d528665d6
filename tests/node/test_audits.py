"""Audits against real lying nodes: twelve real `Node`s, in memory (the real Noise
channel) and over TCP loopback, some of them lying as a cheater would. `check` never
counts a chunk live that its holder cannot produce, names the liars, and `get` still
returns the file whenever k honest chunks exist.

Each liar is a real node whose chunk handlers are replaced, or whose store is damaged
behind its back: everything else (the network, the DHT, the auditor) is the real code."""

from __future__ import annotations

import dataclasses
import io
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from trio.testing import MockClock

import node.chunks as node_chunks
from node.config import NodeConfig
from node.errors import NodeError, RequestRejected
from node.files import (
    FileNetwork,
    check_file,
    fetch_manifest,
    get_file,
    repair_file,
)
from node.files.checking import FileReport, prove_whole
from node.files.placement import Placement, place_manifest
from node.files.retrieval import fetch_stored
from node.node import Node
from node.owner import Owner
from node.store import DiskChunkStore, MemoryChunkStore, StoreConfig
from node.transport import MemoryNetwork, Peer
from protocol.capability import ReadCapability, VerifyCapability
from protocol.chunk import GroupRecord, chunk_id
from protocol.encoding import codeword
from protocol.identity import Identity, NodeId
from protocol.manifest_index import store_manifest
from protocol.messages import (
    AuditChunks,
    ChunkData,
    ChunksAudited,
    ChunksHeld,
    ErrorCode,
    FetchChunk,
    HasChunks,
    Message,
)

NODES = 12
SEGMENT = 4096
SIZE = 3 * SEGMENT - 100  # three segments


@pytest.fixture(params=["memory", "tcp"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def clock(kind: str) -> MockClock:
    return MockClock(autojump_threshold=0 if kind == "memory" else 0.3)


MEMORY: list[MemoryNetwork] = []  # the last cluster's network, for partitions


@asynccontextmanager
async def cluster(
    kind: str,
    stores: dict[int, Any] | None = None,
    *,
    k: int = 3,
    n: int = 10,
    count: int = 12,
    **settings: Any,
) -> AsyncIterator[list[Node]]:
    """`count` joined nodes putting k-of-n; `stores` gives some a store of the test's
    own; `settings` are more NodeConfig fields (the stewards' timings)."""
    rng = random.Random(2026)
    memory = MemoryNetwork(seed=3, min_latency=0.01, max_latency=0.03, secure=True)
    MEMORY[:] = [memory]
    nodes: list[Node] = []
    async with trio.open_nursery() as nursery:
        for index in range(count):
            identity = Identity.generate(rng.randbytes)
            if kind == "memory":
                host = f"10.{index + 1}.0.1"  # one /24 each: the DHT limits nodes per prefix
                listen = (host, 4410)
                link = memory.link_layer(identity, host, random_bytes=rng.randbytes)
            else:
                listen, link = ("127.0.0.1", 0), None
            bootstrap = () if not nodes else (nodes[0].transport.address,)  # type: ignore[union-attr]
            config = NodeConfig(
                data_dir=Path("/nonexistent"),
                listen=listen,
                bootstrap=bootstrap,  # type: ignore[arg-type]
                storage="memory",
                workers=0,
                id_difficulty=0,
                segment_size=SEGMENT,
                k=k,
                n=n,
                happy=min(7, n),
                **settings,
            )
            node = Node(
                config,
                identity=identity,
                link_layer=link,
                store=(stores or {}).get(index),
                rng=random.Random(index),
                random_bytes=random.Random(index + 100).randbytes,
                wall_clock=trio.current_time,
            )
            await nursery.start(node.run)
            nodes.append(node)
        for node in nodes:
            await node.joined.wait()
        # Each joined through the first while the others were still arriving: a second
        # self-lookup, now that the first knows everyone, fills every table.
        for node in nodes[1:]:
            assert node.dht is not None and nodes[0].transport is not None
            await node.dht.bootstrap([nodes[0].transport.address])  # type: ignore[list-item]
        yield nodes
        nursery.cancel_scope.cancel()


def files(node: Node) -> FileNetwork:
    assert node.files is not None
    return node.files


async def put(node: Node, seed: int = 1, size: int = SIZE) -> tuple[bytes, ReadCapability]:
    """Put as the owner does (`freehold put`): placed, and leased at its holders, who
    look after only what a lease keeps."""
    data = random.Random(seed).randbytes(size)
    capability = await Owner(node).put(io.BytesIO(data), size=size)
    await trio.sleep(5)  # holders announce what they took
    return data, capability


async def read(node: Node, capability: ReadCapability) -> bytes:
    pieces: list[bytes] = []

    async def write(data: memoryview) -> None:
        pieces.append(bytes(data))

    await get_file(files(node), capability, write)
    return b"".join(pieces)


def held_by(node: Node) -> set[bytes]:
    assert node.chunks is not None
    return set(node.chunks.store.chunk_ids())


def lie(node: Node, message_type: type[Message], handler: Callable[..., Any]) -> None:
    assert node.transport is not None
    node.transport.add_handler(message_type, handler)


def assert_live_is_producible(report: FileReport, producible: set[bytes], ids: list[tuple]) -> None:
    """No segment counts more chunks live than the nodes can really produce."""
    for segment in report.segments:
        provable = sum(1 for identifier in ids[segment.index] if identifier in producible)
        assert segment.live <= provable


async def segment_ids(node: Node, capability: ReadCapability) -> list[tuple]:
    from node.files import fetch_manifest

    manifest = await fetch_manifest(files(node), capability.manifest_id)
    return [manifest.segment_chunk_ids(index) for index in range(manifest.segment_count)]


async def test_a_node_that_says_yes_to_everything_is_caught(kind: str, clock: MockClock) -> None:
    """A liar answers HAS_CHUNKS yes to every id and AUDIT_CHUNKS with invented bytes
    for what it does not hold: check never counts its claims, names it lying in the
    segments it lied about, remembers it; get is unharmed."""
    async with cluster(kind) as nodes:
        data, capability = await put(nodes[0])
        liar, auditor = nodes[3], nodes[9]
        rng = random.Random(5)

        async def yes(peer: Peer, message: Message) -> Message:
            assert isinstance(message, HasChunks)
            return ChunksHeld(tuple(True for _ in message.chunk_ids))

        async def invent(peer: Peer, message: Message) -> Message:
            # Honest for what it holds (the manifest too), inventing the rest.
            assert isinstance(message, AuditChunks) and liar.chunks is not None
            real = liar.chunks.audit(message.chunk_ids, message.offsets, message.length)
            size = len(message.offsets) * message.length
            return ChunksAudited(tuple(a or rng.randbytes(size) for a in real))

        lie(liar, HasChunks, yes)
        lie(liar, AuditChunks, invent)
        report = await check_file(files(auditor), capability)
        ids = await segment_ids(auditor, capability)
        really_held = set().union(*(held_by(node) for node in nodes))  # the liar's own too
        assert_live_is_producible(report, really_held, ids)
        assert any(liar.transport.node_id in segment.lying for segment in report.segments)  # type: ignore[union-attr]
        assert files(auditor).liars.avoided(liar.transport.node_id)  # type: ignore[union-attr]
        assert await read(auditor, capability) == data


async def test_deleted_chunk_files_are_missing_not_live(
    kind: str, clock: MockClock, tmp_path: Path
) -> None:
    """A holder whose chunk files were deleted behind its back still says yes to
    HAS_CHUNKS (its index has the rows), but cannot answer an audit: not live."""
    store = DiskChunkStore.open(tmp_path / "victim", StoreConfig(capacity=2**30))
    try:
        async with cluster(kind, {4: store}) as nodes:
            data, capability = await put(nodes[0])
            victim = nodes[4]
            lost = held_by(victim)
            assert lost, "the victim took no chunk: the test would prove nothing"
            for path in (tmp_path / "victim" / "chunks").rglob("*"):
                if path.is_file() and len(path.name) == 64:
                    path.unlink()
            report = await check_file(files(nodes[8]), capability)
            ids = await segment_ids(nodes[8], capability)
            for segment in report.segments:
                held_elsewhere = {
                    identifier
                    for node in nodes
                    if node is not victim
                    for identifier in held_by(node)
                }
                producible = sum(1 for i in ids[segment.index] if i in held_elsewhere)
                assert segment.live == producible  # the lost ones are missing
            assert report.readable
            assert await read(nodes[8], capability) == data
    finally:
        store.close()


async def test_rotted_bytes_are_not_live_and_their_holder_is_named(
    kind: str, clock: MockClock
) -> None:
    """A holder whose chunks rotted in place (same length, other bytes): its audit
    answers do not fit the codeword; check counts them missing and names it."""
    store = MemoryChunkStore(StoreConfig(capacity=2**30, in_memory=True))
    async with cluster(kind, {6: store}) as nodes:
        data, capability = await put(nodes[0])
        rotten = nodes[6]
        assert held_by(rotten)
        for identifier in held_by(rotten):
            chunk, info = store._chunks[identifier]
            store._chunks[identifier] = (bytes(b ^ 0x55 for b in chunk), info)
        report = await check_file(files(nodes[10]), capability)
        ids = await segment_ids(nodes[10], capability)
        intact = set().union(*(held_by(node) for node in nodes if node is not rotten))
        assert_live_is_producible(report, intact, ids)
        assert any(rotten.transport.node_id in s.lying for s in report.segments)  # type: ignore[union-attr]
        assert await read(nodes[10], capability) == data


async def test_two_liars_answering_for_each_other_prove_only_what_one_holds(
    kind: str, clock: MockClock
) -> None:
    """Two nodes claim each other's chunks and relay each other's audits and fetches.
    While one of them really holds a chunk it is live once; once neither does, the
    relay goes round and nothing is live that nobody can produce."""
    async with cluster(kind) as nodes:
        data, capability = await put(nodes[0])
        first, second = nodes[2], nodes[7]
        partner = {id(first): second, id(second): first}

        def make(me: Node) -> tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]]:
            other = partner[id(me)]
            assert me.transport is not None and other.transport is not None

            async def has(peer: Peer, message: Message) -> Message:
                assert isinstance(message, HasChunks)
                mine = held_by(me) | held_by(other)
                return ChunksHeld(tuple(i in mine for i in message.chunk_ids))

            async def audit(peer: Peer, message: Message) -> Message:
                assert isinstance(message, AuditChunks) and me.chunks is not None
                own = me.chunks.audit(message.chunk_ids, message.offsets, message.length)
                if (
                    all(answer is not None for answer in own)
                    or peer.node_id == other.transport.node_id
                ):  # type: ignore[union-attr]
                    return ChunksAudited(own)
                try:  # ask the partner for what we lack
                    relayed = await me.transport.request(  # type: ignore[union-attr]
                        other.transport.address,
                        message,
                        node_id=other.transport.node_id,
                        timeout=5,  # type: ignore[union-attr, arg-type]
                    )
                except NodeError:
                    return ChunksAudited(own)
                assert isinstance(relayed, ChunksAudited)
                return ChunksAudited(
                    tuple(
                        a if a is not None else b for a, b in zip(own, relayed.answers, strict=True)
                    )
                )

            async def fetch(peer: Peer, message: Message) -> Message:
                assert isinstance(message, FetchChunk) and me.chunks is not None
                if message.chunk_id in held_by(me) or peer.node_id == other.transport.node_id:  # type: ignore[union-attr]
                    return await me.chunks.handle_fetch_chunk(peer, message)
                return await me.transport.request(  # type: ignore[union-attr]
                    other.transport.address,
                    message,
                    node_id=other.transport.node_id,
                    timeout=5,  # type: ignore[union-attr, arg-type]
                )

            return has, audit, fetch

        for me in (first, second):
            has, audit, fetch = make(me)
            lie(me, HasChunks, has)
            lie(me, AuditChunks, audit)
            lie(me, FetchChunk, fetch)
        ids = await segment_ids(nodes[11], capability)
        report = await check_file(files(nodes[11]), capability)
        everyone = set().union(*(held_by(node) for node in nodes))
        for segment in report.segments:
            assert segment.live == sum(1 for i in ids[segment.index] if i in everyone)
        # Now neither holds what it held: their relays have nothing to give.
        for me in (first, second):
            assert me.chunks is not None
            for identifier in held_by(me):
                me.chunks.store.delete(identifier)
        report = await check_file(files(nodes[11]), capability)
        left = set().union(*(held_by(node) for node in nodes if node not in (first, second)))
        assert_live_is_producible(report, left, ids)
        assert await read(nodes[11], capability) == data


async def test_a_get_asks_a_holder_serving_wrong_bytes_once(kind: str, clock: MockClock) -> None:
    """The node holding the most data blocks of a twelve-segment file serves rotted
    bytes: the first time it is caught, and for the rest of the get it is not asked
    again (it was asked for a chunk of every segment before audits existed)."""
    async with cluster(kind) as nodes:
        data, capability = await put(nodes[0], size=12 * SEGMENT - 100)
        ids = await segment_ids(nodes[0], capability)
        data_blocks = [identifier for segment in ids for identifier in segment[:3]]
        rotten = max(nodes[1:11], key=lambda node: len(held_by(node) & set(data_blocks)))
        assert len(held_by(rotten) & set(data_blocks)) >= 3
        assert rotten.chunks is not None
        store = rotten.chunks.store
        assert isinstance(store, MemoryChunkStore)
        served = 0

        async def rotted(peer: Peer, message: Message) -> Message:
            nonlocal served
            assert isinstance(message, FetchChunk)
            if message.chunk_id not in store._chunks:
                raise RequestRejected(ErrorCode.NOT_FOUND, "no such chunk here")
            served += 1
            chunk, info = store._chunks[message.chunk_id]
            return ChunkData(info.group, bytes(b ^ 0x55 for b in chunk))

        lie(rotten, FetchChunk, rotted)
        reader = nodes[11]
        assert await read(reader, capability) == data
        assert served == 1
        assert files(reader).liars.avoided(rotten.transport.node_id)  # type: ignore[union-attr]


def colluding_codeword(ids: tuple[bytes, ...], offsets: tuple[int, ...], length: int) -> tuple:
    """What every colluder answers: one codeword of their own, the same for all of them
    (derived from the challenge: no secret needed to agree)."""
    seed = chunk_id(b"".join(ids) + repr((offsets, length)).encode())
    rng = random.Random(seed)
    size = len(offsets) * length
    if len(ids) <= 3:
        return tuple(rng.randbytes(size) for _ in ids)
    return tuple(codeword(3, len(ids), {j: rng.randbytes(size) for j in range(3)}))


async def test_k_plus_one_colluders_cannot_pass_or_frame_anyone(
    kind: str, clock: MockClock
) -> None:
    """The review's attack: four colluders (k + 1) threw their chunks away, say yes to
    every segment's HAS_CHUNKS and answer every audit from one codeword of their own.
    The check counts exactly the chunks honest nodes hold, names only the colluders,
    records no honest node, and the file still comes back."""
    async with cluster(kind) as nodes:
        data, capability = await put(nodes[0])
        ids = await segment_ids(nodes[0], capability)
        colluders, auditor = nodes[1:5], nodes[11]
        for identifier in held_by(auditor):  # an auditor with no chunk of the file
            auditor.chunks.store.delete(identifier)  # type: ignore[union-attr]
        for colluder in colluders:
            for identifier in held_by(colluder):
                colluder.chunks.store.delete(identifier)  # type: ignore[union-attr]

            async def yes(peer: Peer, message: Message) -> Message:
                assert isinstance(message, HasChunks)  # segments, not a manifest alone
                return ChunksHeld(tuple(len(message.chunk_ids) > 1 for _ in message.chunk_ids))

            async def invent(peer: Peer, message: Message) -> Message:
                assert isinstance(message, AuditChunks)
                return ChunksAudited(
                    colluding_codeword(message.chunk_ids, message.offsets, message.length)
                )

            async def refuse(peer: Peer, message: Message) -> Message:
                raise RequestRejected(ErrorCode.NOT_FOUND, "no such chunk here")

            lie(colluder, HasChunks, yes)
            lie(colluder, AuditChunks, invent)
            lie(colluder, FetchChunk, refuse)
        honest = [node for node in nodes if node not in colluders and node is not auditor]
        really = set().union(*(held_by(node) for node in honest))
        report = await check_file(files(auditor), capability)
        honest_ids = {node.transport.node_id for node in honest}  # type: ignore[union-attr]
        for segment in report.segments:
            assert segment.live == sum(1 for i in ids[segment.index] if i in really)
            assert not set(segment.lying) & honest_ids
        assert not any(files(auditor).liars.avoided(node_id) for node_id in honest_ids)
        assert all(files(auditor).liars.avoided(c.transport.node_id) for c in colluders)  # type: ignore[union-attr]
        assert await read(auditor, capability) == data


async def test_a_crafted_capability_frames_nobody(kind: str, clock: MockClock) -> None:
    """A manifest whose segments mix chunks of two real files (every holder holds just
    what its id names): the checker blames nobody, so nobody is avoided, and the
    honest file is read as ever."""
    async with cluster(kind) as nodes:
        attacker, victim = nodes[0], nodes[11]
        _, file_a = await put(attacker, seed=1)
        data_b, file_b = await put(nodes[5], seed=2)
        manifest_a = await fetch_manifest(files(attacker), file_a.manifest_id)
        manifest_b = await fetch_manifest(files(attacker), file_b.manifest_id)
        ids = bytearray(manifest_a.chunk_ids)
        n = manifest_a.params.n
        for segment in range(manifest_a.segment_count):
            for number in (7, 8, 9):  # three of B's chunks in place of A's
                at = (segment * n + number) * 32
                ids[at : at + 32] = manifest_b.segment_chunk_ids(segment)[number - 7]
        crafted = store_manifest(dataclasses.replace(manifest_a, chunk_ids=bytes(ids)).encode())
        await place_manifest(files(attacker), crafted, Placement())
        report = await check_file(files(victim), VerifyCapability(crafted.root_id))
        assert all(not segment.lying for segment in report.segments)
        assert not files(victim).liars.entries()
        assert await read(victim, file_b) == data_b


async def test_with_k_1_one_copy_left_is_one_live_chunk(kind: str, clock: MockClock) -> None:
    """1-of-3 replication: a segment's three chunks are one id. With one copy left on
    one node, the segment has one live chunk, not three."""
    async with cluster(kind, k=1, n=3) as nodes:
        _, capability = await put(nodes[0])
        ids = await segment_ids(nodes[0], capability)
        for segment in ids:
            holders = [node for node in nodes if segment[0] in held_by(node)]
            assert len(holders) >= 2
            for node in holders[1:]:
                node.chunks.store.delete(segment[0])  # type: ignore[union-attr]
        report = await check_file(files(nodes[11]), capability)
        assert [segment.live for segment in report.segments] == [1] * len(ids)
        assert report.readable and not report.healthy


async def test_chunks_held_but_not_provided_are_announced_at_start(
    kind: str, clock: MockClock
) -> None:
    """A node that comes back with chunks in its store and none in its DHT provisions
    (killed before they were saved) announces every one of them: other nodes find it
    as a provider of each."""
    store = MemoryChunkStore(StoreConfig(capacity=2**30, in_memory=True))
    rng = random.Random(9)
    held = []
    for _ in range(25):
        data = rng.randbytes(100)
        identifier = chunk_id(data)
        store.put(identifier, data, GroupRecord.single(identifier))
        held.append(identifier)
    async with cluster(kind, {6: store}) as nodes:
        restarted = nodes[6]
        assert restarted.dht is not None and restarted.transport is not None
        await trio.sleep(60)
        assert all(NodeId(identifier) in restarted.dht.provisions for identifier in held)
        asker = nodes[2].dht
        assert asker is not None
        for identifier in held[:5]:
            found = await asker.find_providers(NodeId(identifier))
            assert restarted.transport.node_id in {contact.node_id for contact in found}


async def test_a_full_announcement_backlog_loses_nothing(
    kind: str, clock: MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the backlog full, chunks go straight to the DHT's provisions and its
    republisher announces them: none is left unannounced."""
    monkeypatch.setattr(node_chunks, "MAX_ANNOUNCE_BACKLOG", 2)
    async with cluster(kind) as nodes:
        service = nodes[4].chunks
        dht = nodes[4].dht
        assert service is not None and dht is not None
        rng = random.Random(10)
        held = []
        for _ in range(12):
            data = rng.randbytes(100)
            identifier = chunk_id(data)
            await service.store_local(data, GroupRecord.single(identifier))
            held.append(identifier)
        await trio.sleep(120)
        assert all(NodeId(identifier) in dht.provisions for identifier in held)
        published = {p.key for p in dht.provisions.records() if p.last_published is not None}
        assert {NodeId(identifier) for identifier in held} <= published


async def test_repair_rebuilds_lost_chunks_with_no_key(kind: str, clock: MockClock) -> None:
    """Three holders lose their chunks; a node with only the verify capability repairs
    the file: every segment is back to n proven chunks, on nodes that held none of the
    segment, the counters say what moved, and a get from another node is unchanged."""
    async with cluster(kind) as nodes:
        data, capability = await put(nodes[0])
        ids = await segment_ids(nodes[0], capability)
        for victim in nodes[3:6]:
            for identifier in held_by(victim):
                victim.chunks.store.delete(identifier)  # type: ignore[union-attr]
        repairer = nodes[9]
        verify = VerifyCapability(capability.manifest_id)
        before = await check_file(files(repairer), verify)
        assert not before.healthy and before.readable
        report = await repair_file(files(repairer), verify)
        assert report.healthy
        assert sum(segment.rebuilt for segment in report.segments) == sum(
            segment.missing for segment in before.segments
        )
        after = await check_file(files(repairer), verify)
        assert after.healthy
        for segment in ids:  # one chunk of a segment per node, still
            holders = [sum(1 for i in segment if i in held_by(node)) for node in nodes]
            assert max(holders) == 1
        counters = files(repairer).repairs
        assert counters.chunks_rebuilt == sum(s.rebuilt for s in report.segments)
        assert counters.bytes_moved == report.bytes_fetched + report.bytes_stored > 0
        assert await read(nodes[11], capability) == data
        again = await repair_file(files(repairer), verify)
        assert all(segment.rebuilt == 0 for segment in again.segments)  # nothing left to do


async def test_two_repairers_at_once_place_each_chunk_once(kind: str, clock: MockClock) -> None:
    """Two nodes repair the same damaged file at the same moment (the race the
    stewards' rank delay avoids): each rebuilt chunk goes to the node placement's rule
    picks, the same for both, so no chunk ends up on two nodes, nor two chunks of a
    segment on one."""
    async with cluster(kind) as nodes:
        _, capability = await put(nodes[0])
        ids = await segment_ids(nodes[0], capability)
        for victim in nodes[3:6]:
            for identifier in held_by(victim):
                victim.chunks.store.delete(identifier)  # type: ignore[union-attr]
        verify = VerifyCapability(capability.manifest_id)
        async with trio.open_nursery() as nursery:
            for repairer in (nodes[8], nodes[9]):
                nursery.start_soon(repair_file, files(repairer), verify)
        assert (await check_file(files(nodes[10]), verify)).healthy
        for segment in ids:
            for identifier in segment:
                assert sum(1 for node in nodes if identifier in held_by(node)) == 1
            holders = [sum(1 for i in segment if i in held_by(node)) for node in nodes]
            assert max(holders) == 1


async def test_repair_of_a_lost_segment_says_so(kind: str, clock: MockClock) -> None:
    """With fewer than k chunks of a segment left anywhere, repair rebuilds nothing for
    it and says why; the file stays unreadable."""
    async with cluster(kind) as nodes:
        _, capability = await put(nodes[0])
        ids = await segment_ids(nodes[0], capability)
        for node in nodes:
            for identifier in held_by(node) & set(ids[1][2:]):
                node.chunks.store.delete(identifier)  # type: ignore[union-attr]
        report = await repair_file(files(nodes[7]), capability)
        lost = report.segments[1]
        assert lost.rebuilt == 0 and "of the 3 chunks needed" in lost.problem
        assert not report.readable


# Stewards in a hurry (virtual time), repairing at any loss (9 of 10 left).
STEWARDS = {
    "audit_interval": 100.0,
    "repair_grace": 300.0,
    "repair_delay": 20.0,
    "repair_threshold": 9,
}


@pytest.fixture
def memory_clock() -> MockClock:
    """For the tests that run in memory only (virtual days jump at once)."""
    return MockClock(autojump_threshold=0)


async def test_the_network_repairs_a_file_by_itself(memory_clock: MockClock) -> None:
    """Three holders lose their chunks for good. With nobody asking, the remaining
    holders audit their segments, wait out the grace, and the closest rebuilds the
    lost chunks: every segment is whole again and the file reads back. (In memory:
    under a mock clock over TCP every virtual jump waits for real idleness.)"""
    async with cluster("memory", count=14, **STEWARDS) as nodes:
        data, capability = await put(nodes[0])
        for victim in nodes[3:6]:
            for identifier in held_by(victim):
                victim.chunks.store.delete(identifier)  # type: ignore[union-attr]
        assert not (await check_file(files(nodes[12]), capability)).healthy
        await trio.sleep(2000)
        report = await check_file(files(nodes[12]), capability)
        assert report.healthy, [s.live for s in report.segments]
        rebuilt = sum(node.files.repairs.chunks_rebuilt for node in nodes)  # type: ignore[union-attr]
        assert rebuilt >= 3
        assert await read(nodes[13], capability) == data
        manifest_id = capability.manifest_id
        root = await fetch_stored(files(nodes[12]), manifest_id, "manifest")
        copies = await prove_whole(files(nodes[12]), manifest_id, root)
        assert len(copies) == 10, "the manifest's lost copies were made again"


async def test_a_partition_shorter_than_the_grace_repairs_nothing(
    memory_clock: MockClock,
) -> None:
    """Four holders are cut off for less than the grace and come back: no steward
    rebuilds anything, and the file is whole."""
    async with cluster("memory", count=14, **STEWARDS) as nodes:
        data, capability = await put(nodes[0])
        ids = await segment_ids(nodes[0], capability)
        holders = [node for node in nodes[1:12] if held_by(node) & set(ids[0])][:4]
        cut = [str(node.config.listen[0]) for node in holders]
        MEMORY[0].partition(cut)
        await trio.sleep(200)  # audits see them missing, but for less than the grace
        MEMORY[0].heal()
        await trio.sleep(1000)
        assert sum(node.files.repairs.chunks_rebuilt for node in nodes) == 0  # type: ignore[union-attr]
        assert (await check_file(files(nodes[13]), capability)).healthy
        assert await read(nodes[13], capability) == data
