"""Request/response RPC over links: the part of the transport both networks share.

`Transport` is one node's endpoint. It listens, dials peers by address and expected
NodeId and keeps one pooled connection per peer (node.transport.connection), which
multiplexes concurrent requests by request id and answers inbound requests through an
explicit table of handlers keyed by message class. The transport enforces the limits of
`TransportConfig` identically over TCP and the in-memory network: those on connections
here, those on frames and requests in each connection (see its table):

| event                                             | what happens                          |
|---------------------------------------------------|---------------------------------------|
| inbound connection while at `max_connections`     | closed before the handshake, logged   |
| (or, from a host none of whose contacts is in our |                                       |
| routing table, at `max_connections` less          |                                       |
| `reserved_connections`; the same for handshakes)  |                                       |
| inbound connection from a prefix (/24, /48) at    | closed before the handshake, logged   |
| its per-prefix limit (a known host's first four   |                                       |
| connections pass it)                              |                                       |
| handshake longer than `handshake_timeout`         | connection closed, logged             |

A host is known when it is a routing-table contact's (the node says) and we dialled
it ourselves and it completed the handshake: a peer's own request proves nothing.

Every cut-off is one log line at WARNING with the peer and the reason; the node goes on.
"""

from __future__ import annotations

import inspect
import logging
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import cast

import trio

from dht.routing import address_prefix
from node.errors import ConnectionFailed, LinkClosed, RequestTimeout, TransportError
from node.ratelog import RateLimitedLog
from node.transport.budget import ByteBudget, SendMeter
from node.transport.config import TransportConfig
from node.transport.connection import Connection
from node.transport.handler import AsyncHandler, Handler, InlineHandler, Peer
from node.transport.latency import LatencyHistogram
from node.transport.link import Address, Link, LinkLayer, LinkListener, PendingLink
from protocol.identity import Identity, NodeId
from protocol.messages import Message, Ping, Pong

__all__ = ["Transport", "TransportStatistics", "open_transport"]

logger = logging.getLogger(__name__)
# After a simultaneous open, the losing connection closes once idle this long.
RETIRE_GRACE = 5.0
# Hosts remembered as dialled and verified; and the inbound connections of one such
# host (a contact in our routing table) that count as known: the rest are anyone's.
MAX_VERIFIED_HOSTS = 4096
KNOWN_HOST_CONNECTIONS = 4


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
    requests_busy: int = 0
    connections_shed: int = 0
    request_timeouts: int = 0
    late_responses: int = 0
    cut_off_reasons: dict[str, int] = field(default_factory=dict)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    """Round trips of our answered requests, by message type."""


