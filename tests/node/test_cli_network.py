"""The `freehold` command line against real node processes on 127.0.0.1 (issue 5).

Every node is a `python -m node.cli node` child (node.testnet), every command a
`python -m node.cli` subprocess, exactly as a user runs them. Starting ten nodes costs
seconds, so the tests that leave the network as they found it share one module-scoped
testnet; each test that stops or kills nodes, or needs nodes started otherwise, has a
testnet of its own, so no test depends on another or on their order.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import random
import re
import signal
import socket
import sqlite3
import stat
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from node.config import ADDRESS_FILE
from node.store import StoreConfig, open_chunk_store
from node.testnet import open_testnet, read_address, wait_until_joined
from protocol.capability import ReadCapability

if TYPE_CHECKING:  # imported at run time, pytest would try to collect them as tests
    from node.testnet import Testnet, TestnetNode

REPO = Path(__file__).resolve().parents[2]
# The defaults every node here runs with (NodeConfig): 3-of-10, 4 MiB segments, happy 7.
SEGMENT = 4 * 1024 * 1024
K, N, HAPPY = 3, 10, 7
NODES = 10
# Bounds so that nothing can hang CI: one CLI command, and a node (re)starting.
CLI_TIMEOUT = 60.0
START_TIMEOUT = 30.0
CAPABILITY = re.compile(r"^freehold:[a-z2-7]{52}#[a-z2-7]{52}$")


def environment() -> dict[str, str]:
    """The children import this checkout, installed or not."""
    variables = dict(os.environ)
    path = variables.get("PYTHONPATH")
    variables["PYTHONPATH"] = str(REPO) if not path else f"{REPO}{os.pathsep}{path}"
    return variables


def freehold(
    data_dir: Path, *arguments: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run `freehold --data-dir DATA_DIR ARGUMENTS...` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "node.cli", "--data-dir", str(data_dir), *arguments],
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        capture_output=True,
        timeout=CLI_TIMEOUT,
        cwd=REPO,
        env=environment(),
        check=False,
    )


def succeeds(data_dir: Path, *arguments: str, stdin: bytes | None = None) -> bytes:
    """Run a command that must succeed silently on stderr; its stdout."""
    result = freehold(data_dir, *arguments, stdin=stdin)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert result.stderr == b""
    return result.stdout


def one_line_error(result: subprocess.CompletedProcess[bytes]) -> str:
    """Check that a command failed as a user error should, and return its message: a
    non-zero exit, nothing on stdout, one `freehold: ...` line on stderr, no traceback."""
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode != 0, stderr
    assert "Traceback" not in stderr
    assert "internal error" not in stderr
    assert result.stdout == b""
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("freehold: "), stderr
    return lines[0]


def put(data_dir: Path, path: Path) -> str:
    """Put a file through the node at `data_dir`; its read capability."""
    capability = succeeds(data_dir, "put", str(path)).decode().strip()
    assert CAPABILITY.match(capability), capability
    return capability


def random_file(directory: Path, size: int, seed: int) -> Path:
    path = directory / f"file-{size}-{seed}.bin"
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


def unknown_capability(seed: int) -> str:
    """A well-formed read capability of a file nobody stored."""
    rng = random.Random(seed)
    return str(ReadCapability(rng.randbytes(32), rng.randbytes(32)))


def restart(node: TestnetNode, bootstrap: str) -> None:
    """Start `node` again on its data dir and address (as node.testnet starts it), and
    wait until it serves."""
    assert not node.alive
    (node.data_dir / ADDRESS_FILE).unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "node.cli",
        "node",
        "--data-dir",
        str(node.data_dir),
        "--listen",
        node.address,
        "--bootstrap",
        bootstrap,
    ]
    with open(node.data_dir / "node.log", "ab") as log:
        node.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            cwd=REPO,
            env=environment(),
        )
    deadline = time.monotonic() + START_TIMEOUT
    while read_address(node.data_dir) != node.address:
        assert node.alive, f"node {node.index} exited with {node.process.returncode}"
        assert time.monotonic() < deadline, f"node {node.index} did not restart"
        time.sleep(0.02)


def stored_chunks(node: TestnetNode) -> int:
    status = succeeds(node.data_dir, "status").decode()
    match = re.search(r"^stored: +(\d+) chunks", status, re.MULTILINE)
    assert match is not None, status
    return int(match.group(1))


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Testnet]:
    """Ten joined nodes that no test stops or fills."""
    with open_testnet(NODES, tmp_path_factory.mktemp("net")) as testnet:
        wait_until_joined(testnet)
        yield testnet


@pytest.fixture
def directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh directory with a short path (control socket paths must stay short)."""
    return tmp_path_factory.mktemp("t")


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    "size",
    [0, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 9 * 1024 * 1024],
    ids=["empty", "one-byte", "segment-minus-1", "one-segment", "segment-plus-1", "9MiB"],
)
def test_put_then_get_gives_the_same_bytes(network: Testnet, directory: Path, size: int) -> None:
    """A file put through one node comes back byte-identical through another, written
    with -o (and nothing on stdout)."""
    original = random_file(directory, size, seed=size)
    capability = put(network.nodes[0].data_dir, original)
    copy = directory / "copy.bin"
    assert succeeds(network.nodes[9].data_dir, "get", capability, "-o", str(copy)) == b""
    assert copy.read_bytes() == original.read_bytes()
    assert sorted(path.name for path in directory.iterdir()) == ["copy.bin", original.name]


def test_put_from_stdin_and_get_to_stdout(network: Testnet) -> None:
    """`put -` stores standard input, and `get` without -o writes the file to stdout."""
    data = random.Random(7).randbytes(SEGMENT + 12345)
    capability = succeeds(network.nodes[2].data_dir, "put", "-", stdin=data).decode().strip()
    assert CAPABILITY.match(capability), capability
    assert succeeds(network.nodes[7].data_dir, "get", capability) == data


def test_check_of_a_healthy_file_exits_0(network: Testnet, directory: Path) -> None:
    """`check` with the read or the verify capability counts all n chunks of every
    segment live and exits 0."""
    capability = put(network.nodes[1].data_dir, random_file(directory, SEGMENT + 1, seed=3))
    for text in (capability, capability.split("#")[0]):
        lines = succeeds(network.nodes[8].data_dir, "check", text).decode().splitlines()
        assert lines == [
            f"manifest: {N} holder(s)",
            f"segment 0: {N}/{N} chunks live, 0 missing (need {K}) ok",
            f"segment 1: {N}/{N} chunks live, 0 missing (need {K}) ok",
            "healthy",
        ]


