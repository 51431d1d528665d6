"""Network benchmark: put and get through a 10-node testnet of real node processes.

Method. `node.testnet.open_testnet` starts 10 `freehold node` processes on 127.0.0.1
in a temporary directory (3-of-10 encoding, 4 MiB segments: the defaults). Then, all
through the real CLI (`python -m node.cli`, a fresh process per command, as a user
would run it):

1. put then get of 1 MiB, 16 MiB and 100 MiB random files (plus 1 GiB in a full run):
   wall time of each CLI command, MB/s of file bytes (1 MB = 10^6 bytes); the copy is
   compared with the original. Puts go through node 0, gets through node 5. Holders
   announce their chunks on the DHT once uploads pause (node/chunks.py); the get starts
   after those announcements are done, and the time they took is reported.
2. a 1 KiB put followed by its get, end to end (the median of 5).
3. peak RSS (VmHWM from /proc) of node 0, the uploading node, and the largest of the
   storage nodes, after the biggest file.
4. CPU of the idle testnet: user + system time of the 10 processes over 30 s (10 s in a
   quick run), as a percentage of one core.

Baseline in the same run: the encoding pipeline alone (protocol/stream.Encoder with
2 worker threads and the nodes' parity function, node/isal.best_parity, in this
process, no network) on the same bytes, and the decoding alone; the network figures
are printed beside them as a ratio. The issue's targets (Tahoe-LAFS measured on this
machine) are printed with each figure.

Every node, socket and file stays on this machine, under a temporary directory
removed at the end.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

from benchmarks import BenchmarkError, BenchmarkOptions
from node.isal import best_parity
from node.testnet import open_testnet, wait_until_joined
from protocol.capability import ReadCapability
from protocol.stream import Decoder, Encoder

__all__ = ["run_network_benchmark"]

NODES: Final = 10
MiB: Final = 1024 * 1024
FULL_SIZES: Final = (1 * MiB, 16 * MiB, 100 * MiB, 1024 * MiB)
QUICK_SIZES: Final = (1 * MiB, 16 * MiB)
SMALL: Final = 1024
SMALL_REPEATS: Final = 5
IDLE_SECONDS: Final = 30.0
QUICK_IDLE_SECONDS: Final = 10.0
UPLOADER: Final = 0
DOWNLOADER: Final = 5
COMMAND_TIMEOUT: Final = 900.0
# The targets.
TARGET_PUT_MBPS: Final = 80.0
TARGET_GET_MBPS: Final = 200.0
TARGET_SMALL_SECONDS: Final = 0.3
TARGET_RSS_MIB: Final = 100.0
TARGET_IDLE_PERCENT: Final = 2.0
CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")


def _cli(data_dir: Path, *arguments: str) -> tuple[bytes, float]:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "node.cli", "--data-dir", str(data_dir), *arguments],
        capture_output=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip()
        raise BenchmarkError(f"freehold {arguments[0]} failed: {message}")
    return result.stdout, elapsed


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise BenchmarkError("no VmHWM in /proc (not Linux?)")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def _wait_for_announcements(testnet: Any, timeout: float = COMMAND_TIMEOUT) -> float:
    """Wait until no node has chunks left to announce on the DHT; the seconds waited."""
    from node.control import ControlClient

    started = time.perf_counter()
    for node in testnet.nodes:
        while True:
            with ControlClient(node.data_dir / "control.sock", timeout=10) as client:
                client.send({"command": "status", "arguments": {}})
                status = list(client.frames())[-1]["result"]
            if status["announcements_pending"] == 0:
                break
            if time.perf_counter() - started > timeout:
                raise BenchmarkError("provider announcements did not finish")
            time.sleep(0.1)
    return time.perf_counter() - started


def _write_random(path: Path, size: int) -> None:
    with open(path, "wb") as file:
        left = size
        while left:
            block = os.urandom(min(left, 4 * MiB))
            file.write(block)
            left -= len(block)


def _same(first: Path, second: Path) -> bool:
    with open(first, "rb") as one, open(second, "rb") as two:
        while True:
            a, b = one.read(4 * MiB), two.read(4 * MiB)
            if a != b:
                return False
            if not a:
                return True


def _encode_alone(path: Path, size: int) -> tuple[float, float]:
    """Seconds to encode, then to decode (from the data chunks), with no network."""
    with ThreadPoolExecutor(2) as executor, open(path, "rb") as source:
        started = time.perf_counter()
        encoder = Encoder(
            source, random_bytes=os.urandom, executor=executor, window=2, parity=best_parity()
        )
        chunks: dict[int, list[tuple[bytes, bytes]]] = {}
        k = encoder.params.k
        for segment in encoder.segments():
            chunks[segment.index] = [(c.chunk_id, c.data) for c in segment.chunks[:k]]
        encode_seconds = time.perf_counter() - started
        capability = encoder.read_capability
        assert isinstance(capability, ReadCapability)
        started = time.perf_counter()
        decoder = Decoder(
            capability,
            encoder.manifest_bytes,
            lambda index: chunks[index],
            executor=executor,
            window=2,
        )
        for _ in decoder.blocks():
            pass
        decode_seconds = time.perf_counter() - started
    return encode_seconds, decode_seconds


def run_network_benchmark(options: BenchmarkOptions) -> None:
    sizes = QUICK_SIZES if options.quick else FULL_SIZES
    idle_seconds = QUICK_IDLE_SECONDS if options.quick else IDLE_SECONDS
    print(f"network benchmark: {NODES} node processes on 127.0.0.1, 3-of-10, 4 MiB segments")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="freehold-bench-") as temporary:
        directory = Path(temporary)
        with open_testnet(NODES, directory / "net") as testnet:
            wait_until_joined(testnet)
            uploader = testnet.nodes[UPLOADER].data_dir
            downloader = testnet.nodes[DOWNLOADER].data_dir
            for size in sizes:
                original = directory / "original.bin"
                copy = directory / "copy.bin"
                _write_random(original, size)
                # A small file holds only a fraction of one segment: the encoder's
                # baseline is meaningless below a few segments, and for 1 GiB too long.
                baseline = _encode_alone(original, size) if size <= 100 * MiB else None
                output, put_seconds = _cli(uploader, "put", str(original))
                capability = output.decode().strip()
                announce_seconds = _wait_for_announcements(testnet)
                _, get_seconds = _cli(downloader, "get", capability, "-o", str(copy))
                if not _same(original, copy):
                    raise BenchmarkError(f"the {size}-byte file came back different")
                row = {
                    "metric": "put_get",
                    "size_bytes": size,
                    "put_seconds": put_seconds,
                    "put_mb_per_s": size / put_seconds / 1e6,
                    "get_seconds": get_seconds,
                    "announce_seconds_after_put": announce_seconds,
                    "get_mb_per_s": size / get_seconds / 1e6,
                    "encode_alone_mb_per_s": size / baseline[0] / 1e6 if baseline else None,
                    "decode_alone_mb_per_s": size / baseline[1] / 1e6 if baseline else None,
                    "uploader_peak_rss_mib": _peak_rss_mib(testnet.nodes[UPLOADER].process.pid),
                    "storage_peak_rss_mib": max(
                        _peak_rss_mib(node.process.pid)
                        for node in testnet.nodes
                        if node.index not in (UPLOADER, DOWNLOADER)
                    ),
                }
                rows.append(row)
                original.unlink()
                copy.unlink()
            small = directory / "small.bin"
            _write_random(small, SMALL)
            small_times = []
            for _ in range(SMALL_REPEATS):
                started = time.perf_counter()
                output, _ = _cli(uploader, "put", str(small))
                _cli(downloader, "get", output.decode().strip(), "-o", str(directory / "s.out"))
                small_times.append(time.perf_counter() - started)
            rows.append({"metric": "small_put_get", "seconds": statistics.median(small_times)})
            _wait_for_announcements(testnet)
            before = {node.index: _cpu_seconds(node.process.pid) for node in testnet.nodes}
            time.sleep(idle_seconds)
            used = sum(
                _cpu_seconds(node.process.pid) - before[node.index] for node in testnet.nodes
            )
            rows.append(
                {
                    "metric": "idle_cpu",
                    "seconds": idle_seconds,
                    "percent_of_one_core": used / idle_seconds * 100,
                }
            )
    _report(rows)


def _report(rows: list[dict[str, Any]]) -> None:
    print()
    print(
        f"{'size':>9} {'put MB/s':>9} {'(target)':>8} {'get MB/s':>9} {'(target)':>8} "
        f"{'encode alone':>12} {'put/enc':>7} {'decode alone':>12} {'get/dec':>7} "
        f"{'RSS up MiB':>10} {'RSS store':>9}"
    )
    for row in rows:
        if row["metric"] != "put_get":
            continue
        encode = row["encode_alone_mb_per_s"]
        decode = row["decode_alone_mb_per_s"]
        print(
            f"{row['size_bytes'] / MiB:>5.0f} MiB {row['put_mb_per_s']:>9.1f} "
            f"{TARGET_PUT_MBPS:>8.0f} {row['get_mb_per_s']:>9.1f} {TARGET_GET_MBPS:>8.0f} "
            f"{encode or 0:>12.0f} {row['put_mb_per_s'] / encode if encode else 0:>7.2f} "
            f"{decode or 0:>12.0f} {row['get_mb_per_s'] / decode if decode else 0:>7.2f} "
            f"{row['uploader_peak_rss_mib']:>10.0f} {row['storage_peak_rss_mib']:>9.0f}"
        )
    for row in rows:
        if row["metric"] == "small_put_get":
            print(
                f"1 KiB put then get through the CLI: {row['seconds'] * 1000:.0f} ms "
                f"(target {TARGET_SMALL_SECONDS * 1000:.0f} ms, ratio "
                f"{row['seconds'] / TARGET_SMALL_SECONDS:.2f})"
            )
        elif row["metric"] == "idle_cpu":
            print(
                f"idle testnet CPU: {row['percent_of_one_core']:.2f}% of one core over "
                f"{row['seconds']:.0f} s (target {TARGET_IDLE_PERCENT:.0f}%)"
            )
    print(f"peak RSS target: {TARGET_RSS_MIB:.0f} MiB for the uploading and a storage node")
    for row in rows:
        print(json.dumps(row, sort_keys=True))
