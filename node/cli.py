"""The `freehold` command line.

`freehold node` runs a node in the foreground. The other commands talk to a running
node through its control socket (`<data-dir>/control.sock`; the data dir comes from
`--data-dir`, else `$FREEHOLD_DATA_DIR`, else the platform's user data directory).

Every known error becomes one line on stderr and a non-zero exit code, in `main()`
only (magic-wormhole's model); a user never sees a traceback for a user error. Heavy
modules (trio, the node) are imported only by the commands that need them, so a
client command starts in a few tens of milliseconds.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import stat
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

__all__ = ["main"]

# Exit codes of `freehold check`.
HEALTHY, DEGRADED, UNREADABLE, CHECK_FAILED = 0, 1, 2, 3
PIECE = 1024 * 1024


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (argparse prints its usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="freehold",
        description="Freehold: peer-to-peer storage that nobody can read, seize or switch off.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="the node's directory (default: $FREEHOLD_DATA_DIR or the user data dir)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    node = commands.add_parser("node", help="run a node in the foreground")
    node.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS)
    node.add_argument("--listen", metavar="HOST:PORT", help="address to listen on")
    node.add_argument(
        "--bootstrap", metavar="HOST:PORT", nargs="+", help="nodes to join the network through"
    )
    node.add_argument("--capacity", metavar="SIZE", help="disk space to donate, e.g. 50GiB")

    put = commands.add_parser("put", help="store a file; prints its read capability")
    put.add_argument("path", help="the file, or - for standard input")
    put.add_argument("--name", help="the name stored (encrypted) with it")

    get = commands.add_parser("get", help="fetch a file by its read capability")
    get.add_argument("capability")
    get.add_argument("-o", "--output", type=Path, help="write here (default: stdout)")

    check = commands.add_parser(
        "check",
        help="count live chunks (exit 0 healthy, 1 degraded, 2 unreadable, 3 check failed)",
    )
    check.add_argument("capability", help="a read or verify capability")

    commands.add_parser("status", help="what the node holds and whom it knows")
    commands.add_parser("peers", help="the nodes in the node's routing table")
    commands.add_parser("stop", help="stop the node")
    # `freehold put --data-dir DIR FILE` works as well as `freehold --data-dir DIR put`.
    for name in ("put", "get", "check", "status", "peers", "stop"):
        commands.choices[name].add_argument(
            "--data-dir", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )

    testnet = commands.add_parser("testnet", help="run N nodes on loopback until Ctrl-C")
    testnet.add_argument("--nodes", type=int, default=10)
    testnet.add_argument("--dir", type=Path, help="where their data dirs go (default: temp)")

    commands.add_parser("demo", help="a 10-node testnet puts, loses 3 nodes and gets a file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    from node.errors import NodeError, single_error
    from protocol.errors import ProtocolError

    # `check` gives 1 and 2 a meaning (degraded, unreadable): its own failures say 3.
    failed = CHECK_FAILED if arguments.command == "check" else 1
    try:
        return _run(arguments)
    except Exception as exc:
        # `freehold node` runs in trio, whose nurseries wrap an error in an ExceptionGroup.
        error = single_error(exc, (NodeError, ProtocolError, OSError))
        if isinstance(error, NodeError | ProtocolError):
            print(f"freehold: {error}", file=sys.stderr)
            return failed
        if isinstance(error, OSError):
            text = f"{error.strerror or error}: {error.filename or ''}".rstrip(": ")
            print(f"freehold: {text}", file=sys.stderr)
            return failed
        raise
    except KeyboardInterrupt:
        print("freehold: interrupted", file=sys.stderr)
        return 130


def _run(arguments: argparse.Namespace) -> int:
    command = arguments.command
    if command == "node":
        return _node(arguments)
    if command == "testnet":
        return _testnet(arguments)
    if command == "demo":
        from node.demo import run_demo

        return run_demo()
    handler: Callable[[argparse.Namespace, Path], int] = {
        "put": _put,
        "get": _get,
        "check": _check,
        "status": _status,
        "peers": _peers,
        "stop": _stop,
    }[command]
    return handler(arguments, _data_dir(arguments))


def _data_dir(arguments: argparse.Namespace) -> Path:
    if arguments.data_dir is not None:
        return Path(arguments.data_dir)
    from node.config import default_data_dir

    return default_data_dir()


# ------------------------------------------------------------------------ the node


def _node(arguments: argparse.Namespace) -> int:
    import logging
    import signal

    import trio

    from node.allocator import tune_allocator
    from node.commands import serve_owner
    from node.config import load_config
    from node.control import check_socket_path
    from node.node import Node

    config = load_config(
        _data_dir(arguments),
        {
            "listen": arguments.listen,
            "bootstrap": arguments.bootstrap,
            "capacity": arguments.capacity,
        },
    )
    logging.basicConfig(
        level="DEBUG" if arguments.verbose else config.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )

    tune_allocator()
    _exit_with_parent()
    with_control = config.storage == "disk"
    if with_control:
        check_socket_path(config.control_path)  # before anything is made or logged

    async def run() -> None:
        # The owner's commands run as a service of the node: they stop with it, before
        # it closes its store.
        node = Node(config, services=[serve_owner] if with_control else [])
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_stop_on_signal, signals, nursery.cancel_scope)
                await node.run()  # returns when `freehold stop` stops it
                nursery.cancel_scope.cancel()

    trio.run(run)
    return 0


def _exit_with_parent() -> None:
    """A testnet's node gets SIGTERM (a clean stop) when the testnet process ends,
    however it ends: killed, or interrupted while it was starting nodes (Linux only)."""
    from node.config import EXIT_WITH_PARENT_ENVIRONMENT

    parent = os.environ.get(EXIT_WITH_PARENT_ENVIRONMENT)
    if not parent or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    from node.errors import NodeError

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if str(os.getppid()) != parent:  # it went before the line above took effect
        raise NodeError("the testnet that started this node has already stopped")


async def _stop_on_signal(signals: Any, scope: Any) -> None:
    import logging

    async for number in signals:
        logging.getLogger("node").info("signal %d: stopping", number)
        scope.cancel()
        return


# --------------------------------------------------------------------- the client


def _client(data_dir: Path, timeout: float | None = 10.0) -> Any:
    from node.control import ControlClient

    return ControlClient(data_dir / "control.sock", timeout=timeout)


def _command(data_dir: Path, name: str, **arguments: Any) -> dict[str, Any]:
    with _client(data_dir, timeout=None) as client:
        client.send({"command": name, "arguments": arguments})
        for frame in client.frames():
            if "result" in frame:
                result: dict[str, Any] = frame["result"]
                return result
    raise AssertionError("unreachable")


def _progress_bar(total: int | None, label: str) -> Any:
    """A tqdm bar on stderr when it is a terminal, else None."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, leave=False)


