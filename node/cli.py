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
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, NoReturn

__all__ = ["main"]

from node.cli_client import CHECK_FAILED


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (argparse prints its usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


# The commands that talk to a running node, and those of them with a --json form.
CLIENT_COMMANDS: Final = (
    "put",
    "get",
    "check",
    "repair",
    "keep",
    "forget",
    "ls",
    "status",
    "peers",
    "stop",
)
JSON_COMMANDS: Final = CLIENT_COMMANDS


def _global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """-v, --data-dir and --json, on the top parser (with their defaults) and on every
    command (suppressed when absent, so that the top parser's value stands): each may
    come before or after the command."""
    hidden = {} if top else {"default": argparse.SUPPRESS}
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="freehold node and testnet: log debug detail (default: INFO and up)",
        **hidden,  # type: ignore[arg-type]
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="the node's directory (default: $FREEHOLD_DATA_DIR, else the platform's user "
        "data dir, e.g. ~/.local/share/freehold)",
        **hidden,  # type: ignore[arg-type]
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the result as one JSON object on stdout (client commands; shapes in "
        "README.md#json-output)",
        **hidden,  # type: ignore[arg-type]
    )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"freehold {version('freehold')}"
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "freehold (version unknown: not installed)"


class _Version(argparse.Action):
    """--version: looked up only when asked (importlib.metadata costs milliseconds)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        print(_version())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    from node.config import DEFAULT_CAPACITY, DEFAULT_HAPPY, DEFAULT_PORT, format_size
    from node.testnet import MAX_TESTNET_NODES

    parser = _Parser(
        prog="freehold",
        description="Freehold: peer-to-peer storage that nobody can read, seize or switch off.",
        epilog="-v, --data-dir and --json may also come after the command.",
    )
    parser.add_argument("--version", action=_Version, help="print the version and exit")
    _global_options(parser, top=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    node = commands.add_parser("node", help="run a node in the foreground")
    node.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help=f"address to listen on (default: 127.0.0.1:{DEFAULT_PORT}, this machine only; "
        f"0.0.0.0:{DEFAULT_PORT} to be reachable by others)",
    )
    node.add_argument(
        "--bootstrap",
        metavar="HOST:PORT",
        nargs="+",
        help="nodes to join the network through (default: none, a network of its own)",
    )
    node.add_argument(
        "--capacity",
        metavar="SIZE",
        help="disk space to donate, e.g. 50GiB "
        f"(default: {format_size(DEFAULT_CAPACITY).replace(' ', '').replace('.0', '')})",
    )
    node.add_argument(
        "--happy",
        metavar="N",
        type=int,
        help="a put fails unless at least this many distinct nodes took its chunks "
        f"(default: {DEFAULT_HAPPY}, of n = 10)",
    )
    node.add_argument(
        "--web-listen",
        metavar="HOST:PORT",
        help="the web page's loopback address, or off (default: 127.0.0.1:4480)",
    )
    node.add_argument(
        "--log-file",
        metavar="PATH",
        help="log to this file (relative to the data dir), rotated at log_max_size "
        "(10MiB) keeping log_backups (5) (default: standard error)",
    )
    keeping = node.add_argument_group(
        "keeping files alive", "how this node watches and repairs the segments it holds"
    )
    keeping.add_argument(
        "--audit-interval", metavar="TIME", help="audit each held segment this often (default: 24h)"
    )
    keeping.add_argument(
        "--repair-threshold",
        metavar="N",
        type=int,
        help="repair a segment when this many of its n chunks, or fewer, are left "
        "(default: n-4, 6 of 10)",
    )
    keeping.add_argument(
        "--repair-grace",
        metavar="TIME",
        help="how long a silent holder has to come back before its chunk counts as lost "
        "(default: 24h)",
    )
    keeping.add_argument(
        "--repair-delay", metavar="TIME", help="how long each holder waits per rank (default: 10m)"
    )
    keeping.add_argument(
        "--repair-bandwidth",
        metavar="SIZE",
        help="repair traffic a second, at most (default: 1MiB)",
    )

    put = commands.add_parser("put", help="store a file; prints its read capability")
    put.add_argument(
        "path",
        help="the file; - for standard input (a pipe, a FIFO or /dev/stdin works too)",
    )
    put.add_argument(
        "--name",
        help="the name stored (encrypted) with it (default: the file's base name; none "
        "for standard input)",
    )

    get = commands.add_parser("get", help="fetch a file by its read capability")
    get.add_argument("capability", help="a read capability, freehold:<manifest id>#<key>")
    get.add_argument("-o", "--output", type=Path, help="write here (default: standard output)")

    check = commands.add_parser(
        "check",
        help="audit the holders of a file's chunks (exit 0 healthy, 1 degraded, 2 unreadable, "
        "3 could not check, 4 no manifest under this id)",
    )
    check.add_argument("capability", help="a read or verify capability")
    check.add_argument(
        "--full",
        action="store_true",
        help="audit every segment (default: a file of more than 64 segments has a random "
        "sample of 64 audited, and check says so)",
    )

    repair = commands.add_parser(
        "repair",
        help="audit a file and rebuild its lost chunks on new nodes; no key needed "
        "(exit codes as check's)",
    )
    repair.add_argument("capability", help="a read or verify capability")

    keep = commands.add_parser(
        "keep",
        help="lease a file (anyone's: the verify capability is enough), charged to this "
        "node, and keep renewing it",
    )
    keep.add_argument("capability", help="a read or verify capability")
    forget = commands.add_parser(
        "forget", help="give up this node's lease of a file and drop it from `ls`"
    )
    forget.add_argument("capability", help="a read or verify capability")
    commands.add_parser(
        "ls", help="the files this node put or keeps: name, size, date, lease, capability"
    )
    commands.add_parser("status", help="what the node holds and whom it knows")
    commands.add_parser("peers", help="the nodes in the node's routing table")
    commands.add_parser("stop", help="stop the node")
    commands.add_parser("web", help="print the link that opens the node's web page")

    testnet = commands.add_parser(
        "testnet",
        help="run N nodes on loopback until Ctrl-C; prints the --data-dir to use",
    )
    testnet.add_argument(
        "--nodes",
        type=int,
        default=10,
        help=f"how many nodes, 1..{MAX_TESTNET_NODES} (default: 10; fewer than "
        f"{DEFAULT_HAPPY} lower `happy` to the count)",
    )
    testnet.add_argument(
        "--dir", type=Path, help="where their data dirs go (default: a new temporary directory)"
    )

    commands.add_parser("demo", help="a 10-node testnet puts, loses 3 nodes and gets a file")
    for command in commands.choices.values():
        _global_options(command, top=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    from node.errors import NodeError, single_error
    from protocol.errors import ProtocolError

    # `check` gives 1 and 2 a meaning (degraded, unreadable): its own failures say 3.
    failed = CHECK_FAILED if arguments.command in ("check", "repair") else 1
    try:
        status = _run(arguments)
        # What print() buffered goes out here, where a closed pipe is caught, not in
        # the interpreter's last flush, which would print "Exception ignored".
        sys.stdout.flush()
        return status
    except Exception as exc:
        # `freehold node` runs in trio, whose nurseries wrap an error in an ExceptionGroup.
        error = single_error(exc, (NodeError, ProtocolError, OSError))
        if isinstance(error, BrokenPipeError):
            return _closed_pipe()
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


CLOSED_PIPE: Final = 128 + 13
"""The exit status of a command whose reader went away (`freehold get CAP | head`): the
shell's status of a process SIGPIPE ended, as `cat` ends in that pipeline."""


def _closed_pipe() -> int:
    """Nobody reads stdout any more: end quietly, as `cat` does when `head` has had
    enough. stdout is pointed at /dev/null first, so that the interpreter's last flush of
    what is still buffered fails silently instead of printing a second error."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return CLOSED_PIPE


def _run(arguments: argparse.Namespace) -> int:
    command = arguments.command
    if arguments.json and command not in JSON_COMMANDS:
        from node.errors import NodeError

        raise NodeError(f"--json is for the commands that talk to a node, not {command}")
    if command == "node":
        return _node(arguments)
    if command == "testnet":
        return _testnet(arguments)
    if command == "web":
        return _web(_data_dir(arguments))
    if command == "demo":
        from node.demo import run_demo

        return run_demo()
    from node import cli_client

    handler: Callable[[argparse.Namespace, Path], int] = {
        "put": cli_client.put,
        "get": cli_client.get,
        "check": cli_client.check,
        "repair": cli_client.repair,
        "keep": cli_client.keep,
        "forget": cli_client.forget,
        "ls": cli_client.ls,
        "status": cli_client.status,
        "peers": cli_client.peers,
        "stop": cli_client.stop,
    }[command]
    return handler(arguments, _data_dir(arguments))


def _data_dir(arguments: argparse.Namespace) -> Path:
    if arguments.data_dir is not None:
        return Path(arguments.data_dir)
    from node.config import default_data_dir

    return default_data_dir()


def _raise_descriptor_limit() -> None:
    """Take the hard limit on open files as the soft one: a node may hold 1,024
    connections and its web page and stores besides, and the usual soft limit of
    1,024 would let a flood of connections keep it from opening a file."""
    import contextlib
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft < wanted:
        # A container's limit may refuse: the node runs with what it has.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def _web(data_dir: Path) -> int:
    """Print the web page's link (it holds the page's secret: only this user can)."""
    from node.errors import NodeError
    from node.web import SECRET_FILE, WEB_ADDRESS_FILE, login_url

    try:
        address = (data_dir / WEB_ADDRESS_FILE).read_text().strip()
        secret = (data_dir / SECRET_FILE).read_text().strip()
    except FileNotFoundError:
        raise NodeError(
            f"no web page for {data_dir}: is its node running, with web_listen set?"
        ) from None
    print(login_url(address, secret))
    return 0


# ------------------------------------------------------------------------ the node


def _node(arguments: argparse.Namespace) -> int:
    import signal

    import trio

    from node.allocator import tune_allocator
    from node.commands import serve_owner
    from node.config import load_config
    from node.control import check_socket_path
    from node.logs import configure_logging
    from node.node import Node

    config = load_config(
        _data_dir(arguments),
        {
            "listen": arguments.listen,
            "bootstrap": arguments.bootstrap,
            "capacity": arguments.capacity,
            "happy": arguments.happy,
            "audit_interval": arguments.audit_interval,
            "repair_threshold": arguments.repair_threshold,
            "repair_grace": arguments.repair_grace,
            "repair_delay": arguments.repair_delay,
            "repair_bandwidth": arguments.repair_bandwidth,
            "log_file": arguments.log_file,
            "web_listen": arguments.web_listen,
        },
    )
    configure_logging(
        "DEBUG" if arguments.verbose else config.log_level,
        config.log_path,
        max_bytes=config.log_max_size,
        backups=config.log_backups,
    )

    tune_allocator()
    _raise_descriptor_limit()
    _exit_with_parent()
    with_control = config.storage == "disk"
    if with_control:
        check_socket_path(config.control_path)  # before anything is made or logged

    async def run() -> None:
        # The owner's commands run as a service of the node: they stop with it, before
        # it closes its store.
        services: list[Any] = [_warn_if_unreachable, serve_owner] if with_control else []
        node = Node(config, services=services)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_stop_on_signal, signals, nursery.cancel_scope)
                await node.run()  # returns when `freehold stop` stops it
                nursery.cancel_scope.cancel()

    trio.run(run)
    return 0


async def _warn_if_unreachable(node: Any, *, task_status: Any = None) -> None:
    """A service of the node that says, once it listens, if no other machine can ever
    reach it: loopback only and no bootstrap is a network of one."""
    from node.config import is_loopback

    config = node.config
    if is_loopback(config.listen[0]) and not config.bootstrap:
        import logging

        logging.getLogger("node").warning(
            "listening on %s only, with no bootstrap: no other machine can reach this node "
            "and it knows no other node; to join a network, give --listen 0.0.0.0:PORT and "
            "--bootstrap HOST:PORT (or `listen` and `bootstrap` in config.toml)",
            config.listen[0],
        )
    task_status.started()


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


# ----------------------------------------------------------------------- testnet


def _testnet(arguments: argparse.Namespace) -> int:
    import shlex
    import tempfile
    import time

    from node.config import DATA_DIR_ENVIRONMENT, DEFAULT_HAPPY
    from node.errors import NodeError
    from node.testnet import MAX_TESTNET_NODES, lowered_happy, open_testnet, wait_until_joined

    count = arguments.nodes
    if not 1 <= count <= MAX_TESTNET_NODES:
        raise NodeError(
            f"--nodes must be 1..{MAX_TESTNET_NODES} (each node is a process of its own), "
            f"got {count}"
        )

    from node.cli_client import stop_on_sigterm

    stop_on_sigterm()  # SIGTERM stops the nodes too, as Ctrl-C does
    directory = arguments.dir or Path(tempfile.mkdtemp(prefix="freehold-testnet-"))
    happy = lowered_happy(count)
    extra = ["--happy", str(happy)] if happy is not None else []
    if arguments.verbose:
        extra.append("-v")
    with open_testnet(count, directory, extra=extra) as testnet:
        wait_until_joined(testnet)
        for node in testnet.nodes:
            print(f"node {node.index:2d}  {node.address:21s}  {node.data_dir}")
        if happy is not None:
            print(
                f"happy lowered to {happy}: a put needs {DEFAULT_HAPPY} distinct nodes to "
                f"take its chunks by default, more than this testnet's {count} (chunks "
                "double up on nodes, so a file here survives losing fewer of them)"
            )
        first = shlex.quote(str(testnet.nodes[0].data_dir))
        print(
            f"{len(testnet.nodes)} nodes running. In another shell, talk to node 0 with\n"
            f"  export {DATA_DIR_ENVIRONMENT}={first}\n"
            f"then e.g. `freehold put FILE` (or `freehold --data-dir {first} put FILE`). "
            "Ctrl-C stops them."
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
