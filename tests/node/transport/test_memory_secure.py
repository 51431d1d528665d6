"""The in-memory network's secure channel (`MemoryNetwork(secure=True)`): the real Noise
handshake and encrypted frames, as over TCP, observed at the link layer and on the wire."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from node.errors import ConnectionClosed, NoRoom
from node.transport import (
    Link,
    LinkClosed,
    LinkLayer,
    LinkListener,
    MemoryNetwork,
    TransportConfig,
    open_transport,
)
from node.transport.memory_link import LINK_BUFFER_FRAMES
from protocol.handshake import PAYLOAD_SIZE
from protocol.identity import Identity, NodeId
from protocol.messages import Ping
from protocol.noise import DH_SIZE, MAX_PLAINTEXT_SIZE, TAG_SIZE

from .conftest import Network, seeded_identity

CONFIG = TransportConfig()
LATENCY = 0.025
# Noise XX with our identity payload: e | e, s, payload | s, payload (Noise rev 34 §7.5).
HANDSHAKE_SIZES = [
    DH_SIZE,
    DH_SIZE + (DH_SIZE + TAG_SIZE) + (PAYLOAD_SIZE + TAG_SIZE),
    (DH_SIZE + TAG_SIZE) + (PAYLOAD_SIZE + TAG_SIZE),
]


@pytest.fixture
def kind() -> str:
    """The network of conftest's `clock` and `network` fixtures, unless a test says."""
    return "memory-secure"


@dataclass
class Wire:
    """An `intercept` hook that records every message sent and alters chosen ones."""

    # (source host, index among the messages that host sent) -> what to do to it
    alter: dict[tuple[str, int], Callable[[bytes], bytes]] = field(default_factory=dict)
    messages: list[tuple[str, str, bytes]] = field(default_factory=list)

    def __call__(self, source: str, destination: str, message: bytes) -> bytes:
        index = sum(1 for sent_by, _, _ in self.messages if sent_by == source)
        self.messages.append((source, destination, message))
        change = self.alter.get((source, index))
        return message if change is None else change(message)

    def sizes(self) -> list[int]:
        return [len(message) for _, _, message in self.messages]


def flip_last_byte(message: bytes) -> bytes:
    return message[:-1] + bytes([message[-1] ^ 1])


@dataclass
class Dial:
    """Both ends of one dial and when each was ready (virtual seconds after it began)."""

    ours: Link
    theirs: Link
    accepted_after: float
    dialler_done_after: float
    listener_done_after: float


async def dial(layer: LinkLayer, listener: LinkListener, expected: NodeId | None) -> Dial:
    started = trio.current_time()
    times: dict[str, float] = {}
    links: dict[str, Link] = {}

    async def accept() -> None:
        pending = await listener.accept()
        times["accepted"] = trio.current_time() - started
        links["theirs"] = await pending.handshake()
        times["listener"] = trio.current_time() - started

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept)
        links["ours"] = await layer.connect(listener.address, expected, CONFIG)
        times["dialler"] = trio.current_time() - started
    return Dial(
        links["ours"], links["theirs"], times["accepted"], times["dialler"], times["listener"]
    )


@asynccontextmanager
async def alice_and_bob(
    network: MemoryNetwork, seed: int = 5
) -> AsyncIterator[tuple[LinkLayer, LinkListener, Identity, Identity]]:
    """Alice's link layer and Bob's listener, with keys drawn from `seed`."""
    rng = random.Random(seed)
    alice_id, bob_id = seeded_identity(rng), seeded_identity(rng)
    alice = network.link_layer(alice_id, "alice", random_bytes=rng.randbytes)
    bob = network.link_layer(bob_id, "bob", random_bytes=rng.randbytes)
    listener = await bob.open_listener(("bob", 0), CONFIG)
    try:
        yield alice, listener, alice_id, bob_id
    finally:
        await listener.aclose()


