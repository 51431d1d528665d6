"""TCP links secured with the Noise XX handshake (docs/PROTOCOL.md#secure-channel).

On the wire: each handshake message and each Noise transport message is a 2-byte
big-endian length and that many bytes (at most 65535, Noise rev 34 §3). The plaintexts
of the transport messages form one byte stream of frames, each a 4-byte big-endian
length and one encoded envelope. A sender packs as many pending frames as fit into one
Noise message and splits large frames across several, so small RPCs share system calls
and 1 MiB chunks move in 64 KiB records.

A peer is cut off (the link closes with a reason) when it sends a record that does not
decrypt, announces a frame over the size limit, or stops reading for `send_timeout`.
"""

from __future__ import annotations

import errno
import logging
import struct

import nacl.utils
import trio

from node.transport.config import TransportConfig
from node.transport.link import Address, Link, LinkClosed, LinkLayer, LinkListener, PendingLink
from protocol.errors import ProtocolError
from protocol.handshake import SecureHandshake
from protocol.identity import Identity, NodeId, RandomBytes
from protocol.noise import MAX_PLAINTEXT_SIZE, TransportState

__all__ = ["TcpLinkLayer"]

logger = logging.getLogger(__name__)

RECORD_HEADER = struct.Struct(">H")
FRAME_HEADER = struct.Struct(">I")
RECEIVE_SIZE = 256 * 1024
# Bytes queued behind a flush before senders wait for it.
SEND_HIGH_WATER = 4 * 1024 * 1024
LISTEN_BACKLOG = 128
KEY_SIZE = 32


