"""node/files, driven against holders answering from memory: whom a reader asks first
for a segment's chunks, that stopping early never costs it a file that enough honest
holders can still give, and where placement puts chunks. (The segment fetch's rules
alone, with no network at all, are tests/node/test_segment_fetch.py's.)"""

from __future__ import annotations

import errno
import random
import types
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from trio.testing import MockClock

from dht.contact import Contact
from node.chunks import inline
from node.commands import UserFile, write_all
from node.errors import ConfigError, NodeError, RemoteError, RequestTimeout
from node.files import ChunkClient, FileNetwork, FileSettings, fetch_manifest
from node.files.locate import likely_holders, locate
from node.files.placement import Placement, place_segment
from node.files.retrieval import gather_segment
from node.files.segment_fetch import HEDGE_AFTER, Guesses
from node.writeback import StreamingWriter
from protocol.chunk import GroupRecord, chunk_id
from protocol.identity import NodeId
from protocol.manifest import EncodingParams, Manifest
from protocol.messages import (
    ChunkData,
    ChunksHeld,
    ChunkStored,
    ErrorCode,
    FetchChunk,
    HasChunks,
    Message,
    StoreChunk,
)
from protocol.stream import Encoder


def contacts(rng: random.Random, count: int) -> list[Contact]:
    return [Contact(NodeId(rng.randbytes(32)), ("127.0.0.1", 1000 + i)) for i in range(count)]


@given(seed=st.integers(0, 2**32), known=st.integers(0, 25), ids=st.integers(1, 12))
def test_likely_holders_follow_placement(seed: int, known: int, ids: int) -> None:
    """Every known node once; the j-th is the closest to id j among those not chosen
    before it (placement's rule), and the rest follow."""
    rng = random.Random(seed)
    nodes = contacts(rng, known)
    keys = [rng.randbytes(32) for _ in range(ids)]
    order = likely_holders(nodes, keys)
    assert sorted(c.node_id.value for c in order) == sorted(c.node_id.value for c in nodes)
    left = list(nodes)
    for position, key in enumerate(keys[: len(nodes)]):
        target = int.from_bytes(key, "big")
        expected = min(left, key=lambda contact: int(contact.node_id) ^ target)
        assert order[position] == expected
        left.remove(expected)


class Holders:
    """Ten nodes each holding what `held` says (chunk id -> bytes), some of them rotten:
    the transport and DHT a reader's FileNetwork needs, answering from memory."""

    def __init__(self, rng: random.Random, held: list[dict[bytes, bytes]]) -> None:
        self.nodes = contacts(rng, len(held))
        self.held = {node.node_id: chunks for node, chunks in zip(self.nodes, held, strict=True)}
        self.rotten: set[tuple[NodeId, bytes]] = set()
        self.requests: list[tuple[str, NodeId]] = []
        self.dht = types.SimpleNamespace(
            routing=types.SimpleNamespace(closest=self.closest),
            config=types.SimpleNamespace(k=20),
            find_node=self.find_node,
            find_providers=self.find_providers,
        )

    def closest(self, target: NodeId, count: int, exclude: Any = None) -> list[Contact]:
        return sorted(self.nodes, key=lambda contact: int(contact.node_id) ^ int(target))[:count]

    async def find_node(self, target: NodeId) -> list[Contact]:
        await trio.sleep(0.05)
        return self.closest(target, 20)

    async def find_providers(self, target: NodeId) -> list[Contact]:
        await trio.sleep(0.05)
        return []

    async def request(
        self, address: Any, message: Message, *, node_id: NodeId, timeout: float
    ) -> Message:
        await trio.sleep(
            0.01
            + 0.001 * self.nodes.index(next(node for node in self.nodes if node.node_id == node_id))
        )
        self.requests.append((type(message).__name__, node_id))
        chunks = self.held[node_id]
        if isinstance(message, HasChunks):
            return ChunksHeld(tuple(wanted in chunks for wanted in message.chunk_ids))
        if isinstance(message, StoreChunk):
            chunks[message.group.chunk_id] = message.data
            return ChunkStored(2**30)
        assert isinstance(message, FetchChunk)
        if message.chunk_id not in chunks:
            raise RemoteError(ErrorCode.NOT_FOUND, "no such chunk here")
        data = chunks[message.chunk_id]
        if (node_id, message.chunk_id) in self.rotten:
            data = bytes([data[0] ^ 1]) + data[1:]
        return ChunkData(GroupRecord(1, 1, 0, (message.chunk_id,)), data)

    def network(self, params: EncodingParams | None = None) -> FileNetwork:
        return FileNetwork(
            client=ChunkClient(transport=self, offload=inline),  # type: ignore[arg-type]
            dht=self.dht,  # type: ignore[arg-type]
            settings=FileSettings(params=params or EncodingParams(3, 10, 4096), happy=1),
            codec=inline,
        )