@pytest.mark.parametrize(
    ("secure", "listener_round_trips"), [(True, 1.5), (False, 0.5)], ids=["secure", "plain"]
)
async def test_handshake_takes_one_and_a_half_round_trips(
    clock: MockClock, secure: bool, listener_round_trips: float
) -> None:
    """With the secure channel the listener is ready after three one-way latencies (Noise
    XX's three messages), without it after one; the dialler after two either way."""
    network = MemoryNetwork(seed=1, min_latency=LATENCY, max_latency=LATENCY, secure=secure)
    async with alice_and_bob(network) as (alice, listener, alice_id, bob_id):
        result = await dial(alice, listener, bob_id.node_id)
        assert result.accepted_after == pytest.approx(LATENCY)
        assert result.dialler_done_after == pytest.approx(2 * LATENCY)
        assert result.listener_done_after == pytest.approx(listener_round_trips * 2 * LATENCY)
        assert result.ours.remote_node_id == bob_id.node_id
        assert result.theirs.remote_node_id == alice_id.node_id


async def test_wire_carries_the_noise_handshake_then_ciphertext(clock: MockClock) -> None:
    """On the wire: the three Noise XX messages, then each frame as one transport message
    of its size plus the tag, not its plaintext; the peer reads the frame back."""
    wire = Wire()
    network = MemoryNetwork(
        seed=1, min_latency=LATENCY, max_latency=LATENCY, secure=True, intercept=wire
    )
    async with alice_and_bob(network) as (alice, listener, _, bob_id):
        result = await dial(alice, listener, bob_id.node_id)
        assert [source for source, _, _ in wire.messages] == ["alice", "bob", "alice"]
        assert wire.sizes() == HANDSHAKE_SIZES
        frame = b"a frame of plaintext " * 10
        await result.ours.send_frame(frame)
        await result.theirs.send_frame(frame)
        assert await result.theirs.receive_frame() == frame
        assert await result.ours.receive_frame() == frame
        sent = [message for _, _, message in wire.messages[3:]]
        assert [len(message) for message in sent] == [len(frame) + TAG_SIZE] * 2
        assert sent[0] != sent[1]  # each direction has its own key
        assert all(b"plaintext" not in message for message in sent)


async def test_large_frame_travels_as_several_noise_messages(clock: MockClock) -> None:
    """A frame over one Noise message's plaintext is split into records of at most 65535
    bytes, as secure_link.py splits it, and arrives whole."""
    wire = Wire()
    network = MemoryNetwork(seed=1, secure=True, intercept=wire)
    async with alice_and_bob(network) as (alice, listener, _, bob_id):
        result = await dial(alice, listener, bob_id.node_id)
        frame = random.Random(3).randbytes(3 * MAX_PLAINTEXT_SIZE + 100)
        await result.ours.send_frame(frame)
        assert await result.theirs.receive_frame() == frame
        assert wire.sizes()[3:] == [MAX_PLAINTEXT_SIZE + TAG_SIZE] * 3 + [100 + TAG_SIZE]


@pytest.mark.parametrize("kind", ["memory-secure", "tcp"])
async def test_wrong_node_fails_the_dial_as_over_tcp(network: Network, clock: MockClock) -> None:
    """Dialling an address whose node is not the expected one fails with the same
    misbehaved LinkClosed on both secure networks; the listener's handshake ends
    because the dialler went away, which it does not hold against it."""
    bob_id = seeded_identity(network.rng)
    alice_layer, _ = network.link_layer(seeded_identity(network.rng))
    bob_layer, bob_address = network.link_layer(bob_id)
    impostor = NodeId(bytes(32))
    listener = await bob_layer.open_listener(bob_address, CONFIG)
    listener_failure: list[LinkClosed] = []

    async def accept() -> None:
        pending = await listener.accept()
        with pytest.raises(LinkClosed) as failure:
            await pending.handshake()
        listener_failure.append(failure.value)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept)
        with pytest.raises(LinkClosed) as dial_failure:
            await alice_layer.connect(listener.address, impostor, CONFIG)
    await listener.aclose()
    assert dial_failure.value.misbehaved
    assert dial_failure.value.reason == (
        f"handshake failed: expected peer {impostor.short()}…, reached {bob_id.node_id.short()}…"
    )
    assert not listener_failure[0].misbehaved


