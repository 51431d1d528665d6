"""TCP links secured with the Noise XX handshake (docs/PROTOCOL.md#secure-channel).

On the wire: each handshake message and each Noise transport message is a 2-byte
big-endian length and that many bytes (at most 65535, Noise rev 34 §3). The plaintexts
of the transport messages form one byte stream of frames, each a 4-byte big-endian
length and one encoded envelope. A sender packs as many pending frames as fit into one
Noise message and splits large frames across several, so small RPCs share system calls
and 1 MiB chunks move in 64 KiB records.

Sockets are non-blocking stdlib sockets driven with trio.lowlevel.wait_readable and
wait_writable: a send or receive that the kernel completes at once costs no pass
through the scheduler (trio's SocketStream checkpoints on every call, which is most of
the cost of a small RPC). Reads go into one fixed buffer with recv_into; writes hand
the records to sendmsg without joining them.

A peer is cut off (the link closes with a reason) when it sends a record that does not
decrypt, announces a frame over the size limit, or stops reading for `send_timeout`.
"""

from __future__ import annotations

import errno
import logging
import math
import socket
import struct
from collections.abc import Awaitable, Callable

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
from protocol.noise import MAX_MESSAGE_SIZE, MAX_PLAINTEXT_SIZE, TransportState

__all__ = ["TcpLinkLayer"]

logger = logging.getLogger(__name__)

RECORD_HEADER = struct.Struct(">H")
FRAME_HEADER = struct.Struct(">I")
# A connection's receive buffer starts at INITIAL_RECEIVE_BUFFER and grows up to
# RECEIVE_BUFFER_SIZE (four whole records) while large records stream in.
INITIAL_RECEIVE_BUFFER = 16 * 1024
RECEIVE_BUFFER_SIZE = 4 * (RECORD_HEADER.size + MAX_MESSAGE_SIZE)
# Bytes queued behind a flush before senders wait for it.
SEND_HIGH_WATER = 4 * 1024 * 1024
# Buffers per sendmsg call (Linux's IOV_MAX is 1024).
SEND_BATCH = 512
# Frames and records the reader takes back to back before it yields to other tasks.
UNITS_PER_CHECKPOINT = 64
# A received frame at least this big that fills the plaintext buffer exactly is handed
# over as it is, not copied out of it.
HAND_OVER_SIZE = 64 * 1024
LISTEN_BACKLOG = 128
# Pause after accept() fails for lack of descriptors or memory, and how often to say so.
ACCEPT_BACKOFF = 0.1
RESOURCE_WARNING_INTERVAL = 60.0
KEY_SIZE = 32
_LOST = (ConnectionError, OSError)
Buffer = bytes | bytearray | memoryview


