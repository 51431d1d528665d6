"""The control socket's commands: `freehold put`, `get`, `check`, `repair`, `keep`,
`forget`, `ls`, `status`, `peers`, `stop`.

Each handler turns a command's arguments (node/control.py's frames) into a call on the
node's `Owner` (node/owner.py), and its result into the map the CLI prints. The files
the CLI hands over by descriptor are read and written here, in worker threads; their
errors (a full disk, a quota, a bad sector) become one-line `NodeError`s, never a
traceback. `serve_owner` is what `freehold node` runs beside its node: the control
socket, and the address file a testnet reads to learn the port the kernel chose.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import trio

from node.control import CommandHandler, ControlChannel, ControlServer, regular_file
from node.errors import NodeError
from node.node import Node
from node.owner import Owner
from node.writeback import StreamingWriter
from protocol.capability import ReadCapability, VerifyCapability, parse_capability

__all__ = ["UserFile", "command_handlers", "received_file", "serve_owner", "write_all"]


async def serve_owner(
    node: Node, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve `node`'s control socket (its data directory's `control.sock`) until
    cancelled, and write its address file once serving. A `Service` of the node
    (`Node(config, services=[serve_owner])`): it runs in the node's nursery, so its
    commands stop with the node, before the store closes."""
    transport = node.transport
    if transport is None or transport.address is None:
        raise NodeError("the node is not running")
    host, port = transport.address
    config = node.config
    server = ControlServer(config.control_path, command_handlers(Owner(node)))
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        _write_atomically(config.address_path, f"{host}:{port}\n")
        task_status.started()


def command_handlers(owner: Owner) -> Mapping[str, CommandHandler]:
    """The commands the control socket serves, by name."""
    return {
        "put": partial(_put, owner),
        "get": partial(_get, owner),
        "check": partial(_check, owner),
        "repair": partial(_repair, owner),
        "keep": partial(_keep, owner),
        "forget": partial(_forget, owner),
        "ls": partial(_ls, owner),
        "status": partial(_status, owner),
        "peers": partial(_peers, owner),
        "stop": partial(_stop, owner),
    }


# ------------------------------------------------------------------------ commands


async def _put(
    owner: Owner, channel: ControlChannel, arguments: dict[str, Any]
) -> Mapping[str, Any]:
    size = arguments.get("size")
    name = arguments.get("name", "")
    if not isinstance(size, int) or size < 0 or not isinstance(name, str):
        raise NodeError("put needs a size (bytes) and a name")
    started = trio.current_time()

    async def progress(done: int, total: int) -> None:
        await channel.progress(done, total)

    if arguments.get("fd") is True:
        with received_file(await channel.receive_fd(), "rb") as source:
            size = os.fstat(source.fileno()).st_size
            capability = await owner.put(UserFile(source), size=size, name=name, progress=progress)
    else:
        # The stream's blocks go to the encoder as they come, in the event loop.
        stream = channel.receive_stream()
        capability = await owner.put(stream, size=size, name=name, progress=progress)
    return {"capability": str(capability), "size": size, "seconds": trio.current_time() - started}


async def _get(
    owner: Owner, channel: ControlChannel, arguments: dict[str, Any]
) -> Mapping[str, Any]:
    capability = _read_capability(arguments.get("capability"))
    started = trio.current_time()

    async def progress(done: int, total: int) -> None:
        await channel.progress(done, total)

    if arguments.get("fd") is True:
        with received_file(await channel.receive_fd(), "wb") as output:
            writer = StreamingWriter(output)

            async def write_file(data: memoryview) -> None:
                await trio.to_thread.run_sync(write_all, writer, data)

            info = await owner.get(capability, write_file, progress=progress)
    else:
        info = await owner.get(capability, channel.send_data, progress=progress)
    return {"name": info.name, "size": info.size, "seconds": trio.current_time() - started}


async def _check(
    owner: Owner, channel: ControlChannel, arguments: dict[str, Any]
) -> Mapping[str, Any]:
    text = arguments.get("capability")
    full = arguments.get("full", False)
    if not isinstance(text, str) or not isinstance(full, bool):
        raise NodeError("check needs a capability (and full: true or false)")
    report = await owner.check(parse_capability(text), full=full)
    return report.summary()


