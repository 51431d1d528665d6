"""The stewardship plan's rules (node/stewardship.py), driven by hand: no network, time
as a number."""

from __future__ import annotations

import random

import pytest

from node.stewardship import Repair, StewardSettings, Stewardship
from protocol.chunk import GroupRecord
from protocol.identity import NodeId

IDS = tuple(bytes([number]) * 32 for number in range(10))
KEY = IDS[0]
SETTINGS = StewardSettings(
    audit_interval=100.0, repair_threshold=7, repair_grace=50.0, repair_delay=10.0
)


def node(first_byte: int) -> NodeId:
    return NodeId(bytes([first_byte]) * 32)


def plan_for(own: NodeId, index: int = 4) -> Stewardship:
    plan = Stewardship(own, SETTINGS, random.Random(1))
    plan.watch(GroupRecord(3, 10, index, IDS), 1000, now=0.0)
    return plan


def test_first_audit_falls_within_an_interval_and_later_ones_are_jittered() -> None:
    """Watching starts an audit somewhere in the first interval; after a healthy audit
    the next comes after about an interval (within the jitter)."""
    plan = plan_for(node(0x80))
    first = plan.deadline
    assert 0 <= first <= 100
    assert plan.due(first) == [KEY]
    decision = plan.audited(
        KEY, proven=range(10), lied_about=(), holders=[node(i) for i in range(10)], now=first
    )
    assert decision is None
    assert first + 75 <= plan.deadline <= first + 125


def test_missing_chunks_wait_for_the_grace_before_they_count_as_lost() -> None:
    """Four chunks missing (6 of 10 live, under the threshold of 7): nothing happens
    until they have been missing for the grace; a holder that comes back in time is
    simply live again (a healed partition causes no repair)."""
    own = node(0x00)  # closest to KEY: rank 0
    plan = plan_for(own)
    holders = [own, *(node(i) for i in (0x11, 0x22, 0x33, 0x44, 0x55))]
    assert plan.audited(KEY, proven=range(6), lied_about=(), holders=holders, now=10.0) is None
    assert plan.audited(KEY, proven=range(6), lied_about=(), holders=holders, now=40.0) is None
    back = plan.audited(KEY, proven=range(10), lied_about=(), holders=holders, now=55.0)
    assert back is None and not plan.groups[KEY].missing_since
    assert plan.audited(KEY, proven=range(6), lied_about=(), holders=holders, now=60.0) is None
    assert plan.audited(KEY, proven=range(6), lied_about=(), holders=holders, now=110.0) == Repair(
        KEY
    )


def test_a_lie_counts_as_lost_at_once() -> None:
    """Chunks a holder was proven lying about are lost with no grace."""
    own = node(0x00)
    plan = plan_for(own)
    decision = plan.audited(
        KEY, proven=range(6), lied_about=range(6, 10), holders=[own, node(0x11)], now=5.0
    )
    assert decision == Repair(KEY)


def test_only_the_closest_live_holder_repairs_the_others_wait_their_rank() -> None:
    """At the threshold, the live holder closest to the group key repairs at once; the
    one ranked r looks again after r repair delays (and finds it repaired)."""
    holders = [node(0x01), node(0x40), node(0x80), node(0xC0)]
    decisions = {}
    for own in holders:
        plan = plan_for(own)
        plan.groups[KEY].missing_since = {number: -100.0 for number in range(7, 10)}
        decisions[own] = (
            plan.audited(KEY, proven=range(7), lied_about=(), holders=holders, now=0.0),
            plan.deadline,
        )
    assert decisions[node(0x01)] == (Repair(KEY), 10.0)
    assert decisions[node(0x40)] == (None, 10.0)
    assert decisions[node(0x80)] == (None, 20.0)
    assert decisions[node(0xC0)] == (None, 30.0)
    later = plan_for(node(0x80))
    assert later.audited(KEY, proven=range(10), lied_about=(), holders=holders, now=20.0) is None


