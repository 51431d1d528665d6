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


# In a fresh process, start a thread that calls malloc and count the big mappings that
# appear meanwhile: by default glibc reserves the thread an arena of its own, 64 MiB of
# address space (the thread's 8 MiB stack is smaller).
ARENA_PROBE = """
import ctypes
import sys
import threading
from pathlib import Path
from node.allocator import tune_allocator
if sys.argv[1] == "tuned":
    assert tune_allocator()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
def mappings():
    return set(Path("/proc/self/maps").read_text().splitlines())
before = mappings()
thread = threading.Thread(target=lambda: libc.malloc(1000))
thread.start()
thread.join()
sizes = [int(end, 16) - int(start, 16) for start, end in
         (line.split()[0].split("-") for line in mappings() - before)]
print(sum(1 for size in sizes if size >= 16 * 1024 * 1024))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tuned_allocator_keeps_threads_in_one_arena() -> None:
    """By default a thread's first malloc maps an arena of its own (which then keeps
    its own free memory); once tuned every thread shares the one arena."""

    def new_mappings(mode: str) -> int:
        result = subprocess.run(
            [sys.executable, "-c", ARENA_PROBE, mode], capture_output=True, check=True, timeout=60
        )
        return int(result.stdout)

    assert new_mappings("default") >= 1
    assert new_mappings("tuned") == 0