async def _repair(
    owner: Owner, channel: ControlChannel, arguments: dict[str, Any]
) -> Mapping[str, Any]:
    capability = _capability(arguments, "repair")
    report = await owner.repair(capability)
    return {
        "k": report.k,
        "n": report.n,
        "found": report.found,
        "manifest_copies_added": report.manifest_copies_added,
        "segments": [
            {
                "index": segment.index,
                "live_before": segment.live_before,
                "rebuilt": segment.rebuilt,
                "live_after": segment.live_after,
                "problem": segment.problem,
            }
            for segment in report.segments
        ],
        "bytes_fetched": report.bytes_fetched,
        "bytes_stored": report.bytes_stored,
        "readable": report.readable,
        "healthy": report.healthy,
    }


async def _keep(
    owner: Owner, channel: ControlChannel, arguments: dict[str, Any]
) -> Mapping[str, Any]:
    capability = _capability(arguments, "keep")
    return await owner.keep(capability)


async def _forget(
    owner: Owner, channel: ControlChannel, arguments: dict[str, Any]
) -> Mapping[str, Any]:
    capability = _capability(arguments, "forget")
    released = await owner.forget(capability)
    return {
        "known": released.known,
        "reachable": released.reachable,
        "chunks": released.chunks,
        "released": released.released,
    }


async def _ls(
    owner: Owner, channel: ControlChannel, arguments: dict[str, Any]
) -> Mapping[str, Any]:
    return {"files": owner.files()}


async def _status(
    owner: Owner, channel: ControlChannel, arguments: dict[str, Any]
) -> Mapping[str, Any]:
    return owner.status()


async def _peers(
    owner: Owner, channel: ControlChannel, arguments: dict[str, Any]
) -> Mapping[str, Any]:
    return {"peers": owner.peers(), "liars": owner.liars()}


async def _stop(
    owner: Owner, channel: ControlChannel, arguments: dict[str, Any]
) -> Mapping[str, Any]:
    # The answer goes out first; then the whole node stops (this task with it).
    await channel.send({"result": {"stopping": True}})
    owner.node.stop()
    await trio.lowlevel.checkpoint()
    return {"stopping": True}


def _capability(arguments: dict[str, Any], command: str) -> ReadCapability | VerifyCapability:
    """The command's `capability` argument, read or verify."""
    text = arguments.get("capability")
    if not isinstance(text, str):
        raise NodeError(f"{command} needs a capability")
    return parse_capability(text)


def _read_capability(text: object) -> ReadCapability:
    if not isinstance(text, str):
        raise NodeError("get needs a capability")
    capability = parse_capability(text)
    if isinstance(capability, VerifyCapability):
        raise NodeError(
            "this is a verify capability: it can check and repair the file but not read "
            "it; get needs the read capability (with the #key part)"
        )
    return capability


# ------------------------------------------------------------- the CLI's own files


def received_file(fd: int, mode: str) -> Any:
    """The file object of a descriptor the CLI sent (unbuffered: the node's writes land
    in the file as they are made); NodeError, closing it, unless it is a regular file."""
    if not regular_file(fd):
        os.close(fd)
        raise NodeError("the node reads and writes only regular files by descriptor")
    return open(fd, mode, buffering=0)


@contextmanager
def _user_file_errors(doing: str) -> Iterator[None]:
    """An OSError of the file the CLI handed over (a full disk, a quota, a bad sector)
    becomes NodeError: the CLI's one line, not a node bug with a traceback."""
    try:
        yield
    except OSError as exc:
        raise NodeError(f"cannot {doing}: {exc.strerror or exc}") from None


def write_all(writer: StreamingWriter, data: memoryview) -> None:
    """Write all of `data` to the CLI's output file."""
    with _user_file_errors("write the output"):
        writer.write(data)


class UserFile:
    """The file the CLI handed over for a put, as the encoder reads it."""

    def __init__(self, file: Any) -> None:
        self._file = file

    def readinto(self, buffer: Any) -> int | None:
        with _user_file_errors("read the file"):
            got: int | None = self._file.readinto(buffer)
        return got

    def read(self, size: int = -1) -> bytes:
        with _user_file_errors("read the file"):
            data: bytes = self._file.read(size)
        return data


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
