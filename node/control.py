"""The control socket: how the `freehold` CLI talks to its running node.

A Unix stream socket at `<data-dir>/control.sock`, mode 0600 in a directory only the
node's user can enter, and every connection's peer uid (SO_PEERCRED) checked against
the node's own: the socket hands out capabilities and accepts files, so nobody but the
node's owner (and root) may use it.

Wire format, both ways: frames of a 4-byte big-endian header and a body of at most
`MAX_CONTROL_FRAME` bytes. The header's top bit says what the body is: clear, a msgpack
map of the header's length; set, a data frame, whose body is the next (header & 0x7fffffff)
bytes of a file, raw (so that a file's bytes are never packed, unpacked or copied on
the way). Readers see a data frame as the map
{"data": bytes}. One command per connection:

    client -> node   {"command": NAME, "arguments": {...}}
                     then, for commands that take a stream (put): data frames ...
                     and {"end": true}
    node -> client   any number of {"progress": done, "total": total-or-null}
                     and, for commands that give a stream (get): data frames ...
                     then exactly one of {"result": {...}} or {"error": "one line"}

A put from a regular file and a get into one need no stream at all: the command's
arguments say {"fd": true} and, right after its frame, the client sends one byte, b"F",
carrying the open file's descriptor (SCM_RIGHTS). The node then reads or writes the
file itself, in a worker thread: nothing crosses the socket but progress and the
result, which saves a copy of every byte at each end. The node takes only regular
files that way (`regular_file`); pipes and terminals are streamed.

The client side (`ControlClient`) uses a blocking socket and imports nothing heavy, so
the CLI starts fast; the node side (`ControlServer`) is a trio service.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
import struct
import sys
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import msgpack

from node.errors import CommandFailed, ControlError, NodeError, NodeNotRunning, single_error

__all__ = [
    "COMMAND_TIMEOUT",
    "DATA_PIECE",
    "MAX_CONTROL_CLIENTS",
    "MAX_CONTROL_FRAME",
    "ControlChannel",
    "ControlClient",
    "ControlServer",
    "regular_file",
]

logger = logging.getLogger(__name__)

MAX_CONTROL_FRAME: Final = 8 * 1024 * 1024
MAX_CONTROL_CLIENTS: Final = 32
"""Control connections served at once; one more is told so and closed."""
COMMAND_TIMEOUT: Final = 30.0
"""Seconds a control connection has to send its command; one that does not is closed
(the CLI sends it at once)."""
_HEADER: Final = struct.Struct(">I")
# The header bit that marks a data frame (raw file bytes, not msgpack).
_DATA_FRAME: Final = 0x8000_0000
# File bytes per data frame.
DATA_PIECE: Final = 1024 * 1024
# The byte that carries a file descriptor (SCM_RIGHTS), and a descriptor's C int.
_FD_MARKER: Final = b"F"
_FD: Final = struct.Struct("i")
# SO_PEERCRED's struct ucred: pid, uid, gid.
_UCRED: Final = struct.Struct("3i")


def _pack(frame: Mapping[str, Any]) -> bytes:
    body: bytes = msgpack.packb(frame, use_bin_type=True)
    if len(body) > MAX_CONTROL_FRAME:
        raise ControlError(f"control frame of {len(body)} bytes is over the limit")
    return _HEADER.pack(len(body)) + body


def _data_headers(data: bytes | bytearray | memoryview) -> Iterator[tuple[bytes, memoryview]]:
    """Each data frame of `data` as (header, body): the body a view, not a copy."""
    view = memoryview(data).cast("B")
    for offset in range(0, view.nbytes, DATA_PIECE):
        piece = view[offset : offset + DATA_PIECE]
        yield _HEADER.pack(_DATA_FRAME | piece.nbytes), piece


def _frame_size(header: bytes | bytearray) -> tuple[int, bool]:
    """(body size, whether it is a data frame) from a frame header; ControlError if
    the body would be over the limit."""
    (word,) = _HEADER.unpack(header)
    size = word & ~_DATA_FRAME
    if size > MAX_CONTROL_FRAME:
        raise ControlError(f"control frame of {size} bytes is over the limit")
    return size, bool(word & _DATA_FRAME)


def _unpack(body: bytes | bytearray) -> dict[str, Any]:
    try:
        frame = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several types for malformed input
        raise ControlError(f"malformed control frame: {exc}") from None
    if not isinstance(frame, dict):
        raise ControlError("malformed control frame: not a map")
    return frame


# ------------------------------------------------------------------------ node side


class ControlChannel:
    """One CLI connection, as a command handler sees it."""

    def __init__(self, stream: Any) -> None:
        import trio

        self._stream = stream
        # A handler may send from several tasks (progress of segments placed in
        # parallel); a trio stream takes one sender at a time.
        self._sending = trio.Lock()

    async def receive(self) -> dict[str, Any]:
        """The next frame from the CLI; ControlError if it hung up or sent garbage."""
        size, is_data = _frame_size(await self._read_exactly(_HEADER.size))
        if is_data:
            return {"data": await self._read_exactly(size)}
        return _unpack(await self._read_exactly(size))

    async def send(self, frame: Mapping[str, Any]) -> None:
        import trio

        data = _pack(frame)
        async with self._sending:
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise ControlError(f"the CLI went away: {exc}") from None

    async def send_data(self, data: bytes | bytearray | memoryview) -> None:
        """Stream `data` to the CLI in data frames, without copying it."""
        import trio

        async with self._sending:
            try:
                for header, body in _data_headers(data):
                    await self._stream.send_all(header)
                    await self._stream.send_all(body)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise ControlError(f"the CLI went away: {exc}") from None

    async def progress(self, done: int, total: int | None) -> None:
        await self.send({"progress": done, "total": total})

    async def receive_fd(self) -> int:
        """The file descriptor the CLI sends after a command that says {"fd": true};
        the caller owns (and closes) it. ControlError if none came."""
        try:
            # Close-on-exec from the start; trio's recvmsg checkpoints before it receives,
            # and nothing here may wait once a descriptor is in hand (a cancel would leak it).
            marker, ancillary, _, _ = await self._stream.socket.recvmsg(
                1, socket.CMSG_SPACE(_FD.size), socket.MSG_CMSG_CLOEXEC
            )
        except OSError as exc:
            raise ControlError(f"the CLI went away: {exc}") from None
        fds = [
            fd
            for level, kind, data in ancillary
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS
            for (fd,) in _FD.iter_unpack(data[: len(data) - len(data) % _FD.size])
        ]
        if marker != _FD_MARKER or len(fds) != 1:
            for extra in fds:
                os.close(extra)
            raise ControlError("expected a file descriptor after the command")
        received: int = fds[0]
        return received

    async def receive_stream(self) -> Any:
        """Yield the `data` frames of an upload until its `end` frame."""
        while True:
            frame = await self.receive()
            if frame.get("end") is True:
                return
            data = frame.get("data")
            if not isinstance(data, bytes | bytearray):
                raise ControlError("expected a data or end frame")
            yield data

    async def _read_exactly(self, size: int) -> bytearray:
        """The next `size` bytes, read straight into the buffer returned (no read
        ahead: a frame's bytes are copied once, from the kernel)."""
        import trio

        data = bytearray(size)
        view = memoryview(data)
        filled = 0
        while filled < size:
            try:
                got = await self._stream.socket.recv_into(view[filled:])
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise ControlError(f"the CLI went away: {exc}") from None
            if not got:
                raise ControlError("the CLI hung up")
            filled += got
        return data


CommandHandler = Callable[[ControlChannel, dict[str, Any]], Awaitable[Mapping[str, Any]]]


class ControlServer:
    """Serves `handlers` (command name -> handler) on a Unix socket at `path`.

    A handler returns the result map, or raises NodeError (or ProtocolError) whose
    message becomes the one-line error the CLI prints. Anything else is a bug: logged
    with its traceback, reported as an internal error, and the node goes on.
    """

    def __init__(
        self,
        path: Path,
        handlers: Mapping[str, CommandHandler],
        *,
        allowed_uids: Collection[int] | None = None,
    ) -> None:
        """`allowed_uids`: the users whose connections are served; by default our own
        and root."""
        self.path = path
        self._handlers = dict(handlers)
        self._allowed_uids = frozenset((os.getuid(), 0) if allowed_uids is None else allowed_uids)
        self.clients = 0
        """Control connections being served now."""
        self.refused = 0
        """Connections turned away: too many at once, or another user's."""
        self.timed_out = 0
        """Connections closed for not sending their command in time."""

    async def run(self, *, task_status: Any = None) -> None:
        import trio

        listener = await self._listen()
        try:
            async with trio.open_nursery() as nursery:
                if task_status is not None:
                    task_status.started()
                while True:
                    try:
                        connection, _ = await listener.accept()
                    except OSError as exc:
                        if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                            logger.warning("control socket: accept failed (%s)", exc)
                            await trio.sleep(0.1)
                            continue
                        raise
                    if self.clients >= MAX_CONTROL_CLIENTS:
                        self.refused += 1
                        nursery.start_soon(self._turn_away, connection)
                        continue
                    self.clients += 1
                    nursery.start_soon(self._serve, connection)
        finally:
            listener.close()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    async def _listen(self) -> Any:
        import trio

        directory = self.path.parent
        mode = stat.S_IMODE(directory.stat().st_mode)
        if mode & 0o077:
            # The socket's own mode is not enough on every system: the directory keeps
            # others from even reaching it.
            os.chmod(directory, mode & ~0o077)
        if self.path.exists() or self.path.is_symlink():
            if _is_answering(self.path):
                raise NodeError(f"another node is already running on {self.path}")
            self.path.unlink()  # left behind by a node that was killed
        check_socket_path(self.path)
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # The umask makes the socket 0600 from the instant it exists (no chmod race).
        old_mask = os.umask(0o177)
        try:
            await sock.bind(str(self.path))
        except BaseException:
            sock.close()
            raise
        finally:
            os.umask(old_mask)
        sock.listen(16)
        return sock

    async def _turn_away(self, sock: Any) -> None:
        """Tell a connection over `MAX_CONTROL_CLIENTS` so, and close it."""
        import trio

        stream = trio.SocketStream(sock)
        async with stream:
            with trio.move_on_after(1), contextlib.suppress(ControlError):
                await ControlChannel(stream).send(
                    {"error": f"the node is busy: {MAX_CONTROL_CLIENTS} control connections open"}
                )

    async def _serve(self, sock: Any) -> None:
        try:
            await self._serve_one(sock)
        finally:
            self.clients -= 1

    async def _serve_one(self, sock: Any) -> None:
        import trio

        from protocol.errors import ProtocolError

        stream = trio.SocketStream(sock)
        async with stream:
            if not _peer_allowed(sock, self._allowed_uids):
                self.refused += 1
                logger.warning("control socket: refused a connection from another user")
                return
            channel = ControlChannel(stream)
            try:
                request: dict[str, Any] | None = None
                with trio.move_on_after(COMMAND_TIMEOUT):
                    try:
                        request = await channel.receive()
                    except ControlError as exc:
                        # Garbage, not a hang-up: say so before closing.
                        if "malformed" in str(exc) or "over the limit" in str(exc):
                            with trio.move_on_after(1), contextlib.suppress(ControlError):
                                await channel.send({"error": f"bad request: {exc}"})
                        raise
                if request is None:
                    self.timed_out += 1
                    with trio.move_on_after(1), contextlib.suppress(ControlError):
                        await channel.send(
                            {"error": f"no command within {COMMAND_TIMEOUT:.0f} s; closing"}
                        )
                    return
                name = request.get("command")
                arguments = request.get("arguments", {})
                handler = self._handlers.get(name) if isinstance(name, str) else None
                if handler is None or not isinstance(arguments, dict):
                    await channel.send({"error": f"unknown command {name!r}"})
                    return
                try:
                    result = await handler(channel, arguments)
                except Exception as exc:
                    # A handler's nursery wraps what it raises in an exception group.
                    error = single_error(exc, (NodeError, ProtocolError))
                    if isinstance(error, ControlError):
                        raise error from None
                    if not isinstance(error, NodeError | ProtocolError):
                        raise
                    await channel.send({"error": str(error)})
                    return
                await channel.send({"result": dict(result)})
            except ControlError as exc:
                logger.info("control connection ended: %s", exc)
            except Exception as exc:
                logger.exception("control command failed")
                with trio.move_on_after(1):
                    with contextlib.suppress(ControlError):
                        await channel.send({"error": f"internal error: {exc!r}"})


def regular_file(fd: int) -> bool:
    """Whether `fd` is a regular file, the only kind a command takes by descriptor."""
    return stat.S_ISREG(os.fstat(fd).st_mode)


def _peer_allowed(sock: Any, allowed_uids: Collection[int]) -> bool:
    """Whether the peer of a Unix socket runs as one of `allowed_uids`."""
    if not hasattr(socket, "SO_PEERCRED"):
        return True  # no way to ask; the socket's mode and directory still guard it
    credentials = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    _, uid, _ = _UCRED.unpack(credentials)
    return uid in allowed_uids


def _is_answering(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def check_socket_path(path: Path) -> None:
    """Refuse, with a clear error, a path longer than a Unix socket address can hold
    (`sun_path`: 108 bytes on Linux, 104 on macOS and the BSDs, the NUL included)."""
    limit = 107 if sys.platform.startswith("linux") else 103
    size = len(os.fsencode(path))
    if size > limit:
        raise NodeError(
            f"the control socket path {path} is {size} bytes, over the {limit} a Unix "
            "socket allows: use a shorter --data-dir"
        )


# ----------------------------------------------------------------------- CLI side


class ControlClient:
    """A blocking client of one command (the CLI's side)."""

    def __init__(self, path: Path, *, timeout: float | None = None) -> None:
        self.path = path
        check_socket_path(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            self._sock.close()
            raise NodeNotRunning(f"no node is running with its control socket at {path}") from None
        except OSError as exc:
            self._sock.close()
            raise ControlError(f"cannot reach the node at {path}: {exc}") from None

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def send(self, frame: Mapping[str, Any]) -> None:
        try:
            self._sock.sendall(_pack(frame))
        except OSError as exc:
            raise ControlError(f"the node went away: {exc}") from None

    def send_data(self, data: bytes | bytearray | memoryview) -> None:
        """Stream `data` to the node in data frames, without copying it."""
        try:
            for header, body in _data_headers(data):
                self._sock.sendall(header)
                self._sock.sendall(body)
        except OSError as exc:
            raise ControlError(f"the node went away: {exc}") from None

    def send_fd(self, fd: int) -> None:
        """Hand the node an open file (after a command whose arguments say "fd")."""
        try:
            socket.send_fds(self._sock, [_FD_MARKER], [fd])
        except OSError as exc:
            raise ControlError(f"the node went away: {exc}") from None

    def receive(self) -> dict[str, Any]:
        size, is_data = _frame_size(self._read_exactly(_HEADER.size))
        if is_data:
            return {"data": self._read_exactly(size)}
        return _unpack(self._read_exactly(size))

    def frames(self) -> Iterator[dict[str, Any]]:
        """The node's frames up to and including its result; raises CommandFailed on
        an error frame."""
        while True:
            frame = self.receive()
            if "error" in frame:
                raise CommandFailed(str(frame["error"]))
            yield frame
            if "result" in frame:
                return

    def _read_exactly(self, size: int) -> bytearray:
        """The next `size` bytes, read straight into the buffer returned."""
        data = bytearray(size)
        view = memoryview(data)
        filled = 0
        while filled < size:
            try:
                got = self._sock.recv_into(view[filled:])
            except OSError as exc:
                raise ControlError(f"the node went away: {exc}") from None
            if not got:
                raise ControlError("the node closed the control connection")
            filled += got
        return data
