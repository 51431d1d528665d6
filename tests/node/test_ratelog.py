"""Rate-limited logging of what peers cause (node/ratelog.py), and its use by the store."""

from __future__ import annotations

import logging
import random

import pytest

from node.ratelog import RateLimitedLog
from node.store import MemoryChunkStore
from protocol.chunk import GroupRecord, chunk_id


def test_one_line_a_minute_per_kind_saying_how_many_were_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    log = RateLimitedLog(logging.getLogger("test.ratelog"), interval=60, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.ratelog"):
        for second in range(150):
            now[0] = float(second)
            log.warning("refusing", "refusing %s", "203.0.113.5")
            if second % 50 == 0:
                log.warning("cut off", "cutting off %s", "peer")
    lines = [record.getMessage() for record in caplog.records]
    assert lines == [
        "refusing 203.0.113.5",
        "cutting off peer",
        "refusing 203.0.113.5 (and 59 more like it in the last 60 s)",
        "cutting off peer (and 1 more like it in the last 60 s)",
        "refusing 203.0.113.5 (and 59 more like it in the last 60 s)",
    ]


def test_a_chunk_offered_again_with_another_record_warns_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """500 offers of a held chunk with another group record: one line, not 500 (issue 18,
    row 6); the chunk keeps its first record."""
    store = MemoryChunkStore()
    data = random.Random(1).randbytes(100)
    identifier = chunk_id(data)
    first = GroupRecord.single(identifier)
    store.put(identifier, data, first)
    with caplog.at_level(logging.WARNING):
        for index in range(500):
            ids = [bytes([index % 256]) * 32, identifier]
            store.put(identifier, data, GroupRecord(1, 2, 1, tuple(ids)))
    assert len([r for r in caplog.records if "already held" in r.getMessage()]) == 1
    assert store.group(identifier) == first