class _RecordSocket:
    """A non-blocking TCP socket carrying 2-byte-length-prefixed records."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        # Small to start with: a node holds hundreds of connections, most carrying small
        # RPCs. It grows (up to RECEIVE_BUFFER_SIZE) when a record does not fit.
        self._buffer = bytearray(INITIAL_RECEIVE_BUFFER)
        self._view = memoryview(self._buffer)
        self._start = 0
        self._end = 0
        self._drained = False
        self.closed = False

    # -- receiving --------------------------------------------------------------------

    async def fill(self) -> None:
        """Wait for more bytes from the peer (raises LinkClosed at the end)."""
        self._make_room()
        if self._drained:
            # The last read emptied the kernel's buffer: wait before asking again, which
            # saves a system call that would only say "nothing yet".
            await self._wait(trio.lowlevel.wait_readable)
        while True:
            space = len(self._buffer) - self._end
            try:
                count = self.sock.recv_into(self._view[self._end :])
            except BlockingIOError:
                await self._wait(trio.lowlevel.wait_readable)
                continue
            except _LOST as exc:
                raise LinkClosed(f"connection lost: {exc}") from None
            if count == 0:
                raise LinkClosed("peer closed the connection")
            self._end += count
            self._drained = count < space
            return

    def _make_room(self) -> None:
        """Room for the rest of the record being read, and for more besides."""
        start, end = self._start, self._end
        remaining = end - start
        if remaining == 0:
            self._start = self._end = 0
            return
        wanted = RECORD_HEADER.size
        if remaining >= RECORD_HEADER.size:
            wanted += (self._buffer[start] << 8) | self._buffer[start + 1]
        wanted = max(wanted, INITIAL_RECEIVE_BUFFER)
        if len(self._buffer) - end >= wanted - remaining:
            return
        if len(self._buffer) >= wanted and start > 0:
            # Move the partial record to the front.
            self._view[:remaining] = self._view[start:end]
            self._start, self._end = 0, remaining
            return
        self._resize(min(RECEIVE_BUFFER_SIZE, max(wanted, 2 * len(self._buffer))), remaining)

    def _resize(self, size: int, remaining: int) -> None:
        # A new buffer, not a resized one: records handed out are views of the old one.
        buffer = bytearray(size)
        buffer[:remaining] = self._view[self._start : self._start + remaining]
        self._buffer = buffer
        self._view = memoryview(buffer)
        self._start, self._end = 0, remaining

    def take_record(self) -> memoryview | None:
        """The next complete record already received, if any (no I/O). The view is
        into the receive buffer: use it before the next fill()."""
        start, end = self._start, self._end
        if end - start < RECORD_HEADER.size:
            return None
        length = (self._buffer[start] << 8) | self._buffer[start + 1]
        if end - start - RECORD_HEADER.size < length:
            return None
        start += RECORD_HEADER.size
        self._start = start + length
        return self._view[start : start + length]

    def take_records(self) -> list[memoryview]:
        """Every complete record already received (no I/O)."""
        records = []
        while (record := self.take_record()) is not None:
            records.append(record)
        return records

    async def receive_record(self) -> bytes:
        while (record := self.take_record()) is None:
            await self.fill()
        return bytes(record)

    # -- sending ----------------------------------------------------------------------

    def try_send(self, buffers: list[Buffer]) -> list[Buffer]:
        """Send what the kernel takes now; return what is left (no I/O wait)."""
        pending = list(buffers)
        while pending:
            try:
                sent = self.sock.sendmsg(pending[:SEND_BATCH])
            except BlockingIOError:
                return pending
            except _LOST as exc:
                raise LinkClosed(f"connection lost while sending: {exc}") from None
            while sent:
                first = pending[0]
                if sent >= len(first):
                    sent -= len(first)
                    pending.pop(0)
                else:
                    pending[0] = memoryview(first)[sent:]
                    sent = 0
        return pending

    async def send_all(self, buffers: list[Buffer]) -> None:
        pending = self.try_send(buffers)
        while pending:
            await self._wait(trio.lowlevel.wait_writable)
            pending = self.try_send(pending)

    async def _wait(self, wait: Callable[[socket.socket], Awaitable[None]]) -> None:
        if self.closed:
            raise LinkClosed("closed")
        try:
            await wait(self.sock)
        except trio.ClosedResourceError:
            # Another task closed the link while we waited on the socket.
            raise LinkClosed("closed") from None

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            trio.lowlevel.notify_closing(self.sock)
            self.sock.close()


class SecureLink(Link):
    """A Link over a socket after a completed Noise handshake.

    Sending: a frame is encrypted and written by the caller itself when the link has
    nothing else queued and the kernel takes it at once (the common case: no task
    switch, no scheduler pass). Whatever the kernel does not take is left to the link's
    writer task (`run()`), which alone waits for the socket, bounded by the send timeout.
    Callers therefore never wait on the peer except for room in the queue, and that wait
    is cancellable; records always go out whole and in nonce order.
    """

    def __init__(
        self,
        records: _RecordSocket,
        transport: TransportState,
        remote_node_id: NodeId,
        remote_address: Address,
        config: TransportConfig,
    ) -> None:
        self.remote_node_id = remote_node_id
        self.remote_address = remote_address
        self._records = records
        self._noise = transport
        self._max_frame_size = config.max_frame_size
        self._send_timeout = config.send_timeout
        self._plain = bytearray()
        self._plain_start = 0
        self._units_since_checkpoint = 0
        self._pending: list[bytes] = []  # plaintext frame headers and frames, in order
        self._unsent: list[Buffer] = []  # encrypted, not yet on the wire
        self._queued_bytes = 0
        self._writer_busy = False
        self._writer_wakeup = trio.lowlevel.ParkingLot()
        self._room = trio.lowlevel.ParkingLot()
        self._close_reason: str | None = None
        self._misbehaved = False

    # -- sending ---------------------------------------------------------------------

    async def send_frame(self, frame: bytes, *, deadline: float = math.inf) -> None:
        if self._close_reason is None and self._queued_bytes > SEND_HIGH_WATER:
            with trio.move_on_at(deadline):
                while self._queued_bytes > SEND_HIGH_WATER and self._close_reason is None:
                    await self._room.park()
            if self._close_reason is None and self._queued_bytes > SEND_HIGH_WATER:
                raise NoRoom("the send queue stayed full")
        if self._close_reason is not None:
            raise LinkClosed(self._close_reason, misbehaved=self._misbehaved)
        self._pending.append(FRAME_HEADER.pack(len(frame)))
        self._pending.append(frame)
        self._queued_bytes += FRAME_HEADER.size + len(frame)
        if self._writer_busy or self._unsent or len(self._pending) > 2:
            self._writer_wakeup.unpark()
            return
        try:
            left = self._records.try_send(self._encrypt_pending())
        except LinkClosed as exc:
            self._close(exc.reason, misbehaved=exc.misbehaved)
            raise
        if left:
            self._unsent = left
            self._queued_bytes = sum(len(piece) for piece in left)
            self._writer_wakeup.unpark()
        else:
            self._queued_bytes = 0

    def _encrypt_pending(self) -> list[Buffer]:
        """The queued frames as Noise records (header, ciphertext, ...). Records are cut
        from the frames' concatenation, but only a record that straddles two pieces is
        joined: a chunk's bytes are encrypted from where they are, never copied first."""
        pending = self._pending
        encrypt = self._noise.encrypt
        pack = RECORD_HEADER.pack
        if len(pending) == 2 and len(pending[0]) + len(pending[1]) <= MAX_PLAINTEXT_SIZE:
            ciphertext = encrypt(pending[0] + pending[1])  # the common case: one small frame
            pending.clear()
            return [pack(len(ciphertext)), ciphertext]
        buffers: list[Buffer] = []
        straddling: list[bytes | memoryview] = []  # pieces of the record being gathered
        gathered = 0
        for piece in pending:
            view = memoryview(piece)
            while view:
                take = min(MAX_PLAINTEXT_SIZE - gathered, len(view))
                if not straddling and take == MAX_PLAINTEXT_SIZE:
                    record: bytes | memoryview = view[:take]
                else:
                    straddling.append(view[:take])
                    gathered += take
                    if gathered < MAX_PLAINTEXT_SIZE:
                        break  # this piece is used up; the record goes on in the next
                    record = b"".join(straddling)
                    straddling.clear()
                    gathered = 0
                ciphertext = encrypt(record)
                buffers.append(pack(len(ciphertext)))
                buffers.append(ciphertext)
                view = view[take:]
        if straddling:
            ciphertext = encrypt(b"".join(straddling))
            buffers.append(pack(len(ciphertext)))
            buffers.append(ciphertext)
        pending.clear()
        return buffers

    async def run(self) -> None:
        """The writer: sends what callers could not, in order, until the link closes."""
        try:
            while self._close_reason is None:
                if not self._unsent and not self._pending:
                    await self._writer_wakeup.park()
                    continue
                self._writer_busy = True
                if not self._unsent:
                    self._unsent = self._encrypt_pending()
                with trio.move_on_after(self._send_timeout):
                    await self._records.send_all(self._unsent)
                    self._unsent = []
                    self._queued_bytes = sum(len(piece) for piece in self._pending)
                    self._writer_busy = False
                    if self._room:
                        self._room.unpark_all()
                    continue
                raise LinkClosed(f"peer did not read for {self._send_timeout:g} s", misbehaved=True)
        except LinkClosed as exc:
            self._close(exc.reason, misbehaved=exc.misbehaved)
        finally:
            self._writer_busy = False

    # -- receiving -------------------------------------------------------------------

    def _take_frame(self) -> bytes | bytearray | None:
        plain = self._plain
        start = self._plain_start
        available = len(plain) - start
        if available < FRAME_HEADER.size:
            return None
        (length,) = FRAME_HEADER.unpack_from(plain, start)
        if length > self._max_frame_size:
            raise LinkClosed(
                f"peer announced a frame of {length} bytes, over the {self._max_frame_size} limit",
                misbehaved=True,
            )
        if available < FRAME_HEADER.size + length:
            return None
        start += FRAME_HEADER.size
        if start + length == len(plain) and length >= HAND_OVER_SIZE:
            # The frame is all that is buffered (a chunk, usually): hand the buffer over
            # instead of copying it. Deleting a bytearray's head moves no bytes.
            del plain[:start]
            self._plain = bytearray()
            self._plain_start = 0
            return plain
        with memoryview(plain) as view:
            frame = bytes(view[start : start + length])
        start += length
        if start == len(plain):
            plain.clear()
            start = 0
        self._plain_start = start
        return frame

    async def receive_frame(self) -> bytes | bytearray:
        try:
            while True:
                frame = self._take_frame()
                if frame is not None:
                    self._units_since_checkpoint += 1
                    return frame
                if self._units_since_checkpoint >= UNITS_PER_CHECKPOINT:
                    # A peer that keeps the socket full (many frames, or records that
                    # carry none) must not keep the other tasks from running.
                    self._units_since_checkpoint = 0
                    await trio.lowlevel.checkpoint()
                if self._close_reason is not None:
                    raise LinkClosed(self._close_reason, misbehaved=self._misbehaved)
                records = self._records.take_records()
                if not records:
                    await self._records.fill()
                    continue
                self._units_since_checkpoint += len(records)
                if self._plain_start:
                    del self._plain[: self._plain_start]
                    self._plain_start = 0
                for record in records:
                    try:
                        self._noise.decrypt_into(record, self._plain)
                    except ProtocolError as exc:
                        raise LinkClosed(f"bad transport message: {exc}", misbehaved=True) from None
        except LinkClosed as exc:
            if self._close_reason is not None:
                # We closed it ourselves (a send failed or timed out): that reason counts.
                raise LinkClosed(self._close_reason, misbehaved=self._misbehaved) from None
            self._close(exc.reason, misbehaved=exc.misbehaved)
            raise
        except trio.ClosedResourceError:
            raise LinkClosed(self._close_reason or "closed", misbehaved=self._misbehaved) from None

    def _close(self, reason: str, *, misbehaved: bool = False) -> None:
        if self._close_reason is None:
            self._close_reason = reason
            self._misbehaved = misbehaved
        self._room.unpark_all()
        self._writer_wakeup.unpark_all()
        self._records.close()

    async def aclose(self) -> None:
        self._close("closed")
        await trio.lowlevel.checkpoint()


