"""The control socket: a trio `ControlServer` and the blocking `ControlClient` the CLI
uses, in one process over a real Unix socket (the client runs in a worker thread)."""

from __future__ import annotations

import logging
import os
import re
import select
import shutil
import socket
import stat
import struct
import tempfile
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
import trio.testing

from node.control import (
    DATA_PIECE,
    MAX_CONTROL_CLIENTS,
    MAX_CONTROL_FRAME,
    ControlChannel,
    ControlClient,
    ControlServer,
)
from node.errors import CommandFailed, ControlError, NodeError, NodeNotRunning
from protocol.errors import MalformedCapability

# Every test ends well within this; a hang fails instead of stalling CI.
TEST_TIMEOUT = 10.0
CLIENT_TIMEOUT = 5.0
# sun_path holds 108 bytes on Linux (104 on the BSDs), terminator included.
MAX_SOCKET_PATH = 100


@pytest.fixture
def directory(tmp_path: Path) -> Iterator[Path]:
    """A data directory whose control socket path is short enough to bind."""
    if len(str(tmp_path / "control.sock")) < MAX_SOCKET_PATH:
        yield tmp_path
        return
    short = Path(tempfile.mkdtemp(prefix="fh-", dir="/tmp"))
    try:
        yield short
    finally:
        shutil.rmtree(short, ignore_errors=True)


async def echo(channel: ControlChannel, arguments: dict[str, Any]) -> Mapping[str, Any]:
    return {"echo": arguments}


async def upload(channel: ControlChannel, arguments: dict[str, Any]) -> Mapping[str, Any]:
    """Like put: reads a stream, reports progress, answers with what it got."""
    received = bytearray()
    async for data in channel.receive_stream():
        received += data
        await channel.progress(len(received), arguments.get("size"))
    return {"received": bytes(received)}


async def download(channel: ControlChannel, arguments: dict[str, Any]) -> Mapping[str, Any]:
    """Like get: streams data frames before the result."""
    for piece in (b"one", b"two"):
        await channel.send({"data": piece})
    return {"pieces": 2}


async def download_raw(channel: ControlChannel, arguments: dict[str, Any]) -> Mapping[str, Any]:
    """Like get: streams `size` bytes (a pattern) in raw data frames, then the result."""
    size = arguments["size"]
    await channel.send_data(bytes(index % 251 for index in range(size)))
    return {"size": size}


async def by_descriptor(channel: ControlChannel, arguments: dict[str, Any]) -> Mapping[str, Any]:
    """Like put and get by descriptor: reads the file the CLI sent, then appends to it."""
    fd = await channel.receive_fd()
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        content = os.read(fd, 1024)
        os.write(fd, b"+node")
    finally:
        os.close(fd)
    return {"read": content}


async def report(channel: ControlChannel, arguments: dict[str, Any]) -> Mapping[str, Any]:
    """Sends progress from several tasks at once, as a parallel upload does."""
    async with trio.open_nursery() as nursery:
        for task in range(8):
            for step in range(25):
                nursery.start_soon(channel.progress, task * 100 + step, None)
    return {}


async def refuse(channel: ControlChannel, arguments: dict[str, Any]) -> Mapping[str, Any]:
    raise NodeError("the network is full")


async def refuse_in_nursery(
    channel: ControlChannel, arguments: dict[str, Any]
) -> Mapping[str, Any]:
    """Raises its NodeError from a child task, as put_file and get_file do."""

    async def fail(index: int) -> None:
        raise NodeError(f"segment {index}: 2 of the 3 chunks needed could be fetched")

    async with trio.open_nursery() as nursery:
        for index in range(arguments.get("tasks", 1)):
            nursery.start_soon(fail, index)
    return {}


async def malformed(channel: ControlChannel, arguments: dict[str, Any]) -> Mapping[str, Any]:
    raise MalformedCapability("no scheme: a capability starts with 'freehold:'")


async def crash(channel: ControlChannel, arguments: dict[str, Any]) -> Mapping[str, Any]:
    raise RuntimeError("a bug")


HANDLERS = {
    "echo": echo,
    "upload": upload,
    "download": download,
    "download_raw": download_raw,
    "by_descriptor": by_descriptor,
    "report": report,
    "refuse": refuse,
    "refuse_in_nursery": refuse_in_nursery,
    "malformed": malformed,
    "crash": crash,
}


