"""The control socket: how the `freehold` CLI talks to its running node.

A Unix stream socket at `<data-dir>/control.sock`, mode 0600 in a directory only the
node's user can enter, and every connection's peer uid (SO_PEERCRED) checked against
the node's own: the socket hands out capabilities and accepts files, so nobody but the
node's owner (and root) may use it.

Wire format, both ways: frames of a 4-byte big-endian length and a msgpack map (at
most `MAX_CONTROL_FRAME` bytes). One command per connection:

    client -> node   {"command": NAME, "arguments": {...}}
                     then, for commands that take a stream (put): {"data": bytes} ...
                     and {"end": true}
    node -> client   any number of {"progress": done, "total": total-or-null}
                     and, for commands that give a stream (get): {"data": bytes} ...
                     then exactly one of {"result": {...}} or {"error": "one line"}

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
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import msgpack

from node.errors import NodeError, single_error

__all__ = [
    "MAX_CONTROL_FRAME",
    "CommandFailed",
    "ControlChannel",
    "ControlClient",
    "ControlError",
    "ControlServer",
    "NodeNotRunning",
]

logger = logging.getLogger(__name__)

MAX_CONTROL_FRAME: Final = 8 * 1024 * 1024
_HEADER: Final = struct.Struct(">I")
# SO_PEERCRED's struct ucred: pid, uid, gid.
_UCRED: Final = struct.Struct("3i")


class ControlError(NodeError):
    """The control connection broke or carried something malformed."""


class NodeNotRunning(ControlError):
    """No node answers on the control socket."""


class CommandFailed(NodeError):
    """The node ran the command and it failed; the message is the node's one line."""


def _pack(frame: Mapping[str, Any]) -> bytes:
    body: bytes = msgpack.packb(frame, use_bin_type=True)
    if len(body) > MAX_CONTROL_FRAME:
        raise ControlError(f"control frame of {len(body)} bytes is over the limit")
    return _HEADER.pack(len(body)) + body


def _unpack(body: bytes) -> dict[str, Any]:
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
        self._buffer = bytearray()
        # A handler may send from several tasks (progress of segments placed in
        # parallel); a trio stream takes one sender at a time.
        self._sending = trio.Lock()

    async def receive(self) -> dict[str, Any]:
        """The next frame from the CLI; ControlError if it hung up or sent garbage."""
        header = await self._read_exactly(_HEADER.size)
        (size,) = _HEADER.unpack(header)
        if size > MAX_CONTROL_FRAME:
            raise ControlError(f"control frame of {size} bytes is over the limit")
        return _unpack(await self._read_exactly(size))

    async def send(self, frame: Mapping[str, Any]) -> None:
        import trio

        data = _pack(frame)
        async with self._sending:
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise ControlError(f"the CLI went away: {exc}") from None

    async def progress(self, done: int, total: int | None) -> None:
        await self.send({"progress": done, "total": total})

    async def receive_stream(self) -> Any:
        """Yield the `data` frames of an upload until its `end` frame."""
        while True:
            frame = await self.receive()
            if frame.get("end") is True:
                return
            data = frame.get("data")
            if not isinstance(data, bytes):
                raise ControlError("expected a data or end frame")
            yield data

    async def _read_exactly(self, size: int) -> bytes:
        import trio

        while len(self._buffer) < size:
            try:
                chunk = await self._stream.receive_some(max(65536, size - len(self._buffer)))
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise ControlError(f"the CLI went away: {exc}") from None
            if not chunk:
                raise ControlError("the CLI hung up")
            self._buffer += chunk
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
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

    async def _serve(self, sock: Any) -> None:
        import trio

        from protocol.errors import ProtocolError

        stream = trio.SocketStream(sock)
        async with stream:
            if not _peer_allowed(sock, self._allowed_uids):
                logger.warning("control socket: refused a connection from another user")
                return
            channel = ControlChannel(stream)
            try:
                request = await channel.receive()
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


# ----------------------------------------------------------------------- CLI side


class ControlClient:
    """A blocking client of one command (the CLI's side)."""

    def __init__(self, path: Path, *, timeout: float | None = None) -> None:
        self.path = path
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
        self._buffer = bytearray()

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

    def receive(self) -> dict[str, Any]:
        header = self._read_exactly(_HEADER.size)
        (size,) = _HEADER.unpack(header)
        if size > MAX_CONTROL_FRAME:
            raise ControlError(f"control frame of {size} bytes is over the limit")
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

    def _read_exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            try:
                chunk = self._sock.recv(max(65536, size - len(self._buffer)))
            except OSError as exc:
                raise ControlError(f"the node went away: {exc}") from None
            if not chunk:
                raise ControlError("the node closed the control connection")
            self._buffer += chunk
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data