def test_ls_keep_and_forget(network: Testnet, directory: Path) -> None:
    """`ls` lists what a node put, with its lease and capability, from a database only
    its user can read; another node `keep`s the file with the verify capability;
    `forget` drops it from the first node's list and says what it released."""
    owner, keeper = network.nodes[5].data_dir, network.nodes[6].data_dir
    path = random_file(directory, 3000, seed=21)
    capability = put(owner, path)
    lines = succeeds(owner, "ls").decode().splitlines()
    entry = lines.index(f"  {capability}") - 1
    name, size, date, lease = lines[entry].split("\t")
    assert (name, size) == (path.name, "2.9 KiB")  # 3,000 bytes
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d", date)
    assert re.fullmatch(r"leased until \d{4}-\d\d-\d\d", lease)
    assert (owner / "files.sqlite3").stat().st_mode & 0o777 == 0o600
    verify = capability.split("#")[0]
    kept = succeeds(keeper, "keep", verify).decode()
    assert re.match(r"leased (\d+) of \1 chunks at \d+ holders until ", kept), kept
    assert f"  {verify}" in succeeds(keeper, "ls").decode().splitlines()
    released = succeeds(owner, "forget", capability).decode()
    assert re.match(r"released our lease at the holders of (\d+) of \1 chunks", released)
    assert capability not in succeeds(owner, "ls").decode()


def test_status_and_peers_describe_the_node(network: Testnet) -> None:
    """`status` shows the node's id, address, data dir and contacts; `peers` lists the
    other nine nodes, one a line."""
    node = network.nodes[3]
    status = succeeds(node.data_dir, "status").decode()
    fields = dict(line.split(":", 1) for line in status.splitlines())
    assert set(fields) == {
        "node id",
        "listening",
        "data dir",
        "contacts",
        "stored",
        "space",
        "trash",
        "leases",
        "repair",
    }
    own_id = fields["node id"].strip()
    assert re.fullmatch(r"[0-9a-f]{64}", own_id)
    assert fields["listening"].strip() == node.address
    assert fields["data dir"].strip() == str(node.data_dir)
    assert re.fullmatch(rf" +{NODES - 1} \(\d+ connected\)", fields["contacts"])
    assert re.fullmatch(r" +\d+ chunks, .+ of 10(\.0)? GiB used on disk .*", fields["stored"])
    # A tenth of the capacity is the owner's reserve: 9 GiB donated.
    assert re.fullmatch(
        r" +9\.0 GiB donated to others, .+ used; .+ leased by you here", fields["space"]
    )
    assert re.fullmatch(r" +0 chunks nobody leases, 0 B; 0 deleted since start", fields["trash"])
    assert re.fullmatch(
        r" +\d+ held here; \d+ files of yours kept \(.+\), renewed by this node",
        fields["leases"],
    )
    assert re.fullmatch(
        r" +\d+ segments watched, 0 checked, 0 repaired \(0 chunks rebuilt\), 0 B moved",
        fields["repair"],
    )

    lines = succeeds(node.data_dir, "peers").decode().splitlines()
    peers = [re.fullmatch(r"[* ] ([0-9a-f]{64}) (127\.0\.0\.1:\d+)", line) for line in lines]
    assert all(peers), lines
    ids = {peer.group(1) for peer in peers if peer}
    addresses = {peer.group(2) for peer in peers if peer}
    assert len(ids) == NODES - 1 and own_id not in ids
    assert addresses == {other.address for other in network.nodes if other is not node}


# ----------------------------------------------------------------- user errors


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty capability"),
        ("nonsense", "no scheme"),
        ("https://example.org/file", "unknown scheme 'https'"),
        ("freehold:abc", "manifest id has 3 characters"),
        ("freehold:" + "a" * 51 + "!#" + "a" * 52, "bad character '!' at position 60"),
        ("freehold:" + "a" * 52 + "#" + "a" * 52 + "#", "a second '#'"),
    ],
    ids=["empty", "no-scheme", "other-scheme", "short", "bad-character", "two-keys"],
)
def test_malformed_capability_is_a_one_line_error(
    network: Testnet, text: str, problem: str
) -> None:
    """`get` and `check` of a malformed capability fail with one line saying what is
    wrong with it."""
    data_dir = network.nodes[4].data_dir
    for command in ("get", "check"):
        message = one_line_error(freehold(data_dir, command, text))
        assert problem in message, (command, message)


