"""The chunk RPCs (STORE_CHUNK, FETCH_CHUNK, HAS_CHUNKS) between two transports, over
the in-memory network and over TCP loopback, with `MemoryChunkStore` behind them."""

from __future__ import annotations

import math
import random
import threading
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field

import pytest
import trio

from node.chunks import MAX_CHUNK_JOBS_PER_PEER, ChunkService
from node.errors import RemoteError
from node.quota import chunk_cost
from node.store import MemoryChunkStore, StoreConfig
from node.transport import MemoryNetwork, TcpLinkLayer, Transport, open_transport
from protocol.chunk import GroupRecord
from protocol.chunk import chunk_id as chunk_id_of
from protocol.identity import Identity, NodeId
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

TEST_TIMEOUT = 10.0
REQUEST_TIMEOUT = 5.0


@dataclass
class Network:
    """Makes transports on one network of the kind under test."""

    kind: str
    rng: random.Random = field(default_factory=lambda: random.Random(20261127))
    memory: MemoryNetwork = field(default_factory=MemoryNetwork)
    count: int = 0

    def transport(self) -> AbstractAsyncContextManager[Transport]:
        identity = Identity.generate(self.rng.randbytes)
        self.count += 1
        if self.kind == "memory":
            host = f"node-{self.count}"
            link_layer = self.memory.link_layer(identity, host)
            return open_transport(identity, link_layer, listen_address=(host, 0))
        return open_transport(
            identity,
            TcpLinkLayer(identity, random_bytes=self.rng.randbytes),
            listen_address=("127.0.0.1", 0),
        )


@pytest.fixture(params=["memory", "tcp"])
def network(request: pytest.FixtureRequest) -> Network:
    return Network(str(request.param))


@dataclass
class Holder:
    """A node serving the chunk RPCs, and what it announced on the DHT."""

    transport: Transport
    service: ChunkService
    store: MemoryChunkStore
    announced: list[NodeId]
    first_announced: trio.Event

    async def ask(self, client: Transport, message: Message) -> Message:
        assert self.transport.address is not None
        return await client.request(
            self.transport.address,
            message,
            node_id=self.transport.node_id,
            timeout=REQUEST_TIMEOUT,
        )


@asynccontextmanager
async def open_holder(network: Network, store: MemoryChunkStore) -> AsyncIterator[Holder]:
    announced: list[NodeId] = []
    first_announced = trio.Event()

    async def provide(key: NodeId) -> int:
        announced.append(key)
        first_announced.set()
        return 1

    async with network.transport() as transport, trio.open_nursery() as nursery:
        service = ChunkService(store, transport, provide)
        await nursery.start(service.run)
        yield Holder(transport, service, store, announced, first_announced)
        nursery.cancel_scope.cancel()


def make_chunk(rng: random.Random, size: int) -> tuple[bytes, GroupRecord]:
    """A chunk of `size` random bytes, as chunk 1 of a 2-of-3 group."""
    data = rng.randbytes(size)
    ids = (rng.randbytes(32), chunk_id_of(data), rng.randbytes(32))
    return data, GroupRecord(2, 3, 1, ids)


async def refused(holder: Holder, client: Transport, message: Message) -> RemoteError:
    with pytest.raises(RemoteError) as caught:
        await holder.ask(client, message)
    return caught.value


async def test_stored_chunk_is_served_and_announced(network: Network) -> None:
    """A valid chunk is acknowledged with the free space left, served back with its
    group record, and announced once."""
    rng = random.Random(1)
    data, group = make_chunk(rng, 5000)
    store = MemoryChunkStore(StoreConfig(capacity=100_000, in_memory=True))
    with trio.fail_after(TEST_TIMEOUT):
        async with open_holder(network, store) as holder, network.transport() as client:
            answer = await holder.ask(client, StoreChunk(group, data))
            assert answer == ChunkStored(100_000 - chunk_cost(5000, group.n))
            assert await holder.ask(client, FetchChunk(group.chunk_id)) == ChunkData(group, data)
            with trio.fail_after(REQUEST_TIMEOUT):  # announcements wait for a quiet moment
                await holder.first_announced.wait()
            assert holder.announced == [NodeId(group.chunk_id)]
            assert (holder.service.stored, holder.service.served) == (1, 1)


async def test_bytes_not_matching_the_id_are_refused(network: Network) -> None:
    """STORE_CHUNK whose bytes do not hash to the chunk id is answered BAD_REQUEST and
    nothing is stored."""
    rng = random.Random(2)
    data, group = make_chunk(rng, 5000)
    tampered = bytes([data[0] ^ 1]) + data[1:]
    store = MemoryChunkStore()
    with trio.fail_after(TEST_TIMEOUT):
        async with open_holder(network, store) as holder, network.transport() as client:
            error = await refused(holder, client, StoreChunk(group, tampered))
            assert error.code == ErrorCode.BAD_REQUEST
            assert "hash" in error.message
            assert not store.has(group.chunk_id)
            assert store.statistics().chunks == 0
            assert holder.service.refused == 1


async def test_chunk_over_the_size_limit_is_refused(network: Network) -> None:
    """A chunk larger than the store's limit is answered TOO_LARGE and not stored."""
    rng = random.Random(3)
    data, group = make_chunk(rng, 2048)
    store = MemoryChunkStore(StoreConfig(max_chunk_size=1024, in_memory=True))
    with trio.fail_after(TEST_TIMEOUT):
        async with open_holder(network, store) as holder, network.transport() as client:
            error = await refused(holder, client, StoreChunk(group, data))
            assert error.code == ErrorCode.TOO_LARGE
            assert not store.has(group.chunk_id)


