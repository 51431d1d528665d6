"""An in-memory network for tests and simulations: seeded latency, loss and partitions.

Every node gets a `MemoryLinkLayer` on one shared `MemoryNetwork`. Links carry whole
frames in memory (trio memory channels; a `_Pipe` on secure links); nothing touches a
socket, so thousands of nodes fit in one process and run under trio's MockClock.

The model, all of it reproducible from the seed:
- latency: each unordered pair of hosts has a fixed one-way latency drawn uniformly in
  [min_latency, max_latency] from a hash of (seed, pair), so adding a node does not
  change the latency of the others. Frames on one link keep their order.
- loss: each frame on an established link is dropped with probability `loss` (the
  network's seeded RNG). Handshake messages are never lost, as TCP resends them.
- partitions: hosts in different groups cannot reach each other. Frames between them
  vanish and dials hang (the caller's handshake timeout ends them), as on a real
  network that has gone silent; `heal()` ends the partition.

Two ways to authenticate, chosen per network (`MemoryNetwork(secure=...)`):
- `secure=False` (the default, for tests): by construction. The network knows which
  identity listens where, so the handshake costs one round trip of virtual time and no
  cryptography. Dialling an address whose node is not the expected one fails like the
  TCP handshake does.
- `secure=True` (for simulations that must run the whole protocol stack): the channel
  of node.transport.tcp. Both ends run the real `SecureHandshake` (Noise XX and the
  identity payload, docs/PROTOCOL.md#secure-channel), one handshake message per
  frame, each delivered with the pair's latency: the dialler is done after one round
  trip (it sends message 3 and goes on), as without `secure`, and the listener after
  one and a half. A wrong node fails the dial with WrongPeerIdentity as a misbehaved
  LinkClosed, as tcp.py's does. Each frame then travels as Noise transport messages
  of at most 65535 bytes (Noise rev 34 §3): one for most frames, several for a large
  one, as tcp.py splits its records; frames here are whole messages, so no length
  header is needed. A message that fails to decrypt closes the link as misbehaved. Loss and
  partitions drop a frame before it is encrypted, and a sender waits for room in the
  link before it encrypts, so a frame that never goes spends no nonce and the two ends
  stay in step (Noise rev 34 §5.1). Noise keys come from each link layer's
  `random_bytes` (pass a seeded one for byte-exact replays). The channel draws nothing
  from the network's RNG, so one seed loses the same frames either way.

`MemoryNetwork(intercept=...)` is a test hook: it sees and may replace every message
as it leaves its sender (frames, or handshake messages and Noise records when secure).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import deque
from collections.abc import Callable, Iterable

import nacl.utils
import trio

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
from protocol.errors import ProtocolError
from protocol.handshake import SecureHandshake
from protocol.identity import Identity, NodeId, RandomBytes
from protocol.noise import MAX_PLAINTEXT_SIZE

__all__ = ["Intercept", "MemoryLinkLayer", "MemoryNetwork"]

# Frames one direction of a link may hold before the sender waits.
LINK_BUFFER_FRAMES = 256
# Inbound connections waiting for accept() before new dials are refused.
ACCEPT_BACKLOG = 128

_Frame = tuple[float, bytes]  # (virtual time at which it arrives, frame)
# On a secure link: one Noise message (a handshake message, or a frame of at most
# MAX_PLAINTEXT_SIZE bytes), or the list of them that a larger frame takes.
_Records = bytes | list[bytes]
_SecureFrame = tuple[float, _Records]

# The test hook: intercept(source host, destination host, message) -> what arrives.
Intercept = Callable[[str, str, bytes], bytes]


class MemoryNetwork:
    """The shared medium. Create one per test or simulation."""

    def __init__(
        self,
        *,
        seed: int = 0,
        min_latency: float = 0.0,
        max_latency: float = 0.0,
        loss: float = 0.0,
        secure: bool = False,
        intercept: Intercept | None = None,
    ) -> None:
        """`secure` runs the real secure channel on every link (see the module
        docstring); `intercept` is the test hook that sees every message sent."""
        if not 0 <= min_latency <= max_latency or not math.isfinite(max_latency):
            raise ValueError("need 0 <= min_latency <= max_latency")
        if not 0.0 <= loss < 1.0:
            raise ValueError("loss is a probability in [0, 1)")
        self.seed = seed
        self.min_latency = min_latency
        self.max_latency = max_latency
        self.loss = loss
        self.secure = secure
        self._intercept = intercept
        self._rng = random.Random(seed)
        self._listeners: dict[Address, MemoryListener] = {}
        self._groups: dict[str, int] | None = None
        self._ports: dict[str, int] = {}
        self.frames_dropped = 0

    def link_layer(
        self, identity: Identity, host: str, *, random_bytes: RandomBytes = nacl.utils.random
    ) -> MemoryLinkLayer:
        """The link layer of the node with `identity`, reachable at host `host`.
        `random_bytes` draws its Noise keys on a secure network (unused otherwise)."""
        return MemoryLinkLayer(self, identity, host, random_bytes=random_bytes)

    def latency(self, host_a: str, host_b: str) -> float:
        """The one-way latency between two hosts (fixed per pair for this seed)."""
        if self.max_latency == self.min_latency:
            return self.min_latency
        first, second = sorted((host_a, host_b))
        digest = hashlib.blake2b(
            f"{self.seed}\0{first}\0{second}".encode(errors="surrogatepass"), digest_size=8
        ).digest()
        fraction = int.from_bytes(digest, "big") / 2**64
        return self.min_latency + fraction * (self.max_latency - self.min_latency)

    def partition(self, *groups: Iterable[str]) -> None:
        """Split the hosts into groups that cannot reach each other. Hosts named in no
        group form one more group together."""
        assignment: dict[str, int] = {}
        for number, group in enumerate(groups, start=1):
            for host in group:
                assignment[host] = number
        self._groups = assignment

    def heal(self) -> None:
        """End any partition."""
        self._groups = None

    def can_reach(self, host_a: str, host_b: str) -> bool:
        if self._groups is None:
            return True
        return self._groups.get(host_a, 0) == self._groups.get(host_b, 0)

    def _lose_frame(self) -> bool:
        if self.loss and self._rng.random() < self.loss:
            self.frames_dropped += 1
            return True
        return False

    def _bind(self, address: Address, listener: MemoryListener) -> Address:
        host, port = address
        if port == 0:
            port = self._ports.get(host, 1023) + 1
            while (host, port) in self._listeners:
                port += 1
            self._ports[host] = port
        if (host, port) in self._listeners:
            raise OSError(f"address {host}:{port} is in use")
        self._listeners[(host, port)] = listener
        return (host, port)

    def _unbind(self, address: Address) -> None:
        self._listeners.pop(address, None)


class MemoryLink(Link):
    """One end of an in-memory link."""

    def __init__(
        self,
        network: MemoryNetwork,
        local_host: str,
        remote_node_id: NodeId,
        remote_address: Address,
        outgoing: trio.MemorySendChannel[_Frame],
        incoming: trio.MemoryReceiveChannel[_Frame],
        config: TransportConfig,
    ) -> None:
        self.remote_node_id = remote_node_id
        self.remote_address = remote_address
        self._network = network
        self._local_host = local_host
        self._latency = network.latency(local_host, remote_address[0])
        self._outgoing = outgoing
        self._incoming = incoming
        self._max_frame_size = config.max_frame_size
        self._send_timeout = config.send_timeout
        self._last_arrival = -math.inf
        self._close_reason: str | None = None

    async def send_frame(self, frame: bytes, *, deadline: float = math.inf) -> None:
        if self._close_reason is not None:
            raise LinkClosed(self._close_reason)
        if len(frame) > self._max_frame_size:
            raise LinkClosed(f"frame of {len(frame)} bytes is over the limit")
        if not self._network.can_reach(self._local_host, self.remote_address[0]):
            await trio.lowlevel.checkpoint()
            return
        if self._network._lose_frame():
            await trio.lowlevel.checkpoint()
            return
        if self._network._intercept is not None:
            frame = self._network._intercept(self._local_host, self.remote_address[0], frame)
        arrival = max(trio.current_time() + self._latency, self._last_arrival)
        self._last_arrival = arrival
        cut_off_at = trio.current_time() + self._send_timeout
        try:
            with trio.move_on_at(min(deadline, cut_off_at)):
                await self._outgoing.send((arrival, frame))
                return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise LinkClosed(self._close_reason or "peer closed the connection") from None
        if deadline < cut_off_at:
            raise NoRoom("the link stayed full")
        # As over TCP: a peer that does not read for the send timeout is cut off.
        reason = f"peer did not read for {self._send_timeout:g} s"
        await self.aclose()
        raise LinkClosed(reason, misbehaved=True)

    async def receive_frame(self) -> bytes:
        try:
            arrival, frame = await self._incoming.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise LinkClosed(self._close_reason or "peer closed the connection") from None
        await trio.sleep_until(arrival)
        return frame

    async def aclose(self) -> None:
        if self._close_reason is None:
            self._close_reason = "closed"
        self._outgoing.close()
        self._incoming.close()
        await trio.lowlevel.checkpoint()


class _Pipe:
    """One direction of a secure link: the messages on their way or waiting to be read,
    in sending order with their arrival times, and who waits on them.

    Not a trio channel, for two reasons. A sender must know there is room before it
    encrypts (a nonce spent on a frame that then waits, and is given up, would put the
    two ends out of step), and a channel cannot say so without taking the frame. And a
    reader waiting for a message is woken once, at its arrival: the sender sets the
    deadline of the reader's wait, where a channel would wake it at sending time only
    for it to sleep again until arrival. One reader per pipe (the link's read loop).
    """

    __slots__ = ("messages", "reader", "reader_gone", "room", "writer_gone")

    def __init__(self) -> None:
        self.messages: deque[_SecureFrame] = deque()
        self.reader: trio.CancelScope | None = None  # the reader's wait for a message
        self.reader_gone = False
        self.writer_gone = False
        self.room = trio.lowlevel.ParkingLot()  # senders waiting for room


class SecureMemoryLink(Link):
    """One end of an in-memory link that runs the Noise secure channel.

    It carries the handshake messages first (`_send_handshake_message`,
    `_receive_handshake_message`), then, once `_secure()` has given it the handshake's
    transport state, frames encrypted as Noise transport messages.
    """

    def __init__(
        self,
        network: MemoryNetwork,
        local_host: str,
        remote_address: Address,
        sending: _Pipe,
        receiving: _Pipe,
        config: TransportConfig,
    ) -> None:
        # remote_node_id is set by _secure(): the handshake, not the network, says who.
        self.remote_address = remote_address
        self._network = network
        self._local_host = local_host
        self._remote_host = remote_address[0]
        # Fixed per pair, so arrival times grow in sending order.
        self._latency = network.latency(local_host, remote_address[0])
        self._sending = sending
        self._receiving = receiving
        self._max_frame_size = config.max_frame_size
        self._send_timeout = config.send_timeout
        self._close_reason: str | None = None
        self._misbehaved = False
        self._encrypt: Callable[[bytes | memoryview], bytes] = _not_secured
        self._decrypt: Callable[[bytes], bytes] = _not_secured

    def _secure(self, handshake: SecureHandshake) -> None:
        """Switch from handshake messages to transport messages (the handshake is done)."""
        self.remote_node_id = handshake.remote_node_id
        transport = handshake.transport()  # libsodium called directly (protocol.noise)

        def encrypt(plaintext: bytes | memoryview) -> bytes:
            # Immutable on the (simulated) wire, which tells one record from a list.
            return bytes(transport.encrypt(plaintext))

        self._encrypt = encrypt
        self._decrypt = transport.decrypt

    def _closed(self) -> LinkClosed:
        return LinkClosed(
            self._close_reason or "peer closed the connection", misbehaved=self._misbehaved
        )

    # -- the wire -----------------------------------------------------------------------

    def _transmit(self, records: _Records) -> None:
        """Hand one message to the network now; it arrives after the pair's latency."""
        sending = self._sending
        if self._close_reason is not None or sending.reader_gone:
            raise self._closed()
        intercept = self._network._intercept
        if intercept is not None:
            source, destination = self._local_host, self._remote_host
            if isinstance(records, bytes):
                records = intercept(source, destination, records)
            else:
                records = [intercept(source, destination, record) for record in records]
        arrival = trio.current_time() + self._latency
        messages = sending.messages
        messages.append((arrival, records))
        if sending.reader is not None and len(messages) == 1:
            sending.reader.deadline = arrival  # the reader wakes when it arrives

    async def _take(self) -> _Records:
        """The next message in, at its arrival time."""
        receiving = self._receiving
        messages = receiving.messages
        waited = False
        while True:
            if self._close_reason is not None:
                raise self._closed()
            if messages:
                arrival = messages[0][0]
                if arrival > trio.current_time():
                    await trio.sleep_until(arrival)
                elif not waited:
                    await trio.lowlevel.checkpoint()
                else:
                    break
            elif receiving.writer_gone:
                raise self._closed()
            else:
                # Until the deadline the sender sets (the message's arrival), or until a
                # close cancels the wait.
                with trio.CancelScope() as waiting:
                    receiving.reader = waiting
                    try:
                        await trio.sleep_forever()
                    finally:
                        receiving.reader = None
            waited = True
        _, records = messages.popleft()
        if receiving.room:
            receiving.room.unpark()
        return records

    # -- the handshake ------------------------------------------------------------------

    def _send_handshake_message(self, message: bytes) -> None:
        # Never lost (TCP resends it); gone across a partition, where the dial then hangs.
        if self._network.can_reach(self._local_host, self._remote_host):
            self._transmit(message)

    async def _receive_handshake_message(self) -> bytes:
        message = await self._take()
        assert isinstance(message, bytes)  # sent whole by _send_handshake_message
        return message

    # -- frames -------------------------------------------------------------------------

    async def send_frame(self, frame: bytes, *, deadline: float = math.inf) -> None:
        if self._close_reason is not None:
            raise LinkClosed(self._close_reason, misbehaved=self._misbehaved)
        if len(frame) > self._max_frame_size:
            raise LinkClosed(f"frame of {len(frame)} bytes is over the limit")
        network = self._network
        if not network.can_reach(self._local_host, self._remote_host) or network._lose_frame():
            # Dropped before it is encrypted: it spends no nonce.
            await trio.lowlevel.checkpoint()
            return
        await trio.lowlevel.checkpoint()
        if len(self._sending.messages) >= LINK_BUFFER_FRAMES:
            await self._wait_for_room(deadline)
        # No checkpoint from here to the pipe: the nonce goes with the frame.
        if len(frame) <= MAX_PLAINTEXT_SIZE:
            self._transmit(self._encrypt(frame))
            return
        encrypt = self._encrypt
        with memoryview(frame) as view:
            self._transmit(
                [
                    encrypt(view[start : start + MAX_PLAINTEXT_SIZE])
                    for start in range(0, len(frame), MAX_PLAINTEXT_SIZE)
                ]
            )

    async def _wait_for_room(self, deadline: float) -> None:
        """Wait until the link holds fewer than LINK_BUFFER_FRAMES messages, or is closed
        (which the send then reports)."""
        sending = self._sending
        cut_off_at = trio.current_time() + self._send_timeout
        with trio.move_on_at(min(deadline, cut_off_at)):
            while (
                len(sending.messages) >= LINK_BUFFER_FRAMES
                and not sending.reader_gone
                and self._close_reason is None
            ):
                await sending.room.park()
            return
        if deadline < cut_off_at:
            raise NoRoom("the link stayed full")
        # As over TCP: a peer that does not read for the send timeout is cut off.
        reason = f"peer did not read for {self._send_timeout:g} s"
        self._close(reason, misbehaved=True)
        raise LinkClosed(reason, misbehaved=True)

    async def receive_frame(self) -> bytes:
        records = await self._take()
        try:
            if isinstance(records, bytes):
                return self._decrypt(records)
            return b"".join([self._decrypt(record) for record in records])
        except ProtocolError as exc:
            reason = f"bad transport message: {exc}"
            self._close(reason, misbehaved=True)
            raise LinkClosed(reason, misbehaved=True) from None

    def _close(self, reason: str, *, misbehaved: bool = False) -> None:
        if self._close_reason is None:
            self._close_reason = reason
            self._misbehaved = misbehaved
        receiving, sending = self._receiving, self._sending
        # What was on its way to us is dropped; the peer's sends fail from now on.
        receiving.reader_gone = True
        receiving.messages.clear()
        receiving.room.unpark_all()
        # What we sent still arrives; then the peer's reads end.
        sending.writer_gone = True
        sending.room.unpark_all()
        for pipe in (receiving, sending):
            if pipe.reader is not None:
                pipe.reader.cancel()

    async def aclose(self) -> None:
        self._close("closed")
        await trio.lowlevel.checkpoint()


def _not_secured(message: bytes | memoryview) -> bytes:
    raise AssertionError("a secure memory link carries frames only after its handshake")


async def _run_handshake(link: SecureMemoryLink, handshake: SecureHandshake) -> None:
    """Answer the peer's handshake messages until the handshake is complete (the
    initiator has sent message 1 already), then secure the link."""
    try:
        while not handshake.is_complete:
            reply = handshake.receive(await link._receive_handshake_message())
            if reply is not None:
                link._send_handshake_message(reply)
    except ProtocolError as exc:
        raise LinkClosed(f"handshake failed: {exc}", misbehaved=True) from None
    link._secure(handshake)


class MemoryPendingLink(PendingLink):
    """The listener's end before it accepts; the dialer waits for the verdict, as a TCP
    dialer waits for the handshake the listener may refuse."""

    def __init__(self, link: MemoryLink) -> None:
        self.remote_address = link.remote_address
        self._link = link
        self.accepted = False
        self.decided = trio.Event()

    async def handshake(self) -> Link:
        # The dialer spends the handshake's round trip; the responder has nothing to do.
        self.accepted = True
        self.decided.set()
        await trio.lowlevel.checkpoint()
        return self._link

    async def aclose(self) -> None:
        self.decided.set()
        await self._link.aclose()


class SecureMemoryPendingLink(PendingLink):
    """The listener's end of a secure link: its message 1 is on the way or there."""

    def __init__(self, link: SecureMemoryLink, layer: MemoryLinkLayer) -> None:
        self.remote_address = link.remote_address
        self._link = link
        self._layer = layer

    async def handshake(self) -> Link:
        handshake = self._layer._new_handshake(initiator=False, expected_node_id=None)
        try:
            await _run_handshake(self._link, handshake)
        except BaseException:
            self._link._close("handshake abandoned")
            raise
        return self._link

    async def aclose(self) -> None:
        await self._link.aclose()


class MemoryListener(LinkListener):
    def __init__(self, layer: MemoryLinkLayer, address: Address, config: TransportConfig) -> None:
        self._layer = layer
        self.config = config
        self.address = layer.network._bind(address, self)
        self._send, self._receive = trio.open_memory_channel[PendingLink](ACCEPT_BACKLOG)

    @property
    def node_id(self) -> NodeId:
        return self._layer.identity.node_id

    def _offer(self, pending: PendingLink) -> bool:
        try:
            self._send.send_nowait(pending)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            return False
        return True

    async def accept(self) -> PendingLink:
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise trio.ClosedResourceError("listener is closed") from None

    async def aclose(self) -> None:
        self._layer.network._unbind(self.address)
        self._send.close()
        self._receive.close()
        await trio.lowlevel.checkpoint()


class MemoryLinkLayer(LinkLayer):
    """A node's attachment to a `MemoryNetwork`."""

    def __init__(
        self,
        network: MemoryNetwork,
        identity: Identity,
        host: str,
        *,
        random_bytes: RandomBytes = nacl.utils.random,
    ) -> None:
        self.network = network
        self.identity = identity
        self.host = host
        self._random_bytes = random_bytes

    def _new_handshake(
        self, *, initiator: bool, expected_node_id: NodeId | None
    ) -> SecureHandshake:
        return SecureHandshake.fresh(
            self.identity,
            self._random_bytes,
            initiator=initiator,
            expected_node_id=expected_node_id,
        )

    async def open_listener(self, address: Address, config: TransportConfig) -> LinkListener:
        host, port = address
        if host != self.host:
            raise OSError(f"cannot bind {host}: this node's host is {self.host}")
        return MemoryListener(self, (host, port), config)

    async def connect(
        self, address: Address, expected_node_id: NodeId | None, config: TransportConfig
    ) -> Link:
        network = self.network
        remote_host = address[0]
        if not network.can_reach(self.host, remote_host):
            await trio.sleep_forever()  # silence, like a partitioned real network
        if network.secure:
            return await self._connect_secure(address, expected_node_id, config)
        latency = network.latency(self.host, remote_host)
        await trio.sleep(latency)  # our first handshake message reaches the listener
        listener = network._listeners.get(address)
        if listener is None:
            raise LinkClosed(f"connection refused by {address[0]}:{address[1]}")
        if expected_node_id is not None and listener.node_id != expected_node_id:
            await trio.sleep(latency)  # its answer shows who it is
            raise LinkClosed(
                f"{address[0]}:{address[1]} is {listener.node_id.short()}, "
                f"not the expected {expected_node_id.short()}"
            )
        to_remote, from_local = trio.open_memory_channel[_Frame](LINK_BUFFER_FRAMES)
        to_local, from_remote = trio.open_memory_channel[_Frame](LINK_BUFFER_FRAMES)
        local_address = (self.host, 0)
        ours = MemoryLink(
            network,
            self.host,
            listener.node_id,
            address,
            to_remote,
            from_remote,
            config,
        )
        theirs = MemoryLink(
            network,
            remote_host,
            self.identity.node_id,
            local_address,
            to_local,
            from_local,
            listener.config,
        )
        pending = MemoryPendingLink(theirs)
        if not listener._offer(pending):
            raise LinkClosed(f"{address[0]}:{address[1]} refused the connection (backlog full)")
        try:
            await pending.decided.wait()
            if not pending.accepted:
                raise LinkClosed(
                    f"{address[0]}:{address[1]} closed the connection in the handshake"
                )
            await trio.sleep(latency)  # the rest of the handshake
        except BaseException:
            # Given up (or refused): the listener's end must not stay half open.
            with trio.CancelScope(shield=True):
                await ours.aclose()
                await theirs.aclose()
            raise
        return ours

    async def _connect_secure(
        self, address: Address, expected_node_id: NodeId | None, config: TransportConfig
    ) -> Link:
        network = self.network
        handshake = self._new_handshake(initiator=True, expected_node_id=expected_node_id)
        outbound, inbound = _Pipe(), _Pipe()
        ours = SecureMemoryLink(network, self.host, address, outbound, inbound, config)
        try:
            ours._send_handshake_message(handshake.start())
            await trio.sleep(ours._latency)  # message 1 reaches the listener
            listener = network._listeners.get(address)
            if listener is None:
                raise LinkClosed(f"connection refused by {address[0]}:{address[1]}")
            theirs = SecureMemoryLink(
                network, address[0], (self.host, 0), inbound, outbound, listener.config
            )
            if not listener._offer(SecureMemoryPendingLink(theirs, listener._layer)):
                raise LinkClosed(f"{address[0]}:{address[1]} refused the connection (backlog full)")
            await _run_handshake(ours, handshake)
        except BaseException:
            # Given up, refused or failed: the listener sees the connection close, as
            # over TCP (its handshake, if it runs one, ends on it).
            ours._close("closed")
            raise
        return ours