def test_json_output_is_one_object_of_the_documented_shape(
    network: Testnet, directory: Path
) -> None:
    """--json (before or after the command) prints one JSON object on stdout with the
    keys README.md#json-output lists, for put, get -o, check, ls, status and peers;
    get --json without -o, and a malformed capability, are one-line errors."""
    data_dir = network.nodes[3].data_dir
    original = random_file(directory, 70_000, seed=31)

    def as_json(*arguments: str) -> dict[str, object]:
        out = succeeds(data_dir, *arguments)
        assert out.endswith(b"\n") and out.count(b"\n") == 1, out
        value = json.loads(out)
        assert isinstance(value, dict)
        return value

    stored = as_json("put", "--json", str(original))
    assert set(stored) == {"capability", "name", "size", "seconds"}
    assert (stored["name"], stored["size"]) == (original.name, 70_000)
    capability = str(stored["capability"])
    assert CAPABILITY.match(capability)
    copy = directory / "copy.bin"
    got = as_json("--json", "get", capability, "-o", str(copy))
    assert got == {
        "name": original.name,
        "size": 70_000,
        "seconds": got["seconds"],
        "output": str(copy),
    }
    assert copy.read_bytes() == original.read_bytes()
    report = as_json("check", capability, "--json")
    assert report["state"] == "healthy" and report["found"] is True
    assert {"k", "n", "manifest_holders", "segment_count", "sampled", "readable"} <= set(report)
    assert report["segments"] == [
        {"index": 0, "live": N, "missing": 0, "lying": [], "fetched": False}
    ]
    files = as_json("ls", "--json")["files"]
    assert isinstance(files, list)
    assert {"name", "size", "put_at", "lease_expires", "pending", "capability"} == set(files[0])
    assert capability in [entry["capability"] for entry in files]
    status = as_json("status", "--json")
    # The README's table lists exactly the keys status gives.
    readme = (REPO / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `status` |"))
    assert set(status) == set(re.findall(r"`([a-z_]+)`", row.split("|")[2]))
    assert status["data_dir"] == str(data_dir) and status["contacts"] == NODES - 1
    peers = as_json("--json", "peers")
    assert len(peers["peers"]) == NODES - 1 and peers["liars"] == []
    assert "needs -o FILE" in one_line_error(freehold(data_dir, "get", "--json", capability))
    assert "no scheme" in one_line_error(freehold(data_dir, "check", "--json", "nonsense"))


def test_get_into_a_closed_pipe_ends_quietly(network: Testnet, directory: Path) -> None:
    """`freehold get CAP | head -c 10`: when the reader goes, get ends at once with no
    message and status 141 (128 + SIGPIPE, as `cat` ends in that pipeline), to stdout
    or to -o /dev/stdout, and so does a command whose short answer finds the pipe
    already closed; the node serves the next command."""
    data_dir = network.nodes[2].data_dir
    # Larger than any pipe's buffer, so that get must still be writing when head leaves.
    capability = put(data_dir, random_file(directory, 6 * 1024 * 1024, seed=32))
    for output in ([], ["-o", "/dev/stdout"]):
        command = [sys.executable, "-m", "node.cli", "--data-dir", str(data_dir), "get"]
        child = subprocess.Popen(
            [*command, capability, *output],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=REPO,
            env=environment(),
        )
        assert child.stdout is not None and child.stderr is not None
        assert len(child.stdout.read(10)) == 10
        child.stdout.close()  # as head does once it has its 10 bytes
        assert child.wait(timeout=CLI_TIMEOUT) == 141
        assert child.stderr.read() == b""
        child.stderr.close()
    # A reader gone before a short answer is written (`freehold ls | true`): the same,
    # with stdout buffered as it is for users (without PYTHONUNBUFFERED, which CI may set):
    # the error then comes at the last flush, not at print().
    buffered = {k: v for k, v in environment().items() if k != "PYTHONUNBUFFERED"}
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        for arguments in (["status"], ["--json", "ls"]):
            result = subprocess.run(
                [sys.executable, "-m", "node.cli", "--data-dir", str(data_dir), *arguments],
                stdout=write_end,
                stderr=subprocess.PIPE,
                timeout=CLI_TIMEOUT,
                cwd=REPO,
                env=buffered,
                check=False,
            )
            assert (result.returncode, result.stderr) == (141, b""), (arguments, result.stderr)
    finally:
        os.close(write_end)
    assert b"node id" in succeeds(data_dir, "status")


def test_put_from_a_fifo_dev_stdin_and_a_descriptor(network: Testnet, directory: Path) -> None:
    """A put from a named FIFO, from /dev/stdin on a pipe, and from /dev/fd/N (what
    `put <(cmd)` runs) stores all the bytes: each comes back whole."""
    data_dir = network.nodes[4].data_dir
    data = random.Random(33).randbytes(SEGMENT + 999)
    fifo = directory / "fifo"
    os.mkfifo(fifo)

    def feed() -> None:
        with open(fifo, "wb") as writer:
            writer.write(data)

    feeder = threading.Thread(target=feed)
    feeder.start()
    from_fifo = put(data_dir, fifo)
    feeder.join()
    from_stdin = succeeds(data_dir, "put", "/dev/stdin", stdin=data).decode().strip()
    command = [sys.executable, "-m", "node.cli", "--data-dir", str(data_dir)]
    read_end, write_end = os.pipe()
    writer = threading.Thread(target=lambda: (os.write(write_end, data), os.close(write_end)))
    writer.start()
    try:
        result = subprocess.run(
            [*command, "put", f"/dev/fd/{read_end}"],
            capture_output=True,
            timeout=CLI_TIMEOUT,
            cwd=REPO,
            env=environment(),
            pass_fds=(read_end,),
            check=False,
        )
    finally:
        writer.join()
        os.close(read_end)
    assert result.returncode == 0 and result.stderr == b"", result.stderr
    from_descriptor = result.stdout.decode().strip()
    for capability in (from_fifo, from_stdin, from_descriptor):
        assert CAPABILITY.match(capability), capability
        assert succeeds(network.nodes[8].data_dir, "get", capability) == data
    names = {
        entry["capability"]: entry["name"]
        for entry in json.loads(succeeds(data_dir, "ls", "--json"))["files"]
    }
    assert (names[from_fifo], names[from_stdin], names[from_descriptor]) == ("fifo", "", "")


def test_get_with_a_verify_capability_says_it_cannot_read(
    network: Testnet, directory: Path
) -> None:
    """A verify capability (no `#key`) given to `get` fails saying a read capability
    is needed."""
    capability = put(network.nodes[0].data_dir, random_file(directory, 1000, seed=4))
    message = one_line_error(freehold(network.nodes[5].data_dir, "get", capability.split("#")[0]))
    assert "verify capability" in message and "read capability" in message


def test_get_with_the_wrong_key_fails_and_writes_nothing(network: Testnet, directory: Path) -> None:
    """The manifest id of one file with the key of another fails saying the key does
    not fit, with nothing written to stdout or left at the -o path."""
    first = put(network.nodes[0].data_dir, random_file(directory, 1000, seed=5))
    second = put(network.nodes[0].data_dir, random_file(directory, 1000, seed=6))
    mixed = first.split("#")[0] + "#" + second.split("#")[1]
    data_dir = network.nodes[6].data_dir
    message = one_line_error(freehold(data_dir, "get", mixed))
    assert "key" in message and "does not open" in message
    before = set(directory.iterdir())
    one_line_error(freehold(data_dir, "get", mixed, "-o", str(directory / "out.bin")))
    assert set(directory.iterdir()) == before


def test_a_file_nobody_stored_is_not_found_and_check_says_so(network: Testnet) -> None:
    """`get` of a well-formed capability nobody stored fails naming its manifest id as
    the capability spells it; `check` and `repair` say no manifest was found (exit 4,
    their own status for it), not that a file is unreadable or lost."""
    capability = unknown_capability(seed=8)
    manifest_id = capability.split(":")[1].split("#")[0]
    message = one_line_error(freehold(network.nodes[1].data_dir, "get", capability))
    assert f"no reachable node holds the manifest {manifest_id}" in message
    for command in ("check", "repair"):
        result = freehold(network.nodes[1].data_dir, command, capability)
        assert result.returncode == 4, result.stderr
        lines = result.stdout.decode().splitlines()
        assert len(lines) == 1 and lines[0].startswith("no manifest found"), lines
        assert f"freehold:{manifest_id};" in lines[0]
        assert "unreadable" not in lines[0]
    result = freehold(network.nodes[1].data_dir, "check", "--json", capability)
    assert result.returncode == 4
    report = json.loads(result.stdout)
    assert (report["state"], report["found"]) == ("no manifest", False)


def test_put_of_a_missing_file_is_a_one_line_error(network: Testnet, directory: Path) -> None:
    """`put` of a path that does not exist, or of a directory, fails with one line."""
    data_dir = network.nodes[0].data_dir
    missing = directory / "missing.bin"
    message = one_line_error(freehold(data_dir, "put", str(missing)))
    assert "No such file or directory" in message and str(missing) in message
    assert "Is a directory" in one_line_error(freehold(data_dir, "put", str(directory)))


def test_second_node_on_a_data_dir_in_use_fails_clearly(network: Testnet) -> None:
    """`freehold node` on the data dir of a running node fails with one line saying
    another node uses it, and the running node is unharmed."""
    node = network.nodes[0]
    message = one_line_error(freehold(node.data_dir, "node", "--listen", "127.0.0.1:0"))
    assert "another" in message and "running" in message
    assert node.alive
    assert stored_chunks(node) >= 0


def test_node_that_cannot_start_says_why_in_one_line(network: Testnet, directory: Path) -> None:
    """`freehold node` with a misspelt config key, a malformed flag or an address already
    in use exits non-zero with one line naming the problem."""
    typo = directory / "typo"
    typo.mkdir()
    (typo / "config.toml").write_text('capcity = "1 GiB"\n')
    message = one_line_error(freehold(typo, "node", "--listen", "127.0.0.1:0"))
    assert "unknown setting 'capcity'" in message
    message = one_line_error(freehold(directory / "flag", "node", "--capacity", "lots"))
    assert "capacity" in message and "not a size" in message
    taken = network.nodes[0].address
    message = one_line_error(freehold(directory / "busy", "node", "--listen", taken))
    assert "Address already in use" in message


def test_stop_stops_the_node(directory: Path) -> None:
    """`freehold stop` makes the node exit 0 and remove its socket; then nothing runs."""
    with open_testnet(1, directory) as testnet:
        node = testnet.nodes[0]
        assert succeeds(node.data_dir, "stop") == b"stopping\n"
        assert node.process.wait(timeout=START_TIMEOUT) == 0
        assert not (node.data_dir / "control.sock").exists()
        assert "no node is running" in one_line_error(freehold(node.data_dir, "status"))


def test_commands_without_a_running_node_say_so(directory: Path) -> None:
    """Every client command at a data dir with no node (or only a stale socket left by
    a killed one) fails with one line saying no node is running."""
    file = random_file(directory, 10, seed=9)
    commands = [
        ("status",),
        ("peers",),
        ("stop",),
        ("put", str(file)),
        ("get", unknown_capability(seed=10)),
        ("check", unknown_capability(seed=11)),
    ]
    empty = directory / "empty"
    stale = directory / "stale"
    stale.mkdir()
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(stale / "control.sock"))
    leftover.close()
    for data_dir in (empty, stale):
        for arguments in commands:
            result = freehold(data_dir, *arguments)
            message = one_line_error(result)
            assert "no node is running" in message, (arguments, message)
            # check's 1 and 2 mean degraded and unreadable: its own failure is 3.
            assert result.returncode == (3 if arguments[0] == "check" else 1)


