"""The in-memory network's model: seeded per-pair latency, loss and partitions, the same
with and without the secure channel."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from trio.testing import MockClock

from node.errors import ConnectionFailed, RequestTimeout, TransportError
from node.transport import MemoryNetwork, Transport, TransportConfig, open_transport
from protocol.messages import Ping, Pong

from .conftest import seeded_identity

PATIENT = TransportConfig(max_consecutive_timeouts=1000, request_timeout=5.0)
BOTH_CHANNELS = pytest.mark.parametrize("secure", [False, True], ids=["plain", "secure"])


@pytest.fixture
def clock() -> MockClock:
    return MockClock(autojump_threshold=0)


@asynccontextmanager
async def two_nodes(network: MemoryNetwork) -> AsyncIterator[tuple[Transport, Transport]]:
    rng = random.Random(5)
    alice_id, bob_id = seeded_identity(rng), seeded_identity(rng)
    async with (
        open_transport(
            alice_id,
            network.link_layer(alice_id, "alice", random_bytes=rng.randbytes),
            listen_address=("alice", 0),
            config=PATIENT,
        ) as alice,
        open_transport(
            bob_id,
            network.link_layer(bob_id, "bob", random_bytes=rng.randbytes),
            listen_address=("bob", 0),
            config=PATIENT,
        ) as bob,
    ):
        yield alice, bob


def test_latency_is_fixed_per_pair_and_seed() -> None:
    """Latency is symmetric, in range, the same for the same seed and pair."""
    first = MemoryNetwork(seed=3, min_latency=0.01, max_latency=0.2)
    again = MemoryNetwork(seed=3, min_latency=0.01, max_latency=0.2)
    other = MemoryNetwork(seed=4, min_latency=0.01, max_latency=0.2)
    pairs = [(f"h{i}", f"h{j}") for i in range(10) for j in range(i + 1, 10)]
    for a, b in pairs:
        assert first.latency(a, b) == first.latency(b, a) == again.latency(a, b)
        assert 0.01 <= first.latency(a, b) <= 0.2
    assert [first.latency(*p) for p in pairs] != [other.latency(*p) for p in pairs]
    assert len({round(first.latency(*p), 9) for p in pairs}) > 40  # spread, not constant


def test_bad_parameters_are_refused() -> None:
    """Nonsense latency or loss is a ValueError at construction."""
    with pytest.raises(ValueError):
        MemoryNetwork(min_latency=0.2, max_latency=0.1)
    with pytest.raises(ValueError):
        MemoryNetwork(loss=1.0)


@BOTH_CHANNELS
async def test_round_trip_takes_twice_the_pair_latency(clock: MockClock, secure: bool) -> None:
    """A ping's round trip is exactly two one-way latencies of virtual time."""
    network = MemoryNetwork(seed=9, min_latency=0.01, max_latency=0.2, secure=secure)
    async with two_nodes(network) as (alice, bob):
        assert bob.address is not None
        started = trio.current_time()
        _, rtt = await alice.ping(bob.address, node_id=bob.node_id)
        assert rtt == pytest.approx(2 * network.latency("alice", "bob"))
        # The dial before it cost the handshake's round trip as well.
        assert trio.current_time() - started == pytest.approx(4 * network.latency("alice", "bob"))


async def loss_pattern(seed: int, *, secure: bool) -> list[bool]:
    network = MemoryNetwork(seed=seed, min_latency=0.01, max_latency=0.01, loss=0.3, secure=secure)
    outcomes = []
    async with two_nodes(network) as (alice, bob):
        assert bob.address is not None
        for number in range(60):
            try:
                answer = await alice.request(
                    bob.address, Ping(bytes([number])), node_id=bob.node_id, timeout=1
                )
                assert answer == Pong(bytes([number]))
                outcomes.append(True)
            except RequestTimeout:
                outcomes.append(False)
    return outcomes


@BOTH_CHANNELS
async def test_loss_drops_frames_reproducibly(clock: MockClock, secure: bool) -> None:
    """With 30% frame loss about half the round trips fail, and the same seed loses the
    same ones; a lost frame leaves a secure link in step (the requests time out, the link
    is not cut off)."""
    first = await loss_pattern(11, secure=secure)
    assert 15 <= first.count(False) <= 40  # each round trip survives two draws: 0.7**2
    assert await loss_pattern(11, secure=secure) == first
    assert await loss_pattern(12, secure=secure) != first


async def test_secure_channel_loses_the_same_frames(clock: MockClock) -> None:
    """The secure channel draws nothing from the network's RNG: one seed loses the same
    frames with and without it."""
    assert await loss_pattern(11, secure=True) == await loss_pattern(11, secure=False)


@BOTH_CHANNELS
async def test_partition_silences_and_heal_restores(clock: MockClock, secure: bool) -> None:
    """Across a partition, dials hang until the handshake timeout and frames on open
    links vanish; after heal() both work again."""
    network = MemoryNetwork(seed=2, min_latency=0.01, max_latency=0.05, secure=secure)
    async with two_nodes(network) as (alice, bob):
        assert alice.address is not None and bob.address is not None
        await alice.ping(bob.address, node_id=bob.node_id)
        network.partition(["alice"], ["bob"])
        assert not network.can_reach("alice", "bob")
        with pytest.raises(RequestTimeout):
            await alice.request(bob.address, Ping(b"lost"), node_id=bob.node_id, timeout=2)
        # A fresh dial across the partition hangs until the handshake timeout.
        carol_id = seeded_identity(random.Random(8))
        carol_layer = network.link_layer(carol_id, "carol", random_bytes=random.Random(9).randbytes)
        async with open_transport(carol_id, carol_layer) as carol:
            network.partition(["alice"], ["bob", "carol"])
            started = trio.current_time()
            with pytest.raises(ConnectionFailed, match="no handshake"):
                await carol.request(alice.address, Ping(b"?"), node_id=alice.node_id, timeout=60)
            assert trio.current_time() - started == pytest.approx(PATIENT.handshake_timeout)
            network.heal()
            assert await carol.request(alice.address, Ping(b"ok"), node_id=alice.node_id)
        assert await alice.request(bob.address, Ping(b"back"), node_id=bob.node_id)


@BOTH_CHANNELS
async def test_dialling_nobody_is_refused(clock: MockClock, secure: bool) -> None:
    """A dial to an address where nothing listens fails at once with a clear error."""
    network = MemoryNetwork(seed=1, min_latency=0.01, max_latency=0.01, secure=secure)
    async with two_nodes(network) as (alice, _):
        with pytest.raises(TransportError, match="refused"):
            await alice.request(("nobody", 1), Ping(b"?"))