async def _run_handshake(
    records: _RecordSocket,
    handshake: SecureHandshake,
    remote_address: Address,
    config: TransportConfig,
    first_message: bytes | None,
) -> SecureLink:
    try:
        if first_message is not None:
            await records.send_all([RECORD_HEADER.pack(len(first_message)), first_message])
        while not handshake.is_complete:
            reply = handshake.receive(await records.receive_record())
            if reply is not None:
                await records.send_all([RECORD_HEADER.pack(len(reply)), reply])
    except ProtocolError as exc:
        raise LinkClosed(f"handshake failed: {exc}", misbehaved=True) from None
    return SecureLink(
        records, handshake.transport(), handshake.remote_node_id, remote_address, config
    )


class TcpPendingLink(PendingLink):
    def __init__(
        self, layer: TcpLinkLayer, sock: socket.socket, address: Address, config: TransportConfig
    ) -> None:
        self._layer = layer
        self._records = _RecordSocket(sock)
        self._config = config
        self.remote_address = address

    async def handshake(self) -> Link:
        handshake = self._layer._new_handshake(initiator=False, expected_node_id=None)
        try:
            return await _run_handshake(
                self._records, handshake, self.remote_address, self._config, None
            )
        except BaseException:
            self._records.close()
            raise

    async def aclose(self) -> None:
        self._records.close()
        await trio.lowlevel.checkpoint()


