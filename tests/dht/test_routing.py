"""The Kademlia routing table: buckets, splitting, eviction decisions, limits, persistence."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dht.config import DhtConfig
from dht.contact import Contact
from dht.routing import (
    MAX_CONSECUTIVE_FAILURES,
    PENDING_PING_EXPIRY,
    Added,
    Cached,
    Evicted,
    FailureCounted,
    PingOldest,
    RefusalReason,
    Refused,
    RoutingTable,
    Updated,
    address_prefix,
)
from protocol.identity import NODE_ID_BITS, NodeId

TOP = 1 << (NODE_ID_BITS - 1)  # ids at or above TOP are in the far half from id 0
NO_LIMITS = DhtConfig(ip_prefix_limit_per_bucket=None, ip_prefix_limit_per_table=None)
OWN = NodeId.from_int(0)


def small(k: int, **fields: Any) -> DhtConfig:
    """A config with small buckets (alpha may not exceed k)."""
    return DhtConfig(k=k, alpha=1, **fields)


def node(number: int, host: str | None = None, port: int = 4000) -> Contact:
    return Contact(NodeId.from_int(number), (host or f"node-{number:x}", port))


def far(index: int, host: str | None = None) -> Contact:
    """A contact in the far half from id 0 (the bucket that never splits)."""
    return node(TOP + index, host)


def full_far_bucket(
    k: int = 2, cache: int = 3, ping_oldest_after: float = 0.0
) -> tuple[RoutingTable, list[Contact]]:
    """A table around id 0 whose far bucket holds k contacts seen at times 1..k."""
    config = small(k, replacement_cache_size=cache, ping_oldest_after=ping_oldest_after)
    table = RoutingTable(OWN, config)
    members = [far(index) for index in range(k)]
    for now, contact in enumerate(members, start=1):
        assert table.seen(contact, float(now)) == Added(contact)
    return table, members


def check_invariants(table: RoutingTable) -> None:
    buckets = table.buckets
    assert [bucket.range.index for bucket in buckets] == list(range(len(buckets)))
    # The ranges, sorted, tile [0, 2**256) with no gap and no overlap.
    ordered = sorted((bucket.range for bucket in buckets), key=lambda span: span.low)
    assert ordered[0].low == 0
    assert ordered[-1].high == 1 << NODE_ID_BITS
    for before, after in itertools.pairwise(ordered):
        assert before.high == after.low
    assert table.own_id in buckets[-1].range
    total = 0
    for bucket in buckets:
        assert len(bucket.contacts) <= table.config.k
        assert len(bucket.replacements) <= table.config.replacement_cache_size
        for contact in bucket.contacts + bucket.replacements:
            assert contact.node_id in bucket.range
            assert table.bucket_index(contact.node_id) == bucket.range.index
        total += len(bucket.contacts)
    assert total == len(table) == len(table.contacts())
    assert table.own_id not in table


ids = st.integers(min_value=0, max_value=(1 << NODE_ID_BITS) - 1)
# Ids near our own as well as uniform ones, so that tables get deep.
near_ids = st.tuples(ids, st.integers(min_value=0, max_value=NODE_ID_BITS)).map(
    lambda pair: pair[0] >> pair[1]
)


@settings(derandomize=True, max_examples=300, deadline=None)
@given(
    own=ids,
    offsets=st.lists(st.one_of(ids, near_ids), max_size=60),
    target=st.one_of(ids, near_ids),
    count=st.integers(min_value=0, max_value=40),
    k=st.integers(min_value=1, max_value=4),
    exclude_every=st.integers(min_value=0, max_value=4),
)
def test_closest_equals_brute_force(
    own: int, offsets: list[int], target: int, count: int, k: int, exclude_every: int
) -> None:
    """closest() returns exactly the first `count` contacts of a full sort by XOR distance."""
    table = RoutingTable(NodeId.from_int(own), small(k, replacement_cache_size=2))
    for now, offset in enumerate(offsets):
        table.seen(node(own ^ offset), float(now))
    check_invariants(table)
    target_id = NodeId.from_int(own ^ target)
    contacts = table.contacts()
    excluded = {c.node_id for c in contacts[::exclude_every]} if exclude_every else None
    expected = sorted(
        (c for c in contacts if excluded is None or c.node_id not in excluded),
        key=lambda c: c.node_id.distance(target_id),
    )[:count]
    assert table.closest(target_id, count, exclude=excluded) == expected


def test_splitting_keeps_buckets_consistent() -> None:
    """Splitting keeps every contact in the bucket whose range holds it, at most k per
    bucket, and the bucket ranges partition the id space."""
    rng = random.Random(7)
    own = NodeId(rng.randbytes(32))
    table = RoutingTable(own, NO_LIMITS)
    assert [b.range.high - b.range.low for b in table.buckets] == [1 << NODE_ID_BITS]
    for now in range(3000):
        shift = rng.randrange(NODE_ID_BITS)  # many ids close to ours, so many splits
        table.seen(node(int(own) ^ (rng.getrandbits(NODE_ID_BITS) >> shift)), float(now))
    check_invariants(table)
    assert len(table.buckets) > 10
    for bucket in table.buckets[:-1]:
        # Bucket i holds the ids sharing exactly i leading bits with ours (Kademlia §2.4).
        assert bucket.range.depth == bucket.range.index + 1
        assert own not in bucket.range


def deep_table(rng: random.Random) -> RoutingTable:
    """A table deep in splits, its buckets full: 2000 contacts at every distance."""
    own = NodeId(rng.randbytes(32))
    table = RoutingTable(own, NO_LIMITS)
    for now in range(2000):
        shift = rng.randrange(NODE_ID_BITS)
        table.seen(node(int(own) ^ (rng.getrandbits(NODE_ID_BITS) >> shift)), float(now))
    return table


def test_closest_on_a_deep_table() -> None:
    """On a deep table with full buckets closest() matches a brute-force sort, with and
    without exclusions, for targets far from and near our own id."""
    rng = random.Random(5)
    table = deep_table(rng)
    own = table.own_id
    contacts = table.contacts()
    excluded = {contact.node_id for contact in contacts[::3]}
    for _ in range(100):
        shift = rng.choice([0, rng.randrange(NODE_ID_BITS)])
        target = NodeId.from_int(int(own) ^ (rng.getrandbits(NODE_ID_BITS) >> shift))
        count = rng.choice([1, 20, 32, 100])
        ranked = sorted(contacts, key=lambda contact: contact.node_id.distance(target))
        assert table.closest(target, count) == ranked[:count]
        kept = [contact for contact in ranked if contact.node_id not in excluded]
        assert table.closest(target, count, exclude=excluded) == kept[:count]


def test_answers_leave_out_contacts_whose_last_rpc_failed() -> None:
    """closest(answering=True) is the brute-force sort of the contacts without a failure
    counted; one seen() again (an answer, a request) is named again. Our own lookups
    (answering=False) still see every contact."""
    rng = random.Random(8)
    table = deep_table(rng)
    contacts = table.contacts()
    failing = {contact.node_id for contact in contacts[::4]}
    for node_id in failing:
        assert isinstance(table.failed(node_id), FailureCounted)  # no replacements here
    for _ in range(100):
        target = NodeId(rng.randbytes(32))
        ranked = sorted(contacts, key=lambda contact: contact.node_id.distance(target))
        healthy = [contact for contact in ranked if contact.node_id not in failing]
        assert table.closest(target, 20, answering=True) == healthy[:20]
        assert table.closest(target, 20) == ranked[:20]
    back = contacts[0]
    table.seen(back, 3000.0)
    assert back in table.closest(back.node_id, 1, answering=True)


def test_seen_keeps_least_recently_seen_order() -> None:
    """seen() appends new contacts and moves a known one to the tail (most recent)."""
    table = RoutingTable(OWN, NO_LIMITS)
    first, second, third = far(1), far(2), far(3)
    for now, contact in enumerate((first, second, third)):
        table.seen(contact, float(now))
    assert table.seen(first, 10.0) == Updated(first)
    assert table.buckets[0].contacts == (second, third, first)
    assert table.to_records()[-1] == (first.node_id.value, *first.address, 10.0)


def test_seen_takes_the_newest_address() -> None:
    """A known id seen at a new address keeps the new one and reports the old one."""
    table = RoutingTable(OWN, NO_LIMITS)
    table.seen(far(1, "10.0.0.1"), 1.0)
    moved = Contact(far(1).node_id, ("192.0.2.9", 5000))
    assert table.seen(moved, 2.0) == Updated(moved, old_address=("10.0.0.1", 4000))
    assert table.get(moved.node_id) == moved


def test_full_bucket_asks_to_ping_the_oldest_and_caches_newcomers() -> None:
    """A full bucket that cannot split answers PingOldest once, then Cached while the
    ping is pending; the replacement cache keeps only the most recent newcomers."""
    table, (oldest, _) = full_far_bucket(k=2, cache=3)
    newcomers = [far(10 + index) for index in range(5)]
    assert table.seen(newcomers[0], 3.0) == PingOldest(oldest, newcomers[0])
    for now, newcomer in enumerate(newcomers[1:], start=4):
        assert table.seen(newcomer, float(now)) == Cached(newcomer)
    bucket = table.buckets[0]
    assert bucket.replacements == tuple(newcomers[2:])
    assert all(newcomer.node_id not in table for newcomer in newcomers)
    # A pending ping the service never reported on stops holding the bucket.
    late = 8.0 + PENDING_PING_EXPIRY
    assert table.seen(newcomers[0], late) == PingOldest(oldest, newcomers[0])
    assert table.buckets[0].replacements == (*newcomers[3:], newcomers[0])


def test_full_bucket_of_recently_seen_contacts_pings_nobody() -> None:
    """While the oldest contact was heard from within ping_oldest_after, a newcomer is
    only cached; once it has been silent that long, the oldest is pinged."""
    table, (oldest, _) = full_far_bucket(k=2, cache=3, ping_oldest_after=60.0)
    newcomer = far(10)
    assert table.seen(newcomer, 60.9) == Cached(newcomer)
    assert table.buckets[0].replacements == (newcomer,)
    assert table.seen(newcomer, 61.0) == PingOldest(oldest, newcomer)


def test_split_instead_of_ping_when_the_bucket_holds_our_id() -> None:
    """A full bucket whose range holds our own id splits rather than asking for a ping."""
    table, members = full_far_bucket(k=2)
    assert len(table.buckets) == 1
    near = node(5)
    assert table.seen(near, 3.0) == Added(near)
    assert [bucket.contacts for bucket in table.buckets] == [tuple(members), (near,)]


def test_answered_ping_keeps_the_oldest() -> None:
    """When the oldest contact answers it stays and moves to the tail; the newcomer stays
    cached and the next newcomer asks about the new oldest."""
    table, (oldest, second) = full_far_bucket()
    newcomer = far(10)
    table.seen(newcomer, 3.0)
    assert table.ping_answered(oldest, 4.0) == Updated(oldest)
    assert table.buckets[0].contacts == (second, oldest)
    assert table.buckets[0].replacements == (newcomer,)
    another = far(11)
    assert table.seen(another, 5.0) == PingOldest(second, another)
    assert table.ping_answered(far(99), 6.0) is None


def test_failed_ping_evicts_and_promotes_the_newest_replacement() -> None:
    """When the oldest contact does not answer it is evicted and the most recently seen
    replacement takes its place, in least-recently-seen order."""
    table, (oldest, second) = full_far_bucket()
    older, newer = far(10), far(11)
    table.seen(older, 3.0)
    table.seen(newer, 4.0)
    assert table.ping_failed(oldest) == Evicted(oldest, promoted=newer)
    assert oldest.node_id not in table
    assert table.buckets[0].contacts == (second, newer)
    assert table.buckets[0].replacements == (older,)
    # The report was consumed: a second one about the same ping is stale.
    assert table.ping_failed(oldest) is None


def test_failed_ping_is_ignored_once_the_contact_was_seen_again() -> None:
    """A ping failure reported after the contact was heard from again evicts nobody."""
    table, (oldest, second) = full_far_bucket()
    table.seen(far(10), 3.0)
    table.seen(oldest, 4.0)
    assert table.ping_failed(oldest) is None
    assert table.buckets[0].contacts == (second, oldest)


def test_failed_rpc_with_a_replacement_evicts_at_once() -> None:
    """A contact that fails an RPC is replaced at once when a replacement is waiting."""
    table, (oldest, second) = full_far_bucket()
    newcomer = far(10)
    table.seen(newcomer, 3.0)
    assert table.failed(second.node_id) == Evicted(second, promoted=newcomer)
    assert table.buckets[0].contacts == (oldest, newcomer)
    # The pending ping is about `oldest`, which is still there and still pending.
    assert table.ping_failed(oldest) == Evicted(oldest, promoted=None)


def test_failed_rpc_without_replacement_counts_until_the_limit() -> None:
    """Without a replacement a failing contact stays until MAX_CONSECUTIVE_FAILURES
    failures in a row; hearing from it resets the count."""
    table, (oldest, _) = full_far_bucket()
    for failures in range(1, MAX_CONSECUTIVE_FAILURES):
        assert table.failed(oldest.node_id) == FailureCounted(oldest, failures)
    table.seen(oldest, 3.0)
    for failures in range(1, MAX_CONSECUTIVE_FAILURES):
        assert table.failed(oldest.node_id) == FailureCounted(oldest, failures)
    assert table.failed(oldest.node_id) == Evicted(oldest, promoted=None)
    assert oldest.node_id not in table
    assert table.failed(oldest.node_id) is None


def test_failed_or_removed_replacement_leaves_the_cache() -> None:
    """failed() and remove() of an id that is only in a replacement cache drop it."""
    table, _ = full_far_bucket(cache=3)
    cached = [far(10), far(11), far(12)]
    for now, contact in enumerate(cached, start=3):
        table.seen(contact, float(now))
    assert table.failed(cached[0].node_id) is None
    assert table.remove(cached[2].node_id) is None
    assert table.buckets[0].replacements == (cached[1],)


def test_remove_evicts_and_promotes() -> None:
    """remove() takes a contact out and promotes the newest replacement."""
    table, (oldest, second) = full_far_bucket()
    newcomer = far(10)
    table.seen(newcomer, 3.0)
    assert table.remove(second.node_id) == Evicted(second, promoted=newcomer)
    assert table.contacts() == [oldest, newcomer]
    assert table.remove(second.node_id) is None


def test_own_id_is_never_inserted() -> None:
    """Our own id is refused, whatever its address."""
    table = RoutingTable(OWN, NO_LIMITS)
    me = node(0, "10.0.0.1")
    assert table.seen(me, 1.0) == Refused(me, RefusalReason.OWN_ID)
    assert len(table) == 0
    assert OWN not in table
    assert table.closest(OWN, 20) == []


def test_address_prefixes() -> None:
    """IPv4 hosts count per /24, IPv6 per /48 (a site: what one holder of addresses
    gets; issue 18), and any other host name on its own."""
    assert address_prefix("10.1.2.3") == address_prefix("10.1.2.250") == "10.1.2.0/24"
    assert address_prefix("10.1.3.3") != address_prefix("10.1.2.3")
    assert address_prefix("::ffff:10.1.2.9") == "10.1.2.0/24"
    assert address_prefix("2001:db8:0:1::1") == address_prefix("2001:db8:0:1:ffff::2")
    assert address_prefix("2001:db8:0:2::1") == address_prefix("2001:db8:0:1::1")
    assert address_prefix("2001:db8:0:2::1") == "2001:db8::/48"
    assert address_prefix("2001:db8:1::1") != address_prefix("2001:db8:0:1::1")
    assert address_prefix("node-7") != address_prefix("node-8")
    assert address_prefix("Node-7") == address_prefix("node-7")


@pytest.mark.parametrize(
    ("same_prefix", "other_prefix"),
    [
        (["10.0.0.1", "10.0.0.2", "10.0.0.3"], "10.0.1.1"),
        (["2001:db8::1", "2001:db8:0:2::1", "2001:db8:0:ffff::3"], "2001:db8:1::1"),
    ],
)
def test_prefix_limit_per_bucket(same_prefix: list[str], other_prefix: str) -> None:
    """A bucket takes at most ip_prefix_limit_per_bucket contacts from one prefix."""
    config = small(3, ip_prefix_limit_per_bucket=2, ip_prefix_limit_per_table=None)
    table = RoutingTable(OWN, config)
    contacts = [far(index, host) for index, host in enumerate(same_prefix)]
    assert table.seen(contacts[0], 1.0) == Added(contacts[0])
    assert table.seen(contacts[1], 2.0) == Added(contacts[1])
    assert table.seen(contacts[2], 3.0) == Refused(contacts[2], RefusalReason.BUCKET_PREFIX_LIMIT)
    assert contacts[2].node_id not in table
    assert table.buckets[0].replacements == ()
    assert table.seen(far(9, other_prefix), 4.0) == Added(far(9, other_prefix))
    # The full bucket splits; the near half has its own allowance.
    assert table.seen(node(5, same_prefix[2]), 5.0) == Added(node(5, same_prefix[2]))


def test_prefix_limit_per_table() -> None:
    """The whole table takes at most ip_prefix_limit_per_table contacts from one prefix,
    across buckets; eviction frees the allowance."""
    config = DhtConfig(ip_prefix_limit_per_bucket=None, ip_prefix_limit_per_table=3)
    table = RoutingTable(OWN, config)
    # Ids sharing 0, 1, 2, 3 leading bits with ours: four different buckets once split.
    spread = [node(TOP >> shift, f"192.0.2.{shift + 1}") for shift in range(4)]
    for now, contact in enumerate(spread[:3]):
        assert table.seen(contact, float(now)) == Added(contact)
    assert table.seen(spread[3], 3.0) == Refused(spread[3], RefusalReason.TABLE_PREFIX_LIMIT)
    assert table.seen(node(7, "198.51.100.1"), 4.0) == Added(node(7, "198.51.100.1"))
    table.remove(spread[0].node_id)
    assert table.seen(spread[3], 5.0) == Added(spread[3])


def test_prefix_limit_applies_to_a_new_address() -> None:
    """A known contact moving into a full prefix is refused and keeps its old address."""
    config = DhtConfig(ip_prefix_limit_per_bucket=1, ip_prefix_limit_per_table=None)
    table = RoutingTable(OWN, config)
    table.seen(far(1, "10.0.0.1"), 1.0)
    table.seen(far(2, "10.9.9.9"), 2.0)
    moved = far(2, "10.0.0.7")
    assert table.seen(moved, 3.0) == Refused(moved, RefusalReason.BUCKET_PREFIX_LIMIT)
    assert table.get(moved.node_id) == far(2, "10.9.9.9")


def test_names_are_their_own_prefix_and_limits_can_be_off() -> None:
    """In-memory names never share a prefix, and None turns both limits off."""
    limited = RoutingTable(OWN, DhtConfig(ip_prefix_limit_per_bucket=1))
    for index in range(20):
        assert isinstance(limited.seen(far(index, f"node-{index}"), float(index)), Added)
    unlimited = RoutingTable(OWN, NO_LIMITS)
    for index in range(20):
        assert isinstance(unlimited.seen(far(index, "127.0.0.1"), float(index)), Added)
    assert len(unlimited) == 20


def test_promotion_respects_prefix_limits() -> None:
    """A replacement that would break a prefix limit is passed over for one that fits."""
    config = small(
        2,
        replacement_cache_size=3,
        ip_prefix_limit_per_bucket=1,
        ip_prefix_limit_per_table=None,
        ping_oldest_after=0.0,
    )
    table = RoutingTable(OWN, config)
    kept, leaving = far(1, "10.0.0.1"), far(2, "10.0.1.1")
    table.seen(kept, 1.0)
    table.seen(leaving, 2.0)
    fits, clashes = far(10, "10.0.2.1"), far(11, "10.0.3.1")
    assert table.seen(fits, 3.0) == PingOldest(kept, fits)
    assert table.seen(clashes, 4.0) == Cached(clashes)
    # `kept` moves into the prefix of the newest replacement, which then no longer fits.
    table.seen(far(1, "10.0.3.9"), 5.0)
    assert table.remove(leaving.node_id) == Evicted(leaving, promoted=fits)
    assert table.buckets[0].replacements == (clashes,)


def test_records_round_trip() -> None:
    """from_records(to_records()) rebuilds the same buckets, order and last-seen times."""
    rng = random.Random(3)
    own = NodeId(rng.randbytes(32))
    table = RoutingTable(own, NO_LIMITS)
    for now in range(400):
        host = rng.choice(["10.0.0.1", "2001:db8::1", f"node-{now}"])
        shift = rng.randrange(64)
        table.seen(node(int(own) ^ (rng.getrandbits(256) >> shift), host), float(now))
    for now in range(400, 450):  # re-seen contacts reorder their buckets
        table.seen(rng.choice(table.contacts()), float(now))
    records = table.to_records()
    assert all(
        isinstance(raw, bytes) and isinstance(host, str) and isinstance(port, int)
        for raw, host, port, _ in records
    )
    restored = RoutingTable.from_records(own, records, NO_LIMITS)
    assert restored.to_records() == records
    assert [b.contacts for b in restored.buckets] == [b.contacts for b in table.buckets]
    check_invariants(restored)


def test_from_records_skips_own_id_and_refuses_malformed_rows() -> None:
    """Restoring skips our own id and raises ValueError on a malformed record."""
    restored = RoutingTable.from_records(
        OWN, [(OWN.value, "node-0", 1, 1.0), (far(1).node_id.value, "node-1", 1, 2.0)]
    )
    assert restored.contacts() == [Contact(far(1).node_id, ("node-1", 1))]
    for bad in [
        (b"short", "node-1", 1, 1.0),
        (far(1).node_id.value, "", 1, 1.0),
        (far(1).node_id.value, "node-1", 0, 1.0),
        (far(1).node_id.value, "node-1", 1, "yesterday"),
        (far(1).node_id.value, "node-1"),
    ]:
        with pytest.raises(ValueError):
            RoutingTable.from_records(OWN, [bad])  # type: ignore[list-item]


def test_random_id_in_bucket_lands_in_the_bucket() -> None:
    """random_id_in_bucket draws from the bucket's own range with the given randomness."""
    rng = random.Random(11)
    table = RoutingTable(OWN, small(1))
    for shift in range(8):
        table.seen(node(TOP >> shift), 0.0)
    assert len(table.buckets) == 8
    for bucket in table.buckets:
        for _ in range(20):
            random_id = table.random_id_in_bucket(bucket.range.index, rng.randrange)
            assert random_id in bucket.range
            assert table.bucket_index(random_id) == bucket.range.index
    edge = table.buckets[3].range
    assert table.random_id_in_bucket(3, lambda size: size - 1) == NodeId.from_int(edge.high - 1)
    with pytest.raises(ValueError):
        table.random_id_in_bucket(3, lambda size: size)
    with pytest.raises(ValueError):
        table.random_id_in_bucket(8, rng.randrange)


def test_stale_buckets_follow_lookups() -> None:
    """Every bucket is stale until a lookup touches it, and again after the interval."""
    table = RoutingTable(OWN, small(1, bucket_refresh_interval=100.0))
    for shift in range(3):
        table.seen(node(TOP >> shift), 0.0)
    assert [r.index for r in table.stale_buckets(0.0)] == [0, 1, 2]
    table.touch_bucket(node(TOP + 5).node_id, 10.0)
    table.touch_bucket(OWN, 50.0)
    assert [r.index for r in table.stale_buckets(60.0)] == [1]
    assert [r.index for r in table.stale_buckets(110.0)] == [0, 1]
    assert [r.index for r in table.stale_buckets(110.0, interval=10.0)] == [0, 1, 2]


def test_introspection() -> None:
    """len, in, get and contacts() reflect the contacts in the table, not the cache."""
    table, members = full_far_bucket()
    cached = far(10)
    table.seen(cached, 3.0)
    assert len(table) == 2
    assert members[0].node_id in table
    assert cached.node_id not in table
    assert table.get(members[1].node_id) == members[1]
    assert table.get(cached.node_id) is None
    assert table.contacts() == members
    assert "not a node id" not in table