def _put(arguments: argparse.Namespace, data_dir: Path) -> int:
    path = arguments.path
    if path == "-":
        import tempfile

        # The size must be known before encoding starts (docs/PROTOCOL.md#files): spool
        # standard input to an anonymous temporary file first.
        source: BinaryIO = tempfile.TemporaryFile()  # noqa: SIM115 - closed below
        while block := sys.stdin.buffer.read(PIECE):
            source.write(block)
        size = source.tell()
        source.seek(0)
        name = arguments.name or ""
    else:
        source = open(path, "rb")  # noqa: SIM115 - closed below
        size = os.fstat(source.fileno()).st_size
        name = arguments.name if arguments.name is not None else os.path.basename(path)
    from node.control import regular_file
    from node.errors import ControlError, NodeError

    with source, _client(data_dir, timeout=None) as client:
        bar = _progress_bar(size, "put")
        if regular_file(source.fileno()):
            # The node reads the file itself (node/control.py): no byte crosses the socket.
            client.send({"command": "put", "arguments": {"size": size, "name": name, "fd": True}})
            _send_fd(client, source.fileno())
            result = _drain(client, bar)
            print(result["capability"])
            return 0
        client.send({"command": "put", "arguments": {"size": size, "name": name}})
        sent = 0
        try:
            while block := source.read(PIECE):
                client.send_data(block)
                sent += len(block)
            if sent == size:
                client.send({"end": True})
        except ControlError:
            # The node stopped reading because the put failed (a full network, say):
            # its error frame is waiting to be read, and says more than "broken pipe".
            pass
        else:
            if sent != size:
                raise NodeError(f"{path} changed size while it was read")
        result = _drain(client, bar)
    print(result["capability"])
    return 0