@asynccontextmanager
async def serving(path: Path, **options: Any) -> AsyncIterator[ControlServer]:
    server = ControlServer(path, HANDLERS, **options)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        yield server
        nursery.cancel_scope.cancel()


def run_command(path: Path, name: str, **arguments: Any) -> list[dict[str, Any]]:
    """Every frame the node sends for one command (blocking, as the CLI does)."""
    with ControlClient(path, timeout=CLIENT_TIMEOUT) as client:
        client.send({"command": name, "arguments": arguments})
        return list(client.frames())


async def command(path: Path, name: str, **arguments: Any) -> list[dict[str, Any]]:
    return await trio.to_thread.run_sync(lambda: run_command(path, name, **arguments))


def send_raw_and_read_until_closed(path: Path, data: bytes) -> bytes:
    """Send `data` as it is and hang up, then read until the node closes too."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(CLIENT_TIMEOUT)
        sock.connect(str(path))
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


async def test_socket_is_mode_0600_in_a_private_directory(directory: Path) -> None:
    """The socket is 0600 and its directory loses group and other permissions."""
    os.chmod(directory, 0o755)
    path = directory / "control.sock"
    with trio.fail_after(TEST_TIMEOUT):
        async with serving(path):
            assert stat.S_ISSOCK(os.lstat(path).st_mode)
            assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
            assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
            assert await command(path, "echo", x=1) == [{"result": {"echo": {"x": 1}}}]
    assert not path.exists()  # removed when the server stops


async def test_stale_socket_of_a_killed_node_is_replaced(directory: Path) -> None:
    """A socket file nobody listens on (left by a SIGKILLed node) is replaced."""
    path = directory / "control.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    assert path.exists()
    with pytest.raises(NodeNotRunning, match="no node is running"):
        ControlClient(path, timeout=CLIENT_TIMEOUT)
    with trio.fail_after(TEST_TIMEOUT):
        async with serving(path):
            assert await command(path, "echo") == [{"result": {"echo": {}}}]


async def test_second_server_on_the_same_socket_fails_clearly(directory: Path) -> None:
    """A second node on a data dir whose node is running fails saying so, and the first
    keeps serving."""
    path = directory / "control.sock"
    with trio.fail_after(TEST_TIMEOUT):
        async with serving(path), trio.open_nursery() as nursery:
            with pytest.raises(NodeError, match="another node is already running"):
                await nursery.start(ControlServer(path, HANDLERS).run)
            assert path.exists()
            assert await command(path, "echo") == [{"result": {"echo": {}}}]


async def test_no_server_means_node_not_running(directory: Path) -> None:
    """Connecting where no socket exists says that no node is running, and where."""
    path = directory / "control.sock"
    with pytest.raises(NodeNotRunning, match=f"no node is running .*{path}"):
        ControlClient(path, timeout=CLIENT_TIMEOUT)


async def test_unknown_command_gives_an_error_frame(directory: Path) -> None:
    """A command the node has no handler for is answered with a one-line error."""
    path = directory / "control.sock"
    with trio.fail_after(TEST_TIMEOUT):
        async with serving(path):
            with pytest.raises(CommandFailed, match="unknown command 'format_disk'"):
                await command(path, "format_disk")
            frames = await trio.to_thread.run_sync(
                send_raw_and_read_until_closed,
                path,
                frame(msgpack.packb({"command": 7})),
            )
            assert msgpack.unpackb(frames[4:]) == {"error": "unknown command 7"}


@pytest.mark.parametrize(
    ("data", "answered"),
    [
        (frame(b"\xc1"), True),  # never valid msgpack
        (frame(msgpack.packb([1, 2, 3])), True),  # msgpack, but not a map
        (frame(msgpack.packb({1: 2})), True),  # a map with a non-string key
        (struct.pack(">I", MAX_CONTROL_FRAME + 1), True),  # over the limit, before any body
        (b"\x00\x00", False),  # half a header
        (struct.pack(">I", 10) + b"\x81", False),  # a header promising more than is sent
        (struct.pack(">I", 0x8000_0000 | (MAX_CONTROL_FRAME + 1)), True),  # oversized data
        (struct.pack(">I", 0x8000_0000 | 10) + b"abc", False),  # a data frame cut short
    ],
    ids=[
        "not-msgpack",
        "not-a-map",
        "int-key",
        "oversized",
        "half-header",
        "short-body",
        "oversized-data",
        "short-data",
    ],
)
async def test_malformed_frame_closes_only_that_connection(
    directory: Path, data: bytes, answered: bool
) -> None:
    """A malformed or oversized frame is answered with one error frame saying so, and
    its connection closed (a frame cut short by a hang-up has nobody to answer); the
    server keeps serving other connections."""
    path = directory / "control.sock"
    with trio.fail_after(TEST_TIMEOUT):
        async with serving(path):
            answer = await trio.to_thread.run_sync(send_raw_and_read_until_closed, path, data)
            if answered:
                (size,) = struct.unpack(">I", answer[:4])
                reply = msgpack.unpackb(answer[4 : 4 + size])
                assert len(answer) == 4 + size
                assert reply["error"].startswith("bad request: ")
            else:
                assert answer == b""
            assert await command(path, "echo") == [{"result": {"echo": {}}}]


async def idle_connection(path: Path) -> trio.SocketStream:
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.connect(str(path))
    return trio.SocketStream(sock)


async def read_to_end(stream: trio.SocketStream) -> bytes:
    received = b""
    while chunk := await stream.receive_some(65536):
        received += chunk
    return received


def only_error(data: bytes) -> str:
    (size,) = struct.unpack(">I", data[:4])
    assert len(data) == 4 + size
    error: str = msgpack.unpackb(data[4:])["error"]
    return error


async def test_idle_and_surplus_connections_are_closed_saying_why(
    directory: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Connections that send no command are closed after COMMAND_TIMEOUT, with an error
    frame; past MAX_CONTROL_CLIENTS at once, one more is told the node is busy; both
    are counted, and the server serves again once they are gone."""
    path = directory / "control.sock"
    async with serving(path) as server:
        idle = [await idle_connection(path) for _ in range(MAX_CONTROL_CLIENTS)]
        await trio.sleep(1)
        assert server.clients == MAX_CONTROL_CLIENTS
        surplus = await idle_connection(path)
        assert "busy" in only_error(await read_to_end(surplus))
        assert server.refused == 1
        for stream in idle:
            assert "no command within" in only_error(await read_to_end(stream))
        assert (server.clients, server.timed_out) == (0, MAX_CONTROL_CLIENTS)
        answer = await idle_connection(path)
        await answer.send_all(frame(msgpack.packb({"command": "echo", "arguments": {}})))
        assert msgpack.unpackb((await read_to_end(answer))[4:]) == {"result": {"echo": {}}}


