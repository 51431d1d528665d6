"""One connection: an authenticated link to one peer and the requests multiplexed on it.

A `Connection` belongs to a `Transport` (node.transport.rpc), which opens it, pools it
and forgets it once it closes. It numbers our requests by request id and matches each
answer to its request, answers the peer's requests through the transport's table of
handlers (node.transport.handler), and enforces the per-connection limits of
`TransportConfig`:

| event                                             | what happens                          |
|---------------------------------------------------|---------------------------------------|
| frame that does not decode as an envelope         | connection closed, logged             |
| request whose body is malformed                   | answered ERROR BAD_REQUEST            |
| request of a type we have no handler for          | answered ERROR UNSUPPORTED            |
| more than `max_inflight_per_peer` requests at once| connection closed, logged             |
| `max_inflight` requests of all peers, or          | answered ERROR BUSY                   |
| `max_inflight_per_prefix` of its prefix, served   |                                       |
| handler raises RequestRejected / anything else    | ERROR with its code / ERROR INTERNAL  |
| our request unanswered after its timeout          | RequestTimeout; after                 |
|                                                   | `max_consecutive_timeouts` in a row   |
|                                                   | the connection is closed, logged      |
| nothing in flight for `idle_timeout`              | connection closed                     |

Every cut-off is one log line at WARNING with the peer and the reason; the node goes on.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import TYPE_CHECKING

import trio

from dht.routing import address_prefix
from node.errors import (
    ConnectionClosed,
    LinkClosed,
    MessageTooLarge,
    NoRoom,
    RemoteError,
    RequestRejected,
    RequestTimeout,
    TransportError,
)
from node.transport.handler import AsyncHandler, InlineHandler, Peer
from node.transport.link import Address, Link
from protocol.errors import LocalProtocolError, RemoteProtocolError
from protocol.messages import (
    Envelope,
    Error,
    ErrorCode,
    Kind,
    MalformedMessage,
    Message,
    UnknownMessageType,
    decode_envelope,
    encode_envelope,
)

if TYPE_CHECKING:
    from node.transport.rpc import Transport

__all__ = ["Connection"]

logger = logging.getLogger(__name__)

REQUEST_ID_LIMIT = 1 << 32
# How often a replaced connection checks whether its last request has finished.
RETIRE_POLL = 0.1
# Error.message holds at most 1024 UTF-8 bytes (protocol.messages); we send less.
ERROR_TEXT_BYTES = 1000


def _error_text(text: str) -> str:
    """`text` cut to ERROR_TEXT_BYTES of UTF-8, on a character boundary."""
    return text.encode()[:ERROR_TEXT_BYTES].decode(errors="ignore")


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


class Connection:
    """One authenticated link and the requests multiplexed on it."""

    def __init__(self, transport: Transport, link: Link, *, outbound: bool) -> None:
        self.prefix = ""
        """The address prefix an inbound connection counts against (rpc.py's limits)."""
        self.transport = transport
        self.link = link
        self.outbound = outbound
        # The address this connection was dialled at (its key in Transport._by_address).
        self.dialled_address: Address | None = None
        self.peer = Peer(link.remote_node_id, link.remote_address)
        # The address prefix its requests count against (node-wide in-flight limits).
        self.request_prefix = address_prefix(str(link.remote_address[0]))
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
        # Bytes of our answers waiting for room in the link (the answer budget's part
        # not yet in the link's queue; node/transport/budget.py).
        self.answer_backlog = 0
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
        started = trio.current_time()
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
        self.transport._statistics.latency.observe(
            type(message).__name__, trio.current_time() - started
        )
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

    async def _send(
        self, envelope: Envelope, *, deadline: float = math.inf, answer: bool = False
    ) -> None:
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
        # An answer counts against the answer budget until the link has taken it.
        waiting = len(frame) if answer else 0
        self.answer_backlog += waiting
        self.transport.answer_backlog += waiting
        try:
            await self.link.send_frame(frame, deadline=deadline)
        except LinkClosed as exc:
            # The link is gone: so is this connection (its reader may be parked where
            # it would not notice), so that the next request dials afresh.
            if self._close_reason is None:
                self._close_reason = exc.reason
            self._cancel_scope.cancel()
            raise ConnectionClosed(exc.reason) from None
        except NoRoom:
            raise RequestTimeout(
                f"{self.peer.node_id.short()} did not read what we queued for it in time"
            ) from None
        finally:
            self.answer_backlog -= waiting
            self.transport.answer_backlog -= waiting

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
                                await self.cut_off(reason)
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
                await self.cut_off(f"malformed frame: {exc}")
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
                    await self.cut_off(
                        f"more than {self.config.max_inflight_per_peer} requests in flight"
                    )
                    return
                elif (busy := self.transport._inflight_refusal(self.request_prefix)) is not None:
                    await self._reply(envelope.request_id, Error(ErrorCode.BUSY, busy))
                else:
                    self._inbound_in_flight += 1
                    self.transport._inflight_started(self.request_prefix)
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
        # The counts go down however this ends, cancellation included (the connection
        # closed while the handler ran): a count that leaked would refuse everyone BUSY.
        try:
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
            # Counted until the link has taken the answer: while the peer does not read,
            # its answers hold their places and it cannot pile up more requests. Handing
            # an answer over does not yield, so an answered request stops counting
            # before the read loop can run again.
            await self._reply(request_id, response)
        finally:
            self._inbound_in_flight -= 1
            self.transport._inflight_ended(self.request_prefix)

    async def _reply(self, request_id: int, response: Message) -> None:
        try:
            await self._send(Envelope(Kind.RESPONSE, request_id, response), answer=True)
        except ConnectionClosed:
            return
        except TransportError as exc:
            # Our own answer could not be encoded or is over the frame limit.
            logger.error("cannot send the answer to %s: %s", self.peer.node_id.short(), exc)
            fallback = Error(ErrorCode.INTERNAL, "the answer could not be sent")
            with contextlib.suppress(ConnectionClosed):
                await self._send(Envelope(Kind.RESPONSE, request_id, fallback))
            return
        await self.transport.shed_if_over()

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

    async def cut_off(self, reason: str) -> None:
        """Close the connection for the peer's misbehaviour, saying so in the log."""
        statistics = self.transport._statistics
        statistics.peers_cut_off += 1
        key = reason.split(":")[0]
        statistics.cut_off_reasons[key] = statistics.cut_off_reasons.get(key, 0) + 1
        self.transport.peer_log.warning(
            "cut off",
            "cutting off %s at %s:%s: %s",
            self.peer.node_id.short(),
            *self.peer.address,
            reason,
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