def encoded(rng: random.Random) -> tuple[Manifest, bytes, list[tuple[bytes, bytes]]]:
    """A one-segment 3-of-10 file: its manifest, the manifest's bytes (whose hash is its
    id), and its chunks."""
    params = EncodingParams(k=3, n=10, segment_size=4096)
    encoder = Encoder(rng.randbytes(3000), random_bytes=rng.randbytes, params=params)
    chunks = [
        (chunk.chunk_id, bytes(chunk.data))
        for segment in encoder.segments()
        for chunk in segment.chunks
    ]
    manifest = Manifest.parse(encoder.manifest_bytes, encoder.manifest_id)
    return manifest, encoder.manifest_bytes, chunks


@pytest.fixture
def clock() -> MockClock:
    return MockClock(autojump_threshold=0)


async def test_a_reader_looks_further_when_the_first_holders_it_found_lie(
    clock: MockClock,
) -> None:
    """The reader stops locating at k + 1 chunks; when the holders of all but one of
    those serve rotten bytes, it asks everyone and still gets k valid chunks."""
    rng = random.Random(11)
    manifest, _, chunks = encoded(rng)
    holders = Holders(rng, [dict([chunk]) for chunk in chunks])
    net = holders.network()
    ids = [identifier for identifier, _ in chunks]
    located = await locate(net, ids, enough=4)
    first = [ids[number] for number, found in enumerate(located) if found]
    assert len(first) == 4  # stopped early
    for node in holders.nodes:
        for identifier in first[:3]:
            holders.rotten.add((node.node_id, identifier))
    got = await gather_segment(net, manifest, 0)
    assert len(got) == 3
    assert not {identifier for identifier, _ in got} & set(first[:3])
    assert all(data == dict(chunks)[identifier] for identifier, data in got)


async def test_a_reader_takes_the_manifest_from_another_holder_when_the_first_lies(
    clock: MockClock,
) -> None:
    """Every node holds the manifest; the copy the reader finds first is rotten, so it
    asks everyone and parses a good copy."""
    rng = random.Random(12)
    manifest, manifest_bytes, _ = encoded(rng)
    manifest_id = chunk_id(manifest_bytes)
    holders = Holders(rng, [{manifest_id: manifest_bytes} for _ in range(10)])
    first = (await locate(holders.network(), [manifest_id], enough=1))[0]
    assert len(first) == 1
    holders.rotten.add((first[0].node_id, manifest_id))
    assert await fetch_manifest(holders.network(), manifest_id) == manifest