def _send_fd(client: Any, fd: int) -> None:
    """Hand `fd` to the node; if it already hung up (it refused the command), its
    error frame, read next, says why better than "broken pipe" would."""
    from node.errors import ControlError

    with contextlib.suppress(ControlError):
        client.send_fd(fd)


def _drain(client: Any, bar: Any, write: Callable[[bytes], object] | None = None) -> Any:
    try:
        for frame in client.frames():
            if "progress" in frame and bar is not None:
                bar.n = frame["progress"]
                bar.refresh()
            elif "data" in frame and write is not None:
                write(frame["data"])
            elif "result" in frame:
                return frame["result"]
    finally:
        if bar is not None:
            bar.close()
    raise AssertionError("unreachable")


def _get(arguments: argparse.Namespace, data_dir: Path) -> int:
    from node.errors import NodeError
    from protocol.capability import VerifyCapability, parse_capability

    capability = parse_capability(arguments.capability)  # fail early, before any dial
    if isinstance(capability, VerifyCapability):
        raise NodeError(
            "this is a verify capability: it can check and repair the file but not read "
            "it; get needs the read capability (with the #key part)"
        )
    if arguments.output is None:
        out = sys.stdout.buffer
        out.flush()
        _fetch_into(data_dir, arguments.capability, out.fileno(), out.write)
        out.flush()
        return 0
    output: Path = arguments.output
    try:
        existing: os.stat_result | None = os.stat(output)  # through every link
    except FileNotFoundError:
        existing = None  # a new file (or a link to one still to be made)
    except OSError as exc:  # a loop of links, a directory we may not search, ...
        raise NodeError(f"cannot write to {output}: {exc.strerror or exc}") from None
    if existing is not None and stat.S_ISDIR(existing.st_mode):
        raise NodeError(f"cannot write to {output}: it is a directory")
    if (existing is not None and not stat.S_ISREG(existing.st_mode)) or str(output).startswith(
        ("/dev/", "/proc/")
    ):
        # A FIFO, a terminal, a device, or a descriptor named as /dev/stdout, /dev/fd/N or
        # /proc/self/fd/N: written as the bytes come, as to stdout, never replaced.
        with open(output, "wb") as file:
            _fetch_into(data_dir, arguments.capability, file.fileno(), file.write)
        return 0
    # A regular file appears whole or not at all: written beside it, then renamed; through
    # a symlink, the file it names is replaced (as cp writes through one) and the link
    # stays. An existing file keeps its permissions.
    target = Path(os.path.realpath(output))
    if not target.parent.is_dir():
        raise NodeError(f"cannot write to {output}: there is no directory {target.parent}")
    temporary = target.with_name(f".{target.name}.freehold-partial")
    _stop_on_sigterm()  # so that the partial file, plaintext, is removed below
    try:
        try:
            file = open(temporary, "wb")  # noqa: SIM115 (closed below, before the rename)
            if existing is not None:
                os.fchmod(file.fileno(), stat.S_IMODE(existing.st_mode))
        except OSError as exc:
            raise NodeError(f"cannot write to {output}: {exc.strerror or exc}") from None
        with file:
            _fetch_into(data_dir, arguments.capability, file.fileno(), file.write)
        os.replace(temporary, target)
    finally:
        with contextlib.suppress(OSError):  # never hides the error that got us here
            temporary.unlink(missing_ok=True)
    return 0


