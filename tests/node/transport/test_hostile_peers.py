"""Hostile peers over real TCP loopback: each is cut off with a logged reason while an
honest peer, served at the same time, keeps getting its answers."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
import trio
from noise.connection import Keypair, NoiseConnection
from trio.testing import MockClock

from dht.config import DhtConfig
from dht.service import DhtService
from node.dht_transport import DhtTransportAdapter
from node.errors import TransportError
from node.transport import Handler, TcpLinkLayer, Transport, TransportConfig, open_transport
from protocol.chunk import GroupRecord
from protocol.handshake import SecureHandshake
from protocol.identity import Identity, NodeId, meets_difficulty
from protocol.messages import (
    AddProvider,
    ChunkStored,
    Envelope,
    Error,
    ErrorCode,
    Kind,
    Message,
    Ping,
    Pong,
    ProviderAdded,
    StoreChunk,
    decode_envelope,
    encode_envelope,
)
from protocol.noise import TransportState

from .conftest import TCP_AUTOJUMP, seeded_identity

CONFIG = TransportConfig(
    handshake_timeout=5.0,
    max_connections=8,
    reserved_connections=0,
    max_inflight_per_peer=8,
    max_frame_size=64 * 1024,
)
RECORD = struct.Struct(">H")


@pytest.fixture
def clock() -> MockClock:
    return MockClock(autojump_threshold=TCP_AUTOJUMP)


@pytest.fixture
def rng() -> random.Random:
    return random.Random(7)


@asynccontextmanager
async def server_and_honest_client(
    rng: random.Random,
) -> AsyncIterator[tuple[Transport, Callable[[], Awaitable[int]]]]:
    """A server, and an honest client that pings it once a second in the background.

    The callable stops the pinger and returns how many pings it completed; every one
    must have succeeded (a failure raises out of the nursery)."""
    server_identity = seeded_identity(rng)
    client_identity = seeded_identity(rng)
    async with (
        open_transport(
            server_identity,
            TcpLinkLayer(server_identity, random_bytes=rng.randbytes),
            listen_address=("127.0.0.1", 0),
            config=CONFIG,
        ) as server,
        open_transport(
            client_identity, TcpLinkLayer(client_identity, random_bytes=rng.randbytes)
        ) as client,
        trio.open_nursery() as nursery,
    ):
        assert server.address is not None
        address = server.address
        await client.ping(address, node_id=server.node_id)  # connected before the attack
        completed = 0
        stop = trio.Event()

        async def keep_pinging() -> None:
            nonlocal completed
            while not stop.is_set():
                peer, _ = await client.ping(address, node_id=server.node_id)
                assert peer == server.node_id
                completed += 1
                with trio.move_on_after(1):
                    await stop.wait()

        nursery.start_soon(keep_pinging)

        async def finish() -> int:
            stop.set()
            return completed

        yield server, finish


def open_server(
    rng: random.Random,
    config: TransportConfig,
    handlers: Mapping[type[Message], Handler] | None = None,
    *,
    identity: Identity | None = None,
) -> AbstractAsyncContextManager[Transport]:
    """A server transport listening on 127.0.0.1 with `config`."""
    identity = identity or seeded_identity(rng)
    return open_transport(
        identity,
        TcpLinkLayer(identity, random_bytes=rng.randbytes),
        listen_address=("127.0.0.1", 0),
        config=config,
        handlers=handlers,
    )


@asynccontextmanager
async def open_dht_server(
    rng: random.Random, config: TransportConfig, dht_config: DhtConfig, seed: int
) -> AsyncIterator[tuple[Transport, DhtService]]:
    """A server transport on 127.0.0.1 serving the DHT, for floods of DHT requests."""
    async with open_server(rng, config) as server, trio.open_nursery() as nursery:
        assert server.address is not None
        service = DhtService(
            DhtTransportAdapter(server),
            listen_port=server.address[1],
            config=dht_config,
            rng=random.Random(seed),
        )
        await nursery.start(service.run)
        yield server, service
        nursery.cancel_scope.cancel()


async def raw_connection(server: Transport) -> trio.SocketStream:
    assert server.address is not None
    return await trio.open_tcp_stream(*server.address)


async def raw_connection_from(server: Transport, host: str) -> trio.SocketStream:
    """A bare TCP connection to `server` from the loopback address `host`."""
    assert server.address is not None
    sock = trio.socket.socket()
    await sock.bind((host, 0))
    await sock.connect(server.address)
    return trio.SocketStream(sock)


async def newcomer_is_served(server: Transport, rng: random.Random) -> None:
    """A fresh identity (on 127.0.0.1) connects to `server` and gets its PONG."""
    assert server.address is not None
    identity = seeded_identity(rng)
    async with open_transport(
        identity, TcpLinkLayer(identity, random_bytes=rng.randbytes)
    ) as newcomer:
        peer, _ = await newcomer.ping(server.address, node_id=server.node_id)
        assert peer == server.node_id


async def read_until_closed(stream: trio.SocketStream) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = bytearray()
    while True:
        try:
            data = await stream.receive_some(65536)
        except trio.BrokenResourceError:
            return bytes(received)
        if not data:
            return bytes(received)
        received += data


async def read_record(stream: trio.SocketStream, buffer: bytearray) -> bytes:
    while len(buffer) < 2 or len(buffer) < 2 + RECORD.unpack_from(buffer)[0]:
        data = await stream.receive_some(65536)
        assert data, "server closed during the handshake"
        buffer += data
    (length,) = RECORD.unpack_from(buffer)
    record = bytes(buffer[2 : 2 + length])
    del buffer[: 2 + length]
    return record


async def authenticated_raw_connection(
    server: Transport,
    identity: Identity,
    rng: random.Random,
    *,
    receive_buffer: int | None = None,
    source: str | None = None,
) -> tuple[trio.SocketStream, TransportState]:
    """A raw stream on which `identity` completed an honest handshake with `server`, to
    misbehave after it; `receive_buffer` shrinks its socket's receive buffer first, and
    `source` is the local address to connect from (another loopback /24, say)."""
    assert server.address is not None
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    if source is not None:
        await sock.bind((source, 0))
    await sock.connect(server.address)
    stream = trio.SocketStream(sock)
    handshake = SecureHandshake(
        identity,
        initiator=True,
        noise_static_private=rng.randbytes(32),
        ephemeral_private=rng.randbytes(32),
        expected_node_id=server.node_id,
    )
    buffer = bytearray()
    message = handshake.start()
    await stream.send_all(RECORD.pack(len(message)) + message)
    reply = handshake.receive(await read_record(stream, buffer))
    assert reply is not None
    await stream.send_all(RECORD.pack(len(reply)) + reply)
    assert handshake.is_complete
    return stream, handshake.transport()


def cut_off_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.levelno == logging.WARNING and "cutting off" in record.getMessage()
    ]


async def test_garbage_instead_of_a_handshake(
    clock: MockClock, rng: random.Random, caplog: pytest.LogCaptureFixture
) -> None:
    """Random bytes where the handshake belongs get the connection closed at once."""
    async with server_and_honest_client(rng) as (server, finish):
        stream = await raw_connection(server)
        garbage = rng.randbytes(1000)
        await stream.send_all(RECORD.pack(len(garbage)) + garbage)
        started = trio.current_time()
        assert await read_until_closed(stream) == b""
        assert trio.current_time() - started < CONFIG.handshake_timeout
        assert await finish() >= 1
    assert any("handshake failed" in line for line in cut_off_lines(caplog))
    assert server.statistics().handshakes_failed == 1


async def test_forged_identity_signature(
    clock: MockClock, rng: random.Random, caplog: pytest.LogCaptureFixture
) -> None:
    """A peer (here the independent noiseprotocol package) whose payload signs another
    Noise static key than its own is refused."""
    async with server_and_honest_client(rng) as (server, finish):
        stream = await raw_connection(server)
        mallory = seeded_identity(rng)
        noise = NoiseConnection.from_name(b"Noise_XX_25519_ChaChaPoly_BLAKE2b")
        noise.set_as_initiator()
        noise.set_keypair_from_private_bytes(Keypair.STATIC, rng.randbytes(32))
        noise.set_prologue(b"freehold/1")
        noise.start_handshake()
        first = noise.write_message()
        await stream.send_all(RECORD.pack(len(first)) + first)
        buffer = bytearray()
        noise.read_message(await read_record(stream, buffer))
        # The signature covers some other static key, not the one in this handshake.
        forged = (
            b"\x01" + mallory.public_key + mallory.sign(b"freehold-noise-static-key:" + bytes(32))
        )
        third = noise.write_message(forged)
        await stream.send_all(RECORD.pack(len(third)) + third)
        assert await read_until_closed(stream) == b""
        assert await finish() >= 1
    assert any("signature" in line for line in cut_off_lines(caplog))


async def test_slowloris_handshake(
    clock: MockClock, rng: random.Random, caplog: pytest.LogCaptureFixture
) -> None:
    """A peer that dribbles its handshake one byte a second is cut at the handshake timeout."""
    async with server_and_honest_client(rng) as (server, finish):
        stream = await raw_connection(server)
        started = trio.current_time()
        closed_after: float | None = None
        # XX message 1: length 32, then 32 bytes of ephemeral key, one byte at a time.
        for byte in RECORD.pack(32) + rng.randbytes(32):
            try:
                await stream.send_all(bytes([byte]))
            except trio.BrokenResourceError:
                break
            with trio.move_on_after(1):
                try:
                    data = await stream.receive_some(1)
                except trio.BrokenResourceError:  # reset: we had sent unread bytes
                    data = b""
                if data == b"":
                    closed_after = trio.current_time() - started
                    break
        assert closed_after is not None
        assert CONFIG.handshake_timeout <= closed_after <= CONFIG.handshake_timeout + 1
        assert await finish() >= 3
    assert any("no handshake within" in line for line in cut_off_lines(caplog))


async def test_oversized_frame(
    clock: MockClock, rng: random.Random, caplog: pytest.LogCaptureFixture
) -> None:
    """An authenticated peer announcing a frame over the limit is cut off before we read it."""
    async with server_and_honest_client(rng) as (server, finish):
        stream, noise = await authenticated_raw_connection(server, seeded_identity(rng), rng)
        header = struct.pack(">I", 100 * 1024 * 1024)
        record = noise.encrypt(header)
        await stream.send_all(RECORD.pack(len(record)) + record)
        assert await read_until_closed(stream) == b""
        assert await finish() >= 1
    assert any("announced a frame of 104857600 bytes" in line for line in cut_off_lines(caplog))


async def test_tampered_transport_record(
    clock: MockClock, rng: random.Random, caplog: pytest.LogCaptureFixture
) -> None:
    """A transport record that fails to decrypt kills that connection only."""
    async with server_and_honest_client(rng) as (server, finish):
        stream, noise = await authenticated_raw_connection(server, seeded_identity(rng), rng)
        frame = encode_envelope(Envelope(Kind.REQUEST, 1, Ping(b"hi")))
        record = bytearray(noise.encrypt(struct.pack(">I", len(frame)) + frame))
        record[5] ^= 1
        await stream.send_all(RECORD.pack(len(record)) + bytes(record))
        assert await read_until_closed(stream) == b""
        assert await finish() >= 1
    assert any("bad transport message" in line for line in cut_off_lines(caplog))


async def test_malformed_envelope(
    clock: MockClock, rng: random.Random, caplog: pytest.LogCaptureFixture
) -> None:
    """A frame that is not an envelope closes the connection with the codec's reason."""
    async with server_and_honest_client(rng) as (server, finish):
        stream, noise = await authenticated_raw_connection(server, seeded_identity(rng), rng)
        frame = b"\xc1not msgpack"
        record = noise.encrypt(struct.pack(">I", len(frame)) + frame)
        await stream.send_all(RECORD.pack(len(record)) + record)
        assert await read_until_closed(stream) == b""
        assert await finish() >= 1
    assert any("malformed frame" in line for line in cut_off_lines(caplog))


