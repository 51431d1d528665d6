"""The transport contract, run against the TCP and both in-memory link layers."""

from __future__ import annotations

import pytest
import trio
from trio.testing import MockClock

from node.errors import (
    ConnectionClosed,
    ConnectionFailed,
    MessageTooLarge,
    RemoteError,
    RequestRejected,
    RequestTimeout,
    TransportError,
)
from node.transport import Peer, Transport, TransportConfig
from protocol.chunk import GroupRecord
from protocol.identity import NodeId
from protocol.messages import (
    ChunkData,
    Error,
    ErrorCode,
    FetchChunk,
    Message,
    Ping,
    Pong,
)

from .conftest import Network, seeded_identity


async def test_ping_authenticates_both_ends(network: Network, clock: MockClock) -> None:
    """A ping reaches the node with the expected id, and both ends learn each other's id."""
    async with network.node() as alice, network.node() as bob:
        assert bob.address is not None
        peer, rtt = await alice.ping(bob.address, node_id=bob.node_id)
        assert peer == bob.node_id
        assert rtt >= 0
        assert [p.node_id for p in bob.connected_peers()] == [alice.node_id]
        assert [p.node_id for p in alice.connected_peers()] == [bob.node_id]


async def test_dial_by_address_alone_learns_the_id(network: Network, clock: MockClock) -> None:
    """Dialling without an expected id (bootstrap) still authenticates and reports the id."""
    async with network.node() as alice, network.node() as bob:
        assert bob.address is not None
        peer, _ = await alice.ping(bob.address)
        assert peer == bob.node_id


async def test_wrong_identity_is_refused(network: Network, clock: MockClock) -> None:
    """A dialler that expects another NodeId at that address refuses the connection."""
    async with network.node() as alice, network.node() as bob:
        assert bob.address is not None
        impostor_id = NodeId(bytes(32))
        with pytest.raises(ConnectionFailed, match=r"expected|not the expected"):
            await alice.request(bob.address, Ping(b"x"), node_id=impostor_id)
        assert alice.connected_peers() == []


async def test_one_pooled_connection_serves_both_directions(
    network: Network, clock: MockClock
) -> None:
    """Repeated requests reuse one connection, and the callee can use it to call back."""
    async with network.node() as alice, network.node() as bob:
        assert alice.address is not None and bob.address is not None
        for _ in range(5):
            await alice.ping(bob.address, node_id=bob.node_id)
        await bob.ping(alice.address, node_id=alice.node_id)
        assert alice.statistics().connections_outbound == 1
        assert bob.statistics().connections_outbound == 0
        assert bob.statistics().connections_inbound == 1


async def test_concurrent_requests_are_multiplexed(network: Network, clock: MockClock) -> None:
    """Many requests in flight on one connection each get their own answer, out of order."""

    async def slow_echo(peer: Peer, message: Message) -> Message:
        assert isinstance(message, Ping)
        await trio.sleep(1 if message.nonce[0] % 2 == 0 else 0)  # evens answer last
        return Pong(message.nonce)

    async with network.node(handlers={Ping: slow_echo}) as server, network.node() as client:
        assert server.address is not None
        answers: dict[int, bytes] = {}

        async def ask(number: int) -> None:
            pong = await client.request(
                server.address, Ping(bytes([number]) * 4), node_id=server.node_id
            )
            assert isinstance(pong, Pong)
            answers[number] = pong.nonce

        async with trio.open_nursery() as nursery:
            for number in range(32):
                nursery.start_soon(ask, number)
        assert answers == {number: bytes([number]) * 4 for number in range(32)}
        assert client.statistics().connections_outbound == 1


def pattern(size: int, seed: int) -> bytes:
    return bytes((seed + index * 7) % 256 for index in range(size))