class TcpListener(LinkListener):
    def __init__(self, layer: TcpLinkLayer, sock: socket.socket, config: TransportConfig) -> None:
        self._layer = layer
        self._sock = sock
        self._config = config
        name = sock.getsockname()
        self.address = (str(name[0]), int(name[1]))
        self._resource_failures = 0
        self._next_resource_warning = -math.inf

    async def accept(self) -> PendingLink:
        while True:
            try:
                sock, name = self._sock.accept()
            except BlockingIOError:
                try:
                    await trio.lowlevel.wait_readable(self._sock)
                except trio.ClosedResourceError:
                    raise trio.ClosedResourceError("listener is closed") from None
                continue
            except OSError as exc:
                if self._sock.fileno() == -1:
                    raise trio.ClosedResourceError("listener is closed") from None
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of file descriptors or memory: back off instead of spinning,
                    # and say so once a minute, not at every retry.
                    self._resource_failures += 1
                    now = trio.current_time()
                    if now >= self._next_resource_warning:
                        logger.warning(
                            "accept failed %d times (%s); pausing between tries",
                            self._resource_failures,
                            exc,
                        )
                        self._resource_failures = 0
                        self._next_resource_warning = now + RESOURCE_WARNING_INTERVAL
                    await trio.sleep(ACCEPT_BACKOFF)
                else:
                    # The one connection failed (reset, unreachable, refused by a
                    # firewall rule...): it is that connection's problem, not ours.
                    logger.info("accept failed (%s); going on", exc)
                    await trio.lowlevel.checkpoint()
                continue
            try:
                pending = TcpPendingLink(
                    self._layer, sock, (str(name[0]), int(name[1])), self._config
                )
            except OSError as exc:
                sock.close()
                logger.info("dropping a connection that failed at once (%s)", exc)
                continue
            try:
                await trio.lowlevel.checkpoint()
            except BaseException:
                await pending.aclose()
                raise
            return pending

    async def aclose(self) -> None:
        if self._sock.fileno() != -1:
            trio.lowlevel.notify_closing(self._sock)
            self._sock.close()
        await trio.lowlevel.checkpoint()