# ---------------------------------------------- networks that lose, fill or restart


def test_losing_nodes_degrades_then_breaks_a_file(directory: Path) -> None:
    """After 3 of 10 nodes are killed a multi-segment file still comes back whole and
    `check` exits 1; with 8 killed, `check` exits 2 and `get` fails with one line."""
    with open_testnet(NODES, directory) as testnet:
        wait_until_joined(testnet)
        uploader, downloader = testnet.nodes[0], testnet.nodes[9]
        original = random_file(directory, 9 * 1024 * 1024, seed=12)
        capability = put(uploader.data_dir, original)
        assert succeeds(downloader.data_dir, "check", capability).decode().splitlines() == [
            f"manifest: {N} holder(s)",
            *(
                f"segment {index}: {N}/{N} chunks live, 0 missing (need {K}) ok"
                for index in (0, 1, 2)
            ),
            "healthy",
        ]

        for index in (3, 5, 7):
            testnet.nodes[index].stop(kill=True)
        assert succeeds(downloader.data_dir, "get", capability) == original.read_bytes()
        result = freehold(downloader.data_dir, "check", capability)
        assert result.returncode == 1, result.stderr
        assert result.stdout.decode().splitlines() == [
            f"manifest: {N - 3} holder(s)",
            *(
                f"segment {index}: {N - 3}/{N} chunks live, 3 missing (need {K}) degraded"
                for index in (0, 1, 2)
            ),
            "degraded but readable",
        ]

        for index in (1, 2, 4, 6, 8):
            testnet.nodes[index].stop(kill=True)
        result = freehold(downloader.data_dir, "check", capability)
        assert result.returncode == 2, result.stderr
        lines = result.stdout.decode().splitlines()
        assert lines[1].startswith(
            f"segment 0: 2/{N} chunks live, {N - 2} missing (need {K}) UNREADABLE"
        )
        assert lines[-1] == "unreadable"
        copy = directory / "copy.bin"
        message = one_line_error(freehold(downloader.data_dir, "get", capability, "-o", str(copy)))
        assert re.search(r"segment \d", message) and "chunks" in message
        assert not copy.exists()
        assert not list(directory.glob(".copy.bin*"))


def test_repair_with_the_verify_capability_brings_a_file_back_to_health(
    directory: Path,
) -> None:
    """Fourteen nodes; after three holders are killed `check` exits 1, `repair` with
    the verify capability alone rebuilds the lost chunks on other nodes (exit 0,
    healthy), `check` exits 0 again, `status` counts what moved, and a get from
    another node is byte-identical."""
    with open_testnet(14, directory) as testnet:
        wait_until_joined(testnet)
        uploader, repairer = testnet.nodes[0], testnet.nodes[13]
        original = random_file(directory, 2 * 1024 * 1024, seed=21)
        capability = put(uploader.data_dir, original)
        verify = capability.split("#")[0]
        # Kill nodes that hold something (ids are random: which hold chunks of the file
        # and which only its manifest is not known before), three at least, until the
        # check finds chunks missing; none of those the test still talks to.
        victims = [node for node in testnet.nodes[1:12] if stored_chunks(node) >= 1]
        for count, node in enumerate(victims, start=1):
            node.stop(kill=True)
            if count < 3:
                continue
            checked = freehold(repairer.data_dir, "check", verify)
            found = re.search(r"(\d+) missing", checked.stdout.decode())
            if found is not None and int(found.group(1)) >= 1:
                break
        assert checked.returncode == 1, checked.stdout
        assert found is not None
        missing = int(found.group(1))
        result = freehold(repairer.data_dir, "repair", verify)
        assert result.returncode == 0, (result.stdout, result.stderr)
        lines = result.stdout.decode().splitlines()
        assert lines[-1] == "healthy"
        assert f"segment 0: {N - missing}/{N} live, {missing} rebuilt, now {N}/{N}" in lines
        assert freehold(repairer.data_dir, "check", verify).returncode == 0
        status = succeeds(repairer.data_dir, "status").decode()
        expected = rf"repair: +\d+ segments watched, \d+ checked, 1 repaired \({missing} chunks"
        assert re.search(expected, status), status
        assert succeeds(testnet.nodes[12].data_dir, "get", capability) == original.read_bytes()


