"""The steward's record of its groups' health (node/health.py): what a restart keeps."""

from __future__ import annotations

import logging
import random
import sqlite3
from pathlib import Path

import pytest

from node.errors import StoreError
from node.health import HealthBook
from node.stewardship import StewardSettings, Stewardship
from protocol.chunk import GroupRecord
from protocol.identity import NodeId

IDS = tuple(bytes([number]) * 32 for number in range(10))
MANIFEST = bytes([0xEE]) * 32
SETTINGS = StewardSettings(audit_interval=100.0, repair_grace=50.0, repair_delay=10.0)


def node(first_byte: int) -> NodeId:
    return NodeId(bytes([first_byte]) * 32)


def watching(own: NodeId) -> Stewardship:
    plan = Stewardship(own, SETTINGS, random.Random(4))
    plan.watch(GroupRecord(3, 10, 0, IDS), 1000, now=0.0)
    plan.watch(GroupRecord.single(MANIFEST), 300, now=0.0, copies=10)
    return plan


def test_a_restart_keeps_when_each_slot_went_missing(tmp_path: Path) -> None:
    """Health saved at one clock reading comes back at another with the same wall-clock
    times: a holder missing for 40 s before a restart is lost 10 s after it, not a
    whole grace later; lies and a manifest's holders come back too."""
    own = node(0x00)
    plan = watching(own)
    holders = [own, node(0x11)]
    plan.audited(IDS[0], proven=range(6), lied_about=[9], holders=holders, now=20.0)
    copies = [own, node(0x21), node(0x22)]
    plan.audited(MANIFEST, proven=copies, lied_about=[node(0x33)], holders=copies, now=20.0)
    book = HealthBook(tmp_path / "health.sqlite3")
    book.save(IDS[0], plan.groups[IDS[0]], to_wall=1_000_000.0)
    book.save(MANIFEST, plan.groups[MANIFEST], to_wall=1_000_000.0)
    book.save_totals({"segments_repaired": 2, "bytes_moved": 4096})
    book.close()

    # Started again 40 s later (wall) on a clock that reads 5.
    again = watching(own)
    book = HealthBook(tmp_path / "health.sqlite3")
    book.restore(again, to_wall=1_000_020.0 + 40.0 - 5.0)
    segment = again.groups[IDS[0]]
    assert segment.live == 6 and segment.lied_about == {9}
    assert segment.missing_since == {number: pytest.approx(-35.0) for number in range(6, 10)}
    manifest = again.groups[MANIFEST]
    assert manifest.proven == set(copies) and manifest.lied_about == {node(0x33)}
    assert set(manifest.missing_since) == set(range(7))  # 7 copies never seen
    assert book.totals() == {"segments_repaired": 2, "bytes_moved": 4096}
    # 15 s after the restart the four missing chunks have been gone for the grace.
    decision = again.audited(IDS[0], proven=range(6), lied_about=(), holders=holders, now=15.0)
    assert decision is not None
    book.close()


def test_groups_no_longer_held_and_damaged_rows_are_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Loading keeps only the groups still held, deletes the rest, and drops (and
    logs) a row whose slots do not parse, rather than failing the node's start."""
    plan = watching(node(0x00))
    plan.audited(IDS[0], proven=range(9), lied_about=(), holders=[node(0)], now=1.0)
    path = tmp_path / "health.sqlite3"
    book = HealthBook(path)
    book.save(IDS[0], plan.groups[IDS[0]], to_wall=0.0)
    book.save(bytes(32), plan.groups[IDS[0]], to_wall=0.0)
    book.close()
    with sqlite3.connect(path) as database:
        database.execute(
            "INSERT INTO groups VALUES (?, 1, 0, ?)", (bytes([7]) * 32, b"\x91\x93\xc0")
        )
    book = HealthBook(path)
    with caplog.at_level(logging.WARNING, logger="node.health"):
        loaded = book.load([IDS[0], bytes([7]) * 32])
    assert list(loaded) == [IDS[0]]
    assert "damaged health" in caplog.text
    assert book.load([IDS[0], bytes(32), bytes([7]) * 32]).keys() == {IDS[0]}
    book.close()


def test_without_a_path_nothing_is_kept() -> None:
    """A node in memory keeps no record: saving is harmless, loading finds nothing."""
    plan = watching(node(0x00))
    plan.audited(IDS[0], proven=range(9), lied_about=(), holders=[node(0)], now=1.0)
    book = HealthBook()
    book.save(IDS[0], plan.groups[IDS[0]], to_wall=0.0)
    assert book.load([IDS[0]]) == {} and book.totals() == {}


def test_an_unopenable_file_is_a_store_error(tmp_path: Path) -> None:
    """A path that cannot be a database says which file."""
    (tmp_path / "health.sqlite3").mkdir()
    with pytest.raises(StoreError, match="segment health"):
        HealthBook(tmp_path / "health.sqlite3")