async def test_big_and_small_frames_queued_together_arrive_whole(
    network: Network, clock: MockClock
) -> None:
    """Answers of every size around the record boundary (65519 plaintext bytes) and far
    past it, all in flight at once so that several wait in one send queue and records
    straddle frames, each arrive byte for byte and matched to their request."""
    sizes = [0, 1, 65_510, 65_514, 65_515, 65_519, 65_520, 131_038, 200_001, 1_500_000]

    async def sized(peer: Peer, message: Message) -> Message:
        assert isinstance(message, FetchChunk)
        number = message.chunk_id[0]
        group = GroupRecord(1, 1, 0, (message.chunk_id,))
        return ChunkData(group, pattern(sizes[number % len(sizes)], number))

    async with network.node(handlers={FetchChunk: sized}) as server, network.node() as client:
        assert server.address is not None
        answers: dict[int, bytes] = {}

        async def ask(number: int) -> None:
            answer = await client.request(
                server.address, FetchChunk(bytes([number]) * 32), node_id=server.node_id
            )
            assert isinstance(answer, ChunkData)
            answers[number] = answer.data

        async with trio.open_nursery() as nursery:
            for number in range(3 * len(sizes)):
                nursery.start_soon(ask, number)
        assert answers == {
            number: pattern(sizes[number % len(sizes)], number) for number in range(3 * len(sizes))
        }


async def test_unanswered_request_times_out_then_connection_closes(
    network: Network, clock: MockClock
) -> None:
    """A request with no answer fails at its timeout; enough in a row close the connection."""

    async def never(peer: Peer, message: Message) -> Message:
        await trio.sleep_forever()
        raise AssertionError

    config = TransportConfig(max_consecutive_timeouts=2, request_timeout=100.0)
    async with (
        network.node(handlers={Ping: never}) as server,
        network.node(config=config) as client,
    ):
        assert server.address is not None
        started = trio.current_time()
        with pytest.raises(RequestTimeout):
            await client.request(server.address, Ping(b"1"), node_id=server.node_id, timeout=5)
        if network.memory is not None:
            assert trio.current_time() - started == pytest.approx(5.0)
        assert len(client.connected_peers()) == 1
        with pytest.raises(RequestTimeout):
            await client.request(server.address, Ping(b"2"), node_id=server.node_id, timeout=5)
        await trio.testing.wait_all_tasks_blocked()
        assert client.connected_peers() == []
        assert client.statistics().request_timeouts == 2
        assert client.statistics().peers_cut_off == 0  # closed, not a protocol violation


async def test_handler_errors_become_error_answers(network: Network, clock: MockClock) -> None:
    """A handler's RequestRejected and crashes reach the caller as RemoteError; the node lives."""
    calls = 0

    async def picky(peer: Peer, message: Message) -> Message:
        nonlocal calls
        calls += 1
        assert isinstance(message, Ping)
        if message.nonce == b"refuse":
            raise RequestRejected(ErrorCode.REFUSED, "not today")
        if message.nonce == b"crash":
            raise ZeroDivisionError("bug")
        return Pong(message.nonce)

    async with network.node(handlers={Ping: picky}) as server, network.node() as client:
        assert server.address is not None
        with pytest.raises(RemoteError) as refused:
            await client.request(server.address, Ping(b"refuse"), node_id=server.node_id)
        assert refused.value.code == ErrorCode.REFUSED
        assert refused.value.message == "not today"
        with pytest.raises(RemoteError) as crashed:
            await client.request(server.address, Ping(b"crash"), node_id=server.node_id)
        assert crashed.value.code == ErrorCode.INTERNAL
        pong = await client.request(server.address, Ping(b"fine"), node_id=server.node_id)
        assert pong == Pong(b"fine")
        assert calls == 3


async def test_request_without_handler_is_unsupported(network: Network, clock: MockClock) -> None:
    """A request of a type the peer does not serve is answered ERROR UNSUPPORTED."""
    async with network.node() as server, network.node() as client:
        assert server.address is not None
        with pytest.raises(RemoteError) as error:
            await client.request(server.address, Pong(b"?"), node_id=server.node_id)
        assert error.value.code == ErrorCode.UNSUPPORTED


async def test_oversized_message_is_refused_locally(network: Network, clock: MockClock) -> None:
    """A message over the frame limit is refused before sending, the link stays up, and
    the refused request does not keep a place among those in flight."""
    config = TransportConfig(max_frame_size=200, max_inflight_per_peer=1)
    async with network.node(config=config) as server, network.node(config=config) as client:
        assert server.address is not None
        with pytest.raises(MessageTooLarge):
            await client.request(
                server.address, Error(ErrorCode.INTERNAL, "x" * 500), node_id=server.node_id
            )
        for _ in range(3):
            assert await client.request(
                server.address, Ping(b"ok"), node_id=server.node_id, timeout=5
            )