async def test_request_flood_beyond_in_flight_limit(
    clock: MockClock, rng: random.Random, caplog: pytest.LogCaptureFixture
) -> None:
    """A peer that keeps sending requests without reading answers past the in-flight limit
    is cut off; the requests it had in flight within the limit were still answered."""

    async def slow(peer: object, message: object) -> Pong:
        await trio.sleep(10)
        return Pong(b"late")

    server_identity = seeded_identity(rng)
    async with (
        open_transport(
            server_identity,
            TcpLinkLayer(server_identity, random_bytes=rng.randbytes),
            listen_address=("127.0.0.1", 0),
            config=CONFIG,
            handlers={Ping: slow},
        ) as server,
    ):
        stream, noise = await authenticated_raw_connection(server, seeded_identity(rng), rng)
        frames = b"".join(
            struct.pack(">I", len(frame)) + frame
            for frame in (
                encode_envelope(Envelope(Kind.REQUEST, number, Ping(b"x")))
                for number in range(CONFIG.max_inflight_per_peer + 1)
            )
        )
        record = noise.encrypt(frames)
        await stream.send_all(RECORD.pack(len(record)) + record)
        assert await read_until_closed(stream) == b""
        assert server.statistics().peers_cut_off == 1
    assert any("requests in flight" in line for line in cut_off_lines(caplog))