# Stewards in a hurry: audit every 2 s, count a silent holder lost after 8 s (time
# enough to see the damage first), repair at any loss (9 of 10 left). With the
# defaults it would take days.
HURRIED_STEWARDS = [
    "--audit-interval",
    "2s",
    "--repair-grace",
    "8s",
    "--repair-delay",
    "1s",
    "--repair-threshold",
    "9",
]
HEALING_TIMEOUT = 120.0


def test_the_network_heals_a_file_with_its_owner_gone_for_good(directory: Path) -> None:
    """Fourteen nodes; a file of two segments is put, then the uploading node stops for
    good, then three of the nodes holding most of it. With no key online and nobody
    asking, the holders audit their segments, and every segment and the manifest come
    back to n proven copies; a get from another node is byte-identical."""
    with open_testnet(14, directory, extra=HURRIED_STEWARDS) as testnet:
        wait_until_joined(testnet)
        uploader, checker, reader = testnet.nodes[0], testnet.nodes[12], testnet.nodes[13]
        original = random_file(directory, SEGMENT + 1024 * 1024, seed=23)
        capability = put(uploader.data_dir, original)
        verify = capability.split("#")[0]
        uploader.stop()
        holding = sorted(testnet.nodes[1:12], key=stored_chunks, reverse=True)
        for node in holding[:3]:
            node.stop(kill=True)
        damaged = freehold(checker.data_dir, "check", verify)
        assert damaged.returncode == 1, damaged.stdout  # degraded: some chunks are gone
        deadline = time.monotonic() + HEALING_TIMEOUT
        while True:
            checked = freehold(checker.data_dir, "check", verify)
            lines = checked.stdout.decode().splitlines()
            if checked.returncode == 0 and f"manifest: {N} holder(s)" in lines:
                break
            assert time.monotonic() < deadline, f"not healed: {lines} {checked.stderr!r}"
            time.sleep(1.0)
        assert [line for line in lines if line.startswith("segment ")] == [
            f"segment {index}: {N}/{N} chunks live, 0 missing (need {K}) ok" for index in (0, 1)
        ]
        status = [
            succeeds(node.data_dir, "status").decode() for node in testnet.nodes if node.alive
        ]
        repaired = [re.search(r"(\d+) repaired \((\d+) chunks", text) for text in status]
        assert sum(int(found.group(2)) for found in repaired if found) >= 3, status
        assert succeeds(reader.data_dir, "get", capability) == original.read_bytes()
        # What a steward repaired is still counted after it restarts (health.sqlite3).
        alive = [node for node in testnet.nodes if node.alive]
        steward, counted = next(
            (node, found.group(0))
            for node, found in zip(alive, repaired, strict=True)
            if found and found.group(1) != "0"
        )
        steward.stop()
        restart(steward, next(node for node in alive if node is not steward).address)
        assert counted in succeeds(steward.data_dir, "status").decode()


def test_restarted_nodes_keep_serving_their_chunks(directory: Path) -> None:
    """A node stopped cleanly and one killed, each started again on its data dir, serve
    the chunks they held: a get that needs exactly their chunks succeeds."""
    with open_testnet(NODES, directory) as testnet:
        wait_until_joined(testnet)
        nodes = testnet.nodes
        original = random_file(directory, 1024 * 1024, seed=13)
        capability = put(nodes[0].data_dir, original)
        stopped, killed, downloader = nodes[4], nodes[5], nodes[9]
        held = {node.index: stored_chunks(node) for node in (stopped, killed)}
        assert all(count >= 1 for count in held.values()), held

        stopped.stop()
        killed.stop(kill=True)
        assert (killed.data_dir / "control.sock").exists()  # left behind by SIGKILL
        restart(stopped, nodes[0].address)
        restart(killed, nodes[0].address)
        assert {node.index: stored_chunks(node) for node in (stopped, killed)} == held

        # One segment, one chunk per node: with only these three left, each of the
        # k = 3 chunks a get needs comes from a different one of them.
        for node in nodes:
            if node not in (stopped, killed, downloader):
                node.stop(kill=True)
        result = freehold(downloader.data_dir, "check", capability)
        assert result.returncode == 1, result.stderr
        assert (
            f"segment 0: 3/{N} chunks live, {N - 3} missing (need {K}) degraded"
            in result.stdout.decode()
        )
        assert succeeds(downloader.data_dir, "get", capability) == original.read_bytes()