def test_a_holder_ranked_above_that_never_repairs_does_not_hold_the_repair_up() -> None:
    """The holder ranked 2 waits two delays; finding the group still at its threshold
    then (the two above it answer audits but did not repair), its turn has come."""
    holders = [node(0x01), node(0x40), node(0x80)]
    plan = plan_for(node(0x80))
    plan.groups[KEY].missing_since = {number: -100.0 for number in range(7, 10)}
    assert plan.audited(KEY, proven=range(7), lied_about=(), holders=holders, now=0.0) is None
    assert plan.deadline == 20.0
    assert plan.audited(KEY, proven=range(7), lied_about=(), holders=holders, now=20.0) == Repair(
        KEY
    )
    plan.repaired(KEY, rebuilt=3, now=25.0)
    # Seen whole again: the next time it falls, the ranks count afresh.
    assert plan.audited(KEY, proven=range(10), lied_about=(), holders=holders, now=35.0) is None
    assert plan.groups[KEY].turn_at is None


def test_an_audit_by_a_peer_puts_ours_off_but_never_past_n_intervals() -> None:
    """Each audit of our chunk by a peer moves our own audit to about an interval
    later; a peer that keeps auditing us cannot keep us quiet beyond n intervals after
    our own last audit (rule 5)."""
    settings = StewardSettings(audit_interval=100.0, repair_delay=10.0)
    plan = Stewardship(node(0x40), settings, random.Random(5))
    plan.watch(GroupRecord(3, 10, 0, IDS), 1000, now=0.0)
    plan.audited(KEY, proven=range(10), lied_about=(), holders=[node(0x40)], now=50.0)
    first = plan.deadline
    assert 125.0 <= first <= 175.0
    plan.audited_by_peer(KEY, now=100.0)
    assert 175.0 <= plan.deadline <= 225.0 and plan.deadline >= first
    for now in range(150, 1500, 50):
        plan.audited_by_peer(KEY, now=float(now))
    assert plan.deadline == 50.0 + 10 * 100.0
    plan.audited_by_peer(bytes(32), now=1500.0)  # a group we do not watch: ignored


def test_a_group_at_its_threshold_is_not_put_off_by_peers() -> None:
    """A holder waiting for its turn to repair keeps to it whoever audits meanwhile."""
    holders = [node(0x01), node(0x80)]
    plan = plan_for(node(0x80))
    plan.groups[KEY].missing_since = {number: -100.0 for number in range(7, 10)}
    plan.audited(KEY, proven=range(7), lied_about=(), holders=holders, now=0.0)
    plan.audited_by_peer(KEY, now=5.0)
    assert plan.deadline == 10.0


def test_fewer_than_k_live_is_beyond_repair_and_not_retried_in_a_loop() -> None:
    """With 2 of 3 needed, nothing can be rebuilt: the group is audited as usual."""
    own = node(0x00)
    plan = plan_for(own)
    plan.groups[KEY].missing_since = {number: -100.0 for number in range(2, 10)}
    assert plan.audited(KEY, proven=range(2), lied_about=(), holders=[own], now=0.0) is None
    assert plan.deadline >= 75


def test_after_a_repair_the_group_is_looked_at_again_soon() -> None:
    """repaired() brings the next audit to a repair delay away; forget() stops it."""
    plan = plan_for(node(0x00))
    plan.repaired(KEY, rebuilt=3, now=200.0)
    assert plan.deadline == 210.0 and plan.groups[KEY].repairs == 1
    plan.forget(KEY)
    assert plan.deadline == float("inf") and plan.due(1e9) == []


def test_groups_come_due_least_healthy_first() -> None:
    """Of two groups due, the one with fewer live chunks is audited first."""
    plan = Stewardship(node(0x00), SETTINGS, random.Random(2))
    other_ids = tuple(bytes([0xF0 + number]) * 32 for number in range(10))
    plan.watch(GroupRecord(3, 10, 0, IDS), 1000, now=0.0)
    plan.watch(GroupRecord(3, 10, 0, other_ids), 1000, now=0.0)
    plan.groups[IDS[0]].live = 9
    plan.groups[other_ids[0]].live = 5
    assert plan.due(1000.0) == [other_ids[0], IDS[0]]


