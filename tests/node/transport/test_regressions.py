"""Regression tests for the transport defects found in review (rpc.py, tcp.py, memory.py).

Each test asserts the behaviour that must hold, through the public API wherever it can:
`Transport.request`/`ping`, `statistics()`, `connected_peers()`, log lines, and raw
sockets for hostile peers. Behaviour of the transport contract runs over both networks
(the `network` fixture); hostile peers that need a raw socket run over TCP loopback only.
A test marked `xfail(strict=True)` describes a defect that is still present.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from node.errors import ConnectionFailed, RequestTimeout, TransportError
from node.transport import Address, Peer, Transport, TransportConfig
from node.transport.secure_link import SEND_HIGH_WATER
from protocol.handshake import SecureHandshake
from protocol.identity import NodeId
from protocol.messages import (
    MAX_CONTACTS,
    MAX_PROVIDERS,
    MAX_REQUEST_ID,
    Envelope,
    GetProviders,
    Kind,
    Message,
    Ping,
    Pong,
    Providers,
    WireContact,
    encode_envelope,
)
from protocol.noise import TransportState

from .conftest import MEMORY_KINDS, Network, seeded_identity
from .test_hostile_peers import (
    RECORD,
    authenticated_raw_connection,
    cut_off_lines,
    read_record,
    read_until_closed,
)

TCP_ONLY = pytest.mark.parametrize("kind", ["tcp"])
MEMORY_ONLY = pytest.mark.parametrize("kind", MEMORY_KINDS)

# The largest answer the protocol has: PROVIDERS with both lists full of the longest
# host names. Its frame (with the 4-byte length) is what queued answers are counted in.
LONGEST_CONTACT = WireContact(node_id=bytes(32), host="h" * 253, port=65535)
BIG_ANSWER = Providers(
    providers=(LONGEST_CONTACT,) * MAX_PROVIDERS, closer=(LONGEST_CONTACT,) * MAX_CONTACTS
)
BIG_FRAME_SIZE = 4 + len(encode_envelope(Envelope(Kind.RESPONSE, MAX_REQUEST_ID, BIG_ANSWER)))
ASK_PROVIDERS = GetProviders(key=bytes(32), sender_port=0)
# The receive buffer of a peer that does not read: as small as the kernel allows.
TINY_RECEIVE_BUFFER = 4096
# Records in the flood of test 6: enough for the node to take about a second over them.
FLOOD_RECORDS = 400_000
# How often `eventually` looks again (virtual seconds).
POLL_INTERVAL = 0.05


def kernel_buffer_ceiling() -> int:
    """The most bytes the kernel holds for one loopback TCP connection whose reader does
    not read and has a tiny receive buffer: the send buffer's autotuning ceiling (the
    third field of tcp_wmem, 4 MiB by default) and slack for the receiving side."""
    try:
        ceiling = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, ValueError, IndexError):
        ceiling = 4 * 1024 * 1024
    return ceiling + 256 * 1024


def task_count() -> int:
    """The number of tasks in this trio run (trio's introspection API)."""

    def count(task: trio.lowlevel.Task) -> int:
        return 1 + sum(
            count(child) for nursery in task.child_nurseries for child in nursery.child_tasks
        )

    root = trio.lowlevel.current_root_task()
    assert root is not None
    return count(root)


def node_ids(transport: Transport) -> list[NodeId]:
    return [peer.node_id for peer in transport.connected_peers()]


async def eventually(predicate: Callable[[], bool], *, within: float = 5.0) -> None:
    """Wait (in virtual time) until `predicate` holds; fail if it does not within `within`."""
    for _ in range(int(within / POLL_INTERVAL)):
        if predicate():
            return
        await trio.sleep(POLL_INTERVAL)
    assert predicate()


async def big_answer(peer: Peer, message: Message) -> Message:
    """An async handler that answers every request with the largest answer there is."""
    await trio.lowlevel.checkpoint()
    return BIG_ANSWER


def request_record(noise: TransportState, first_id: int, count: int, message: Message) -> bytes:
    """One Noise record carrying `count` requests with consecutive ids."""
    frames = b"".join(
        struct.pack(">I", len(frame)) + frame
        for frame in (
            encode_envelope(Envelope(Kind.REQUEST, first_id + number, message))
            for number in range(count)
        )
    )
    record = noise.encrypt(frames)
    return RECORD.pack(len(record)) + record


@asynccontextmanager
async def server_and_client(
    network: Network, *, config: TransportConfig, handlers: dict[type[Message], Any]
) -> AsyncIterator[tuple[Transport, Transport]]:
    """A server and an honest client already connected to it."""
    async with (
        network.node(config=config, handlers=handlers) as server,
        network.node() as client,
    ):
        assert server.address is not None
        await client.ping(server.address, node_id=server.node_id)
        yield server, client


class SilentResponder:
    """A raw Noise responder that completes the handshake and then never reads (its
    receive buffer is tiny) until it hangs up."""

    def __init__(self, network: Network) -> None:
        self.identity = seeded_identity(network.rng)
        self._rng = network.rng
        self._stream: trio.SocketStream | None = None

    async def run(self, *, task_status: trio.TaskStatus[Address]) -> None:
        listener = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with listener:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, TINY_RECEIVE_BUFFER)
            await listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            host, port = listener.getsockname()
            task_status.started((host, port))
            sock, _ = await listener.accept()
        self._stream = stream = trio.SocketStream(sock)
        handshake = SecureHandshake(
            self.identity,
            initiator=False,
            noise_static_private=self._rng.randbytes(32),
            ephemeral_private=self._rng.randbytes(32),
        )
        buffer = bytearray()
        reply = handshake.receive(await read_record(stream, buffer))
        assert reply is not None
        await stream.send_all(RECORD.pack(len(reply)) + reply)
        handshake.receive(await read_record(stream, buffer))
        await trio.sleep_forever()

    def hang_up(self) -> None:
        """Send EOF (and still never read)."""
        assert self._stream is not None
        self._stream.socket.shutdown(socket.SHUT_WR)


