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

__all__ = [
    "CHECK_FAILED",
    "DEGRADED",
    "HEALTHY",
    "NOT_FOUND",
    "UNREADABLE",
    "check",
    "forget",
    "get",
    "keep",
    "ls",
    "peers",
    "put",
    "repair",
    "status",
    "stop",
    "stop_on_sigterm",
]

# Exit codes of `freehold check` and `repair`: NOT_FOUND when no manifest is found under
# the capability (nothing to check), CHECK_FAILED when the check itself failed.
HEALTHY, DEGRADED, UNREADABLE, CHECK_FAILED, NOT_FOUND = 0, 1, 2, 3, 4
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


def _progress_bar(total: int | None, label: str, output: int | None = None) -> Any:
    """A tqdm bar on stderr when it is a terminal and the data is not going to one (a
    bar drawn between the lines of a file would garble both), else None."""
    if not sys.stderr.isatty() or (output is not None and os.isatty(output)):
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, leave=False)


def _json_wanted(arguments: argparse.Namespace) -> bool:
    return bool(getattr(arguments, "json", False))


def _print_json(value: Any) -> None:
    """One JSON object, one line, on stdout (README.md#json-output)."""
    import json

    print(json.dumps(value, sort_keys=True))


def _open_source(arguments: argparse.Namespace) -> tuple[BinaryIO, str]:
    """The file to put, as a regular file the node can read by descriptor, and the name
    to store with it."""
    from node.control import regular_file

    path = arguments.path
    if path == "-":
        return _spooled(sys.stdin.buffer), arguments.name or ""
    name = arguments.name
    if name is None:
        # /dev/stdin, /dev/fd/63 or /proc/self/fd/0 name a descriptor, not the data.
        name = "" if path.startswith(("/dev/", "/proc/")) else os.path.basename(path)
    source: BinaryIO = open(path, "rb")  # noqa: SIM115 - the caller closes it
    if regular_file(source.fileno()):
        return source, name
    # A pipe, a FIFO, a terminal or a device (`put <(cmd)`, `put /dev/stdin`): what it
    # holds is known only at its end, so it goes the way of `put -`.
    with source:
        return _spooled(source), name


def _spooled(stream: BinaryIO) -> BinaryIO:
    """`stream` read to its end into an anonymous temporary file ($TMPDIR), rewound.

    The file format needs the exact size before the first segment is encrypted (the
    padded size fixes the segment count, which every segment's associated data binds:
    docs/PROTOCOL.md#sizes-and-padding), so a stream is taken whole first. The file has
    no name (unlinked at once) and goes when the command ends, however it ends."""
    import tempfile

    spool: BinaryIO = tempfile.TemporaryFile()  # noqa: SIM115 - the caller closes it
    try:
        while block := stream.read(PIECE):
            spool.write(block)
        spool.flush()
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    return spool


def put(arguments: argparse.Namespace, data_dir: Path) -> int:
    source, name = _open_source(arguments)
    with source, _client(data_dir, timeout=None) as client:
        size = os.fstat(source.fileno()).st_size
        bar = _progress_bar(size, "put")
        # The node reads the file itself (node/control.py): no byte crosses the socket.
        client.send({"command": "put", "arguments": {"size": size, "name": name, "fd": True}})
        _send_fd(client, source.fileno())
        result = _drain(client, bar)
    if _json_wanted(arguments):
        _print_json(
            {
                "capability": result["capability"],
                "name": name,
                "size": result["size"],
                "seconds": result["seconds"],
            }
        )
    else:
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
                total = frame.get("total")
                if isinstance(total, int) and bar.total != total:
                    bar.total = total  # a get learns it from the manifest
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
    if _json_wanted(arguments) and arguments.output is None:
        raise NodeError(
            "get --json needs -o FILE: without it the file's bytes go to standard output, "
            "where the JSON summary would go"
        )
    result = _get_into(arguments, data_dir)
    if _json_wanted(arguments):
        _print_json(
            {
                "name": result["name"],
                "size": result["size"],
                "seconds": result["seconds"],
                "output": str(arguments.output),
            }
        )
    return 0


