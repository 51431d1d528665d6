"""`freehold demo` (and `make run`): the whole promise in half a minute, on loopback.

It starts a 10-node testnet in a temporary directory, puts a 32 MiB random file
through node 0 (3-of-10 encoding: every segment on 10 nodes), stops 3 other nodes,
gets the file back through node 9, checks it is byte-identical, prints the capability
and the timings, stops everything and exits 0. Every node is a real `freehold node`
process on 127.0.0.1; the client side is the same code as `freehold put` and `get`.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

from node.errors import NodeError
from node.testnet import open_testnet, wait_until_joined

__all__ = ["run_demo"]

NODES: Final = 10
FILE_SIZE: Final = 32 * 1024 * 1024
STOPPED: Final = (3, 5, 7)
UPLOADER: Final = 0
DOWNLOADER: Final = 9


def _cli(data_dir: Path, *arguments: str, stdin: bytes | None = None) -> bytes:
    result = subprocess.run(
        [sys.executable, "-m", "node.cli", "--data-dir", str(data_dir), *arguments],
        input=stdin,
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip()
        raise NodeError(f"`freehold {' '.join(arguments)}` failed: {message}")
    return result.stdout


def run_demo() -> int:
    with tempfile.TemporaryDirectory(prefix="freehold-demo-") as temporary:
        directory = Path(temporary)
        print(f"starting {NODES} nodes on 127.0.0.1 in {directory} ...", flush=True)
        started = time.perf_counter()
        with open_testnet(NODES, directory) as testnet:
            wait_until_joined(testnet)
            print(f"  all {NODES} nodes up and joined in {time.perf_counter() - started:.1f} s")
            original = directory / "original.bin"
            original.write_bytes(os.urandom(FILE_SIZE))
            digest = hashlib.sha256(original.read_bytes()).hexdigest()
            uploader = testnet.nodes[UPLOADER].data_dir
            print(f"putting a {FILE_SIZE // 2**20} MiB random file through node {UPLOADER} ...")
            started = time.perf_counter()
            capability = _cli(uploader, "put", str(original)).decode().strip()
            put_seconds = time.perf_counter() - started
            print(f"  done in {put_seconds:.2f} s ({FILE_SIZE / put_seconds / 1e6:.0f} MB/s)")
            print(f"  capability: {capability}")
            for index in STOPPED:
                testnet.nodes[index].stop()
            print(f"stopped nodes {', '.join(map(str, STOPPED))}")
            downloader = testnet.nodes[DOWNLOADER].data_dir
            copy = directory / "copy.bin"
            print(f"getting it back through node {DOWNLOADER} ...")
            started = time.perf_counter()
            _cli(downloader, "get", capability, "-o", str(copy))
            get_seconds = time.perf_counter() - started
            print(f"  done in {get_seconds:.2f} s ({FILE_SIZE / get_seconds / 1e6:.0f} MB/s)")
            if hashlib.sha256(copy.read_bytes()).hexdigest() != digest:
                raise NodeError("the file that came back differs from the one put")
            print("the copy is byte-identical to the original")
            report = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "node.cli",
                    "--data-dir",
                    str(downloader),
                    "check",
                    capability,
                ],
                capture_output=True,
                check=False,
            )
            last = report.stdout.decode().strip().splitlines()[-1:]
            print(f"check after losing {len(STOPPED)} nodes: {' '.join(last)}")
        print("all nodes stopped")
    return 0
