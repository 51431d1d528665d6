"""The lease book (node/leases.py) and the quota rules (node/quota.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.errors import LeaseRefused, OverQuota, StoreFull
from node.leases import DAY, LeaseBook, LeaseSettings
from node.quota import MIN_CHARGE, QuotaSettings, chunk_cost, network_prefix
from protocol.identity import Identity, NodeId
from protocol.lease import Lease, make_lease

NOW = 1_800_000_000.0
OWNER = Identity(bytes([1]) * 32)
ALICE = Identity(bytes([2]) * 32)
MALLORY = Identity(bytes([3]) * 32)
MANIFEST = bytes([7]) * 32
CAPACITY = 1000 * MIN_CHARGE


def chunk(number: int) -> bytes:
    return number.to_bytes(32, "big")


def book(path: Path | None = None, **quota: float) -> LeaseBook:
    return LeaseBook(path, OWNER.node_id, LeaseSettings(), QuotaSettings(**quota))


def lease(identity: Identity, issued: float = NOW, length: float = 90 * DAY) -> Lease:
    return make_lease(identity, MANIFEST, int(issued), int(issued + length))


def upload(leases: LeaseBook, number: int, who: Identity = ALICE, prefix: str = "10.0.0.0/24"):
    leases.add_upload(chunk(number), MIN_CHARGE, who.node_id, prefix, NOW)


def take(leases: LeaseBook, record: Lease, numbers: range, *, now: float = NOW) -> list[bool]:
    return leases.add_lease(
        record, [chunk(n) for n in numbers], "10.0.0.0/24", now, used=0, capacity=CAPACITY
    )


def test_cost_counts_blocks_rows_and_the_group_record() -> None:
    assert chunk_cost(0, 1) == MIN_CHARGE  # an empty chunk is not free
    assert chunk_cost(16, 256) > 2 * chunk_cost(16, 1)  # the record of 256 ids costs
    assert chunk_cost(4097, 10) >= 8192
    assert chunk_cost(10**6, 10) < 1.01 * 10**6 + 8192


@pytest.mark.parametrize(
    ("host", "prefix"),
    [
        ("203.0.113.77", "203.0.113.0/24"),
        ("2001:db8:1:2::5", "2001:db8:1::/48"),
        ("::ffff:198.51.100.9", "198.51.100.0/24"),
        ("127.0.0.1", None),
        ("::1", None),
        ("10.3.4.1", "10.3.4.0/24"),
        ("sim-host", "sim-host"),
    ],
)
def test_prefixes(host: str, prefix: str | None) -> None:
    assert network_prefix(host) == prefix


def test_an_upload_is_kept_a_day_then_trashed_then_deleted_after_the_grace() -> None:
    leases = book()
    upload(leases, 1)
    assert leases.kept(chunk(1), NOW + DAY - 1)
    assert leases.sweep(NOW + DAY - 1, 3600) == []
    assert not leases.in_trash(chunk(1))
    assert leases.sweep(NOW + DAY + 1, 3600) == []
    assert leases.in_trash(chunk(1))
    # The trash's clock is running time: six sweeps of a day are not seven days.
    for day in range(6):
        assert leases.sweep(NOW + (2 + day) * DAY, DAY) == []
    assert leases.sweep(NOW + 9 * DAY, DAY) == [chunk(1)]
    leases.forget([chunk(1)])
    assert leases.summary(NOW + 9 * DAY).trash_chunks == 0


def test_a_lease_keeps_its_chunks_and_ends_the_upload_charge() -> None:
    leases = book()
    for number in range(3):
        upload(leases, number)
    assert leases.charges()[0][ALICE.node_id.value] == 3 * MIN_CHARGE
    held = take(leases, lease(ALICE), range(4))  # chunk 3 is not held here
    assert held == [True, True, True, False]
    assert leases.charges()[0][ALICE.node_id.value] == 3 * MIN_CHARGE  # not twice
    assert leases.sweep(NOW + 80 * DAY, 3600) == []
    assert leases.kept(chunk(0), NOW + 80 * DAY)
    leases.recount(NOW + 80 * DAY)
    assert leases.charges()[0][ALICE.node_id.value] == 3 * MIN_CHARGE
    assert leases.leases_for(chunk(0), NOW + 80 * DAY) == [lease(ALICE)]


def test_renewal_extends_and_expiry_trashes() -> None:
    leases = book()
    upload(leases, 1)
    take(leases, lease(ALICE), range(1, 2))
    take(leases, lease(ALICE, issued=NOW + 60 * DAY), range(1, 2), now=NOW + 60 * DAY)
    leases.sweep(NOW + 100 * DAY, 3600)
    assert not leases.in_trash(chunk(1))
    leases.sweep(NOW + 151 * DAY, 3600)
    assert leases.in_trash(chunk(1))
    # A lease that comes back while in the trash restores the chunk.
    take(leases, lease(ALICE, issued=NOW + 152 * DAY), range(1, 2), now=NOW + 152 * DAY)
    leases.sweep(NOW + 152 * DAY, 3600)
    assert not leases.in_trash(chunk(1))


def test_forged_expired_and_future_leases_are_refused() -> None:
    leases = book()
    upload(leases, 1)
    good = lease(ALICE)
    forged = Lease(good.manifest_id, good.public_key, good.issued, good.expires + 1, good.signature)
    foreign = Lease(good.manifest_id, MALLORY.public_key, good.issued, good.expires, good.signature)
    with pytest.raises(LeaseRefused, match="signature"):
        take(leases, forged, range(1, 2))
    with pytest.raises(LeaseRefused, match="signature"):
        take(leases, foreign, range(1, 2))
    with pytest.raises(LeaseRefused, match="expired"):
        take(leases, lease(ALICE, issued=NOW - 100 * DAY), range(1, 2))
    with pytest.raises(LeaseRefused, match="future"):
        take(leases, lease(ALICE, issued=NOW + 3600), range(1, 2))
    # Issued long ago with an expiry far ahead: a holder counts at most max_length.
    with pytest.raises(LeaseRefused, match="issued over"):
        take(leases, lease(ALICE, issued=NOW - 400 * DAY, length=1000 * DAY), range(1, 2))
    assert leases.leases_for(chunk(1), NOW) == []


def test_a_release_ends_its_own_lease_only_and_a_replay_does_not_undo_it() -> None:
    leases = book()
    upload(leases, 1)
    take(leases, lease(ALICE), range(1, 2))
    take(leases, lease(MALLORY), range(1, 2))
    release = make_lease(ALICE, MANIFEST, int(NOW + 10), int(NOW + 10))
    take(leases, release, range(1, 2), now=NOW + 10)
    assert leases.leases_for(chunk(1), NOW + 20) == [lease(MALLORY)]
    take(leases, lease(ALICE), range(1, 2), now=NOW + 20)  # the old record, replayed
    assert leases.leases_for(chunk(1), NOW + 20) == [lease(MALLORY)]
    # Mallory's release: nobody keeps it now, it goes to the trash at the next sweep.
    take(leases, make_lease(MALLORY, MANIFEST, int(NOW + 30), 0), range(1, 2), now=NOW + 30)
    leases.sweep(NOW + 40, 3600)
    assert leases.in_trash(chunk(1))


def test_quota_per_key_and_per_prefix() -> None:
    leases = book(key_share=0.1, prefix_share=0.15, owner_reserve=0.0)
    share = CAPACITY // 10
    for number in range(share // MIN_CHARGE):
        leases.admit(ALICE.node_id, "10.0.0.0/24", MIN_CHARGE, 0, CAPACITY)
        upload(leases, number)
    with pytest.raises(OverQuota, match="this key"):
        leases.admit(ALICE.node_id, "10.0.0.0/24", MIN_CHARGE, 0, CAPACITY)
    # Another key in the same prefix has room until the prefix's share is used.
    for number in range(1000, 1000 + share // MIN_CHARGE // 2):
        leases.admit(MALLORY.node_id, "10.0.0.0/24", MIN_CHARGE, 0, CAPACITY)
        upload(leases, number, MALLORY)
    with pytest.raises(OverQuota, match="prefix"):
        leases.admit(MALLORY.node_id, "10.0.0.0/24", MIN_CHARGE, 0, CAPACITY)
    # A third identity in that prefix is refused too; one elsewhere is not.
    third = Identity(bytes([9]) * 32).node_id
    with pytest.raises(OverQuota, match="prefix"):
        leases.admit(third, "10.0.0.0/24", MIN_CHARGE, 0, CAPACITY)
    leases.admit(third, "10.9.9.0/24", MIN_CHARGE, 0, CAPACITY)
    # The owner is bounded by nothing here (the store's capacity bounds it).
    leases.admit(OWNER.node_id, None, CAPACITY, 0, CAPACITY)


def test_a_lease_over_quota_changes_nothing() -> None:
    leases = book(key_share=0.01, prefix_share=1.0, owner_reserve=0.0)
    for number in range(20):
        leases.add_upload(chunk(number), MIN_CHARGE, OWNER.node_id, None, NOW)
    with pytest.raises(OverQuota):
        take(leases, lease(MALLORY), range(20))
    assert leases.leases_for(chunk(0), NOW) == []
    assert leases.charges()[0].get(MALLORY.node_id.value, 0) == 0


def test_the_owner_reserve_is_kept_from_others() -> None:
    leases = book(key_share=1.0, prefix_share=1.0, owner_reserve=0.25)
    leases.admit(ALICE.node_id, "10.0.0.0/24", CAPACITY // 2, CAPACITY // 4, CAPACITY)
    with pytest.raises(StoreFull, match="reserve"):
        leases.admit(ALICE.node_id, "10.0.0.0/24", CAPACITY // 2 + 1, CAPACITY // 4, CAPACITY)


def test_reconcile_after_a_kill_and_after_an_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "leases.sqlite3"
    fresh = book(path)
    # A new book beside a store that has chunks: an upgrade; each gets a full lease.
    assert fresh.reconcile(fresh.known(), [(chunk(1), MIN_CHARGE)], NOW) == (0, 1)
    assert fresh.kept(chunk(1), NOW + 89 * DAY)
    upload(fresh, 2)
    fresh.close()
    again = book(path)
    # Chunk 2 was deleted from the store (a kill before `forget`), chunk 3 stored
    # without its row: the row goes, and 3 is as if it had just arrived.
    assert again.reconcile(
        again.known(), [(chunk(1), MIN_CHARGE), (chunk(3), MIN_CHARGE)], NOW
    ) == (1, 1)
    assert again.kept(chunk(3), NOW + DAY - 1)
    assert not again.kept(chunk(3), NOW + DAY + 1)
    assert not again.kept(chunk(2), NOW)
    again.close()


def test_leases_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "leases.sqlite3"
    first = book(path)
    upload(first, 1)
    take(first, lease(ALICE), range(1, 2))
    first.close()
    second = book(path)
    second.recount(NOW)
    assert second.leases_for(chunk(1), NOW) == [lease(ALICE)]
    assert second.charges()[0][ALICE.node_id.value] == MIN_CHARGE


def test_an_owner_lease_is_counted_as_the_owners() -> None:
    leases = book()
    leases.add_upload(chunk(1), MIN_CHARGE, OWNER.node_id, None, NOW)
    take(leases, lease(OWNER), range(1, 2))
    assert leases.summary(NOW).owner_bytes == MIN_CHARGE
    assert leases.usage(NodeId(bytes(32)), None, 0).owner == MIN_CHARGE


def test_the_same_lease_sent_again_covers_more_chunks() -> None:
    """A repairer carries the record the holder may already keep, for a chunk new to
    it: the chunk is covered (and charged) though the record is not newer."""
    leases = book()
    upload(leases, 1)
    upload(leases, 2, MALLORY)
    take(leases, lease(ALICE), range(1, 2))
    assert take(leases, lease(ALICE), range(2, 3)) == [True]
    assert leases.leases_for(chunk(2), NOW) == [lease(ALICE)]
    assert leases.charges()[0][ALICE.node_id.value] == 2 * MIN_CHARGE
    # An older record of a lease that runs covers too; nothing covers after a release.
    upload(leases, 3, MALLORY)
    take(leases, lease(ALICE, issued=NOW - 10), range(3, 4))
    assert leases.leases_for(chunk(3), NOW) == [lease(ALICE)]
    take(leases, make_lease(ALICE, MANIFEST, int(NOW + 5), int(NOW + 5)), range(1, 2), now=NOW + 5)
    upload(leases, 4, MALLORY)
    take(leases, lease(ALICE), range(4, 5), now=NOW + 6)
    assert leases.leases_for(chunk(4), NOW + 6) == []
