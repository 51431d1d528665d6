"""Request/response RPC over links: the part of the transport both networks share.

`Transport` is one node's endpoint. It listens, dials peers by address and expected
NodeId, keeps one pooled connection per peer, multiplexes concurrent requests on it by
request id, and answers inbound requests through an explicit table of handlers keyed
by message class. It enforces the limits of `TransportConfig` identically over TCP and
the in-memory network:

| event                                             | what happens                          |
|---------------------------------------------------|---------------------------------------|
| inbound connection while at `max_connections`     | closed before the handshake, logged   |
| handshake longer than `handshake_timeout`         | connection closed, logged             |
| frame that does not decode as an envelope         | connection closed, logged             |
| request whose body is malformed                   | answered ERROR BAD_REQUEST            |
| request of a type we have no handler for          | answered ERROR UNSUPPORTED            |
| more than `max_inflight_per_peer` requests at once| connection closed, logged             |
| handler raises RequestRejected / anything else    | ERROR with its code / ERROR INTERNAL  |
| our request unanswered after its timeout          | RequestTimeout; after                 |
|                                                   | `max_consecutive_timeouts` in a row   |
|                                                   | the connection is closed, logged      |
| nothing in flight for `idle_timeout`              | connection closed                     |

Every cut-off is one log line at WARNING with the peer and the reason; the node goes on.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import cast

import trio

from node.errors import (
    ConnectionClosed,
    ConnectionFailed,
    MessageTooLarge,
    RemoteError,
    RequestRejected,
    RequestTimeout,
    TransportError,
)
from node.transport.config import TransportConfig
from node.transport.link import (
    Address,
    Link,
    LinkClosed,
    LinkLayer,
    LinkListener,
    NoRoom,
    PendingLink,
)
from protocol.errors import LocalProtocolError, RemoteProtocolError
from protocol.identity import Identity, NodeId
from protocol.messages import (
    Envelope,
    Error,
    ErrorCode,
    Kind,
    MalformedMessage,
    Message,
    Ping,
    Pong,
    UnknownMessageType,
    decode_envelope,
    encode_envelope,
)

__all__ = [
    "AsyncHandler",
    "Handler",
    "InlineHandler",
    "Peer",
    "Transport",
    "TransportStatistics",
    "open_transport",
]

logger = logging.getLogger(__name__)

REQUEST_ID_LIMIT = 1 << 32
# After a simultaneous open, the losing connection closes once idle this long.
RETIRE_GRACE = 5.0
# How often a replaced connection checks whether its last request has finished.
RETIRE_POLL = 0.1
# Error.message holds at most 1024 UTF-8 bytes (protocol.messages); we send less.
ERROR_TEXT_BYTES = 1000


def _error_text(text: str) -> str:
    """`text` cut to ERROR_TEXT_BYTES of UTF-8, on a character boundary."""
    return text.encode()[:ERROR_TEXT_BYTES].decode(errors="ignore")


@dataclass(frozen=True, slots=True)
class Peer:
    """The authenticated sender of a request, as handlers see it."""

    node_id: NodeId
    address: Address


# A request handler. An async function gets a task of its own per request, bounded by
# the request timeout. A plain function is for quick non-blocking answers (PING, a
# routing-table lookup): it runs inline in the connection's read loop, which saves a
# task per request, so it must never block.
AsyncHandler = Callable[[Peer, Message], Awaitable[Message]]
InlineHandler = Callable[[Peer, Message], Message]
Handler = AsyncHandler | InlineHandler


@dataclass(slots=True)
class TransportStatistics:
    """Counters since start (trio's `statistics()` convention)."""

    connections_open: int = 0
    connections_inbound: int = 0
    connections_outbound: int = 0
    connections_refused: int = 0
    peers_cut_off: int = 0
    handshakes_failed: int = 0
    requests_sent: int = 0
    requests_received: int = 0
    request_timeouts: int = 0
    late_responses: int = 0
    cut_off_reasons: dict[str, int] = field(default_factory=dict)


class _Waiter:
    """One request waiting for its answer: a parked task and where the answer goes.

    Built on trio.lowlevel rather than trio.Event: on the small-RPC path an Event's
    parking lot costs more than the cryptography.
    """

    __slots__ = ("deadline", "done", "error", "response", "task", "timed_out")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.done = False
        self.task: trio.lowlevel.Task | None = None
        self.response: Message | None = None
        self.error: TransportError | None = None
        self.timed_out = False

    def finish(self) -> None:
        self.done = True
        task, self.task = self.task, None
        if task is not None:
            trio.lowlevel.reschedule(task)

    async def wait(self) -> None:
        if self.done:
            await trio.lowlevel.checkpoint()
            return
        self.task = trio.lowlevel.current_task()

        def abort(raise_cancel: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
            self.task = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)


class _Dial:
    """A dial in progress, whose outcome every request waiting on it shares."""

    __slots__ = ("connection", "done", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.connection: Connection | None = None
        self.error: TransportError | None = None


class Connection:
    """One authenticated link and the requests multiplexed on it."""

    def __init__(self, transport: Transport, link: Link, *, outbound: bool) -> None:
        self.transport = transport
        self.link = link
        self.outbound = outbound
        # The address this connection was dialled at (its key in Transport._by_address).
        self.dialled_address: Address | None = None
        self.peer = Peer(link.remote_node_id, link.remote_address)
        self.config = transport.config
        self._pending: dict[int, _Waiter] = {}
        # Requests we gave up on (timed out, cancelled) whose answers have not come:
        # the peer may still be serving them, so they still count against its limit.
        self._abandoned: set[int] = set()
        self._next_request_id = 0
        self._outbound_in_flight = 0
        self._timer: trio.CancelScope | None = None
        self._idle_check = math.inf  # when the timer next looks at idleness
        self._outbound_waiting = trio.lowlevel.ParkingLot()
        self._inbound_in_flight = 0
        self._consecutive_timeouts = 0
        self._activity = 0  # frames sent and received; the idle timer watches it
        self._close_reason: str | None = None
        self._cancel_scope = trio.CancelScope()

    @property
    def is_open(self) -> bool:
        return self._close_reason is None

    # -- outbound ---------------------------------------------------------------------

    async def request(self, message: Message, deadline: float) -> Message:
        """Send `message`, wait for its answer until `deadline` (trio time); ERROR answers
        raise RemoteError.

        The timeout is kept by the connection's timer task rather than a cancel scope
        per request: on a small RPC a cancel scope costs as much as the cryptography.
        """
        if self._in_flight_to_peer() >= self.config.max_inflight_per_peer:
            # Never more in flight than the peer accepts (it cuts off beyond that).
            with trio.move_on_at(deadline):
                while (
                    self._in_flight_to_peer() >= self.config.max_inflight_per_peer
                    and self._close_reason is None
                ):
                    await self._outbound_waiting.park()
            if self._close_reason is None and (
                self._in_flight_to_peer() >= self.config.max_inflight_per_peer
            ):
                raise RequestTimeout(
                    f"{self.peer.node_id.short()} had {self._in_flight_to_peer()} requests "
                    "in flight until the deadline"
                )
        if self._close_reason is not None:
            raise ConnectionClosed(self._close_reason)
        waiter = _Waiter(deadline)
        request_id = self._allocate_request_id()
        self._pending[request_id] = waiter
        self._outbound_in_flight += 1
        self.transport._statistics.requests_sent += 1
        timer = self._timer
        if timer is not None and deadline < timer.deadline:
            timer.deadline = deadline
        sent = False
        try:
            await self._send(Envelope(Kind.REQUEST, request_id, message), deadline=deadline)
            sent = True
            await waiter.wait()
        finally:
            self._outbound_in_flight -= 1
            self._pending.pop(request_id, None)
            timer = self._timer
            if timer is not None and timer.deadline == deadline:
                # Over before its deadline: the timer need not wake for it (it did, for
                # nothing, about once per query in a busy DHT node).
                timer.deadline = self._next_wakeup()
            if sent and (waiter.timed_out or not waiter.done) and self._close_reason is None:
                self._abandoned.add(request_id)
            elif self._outbound_waiting:
                self._outbound_waiting.unpark()
        if waiter.timed_out:
            await self._note_timeout_and_maybe_close()
            raise RequestTimeout(
                f"{self.peer.node_id.short()} did not answer {type(message).__name__} in time"
            )
        self._consecutive_timeouts = 0
        if waiter.error is not None:
            raise waiter.error
        response = waiter.response
        assert response is not None
        if isinstance(response, Error):
            raise RemoteError(int(response.code), response.message)
        return response

    def _in_flight_to_peer(self) -> int:
        return self._outbound_in_flight + len(self._abandoned)

    async def _note_timeout_and_maybe_close(self) -> None:
        self.transport._statistics.request_timeouts += 1
        self._consecutive_timeouts += 1
        if self._consecutive_timeouts >= self.config.max_consecutive_timeouts:
            await self.close(f"{self._consecutive_timeouts} requests in a row unanswered")

    async def _run_timers(self) -> None:
        """The connection's one timer task: fails each request whose deadline has
        passed, and closes the connection once nothing was sent or received, and
        nothing was in flight, for a whole idle period (so it closes between one and
        two periods after its last use: counting frames is cheaper than reading the
        clock per frame). One task rather than two: a node of a large network holds
        thousands of connections, and each task costs memory."""
        idle_timeout = self.config.idle_timeout
        seen_activity = -1
        self._idle_check = trio.current_time() + idle_timeout
        while True:
            with trio.CancelScope() as timer:
                self._timer = timer
                timer.deadline = self._next_wakeup()
                await trio.sleep_forever()
            now = trio.current_time()
            for request_id, waiter in list(self._pending.items()):
                if waiter.deadline <= now:
                    del self._pending[request_id]
                    waiter.timed_out = True
                    waiter.finish()
            if now >= self._idle_check:
                if (
                    self._activity == seen_activity
                    and not self._pending
                    and not self._inbound_in_flight
                ):
                    await self.close("idle")
                    return
                seen_activity = self._activity
                self._idle_check = now + idle_timeout

    def _next_wakeup(self) -> float:
        """When the timer must next look: the idle check or the earliest deadline of a
        request in flight."""
        return min(
            self._idle_check,
            min((waiter.deadline for waiter in self._pending.values()), default=math.inf),
        )

    def _allocate_request_id(self) -> int:
        while True:
            request_id = self._next_request_id
            self._next_request_id = (request_id + 1) % REQUEST_ID_LIMIT
            if request_id not in self._pending and request_id not in self._abandoned:
                return request_id

    async def _send(self, envelope: Envelope, *, deadline: float = math.inf) -> None:
        try:
            frame = encode_envelope(envelope)
        except LocalProtocolError as exc:
            raise TransportError(f"cannot encode {type(envelope.message).__name__}: {exc}") from exc
        if len(frame) > self.config.max_frame_size:
            raise MessageTooLarge(
                f"{type(envelope.message).__name__} is {len(frame)} bytes, "
                f"over the {self.config.max_frame_size}-byte frame limit"
            )
        self._activity += 1
        try:
            await self.link.send_frame(frame, deadline=deadline)
        except LinkClosed as exc:
            raise ConnectionClosed(exc.reason) from None
        except NoRoom:
            raise RequestTimeout(
                f"{self.peer.node_id.short()} did not read what we queued for it in time"
            ) from None

    # -- inbound ----------------------------------------------------------------------

    async def run(self) -> None:
        """Read frames until the link closes; then fail whatever still waits on it.

        Nothing a peer sends may end the node: an unexpected error in this connection's
        tasks is logged with its traceback and closes this connection only.
        """
        reason = "closed"
        try:
            with self._cancel_scope:
                try:
                    async with trio.open_nursery() as nursery:
                        if type(self.link).run is not Link.run:  # only links with work
                            nursery.start_soon(self.link.run)
                        nursery.start_soon(self._run_timers)
                        try:
                            await self._read_loop(nursery)
                        except LinkClosed as exc:
                            reason = exc.reason
                            if exc.misbehaved:
                                await self._cut_off(reason)
                            elif self._close_reason is None:
                                self._close_reason = reason
                        nursery.cancel_scope.cancel()
                except Exception as exc:  # a bug of ours, not the peer's doing
                    logger.exception("connection to %s failed", self.peer.node_id.short())
                    reason = f"internal error: {exc!r}"
        finally:
            reason = self._close_reason or reason
            self._close_reason = reason
            self._abandoned.clear()
            self._outbound_waiting.unpark_all()
            for waiter in self._pending.values():
                waiter.error = ConnectionClosed(reason)
                waiter.finish()
            self._pending.clear()
            self.transport._forget(self)
            with trio.CancelScope(shield=True):
                await self.link.aclose()

    async def _read_loop(self, nursery: trio.Nursery) -> None:
        max_frame_size = self.config.max_frame_size
        statistics = self.transport._statistics
        while True:
            # Nothing of the last frame stays referenced while waiting for the next: a
            # node holds thousands of idle connections, each parked right here.
            frame = envelope = message = waiter = None
            frame = await self.link.receive_frame()
            self._activity += 1
            try:
                envelope = decode_envelope(frame, max_size=max_frame_size)
            except UnknownMessageType as exc:
                await self._answer_undecodable(exc, ErrorCode.UNSUPPORTED)
                continue
            except MalformedMessage as exc:
                await self._answer_undecodable(exc, ErrorCode.BAD_REQUEST)
                continue
            except RemoteProtocolError as exc:
                await self._cut_off(f"malformed frame: {exc}")
                return
            if envelope.kind is Kind.REQUEST:
                statistics.requests_received += 1
                message = envelope.message
                inline = self.transport._inline_handlers.get(type(message))
                handler = self.transport._async_handlers.get(type(message))
                if inline is not None:
                    await self._reply(envelope.request_id, self._answer_inline(inline, message))
                elif handler is None:
                    unsupported = f"no handler for {type(message).__name__}"
                    await self._reply(
                        envelope.request_id, Error(ErrorCode.UNSUPPORTED, unsupported)
                    )
                elif self._inbound_in_flight >= self.config.max_inflight_per_peer:
                    await self._cut_off(
                        f"more than {self.config.max_inflight_per_peer} requests in flight"
                    )
                    return
                else:
                    self._inbound_in_flight += 1
                    nursery.start_soon(self._serve, handler, envelope.request_id, message)
            else:
                waiter = self._pending.pop(envelope.request_id, None)
                if waiter is None:
                    statistics.late_responses += 1
                    if envelope.request_id in self._abandoned:
                        self._abandoned.discard(envelope.request_id)
                        if self._outbound_waiting:
                            self._outbound_waiting.unpark()
                    continue
                waiter.response = envelope.message
                waiter.finish()

    async def _answer_undecodable(
        self, exc: UnknownMessageType | MalformedMessage, code: ErrorCode
    ) -> None:
        if exc.kind is Kind.REQUEST:
            self.transport._statistics.requests_received += 1
            await self._reply(exc.request_id, Error(code, _error_text(str(exc))))
            return
        # A response we cannot read fails the request it answers.
        waiter = self._pending.pop(exc.request_id, None)
        if waiter is not None:
            waiter.error = TransportError(f"unreadable response: {exc}")
            waiter.finish()

    def _answer_inline(self, handler: InlineHandler, message: Message) -> Message:
        try:
            return handler(self.peer, message)
        except RequestRejected as exc:
            return Error(exc.code, _error_text(exc.message))
        except Exception:
            logger.exception("handler for %s failed", type(message).__name__)
            return Error(ErrorCode.INTERNAL, "internal error")

    async def _serve(self, handler: AsyncHandler, request_id: int, message: Message) -> None:
        try:
            with trio.fail_after(self.config.request_timeout):
                response = await handler(self.peer, message)
        except RequestRejected as exc:
            response = Error(exc.code, _error_text(exc.message))
        except trio.TooSlowError:
            response = Error(ErrorCode.INTERNAL, "handler timed out")
        except Exception:
            logger.exception("handler for %s failed", type(message).__name__)
            response = Error(ErrorCode.INTERNAL, "internal error")
        try:
            # Counted until the link has taken the answer: while the peer does not read,
            # its answers hold their places and it cannot pile up more requests. Handing
            # an answer over does not yield, so an answered request stops counting
            # before the read loop can run again.
            await self._reply(request_id, response)
        finally:
            self._inbound_in_flight -= 1

    async def _reply(self, request_id: int, response: Message) -> None:
        try:
            await self._send(Envelope(Kind.RESPONSE, request_id, response))
        except ConnectionClosed:
            pass
        except TransportError as exc:
            # Our own answer could not be encoded or is over the frame limit.
            logger.error("cannot send the answer to %s: %s", self.peer.node_id.short(), exc)
            fallback = Error(ErrorCode.INTERNAL, "the answer could not be sent")
            with contextlib.suppress(ConnectionClosed):
                await self._send(Envelope(Kind.RESPONSE, request_id, fallback))

    async def retire(self, grace: float) -> None:
        """Close this connection, which another to the same peer replaced, once nothing
        is in flight on it and it carried nothing for `grace` seconds (after a
        simultaneous open the peer may have sent a request on it before it switched
        too; with grace 0, as soon as nothing is in flight)."""
        seen = self._activity if grace == 0 else -1
        while self._close_reason is None:
            if self._activity == seen and not self._pending and not self._inbound_in_flight:
                await self.close("replaced by another connection to the same peer")
                return
            seen = self._activity
            await trio.sleep(grace if grace else RETIRE_POLL)

    async def _cut_off(self, reason: str) -> None:
        statistics = self.transport._statistics
        statistics.peers_cut_off += 1
        key = reason.split(":")[0]
        statistics.cut_off_reasons[key] = statistics.cut_off_reasons.get(key, 0) + 1
        logger.warning(
            "cutting off %s at %s:%s: %s", self.peer.node_id.short(), *self.peer.address, reason
        )
        await self.close(reason)

    async def close(self, reason: str) -> None:
        """Close the connection; requests waiting on it fail with ConnectionClosed."""
        if self._close_reason is None:
            self._close_reason = reason
        self._cancel_scope.cancel()
        self._outbound_waiting.unpark_all()
        with trio.CancelScope(shield=True):
            await self.link.aclose()


class Transport:
    """A node's RPC endpoint over one link layer (TCP or in-memory)."""

    def __init__(
        self,
        identity: Identity,
        link_layer: LinkLayer,
        *,
        listen_address: Address | None = None,
        config: TransportConfig | None = None,
        handlers: Mapping[type[Message], Handler] | None = None,
    ) -> None:
        self.identity = identity
        self.node_id = identity.node_id
        self.config = config or TransportConfig()
        self._link_layer = link_layer
        self._listen_address = listen_address
        self.address: Address | None = None
        # Split once here, not per request: inspecting a function costs microseconds.
        self._inline_handlers: dict[type[Message], InlineHandler] = {}
        self._async_handlers: dict[type[Message], AsyncHandler] = {}
        self.add_handler(Ping, self.handle_ping)
        for message_type, handler in (handlers or {}).items():
            self.add_handler(message_type, handler)
        self._connections: dict[NodeId, Connection] = {}
        self._by_address: dict[Address, Connection] = {}  # outbound, by dialled address
        self._dialing: dict[NodeId, _Dial] = {}
        self._dialing_by_address: dict[Address, _Dial] = {}
        # Separate budgets, so that a flood of inbound handshakes or connections cannot
        # stop us from dialling out, nor the other way round.
        self._handshaking = 0
        self._inbound_count = 0
        self._outbound_count = 0
        self._statistics = TransportStatistics()
        self._nursery: trio.Nursery | None = None
        self._ping_count = 0

    # -- lifecycle --------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[Address | None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen (if given an address) and serve until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                if self._listen_address is not None:
                    listener = await self._link_layer.open_listener(
                        self._listen_address, self.config
                    )
                    self.address = listener.address
                    nursery.start_soon(self._accept_loop, listener)
                task_status.started(self.address)
                await trio.sleep_forever()
            finally:
                self._nursery = None

    def add_handler(self, message_type: type[Message], handler: Handler) -> None:
        """Answer requests of `message_type` with `handler` (replaces any earlier one)."""
        self._inline_handlers.pop(message_type, None)
        self._async_handlers.pop(message_type, None)
        if inspect.iscoroutinefunction(handler):
            self._async_handlers[message_type] = cast(AsyncHandler, handler)
        else:
            self._inline_handlers[message_type] = cast(InlineHandler, handler)

    def statistics(self) -> TransportStatistics:
        self._statistics.connections_open = len(self._connections)
        return self._statistics

    def connected_peers(self) -> list[Peer]:
        return [connection.peer for connection in self._connections.values()]

    # -- outbound ---------------------------------------------------------------------

    async def request(
        self,
        address: Address,
        message: Message,
        *,
        node_id: NodeId | None = None,
        timeout: float | None = None,
    ) -> Message:
        """Send `message` to the node at `address` (which must be `node_id`, if given)
        and return its answer. Dialling counts against the timeout."""
        timeout = self.config.request_timeout if timeout is None else timeout
        deadline = trio.current_time() + timeout
        connection = await self._connection_to(address, node_id, deadline)
        return await connection.request(message, deadline)

    async def ping(
        self, address: Address, *, node_id: NodeId | None = None
    ) -> tuple[NodeId, float]:
        """Ping the node at `address`: its NodeId and the round trip time in seconds
        (dialling excluded)."""
        connection = await self._connection_to(
            address, node_id, trio.current_time() + self.config.request_timeout
        )
        self._ping_count += 1
        nonce = self._ping_count.to_bytes(8, "big")
        started = trio.current_time()
        pong = await connection.request(Ping(nonce), started + self.config.request_timeout)
        if not isinstance(pong, Pong) or pong.nonce != nonce:
            raise TransportError(f"{connection.peer.node_id.short()} answered PING wrongly")
        return connection.peer.node_id, trio.current_time() - started

    def handle_ping(self, peer: Peer, message: Message) -> Message:
        assert isinstance(message, Ping)
        return Pong(message.nonce)

    async def _connection_to(
        self, address: Address, node_id: NodeId | None, deadline: float
    ) -> Connection:
        if node_id is None:
            # Dialled by address alone (bootstrap): reuse what that address gave us, or
            # share a dial to it already under way.
            known = self._by_address.get(address)
            if known is not None and known.is_open:
                return known
            dialing = self._dialing_by_address.get(address)
            if dialing is not None:
                with trio.move_on_at(deadline):
                    await dialing.done.wait()
                if dialing.connection is not None and dialing.connection.is_open:
                    return dialing.connection
            return await self._dial(address, None, deadline)
        while True:
            connection = self._connections.get(node_id)
            if connection is not None and connection.is_open:
                return connection
            dialing = self._dialing.get(node_id)
            if dialing is None:
                return await self._dial(address, node_id, deadline)
            # Someone is dialling that peer already: share the outcome.
            with trio.move_on_at(deadline):
                await dialing.done.wait()
            if dialing.connection is not None and dialing.connection.is_open:
                return dialing.connection
            if trio.current_time() >= deadline:
                raise RequestTimeout(f"dialling {node_id.short()} took too long")
            if dialing.error is not None and not isinstance(dialing.error, RequestTimeout):
                raise type(dialing.error)(str(dialing.error))
            # That dial ended on its caller's deadline (or was cancelled), not ours: try
            # again within our own.

    async def _dial(self, address: Address, node_id: NodeId | None, deadline: float) -> Connection:
        if self._nursery is None:
            raise TransportError("the transport is not running")
        if self._outbound_count >= self.config.max_connections:
            raise ConnectionFailed(
                f"outbound connection limit ({self.config.max_connections}) reached"
            )
        dial = _Dial()
        if node_id is not None:
            self._dialing[node_id] = dial
        else:
            self._dialing_by_address[address] = dial
        self._outbound_count += 1
        registered = False
        handshake_deadline = trio.current_time() + self.config.handshake_timeout
        try:
            with trio.move_on_at(min(deadline, handshake_deadline)):
                try:
                    link = await self._link_layer.connect(address, node_id, self.config)
                except LinkClosed as exc:
                    raise ConnectionFailed(exc.reason) from None
                connection = await self._register(link, outbound=True)
                registered = True
                self._by_address[address] = connection
                connection.dialled_address = address
                self._statistics.connections_outbound += 1
                dial.connection = connection
                return connection
            if deadline < handshake_deadline:
                raise RequestTimeout(f"no answer from {address[0]}:{address[1]} in time (dialling)")
            raise ConnectionFailed(f"no handshake with {address[0]}:{address[1]} in time")
        except TransportError as exc:
            dial.error = exc
            raise
        finally:
            if not registered:
                self._outbound_count -= 1
            if node_id is not None and self._dialing.get(node_id) is dial:
                del self._dialing[node_id]
            if self._dialing_by_address.get(address) is dial:
                del self._dialing_by_address[address]
            dial.done.set()

    # -- inbound ----------------------------------------------------------------------

    async def _accept_loop(self, listener: LinkListener) -> None:
        nursery = self._nursery
        assert nursery is not None
        try:
            while True:
                try:
                    pending = await listener.accept()
                except trio.ClosedResourceError:
                    return
                refusal = None
                if self._handshaking >= self.config.max_handshakes:
                    refusal = f"handshake limit ({self.config.max_handshakes}) reached"
                elif self._inbound_count >= self.config.max_connections:
                    refusal = f"connection limit ({self.config.max_connections}) reached"
                if refusal is not None:
                    self._statistics.connections_refused += 1
                    logger.warning("refusing %s:%s: %s", *pending.remote_address, refusal)
                    await pending.aclose()
                    continue
                self._handshaking += 1
                self._inbound_count += 1
                nursery.start_soon(self._handshake_inbound, pending)
        finally:
            with trio.CancelScope(shield=True):
                await listener.aclose()

    async def _handshake_inbound(self, pending: PendingLink) -> None:
        registered = False
        try:
            with trio.move_on_after(self.config.handshake_timeout) as scope:
                try:
                    link = await pending.handshake()
                except LinkClosed as exc:
                    self._statistics.handshakes_failed += 1
                    if exc.misbehaved:
                        self._statistics.peers_cut_off += 1
                        logger.warning("cutting off %s:%s: %s", *pending.remote_address, exc.reason)
                    else:  # it went away (a dialler that gave up): nothing to hold against it
                        logger.debug(
                            "handshake with %s:%s ended: %s", *pending.remote_address, exc.reason
                        )
                    return
            if scope.cancelled_caught:
                self._statistics.handshakes_failed += 1
                self._statistics.peers_cut_off += 1
                logger.warning(
                    "cutting off %s:%s: no handshake within %g s",
                    *pending.remote_address,
                    self.config.handshake_timeout,
                )
                await pending.aclose()
                return
            await self._register(link, outbound=False)
            registered = True
            self._statistics.connections_inbound += 1
        finally:
            self._handshaking -= 1
            if not registered:
                self._inbound_count -= 1

    # -- the pool ---------------------------------------------------------------------

    async def _register(self, link: Link, *, outbound: bool) -> Connection:
        nursery = self._nursery
        if nursery is None:
            # Stopped while the handshake ran: nobody will serve this link.
            with trio.CancelScope(shield=True):
                await link.aclose()
            raise ConnectionFailed("the transport stopped")
        connection = Connection(self, link, outbound=outbound)
        nursery.start_soon(connection.run)
        # One connection per peer identity serves requests; another one finishes what
        # it carries and retires, so that one identity cannot hold many of our slots.
        # Two of the same direction: the newer wins. One each way (both dialled at
        # once): both ends keep the one dialled by the lower NodeId, so they agree.
        peer_id = link.remote_node_id
        older = self._connections.get(peer_id)
        keep_new = True
        grace = 0.0
        if older is not None and older.is_open and older.outbound != outbound:
            dialer = self.node_id if outbound else peer_id
            keep_new = dialer == min(self.node_id, peer_id)
            grace = RETIRE_GRACE
        if keep_new:
            self._connections[peer_id] = connection
            loser = older
        else:
            loser = connection
        if loser is not None and loser.is_open:
            nursery.start_soon(loser.retire, grace)
        return connection

    def _forget(self, connection: Connection) -> None:
        if connection.outbound:
            self._outbound_count -= 1
        else:
            self._inbound_count -= 1
        if self._connections.get(connection.peer.node_id) is connection:
            del self._connections[connection.peer.node_id]
        address = connection.dialled_address
        if address is not None and self._by_address.get(address) is connection:
            del self._by_address[address]


@asynccontextmanager
async def open_transport(
    identity: Identity,
    link_layer: LinkLayer,
    *,
    listen_address: Address | None = None,
    config: TransportConfig | None = None,
    handlers: Mapping[type[Message], Handler] | None = None,
) -> AsyncIterator[Transport]:
    """Run a Transport for the duration of the block."""
    transport = Transport(
        identity, link_layer, listen_address=listen_address, config=config, handlers=handlers
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        try:
            yield transport
        finally:
            nursery.cancel_scope.cancel()