def test_put_on_a_network_it_cannot_reach_fails(directory: Path) -> None:
    """A node whose bootstrap address does not answer is alone: `put` fails with one
    line saying too few distinct nodes took shares."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    dead = "{}:{}".format(*probe.getsockname())
    probe.close()  # nothing listens there now
    with open_testnet(1, directory, extra=["--bootstrap", dead]) as testnet:
        file = random_file(directory, 1, seed=14)
        message = one_line_error(freehold(testnet.nodes[0].data_dir, "put", str(file)))
        assert "distinct nodes" in message and f"{HAPPY} needed" in message


def test_put_larger_than_the_free_capacity_fails(directory: Path) -> None:
    """On ten nodes of 3 MiB each, a 4 MiB file fits but a 32 MiB one fails with one
    line saying the nodes did not take its chunks because they are full."""
    with open_testnet(NODES, directory, extra=["--capacity", "3MiB"]) as testnet:
        wait_until_joined(testnet)
        data_dir = testnet.nodes[0].data_dir
        small = put(data_dir, random_file(directory, SEGMENT, seed=15))
        assert succeeds(data_dir, "check", small).endswith(b"healthy\n")
        big = random_file(directory, 32 * 1024 * 1024, seed=16)
        message = one_line_error(freehold(data_dir, "put", str(big)))
        assert "chunks were stored" in message and "full" in message
        assert all(node.alive for node in testnet.nodes)


# ----------------------------------------------- what the audit of issue 5 found


def test_usage_errors_are_one_line(directory: Path) -> None:
    """A missing argument or an unknown command is one line (argparse would print its
    usage first) pointing at --help, and exit code 2."""
    for arguments in (("get",), ("bogus",), ("put",)):
        result = freehold(directory, *arguments)
        stderr = result.stderr.decode()
        assert result.returncode == 2, stderr
        assert len(stderr.splitlines()) == 1, stderr
        assert stderr.startswith("freehold") and "--help)" in stderr
        assert "usage:" not in stderr


def test_data_dir_and_its_environment_variable(network: Testnet) -> None:
    """`--data-dir` also works after the command, and $FREEHOLD_DATA_DIR stands in for
    it; with neither, the platform's data dir is used."""
    data_dir = str(network.nodes[0].data_dir)
    command = [sys.executable, "-m", "node.cli"]
    after = subprocess.run(
        [*command, "status", "--data-dir", data_dir],
        capture_output=True,
        timeout=CLI_TIMEOUT,
        cwd=REPO,
        env=environment(),
        check=False,
    )
    assert after.returncode == 0 and b"node id" in after.stdout, after.stderr
    variables = environment() | {"FREEHOLD_DATA_DIR": data_dir}
    from_environment = subprocess.run(
        [*command, "status"],
        capture_output=True,
        timeout=CLI_TIMEOUT,
        cwd=REPO,
        env=variables,
        check=False,
    )
    assert from_environment.returncode == 0, from_environment.stderr

    def node_id(output: bytes) -> list[bytes]:
        return [line for line in output.splitlines() if line.startswith(b"node id")]

    assert node_id(from_environment.stdout) == node_id(after.stdout) != []
    code = (
        "import os, platformdirs; from node.config import default_data_dir; "
        "os.environ.pop('FREEHOLD_DATA_DIR', None); "
        "assert default_data_dir() == __import__('pathlib').Path("
        "platformdirs.user_data_dir('freehold', appauthor=False)); print('ok')"
    )
    default = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, cwd=REPO, env=environment(), check=False
    )
    assert default.stdout == b"ok\n", default.stderr