async def test_connection_flood(
    clock: MockClock, rng: random.Random, caplog: pytest.LogCaptureFixture
) -> None:
    """Connections beyond the limit are closed at once, the ones within it at the handshake
    timeout; the established honest peer is served throughout, and newcomers get in after.
    The log says so in one line of each kind, not one per connection."""
    async with server_and_honest_client(rng) as (server, finish):
        flood = [await raw_connection(server) for _ in range(3 * CONFIG.max_connections)]
        closed_at: list[float] = []
        started = trio.current_time()

        async def watch(stream: trio.SocketStream) -> None:
            await read_until_closed(stream)
            closed_at.append(trio.current_time() - started)

        async with trio.open_nursery() as nursery:
            for stream in flood:
                nursery.start_soon(watch, stream)
        immediately = [t for t in closed_at if t < CONFIG.handshake_timeout]
        at_timeout = [t for t in closed_at if t >= CONFIG.handshake_timeout]
        # The honest connection holds one slot; the flood fills the other seven.
        assert len(at_timeout) == CONFIG.max_connections - 1
        assert len(immediately) == len(flood) - (CONFIG.max_connections - 1)
        assert server.statistics().connections_refused == len(immediately)
        assert await finish() >= 4
        newcomer_identity = seeded_identity(rng)
        async with open_transport(
            newcomer_identity, TcpLinkLayer(newcomer_identity, random_bytes=rng.randbytes)
        ) as newcomer:
            assert server.address is not None
            peer, _ = await newcomer.ping(server.address, node_id=server.node_id)
            assert peer == server.node_id
    # Logged at most once a minute of each kind (node/ratelog.py): the flood is one
    # line, not 17; the counters above have the numbers.
    lines = caplog.records
    assert sum("connection limit" in r.getMessage() for r in lines) == 1
    assert sum("no handshake within" in r.getMessage() for r in lines) == 1


async def test_one_subnet_cannot_hold_every_slot(
    clock: MockClock, rng: random.Random, caplog: pytest.LogCaptureFixture
) -> None:
    """Connections from one /24 (127.0.5.0/24 here, all of loopback being local) get at
    most `max_connections_per_prefix` slots; beyond it they are closed at once, and a
    newcomer from another prefix (127.0.0.1) is served while they hold theirs (issue 18,
    rows 1-2)."""
    config = dataclasses.replace(
        CONFIG, max_connections=8, max_connections_per_prefix=3, max_handshakes_per_prefix=3
    )
    server_identity = seeded_identity(rng)
    async with open_transport(
        server_identity,
        TcpLinkLayer(server_identity, random_bytes=rng.randbytes),
        listen_address=("127.0.0.1", 0),
        config=config,
    ) as server:
        assert server.address is not None
        # More than every slot.
        flood = [await raw_connection_from(server, "127.0.5.1") for _ in range(10)]
        await trio.sleep(0.5)
        assert server.statistics().connections_refused == 7
        await newcomer_is_served(server, rng)
        for stream in flood:
            await stream.aclose()
    assert any("prefix 127.0.5.0/24" in r.getMessage() for r in caplog.records)


