"""Quota benchmark: what a chunk really costs a holder's disk, beside what it is charged.

Method, in one run on this machine: for each kind of chunk below, a fresh disk chunk
store (node/store/disk.py, the node's own) under a temp directory takes `count` chunks
of random bytes, each with a group record of `n` ids, and `du` measures the directory
before and after (the index's WAL checkpointed by closing the store). Beside the bytes
on disk per chunk it prints the charge `node.quota.chunk_cost` makes, and the baseline
the issue found: charging chunk bytes alone (what the store counted before).

| kind                          | why                                                |
|-------------------------------|----------------------------------------------------|
| 16-byte chunks, 256-id record | the attack found: tiny chunks, the largest record  |
| 16-byte chunks, 10-id record  | tiny chunks as the default code makes them         |
| empty chunks, group of one    | the smallest chunk there is                        |
| 100 KB chunks, 10-id record   | a small file's chunks                              |
| 1.4 MB chunks, 10-id record   | the default 4 MiB segment's chunk at 3-of-10       |

Target (the issue's): the charge within 10% of the disk's cost or above it, for each
kind; the baseline undercharges tiny chunks hundreds of times.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Final

from benchmarks import BenchmarkError, BenchmarkOptions
from node.quota import chunk_cost
from node.store import DiskChunkStore, StoreConfig
from protocol.chunk import GroupRecord, chunk_id

__all__ = ["run_quota_benchmark"]

KINDS: Final = (
    ("16 B, n=256", 16, 256, 1500),
    ("16 B, n=10", 16, 10, 1500),
    ("0 B, n=1", 0, 1, 1500),
    ("100 KB, n=10", 100_000, 10, 200),
    ("1.4 MB, n=10", 1_398_107, 10, 20),
)


def _disk_usage(path: Path) -> int:
    """Bytes `du` counts under `path` (blocks actually allocated)."""
    if shutil.which("du") is None:
        raise BenchmarkError("this benchmark needs `du`")
    output = subprocess.run(
        ["du", "-sk", str(path)], capture_output=True, check=True, text=True
    ).stdout
    return int(output.split()[0]) * 1024


def _measure(size: int, n: int, count: int, seed: int) -> float:
    """Disk bytes per chunk for `count` chunks of `size` bytes in groups of `n`."""
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="freehold-quota-") as directory:
        root = Path(directory)
        DiskChunkStore.open(root, StoreConfig(capacity=10**12)).close()
        before = _disk_usage(root)
        with DiskChunkStore.open(root, StoreConfig(capacity=10**12)) as store:
            for _ in range(count):
                data = rng.randbytes(size)
                identifier = chunk_id(data)
                ids = [rng.randbytes(32) for _ in range(n)]
                ids[0] = identifier
                store.put(identifier, data, GroupRecord(min(3, n), n, 0, tuple(ids)))
        return (_disk_usage(root) - before) / count


def run_quota_benchmark(options: BenchmarkOptions) -> None:
    print("quota benchmark: a chunk's cost on disk vs its charge (node/quota.py)")
    print(f"{'chunk':16}{'on disk':>12}{'charged':>12}{'ratio':>8}{'bytes only':>12}{'ratio':>9}")
    rows = []
    for seed, (name, size, n, count) in enumerate(KINDS):
        count = max(10, count // 10) if options.quick else count
        disk = _measure(size, n, count, seed)
        charged = chunk_cost(size, n)
        baseline = size
        row = {
            "metric": "chunk_cost",
            "kind": name,
            "chunks": count,
            "disk_bytes": round(disk),
            "charged": charged,
            "charged_over_disk": charged / disk if disk > 0 else None,
            "bytes_only": baseline,
            "bytes_only_over_disk": baseline / disk if disk > 0 else None,
        }
        rows.append(row)
        print(
            f"{name:16}{disk:>12,.0f}{charged:>12,}"
            f"{(charged / disk if disk > 0 else float('nan')):>8.2f}"
            f"{baseline:>12,}{(baseline / disk if disk > 0 else float('nan')):>9.3f}"
        )
    print("(ratio: charged / on disk; 'bytes only' is what capacity counted before)")
    for row in rows:
        print(json.dumps(row))
