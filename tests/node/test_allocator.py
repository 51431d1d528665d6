"""node/allocator: glibc's malloc thresholds are raised for multi-MiB buffers."""

from __future__ import annotations

import subprocess
import sys

import pytest

# In a fresh process, allocate one 8 MiB buffer and say whether it got a mapping of
# its own (glibc's default for anything over 128 KiB) or came from the heap.
PROBE = """
import sys
from pathlib import Path
from node.allocator import tune_allocator
if sys.argv[1] == "tuned":
    assert tune_allocator()
def mappings():
    return set(Path("/proc/self/maps").read_text().splitlines())
before = mappings()
buffer = bytearray(8 * 1024 * 1024)
new = [line for line in mappings() - before if "[heap]" not in line]
sizes = [int(end, 16) - int(start, 16) for start, end in
         (line.split()[0].split("-") for line in new)]
print(sum(1 for size in sizes if size >= 8 * 1024 * 1024))
"""


def own_mappings(mode: str) -> int:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, check=True, timeout=60
    )
    return int(result.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tuned_allocator_serves_big_buffers_from_the_heap() -> None:
    """By default an 8 MiB buffer is an mmap of its own (page-faulted in afresh each
    time); once tuned it comes from the heap, whose freed memory is reused."""
    assert own_mappings("default") == 1
    assert own_mappings("tuned") == 0