async def test_throwaway_identities_without_the_work_get_no_slot(
    clock: MockClock, rng: random.Random, caplog: pytest.LogCaptureFixture
) -> None:
    """Row 1 of issue 18: many throwaway identities from one address try full
    handshakes against a node whose network asks for proof of work. Each is refused in
    its handshake, so none holds a slot, and a newcomer whose id carries the work is
    served while they keep trying."""
    difficulty = 8
    config = dataclasses.replace(
        CONFIG,
        max_connections=8,
        max_handshakes=8,
        reserved_handshakes=0,
        max_connections_per_prefix=None,
        max_handshakes_per_prefix=None,
        id_difficulty=difficulty,
    )
    server_identity = Identity.generate(rng.randbytes, difficulty=difficulty)
    async with open_server(rng, config, identity=server_identity) as server:
        assert server.address is not None
        throwaway = [seeded_identity(rng) for _ in range(64)]
        throwaway = [i for i in throwaway if not meets_difficulty(i.node_id, difficulty)]
        refused = 0
        for identity in throwaway:
            async with open_transport(
                identity, TcpLinkLayer(identity, random_bytes=rng.randbytes)
            ) as attacker:
                try:
                    await attacker.ping(server.address, node_id=server.node_id)
                except TransportError:
                    refused += 1
        assert refused == len(throwaway) >= 60
        await trio.sleep(1)
        statistics = server.statistics()
        assert statistics.connections_open == 0
        assert statistics.handshakes_failed == len(throwaway)
        assert statistics.connections_inbound == 0
        newcomer_identity = Identity.generate(rng.randbytes, difficulty=difficulty)
        async with open_transport(
            newcomer_identity,
            TcpLinkLayer(newcomer_identity, random_bytes=rng.randbytes),
            config=config,
        ) as newcomer:
            peer, _ = await newcomer.ping(server.address, node_id=server.node_id)
            assert peer == server.node_id
    assert any("no proof of work" in line for line in cut_off_lines(caplog))


def _store_of_chunks(rng: random.Random, count: int, size: int) -> tuple[Any, list[bytes]]:
    """A memory chunk store holding `count` random chunks of `size` bytes, and their ids."""
    from node.store import MemoryChunkStore
    from protocol.chunk import chunk_id

    store = MemoryChunkStore()
    ids = []
    for _ in range(count):
        data = rng.randbytes(size)
        ids.append(chunk_id(data))
        store.put(ids[-1], data, GroupRecord(1, 1, 0, (ids[-1],)))
    return store, ids


async def _announce_nothing(key: object) -> int:
    return 0


def _fetches(noise: TransportState, ids: list[bytes], numbers: range) -> bytes:
    """FETCH_CHUNK requests numbered `numbers` (of the chunks `ids`, in turn), as the
    Noise records that carry them."""
    from protocol.messages import FetchChunk

    frames = b"".join(
        struct.pack(">I", len(frame)) + frame
        for frame in (
            encode_envelope(Envelope(Kind.REQUEST, n, FetchChunk(ids[n % len(ids)])))
            for n in numbers
        )
    )
    return _records(noise, frames)


