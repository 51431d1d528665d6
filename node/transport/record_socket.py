"""A TCP socket carrying records: the wire under the Noise secure channel.

On the wire: each handshake message and each Noise transport message is a record, a
2-byte big-endian length and that many bytes (at most 65535, Noise rev 34 §3;
docs/PROTOCOL.md#secure-channel). `RecordSocket` cuts the received bytes into records
and sends records; what they hold is the business of node.transport.tcp (the handshake)
and node.transport.secure_link (the transport messages).

Sockets are non-blocking stdlib sockets driven with trio.lowlevel.wait_readable and
wait_writable: a send or receive that the kernel completes at once costs no pass
through the scheduler (trio's SocketStream checkpoints on every call, which is most of
the cost of a small RPC). Reads go into one fixed buffer with recv_into; writes hand
the records to sendmsg without joining them.

A socket error or the peer's end of the stream raises LinkClosed with the reason.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Awaitable, Callable

import trio

from node.errors import LinkClosed
from protocol.noise import MAX_MESSAGE_SIZE

__all__ = ["RECORD_HEADER", "Buffer", "RecordSocket"]

RECORD_HEADER = struct.Struct(">H")
# A connection's receive buffer starts at INITIAL_RECEIVE_BUFFER and grows up to
# RECEIVE_BUFFER_SIZE (four whole records) while large records stream in.
INITIAL_RECEIVE_BUFFER = 16 * 1024
RECEIVE_BUFFER_SIZE = 4 * (RECORD_HEADER.size + MAX_MESSAGE_SIZE)
# Buffers per sendmsg call (Linux's IOV_MAX is 1024).
SEND_BATCH = 512
_LOST = (ConnectionError, OSError)
Buffer = bytes | bytearray | memoryview


class RecordSocket:
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

    @property
    def has_partial(self) -> bool:
        """Whether part of a record is buffered (a record has begun)."""
        return self._end > self._start

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