async def test_full_store_refuses_saying_it_is_full(network: Network) -> None:
    """Past its capacity the store answers REFUSED with a message saying it is full,
    keeps what it had, and still acknowledges a chunk it already holds."""
    rng = random.Random(4)
    first, first_group = make_chunk(rng, 600)
    second, second_group = make_chunk(rng, 600)
    capacity = chunk_cost(600, first_group.n) + 1000
    store = MemoryChunkStore(StoreConfig(capacity=capacity, in_memory=True))
    with trio.fail_after(TEST_TIMEOUT):
        async with open_holder(network, store) as holder, network.transport() as client:
            assert await holder.ask(client, StoreChunk(first_group, first)) == ChunkStored(1000)
            error = await refused(holder, client, StoreChunk(second_group, second))
            assert error.code == ErrorCode.REFUSED
            assert "full" in error.message
            assert store.has(first_group.chunk_id)
            assert not store.has(second_group.chunk_id)
            again = await holder.ask(client, StoreChunk(first_group, first))
            assert again == ChunkStored(1000)
            assert store.statistics().chunks == 1


async def test_fetch_of_an_unknown_chunk_is_not_found(network: Network) -> None:
    """FETCH_CHUNK of an id the node does not hold is answered NOT_FOUND."""
    store = MemoryChunkStore()
    with trio.fail_after(TEST_TIMEOUT):
        async with open_holder(network, store) as holder, network.transport() as client:
            error = await refused(holder, client, FetchChunk(bytes(32)))
            assert error.code == ErrorCode.NOT_FOUND


async def test_has_chunks_answers_per_id(network: Network) -> None:
    """HAS_CHUNKS answers one flag per id asked, in order, duplicates included."""
    rng = random.Random(5)
    first, first_group = make_chunk(rng, 100)
    second, second_group = make_chunk(rng, 100)
    unknown = rng.randbytes(32)
    store = MemoryChunkStore()
    with trio.fail_after(TEST_TIMEOUT):
        async with open_holder(network, store) as holder, network.transport() as client:
            await holder.ask(client, StoreChunk(first_group, first))
            await holder.ask(client, StoreChunk(second_group, second))
            ids = (second_group.chunk_id, unknown, first_group.chunk_id, unknown)
            answer = await holder.ask(client, HasChunks(ids))
            assert answer == ChunksHeld((True, False, True, False))
            assert await holder.ask(client, HasChunks(())) == ChunksHeld(())


class GatedStore(MemoryChunkStore):
    """A store whose `has`, called in a worker thread, reports on `entered` that it
    was called and then blocks until the gate opens."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self._entered, self.entered = trio.open_memory_channel[None](math.inf)

    def has(self, chunk_id: bytes) -> bool:
        trio.from_thread.run_sync(self._entered.send_nowait, None)
        self.gate.wait(TEST_TIMEOUT)  # bounded: a failing test cannot hang on it
        return super().has(chunk_id)


async def test_one_peer_gets_busy_beyond_its_job_limit(network: Network) -> None:
    """With MAX_CHUNK_JOBS_PER_PEER requests of one peer in progress, its next one is
    answered BUSY at once; another peer is still served, and so is the first once a
    slot frees."""
    store = GatedStore()
    wanted = HasChunks((bytes(32),))
    answers: list[Message] = []
    with trio.fail_after(TEST_TIMEOUT):
        async with (
            open_holder(network, store) as holder,
            network.transport() as greedy,
            network.transport() as other,
        ):

            async def ask(client: Transport) -> None:
                answers.append(await holder.ask(client, wanted))

            try:
                async with trio.open_nursery() as nursery:
                    for _ in range(MAX_CHUNK_JOBS_PER_PEER):
                        nursery.start_soon(ask, greedy)
                    for _ in range(MAX_CHUNK_JOBS_PER_PEER):
                        await store.entered.receive()
                    error = await refused(holder, greedy, wanted)
                    assert error.code == ErrorCode.BUSY
                    nursery.start_soon(ask, other)
                    await store.entered.receive()
                    store.gate.set()
            finally:
                store.gate.set()
            assert answers == [ChunksHeld((False,))] * (MAX_CHUNK_JOBS_PER_PEER + 1)
            assert await holder.ask(greedy, wanted) == ChunksHeld((False,))


async def test_offers_of_a_held_chunk_with_other_records_log_once(
    network: Network, caplog: pytest.LogCaptureFixture
) -> None:
    """Row 6 of issue 18, over the wire: a peer offers a chunk the holder has with 200
    other group records. Each offer is answered, the chunk keeps its first record, and
    the holder's log says so once, not 200 times."""
    import logging

    rng = random.Random(31)
    data, group = make_chunk(rng, 2000)
    store = MemoryChunkStore()
    with trio.fail_after(TEST_TIMEOUT), caplog.at_level(logging.WARNING):
        async with open_holder(network, store) as holder, network.transport() as client:
            assert isinstance(await holder.ask(client, StoreChunk(group, data)), ChunkStored)
            for index in range(200):
                ids = (rng.randbytes(32), group.chunk_id, bytes([index % 256]) * 32)
                other = GroupRecord(2, 3, 1, ids)
                assert isinstance(await holder.ask(client, StoreChunk(other, data)), ChunkStored)
            assert store.group(group.chunk_id) == group
    assert len([r for r in caplog.records if "already held" in r.getMessage()]) == 1
