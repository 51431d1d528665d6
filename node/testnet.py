"""A local network of real node processes on loopback: `freehold testnet` and the demo.

Each node is a `freehold node` child process with its own data directory under the
testnet's directory (`node-00`, `node-01`, ...), listening on 127.0.0.1 with a port
the kernel picks. A node writes the address it listens on to `<data-dir>/node.address`
once it serves; the first node's address is the others' bootstrap address. Nothing
leaves 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final

from node.config import ADDRESS_FILE, DEFAULT_HAPPY, EXIT_WITH_PARENT_ENVIRONMENT
from node.errors import NodeError

__all__ = [
    "MAX_TESTNET_NODES",
    "Testnet",
    "TestnetNode",
    "lowered_happy",
    "open_testnet",
    "read_address",
    "wait_until_joined",
]

START_TIMEOUT: Final = 30.0
STOP_TIMEOUT: Final = 10.0
# What a node writes to standard error before its log is set up.
STDERR_FILE: Final = "node.stderr"
MAX_TESTNET_NODES: Final = 64
"""The most nodes `freehold testnet` starts: each is a process of its own (some 60 MiB)."""


def lowered_happy(count: int) -> int | None:
    """The `happy` a testnet of `count` nodes must give its nodes so that a put can
    succeed (a put needs that many distinct nodes to take chunks, and there are only
    `count`), or None if the default is reachable."""
    return count if count < DEFAULT_HAPPY else None


def read_address(data_dir: Path) -> str | None:
    """The `HOST:PORT` a running node wrote, or None if it has not yet."""
    try:
        text = (data_dir / ADDRESS_FILE).read_text().strip()
    except FileNotFoundError:
        return None
    return text or None


@dataclass
class TestnetNode:
    index: int
    data_dir: Path
    process: subprocess.Popen[bytes]
    address: str = ""

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM (clean stop) or SIGKILL, then wait for the process."""
        if not self.alive:
            return
        self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class Testnet:
    directory: Path
    nodes: list[TestnetNode] = field(default_factory=list)

    def stop(self) -> None:
        for node in self.nodes:
            if node.alive:
                node.process.send_signal(signal.SIGTERM)
        for node in self.nodes:
            node.stop()


def _node_command(data_dir: Path, bootstrap: str | None, extra: Sequence[str]) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "node.cli",
        "node",
        "--data-dir",
        str(data_dir),
        "--listen",
        "127.0.0.1:0",
        # Rotated, so that a testnet left running does not fill the disk.
        "--log-file",
        "node.log",
        # A web page each, on a port of the kernel's choice (`freehold web` links it).
        "--web-listen",
        "127.0.0.1:0",
        *extra,
    ]
    if bootstrap:
        command += ["--bootstrap", bootstrap]
    return command


def _start(
    index: int, directory: Path, bootstrap: str | None, extra: Sequence[str], log: bool
) -> TestnetNode:
    data_dir = directory / f"node-{index:02d}"
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    (data_dir / ADDRESS_FILE).unlink(missing_ok=True)
    command = _node_command(data_dir, bootstrap, extra)
    if log:
        # The log goes to node.log; standard error holds only what comes before it
        # is set up (a bad setting, say).
        with open(data_dir / STDERR_FILE, "ab") as stderr:
            process = _spawn(command, stderr)
    else:
        process = _spawn(command, subprocess.DEVNULL)
    return TestnetNode(index, data_dir, process)


def _spawn(command: list[str], stderr: IO[bytes] | int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        env=_child_environment(),
    )


def _child_environment() -> dict[str, str]:
    environment = dict(os.environ)
    # The children import this checkout's packages, installed or not.
    root = str(Path(__file__).resolve().parent.parent)
    path = environment.get("PYTHONPATH")
    environment["PYTHONPATH"] = root if not path else f"{root}{os.pathsep}{path}"
    # The nodes stop when this process ends, however it ends (node.cli, Linux only):
    # no node outlives a testnet that was killed or interrupted while starting them.
    environment[EXIT_WITH_PARENT_ENVIRONMENT] = str(os.getpid())
    return environment


def _last_line(data_dir: Path) -> str:
    """The node's last words: its standard error's last line, else where its log is."""
    try:
        lines = (data_dir / STDERR_FILE).read_text(errors="replace").strip().splitlines()
    except OSError:
        lines = []
    if lines:
        return lines[-1]
    return f"see {data_dir / 'node.log'}"


def _wait_for_address(node: TestnetNode, deadline: float) -> str:
    while time.monotonic() < deadline:
        address = read_address(node.data_dir)
        if address is not None:
            node.address = address
            return address
        if not node.alive:
            raise NodeError(
                f"node {node.index} exited with code {node.process.returncode} before "
                f"listening: {_last_line(node.data_dir)}"
            )
        time.sleep(0.02)
    raise NodeError(f"node {node.index} did not start within {START_TIMEOUT:g} s")


@contextmanager
def open_testnet(
    count: int, directory: Path, *, extra: Sequence[str] = (), log: bool = True
) -> Iterator[Testnet]:
    """Start `count` nodes in `directory`, joined through the first; stop them all on
    exit (SIGTERM, then SIGKILL for any that hangs)."""
    if count < 1:
        raise NodeError("a testnet needs at least one node")
    testnet = Testnet(directory)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        first = _start(0, directory, None, extra, log)
        testnet.nodes.append(first)
        bootstrap = _wait_for_address(first, deadline)
        for index in range(1, count):
            testnet.nodes.append(_start(index, directory, bootstrap, extra, log))
        for node in testnet.nodes[1:]:
            _wait_for_address(node, deadline)
        yield testnet
    finally:
        testnet.stop()


def wait_until_joined(testnet: Testnet, timeout: float = START_TIMEOUT) -> None:
    """Wait until every live node knows every other live one (its routing table)."""
    from node.control import ControlClient
    from node.errors import ControlError

    deadline = time.monotonic() + timeout
    live = [node for node in testnet.nodes if node.alive]
    for node in live:
        while True:
            try:
                with ControlClient(node.data_dir / "control.sock", timeout=5) as client:
                    client.send({"command": "status", "arguments": {}})
                    result = list(client.frames())[-1]["result"]
                if result["contacts"] >= len(live) - 1:
                    break
            except ControlError:
                pass
            if time.monotonic() > deadline:
                raise NodeError(f"node {node.index} did not meet the others in {timeout:g} s")
            time.sleep(0.05)
