"""One end of a link on a `MemoryNetwork` (node.transport.memory): how frames travel.

A `MemoryLink` carries whole frames in trio memory channels, each one arriving after the
pair's latency, in order. A `SecureMemoryLink`, on a network made with `secure=True`,
runs the channel of node.transport.tcp over a `Pipe` instead (see it for why not a
channel).

On a secure link both ends run the real `SecureHandshake` (Noise XX and the identity
payload, docs/PROTOCOL.md#secure-channel), one handshake message per frame, each
delivered with the pair's latency: the dialler is done after one round trip (it sends
message 3 and goes on), as without `secure`, and the listener after one and a half. A
wrong node fails the dial with WrongPeerIdentity as a misbehaved LinkClosed, as tcp.py's
does. Each frame then travels as Noise transport messages of at most 65535 bytes (Noise
rev 34 §3): one for most frames, several for a large one, as secure_link.py splits its
records; frames here are whole messages, so no length header is needed. A message that
fails to decrypt closes the link as misbehaved. Loss and partitions drop a frame before
it is encrypted, and a sender waits for room in the link before it encrypts, so a frame
that never goes spends no nonce and the two ends stay in step (Noise rev 34 §5.1). Noise
keys come from each link layer's `random_bytes` (pass a seeded one for byte-exact
replays). The channel draws nothing from the network's RNG, so one seed loses the same
frames either way.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from node.errors import LinkClosed, NoRoom
from node.transport.config import TransportConfig
from node.transport.link import Address, Link
from protocol.errors import ProtocolError
from protocol.handshake import SecureHandshake
from protocol.identity import NodeId
from protocol.noise import MAX_PLAINTEXT_SIZE

if TYPE_CHECKING:
    from node.transport.memory import MemoryNetwork

__all__ = [
    "LINK_BUFFER_FRAMES",
    "MemoryLink",
    "Pipe",
    "SecureMemoryLink",
    "TimedFrame",
    "run_handshake",
]

# Frames one direction of a link may hold before the sender waits.
LINK_BUFFER_FRAMES = 256

TimedFrame = tuple[float, bytes]  # (virtual time at which it arrives, frame)
# On a secure link: one Noise message (a handshake message, or a frame of at most
# MAX_PLAINTEXT_SIZE bytes), or the list of them that a larger frame takes.
_Records = bytes | list[bytes]
_SecureFrame = tuple[float, _Records]


class MemoryLink(Link):
    """One end of an in-memory link."""

    def __init__(
        self,
        network: MemoryNetwork,
        local_host: str,
        remote_node_id: NodeId,
        remote_address: Address,
        outgoing: trio.MemorySendChannel[TimedFrame],
        incoming: trio.MemoryReceiveChannel[TimedFrame],
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


class Pipe:
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
        sending: Pipe,
        receiving: Pipe,
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


async def run_handshake(link: SecureMemoryLink, handshake: SecureHandshake) -> None:
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