def _stop_on_sigterm() -> None:
    """Make SIGTERM end the command as Ctrl-C does, with its clean-up (finally blocks)."""
    import signal

    def interrupt(number: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def _fetch_into(data_dir: Path, capability: str, fd: int, write: Callable[[bytes], object]) -> None:
    """Have the node get the file into `fd`: by descriptor, so the node writes it
    itself, when it is a regular file; else streamed here and given to `write`."""
    from node.control import regular_file

    with _client(data_dir, timeout=None) as client:
        bar = _progress_bar(None, "get")
        if regular_file(fd):
            client.send({"command": "get", "arguments": {"capability": capability, "fd": True}})
            _send_fd(client, fd)
            _drain(client, bar)
        else:
            client.send({"command": "get", "arguments": {"capability": capability}})
            _drain(client, bar, write)


def _check(arguments: argparse.Namespace, data_dir: Path) -> int:
    result = _command(data_dir, "check", capability=arguments.capability)
    k, n = result["k"], result["n"]
    live = result["live_chunks"]
    print(f"manifest: {result['manifest_holders']} holder(s)")
    for index, count in enumerate(live):
        state = "ok" if count >= n else ("degraded" if count >= k else "UNREADABLE")
        print(f"segment {index}: {count}/{n} chunks live (need {k}) {state}")
    if result["healthy"]:
        print("healthy")
        return HEALTHY
    if result["readable"]:
        print("degraded but readable")
        return DEGRADED
    print("unreadable")
    return UNREADABLE


def _status(arguments: argparse.Namespace, data_dir: Path) -> int:
    from node.config import format_size

    result = _command(data_dir, "status")
    print(f"node id:     {result['node_id']}")
    print(f"listening:   {result['listen']}")
    print(f"data dir:    {result['data_dir']}")
    print(f"contacts:    {result['contacts']} ({result['connections']} connected)")
    print(
        f"stored:      {result['chunks']} chunks, {format_size(result['used_bytes'])} of "
        f"{format_size(result['capacity'])}"
    )
    return 0


def _peers(arguments: argparse.Namespace, data_dir: Path) -> int:
    result = _command(data_dir, "peers")
    for peer in result["peers"]:
        mark = "*" if peer["connected"] else " "
        print(f"{mark} {peer['node_id']} {peer['address']}")
    return 0


def _stop(arguments: argparse.Namespace, data_dir: Path) -> int:
    _command(data_dir, "stop")
    print("stopping")
    return 0


# ----------------------------------------------------------------------- testnet


def _testnet(arguments: argparse.Namespace) -> int:
    import tempfile
    import time

    from node.errors import NodeError
    from node.testnet import open_testnet, wait_until_joined

    if arguments.nodes < 1:
        raise NodeError("--nodes must be at least 1")

    _stop_on_sigterm()  # SIGTERM stops the nodes too, as Ctrl-C does
    directory = arguments.dir or Path(tempfile.mkdtemp(prefix="freehold-testnet-"))
    with open_testnet(arguments.nodes, directory) as testnet:
        wait_until_joined(testnet)
        for node in testnet.nodes:
            print(f"node {node.index:2d}  {node.address:21s}  {node.data_dir}")
        print(
            f"{len(testnet.nodes)} nodes running; use e.g. "
            f"`freehold --data-dir {testnet.nodes[0].data_dir} put FILE`. Ctrl-C stops them."
        )
        sys.stdout.flush()
        # A node that stops (`freehold stop`, a crash, a kill) is reported; the others
        # run on until Ctrl-C, so losing nodes can be tried, as the demo does.
        reported: set[int] = set()
        try:
            while len(reported) < len(testnet.nodes):
                for node in testnet.nodes:
                    if node.index not in reported and not node.alive:
                        reported.add(node.index)
                        left = len(testnet.nodes) - len(reported)
                        print(
                            f"node {node.index} stopped (exit code {node.process.returncode}); "
                            f"{left} still running",
                            file=sys.stderr,
                            flush=True,
                        )
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