def _get_into(arguments: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    """Get the file to stdout or to -o; the node's result (name, size, seconds)."""
    from node.errors import NodeError

    if arguments.output is None:
        out = sys.stdout.buffer
        out.flush()
        result = _fetch_into(data_dir, arguments.capability, out.fileno(), out.write)
        out.flush()
        return result
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
            return _fetch_into(data_dir, arguments.capability, file.fileno(), file.write)
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
            result = _fetch_into(data_dir, arguments.capability, file.fileno(), file.write)
        os.replace(temporary, target)
    finally:
        with contextlib.suppress(OSError):  # never hides the error that got us here
            temporary.unlink(missing_ok=True)
    return result


def stop_on_sigterm() -> None:
    """Make SIGTERM end the command as Ctrl-C does, with its clean-up (finally blocks)."""
    import signal

    def interrupt(number: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def _fetch_into(
    data_dir: Path, capability: str, fd: int, write: Callable[[bytes], object]
) -> dict[str, Any]:
    """Have the node get the file into `fd`: by descriptor, so the node writes it
    itself, when it is a regular file; else streamed here and given to `write`."""
    from node.control import regular_file

    with _client(data_dir, timeout=None) as client:
        bar = _progress_bar(None, "get", fd)  # its total comes with the first progress
        if regular_file(fd):
            client.send({"command": "get", "arguments": {"capability": capability, "fd": True}})
            _send_fd(client, fd)
            result: dict[str, Any] = _drain(client, bar)
        else:
            client.send({"command": "get", "arguments": {"capability": capability}})
            result = _drain(client, bar, write)
    return result


NO_MANIFEST: Final = (
    "no manifest found: no node we reach holds a manifest under {id}; either no file "
    "was ever stored under this capability (a typo, or another network's), or every "
    "copy of its manifest is gone"
)


def _no_manifest(capability: str) -> str:
    from protocol.capability import VerifyCapability, parse_capability

    return NO_MANIFEST.format(id=VerifyCapability(parse_capability(capability).manifest_id))


def _state(result: dict[str, Any]) -> tuple[str, int]:
    """A check's or repair's verdict (README.md#json-output) and its exit status."""
    if not result["found"]:
        return "no manifest", NOT_FOUND
    if result["healthy"]:
        return "healthy", HEALTHY
    if result["readable"]:
        return "degraded", DEGRADED
    return "unreadable", UNREADABLE


def check(arguments: argparse.Namespace, data_dir: Path) -> int:
    result = _command(data_dir, "check", capability=arguments.capability, full=arguments.full)
    state, code = _state(result)
    if _json_wanted(arguments):
        _print_json({**result, "state": state})
        return code
    if not result["found"]:
        print(_no_manifest(arguments.capability))
        return NOT_FOUND
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
    state, code = _state(result)
    if _json_wanted(arguments):
        _print_json({**result, "state": state})
        return code
    if not result["found"]:
        print(_no_manifest(arguments.capability))
        return NOT_FOUND
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
    if _json_wanted(arguments):
        _print_json(result)
        return 0
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
    if _json_wanted(arguments):
        _print_json({"peers": result["peers"], "liars": result.get("liars", [])})
        return 0
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
    if _json_wanted(arguments):
        _print_json({"files": files})
        return 0
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
    if _json_wanted(arguments):
        _print_json(result)
        return 0 if result["leased"] else 1
    line = f"leased {result['leased']} of {result['chunks']} chunks at {result['holders']} holders"
    if result["lease_expires"]:
        line += time.strftime(" until %Y-%m-%d", time.localtime(result["lease_expires"]))
    print(line)
    if result["leased"] < result["chunks"]:
        print("some chunks were not reached; the node tries again within the hour")
    return 0 if result["leased"] else 1


def forget(arguments: argparse.Namespace, data_dir: Path) -> int:
    result = _command(data_dir, "forget", capability=arguments.capability)
    if _json_wanted(arguments):
        _print_json(result)
        return 0
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
    result = _command(data_dir, "stop")
    if _json_wanted(arguments):
        _print_json(result)
        return 0
    print("stopping")
    return 0