async def test_tampered_frame_cuts_the_sender_off(clock: MockClock) -> None:
    """A frame altered on the wire fails to decrypt: at its arrival the receiver closes the
    link as misbehaved ("bad transport message"), and the sender's request fails."""
    # The client sends handshake messages 1 and 3, a ping, then the request altered here.
    wire = Wire(alter={("client", 3): flip_last_byte})
    network = MemoryNetwork(
        seed=1, min_latency=LATENCY, max_latency=LATENCY, secure=True, intercept=wire
    )
    rng = random.Random(6)
    client_id, server_id = seeded_identity(rng), seeded_identity(rng)
    async with (
        open_transport(
            server_id,
            network.link_layer(server_id, "server", random_bytes=rng.randbytes),
            listen_address=("server", 0),
        ) as server,
        open_transport(
            client_id, network.link_layer(client_id, "client", random_bytes=rng.randbytes)
        ) as client,
    ):
        assert server.address is not None
        await client.ping(server.address, node_id=server.node_id)
        started = trio.current_time()
        with pytest.raises(ConnectionClosed):
            await client.request(server.address, Ping(b"altered"), node_id=server.node_id)
        assert trio.current_time() - started == pytest.approx(LATENCY)
        assert server.statistics().peers_cut_off == 1
        assert server.statistics().cut_off_reasons == {"bad transport message": 1}
        assert client.statistics().peers_cut_off == 0
        assert server.connected_peers() == [] and client.connected_peers() == []


async def test_tampered_handshake_message_fails_the_dial(clock: MockClock) -> None:
    """A handshake message altered on the wire fails the dial as a misbehaved peer."""
    wire = Wire(alter={("bob", 0): flip_last_byte})  # message 2, the listener's
    network = MemoryNetwork(seed=1, secure=True, intercept=wire)
    async with alice_and_bob(network) as (alice, listener, _, bob_id):

        async def accept() -> None:
            pending = await listener.accept()
            with pytest.raises(LinkClosed):
                await pending.handshake()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(accept)
            with pytest.raises(LinkClosed) as failure:
                await alice.connect(listener.address, bob_id.node_id, CONFIG)
        assert failure.value.misbehaved
        assert failure.value.reason.startswith("handshake failed: ")


async def test_send_that_finds_no_room_spends_no_nonce(clock: MockClock) -> None:
    """A send that gives up waiting for room in a full link (NoRoom) sends nothing, and
    the link stays in step: every later frame still decrypts."""
    network = MemoryNetwork(seed=1, min_latency=LATENCY, max_latency=LATENCY, secure=True)
    async with alice_and_bob(network) as (alice, listener, _, bob_id):
        result = await dial(alice, listener, bob_id.node_id)
        for number in range(LINK_BUFFER_FRAMES):
            await result.ours.send_frame(number.to_bytes(2, "big"))
        with pytest.raises(NoRoom):
            await result.ours.send_frame(b"no room", deadline=trio.current_time() + 1)
        received = [await result.theirs.receive_frame() for _ in range(LINK_BUFFER_FRAMES)]
        assert received == [number.to_bytes(2, "big") for number in range(LINK_BUFFER_FRAMES)]
        await result.ours.send_frame(b"after")
        assert await result.theirs.receive_frame() == b"after"


async def test_send_waits_for_room_then_goes(clock: MockClock) -> None:
    """A send into a full link waits until the reader takes a frame, then goes through."""
    network = MemoryNetwork(seed=1, min_latency=LATENCY, max_latency=LATENCY, secure=True)
    async with alice_and_bob(network) as (alice, listener, _, bob_id):
        result = await dial(alice, listener, bob_id.node_id)
        for number in range(LINK_BUFFER_FRAMES):
            await result.ours.send_frame(number.to_bytes(2, "big"))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(result.ours.send_frame, b"waited")
            await trio.sleep(5)
            for _ in range(LINK_BUFFER_FRAMES):
                await result.theirs.receive_frame()
        assert await result.theirs.receive_frame() == b"waited"