class Refusing:
    """A file whose every read and write fails as a full or broken disk does."""

    def write(self, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def readinto(self, buffer: Any) -> int:
        raise OSError(errno.EIO, "Input/output error")

    def read(self, size: int = -1) -> bytes:
        raise OSError(errno.EIO, "Input/output error")


def test_errors_of_the_users_file_are_one_line_node_errors() -> None:
    """A get whose output file is full, or a put whose file cannot be read, fails with
    a NodeError that names the cause (the CLI's one line), not a bare OSError."""
    with (
        open("/dev/full", "wb", buffering=0) as full,
        pytest.raises(NodeError, match="cannot write the output: No space left on device"),
    ):
        write_all(StreamingWriter(full), memoryview(b"data"))
    user_file = UserFile(Refusing())
    with pytest.raises(NodeError, match="cannot read the file: Input/output error"):
        user_file.readinto(bytearray(4))
    with pytest.raises(NodeError, match="cannot read the file: Input/output error"):
        user_file.read(4)


def placed(rng: random.Random, chunks: list[tuple[bytes, bytes]], holders: Holders) -> None:
    """Chunks laid out as placement lays them: chunk j on the node closest to its id
    among those without one (the group key's closest nodes are all ten)."""
    order = likely_holders(holders.nodes, [identifier for identifier, _ in chunks])
    for node, chunk in zip(order, chunks, strict=True):
        holders.held[node.node_id] = dict([chunk])


async def test_a_reader_fetches_from_the_nodes_placement_chose_without_asking(
    clock: MockClock,
) -> None:
    """Chunks where placement put them: k fetches, no HAS_CHUNKS, and the guesses
    counted right."""
    rng = random.Random(13)
    manifest, _, chunks = encoded(rng)
    holders = Holders(rng, [{} for _ in chunks])
    placed(rng, chunks, holders)
    guesses = Guesses()
    got = await gather_segment(holders.network(), manifest, 0, guesses)
    assert got == chunks[:3]
    assert [kind for kind, _ in holders.requests] == ["FetchChunk"] * 3
    assert (guesses.right, guesses.wrong) == (3, 0)


async def test_wrong_guesses_fall_back_to_asking_and_then_stop(clock: MockClock) -> None:
    """Chunks where placement would not have put them: each guess fails, the reader
    asks who holds what and gets k valid chunks anyway; with guesses now mostly wrong,
    the next segment asks first and fetches only from holders."""
    rng = random.Random(14)
    manifest, _, chunks = encoded(rng)
    holders = Holders(rng, [{} for _ in chunks])
    placed(rng, chunks, holders)
    shifted = list(holders.held.values())
    for node, held in zip(holders.nodes, shifted[3:] + shifted[:3], strict=True):
        holders.held[node.node_id] = held  # every node holds another node's chunk
    guesses = Guesses()
    got = await gather_segment(holders.network(), manifest, 0, guesses)
    assert holders.requests[0][0] == "FetchChunk"  # it guessed
    assert len(got) == 3 and all(data == dict(chunks)[key] for key, data in got)
    assert guesses.right == 0 and guesses.wrong >= 3
    assert not guesses.worth_it()
    holders.requests.clear()
    got = await gather_segment(holders.network(), manifest, 0, guesses)
    assert len(got) == 3 and all(data == dict(chunks)[key] for key, data in got)
    kinds = [kind for kind, _ in holders.requests]
    assert kinds[0] == "HasChunks" and kinds.count("FetchChunk") == 3
    fetched_from = [node for kind, node in holders.requests if kind == "FetchChunk"]
    assert all(len(holders.held[node]) == 1 for node in fetched_from)


async def test_guessed_holders_that_lie_are_replaced(clock: MockClock) -> None:
    """The nodes placement chose serve rotten bytes for the data blocks: the reader
    still ends with k valid chunks, from the other holders."""
    rng = random.Random(15)
    manifest, _, chunks = encoded(rng)
    holders = Holders(rng, [{} for _ in chunks])
    placed(rng, chunks, holders)
    for node_id, held in holders.held.items():
        for identifier, _ in chunks[:3]:
            if identifier in held:
                holders.rotten.add((node_id, identifier))
    guesses = Guesses()
    got = await gather_segment(holders.network(), manifest, 0, guesses)
    assert len(got) == 3
    assert not {identifier for identifier, _ in got} & {identifier for identifier, _ in chunks[:3]}
    assert all(data == dict(chunks)[identifier] for identifier, data in got)
    assert guesses.wrong == 3


async def test_placement_puts_each_chunk_where_readers_guess(clock: MockClock) -> None:
    """Chunk j of every segment goes to the node closest to its id among those without
    a chunk of the segment, in block order, as `likely_holders` guesses; not in the
    order the scheduler happens to run the placing tasks (trio varies it on purpose,
    and 20 segments were enough to see it)."""
    rng = random.Random(16)
    params = EncodingParams(k=3, n=10, segment_size=4096)
    holders = Holders(rng, [{} for _ in range(12)])
    net = holders.network(params)
    for index in range(20):
        ids = tuple(rng.randbytes(32) for _ in range(params.n))
        pending: list[bytes | None] = [bytes([index, number]) for number in range(params.n)]
        await place_segment(net, index, ids, pending, Placement(), trio.Semaphore(4))
        assert pending == [None] * params.n
        where = {key: node for node, held in holders.held.items() for key in held}
        expected = likely_holders(holders.closest(NodeId(ids[0]), 20), list(ids))
        assert [where[key] for key in ids] == [c.node_id for c in expected[: params.n]]
        for held in holders.held.values():
            held.clear()


class Silent(Holders):
    """Holders of which some never answer: each request to them times out."""

    def __init__(self, rng: random.Random, held: list[dict[bytes, bytes]]) -> None:
        super().__init__(rng, held)
        self.silent: set[NodeId] = set()

    async def request(
        self, address: Any, message: Message, *, node_id: NodeId, timeout: float
    ) -> Message:
        if node_id in self.silent:
            self.requests.append((type(message).__name__, node_id))
            await trio.sleep(timeout)
            raise RequestTimeout(f"no answer in {timeout} s")
        return await super().request(address, message, node_id=node_id, timeout=timeout)


@pytest.mark.parametrize("guessing", [False, True])
async def test_silent_guessed_holders_cost_a_hedge_not_their_timeouts(
    clock: MockClock, guessing: bool
) -> None:
    """The nodes placement chose for chunks 0 and 1 hang. Whether the reader guessed
    or asked first, it has its k chunks within a few hedges (HEDGE_AFTER), not after
    the hung fetches give up (CHUNK_TIMEOUT), and asks a hung node nothing more once
    its first request is pending."""
    rng = random.Random(21)
    manifest, _, chunks = encoded(rng)
    holders = Silent(rng, [{} for _ in chunks])
    placed(rng, chunks, holders)
    order = likely_holders(holders.nodes, [identifier for identifier, _ in chunks])
    holders.silent = {order[0].node_id, order[1].node_id}
    started = trio.current_time()
    got = await gather_segment(holders.network(), manifest, 0, Guesses() if guessing else None)
    assert len(got) == 3 and all(data == dict(chunks)[key] for key, data in got)
    assert trio.current_time() - started < 3 * HEDGE_AFTER + 1
    asked_silent = [kind for kind, node in holders.requests if node in holders.silent]
    assert len(asked_silent) == 2


async def test_placement_with_fewer_nodes_than_chunks_survives_a_refusal(
    clock: MockClock,
) -> None:
    """Four nodes for ten chunks, and the first choice for chunk 0 refuses: every chunk
    is still stored (nodes take several), and the refusing node none."""
    rng = random.Random(24)
    params = EncodingParams(k=3, n=10, segment_size=4096)

    class Refusing(Holders):
        async def request(
            self, address: Any, message: Message, *, node_id: NodeId, timeout: float
        ) -> Message:
            if isinstance(message, StoreChunk) and node_id == refusing:
                raise RemoteError(ErrorCode.REFUSED, "full")
            return await super().request(address, message, node_id=node_id, timeout=timeout)

    holders = Refusing(rng, [{} for _ in range(4)])
    ids = tuple(rng.randbytes(32) for _ in range(params.n))
    refusing = likely_holders(holders.nodes, list(ids))[0].node_id
    pending: list[bytes | None] = [bytes([number]) for number in range(params.n)]
    placement = Placement()
    await place_segment(holders.network(params), 0, ids, pending, placement, trio.Semaphore(4))
    assert pending == [None] * params.n
    assert placement.chunks_stored == params.n
    assert not holders.held[refusing]
    assert sum(map(len, holders.held.values())) == params.n


@pytest.mark.parametrize("guessing", [False, True])
async def test_a_slow_holder_of_most_chunks_is_asked_in_the_end(
    clock: MockClock, guessing: bool
) -> None:
    """Two nodes: one holds chunk 1, the other the other nine and answers everything
    only after 2.5 hedges. While it is sending chunk 0 the hedges fire and the reader
    looks further without it; the last step must still ask it, or the segment has 2
    chunks of 3 and fails (as it did, found in review)."""
    rng = random.Random(5)
    manifest, _, chunks = encoded(rng)

    class Slow(Holders):
        async def request(
            self, address: Any, message: Message, *, node_id: NodeId, timeout: float
        ) -> Message:
            if node_id == slow:
                await trio.sleep(min(timeout, 2.5 * HEDGE_AFTER))
            return await super().request(address, message, node_id=node_id, timeout=timeout)

    holders = Slow(rng, [{}, {}])
    order = likely_holders(holders.nodes, [identifier for identifier, _ in chunks])
    slow, other = order[0].node_id, order[1].node_id
    for number, (identifier, data) in enumerate(chunks):
        holders.held[other if number == 1 else slow][identifier] = data
    got = await gather_segment(holders.network(), manifest, 0, Guesses() if guessing else None)
    assert len(got) == 3 and all(data == dict(chunks)[key] for key, data in got)


def test_settings_refuse_chunks_too_large_to_send() -> None:
    """A segment size and k whose chunks would not fit a message are refused when the
    node starts, naming both, rather than failing every store of every upload."""
    with pytest.raises(ConfigError, match="segment_size 67108864 with k = 3"):
        FileSettings(params=EncodingParams(3, 10, 64 * 1024 * 1024), happy=7)
    FileSettings(params=EncodingParams(16, 20, 64 * 1024 * 1024), happy=7)
    with pytest.raises(ConfigError, match="manifest_part_size"):
        FileSettings(params=EncodingParams(3, 10, 4096), happy=7, manifest_part_size=0)