async def test_client_rejects_an_oversized_frame_from_the_node(directory: Path) -> None:
    """The CLI refuses a frame header over the limit instead of buffering it."""
    path = directory / "control.sock"

    async def serve_one(listener: trio.SocketListener) -> None:
        stream = await listener.accept()
        async with stream:
            await stream.send_all(struct.pack(">I", MAX_CONTROL_FRAME + 1))
            await trio.sleep_forever()

    def receive() -> None:
        with ControlClient(path, timeout=CLIENT_TIMEOUT) as client:
            client.receive()

    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(str(path))
    sock.listen(1)
    with trio.fail_after(TEST_TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_one, trio.SocketListener(sock))
            with pytest.raises(ControlError, match="over the limit"):
                await trio.to_thread.run_sync(receive)
            nursery.cancel_scope.cancel()


async def test_node_errors_become_one_line_error_frames(directory: Path) -> None:
    """A handler's NodeError or ProtocolError, raised directly or from child tasks (one
    or several at once), reaches the CLI as one error's message on one line."""
    path = directory / "control.sock"
    with trio.fail_after(TEST_TIMEOUT):
        async with serving(path):
            with pytest.raises(CommandFailed) as caught:
                await command(path, "refuse")
            assert str(caught.value) == "the network is full"
            with pytest.raises(CommandFailed) as caught:
                await command(path, "refuse_in_nursery")
            assert str(caught.value) == "segment 0: 2 of the 3 chunks needed could be fetched"
            with pytest.raises(CommandFailed) as caught:
                await command(path, "refuse_in_nursery", tasks=3)
            assert re.fullmatch(
                r"segment [012]: 2 of the 3 chunks needed could be fetched", str(caught.value)
            )
            with pytest.raises(CommandFailed) as caught:
                await command(path, "malformed")
            assert str(caught.value) == "no scheme: a capability starts with 'freehold:'"