async def test_in_flight_limit_queues_our_requests(network: Network, clock: MockClock) -> None:
    """We never have more requests in flight to a peer than the limit; the rest wait."""
    in_flight = 0
    most = 0

    async def counting(peer: Peer, message: Message) -> Message:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await trio.sleep(1)
        in_flight -= 1
        assert isinstance(message, Ping)
        return Pong(message.nonce)

    config = TransportConfig(max_inflight_per_peer=4)
    async with (
        network.node(handlers={Ping: counting}, config=config) as server,
        network.node(config=config) as client,
    ):
        assert server.address is not None
        async with trio.open_nursery() as nursery:
            for number in range(12):
                nursery.start_soon(
                    lambda n=number: client.request(
                        server.address, Ping(bytes([n])), node_id=server.node_id
                    )
                )
        assert most == 4
        assert server.statistics().peers_cut_off == 0


async def test_idle_connections_close_and_redial(network: Network, clock: MockClock) -> None:
    """A connection idle for a whole idle period closes (within two periods of its last
    use, never before one); the next request dials again."""
    config = TransportConfig(idle_timeout=30.0)
    async with network.node(config=config) as server, network.node(config=config) as client:
        assert server.address is not None
        for _ in range(3):  # in use: stays open across idle periods
            await client.ping(server.address, node_id=server.node_id)
            await trio.sleep(29)
        assert len(client.connected_peers()) == 1
        await trio.sleep(60 - 29)
        assert client.connected_peers() == []
        assert server.connected_peers() == []
        await client.ping(server.address, node_id=server.node_id)
        assert client.statistics().connections_outbound == 2


async def test_answered_request_does_not_leave_the_timer_armed(
    network: Network, clock: MockClock
) -> None:
    """Once its request is answered, a connection's timer goes back to its idle check
    rather than waking at that request's deadline for nothing; timeouts still fire
    (the test above)."""
    config = TransportConfig(idle_timeout=30.0)
    async with network.node(config=config) as server, network.node(config=config) as client:
        assert server.address is not None
        for _ in range(3):
            await client.request(server.address, Ping(b"x"), node_id=server.node_id, timeout=1.0)
        (connection,) = client._connections.values()
        assert connection._timer is not None
        assert connection._timer.deadline == connection._idle_check > trio.current_time() + 1


async def test_connection_limit_refuses_newcomers(network: Network, clock: MockClock) -> None:
    """At max_connections a node refuses more (the dialler gets ConnectionFailed on both
    networks, and no outbound connection is counted), and serves the ones it has."""
    config = TransportConfig(max_connections=1, reserved_connections=0)
    async with (
        network.node(config=config) as server,
        network.node() as first,
        network.node() as second,
    ):
        assert server.address is not None
        await first.ping(server.address, node_id=server.node_id)
        with pytest.raises(ConnectionFailed):
            await second.request(server.address, Ping(b"?"), node_id=server.node_id, timeout=5)
        assert second.statistics().connections_outbound == 0
        assert second.connected_peers() == []
        assert server.statistics().connections_refused == 1
        await first.ping(server.address, node_id=server.node_id)


async def test_peer_stopping_fails_requests_in_flight(network: Network, clock: MockClock) -> None:
    """When the peer goes away mid-request the caller gets ConnectionClosed, not a hang."""

    async def never(peer: Peer, message: Message) -> Message:
        await trio.sleep_forever()
        raise AssertionError

    identity = seeded_identity(network.rng)
    link_layer, address = network.link_layer(identity)
    server = Transport(identity, link_layer, listen_address=address, handlers={Ping: never})
    failures: list[BaseException] = []
    async with network.node() as client, trio.open_nursery() as nursery:
        server_scope = trio.CancelScope()

        async def run_server(task_status: trio.TaskStatus[object]) -> None:
            with server_scope:
                await server.run(task_status=task_status)

        await nursery.start(run_server)
        assert server.address is not None

        async def ask() -> None:
            try:
                await client.request(
                    server.address, Ping(b"x"), node_id=identity.node_id, timeout=1000
                )
            except TransportError as exc:
                failures.append(exc)

        nursery.start_soon(ask)
        await trio.sleep(1)
        server_scope.cancel()
    assert len(failures) == 1
    assert isinstance(failures[0], ConnectionClosed)
