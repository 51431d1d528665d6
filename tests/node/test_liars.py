"""Peers caught lying (node/liars.py): recorded, avoided for a while, logged once,
and kept across a restart."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from node.liars import FORGET_AFTER, Liars
from protocol.identity import NodeId

LIAR = NodeId(bytes([7]) * 32)
OTHER = NodeId(bytes([8]) * 32)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_a_liar_is_avoided_for_a_while_then_forgiven(caplog: pytest.LogCaptureFixture) -> None:
    """Caught: avoided until `avoid_for` after the last time; logged once per spell."""
    clock = Clock()
    liars = Liars(clock=clock, avoid_for=100.0)
    assert not liars.avoided(LIAR)
    with caplog.at_level(logging.WARNING, logger="node.liars"):
        liars.caught(LIAR, "served bytes that are not the chunk")
        clock.now += 50
        liars.caught(LIAR, "failed an audit")
    assert len(caplog.records) == 1 and LIAR.hex() in caplog.records[0].getMessage()
    assert liars.avoided(LIAR) and not liars.avoided(OTHER)
    clock.now += 99
    assert liars.avoided(LIAR)  # 99 s after the second time
    clock.now += 2
    assert not liars.avoided(LIAR)
    (entry,) = liars.entries()
    assert (entry.node_id, entry.times, entry.reason) == (LIAR, 2, "failed an audit")
    assert entry.first_caught == 1_000.0 and entry.last_caught == 1_050.0
    with caplog.at_level(logging.WARNING, logger="node.liars"):
        liars.caught(LIAR, "again")
    assert len(caplog.records) == 2  # forgiven, then caught anew: said again


def test_the_record_survives_a_restart(tmp_path: Path) -> None:
    """With a path, a restarted node still avoids the peers it caught."""
    clock = Clock()
    first = Liars(tmp_path / "peers.sqlite3", clock=clock)
    first.caught(LIAR, "failed an audit")
    first.close()
    second = Liars(tmp_path / "peers.sqlite3", clock=clock)
    assert second.avoided(LIAR) and not second.avoided(OTHER)
    assert [entry.node_id for entry in second.entries()] == [LIAR]
    second.close()


def test_old_records_are_forgotten_on_open(tmp_path: Path) -> None:
    """A peer not caught for FORGET_AFTER avoidance periods is deleted when the record
    is next opened: throwaway identities do not grow it for ever."""
    clock = Clock()
    first = Liars(tmp_path / "peers.sqlite3", clock=clock, avoid_for=10.0)
    first.caught(LIAR, "failed an audit")
    clock.now += 5
    first.caught(OTHER, "failed an audit")
    first.close()
    clock.now += FORGET_AFTER * 10.0 - 1  # LIAR's record is just past it, OTHER's not
    second = Liars(tmp_path / "peers.sqlite3", clock=clock, avoid_for=10.0)
    assert [entry.node_id for entry in second.entries()] == [OTHER]
    second.close()