class _Reader:
    """Buffers bytes from a stream and hands out exact-length pieces."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = bytearray()

    async def fill(self) -> None:
        data = await self._stream.receive_some(RECEIVE_SIZE)
        if not data:
            raise LinkClosed("peer closed the connection")
        self._buffer += data

    async def receive_exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            await self.fill()
        piece = bytes(self._buffer[:size])
        del self._buffer[:size]
        return piece

    async def receive_record(self) -> bytes:
        header = await self.receive_exactly(RECORD_HEADER.size)
        (length,) = RECORD_HEADER.unpack(header)
        return await self.receive_exactly(length)

    def take_records(self) -> list[bytes]:
        """Every complete record already buffered (no I/O)."""
        buffer = self._buffer
        records = []
        position = 0
        end = len(buffer)
        while end - position >= 2:
            length = (buffer[position] << 8) | buffer[position + 1]
            if end - position - 2 < length:
                break
            records.append(bytes(buffer[position + 2 : position + 2 + length]))
            position += 2 + length
        if position:
            del buffer[:position]
        return records


def _record(payload: bytes) -> bytes:
    return RECORD_HEADER.pack(len(payload)) + payload


class SecureLink(Link):
    """A Link over a trio stream after a completed Noise handshake."""

    def __init__(
        self,
        stream: trio.SocketStream,
        reader: _Reader,
        transport: TransportState,
        remote_node_id: NodeId,
        remote_address: Address,
        config: TransportConfig,
    ) -> None:
        self.remote_node_id = remote_node_id
        self.remote_address = remote_address
        self._stream = stream
        self._reader = reader
        self._noise = transport
        self._max_frame_size = config.max_frame_size
        self._send_timeout = config.send_timeout
        self._plain = bytearray()
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._flushing = False
        self._drained = trio.lowlevel.ParkingLot()
        self._close_reason: str | None = None
        self._misbehaved = False

    # -- sending ---------------------------------------------------------------------

    async def send_frame(self, frame: bytes) -> None:
        if self._close_reason is not None:
            raise LinkClosed(self._close_reason)
        if len(frame) > self._max_frame_size:
            raise LinkClosed(f"frame of {len(frame)} bytes is over the limit")
        self._pending.append(FRAME_HEADER.pack(len(frame)))
        self._pending.append(frame)
        self._pending_bytes += FRAME_HEADER.size + len(frame)
        if self._flushing:
            # Another task is writing and will take our frame along; wait only if the
            # queue behind it is long (backpressure).
            while self._pending_bytes > SEND_HIGH_WATER and self._close_reason is None:
                await self._drained.park()
            if self._close_reason is not None:
                raise LinkClosed(self._close_reason)
            await trio.lowlevel.checkpoint()
            return
        self._flushing = True
        try:
            # Shielded: a caller giving up (its request timed out, its lookup ended)
            # must not leave half a record on a link others share. The send timeout
            # still bounds it, and a peer that does not read is cut off.
            with trio.CancelScope(shield=True):
                with trio.move_on_after(self._send_timeout) as scope:
                    await self._flush()
            if scope.cancelled_caught:
                await self._fail(f"peer did not read for {self._send_timeout:g} s", misbehaved=True)
        finally:
            self._flushing = False
            self._drained.unpark_all()
        if self._close_reason is not None:
            raise LinkClosed(self._close_reason)
        await trio.lowlevel.checkpoint_if_cancelled()

    async def _flush(self) -> None:
        while self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            self._pending_bytes = 0
            self._drained.unpark_all()
            encrypt = self._noise.encrypt
            if len(data) <= MAX_PLAINTEXT_SIZE:
                wire = _record(encrypt(data))
            else:
                view = memoryview(data)
                wire = b"".join(
                    _record(encrypt(bytes(view[start : start + MAX_PLAINTEXT_SIZE])))
                    for start in range(0, len(data), MAX_PLAINTEXT_SIZE)
                )
            try:
                await self._stream.send_all(wire)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                await self._fail(f"connection lost while sending: {exc}")
                return

    # -- receiving -------------------------------------------------------------------

    def _take_frame(self) -> bytes | None:
        plain = self._plain
        if len(plain) < FRAME_HEADER.size:
            return None
        (length,) = FRAME_HEADER.unpack_from(plain)
        if length > self._max_frame_size:
            raise LinkClosed(
                f"peer announced a frame of {length} bytes, over the {self._max_frame_size} limit",
                misbehaved=True,
            )
        end = FRAME_HEADER.size + length
        if len(plain) < end:
            return None
        frame = bytes(plain[FRAME_HEADER.size : end])
        del plain[:end]
        return frame

    async def receive_frame(self) -> bytes:
        try:
            while True:
                frame = self._take_frame()
                if frame is not None:
                    return frame
                if self._close_reason is not None:
                    raise LinkClosed(self._close_reason, misbehaved=self._misbehaved)
                records = self._reader.take_records()
                if not records:
                    try:
                        await self._reader.fill()
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                        raise LinkClosed(
                            self._close_reason or f"connection lost: {exc}",
                            misbehaved=self._misbehaved,
                        ) from None
                    continue
                for record in records:
                    try:
                        self._plain += self._noise.decrypt(record)
                    except ProtocolError as exc:
                        raise LinkClosed(f"bad transport message: {exc}", misbehaved=True) from None
        except LinkClosed as exc:
            await self._fail(exc.reason, misbehaved=exc.misbehaved)
            raise

    async def _fail(self, reason: str, *, misbehaved: bool = False) -> None:
        if self._close_reason is None:
            self._close_reason = reason
            self._misbehaved = misbehaved
        with trio.CancelScope(shield=True):
            await self._stream.aclose()

    async def aclose(self) -> None:
        if self._close_reason is None:
            self._close_reason = "closed"
        self._drained.unpark_all()
        with trio.CancelScope(shield=True):
            await self._stream.aclose()


async def _run_handshake(
    stream: trio.SocketStream,
    handshake: SecureHandshake,
    remote_address: Address,
    config: TransportConfig,
    first_message: bytes | None,
) -> SecureLink:
    reader = _Reader(stream)
    try:
        if first_message is not None:
            await stream.send_all(_record(first_message))
        while not handshake.is_complete:
            reply = handshake.receive(await reader.receive_record())
            if reply is not None:
                await stream.send_all(_record(reply))
    except ProtocolError as exc:
        raise LinkClosed(f"handshake failed: {exc}", misbehaved=True) from None
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        raise LinkClosed(f"connection lost during handshake: {exc}") from None
    remote_node_id = handshake.remote_node_id
    assert remote_node_id is not None
    return SecureLink(stream, reader, handshake.transport(), remote_node_id, remote_address, config)


def _peer_address(stream: trio.SocketStream) -> Address:
    try:
        name = stream.socket.getpeername()
    except OSError:
        return ("?", 0)
    return (str(name[0]), int(name[1]))


class TcpPendingLink(PendingLink):
    def __init__(self, layer: TcpLinkLayer, stream: trio.SocketStream, config: TransportConfig):
        self._layer = layer
        self._stream = stream
        self._config = config
        self.remote_address = _peer_address(stream)

    async def handshake(self) -> Link:
        handshake = self._layer._new_handshake(initiator=False, expected_node_id=None)
        try:
            return await _run_handshake(
                self._stream, handshake, self.remote_address, self._config, None
            )
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self._stream.aclose()


class TcpListener(LinkListener):
    def __init__(self, layer: TcpLinkLayer, listener: trio.SocketListener, config: TransportConfig):
        self._layer = layer
        self._listener = listener
        self._config = config
        name = listener.socket.getsockname()
        self.address = (str(name[0]), int(name[1]))

    async def accept(self) -> PendingLink:
        while True:
            try:
                stream = await self._listener.accept()
            except OSError as exc:
                # Out of file descriptors or memory: back off instead of spinning.
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    logger.warning("accept failed (%s); pausing", exc)
                    await trio.sleep(0.1)
                    continue
                raise
            return TcpPendingLink(self._layer, stream, self._config)

    async def aclose(self) -> None:
        await self._listener.aclose()


class TcpLinkLayer(LinkLayer):
    """Noise-secured TCP. Only for addresses the operator chose; tests use loopback."""

    def __init__(self, identity: Identity, *, random_bytes: RandomBytes = nacl.utils.random):
        self.identity = identity
        self._random_bytes = random_bytes

    def _new_handshake(
        self, *, initiator: bool, expected_node_id: NodeId | None
    ) -> SecureHandshake:
        # A fresh Noise static key per connection: the Ed25519 signature in the payload
        # binds it to our identity, and nothing long-lived is kept besides that key.
        return SecureHandshake(
            self.identity,
            initiator=initiator,
            noise_static_private=self._random_bytes(KEY_SIZE),
            ephemeral_private=self._random_bytes(KEY_SIZE),
            expected_node_id=expected_node_id,
        )

    async def open_listener(self, address: Address, config: TransportConfig) -> LinkListener:
        host, port = address
        infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM)
        family, kind, proto, _, sockaddr = infos[0]
        sock = trio.socket.socket(family, kind, proto)
        try:
            sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
            await sock.bind(sockaddr)
            sock.listen(LISTEN_BACKLOG)
        except BaseException:
            sock.close()
            raise
        return TcpListener(self, trio.SocketListener(sock), config)

    async def connect(
        self, address: Address, expected_node_id: NodeId | None, config: TransportConfig
    ) -> Link:
        host, port = address
        try:
            stream = await trio.open_tcp_stream(host, port)
        except OSError as exc:
            raise LinkClosed(f"cannot connect to {host}:{port}: {exc}") from None
        handshake = self._new_handshake(initiator=True, expected_node_id=expected_node_id)
        try:
            return await _run_handshake(stream, handshake, address, config, handshake.start())
        except BaseException:
            with trio.CancelScope(shield=True):
                await stream.aclose()
            raise