def test_get_writes_through_links_into_fifos_and_refuses_directories(
    network: Testnet, directory: Path
) -> None:
    """`get -o`: a symlink stays and its target gets the file (keeping its mode); a FIFO
    and /dev/stdout are written as the bytes come (not replaced); a directory, a missing
    parent or a loop of links is one line naming the path, before anything is fetched,
    and leaves nothing behind."""
    data_dir = network.nodes[0].data_dir
    original = random_file(directory, 100_000, seed=21)
    capability = put(data_dir, original)
    target = directory / "target.bin"
    target.write_bytes(b"old")
    target.chmod(0o600)
    link = directory / "link.bin"
    link.symlink_to(target.name)  # relative, as `ln -s` makes them
    succeeds(data_dir, "get", capability, "-o", str(link))
    assert link.is_symlink() and link.resolve() == target
    assert target.read_bytes() == original.read_bytes()
    assert stat.S_IMODE(target.stat().st_mode) == 0o600  # plaintext stays private

    assert succeeds(data_dir, "get", capability, "-o", "/dev/stdout") == original.read_bytes()

    fifo = directory / "pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []

    def read_fifo() -> None:
        with open(fifo, "rb") as reader:
            received.append(reader.read())

    reader = threading.Thread(target=read_fifo, daemon=True)  # never holds up pytest
    reader.start()
    result = freehold(data_dir, "get", capability, "-o", str(fifo))
    if reader.is_alive():  # the get never opened the FIFO: let the reader go, then fail
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    reader.join(CLI_TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert received == [original.read_bytes()]
    assert fifo.is_fifo()

    folder = directory / "folder"
    folder.mkdir()
    message = one_line_error(freehold(data_dir, "get", capability, "-o", str(folder)))
    assert f"cannot write to {folder}: it is a directory" in message
    assert list(folder.iterdir()) == []
    missing = directory / "nowhere" / "file.bin"
    message = one_line_error(freehold(data_dir, "get", capability, "-o", str(missing)))
    assert f"cannot write to {missing}" in message and "no directory" in message
    loop = directory / "loop1"
    loop.symlink_to("loop2")
    (directory / "loop2").symlink_to("loop1")
    message = one_line_error(freehold(data_dir, "get", capability, "-o", str(loop)))
    assert f"cannot write to {loop}: Too many levels of symbolic links" in message
    assert loop.is_symlink()
    assert not any(path.name.endswith(".freehold-partial") for path in directory.iterdir())


def test_sigterm_during_a_get_removes_the_partial_file(network: Testnet, directory: Path) -> None:
    """The file being written is plaintext: SIGTERM, like Ctrl-C, removes it."""
    data_dir = network.nodes[0].data_dir
    capability = put(data_dir, random_file(directory, 128 * 1024 * 1024, seed=27))
    output = directory / "copy.bin"
    partial = directory / ".copy.bin.freehold-partial"
    command = ["get", capability, "-o", str(output)]
    getting = subprocess.Popen(
        [sys.executable, "-m", "node.cli", "--data-dir", str(data_dir), *command],
        stderr=subprocess.PIPE,
        cwd=REPO,
        env=environment(),
    )
    try:
        deadline = time.monotonic() + CLI_TIMEOUT
        while not partial.exists() or partial.stat().st_size == 0:
            assert getting.poll() is None, "the get ended before it could be interrupted"
            assert time.monotonic() < deadline
            time.sleep(0.005)
        getting.send_signal(signal.SIGTERM)
        _, errors = getting.communicate(timeout=CLI_TIMEOUT)
    finally:
        if getting.poll() is None:
            getting.kill()
            getting.wait()
    assert getting.returncode == 130, errors
    assert errors.decode().strip() == "freehold: interrupted"
    assert not partial.exists() and not output.exists()


def test_node_listen_and_socket_path_errors_name_the_problem(directory: Path) -> None:
    """An address that is not this machine's, and a data dir too long for a Unix socket
    path, each fail `freehold node` with one line that says which."""
    # 192.0.2.1 (TEST-NET-1) is nobody's: bind fails at once, and nothing is sent
    # (unless the kernel lets anyone bind any address).
    nonlocal_bind = Path("/proc/sys/net/ipv4/ip_nonlocal_bind")
    if not (nonlocal_bind.exists() and nonlocal_bind.read_text().strip() == "1"):
        message = one_line_error(freehold(directory / "a", "node", "--listen", "192.0.2.1:0"))
        assert "cannot listen on 192.0.2.1:0" in message
    deep = directory / ("d" * 120)
    message = one_line_error(freehold(deep, "node", "--listen", "127.0.0.1:0"))
    assert "control socket path" in message and "shorter --data-dir" in message
    assert not deep.exists()  # refused before anything was made
    message = one_line_error(freehold(deep, "status"))
    assert "shorter --data-dir" in message


def test_signals_stop_a_node_cleanly(directory: Path) -> None:
    """SIGINT and SIGTERM each make `freehold node` exit 0 and remove its socket."""
    for number in (signal.SIGINT, signal.SIGTERM):
        with open_testnet(1, directory / number.name) as testnet:
            node = testnet.nodes[0]
            node.process.send_signal(number)
            assert node.process.wait(timeout=START_TIMEOUT) == 0
            assert not (node.data_dir / "control.sock").exists()


def test_get_on_a_network_it_cannot_reach_fails(directory: Path) -> None:
    """A node alone (its bootstrap does not answer) cannot find a file: one line."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    dead = "{}:{}".format(*probe.getsockname())
    probe.close()
    with open_testnet(1, directory, extra=["--bootstrap", dead]) as testnet:
        result = freehold(testnet.nodes[0].data_dir, "get", unknown_capability(seed=22))
        assert "no reachable node holds the manifest" in one_line_error(result)
        assert result.returncode == 1


def test_client_commands_do_not_import_trio(directory: Path) -> None:
    """The CLI starts fast because a client command imports neither trio nor the node."""
    code = (
        "import sys; from node.cli import main; "
        f"main(['--data-dir', {str(directory)!r}, 'status']); "
        "print(sorted(m for m in ('trio', 'node.node', 'nacl') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, cwd=REPO, env=environment(), check=False
    )
    assert result.stdout == b"[]\n", (result.stdout, result.stderr)


def on_a_terminal(
    *command: str, stdout_too: bool = False
) -> tuple[subprocess.CompletedProcess[bytes], bytes]:
    """Run `command` with stderr (and stdout, if `stdout_too`) on a 24 x 80
    pseudo-terminal: its result (stdout captured unless on the terminal) and what it
    drew on the terminal."""
    controller, terminal = pty.openpty()
    # A fresh pty has no size, and tqdm draws nothing in 0 columns.
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    drawn = bytearray()

    def drain() -> None:  # read as it is drawn: a pty holds only so much
        while True:
            try:
                piece = os.read(controller, 65536)
            except OSError:  # EIO: the child closed its end
                return
            if not piece:
                return
            drawn.extend(piece)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", "node.cli", *command],
            stdout=terminal if stdout_too else subprocess.PIPE,
            stderr=terminal,
            cwd=REPO,
            env=environment(),
        )
        os.close(terminal)  # the child holds the only other end now
        output, _ = child.communicate(timeout=CLI_TIMEOUT)
        reader.join(CLI_TIMEOUT)
    finally:
        os.close(controller)
    return subprocess.CompletedProcess(child.args, child.returncode, output), bytes(drawn)


def test_progress_bars_on_a_terminal_only(network: Testnet, directory: Path) -> None:
    """put and get draw a progress bar on stderr when it is a terminal, get's with the
    file's size and a time left; nothing is drawn when stderr is not a terminal (the
    other tests' `succeeds` checks that stderr stays empty), nor when the file itself
    goes to the terminal."""
    data_dir = str(network.nodes[0].data_dir)
    original = random_file(directory, 9 * 1024 * 1024, seed=23)
    result, drawn = on_a_terminal("--data-dir", data_dir, "put", str(original))
    assert result.returncode == 0
    capability = result.stdout.decode().strip()
    assert CAPABILITY.match(capability)
    assert b"put" in drawn and b"B/s" in drawn, drawn[-300:]
    copy = directory / "copy.bin"
    result, drawn = on_a_terminal("--data-dir", data_dir, "get", capability, "-o", str(copy))
    assert result.returncode == 0
    assert b"get" in drawn and b"B/s" in drawn, drawn[-300:]
    # tqdm with a total: "get:  44%|####   | 4.00M/9.00M [00:00<00:01, 8.1MB/s]"
    assert re.search(rb"get: +\d+%\|.*/9\.00M \[\d\d:\d\d<\d\d:\d\d", drawn), drawn[-300:]
    assert copy.read_bytes() == original.read_bytes()
    text = directory / "text.txt"
    text.write_bytes(b"plain text line\n" * 100)
    capability = put(network.nodes[0].data_dir, text)
    result, drawn = on_a_terminal("--data-dir", data_dir, "get", capability, stdout_too=True)
    assert result.returncode == 0
    assert drawn == b"plain text line\r\n" * 100  # the terminal's own \n -> \r\n, no bar


def test_testnet_command_runs_until_interrupted(directory: Path) -> None:
    """`freehold testnet`: prints each node; a node stopped on its own is reported and
    the others run on; SIGTERM (as Ctrl-C) stops them all and exits 0."""
    out, err = directory / "out.txt", directory / "err.txt"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        testnet = subprocess.Popen(
            [sys.executable, "-m", "node.cli", "testnet", "--nodes", "3", "--dir", str(directory)],
            stdout=stdout,
            stderr=stderr,
            cwd=REPO,
            env=environment(),
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while b"nodes running" not in out.read_bytes():
            assert testnet.poll() is None, err.read_text()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        lines = out.read_text().splitlines()
        assert [line.split()[:2] for line in lines[:3]] == [
            ["node", "0"],
            ["node", "1"],
            ["node", "2"],
        ]
        assert lines[3].startswith(f"happy lowered to 3: a put needs {HAPPY} distinct nodes")
        # The README's steps as written: the data dir it prints, then `freehold put`.
        exported = [line.split()[1] for line in lines if line.startswith("  export ")]
        assert exported == [f"FREEHOLD_DATA_DIR={directory / 'node-00'}"]
        variables = environment() | dict([exported[0].split("=", 1)])
        file = random_file(directory, 5000, seed=30)
        stored = subprocess.run(
            [sys.executable, "-m", "node.cli", "put", str(file)],
            capture_output=True,
            timeout=CLI_TIMEOUT,
            cwd=REPO,
            env=variables,
            check=False,
        )
        assert stored.returncode == 0, stored.stderr
        assert CAPABILITY.match(stored.stdout.decode().strip())
        # Only the first node listens on loopback with no bootstrap, and is warned.
        unreachable = "no other machine can reach this node"
        assert unreachable in (directory / "node-00" / "node.log").read_text()
        assert unreachable not in (directory / "node-01" / "node.log").read_text()
        succeeds(directory / "node-01", "stop")
        while b"node 1 stopped (exit code 0); 2 still running" not in err.read_bytes():
            assert testnet.poll() is None, err.read_text()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert b"node id" in succeeds(directory / "node-00", "status")
        testnet.send_signal(signal.SIGTERM)
        assert testnet.wait(timeout=START_TIMEOUT) == 0
        for name in ("node-00", "node-01", "node-02"):
            assert not (directory / name / "control.sock").exists()
    finally:
        if testnet.poll() is None:
            testnet.terminate()
            try:
                testnet.wait(timeout=START_TIMEOUT)
            except subprocess.TimeoutExpired:
                testnet.kill()
                testnet.wait()
        for name in ("node-00", "node-01", "node-02"):  # nothing outlives a failed test
            if (directory / name / "control.sock").exists():
                freehold(directory / name, "stop")


def test_a_killed_testnet_takes_its_nodes_with_it(directory: Path) -> None:
    """SIGKILL to `freehold testnet` (no chance to clean up) still stops every node: each
    asked the kernel for SIGTERM when its parent goes."""
    testnet = subprocess.Popen(
        [sys.executable, "-m", "node.cli", "testnet", "--nodes", "2", "--dir", str(directory)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=REPO,
        env=environment(),
    )
    sockets = [directory / name / "control.sock" for name in ("node-00", "node-01")]
    try:
        assert testnet.stdout is not None
        for line in testnet.stdout:  # the last line it prints once all are up
            if b"nodes running" in line:
                break
        assert all(path.exists() for path in sockets)
        testnet.kill()
        testnet.wait()
        deadline = time.monotonic() + START_TIMEOUT
        while any(path.exists() for path in sockets):  # a node removes it as it stops
            assert time.monotonic() < deadline, "a node outlived its testnet"
            time.sleep(0.05)
    finally:
        if testnet.poll() is None:
            testnet.kill()
            testnet.wait()
        for path in sockets:
            if path.exists():
                freehold(path.parent, "stop")


def test_demo_succeeds() -> None:
    """`freehold demo` (what `make run` runs) puts, loses 3 nodes, gets, exits 0."""
    result = subprocess.run(
        [sys.executable, "-m", "node.cli", "demo"],
        capture_output=True,
        timeout=120,
        cwd=REPO,
        env=environment(),
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert b"the copy is byte-identical to the original" in result.stdout
    assert b"stopped nodes" in result.stdout


def vm_hwm_mib(node: TestnetNode) -> float:
    """The node's peak resident memory so far (VmHWM), in MiB."""
    status = Path(f"/proc/{node.process.pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    assert match is not None
    return int(match.group(1)) / 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_memory_stays_flat_through_a_big_put_and_get(directory: Path) -> None:
    """After a 16 MiB put and get, a 128 MiB put and get raise neither the uploading nor
    the downloading node's peak RSS by more than 24 MiB: memory does not grow with the
    file (it would by over 100 MiB if a node held the file or its chunks)."""
    with open_testnet(NODES, directory / "net") as testnet:
        wait_until_joined(testnet)
        uploader, downloader = testnet.nodes[0], testnet.nodes[5]
        for size, seed in ((16 * 1024 * 1024, 24), (128 * 1024 * 1024, 25)):
            original = random_file(directory, size, seed)
            capability = put(uploader.data_dir, original)
            copy = directory / "copy.bin"
            succeeds(downloader.data_dir, "get", capability, "-o", str(copy))
            assert copy.read_bytes() == original.read_bytes()
            copy.unlink()
            original.unlink()
            if size == 16 * 1024 * 1024:
                warm = (vm_hwm_mib(uploader), vm_hwm_mib(downloader))
        grown = (vm_hwm_mib(uploader) - warm[0], vm_hwm_mib(downloader) - warm[1])
        assert grown[0] < 24 and grown[1] < 24, (warm, grown)


def test_a_node_killed_mid_upload_keeps_every_chunk_it_acknowledged(directory: Path) -> None:
    """SIGKILL a storage node while a put sends it chunks: its store reopens with no
    temp file left and every indexed chunk intact, and once it is back the file is
    healthy, so every chunk it had acknowledged (and the uploader did not place again)
    survived the kill."""
    with open_testnet(NODES, directory / "net") as testnet:
        wait_until_joined(testnet)
        victim = testnet.nodes[3]
        original = random_file(directory, 128 * 1024 * 1024, seed=26)
        uploader = str(testnet.nodes[0].data_dir)
        uploading = subprocess.Popen(
            [sys.executable, "-m", "node.cli", "--data-dir", uploader, "put", str(original)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=REPO,
            env=environment(),
        )
        try:
            _kill_mid_upload_and_check(testnet, victim, uploading)
        finally:
            if uploading.poll() is None:
                uploading.kill()
                uploading.wait()


def _kill_mid_upload_and_check(
    testnet: Testnet, victim: TestnetNode, uploading: subprocess.Popen[bytes]
) -> None:
    """SIGKILL `victim` once 3 chunks of the running upload are committed in its index;
    then check what it kept (see the test above)."""
    chunks = victim.data_dir / "chunks"
    index = f"file:{chunks / 'index.sqlite'}?mode=ro"
    deadline = time.monotonic() + CLI_TIMEOUT
    committed: set[bytes] = set()
    while len(committed) < 3:  # read beside the node (WAL), as it commits them
        assert uploading.poll() is None, "the put ended before the victim had 3 chunks"
        assert time.monotonic() < deadline
        with (
            contextlib.suppress(sqlite3.Error),
            closing(sqlite3.connect(index, uri=True)) as reader,
        ):
            committed = {row[0] for row in reader.execute("SELECT chunk_id FROM chunks")}
        time.sleep(0.01)
    victim.stop(kill=True)
    still_uploading = uploading.poll() is None
    output, errors = uploading.communicate(timeout=CLI_TIMEOUT)
    assert uploading.returncode == 0, errors.decode(errors="replace")
    assert still_uploading, "the kill came after the put: make the file bigger"
    capability = output.decode().strip()

    store = open_chunk_store(victim.data_dir, StoreConfig())
    try:
        held = list(store.chunk_ids())
        for chunk_id in held:
            store.get(chunk_id)  # raises ChunkDamaged if a file is torn or missing
    finally:
        store.close()
    assert committed <= set(held)
    assert [path for path in (chunks / "tmp").iterdir()] == []

    restart(victim, testnet.nodes[0].address)
    result = freehold(testnet.nodes[0].data_dir, "check", capability)
    assert result.returncode == 0, result.stdout.decode()  # healthy: n live per segment