def test_the_threshold_keeps_its_margin_for_groups_of_other_sizes() -> None:
    """7 of 10 is a margin of 3: 13 of 16, 3 of 5 kept above k = 3, and nothing is
    ever repaired in a group with nothing to spare."""
    settings = StewardSettings(repair_threshold=7, n=10)
    assert settings.threshold(10, 3) == 7
    assert settings.threshold(16, 4) == 13
    assert settings.threshold(5, 3) == 3
    assert settings.threshold(4, 3) == 3
    assert settings.threshold(3, 3) == 2
    assert settings.threshold(10, 1) == 7


MANIFEST = bytes([0x01]) * 32


def test_manifest_copies_are_slots_held_by_nodes() -> None:
    """A manifest chunk kept in 10 copies: holders that stop answering wait out the
    grace like missing chunks, and once 3 are lost for good the closest holder tops
    the copies up; the lost holders are then forgotten, not waited for again."""
    own = node(0x01)  # closest to MANIFEST: rank 0
    plan = Stewardship(own, SETTINGS, random.Random(3))
    plan.watch(GroupRecord.single(MANIFEST), 500, now=0.0, copies=10)
    everyone = [own, *(node(0x10 * i) for i in range(1, 10))]
    assert plan.audited(MANIFEST, proven=everyone, lied_about=(), holders=everyone, now=1.0) is None
    left = everyone[:7]
    assert plan.audited(MANIFEST, proven=left, lied_about=(), holders=left, now=2.0) is None
    assert len(plan.groups[MANIFEST].missing_since) == 3
    assert plan.audited(MANIFEST, proven=left, lied_about=(), holders=left, now=60.0) == Repair(
        MANIFEST
    )
    assert plan.groups[MANIFEST].missing_since == {}
    refilled = [*left, node(0xA0), node(0xB0), node(0xC0)]
    assert (
        plan.audited(MANIFEST, proven=refilled, lied_about=(), holders=refilled, now=70.0) is None
    )
    assert plan.groups[MANIFEST].live == 10


def test_a_manifest_chunk_needs_its_number_of_copies() -> None:
    """Watching a group of one without saying how many copies to keep is a bug."""
    plan = Stewardship(node(0x01), SETTINGS, random.Random(3))
    with pytest.raises(ValueError, match="copies"):
        plan.watch(GroupRecord.single(MANIFEST), 500, now=0.0)


def test_copies_short_at_the_first_audit_wait_out_the_grace_too() -> None:
    """A holder whose first audit falls in a partition sees 6 of 10 copies and knows
    no holder of the others: they are missing from then, not lost, and come back."""
    own = node(0x01)
    plan = Stewardship(own, SETTINGS, random.Random(3))
    plan.watch(GroupRecord.single(MANIFEST), 500, now=0.0, copies=10)
    some = [own, *(node(0x10 * i) for i in range(1, 6))]
    everyone = [*some, *(node(0x10 * i) for i in range(6, 10))]
    assert plan.audited(MANIFEST, proven=some, lied_about=(), holders=some, now=1.0) is None
    assert plan.audited(MANIFEST, proven=some, lied_about=(), holders=some, now=40.0) is None
    assert (
        plan.audited(MANIFEST, proven=everyone, lied_about=(), holders=everyone, now=45.0) is None
    )
    assert plan.groups[MANIFEST].missing_since == {}
    assert plan.audited(MANIFEST, proven=some, lied_about=(), holders=some, now=50.0) is None
    assert plan.audited(MANIFEST, proven=some, lied_about=(), holders=some, now=101.0) == Repair(
        MANIFEST
    )