async def send_until_closed(stream: trio.SocketStream, data: bytes) -> None:
    """Send `data`, or as much as the server reads before it closes the connection."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.send_all(data)


def _records(noise: TransportState, plaintext: bytes) -> bytes:
    """`plaintext` as Noise transport records on the wire."""
    out = bytearray()
    for start in range(0, len(plaintext), 65000):
        record = noise.encrypt(plaintext[start : start + 65000])
        out += RECORD.pack(len(record)) + record
    return bytes(out)


async def test_partial_frames_pin_no_more_than_the_receive_budget(
    clock: MockClock, rng: random.Random, caplog: pytest.LogCaptureFixture
) -> None:
    """Row 4 of issue 18: ten peers each announce a large frame and send all of it but
    its last byte. The frames in progress hold at most the node's receive budget (the
    others wait, unread); every one of them is cut off at the frame timeout, which a
    partial frame does not reset; the honest peer is served throughout, and a large
    frame of its own goes through afterwards."""
    frame_size = 256 * 1024
    config = dataclasses.replace(
        CONFIG,
        max_frame_size=frame_size,
        max_connections=16,
        max_receive_buffer=2 * frame_size,
        max_receive_buffer_per_prefix=None,
        max_answer_backlog=2 * frame_size,
        max_answer_backlog_per_peer=frame_size,
        frame_timeout=60.0,
        idle_timeout=300.0,  # so that only the frame timeout can close them at 60 s
    )
    server_identity = seeded_identity(rng)

    async def take(peer: object, message: Message) -> Message:
        assert isinstance(message, StoreChunk)
        return ChunkStored(len(message.data))

    async with (
        open_server(rng, config, {StoreChunk: take}, identity=server_identity) as server,
        trio.open_nursery() as nursery,
    ):
        assert server.address is not None
        big = encode_envelope(Envelope(Kind.REQUEST, 1, Ping(b"x")))
        announced = frame_size - 16
        attackers = []
        for _ in range(10):
            stream, noise = await authenticated_raw_connection(server, seeded_identity(rng), rng)
            almost = struct.pack(">I", announced) + big + bytes(announced - len(big) - 1)
            nursery.start_soon(send_until_closed, stream, _records(noise, almost))
            attackers.append(stream)
        closed_at: list[float] = []
        started = trio.current_time()

        async def watch(stream: trio.SocketStream) -> None:
            await read_until_closed(stream)
            closed_at.append(trio.current_time() - started)

        for stream in attackers:
            nursery.start_soon(watch, stream)
        client_identity = seeded_identity(rng)
        async with open_transport(
            client_identity,
            TcpLinkLayer(client_identity, random_bytes=rng.randbytes),
            config=config,
        ) as client:
            pings = 0
            while trio.current_time() - started < 70:
                peer, _ = await client.ping(server.address, node_id=server.node_id)
                assert peer == server.node_id
                pings += 1
                assert server.receive_budget.used <= config.max_receive_buffer
                await trio.sleep(5)
            assert pings >= 13
            assert len(closed_at) == 10
            assert all(60 <= t < 65 for t in closed_at), closed_at
            assert server.receive_budget.high_water <= config.max_receive_buffer
            assert server.receive_budget.waited >= 8
            assert server.receive_budget.used == 0
            # The budget is free again: a large frame of the honest peer's is taken.
            group = GroupRecord(1, 1, 0, (bytes(32),))
            answer = await client.request(
                server.address, StoreChunk(group, bytes(frame_size // 2)), node_id=server.node_id
            )
            assert answer == ChunkStored(frame_size // 2)
        nursery.cancel_scope.cancel()
    lines = [record.getMessage() for record in caplog.records]
    assert any("not received whole within 60 s" in line for line in lines)


async def test_a_peer_that_never_reads_gets_busy_not_memory(
    clock: MockClock, rng: random.Random
) -> None:
    """Row 4 of issue 18: a peer sends 64 FETCH_CHUNKs and never reads. The answers made
    for it stay within its answer budget (plus the chunk jobs it had running); the
    rest are answered BUSY; an honest peer fetches a chunk meanwhile; and once what
    the kernel takes is sent (or the peer cut off for not reading), the node holds
    nothing for it."""
    from node.chunks import MAX_CHUNK_JOBS_PER_PEER, ChunkService
    from protocol.chunk import chunk_id
    from protocol.messages import ChunkData, FetchChunk

    chunk_size = 200 * 1024
    config = dataclasses.replace(
        CONFIG,
        max_frame_size=256 * 1024,
        max_inflight_per_peer=64,
        max_answer_backlog=4 * 1024 * 1024,
        max_answer_backlog_per_peer=512 * 1024,
        max_receive_buffer=1024 * 1024,
        max_receive_buffer_per_prefix=None,
        send_timeout=30.0,
    )
    store, ids = _store_of_chunks(rng, 8, chunk_size)

    server_identity = seeded_identity(rng)
    async with open_server(rng, config, identity=server_identity) as server:
        service = ChunkService(store, server, _announce_nothing)
        assert server.address is not None
        attacker = seeded_identity(rng)
        stream, noise = await authenticated_raw_connection(
            server, attacker, rng, receive_buffer=4096
        )
        # In waves of as many as its chunk jobs may run, so that none is refused for
        # that: 64 answers of 200 KiB, far more than the kernel's buffers take.
        for wave in range(8):
            await stream.send_all(_fetches(noise, ids, range(8 * wave, 8 * wave + 8)))
            await trio.sleep(0.5)
        held: list[int] = []
        for _ in range(20):
            await trio.sleep(0.5)
            connection = server._connections.get(attacker.node_id)
            if connection is not None:
                held.append(connection.answer_backlog + connection.link.queued_bytes)
        bound = config.max_answer_backlog_per_peer + MAX_CHUNK_JOBS_PER_PEER * (chunk_size + 1024)
        assert held and max(held) <= bound, (max(held), bound)
        assert service.served < 64 - 20  # most were refused BUSY, not read from the store
        honest_identity = seeded_identity(rng)
        async with open_transport(
            honest_identity, TcpLinkLayer(honest_identity, random_bytes=rng.randbytes)
        ) as honest:
            answer = await honest.request(
                server.address, FetchChunk(ids[0]), node_id=server.node_id
            )
            assert isinstance(answer, ChunkData) and chunk_id(answer.data) == ids[0]
        await trio.sleep(config.send_timeout + 5)
        connection = server._connections.get(attacker.node_id)
        assert connection is None or connection.link.queued_bytes == 0
        assert server.answer_backlog == 0
        await stream.aclose()


async def test_slots_are_kept_for_the_contacts_we_know(
    clock: MockClock, rng: random.Random
) -> None:
    """Row 2 of issue 18: newcomers from many prefixes (each within its prefix's limit)
    fill every slot they may. A contact we know (in the routing table, and dialled by
    us) still gets one of the reserved slots; a host that is merely in the routing
    table (it named itself in a request: a review found that one FIND_NODE lifted every
    limit) does not, and the newcomers past their slots are refused."""
    config = dataclasses.replace(
        CONFIG,
        max_connections=8,
        reserved_connections=2,
        max_connections_per_prefix=1,
        max_handshakes_per_prefix=1,
        handshake_timeout=60.0,
    )
    server_identity = seeded_identity(rng)
    known_identity = seeded_identity(rng)
    async with (
        open_server(rng, config, identity=server_identity) as server,
        open_server(rng, CONFIG, identity=known_identity) as known,
    ):
        assert server.address is not None and known.address is not None
        in_table = {"127.0.0.1", "127.0.20.1"}
        server.known_host = in_table.__contains__
        await server.ping(known.address, node_id=known.node_id)  # we dialled it: verified
        # 8 newcomers from 8 prefixes: 6 get in.
        flood = [await raw_connection_from(server, f"127.0.{n}.1") for n in range(1, 9)]
        await trio.sleep(0.5)
        assert server.statistics().connections_refused == 2
        # In the table but never dialled by us: no reserved slot.
        claimed = await raw_connection_from(server, "127.0.20.1")
        assert await read_until_closed(claimed) == b""
        assert server.statistics().connections_refused == 3
        # The contact we dialled comes back on its own connection: served.
        await server._connections[known.node_id].close("test: let it dial us")
        await trio.sleep(1)  # until the contact has seen it close
        assert known.node_id not in server._connections
        assert server.node_id not in known._connections
        peer, _ = await known.ping(server.address, node_id=server.node_id)
        assert peer == server.node_id
        assert server.statistics().connections_refused == 3
        for stream in flood:
            await stream.aclose()


async def test_one_prefix_cannot_take_every_request_slot(
    clock: MockClock, rng: random.Random
) -> None:
    """Row 2 of issue 18: identities from one /24 keep slow requests in flight. Past the
    prefix's share of the node's request slots they are answered BUSY at once (not cut
    off), and a peer from another prefix is served meanwhile."""
    from node.errors import RemoteError
    from protocol.messages import ErrorCode

    config = dataclasses.replace(CONFIG, max_inflight=12, max_inflight_per_prefix=4)

    async def slow(peer: object, message: object) -> Pong:
        await trio.sleep(10)
        return Pong(b"late")

    server_identity = seeded_identity(rng)
    async with open_server(rng, config, {Ping: slow}, identity=server_identity) as server:
        assert server.address is not None
        address = server.address
        outcomes: list[str] = []

        async def ask(transport: Transport) -> None:
            try:
                await transport.request(address, Ping(b"x"), node_id=server.node_id, timeout=30)
                outcomes.append("answered")
            except RemoteError as exc:
                assert exc.code == ErrorCode.BUSY
                outcomes.append("busy")

        async with trio.open_nursery() as nursery:
            sybils = []
            for _ in range(3):  # three identities on 127.0.9.1, three requests each
                identity = seeded_identity(rng)
                layer = TcpLinkLayer(identity, random_bytes=rng.randbytes, source_host="127.0.9.1")
                transport = Transport(identity, layer)
                await nursery.start(transport.run)
                sybils.append(transport)
            for transport in sybils:
                for _ in range(3):
                    nursery.start_soon(ask, transport)
            await trio.sleep(1)
            assert outcomes.count("busy") == 5  # 9 asked, 4 served
            honest_identity = seeded_identity(rng)
            async with open_transport(
                honest_identity, TcpLinkLayer(honest_identity, random_bytes=rng.randbytes)
            ) as honest:
                answer = await honest.request(address, Ping(b"y"), node_id=server.node_id)
                assert answer == Pong(b"late")
            await trio.sleep(15)
            assert outcomes.count("answered") == 4
            assert server.statistics().requests_busy == 5
            nursery.cancel_scope.cancel()


async def raw_request(
    stream: trio.SocketStream,
    noise: TransportState,
    buffer: bytearray,
    request_id: int,
    message: Message,
) -> Message:
    """Send one request on a raw authenticated stream and return the answer to it."""
    frame = encode_envelope(Envelope(Kind.REQUEST, request_id, message))
    record = noise.encrypt(struct.pack(">I", len(frame)) + frame)
    await stream.send_all(RECORD.pack(len(record)) + record)
    plain = noise.decrypt(await read_record(stream, buffer))
    (length,) = struct.unpack_from(">I", plain)
    envelope = decode_envelope(plain[4 : 4 + length])
    assert (envelope.kind, envelope.request_id) == (Kind.RESPONSE, request_id)
    return envelope.message


async def test_a_provider_record_flood_from_few_prefixes_leaves_room_for_others(
    clock: MockClock, rng: random.Random
) -> None:
    """Identities from 127.0.5.0/24 flood a node with ADD_PROVIDER until their prefix's
    quota refuses them; identities from 127.0.6.0/24 fill the node-wide budget and then
    take room from the crowded prefix until both are level, then are refused; an honest
    provider from 127.0.0.0/24 is still accepted, and the node never holds more records
    than its budget (issue 18, row 2)."""
    budget, quota, identities, keys_each = 60, 40, 6, 15
    dht_config = DhtConfig(
        max_records=budget,
        max_records_per_prefix=quota,
        ip_prefix_limit_per_bucket=None,
        ip_prefix_limit_per_table=None,
    )
    async with open_dht_server(
        rng, dataclasses.replace(CONFIG, max_connections=32), dht_config, seed=1
    ) as (server, service):
        assert server.address is not None
        answers: dict[str, list[Message]] = {}
        for source in ("127.0.5.1", "127.0.6.1"):
            for _ in range(identities):
                stream, noise = await authenticated_raw_connection(
                    server, seeded_identity(rng), rng, source=source
                )
                buffer = bytearray()
                for number in range(keys_each):
                    answer = await raw_request(
                        stream, noise, buffer, number, AddProvider(rng.randbytes(32), 4000)
                    )
                    answers.setdefault(source, []).append(answer)
                    assert len(service.records) <= budget
                await stream.aclose()
        statistics = service.records.statistics()
        accepted = {
            source: sum(isinstance(answer, ProviderAdded) for answer in replies)
            for source, replies in answers.items()
        }
        refused = [
            answer
            for replies in answers.values()
            for answer in replies
            if not isinstance(answer, ProviderAdded)
        ]
        assert accepted == {"127.0.5.1": quota, "127.0.6.1": budget // 2}
        assert all(
            isinstance(answer, Error) and answer.code == ErrorCode.REFUSED for answer in refused
        )
        assert statistics.rejected_over_prefix_quota == identities * keys_each - quota
        assert statistics.rejected_budget_full == identities * keys_each - budget // 2
        assert statistics.evicted == quota - budget // 2
        honest_identity = seeded_identity(rng)
        key = rng.randbytes(32)
        async with open_transport(
            honest_identity, TcpLinkLayer(honest_identity, random_bytes=rng.randbytes)
        ) as honest:
            answer = await honest.request(
                server.address, AddProvider(key, 4100), node_id=server.node_id, timeout=5.0
            )
        assert isinstance(answer, ProviderAdded)
        providers = service.records.get(NodeId(key), trio.current_time(), 10)
        assert [contact.node_id for contact in providers] == [honest_identity.node_id]
        assert len(service.records) == budget


async def test_peers_that_hang_up_mid_request_leak_no_request_slot(
    clock: MockClock, rng: random.Random
) -> None:
    """Found by a review: peers that send slow requests and hang up at once, again and
    again. The requests' slots come back when their connections close (the handlers
    are cancelled), so the node never ends up answering everyone BUSY."""

    async def slow(peer: object, message: object) -> Pong:
        await trio.sleep(10)
        return Pong(b"late")

    config = dataclasses.replace(CONFIG, max_inflight=16, max_inflight_per_prefix=None)
    async with open_server(rng, config, {Ping: slow}) as server:
        for _ in range(12):  # 96 requests, six times the node's slots
            stream, noise = await authenticated_raw_connection(server, seeded_identity(rng), rng)
            frames = b"".join(
                struct.pack(">I", len(frame)) + frame
                for frame in (
                    encode_envelope(Envelope(Kind.REQUEST, number, Ping(b"x")))
                    for number in range(8)
                )
            )
            await stream.send_all(_records(noise, frames))
            await trio.sleep(0.5)
            await stream.aclose()
            await trio.sleep(0.5)
        assert server._inflight == 0
        assert not server._inflight_by_prefix
        assert server.statistics().requests_busy == 0
        honest_identity = seeded_identity(rng)
        async with open_transport(
            honest_identity, TcpLinkLayer(honest_identity, random_bytes=rng.randbytes)
        ) as honest:
            assert server.address is not None
            answer = await honest.request(server.address, Ping(b"y"), node_id=server.node_id)
            assert answer == Pong(b"late")


async def test_identities_of_one_prefix_share_its_answer_budget(
    clock: MockClock, rng: random.Random
) -> None:
    """Found by a review: identities of one /24 that never read could together fill the
    node's whole answer budget, one within its own each, and make everyone BUSY. The
    prefix has a budget of its own: past it a newcomer of that prefix gets BUSY, while
    one from elsewhere fetches its chunk."""
    from node.chunks import ChunkService
    from node.errors import RemoteError
    from protocol.chunk import chunk_id
    from protocol.messages import ChunkData, FetchChunk

    chunk_size = 200 * 1024
    config = dataclasses.replace(
        CONFIG,
        max_frame_size=256 * 1024,
        max_inflight_per_peer=64,
        max_answer_backlog=8 * 1024 * 1024,
        max_answer_backlog_per_peer=512 * 1024,
        max_answer_backlog_per_prefix=1024 * 1024,
        max_receive_buffer=1024 * 1024,
        max_receive_buffer_per_prefix=None,
        max_connections_per_prefix=None,
        send_timeout=60.0,
    )
    store, ids = _store_of_chunks(rng, 8, chunk_size)

    async with open_server(rng, config) as server:
        ChunkService(store, server, _announce_nothing)
        assert server.address is not None
        hogs = [
            await authenticated_raw_connection(
                server, seeded_identity(rng), rng, receive_buffer=4096, source="127.0.9.1"
            )
            for _ in range(4)
        ]
        for wave in range(4):
            for stream, noise in hogs:
                await stream.send_all(_fetches(noise, ids, range(8 * wave, 8 * wave + 8)))
            await trio.sleep(0.5)
        same_prefix = seeded_identity(rng)
        layer = TcpLinkLayer(same_prefix, random_bytes=rng.randbytes, source_host="127.0.9.1")
        async with open_transport(same_prefix, layer) as neighbour:
            with pytest.raises(RemoteError) as busy:
                await neighbour.request(server.address, FetchChunk(ids[1]), node_id=server.node_id)
            assert busy.value.code == ErrorCode.BUSY and "prefix" in busy.value.message
        elsewhere = seeded_identity(rng)
        async with open_transport(
            elsewhere, TcpLinkLayer(elsewhere, random_bytes=rng.randbytes)
        ) as honest:
            answer = await honest.request(
                server.address, FetchChunk(ids[0]), node_id=server.node_id
            )
            assert isinstance(answer, ChunkData) and chunk_id(answer.data) == ids[0]
        for stream, _ in hogs:
            await stream.aclose()


async def test_announcing_large_frames_and_stalling_holds_little_of_the_budget(
    clock: MockClock, rng: random.Random
) -> None:
    """Found by a review: peers of three prefixes announced maximum frames, sent 100
    bytes each and stalled, and so held the whole receive budget until their frame
    timeout, while an honest upload waited. A frame holds what has arrived plus a
    window, so they hold little, and the honest upload goes through at once."""
    frame_size = 1024 * 1024
    config = dataclasses.replace(
        CONFIG,
        max_frame_size=frame_size,
        max_connections=32,
        max_connections_per_prefix=None,
        max_receive_buffer=4 * frame_size,
        max_receive_buffer_per_prefix=2 * frame_size,
        max_answer_backlog=2 * frame_size,
        max_answer_backlog_per_peer=frame_size,
        max_answer_backlog_per_prefix=None,
    )

    async def take(peer: object, message: Message) -> Message:
        assert isinstance(message, StoreChunk)
        return ChunkStored(len(message.data))

    async with open_server(rng, config, {StoreChunk: take}) as server:
        assert server.address is not None
        stalled = []
        for prefix in (5, 6, 7):
            for _ in range(3):
                stream, noise = await authenticated_raw_connection(
                    server, seeded_identity(rng), rng, source=f"127.0.{prefix}.1"
                )
                head = encode_envelope(Envelope(Kind.REQUEST, 1, Ping(b"x")))
                await stream.send_all(_records(noise, struct.pack(">I", frame_size) + head))
                stalled.append(stream)
        await trio.sleep(1)
        # Announced: 9 MiB, more than the budget; held: a window each.
        held = server.receive_budget.used
        assert 0 < held <= 9 * (256 * 1024 + 1024) < config.max_receive_buffer
        client_identity = seeded_identity(rng)
        async with open_transport(
            client_identity,
            TcpLinkLayer(client_identity, random_bytes=rng.randbytes),
            config=config,
        ) as client:
            started = trio.current_time()
            group = GroupRecord(1, 1, 0, (bytes(32),))
            answer = await client.request(
                server.address, StoreChunk(group, bytes(100 * 1024)), node_id=server.node_id
            )
            assert answer == ChunkStored(100 * 1024)
            assert trio.current_time() - started < 5
        for stream in stalled:
            await stream.aclose()


async def test_identities_of_one_prefix_cannot_fill_a_key_against_an_honest_provider(
    clock: MockClock, rng: random.Random
) -> None:
    """Row 3 of issue 18, over TCP: 64 throwaway identities of 127.0.5.0/24 provide one
    key until it is full. An honest provider of another prefix is still taken, in the
    place of one of theirs, and its record is what a GET_PROVIDERS then names."""
    from protocol.messages import GetProviders, Providers

    dht_config = DhtConfig(
        max_providers_per_key=16, ip_prefix_limit_per_bucket=None, ip_prefix_limit_per_table=None
    )
    async with open_dht_server(
        rng, dataclasses.replace(CONFIG, max_connections=80), dht_config, seed=2
    ) as (server, _):
        assert server.address is not None
        key = rng.randbytes(32)
        taken = 0
        for number in range(64):
            stream, noise = await authenticated_raw_connection(
                server, seeded_identity(rng), rng, source="127.0.5.1"
            )
            answer = await raw_request(stream, noise, bytearray(), number, AddProvider(key, 4000))
            taken += isinstance(answer, ProviderAdded)
            await stream.aclose()
        assert taken == 16  # the key is full of them
        honest_identity = seeded_identity(rng)
        async with open_transport(
            honest_identity, TcpLinkLayer(honest_identity, random_bytes=rng.randbytes)
        ) as honest:
            address = server.address
            answer = await honest.request(address, AddProvider(key, 4100), node_id=server.node_id)
            assert isinstance(answer, ProviderAdded)
            named = await honest.request(address, GetProviders(key, 4100), node_id=server.node_id)
        assert isinstance(named, Providers)
        providers = {NodeId(wire.node_id) for wire in named.providers}
        assert honest_identity.node_id in providers and len(providers) == 16


async def test_peers_that_never_read_their_pongs_are_shed_past_the_send_queue(
    clock: MockClock, rng: random.Random
) -> None:
    """Found by a review: PINGs are answered inline, with no in-flight limit, so peers
    that send many and never read made the node queue megabytes of PONGs each (4 MiB a
    connection, 8 connections filled every budget). All that links queue is metered:
    past `max_send_queue` the connection with the most queued is cut off, so the queue
    stays near the cap, and an honest peer is answered throughout."""
    cap = 256 * 1024
    config = dataclasses.replace(CONFIG, max_send_queue=cap, max_inflight_per_peer=64)
    async with open_server(rng, config) as server:
        assert server.address is not None
        frames = b"".join(
            struct.pack(">I", len(frame)) + frame
            for frame in (
                encode_envelope(Envelope(Kind.REQUEST, number % 2**32, Ping(bytes(32))))
                for number in range(100_000)
            )
        )
        attackers = []
        async with trio.open_nursery() as nursery:
            for _ in range(2):
                stream, noise = await authenticated_raw_connection(
                    server, seeded_identity(rng), rng, receive_buffer=4096
                )
                attackers.append(stream)
                nursery.start_soon(send_until_closed, stream, _records(noise, frames))
            peak = 0
            for _ in range(20):
                await trio.sleep(0.25)
                peak = max(peak, server.send_meter.total)
            nursery.cancel_scope.cancel()
        await newcomer_is_served(server, rng)
        assert server.statistics().connections_shed >= 1
        assert peak <= cap + 64 * 1024, peak
        for stream in attackers:
            await stream.aclose()
        await trio.sleep(1)
        assert server.send_meter.total == 0