async def test_reader_that_stops_reading_is_cut_off(clock: MockClock) -> None:
    """A sender blocked by a peer that reads nothing for the send timeout closes the link
    as misbehaved, as over TCP."""
    network = MemoryNetwork(seed=1, secure=True)
    async with alice_and_bob(network) as (alice, listener, _, bob_id):
        result = await dial(alice, listener, bob_id.node_id)
        for number in range(LINK_BUFFER_FRAMES):
            await result.ours.send_frame(number.to_bytes(2, "big"))
        started = trio.current_time()
        with pytest.raises(LinkClosed) as failure:
            await result.ours.send_frame(b"stuck")
        assert failure.value.misbehaved
        assert trio.current_time() - started == pytest.approx(CONFIG.send_timeout)


async def test_closing_one_end_ends_the_other(clock: MockClock) -> None:
    """Frames sent before a close still arrive; then the peer's reads end with a
    LinkClosed that is not a misbehaviour, and its sends fail the same way."""
    network = MemoryNetwork(seed=1, min_latency=LATENCY, max_latency=LATENCY, secure=True)
    async with alice_and_bob(network) as (alice, listener, _, bob_id):
        result = await dial(alice, listener, bob_id.node_id)
        await result.ours.send_frame(b"last words")
        await result.ours.aclose()
        assert await result.theirs.receive_frame() == b"last words"
        with pytest.raises(LinkClosed) as reading:
            await result.theirs.receive_frame()
        assert not reading.value.misbehaved
        with pytest.raises(LinkClosed) as sending:
            await result.theirs.send_frame(b"anyone?")
        assert not sending.value.misbehaved


async def test_closing_wakes_our_own_reader_at_once(clock: MockClock) -> None:
    """A reader waiting for a frame still on its way ends as soon as its own end closes,
    not at the frame's arrival."""
    network = MemoryNetwork(seed=1, min_latency=LATENCY, max_latency=LATENCY, secure=True)
    async with alice_and_bob(network) as (alice, listener, _, bob_id):
        result = await dial(alice, listener, bob_id.node_id)
        ended: list[float] = []

        async def read() -> None:
            with pytest.raises(LinkClosed):
                await result.theirs.receive_frame()
            ended.append(trio.current_time())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            await trio.testing.wait_all_tasks_blocked()
            await result.ours.send_frame(b"on its way")
            await trio.sleep(LATENCY / 2)
            closed_at = trio.current_time()
            await result.theirs.aclose()
        assert ended == [closed_at]


async def test_cancelled_reader_loses_nothing(clock: MockClock) -> None:
    """A receive cancelled while its frame is on the way leaves the frame for the next
    receive, which gets it at its arrival time."""
    network = MemoryNetwork(seed=1, min_latency=LATENCY, max_latency=LATENCY, secure=True)
    async with alice_and_bob(network) as (alice, listener, _, bob_id):
        result = await dial(alice, listener, bob_id.node_id)
        sent_at = trio.current_time()
        await result.ours.send_frame(b"first")
        await result.ours.send_frame(b"second")
        with trio.move_on_after(LATENCY / 2):
            await result.theirs.receive_frame()
        assert await result.theirs.receive_frame() == b"first"
        assert trio.current_time() == pytest.approx(sent_at + LATENCY)
        assert await result.theirs.receive_frame() == b"second"


async def wire_of_one_exchange(seed: int) -> list[tuple[str, str, bytes]]:
    wire = Wire()
    network = MemoryNetwork(seed=1, secure=True, intercept=wire)
    async with alice_and_bob(network, seed=seed) as (alice, listener, _, bob_id):
        result = await dial(alice, listener, bob_id.node_id)
        await result.ours.send_frame(b"ping")
        await result.theirs.receive_frame()
    return wire.messages


async def test_seeded_keys_replay_the_same_bytes(clock: MockClock) -> None:
    """With seeded `random_bytes`, a run puts exactly the same bytes on the wire again."""
    first = await wire_of_one_exchange(5)
    assert await wire_of_one_exchange(5) == first
    assert await wire_of_one_exchange(6) != first