class _Dial:
    """A dial in progress, whose outcome every request waiting on it shares."""

    __slots__ = ("connection", "done", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.connection: Connection | None = None
        self.error: TransportError | None = None


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
        self._all: set[Connection] = set()  # every open connection, retiring ones too
        self._by_address: dict[Address, Connection] = {}  # outbound, by dialled address
        self._dialing: dict[NodeId, _Dial] = {}
        self._dialing_by_address: dict[Address, _Dial] = {}
        # Separate budgets, so that a flood of inbound handshakes or connections cannot
        # stop us from dialling out, nor the other way round.
        self._handshaking = 0
        self._inbound_count = 0
        # Inbound connections and handshakes per address prefix (the per-prefix limits).
        self._inbound_by_prefix: Counter[str] = Counter()
        self._handshaking_by_prefix: Counter[str] = Counter()
        self._outbound_count = 0
        # Requests being served, in all and per address prefix (node-wide limits).
        self._inflight = 0
        self._inflight_by_prefix: Counter[str] = Counter()
        self._statistics = TransportStatistics()
        # What peers can make this node hold in memory (node/transport/budget.py).
        self.receive_budget = ByteBudget(
            self.config.max_receive_buffer,
            self.config.max_receive_buffer_per_prefix,
            kept=self.config.max_receive_buffer // 4,
        )
        self.answer_backlog = 0  # bytes of answers made and waiting for room in a link
        self.send_meter = SendMeter()  # bytes queued in every link
        # What peers cause (refusals, cut-offs): a line a minute of each kind.
        self.peer_log = RateLimitedLog(logger)
        # Whether a host is that of a contact in our routing table (set by the node):
        # such hosts may use the reserved slots and pass the per-prefix limits.
        self.known_host: Callable[[str], bool] = _nobody
        # Hosts we dialled ourselves and that completed the handshake (most recent
        # last): only those count as known, whatever a peer's own request claimed.
        self._verified_hosts: OrderedDict[str, None] = OrderedDict()
        self._inbound_by_host: Counter[str] = Counter()
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

    async def shed_if_over(self) -> None:
        """Past `max_send_queue` queued in all, cut off the connection with the most
        queued: a peer that does not read what it asked for is the one to go."""
        if self.send_meter.total <= self.config.max_send_queue:
            return
        largest = max(self._all, key=lambda c: c.link.queued_bytes, default=None)
        if largest is not None and largest.link.queued_bytes > 0:
            self._statistics.connections_shed += 1
            await largest.cut_off(
                f"{largest.link.queued_bytes} bytes queued unread while the node's send "
                "queue is full"
            )

    def _inflight_refusal(self, prefix: str) -> str | None:
        """Why a request from `prefix` is answered BUSY instead of served, or None."""
        config = self.config
        if self._inflight >= config.max_inflight:
            self._statistics.requests_busy += 1
            return f"serving {self._inflight} requests already"
        limit = config.max_inflight_per_prefix
        if limit is not None and self._inflight_by_prefix[prefix] >= limit:
            self._statistics.requests_busy += 1
            return f"serving {limit} requests of your network prefix already"
        return None

    def _inflight_started(self, prefix: str) -> None:
        self._inflight += 1
        self._inflight_by_prefix[prefix] += 1

    def _inflight_ended(self, prefix: str) -> None:
        self._inflight -= 1
        _decrement(self._inflight_by_prefix, prefix)

    def answer_refusal(self, peer: Peer) -> str | None:
        """Why a request of `peer`'s with a large answer (a chunk, an audit) should be
        refused BUSY now, or None: answers made and not yet sent (waiting for room, or
        queued in a link), to this peer, to its address prefix and in all, against
        their budgets (node/transport/budget.py). Every open connection counts, those
        replaced and retiring included."""
        config = self.config
        prefix = address_prefix(str(peer.address[0]))
        mine = in_prefix = total = 0
        for connection in self._all:
            backlog = connection.answer_backlog + connection.link.queued_bytes
            total += backlog
            if connection.request_prefix == prefix:
                in_prefix += backlog
                if connection.peer.node_id == peer.node_id:
                    mine += backlog
        if mine >= config.max_answer_backlog_per_peer:
            return f"{mine} bytes of answers to you are not read yet"
        limit = config.max_answer_backlog_per_prefix
        if limit is not None and in_prefix >= limit:
            return "too many answers to your network prefix are not read yet"
        if total >= config.max_answer_backlog:
            return "too many answers are waiting to be sent; try another holder"
        return None

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
                self._note_verified(address[0])
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
                host = str(pending.remote_address[0])
                prefix = address_prefix(host)
                known = host in self._verified_hosts and self.known_host(host)
                refusal = self._inbound_refusal(prefix, known=known, host=host)
                if refusal is not None:
                    self._statistics.connections_refused += 1
                    self.peer_log.warning(
                        "refusing", "refusing %s:%s: %s", *pending.remote_address, refusal
                    )
                    await pending.aclose()
                    continue
                self._handshaking += 1
                self._inbound_count += 1
                self._handshaking_by_prefix[prefix] += 1
                self._inbound_by_prefix[prefix] += 1
                self._inbound_by_host[host] += 1
                nursery.start_soon(self._handshake_inbound, pending, prefix, host)
        finally:
            with trio.CancelScope(shield=True):
                await listener.aclose()

    def _note_verified(self, host: str) -> None:
        self._verified_hosts[host] = None
        self._verified_hosts.move_to_end(host)
        while len(self._verified_hosts) > MAX_VERIFIED_HOSTS:
            self._verified_hosts.popitem(last=False)

    def _inbound_refusal(self, prefix: str, *, known: bool = False, host: str = "") -> str | None:
        """Why a new inbound connection from `prefix` is refused, or None: the
        node-wide limits on handshakes and connections (less the reserved slots,
        unless its host is `known`), then the same per prefix (unless `known`). A
        known host's first few connections count as known, the rest as anyone's."""
        config = self.config
        if known and self._inbound_by_host[host] >= KNOWN_HOST_CONNECTIONS:
            known = False  # past its first few, a known host's connections are anyone's
        reserved_handshakes = 0 if known else config.reserved_handshakes
        reserved_connections = 0 if known else config.reserved_connections
        limits = (
            (
                "handshake limit",
                self._handshaking,
                config.max_handshakes - reserved_handshakes,
            ),
            (
                "connection limit",
                self._inbound_count,
                config.max_connections - reserved_connections,
            ),
            (
                f"handshake limit of its prefix {prefix}",
                self._handshaking_by_prefix[prefix],
                None if known else config.max_handshakes_per_prefix,
            ),
            (
                f"connection limit of its prefix {prefix}",
                self._inbound_by_prefix[prefix],
                None if known else config.max_connections_per_prefix,
            ),
        )
        for what, count, limit in limits:
            if limit is not None and count >= limit:
                return f"{what} ({limit}) reached"
        return None

    async def _handshake_inbound(self, pending: PendingLink, prefix: str, host: str) -> None:
        registered = False
        try:
            with trio.move_on_after(self.config.handshake_timeout) as scope:
                try:
                    link = await pending.handshake()
                except LinkClosed as exc:
                    self._statistics.handshakes_failed += 1
                    if exc.misbehaved:
                        self._statistics.peers_cut_off += 1
                        self.peer_log.warning(
                            "handshake",
                            "cutting off %s:%s: %s",
                            *pending.remote_address,
                            exc.reason,
                        )
                    else:  # it went away (a dialler that gave up): nothing to hold against it
                        logger.debug(
                            "handshake with %s:%s ended: %s", *pending.remote_address, exc.reason
                        )
                    return
            if scope.cancelled_caught:
                self._statistics.handshakes_failed += 1
                self._statistics.peers_cut_off += 1
                self.peer_log.warning(
                    "handshake",
                    "cutting off %s:%s: no handshake within %g s",
                    *pending.remote_address,
                    self.config.handshake_timeout,
                )
                await pending.aclose()
                return
            await self._register(link, outbound=False, prefix=prefix)
            registered = True
            self._statistics.connections_inbound += 1
        finally:
            self._handshaking -= 1
            _decrement(self._handshaking_by_prefix, prefix)
            if not registered:
                self._inbound_count -= 1
                _decrement(self._inbound_by_prefix, prefix)
                _decrement(self._inbound_by_host, host)

    # -- the pool ---------------------------------------------------------------------

    async def _register(self, link: Link, *, outbound: bool, prefix: str = "") -> Connection:
        nursery = self._nursery
        if nursery is None:
            # Stopped while the handshake ran: nobody will serve this link.
            with trio.CancelScope(shield=True):
                await link.aclose()
            raise ConnectionFailed("the transport stopped")
        connection = Connection(self, link, outbound=outbound)
        connection.prefix = prefix
        host = str(link.remote_address[0])
        # A contact we dialled, or a known one dialling us, may use the kept share.
        known = outbound or (host in self._verified_hosts and self.known_host(host))
        link.use_receive_budget(self.receive_budget, address_prefix(host), known=known)
        link.use_send_meter(self.send_meter)
        self._all.add(connection)
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
        self._all.discard(connection)
        if connection.outbound:
            self._outbound_count -= 1
        else:
            self._inbound_count -= 1
            _decrement(self._inbound_by_prefix, connection.prefix)
            _decrement(self._inbound_by_host, str(connection.peer.address[0]))
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


def _nobody(host: str) -> bool:
    return False


def _decrement(counts: Counter[str], key: str) -> None:
    counts[key] -= 1
    if counts[key] <= 0:
        del counts[key]
