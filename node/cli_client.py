"""The `freehold` commands that talk to a running node through its control socket:
put, get, check, status, peers, stop (node/cli.py parses the command line).

They use a blocking socket (node/control.py's `ControlClient`) and import nothing
heavy: no trio, no node, so a command starts in a few tens of milliseconds. Every
error is a `NodeError` (or a `ProtocolError`, or an `OSError` of the user's own files),
which `node.cli.main` turns into one line.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Final

__all__ = ["check", "get", "peers", "put", "repair", "status", "stop", "stop_on_sigterm"]

# Exit codes of `freehold check`.
HEALTHY, DEGRADED, UNREADABLE, CHECK_FAILED = 0, 1, 2, 3
PIECE = 1024 * 1024


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


def put(arguments: argparse.Namespace, data_dir: Path) -> int:
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


def get(arguments: argparse.Namespace, data_dir: Path) -> int:
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
    stop_on_sigterm()  # so that the partial file, plaintext, is removed below
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


def stop_on_sigterm() -> None:
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


NO_MANIFEST: Final = (
    "no node holds a manifest under this id: either no file was ever stored under it, "
    "or every copy of its manifest is gone"
)


def check(arguments: argparse.Namespace, data_dir: Path) -> int:
    result = _command(data_dir, "check", capability=arguments.capability, full=arguments.full)
    if not result["found"]:
        print(NO_MANIFEST)
        return CHECK_FAILED
    k, n = result["k"], result["n"]
    segments = result["segments"]
    print(f"manifest: {result['manifest_holders']} holder(s)")
    for segment in segments:
        live = segment["live"]
        state = "ok" if live >= n else ("degraded" if live >= k else "UNREADABLE")
        line = f"segment {segment['index']}: {live}/{n} chunks live, "
        line += f"{segment['missing']} missing (need {k}) {state}"
        if segment["lying"]:
            line += f"; {len(segment['lying'])} lying: " + ", ".join(
                node_id[:16] for node_id in segment["lying"]
            )
        if segment["fetched"]:
            line += "; audit undecided, chunks fetched whole"
        print(line)
    if result["sampled"]:
        print(
            f"audited a random sample of {len(segments)} of {result['segment_count']} "
            "segments (--full audits every one)"
        )
    if result["healthy"]:
        print("healthy")
        return HEALTHY
    if result["readable"]:
        print("degraded but readable")
        return DEGRADED
    print("unreadable")
    return UNREADABLE


def repair(arguments: argparse.Namespace, data_dir: Path) -> int:
    result = _command(data_dir, "repair", capability=arguments.capability)
    if not result["found"]:
        print(NO_MANIFEST)
        return CHECK_FAILED
    k, n = result["k"], result["n"]
    if result["manifest_copies_added"]:
        print(f"manifest: {result['manifest_copies_added']} copies added")
    for segment in result["segments"]:
        line = f"segment {segment['index']}: {segment['live_before']}/{n} live"
        if segment["rebuilt"]:
            line += f", {segment['rebuilt']} rebuilt, now {segment['live_after']}/{n}"
        elif segment["live_before"] >= n:
            line += ", nothing to do"
        if segment["problem"]:
            line += f" ({segment['problem']})"
        print(line)
    moved = result["bytes_fetched"] + result["bytes_stored"]
    print(
        f"moved {moved} bytes ({result['bytes_fetched']} fetched, {result['bytes_stored']} stored)"
    )
    if result["healthy"]:
        print("healthy")
        return HEALTHY
    if result["readable"]:
        print(f"degraded but readable (need {k} of {n} per segment)")
        return DEGRADED
    print("unreadable")
    return UNREADABLE


def status(arguments: argparse.Namespace, data_dir: Path) -> int:
    from node.config import format_size

    result = _command(data_dir, "status")
    print(f"node id:     {result['node_id']}")
    print(f"listening:   {result['listen']}")
    print(f"data dir:    {result['data_dir']}")
    print(f"contacts:    {result['contacts']} ({result['connections']} connected)")
    print(
        f"stored:      {result['chunks']} chunks, {format_size(result['used_bytes'])} of "
        f"{format_size(result['capacity'])} used on disk (files, index rows and group "
        "records)"
    )
    others = result["used_bytes"] - result["owner_bytes"] - result["trash_bytes"]
    print(
        f"space:       {format_size(result['donated_bytes'])} donated to others, "
        f"{format_size(max(0, others))} of it used; "
        f"{format_size(result['owner_bytes'])} leased by you here"
    )
    print(
        f"trash:       {result['trash_chunks']} chunks nobody leases, "
        f"{format_size(result['trash_bytes'])}; {result['chunks_deleted']} deleted since start"
    )
    print(
        f"leases:      {result['leases']} held here; {result['files_kept']} files of yours "
        f"kept ({format_size(result['files_kept_bytes'])}), renewed by this node"
    )
    print(
        f"repair:      {result['segments_watched']} segments watched, "
        f"{result['segments_checked_for_repair']} checked, "
        f"{result['segments_repaired']} repaired ({result['chunks_rebuilt']} chunks rebuilt), "
        f"{format_size(result['repair_bytes_moved'])} moved"
    )
    return 0


def peers(arguments: argparse.Namespace, data_dir: Path) -> int:
    result = _command(data_dir, "peers")
    lying = {liar["node_id"]: liar for liar in result.get("liars", []) if liar["avoided"]}
    for peer in result["peers"]:
        mark = "*" if peer["connected"] else " "
        flag = "  (caught lying: avoided)" if peer["node_id"] in lying else ""
        print(f"{mark} {peer['node_id']} {peer['address']}{flag}")
    if result.get("liars"):
        print("caught lying:")
        for liar in result["liars"]:
            state = "avoided" if liar["avoided"] else "forgiven"
            print(f"  {liar['node_id']} {liar['times']}x, {state}: {liar['reason']}")
    return 0


def ls(arguments: argparse.Namespace, data_dir: Path) -> int:
    import time

    from node.config import format_size

    files = _command(data_dir, "ls")["files"]
    if not files:
        print("no files: this node has put or kept none (or forgot them)")
        return 0
    for entry in files:
        size = format_size(entry["size"]) if entry["size"] is not None else "?"
        put_at = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry["put_at"]))
        if entry["lease_expires"]:
            until = time.strftime("%Y-%m-%d", time.localtime(entry["lease_expires"]))
        else:
            until = "not yet leased"
        pending = " (lease reached some holders only; retrying)" if entry["pending"] else ""
        name = entry["name"] or "-"
        print(f"{name}\t{size}\t{put_at}\tleased until {until}{pending}")
        print(f"  {entry['capability']}")
    return 0


def keep(arguments: argparse.Namespace, data_dir: Path) -> int:
    import time

    result = _command(data_dir, "keep", capability=arguments.capability)
    line = f"leased {result['leased']} of {result['chunks']} chunks at {result['holders']} holders"
    if result["lease_expires"]:
        line += time.strftime(" until %Y-%m-%d", time.localtime(result["lease_expires"]))
    print(line)
    if result["leased"] < result["chunks"]:
        print("some chunks were not reached; the node tries again within the hour")
    return 0 if result["leased"] else 1


def forget(arguments: argparse.Namespace, data_dir: Path) -> int:
    result = _command(data_dir, "forget", capability=arguments.capability)
    if not result["known"]:
        print("this file was not in the node's list; any lease of ours on it is given up")
    if result["reachable"]:
        print(
            f"released our lease at the holders of {result['released']} of "
            f"{result['chunks']} chunks; other keys' leases, if any, still keep it"
        )
    else:
        print("the file's manifest was not found: no holder told; our lease simply runs out")
    return 0


def stop(arguments: argparse.Namespace, data_dir: Path) -> int:
    _command(data_dir, "stop")
    print("stopping")
    return 0
