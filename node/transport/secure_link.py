"""The Noise secure channel's transport phase over TCP: a Link of encrypted frames.

After the handshake (node.transport.tcp), a `SecureLink` carries frames over a
`RecordSocket` (node.transport.record_socket). The plaintexts of the Noise transport
messages form one byte stream of frames, each a 4-byte big-endian length and one encoded
envelope. A sender packs as many pending frames as fit into one Noise message and splits
large frames across several, so small RPCs share system calls and 1 MiB chunks move in
64 KiB records.

A peer is cut off (the link closes with a reason) when it sends a record that does not
decrypt, announces a frame over the size limit, stops reading for `send_timeout`, or
takes longer than `frame_timeout` to send a frame whole. A frame over SMALL_FRAME
holds the node's receive budget (node/transport/budget.py) for what of it has arrived
plus RESERVE_WINDOW, up to its length: the link reads no more of it until the budget
has room for the next window.
"""

from __future__ import annotations

import math
import struct

import trio

from node.errors import LinkClosed, NoRoom
from node.transport.budget import SMALL_FRAME, ByteBudget, SendMeter
from node.transport.config import TransportConfig
from node.transport.link import Address, Link
from node.transport.record_socket import RECORD_HEADER, Buffer, RecordSocket
from protocol.errors import ProtocolError
from protocol.identity import NodeId
from protocol.noise import MAX_PLAINTEXT_SIZE, TransportState

__all__ = ["SecureLink"]

FRAME_HEADER = struct.Struct(">I")
# Bytes queued behind a flush before senders wait for it.
SEND_HIGH_WATER = 4 * 1024 * 1024
# Frames and records the reader takes back to back before it yields to other tasks.
UNITS_PER_CHECKPOINT = 64
# A received frame at least this big that fills the plaintext buffer exactly is handed
# over as it is, not copied out of it.
HAND_OVER_SIZE = 64 * 1024
# How far ahead of what has arrived a large frame holds the receive budget.
RESERVE_WINDOW = 256 * 1024


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
        records: RecordSocket,
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
        self._frame_timeout = config.frame_timeout
        self._budget: ByteBudget | None = None
        self._budget_key = ""
        self._budget_known = False
        self._reserved = 0  # bytes of the receive budget the frame in progress holds
        self._frame_deadline = math.inf  # when the frame in progress must be whole
        self._plain = bytearray()
        self._plain_start = 0
        self._units_since_checkpoint = 0
        self._pending: list[bytes] = []  # plaintext frame headers and frames, in order
        self._unsent: list[Buffer] = []  # encrypted, not yet on the wire
        self._queued = 0
        self._send_meter: SendMeter | None = None
        self._writer_busy = False
        self._writer_wakeup = trio.lowlevel.ParkingLot()
        self._room = trio.lowlevel.ParkingLot()
        self._close_reason: str | None = None
        self._misbehaved = False

    def use_receive_budget(self, budget: ByteBudget, key: str, *, known: bool = False) -> None:
        self._budget = budget
        self._budget_key = key
        self._budget_known = known

    @property
    def queued_bytes(self) -> int:
        return self._queued

    def use_send_meter(self, meter: SendMeter) -> None:
        self._send_meter = meter
        meter.total += self._queued

    @property
    def _queued_bytes(self) -> int:
        return self._queued

    @_queued_bytes.setter
    def _queued_bytes(self, value: int) -> None:
        if self._send_meter is not None:
            self._send_meter.total += value - self._queued
        self._queued = value

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

    def _partial_length(self) -> int | None:
        """The announced length of the frame in progress, once its header is here."""
        if len(self._plain) - self._plain_start < FRAME_HEADER.size:
            return None
        (length,) = FRAME_HEADER.unpack_from(self._plain, self._plain_start)
        return int(length)

    def _wanted(self, length: int) -> int:
        """What the frame in progress should hold of the budget: what of it is here,
        plus a window ahead, never more than its length. So a peer that announces a
        large frame and sends little holds little (a review held the whole budget
        with three prefixes' headers)."""
        here = len(self._plain) - self._plain_start - FRAME_HEADER.size
        return min(length, here + RESERVE_WINDOW)

    async def _reserve(self, length: int) -> None:
        """Hold `length` bytes of the receive budget for the frame in progress (more
        than it holds already), waiting for room until the frame's deadline."""
        budget = self._budget
        assert budget is not None
        more = length - self._reserved
        with trio.move_on_at(self._frame_deadline):
            await budget.reserve(more, self._budget_key, known=self._budget_known)
            self._reserved += more
            if self._close_reason is not None:  # closed while it waited
                self._release()
                raise LinkClosed(self._close_reason, misbehaved=self._misbehaved)
            return
        raise LinkClosed(
            f"no room to receive a {length}-byte frame within {self._frame_timeout:g} s "
            f"(the node's receive budget is in use)"
        )

    def _release(self) -> None:
        if self._reserved:
            assert self._budget is not None
            self._budget.release(self._reserved, self._budget_key, known=self._budget_known)
            self._reserved = 0

    async def _fill_before_deadline(self) -> None:
        with trio.move_on_at(self._frame_deadline):
            await self._records.fill()
            return
        raise LinkClosed(
            f"a frame not received whole within {self._frame_timeout:g} s", misbehaved=True
        )

    async def receive_frame(self) -> bytes | bytearray:
        try:
            while True:
                frame = self._take_frame()
                if frame is not None:
                    self._units_since_checkpoint += 1
                    self._release()
                    self._frame_deadline = math.inf
                    return frame
                if self._units_since_checkpoint >= UNITS_PER_CHECKPOINT:
                    # A peer that keeps the socket full (many frames, or records that
                    # carry none) must not keep the other tasks from running.
                    self._units_since_checkpoint = 0
                    await trio.lowlevel.checkpoint()
                if self._close_reason is not None:
                    raise LinkClosed(self._close_reason, misbehaved=self._misbehaved)
                if self._frame_deadline == math.inf and (
                    len(self._plain) > self._plain_start or self._records.has_partial
                ):
                    # A frame has begun: it must be whole by then.
                    self._frame_deadline = trio.current_time() + self._frame_timeout
                if self._budget is not None:
                    length = self._partial_length()
                    if length is not None and length > SMALL_FRAME:
                        wanted = self._wanted(length)
                        if wanted > self._reserved:
                            await self._reserve(wanted)
                records = self._records.take_records()
                if not records:
                    if self._frame_deadline == math.inf:
                        await self._records.fill()
                    else:
                        await self._fill_before_deadline()
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
        self._release()
        # What was queued will never be sent: it no longer counts.
        self._pending.clear()
        self._unsent = []
        self._queued_bytes = 0
        self._room.unpark_all()
        self._writer_wakeup.unpark_all()
        self._records.close()

    async def aclose(self) -> None:
        self._close("closed")
        await trio.lowlevel.checkpoint()