class TcpLinkLayer(LinkLayer):
    """Noise-secured TCP. Only for addresses the operator chose; tests use loopback."""

    def __init__(self, identity: Identity, *, random_bytes: RandomBytes = nacl.utils.random):
        self.identity = identity
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
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, kind, proto, _, sockaddr = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setblocking(False)
            sock.bind(sockaddr)
            sock.listen(LISTEN_BACKLOG)
        except BaseException:
            sock.close()
            raise
        return TcpListener(self, sock, config)

    async def connect(
        self, address: Address, expected_node_id: NodeId | None, config: TransportConfig
    ) -> Link:
        host, port = address
        try:
            infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            family, kind, proto, _, sockaddr = infos[0]
            sock = socket.socket(family, kind, proto)
        except (OSError, UnicodeError, ValueError) as exc:
            # Addresses come from peers too (DHT contacts): a bad one fails this dial only.
            raise LinkClosed(f"cannot connect to {host!r}:{port}: {exc}") from None
        try:
            records = _RecordSocket(sock)
        except OSError as exc:
            sock.close()
            raise LinkClosed(f"cannot connect to {host!r}:{port}: {exc}") from None
        try:
            code = sock.connect_ex(sockaddr)
            if code == errno.EINPROGRESS:
                await records._wait(trio.lowlevel.wait_writable)
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code != 0:
                reason = errno.errorcode.get(code, str(code))
                raise LinkClosed(f"cannot connect to {host}:{port}: {reason}")
            handshake = self._new_handshake(initiator=True, expected_node_id=expected_node_id)
            return await _run_handshake(records, handshake, address, config, handshake.start())
        except BaseException:
            records.close()
            raise