class Flood:
    """FLOOD_RECORDS Noise records, alternately empty and of one byte, sent from a thread
    by a blocking sendall (as fast as the node reads). The one-byte records make up one
    frame of garbage, announced by the first record: reading it to the end gets the
    flooder cut off, which ends the flood."""

    def __init__(self, sock: socket.socket, noise: TransportState) -> None:
        self.sock = sock
        self.noise = noise
        self.blob = b""
        self.started = threading.Event()
        self.ended = threading.Event()
        self.took = 0.0

    def prepare(self) -> None:
        encrypt = self.noise.encrypt
        header = encrypt(struct.pack(">I", FLOOD_RECORDS // 2))
        empty = RECORD.pack(16)
        one_byte = RECORD.pack(17)
        records = [RECORD.pack(len(header)) + header]
        for _ in range(FLOOD_RECORDS // 2):
            records.append(empty + encrypt(b""))
            records.append(one_byte + encrypt(b"\xc1"))
        self.blob = b"".join(records)

    def run(self) -> None:
        started = time.perf_counter()
        self.started.set()
        try:
            self.sock.sendall(self.blob)
            while self.sock.recv(65536):
                pass
        except OSError:
            pass  # reset: cut off with our bytes unread
        finally:
            self.took = time.perf_counter() - started
            self.ended.set()


# -- 1. a peer that stops reading, then hangs up ---------------------------------------


@TCP_ONLY
@pytest.mark.parametrize("hang_up", ["half-close", "reset"])
async def test_peer_that_stops_reading_then_hangs_up_is_dropped(
    network: Network, clock: MockClock, caplog: pytest.LogCaptureFixture, hang_up: str
) -> None:
    """A peer that stops reading while answers are queued for it, then half-closes or
    resets, is dropped without an error escaping the node, and an honest peer keeps
    getting answers."""
    config = TransportConfig(max_inflight_per_peer=1024, send_timeout=1000.0)
    handlers: dict[type[Message], Any] = {GetProviders: big_answer}
    async with server_and_client(network, config=config, handlers=handlers) as (server, client):
        assert server.address is not None
        attacker = seeded_identity(network.rng)
        stream, noise = await authenticated_raw_connection(
            server, attacker, network.rng, receive_buffer=TINY_RECEIVE_BUFFER
        )
        # More answers than the kernel can hold for the connection: the rest are queued
        # in the node, its writer blocked (and some answers may wait for room).
        count = (kernel_buffer_ceiling() + SEND_HIGH_WATER // 2) // BIG_FRAME_SIZE
        for first in range(0, count, 32):
            await stream.send_all(
                request_record(noise, first, min(32, count - first), ASK_PROVIDERS)
            )
            await trio.testing.wait_all_tasks_blocked()
        assert attacker.node_id in node_ids(server)
        if hang_up == "half-close":
            stream.socket.shutdown(socket.SHUT_WR)
        else:
            linger = struct.pack("ii", 1, 0)  # close() sends RST
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            stream.socket.close()
        await eventually(lambda: attacker.node_id not in node_ids(server))
        peer, _ = await client.ping(server.address, node_id=server.node_id)
        assert peer == server.node_id
        assert node_ids(server) == [client.node_id]
    assert [record for record in caplog.records if record.levelno >= logging.ERROR] == []


# -- 2. hostile host names --------------------------------------------------------------

HOSTILE_HOSTS = {
    "label-over-63-bytes": "a" * 64 + ".example",
    "empty-label": "exa mple..com",
    "non-ascii-label-over-63": "ünïcødé-" + "x" * 60,
    "zero-width-space": "\u200b",
    "lone-surrogates": "\udcff\udcfe",
}


def hostile_host_cases() -> Iterator[Any]:
    for kind in (*MEMORY_KINDS, "tcp"):
        for name, host in HOSTILE_HOSTS.items():
            yield pytest.param(kind, host, id=f"{kind}-{name}")


@pytest.mark.parametrize(("kind", "host"), list(hostile_host_cases()))
async def test_hostile_host_name_fails_as_connection_failed(
    network: Network, clock: MockClock, host: str
) -> None:
    """A host name that cannot be resolved or encoded (over-long label, garbage, non-ASCII)
    makes request() raise ConnectionFailed, never UnicodeError or ValueError."""
    async with network.node() as node:
        with pytest.raises(ConnectionFailed):
            await node.request((host, 1), Ping(b"x"), timeout=5)
        with pytest.raises(ConnectionFailed):
            await node.request((host, 1), Ping(b"x"), node_id=node.node_id, timeout=5)


# -- 3. accept() errors -----------------------------------------------------------------


@TCP_ONLY
@pytest.mark.parametrize(
    "code", [errno.EHOSTUNREACH, errno.ECONNABORTED, errno.EPERM], ids=errno.errorcode.get
)
async def test_accept_error_of_one_connection_is_logged_and_survived(
    network: Network,
    clock: MockClock,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    code: int,
) -> None:
    """accept() failing for one pending connection (for any reason but a lack of
    descriptors or memory) is logged, and the node keeps accepting and serving."""
    caplog.set_level(logging.INFO, logger="node.transport.tcp")
    original_accept = socket.socket.accept
    failed: list[object] = []

    def accept_failing_once(self: socket.socket) -> tuple[socket.socket, Any]:
        # As the kernel does: that one connection is gone, and accept() says why.
        sock, address = original_accept(self)
        if failed:
            return sock, address
        failed.append(address)
        sock.close()
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(socket.socket, "accept", accept_failing_once)
    async with network.node() as server, network.node() as client:
        assert server.address is not None
        victim = await trio.open_tcp_stream(*server.address)
        assert await read_until_closed(victim) == b""
        for _ in range(2):
            peer, _ = await client.ping(server.address, node_id=server.node_id)
            assert peer == server.node_id
        assert server.statistics().connections_inbound == 1
    assert len(failed) == 1
    messages = [record.getMessage() for record in caplog.records]
    assert any("accept failed" in line and os.strerror(code) in line for line in messages)


# -- 4. a peer that never reads keeps asking ---------------------------------------------


@TCP_ONLY
async def test_peer_that_never_reads_cannot_grow_our_send_queue(
    network: Network, clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A peer that keeps sending requests to an async handler and never reads the answers
    gets at most the send queue's high water plus one in-flight window of answers
    (beyond what the kernel holds) and as many tasks, and is then cut off."""
    config = TransportConfig(max_inflight_per_peer=16, send_timeout=1000.0)
    answers = 0

    async def counting_big_answer(peer: Peer, message: Message) -> Message:
        nonlocal answers
        answers += 1
        return await big_answer(peer, message)

    async with network.node(config=config, handlers={GetProviders: counting_big_answer}) as server:
        stream, noise = await authenticated_raw_connection(
            server, seeded_identity(network.rng), network.rng, receive_buffer=TINY_RECEIVE_BUFFER
        )
        await trio.testing.wait_all_tasks_blocked()
        tasks_before = task_count()
        # The kernel's buffers, the high water, answers that passed the high-water check
        # together and the answers held back in flight.
        bound = (
            kernel_buffer_ceiling()
            + SEND_HIGH_WATER
            + 2 * (config.max_inflight_per_peer + 1) * BIG_FRAME_SIZE
        )
        batch = config.max_inflight_per_peer // 2  # never over the limit while answered
        sent = 0
        most_tasks = tasks_before
        while sent * BIG_FRAME_SIZE < 2 * bound and server.statistics().peers_cut_off == 0:
            try:
                await stream.send_all(request_record(noise, sent, batch, ASK_PROVIDERS))
            except trio.BrokenResourceError:
                break
            sent += batch
            await trio.testing.wait_all_tasks_blocked()
            most_tasks = max(most_tasks, task_count())
        assert server.statistics().peers_cut_off == 1
        assert server.connected_peers() == []
        assert answers * BIG_FRAME_SIZE <= bound
        assert most_tasks <= tasks_before + config.max_inflight_per_peer + 1
        await stream.aclose()
    [line] = cut_off_lines(caplog)
    assert "requests in flight" in line or "did not read" in line


# -- 5. abandoned requests do not get an honest peer cut off -----------------------------


async def test_abandoned_requests_do_not_get_an_honest_client_cut_off(
    network: Network, clock: MockClock
) -> None:
    """An honest client whose requests timed out or were cancelled, and which then asks
    again, waits for the server to finish them instead of pushing it over
    max_inflight_per_peer, and is not cut off."""

    async def slow(peer: Peer, message: Message) -> Message:
        await trio.sleep(10)
        assert isinstance(message, Ping)
        return Pong(message.nonce)

    config = TransportConfig(max_inflight_per_peer=2, max_consecutive_timeouts=100)
    async with (
        network.node(config=config, handlers={Ping: slow}) as server,
        network.node(config=config) as client,
    ):
        assert server.address is not None
        address = server.address
        started = trio.current_time()

        async def time_out() -> None:
            with pytest.raises(RequestTimeout):
                await client.request(address, Ping(b"1"), node_id=server.node_id, timeout=1)

        async def give_up() -> None:
            with trio.move_on_after(1):
                await client.request(address, Ping(b"2"), node_id=server.node_id, timeout=100)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(time_out)
            nursery.start_soon(give_up)
        answer = await client.request(address, Ping(b"3"), node_id=server.node_id, timeout=30)
        assert answer == Pong(b"3")
        # It was sent only once a late answer came (at 10 s), then took its own 10 s.
        assert trio.current_time() - started >= 20
        assert client.statistics().late_responses == 2
        assert server.statistics().peers_cut_off == 0
        assert node_ids(client) == [server.node_id]


# -- 6. a flood of empty or tiny records --------------------------------------------------


@TCP_ONLY
async def test_flood_of_tiny_records_does_not_starve_the_node(
    network: Network, clock: MockClock
) -> None:
    """While a peer floods the node with empty and one-byte Noise records, the node's
    other tasks keep running: no pause is more than a small part of the flood, and an
    honest ping is answered long before the flood ends."""
    async with network.node() as server, network.node() as client:
        assert server.address is not None
        address = server.address
        await client.ping(address, node_id=server.node_id)
        stream, noise = await authenticated_raw_connection(
            server, seeded_identity(network.rng), network.rng
        )
        sock = socket.socket(fileno=stream.socket.detach())
        sock.setblocking(True)
        with sock:
            flood = Flood(sock, noise)
            # In this thread, blocking the loop: were the loop idle meanwhile, MockClock
            # would jump to the idle timeout and close the connection before the flood.
            flood.prepare()
            longest_pause = 0.0
            ping_took: float | None = None

            async def watch_the_loop() -> None:
                nonlocal longest_pause
                last = time.perf_counter()
                while not flood.ended.is_set():
                    await trio.lowlevel.checkpoint()
                    now = time.perf_counter()
                    longest_pause = max(longest_pause, now - last)
                    last = now

            async def ping() -> None:
                nonlocal ping_took
                started = time.perf_counter()
                await client.ping(address, node_id=server.node_id)
                ping_took = time.perf_counter() - started

            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.to_thread.run_sync, flood.run)
                await trio.to_thread.run_sync(flood.started.wait)
                nursery.start_soon(watch_the_loop)
                nursery.start_soon(ping)
        # The whole flood was read: its last record completed the frame, which is garbage.
        assert server.statistics().cut_off_reasons == {"malformed frame": 1}
        assert flood.took > 0
        assert longest_pause < flood.took / 4
        assert ping_took is not None and ping_took < flood.took / 2


# -- 7. one identity cannot hold every slot -----------------------------------------------


async def test_one_identity_cannot_hold_every_connection_slot(
    network: Network, clock: MockClock
) -> None:
    """An identity that opens connection after connection keeps only its newest one (the
    older are closed once idle), so newcomers are admitted and our own dials still work."""
    config = TransportConfig(max_connections=2, reserved_connections=0)
    mallory = seeded_identity(network.rng)
    async with (
        network.node(config=config) as server,
        network.node() as other,
        network.node() as newcomer,
        AsyncExitStack() as stack,
    ):
        assert server.address is not None and other.address is not None
        clones = [
            await stack.enter_async_context(network.node(identity=mallory))
            for _ in range(3 * config.max_connections)
        ]
        for clone in clones:
            peer, _ = await clone.ping(server.address, node_id=server.node_id)
            assert peer == server.node_id
        peer, _ = await newcomer.ping(server.address, node_id=server.node_id)
        assert peer == server.node_id
        peer, _ = await server.ping(other.address, node_id=other.node_id)
        assert peer == other.node_id
        assert server.statistics().connections_refused == 0
        await eventually(lambda: all(node_ids(clone) == [] for clone in clones[:-1]))
        assert node_ids(clones[-1]) == [server.node_id]
        assert len(node_ids(server)) == 3
        assert set(node_ids(server)) == {mallory.node_id, other.node_id, newcomer.node_id}


# -- 8. callers are not held by a peer that stops reading ---------------------------------


@TCP_ONLY
async def test_callers_return_promptly_while_the_writer_is_blocked(
    network: Network, clock: MockClock
) -> None:
    """While the link's writer is blocked on a peer that stopped reading, a request that
    times out raises RequestTimeout at its timeout, a cancelled one returns when
    cancelled, and when the peer hangs up the waiting ones get ConnectionClosed, all long
    before send_timeout."""
    config = TransportConfig(
        send_timeout=100.0, max_inflight_per_peer=1024, max_consecutive_timeouts=10**6
    )
    responder = SilentResponder(network)
    async with network.node(config=config) as client, trio.open_nursery() as nursery:
        address = await nursery.start(responder.run)
        node_id = responder.identity.node_id
        # No more than the send queue's high water, so no request waits for room in it,
        # but more than the kernel takes from a peer that does not read (about 3 MiB on
        # Linux loopback): the writer is left blocked.
        count = SEND_HIGH_WATER // BIG_FRAME_SIZE
        started = trio.current_time()
        outcomes: list[tuple[float, str]] = []

        async def ask(message: Message, timeout: float) -> None:
            try:
                await client.request(address, message, node_id=node_id, timeout=timeout)
            except Exception as exc:
                outcomes.append((round(trio.current_time() - started, 1), type(exc).__name__))

        async with trio.open_nursery() as requests:
            for _ in range(count):
                requests.start_soon(ask, BIG_ANSWER, 1)
            await trio.testing.wait_all_tasks_blocked()
            with trio.move_on_after(0.5) as cancelled:
                await client.request(address, Ping(b"late"), node_id=node_id, timeout=100)
            assert cancelled.cancelled_caught
            assert trio.current_time() - started == pytest.approx(0.5)
        assert outcomes == [(1.0, "RequestTimeout")] * count

        outcomes.clear()
        started = trio.current_time()
        async with trio.open_nursery() as requests:
            for number in range(4):
                requests.start_soon(ask, Ping(bytes([number])), 10)
            await trio.sleep(2)
            responder.hang_up()
        assert outcomes == [(2.0, "ConnectionClosed")] * 4
        nursery.cancel_scope.cancel()


@TCP_ONLY
async def test_request_waiting_for_room_in_the_send_queue_times_out(
    network: Network, clock: MockClock
) -> None:
    """A request that waits for room in the send queue of a peer that stopped reading
    still fails with RequestTimeout at its own timeout, not at send_timeout."""
    config = TransportConfig(
        send_timeout=20.0, max_inflight_per_peer=4096, max_consecutive_timeouts=10**6
    )
    responder = SilentResponder(network)
    async with network.node(config=config) as client, trio.open_nursery() as nursery:
        address = await nursery.start(responder.run)
        node_id = responder.identity.node_id
        # Twice the high water beyond what the kernel can take: many requests must wait.
        count = (kernel_buffer_ceiling() + 2 * SEND_HIGH_WATER) // BIG_FRAME_SIZE
        started = trio.current_time()
        outcomes: list[tuple[float, str]] = []

        async def ask() -> None:
            try:
                await client.request(address, BIG_ANSWER, node_id=node_id, timeout=1)
            except Exception as exc:
                outcomes.append((round(trio.current_time() - started, 1), type(exc).__name__))

        async with trio.open_nursery() as requests:
            for _ in range(count):
                requests.start_soon(ask)
        nursery.cancel_scope.cancel()
    assert outcomes == [(1.0, "RequestTimeout")] * count


# -- 9. requests queued behind the in-flight limit ----------------------------------------


async def test_requests_queued_behind_the_limit_fail_when_the_connection_closes(
    network: Network, clock: MockClock
) -> None:
    """Requests waiting for room under max_inflight_per_peer all fail with ConnectionClosed
    as soon as the connection closes, not at their own deadlines."""

    async def never(peer: Peer, message: Message) -> Message:
        await trio.sleep_forever()
        raise AssertionError

    identity = seeded_identity(network.rng)
    link_layer, listen_address = network.link_layer(identity)
    server = Transport(identity, link_layer, listen_address=listen_address, handlers={Ping: never})
    config = TransportConfig(max_inflight_per_peer=1)
    outcomes: list[tuple[float, str]] = []
    async with network.node(config=config) as client, trio.open_nursery() as nursery:
        server_scope = trio.CancelScope()

        async def run_server(task_status: trio.TaskStatus[Address | None]) -> None:
            with server_scope:
                await server.run(task_status=task_status)

        address = await nursery.start(run_server)
        assert address is not None
        started = trio.current_time()

        async def ask(number: int) -> None:
            try:
                await client.request(
                    address, Ping(bytes([number])), node_id=identity.node_id, timeout=100
                )
            except TransportError as exc:
                outcomes.append((round(trio.current_time() - started, 1), type(exc).__name__))

        for number in range(3):
            nursery.start_soon(ask, number)
        await trio.sleep(1)
        server_scope.cancel()  # the peer goes away at 1 s
    assert outcomes == [(1.0, "ConnectionClosed")] * 3


# -- 10. requests sharing a dial ----------------------------------------------------------


@asynccontextmanager
async def unresponsive_address(network: Network) -> AsyncIterator[Address]:
    """An address where a dial never completes its handshake."""
    if network.memory is not None:
        network.memory.partition(["unresponsive"])
        yield ("unresponsive", 1)
        return
    # A listening socket that never accepts: the kernel completes the TCP handshake,
    # nobody ever answers the Noise one.
    with trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        await listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        host, port = listener.getsockname()
        yield (host, port)


async def test_requests_sharing_a_failing_dial_fail_together(
    network: Network, clock: MockClock
) -> None:
    """Several requests waiting on one dial that fails all fail when it does, with
    ConnectionFailed, not one dial after another."""
    config = TransportConfig(handshake_timeout=10.0)
    node_id = seeded_identity(network.rng).node_id
    async with network.node(config=config) as client, unresponsive_address(network) as address:
        started = trio.current_time()
        outcomes: list[tuple[float, str]] = []

        async def ask() -> None:
            try:
                await client.request(address, Ping(b"?"), node_id=node_id, timeout=60)
            except TransportError as exc:
                outcomes.append((round(trio.current_time() - started, 1), type(exc).__name__))

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(ask)
        assert outcomes == [(10.0, "ConnectionFailed")] * 3
        assert client.statistics().connections_outbound == 0


@MEMORY_ONLY
async def test_request_sharing_a_dial_keeps_its_own_timeout(
    network: Network, clock: MockClock
) -> None:
    """A request that shares a dial started by a caller with a shorter timeout still gets
    its answer when the dial outlives that caller."""
    async with network.node() as server, network.node() as client:
        assert server.address is not None
        address = server.address
        outcomes: dict[str, object] = {}

        async def ask(name: str, timeout: float) -> None:
            try:
                outcomes[name] = await client.request(
                    address, Ping(name.encode()), node_id=server.node_id, timeout=timeout
                )
            except TransportError as exc:
                outcomes[name] = type(exc).__name__

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask, "hasty", 0.001)  # gives up before any round trip
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(ask, "patient", 60)
        assert outcomes == {"hasty": "RequestTimeout", "patient": Pong(b"patient")}


# -- 11. requests by address alone reuse the pool -----------------------------------------


async def test_requests_by_address_alone_reuse_one_connection(
    network: Network, clock: MockClock
) -> None:
    """Requests and pings by address without a NodeId (bootstrap) reuse one pooled
    connection instead of dialling every time."""
    async with network.node() as server, network.node() as client:
        assert server.address is not None
        for number in range(3):
            peer, _ = await client.ping(server.address)
            assert peer == server.node_id
            assert await client.request(server.address, Ping(bytes([number]))) == Pong(
                bytes([number])
            )
        assert client.statistics().connections_outbound == 1
        assert server.statistics().connections_inbound == 1


async def test_concurrent_requests_by_address_alone_share_one_connection(
    network: Network, clock: MockClock
) -> None:
    """Concurrent pings by address without a NodeId all get their answers over one
    connection."""
    async with network.node() as server, network.node() as client:
        assert server.address is not None
        address = server.address
        failures: list[str] = []

        async def ping() -> None:
            try:
                await client.ping(address)
            except TransportError as exc:
                failures.append(repr(exc))

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(ping)
        assert failures == []
        assert client.statistics().connections_outbound == 1


async def test_nodes_dialling_each_other_at_once_keep_a_connection(
    network: Network, clock: MockClock
) -> None:
    """Two nodes that ping each other at the same moment both get their answers, and keep
    a pooled connection: pinging again at once dials nothing new."""
    async with network.node() as alice, network.node() as bob:
        failures: list[str] = []

        async def ping(source: Transport, target: Transport) -> None:
            assert target.address is not None
            try:
                await source.ping(target.address, node_id=target.node_id)
            except TransportError as exc:
                failures.append(repr(exc))

        for _ in range(2):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ping, alice, bob)
                nursery.start_soon(ping, bob, alice)
            await trio.sleep(1)
        assert failures == []
        dials = alice.statistics().connections_outbound + bob.statistics().connections_outbound
        assert dials <= 2


# -- 12. the memory network behaves like TCP ----------------------------------------------


@MEMORY_ONLY
@pytest.mark.parametrize("how", ["cancelled", "timed-out"])
async def test_dial_abandoned_mid_handshake_leaves_no_connection(
    network: Network, clock: MockClock, how: str
) -> None:
    """A memory dial abandoned after the listener accepted it leaves no half-open
    connection there: at max_connections=1 a newcomer is still admitted at once."""
    config = TransportConfig(max_connections=1, reserved_connections=0)
    async with (
        network.node(config=config) as server,
        network.node() as client,
        network.node() as newcomer,
    ):
        assert server.address is not None and client.address is not None
        assert network.memory is not None
        latency = network.memory.latency(client.address[0], server.address[0])
        # The listener accepts after one latency; the dialler finishes after two.
        give_up_after = 1.5 * latency
        if how == "cancelled":
            with trio.move_on_after(give_up_after) as scope:
                await client.request(server.address, Ping(b"?"), node_id=server.node_id)
            assert scope.cancelled_caught
        else:
            with pytest.raises(RequestTimeout):
                await client.request(
                    server.address, Ping(b"?"), node_id=server.node_id, timeout=give_up_after
                )
        await trio.testing.wait_all_tasks_blocked()
        assert server.connected_peers() == []
        peer, _ = await newcomer.ping(server.address, node_id=server.node_id)
        assert peer == server.node_id
        assert server.statistics().connections_refused == 0
        assert client.statistics().connections_outbound == 0
