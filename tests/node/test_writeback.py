"""node/writeback: the get's output file is written whole and its old pages handed back."""

from __future__ import annotations

import errno
import mmap
import os
import random
from pathlib import Path

import pytest

from node.commands import write_all
from node.errors import NodeError
from node.writeback import StreamingWriter, libc_sync_file_range
from tests.node.pages import can_drop_pages, resident_pages

WAIT_BEFORE, WRITE, WAIT_AFTER = 1, 2, 4
PAGE = mmap.PAGESIZE
MiB = 1024 * 1024
ALIGNMENT = 2 * MiB


class Recorder:
    """sync_file_range that records each call (and, given the real one, makes it)."""

    def __init__(self, real: object = None, fail: int | None = None) -> None:
        self.calls: list[tuple[int, int, int]] = []
        self.real = real
        self.fail = fail

    def __call__(self, fd: int, offset: int, count: int, flags: int) -> int:
        self.calls.append((offset, count, flags))
        if self.fail is not None:
            raise OSError(self.fail, os.strerror(self.fail))
        if callable(self.real):
            result: int = self.real(fd, offset, count, flags)
            return result
        return 0


def test_every_byte_is_written_and_only_what_lies_behind_keep_is_dropped(tmp_path: Path) -> None:
    rng = random.Random(5)
    sizes = [0, 1, 7, 4096, 10_000, 65_536, 1_000_000, 4 * MiB + 100]
    pieces = [rng.randbytes(rng.choice(sizes)) for _ in range(40)]
    keep = MiB
    recorder = Recorder()
    with open(tmp_path / "out", "wb", buffering=0) as file:
        writer = StreamingWriter(file, keep=keep, sync_file_range=recorder)
        for piece in pieces:
            writer.write(memoryview(bytearray(piece)))
    data = b"".join(pieces)
    assert (tmp_path / "out").read_bytes() == data

    started = [(offset, count) for offset, count, flags in recorder.calls if flags == WRITE]
    waited = [
        (offset, count)
        for offset, count, flags in recorder.calls
        if flags == WAIT_BEFORE | WRITE | WAIT_AFTER
    ]
    assert len(started) + len(waited) == len(recorder.calls)
    # Writeback was started for each non-empty write, exactly over what it wrote.
    assert started == [
        (sum(map(len, pieces[:i])), len(piece)) for i, piece in enumerate(pieces) if piece
    ]
    # What was waited for (and dropped) is contiguous from 0, each range ending on a
    # 2 MiB boundary (whole folios), never reaching into the last `keep` bytes.
    position = 0
    for offset, count in waited:
        assert offset == position and count > 0
        position += count
        assert position % ALIGNMENT == 0
    assert position == (len(data) - keep) // ALIGNMENT * ALIGNMENT
    assert len(waited) >= 3  # several drops, one of two boundaries at once


@pytest.mark.parametrize("piece", [65_536, 1_000_000])
def test_the_pages_behind_keep_leave_the_page_cache(tmp_path: Path, piece: int) -> None:
    """With the real system call: the start of a long file is no longer cached after
    it is written, and its end still is; writes that do not end on page boundaries
    (any segment size but the default) included."""
    real = libc_sync_file_range()
    if real is None:
        pytest.skip("this C library has no sync_file_range")
    if not can_drop_pages(tmp_path / "control"):
        pytest.skip("this file system keeps its pages whatever (tmpfs)")
    keep = MiB
    path = tmp_path / "out"
    with open(path, "wb", buffering=0) as file:
        writer = StreamingWriter(file, keep=keep, sync_file_range=real)
        for _ in range(16 * MiB // piece):
            writer.write(os.urandom(piece))
        assert writer.dropping
    size = path.stat().st_size
    resident = resident_pages(path)
    dropped = (size - keep) // ALIGNMENT * ALIGNMENT // PAGE
    assert dropped > len(resident) // 2
    assert not any(resident[:dropped])
    assert all(resident[(size - keep) // PAGE + 1 :])


def test_an_appended_file_keeps_what_was_there(tmp_path: Path) -> None:
    path = tmp_path / "out"
    path.write_bytes(b"x" * 100_000)
    recorder = Recorder()
    with open(path, "ab", buffering=0) as file:
        writer = StreamingWriter(file, keep=10, sync_file_range=recorder)
        writer.write(b"a" * 1000)
        writer.write(b"b" * 3 * MiB)
    assert path.read_bytes() == b"x" * 100_000 + b"a" * 1000 + b"b" * 3 * MiB
    assert recorder.calls == [
        (100_000, 1000, WRITE),
        (101_000, 3 * MiB, WRITE),
        (100_000, ALIGNMENT - 100_000, WAIT_BEFORE | WRITE | WAIT_AFTER),
    ]


@pytest.mark.parametrize("code", [errno.EINVAL, errno.ESPIPE, errno.ENOSYS])
def test_a_file_system_without_writeback_control_is_just_written(tmp_path: Path, code: int) -> None:
    recorder = Recorder(fail=code)
    with open(tmp_path / "out", "wb", buffering=0) as file:
        writer = StreamingWriter(file, keep=0, sync_file_range=recorder)
        writer.write(b"one")
        assert not writer.dropping
        writer.write(b"two")
    assert (tmp_path / "out").read_bytes() == b"onetwo"
    assert len(recorder.calls) == 1


def test_no_sync_file_range_at_all_just_writes(tmp_path: Path) -> None:
    with open(tmp_path / "out", "wb", buffering=0) as file:
        writer = StreamingWriter(file, keep=0, sync_file_range=None)
        assert not writer.dropping
        writer.write(b"data")
    assert (tmp_path / "out").read_bytes() == b"data"


def test_an_io_error_found_by_the_writeback_fails_the_get(tmp_path: Path) -> None:
    """An EIO is lost data, not a missing feature: the CLI gets its one line."""
    with open(tmp_path / "out", "wb", buffering=0) as file:
        writer = StreamingWriter(file, keep=0, sync_file_range=Recorder(fail=errno.EIO))
        with pytest.raises(NodeError, match="cannot write the output: Input/output error"):
            write_all(writer, memoryview(b"data"))


def test_negative_keep_is_refused(tmp_path: Path) -> None:
    with (
        open(tmp_path / "out", "wb", buffering=0) as file,
        pytest.raises(ValueError, match="keep"),
    ):
        StreamingWriter(file, keep=-1)
