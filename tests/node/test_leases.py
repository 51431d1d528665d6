"""The lease book (node/leases.py) and the quota rules (node/quota.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.errors import LeaseRefused, OverQuota, StoreFull
from node.leases import DAY, LeaseBook, LeaseSettings, Reservation
from node.quota import COVER_COST, MIN_CHARGE, QuotaSettings, chunk_cost, network_prefix
from protocol.identity import Identity, NodeId
from protocol.lease import Lease, make_lease

NOW = 1_800_000_000.0
OWNER = Identity(bytes([1]) * 32)
ALICE = Identity(bytes([2]) * 32)
MALLORY = Identity(bytes([3]) * 32)
MANIFEST = bytes([7]) * 32
CAPACITY = 1000 * MIN_CHARGE
# What a chunk under one lease is charged: itself, and its cover row.
LEASED = MIN_CHARGE + COVER_COST


def chunk(number: int) -> bytes:
    return number.to_bytes(32, "big")


def book(path: Path | None = None, **quota: float) -> LeaseBook:
    return LeaseBook(path, OWNER.node_id, LeaseSettings(), QuotaSettings(**quota))


def lease(identity: Identity, issued: float = NOW, length: float = 90 * DAY) -> Lease:
    return make_lease(identity, MANIFEST, int(issued), int(issued + length))


def upload(
    leases: LeaseBook,
    number: int,
    who: Identity = ALICE,
    prefix: str = "10.0.0.0/24",
    reservation: Reservation | None = None,
) -> None:
    leases.add_upload(chunk(number), MIN_CHARGE, who.node_id, prefix, NOW, reservation)


def take(
    leases: LeaseBook,
    record: Lease,
    numbers: range,
    *,
    now: float = NOW,
    sender: NodeId | None = None,
    prefix: str = "10.0.0.0/24",
) -> list[bool]:
    """ADD_LEASE of `record` for chunks `numbers`, sent by the lease's own node unless
    `sender` says otherwise."""
    return leases.add_lease(
        record,
        [chunk(n) for n in numbers],
        sender or record.holder,
        prefix,
        now,
        used=0,
        capacity=CAPACITY,
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
    assert leases.charges()[0][ALICE.node_id.value] == 3 * LEASED  # not the upload too
    assert leases.sweep(NOW + 80 * DAY, 3600) == []
    assert leases.kept(chunk(0), NOW + 80 * DAY)
    leases.recount()
    assert leases.charges()[0][ALICE.node_id.value] == 3 * LEASED
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
        taken = leases.admit(ALICE.node_id, "10.0.0.0/24", MIN_CHARGE, 0, CAPACITY)
        upload(leases, number, reservation=taken)
    with pytest.raises(OverQuota, match="this key"):
        leases.admit(ALICE.node_id, "10.0.0.0/24", MIN_CHARGE, 0, CAPACITY)
    # Another key in the same prefix has room until the prefix's share is used.
    for number in range(1000, 1000 + share // MIN_CHARGE // 2):
        taken = leases.admit(MALLORY.node_id, "10.0.0.0/24", MIN_CHARGE, 0, CAPACITY)
        upload(leases, number, MALLORY, reservation=taken)
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
    second.recount()
    assert second.leases_for(chunk(1), NOW) == [lease(ALICE)]
    assert second.charges()[0][ALICE.node_id.value] == LEASED


def test_an_owner_lease_is_counted_as_the_owners() -> None:
    leases = book()
    leases.add_upload(chunk(1), MIN_CHARGE, OWNER.node_id, None, NOW)
    take(leases, lease(OWNER), range(1, 2))
    assert leases.summary(NOW).owner_bytes == LEASED
    assert leases.usage(NodeId(bytes(32)), None, 0).owner == LEASED


def test_the_same_lease_sent_again_covers_more_chunks() -> None:
    """A repairer carries the record the holder may already keep, for a chunk new to
    it: the chunk is covered (and charged) though the record is not newer."""
    leases = book()
    upload(leases, 1)
    upload(leases, 2, MALLORY)
    take(leases, lease(ALICE), range(1, 2))
    assert take(leases, lease(ALICE), range(2, 3)) == [True]
    assert leases.leases_for(chunk(2), NOW) == [lease(ALICE)]
    assert leases.charges()[0][ALICE.node_id.value] == 2 * LEASED
    # An older record of a lease that runs covers too; nothing covers after a release.
    upload(leases, 3, MALLORY)
    take(leases, lease(ALICE, issued=NOW - 10), range(3, 4))
    assert leases.leases_for(chunk(3), NOW) == [lease(ALICE)]
    take(leases, make_lease(ALICE, MANIFEST, int(NOW + 5), int(NOW + 5)), range(1, 2), now=NOW + 5)
    upload(leases, 4, MALLORY)
    take(leases, lease(ALICE), range(4, 5), now=NOW + 6)
    assert leases.leases_for(chunk(4), NOW + 6) == []


# ------------------------------------------------- what a hostile peer tried (review)


def test_a_lease_seen_by_others_cannot_charge_its_key_for_their_chunks() -> None:
    """Mallory saw Alice's lease (she holds a chunk of Alice's file) and sends it with
    her own junk's ids: the junk is kept, but charged to Mallory, not to Alice. Once
    Alice's own node names a chunk, the charge is Alice's."""
    leases = book()
    for number in range(5):
        upload(leases, number, MALLORY, prefix="203.0.113.0/24")
    take(leases, lease(ALICE), range(5), sender=MALLORY.node_id, prefix="203.0.113.0/24")
    by_payer, by_prefix = leases.charges()
    assert ALICE.node_id.value not in by_payer
    assert by_payer[MALLORY.node_id.value] == 5 * LEASED
    assert by_prefix == {"203.0.113.0/24": 5 * LEASED}
    take(leases, lease(ALICE), range(1), prefix="10.0.0.0/24")  # Alice's own node
    by_payer, by_prefix = leases.charges()
    assert by_payer[ALICE.node_id.value] == LEASED
    assert by_payer[MALLORY.node_id.value] == 4 * LEASED
    leases.recount()
    assert leases.charges() == (by_payer, by_prefix)


def test_the_trash_stays_charged_until_it_is_deleted() -> None:
    """Letting uploads lapse frees no quota until the disk is freed: a key cannot fill
    a node by uploading a share a day."""
    leases = book(key_share=0.1, prefix_share=1.0, owner_reserve=0.0)
    share = CAPACITY // 10 // MIN_CHARGE
    for number in range(share):
        upload(
            leases,
            number,
            MALLORY,
            reservation=leases.admit(MALLORY.node_id, "203.0.113.0/24", MIN_CHARGE, 0, CAPACITY),
        )
    leases.sweep(NOW + 2 * DAY, 3600)  # expired: in the trash
    assert leases.summary(NOW + 2 * DAY).trash_chunks == share
    with pytest.raises(OverQuota):
        leases.admit(MALLORY.node_id, "203.0.113.0/24", MIN_CHARGE, 0, CAPACITY)
    due = leases.sweep(NOW + 10 * DAY, 8 * DAY)
    leases.forget(due)
    assert leases.charges()[0].get(MALLORY.node_id.value, 0) == 0
    leases.admit(MALLORY.node_id, "203.0.113.0/24", MIN_CHARGE, 0, CAPACITY)


def test_a_revived_lease_is_charged_for_everything_it_keeps_again() -> None:
    """A lease that ended, whose chunks wait for the sweep, and is renewed: its chunks
    stay charged throughout (ended: the trash's charge; renewed: the lease's), the
    counters stay exact, and the key gets no room it did not have."""
    leases = book(key_share=0.05, prefix_share=1.0, owner_reserve=0.0)
    share = CAPACITY // 20 // LEASED
    for number in range(share):
        upload(leases, number, ALICE)
    take(leases, lease(ALICE, length=DAY), range(share))
    later = NOW + 2 * DAY
    leases.recount()
    assert leases.charges()[0][ALICE.node_id.value] == share * LEASED
    take(leases, lease(ALICE, issued=later), range(1), now=later)
    counted = leases.charges()
    leases.recount()
    assert leases.charges() == counted
    assert counted[0][ALICE.node_id.value] == share * LEASED
    with pytest.raises(OverQuota):
        leases.admit(ALICE.node_id, "10.0.0.0/24", MIN_CHARGE, 0, CAPACITY)


def test_an_owner_can_lease_a_whole_share_it_uploaded() -> None:
    """Uploads then their lease: the lease replaces the upload charge, it does not add
    to it, so a key can lease as much as its share holds (chunks and cover rows)."""
    leases = book(key_share=0.1, prefix_share=1.0, owner_reserve=0.0)
    share = CAPACITY // 10 // LEASED
    for number in range(share):
        upload(leases, number, ALICE)
    assert take(leases, lease(ALICE), range(share)) == [True] * share
    assert leases.charges()[0][ALICE.node_id.value] == share * LEASED


def test_a_lease_of_the_largest_expiry_is_kept_whole() -> None:
    """`expires` up to 2**64 - 1 is valid on the wire: taken, counted for at most the
    longest lease, and given back intact (a repairer re-sends it)."""
    leases = book()
    upload(leases, 1)
    huge = make_lease(ALICE, MANIFEST, int(NOW), 2**64 - 1)
    assert take(leases, huge, range(1, 2)) == [True]
    assert leases.leases_for(chunk(1), NOW) == [huge]
    assert not leases.kept(chunk(1), NOW + 366 * DAY)


def test_records_that_keep_nothing_are_not_stored_and_stale_ones_take_nothing() -> None:
    leases = book()
    for number in range(100):
        other = make_lease(MALLORY, number.to_bytes(32, "big"), int(NOW), int(NOW))
        assert take(leases, other, range(1, 2)) == [False]
    assert leases._read("SELECT count(*) FROM leases", {}) == [(0,)]
    upload(leases, 1)
    take(leases, lease(ALICE), range(1, 2))
    release = make_lease(ALICE, MANIFEST, int(NOW + 1), int(NOW + 1))
    take(leases, release, range(1, 2), now=NOW + 1)
    # The record the release replaced, replayed: nothing taken, and the answer says so.
    assert take(leases, lease(ALICE), range(1, 2), now=NOW + 2) == [False]


def test_short_leases_between_sweeps_do_not_reset_the_grace() -> None:
    """A 5-second lease right after each sweep, once every few days, does not keep a
    released chunk in the trash for ever: only a sweep revives, if a lease runs then."""
    leases = book()
    upload(leases, 1)
    take(leases, lease(ALICE), range(1, 2))
    now = NOW + 10
    take(leases, make_lease(ALICE, MANIFEST, int(now), int(now)), range(1, 2), now=now)
    deleted_at = None
    for hour in range(1, 20 * 24):
        now = NOW + hour * 3600
        if leases.sweep(now, 3600):
            deleted_at = hour
            break
        if hour % 72 == 0:  # just after a sweep: a lease that ends before the next one
            short = make_lease(MALLORY, bytes([8]) * 32, int(now + 1), int(now + 6))
            take(leases, short, range(1, 2), now=now + 1)
    assert deleted_at is not None and deleted_at <= 7 * 24 + 2