async def test_handler_bug_is_an_internal_error_and_the_server_goes_on(
    directory: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An unexpected exception is logged with its traceback, reported as an internal
    error, and the server keeps serving."""
    path = directory / "control.sock"
    with trio.fail_after(TEST_TIMEOUT), caplog.at_level(logging.ERROR, "node.control"):
        async with serving(path):
            with pytest.raises(CommandFailed, match="internal error: RuntimeError"):
                await command(path, "crash")
            assert await command(path, "echo") == [{"result": {"echo": {}}}]
    assert any(record.exc_info for record in caplog.records)


async def test_streams_both_ways(directory: Path) -> None:
    """An upload's data frames reach the handler up to `end`, progress frames reach the
    client, and a download's data frames come before its result."""
    path = directory / "control.sock"

    def put() -> list[dict[str, Any]]:
        with ControlClient(path, timeout=CLIENT_TIMEOUT) as client:
            client.send({"command": "upload", "arguments": {"size": 6}})
            client.send({"data": b"abc"})
            client.send({"data": b"def"})
            client.send({"end": True})
            return list(client.frames())

    with trio.fail_after(TEST_TIMEOUT):
        async with serving(path):
            assert await trio.to_thread.run_sync(put) == [
                {"progress": 3, "total": 6},
                {"progress": 6, "total": 6},
                {"result": {"received": b"abcdef"}},
            ]
            assert await command(path, "download") == [
                {"data": b"one"},
                {"data": b"two"},
                {"result": {"pieces": 2}},
            ]


async def test_raw_data_frames_both_ways(directory: Path) -> None:
    """send_data streams bytes (more than one frame's worth, and none) as raw data
    frames, which the other side reads as {"data": ...} maps, in order and whole."""
    path = directory / "control.sock"
    size = 2 * DATA_PIECE + 12345
    pattern = bytes(index % 251 for index in range(size))

    def put() -> list[dict[str, Any]]:
        with ControlClient(path, timeout=CLIENT_TIMEOUT) as client:
            client.send({"command": "upload", "arguments": {"size": size}})
            client.send_data(memoryview(pattern)[: DATA_PIECE + 1])
            client.send_data(b"")
            client.send_data(memoryview(pattern)[DATA_PIECE + 1 :])
            client.send({"end": True})
            return list(client.frames())

    with trio.fail_after(TEST_TIMEOUT):
        async with serving(path):
            frames = await trio.to_thread.run_sync(put)
            assert frames[-1] == {"result": {"received": pattern}}
            # One progress frame per data frame: the first send_data made two.
            assert [each["progress"] for each in frames[:-1]] == [
                DATA_PIECE,
                DATA_PIECE + 1,
                2 * DATA_PIECE + 1,
                size,
            ]
            frames = await command(path, "download_raw", size=size)
            assert frames[-1] == {"result": {"size": size}}
            assert [len(each["data"]) for each in frames[:-1]] == [
                DATA_PIECE,
                DATA_PIECE,
                12345,
            ]
            assert b"".join(each["data"] for each in frames[:-1]) == pattern


async def test_a_file_descriptor_reaches_the_handler(directory: Path, tmp_path: Path) -> None:
    """An open file sent with send_fd is the node's to read and write; the client sees
    what the node wrote through its own descriptor."""
    path = directory / "control.sock"
    target = tmp_path / "file.bin"
    target.write_bytes(b"from the CLI")

    def run() -> list[dict[str, Any]]:
        with open(target, "r+b") as file, ControlClient(path, timeout=CLIENT_TIMEOUT) as client:
            client.send({"command": "by_descriptor", "arguments": {"fd": True}})
            client.send_fd(file.fileno())
            return list(client.frames())

    with trio.fail_after(TEST_TIMEOUT):
        async with serving(path):
            frames = await trio.to_thread.run_sync(run)
    assert frames == [{"result": {"read": b"from the CLI"}}]
    assert target.read_bytes() == b"from the CLI+node"


@pytest.mark.parametrize(
    "after", [msgpack.packb({"end": True}), b"F", b""], ids=["a-frame", "no-descriptor", "eof"]
)
async def test_a_missing_descriptor_closes_only_that_connection(
    directory: Path, after: bytes
) -> None:
    """A command that promises a descriptor and sends something else (or nothing) is
    closed without an answer; the server goes on."""
    path = directory / "control.sock"
    request = frame(msgpack.packb({"command": "by_descriptor", "arguments": {"fd": True}}))
    with trio.fail_after(TEST_TIMEOUT):
        async with serving(path):
            try:
                answer = await trio.to_thread.run_sync(
                    send_raw_and_read_until_closed, path, request + after
                )
            except ConnectionResetError:
                # Closed with bytes of ours still unread: the kernel resets instead.
                answer = b""
            assert answer == b""
            assert await command(path, "echo") == [{"result": {"echo": {}}}]


async def test_a_command_refused_before_its_descriptor_still_says_why(
    directory: Path, tmp_path: Path
) -> None:
    """The node refuses a command before taking the descriptor it promised, and may
    hang up before the CLI sends it: the CLI still reports the node's own message."""
    from node.cli_client import _send_fd

    path = directory / "control.sock"
    target = tmp_path / "file.bin"
    target.write_bytes(b"x")

    def run(wait_for_hang_up: bool) -> None:
        with open(target, "rb") as file, ControlClient(path, timeout=CLIENT_TIMEOUT) as client:
            client.send({"command": "refuse", "arguments": {"fd": True}})
            if wait_for_hang_up:
                poll = select.poll()
                poll.register(client._sock, select.POLLRDHUP)
                assert poll.poll(CLIENT_TIMEOUT * 1000)
            _send_fd(client, file.fileno())
            list(client.frames())

    with trio.fail_after(TEST_TIMEOUT):
        async with serving(path):
            for wait_for_hang_up in (False, True):
                with pytest.raises(CommandFailed, match="the network is full"):
                    await trio.to_thread.run_sync(run, wait_for_hang_up)


async def test_a_cancelled_receive_fd_leaks_no_descriptor() -> None:
    """Cancelled just as the descriptor arrives, receive_fd either returns it (the
    caller's to close) or never took it: no descriptor is left open either way."""

    def open_descriptors() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = open_descriptors()
    for _ in range(50):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        reading, writing = os.pipe()
        socket.send_fds(theirs, [b"F"], [reading])  # already waiting when we receive
        os.close(reading)
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
        received: list[int] = []
        with trio.CancelScope() as scope:

            async def cancel() -> None:
                scope.cancel()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(cancel)
                received.append(await ControlChannel(stream).receive_fd())
        for fd in received:
            os.close(fd)
        await stream.aclose()
        theirs.close()
        os.close(writing)
    assert open_descriptors() == before


def test_the_node_takes_only_regular_files_by_descriptor(tmp_path: Path) -> None:
    """A pipe (or terminal, or socket) sent as a descriptor is refused with a clear
    error and closed; a regular file is taken."""
    from node.commands import received_file

    reading, writing = os.pipe()
    try:
        with pytest.raises(NodeError, match="only regular files"):
            received_file(reading, "rb")
        with pytest.raises(OSError):
            os.fstat(reading)  # closed by the refusal
    finally:
        os.close(writing)
    (tmp_path / "f").write_bytes(b"x")
    with received_file(os.open(tmp_path / "f", os.O_RDONLY), "rb") as file:
        assert file.read() == b"x"


async def test_frames_sent_from_several_tasks_arrive_whole(directory: Path) -> None:
    """Progress frames sent by concurrent tasks of one handler each arrive intact."""
    path = directory / "control.sock"
    with trio.fail_after(TEST_TIMEOUT):
        async with serving(path):
            frames = await command(path, "report")
    assert frames[-1] == {"result": {}}
    done = sorted(frame["progress"] for frame in frames[:-1])
    assert done == sorted(task * 100 + step for task in range(8) for step in range(25))


async def test_connection_from_a_user_not_allowed_is_closed_unanswered(
    directory: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A peer whose uid (SO_PEERCRED) is not allowed gets no answer; the default allows
    our own uid."""
    if not hasattr(socket, "SO_PEERCRED"):
        pytest.skip("no SO_PEERCRED on this platform")
    path = directory / "control.sock"
    other_uid = os.getuid() + 4242
    with trio.fail_after(TEST_TIMEOUT), caplog.at_level(logging.WARNING, "node.control"):
        async with serving(path, allowed_uids={other_uid}):
            with pytest.raises(ControlError, match=r"the node (closed|went away)"):
                await command(path, "echo")
        assert "another user" in caplog.text
        async with serving(path):
            assert await command(path, "echo") == [{"result": {"echo": {}}}]
