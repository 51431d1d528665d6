"""Provider records: expiry, refresh, limits per key and per peer, and our provisions."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dht.config import DhtConfig
from dht.contact import Contact
from dht.errors import (
    BudgetFull,
    DhtError,
    KeyFull,
    PrefixQuotaExceeded,
    QuotaExceeded,
    RecordRejected,
)
from dht.providers import LocalProvisions, ProviderRecord, ProviderStore, Provision
from protocol.identity import NodeId

HOUR = 3600.0
TTL = 48 * HOUR
REPUBLISH = 22 * HOUR


def key(number: int) -> NodeId:
    return NodeId.from_int(0xC0FFEE00 + number)


def peer(number: int, port: int = 4000) -> Contact:
    return Contact(NodeId.from_int(number), (f"10.0.0.{number % 250}", port))


def store(*, max_providers_per_key: int = 64, max_records_per_peer: int = 100_000) -> ProviderStore:
    return ProviderStore(
        DhtConfig(
            max_providers_per_key=max_providers_per_key, max_records_per_peer=max_records_per_peer
        )
    )


# ---------------------------------------------------------------------- expiry, refresh


def test_record_expires_at_exactly_48_hours() -> None:
    """A record is returned until just before 48 h after it was added, and not at 48 h."""
    records = store()
    assert records.add(key(1), peer(1), 1000.0) == 1000.0 + TTL
    assert records.get(key(1), 1000.0 + TTL - 0.001, 10) == [peer(1)]
    assert records.get(key(1), 1000.0 + TTL, 10) == []
    assert records.expire(1000.0 + TTL - 0.001) == 0
    assert len(records) == 1
    assert records.expire(1000.0 + TTL) == 1
    assert len(records) == 0


def test_re_adding_refreshes_expiry_and_address() -> None:
    """Re-adding a record restarts its 48 h and takes the provider's new address."""
    records = store()
    records.add(key(1), peer(1, port=4000), 0.0)
    moved = peer(1, port=5000)
    assert records.add(key(1), moved, 10 * HOUR) == 10 * HOUR + TTL
    assert len(records) == 1
    assert records.get(key(1), TTL, 10) == [moved]
    assert records.expire(TTL) == 0
    assert records.get(key(1), 10 * HOUR + TTL, 10) == []
    assert records.expire(10 * HOUR + TTL) == 1
    statistics = records.statistics()
    assert (statistics.added, statistics.refreshed, statistics.expired) == (1, 1, 1)


def test_refresh_never_shortens_a_record() -> None:
    """A re-add with an earlier clock reading keeps the later expiry."""
    records = store()
    records.add(key(1), peer(1), 10 * HOUR)
    assert records.add(key(1), peer(1), 5 * HOUR) == 10 * HOUR + TTL


def test_expire_counts_removed_records() -> None:
    """expire() removes exactly the records expired at `now` and returns their number."""
    records = store()
    records.add(key(1), peer(1), 0.0)
    records.add(key(1), peer(2), 1 * HOUR)
    records.add(key(2), peer(1), 2 * HOUR)
    assert records.expire(TTL) == 1
    assert records.expire(TTL + 2 * HOUR) == 2
    assert records.expire(TTL + 10 * HOUR) == 0
    statistics = records.statistics()
    assert (statistics.keys, statistics.records, statistics.providers) == (0, 0, 0)
    assert statistics.expired == 3


# ---------------------------------------------------------------------- get


def test_many_providers_per_key_most_recent_first() -> None:
    """A key keeps many providers and returns them most recently announced first."""
    records = store()
    for number in range(1, 21):
        records.add(key(1), peer(number), float(number))
    assert records.get(key(1), 100.0, 64) == [peer(number) for number in range(20, 0, -1)]
    assert records.statistics().keys == 1
    assert records.statistics().providers == 20


def test_get_returns_only_unexpired_and_at_most_limit() -> None:
    """get() leaves out expired records and returns no more than `limit`."""
    records = store()
    for number in range(1, 6):
        records.add(key(1), peer(number), number * HOUR)
    later = TTL + 2 * HOUR  # the records of peers 1 and 2 have expired
    assert records.get(key(1), later, 10) == [peer(5), peer(4), peer(3)]
    assert records.get(key(1), later, 2) == [peer(5), peer(4)]
    assert records.get(key(1), later, 0) == []
    assert records.get(key(2), later, 10) == []
    with pytest.raises(ValueError):
        records.get(key(1), later, -1)


# ---------------------------------------------------------------------- limits


def test_full_key_refuses_newcomers_and_keeps_its_providers() -> None:
    """A key at max_providers_per_key refuses a new provider, keeps and refreshes the others."""
    records = store(max_providers_per_key=4)
    for number in range(1, 5):
        records.add(key(1), peer(number), 0.0)
    with pytest.raises(KeyFull):
        records.add(key(1), peer(99), HOUR)
    assert records.add(key(1), peer(2), HOUR) == HOUR + TTL
    assert {contact.node_id for contact in records.get(key(1), HOUR, 64)} == {
        peer(number).node_id for number in range(1, 5)
    }
    assert records.add(key(2), peer(99), HOUR) == HOUR + TTL  # other keys are unaffected
    statistics = records.statistics()
    assert statistics.rejected_key_full == 1
    assert statistics.records == 5


def test_full_key_admits_a_newcomer_once_a_provider_expired() -> None:
    """An expired provider frees its slot even before a sweep, and only then."""
    records = store(max_providers_per_key=2)
    records.add(key(1), peer(1), 0.0)
    records.add(key(1), peer(2), 10 * HOUR)
    with pytest.raises(KeyFull):
        records.add(key(1), peer(3), TTL - 0.001)
    assert records.add(key(1), peer(3), TTL) == 2 * TTL
    assert records.get(key(1), TTL, 64) == [peer(3), peer(2)]
    assert records.statistics().expired == 1


def test_per_peer_quota() -> None:
    """A peer at max_records_per_peer gets QuotaExceeded; refreshes and other peers pass."""
    records = store(max_records_per_peer=3)
    for number in range(3):
        records.add(key(number), peer(1), 0.0)
    with pytest.raises(QuotaExceeded) as raised:
        records.add(key(3), peer(1), HOUR)
    assert isinstance(raised.value, RecordRejected)
    assert isinstance(raised.value, DhtError)
    assert records.add(key(0), peer(1), HOUR) == HOUR + TTL
    assert records.add(key(3), peer(2), HOUR) == HOUR + TTL
    assert records.get(key(3), HOUR, 10) == [peer(2)]
    assert records.statistics().rejected_over_quota == 1
    # Once its first records expire (here at 48 h, the refreshed one later), it has room.
    assert records.add(key(3), peer(1), TTL) == 2 * TTL
    assert len(records) == 3


# ---------------------------------------------------------------------- persistence


def test_records_and_restore_round_trip() -> None:
    """restore() of records() rebuilds a store that answers the same."""
    records = store()
    records.add(key(1), peer(1), 0.0)
    records.add(key(1), peer(2), HOUR)
    records.add(key(2), peer(3), 2 * HOUR)
    copy = store()
    assert copy.restore(records.records(), 3 * HOUR) == 3
    assert sorted(copy.records(), key=repr) == sorted(records.records(), key=repr)
    for number in (1, 2):
        assert copy.get(key(number), 3 * HOUR, 64) == records.get(key(number), 3 * HOUR, 64)


def test_restore_skips_expired_and_over_limit_and_caps_expiry() -> None:
    """restore() drops expired records and, beyond a limit, the records expiring
    soonest (the least recently announced), and caps expiries at ttl."""
    records = store(max_providers_per_key=2)
    saved = [
        ProviderRecord(key(1), peer(1), 100.0),  # expired at now=100
        ProviderRecord(key(1), peer(2), 200.0),  # the key is full without it
        ProviderRecord(key(1), peer(3), 10 * TTL),  # from a clock far ahead
        ProviderRecord(key(1), peer(4), 300.0),
    ]
    assert records.restore(saved, 100.0) == 2
    assert records.records() == [
        ProviderRecord(key(1), peer(4), 300.0),
        ProviderRecord(key(1), peer(3), 100.0 + TTL),
    ]
    assert records.expire(300.0) == 1
    with pytest.raises(ValueError):
        records.restore(saved, 100.0)  # only into an empty store


@settings(derandomize=True, max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 30 * 3600), st.booleans()),
        max_size=40,
    )
)
def test_store_agrees_with_a_plain_model(steps: list[tuple[int, int, int, bool]]) -> None:
    """Any sequence of adds and sweeps leaves exactly the records a plain dict model keeps."""
    records = store()
    model: dict[tuple[int, int], float] = {}
    now = 0.0
    for key_number, peer_number, advance, sweep in steps:
        now += advance
        expires_at = records.add(key(key_number), peer(peer_number), now)
        model[key_number, peer_number] = expires_at
        assert expires_at == now + TTL
        if sweep:
            expected = sum(1 for when in model.values() if when <= now)
            assert records.expire(now) == expected
            model = {pair: when for pair, when in model.items() if when > now}
            assert len(records) == len(model)
        for number in range(4):
            live = {pair[1] for pair, when in model.items() if pair[0] == number and when > now}
            got = {int(contact.node_id) for contact in records.get(key(number), now, 64)}
            assert got == live


# ---------------------------------------------------------------------- our provisions


def test_new_provision_is_due_at_once() -> None:
    """A key we start providing is due for announcement at once, until published."""
    provisions = LocalProvisions()
    provisions.provide(key(1))
    assert key(1) in provisions
    assert provisions.due_for_republish(0.0, REPUBLISH) == [key(1)]
    provisions.published(key(1), 0.0)
    assert provisions.due_for_republish(0.0, REPUBLISH) == []


def test_republish_due_at_exactly_22_hours() -> None:
    """A key is due again exactly 22 h after its last announcement, not a moment before."""
    provisions = LocalProvisions()
    provisions.provide(key(1))
    provisions.published(key(1), 500.0)
    assert provisions.due_for_republish(500.0 + REPUBLISH - 0.001, REPUBLISH) == []
    assert provisions.due_for_republish(500.0 + REPUBLISH, REPUBLISH) == [key(1)]
    provisions.published(key(1), 500.0 + REPUBLISH)
    assert provisions.due_for_republish(500.0 + 2 * REPUBLISH - 0.001, REPUBLISH) == []


def test_due_keys_come_never_published_first_then_oldest() -> None:
    """Due keys are listed never-announced first, then by oldest announcement."""
    provisions = LocalProvisions()
    for number in (1, 2, 3, 4):
        provisions.provide(key(number))
    provisions.published(key(1), 2 * HOUR)
    provisions.published(key(3), 1 * HOUR)
    assert provisions.due_for_republish(30 * HOUR, REPUBLISH) == [key(2), key(4), key(3), key(1)]
    with pytest.raises(ValueError):
        provisions.due_for_republish(0.0, 0.0)


def test_provide_again_keeps_last_publish_and_withdraw_forgets() -> None:
    """Providing a key again changes nothing; a withdrawn key is never due, even if
    its announcement completes afterwards."""
    provisions = LocalProvisions()
    provisions.provide(key(1))
    provisions.published(key(1), 0.0)
    provisions.provide(key(1))
    assert provisions.due_for_republish(HOUR, REPUBLISH) == []
    provisions.withdraw(key(1))
    provisions.published(key(1), 2 * HOUR)
    provisions.withdraw(key(1))
    assert len(provisions) == 0
    assert provisions.due_for_republish(100 * HOUR, REPUBLISH) == []


def test_provisions_restore_round_trip() -> None:
    """restore() of records() gives the same provisions; future times are taken as now."""
    provisions = LocalProvisions()
    provisions.provide(key(1))
    provisions.provide(key(2))
    provisions.published(key(2), 7.0)
    copy = LocalProvisions()
    copy.restore(provisions.records(), 10.0)
    assert copy.records() == [Provision(key(1), None), Provision(key(2), 7.0)]
    copy.restore([Provision(key(3), 1e9)], 10.0)
    assert Provision(key(3), 10.0) in copy.records()


def test_a_provision_is_due_at_exactly_the_deadline_the_timer_waits_for() -> None:
    """At now = last + interval (the republish timer's deadline) the key is due, even
    where `now - last` rounds below the interval: else the republish loop spins."""
    provisions = LocalProvisions()
    key = NodeId(bytes(32))
    last, interval = 86553.41358101067, 79200.0
    assert (last + interval) - last < interval  # the floating-point case that hung
    provisions.provide(key)
    provisions.published(key, last)
    assert provisions.due_for_republish(last + interval, interval) == [key]


def test_a_full_key_prefers_diversity_over_one_crowded_prefix() -> None:
    """64 identities from one /24 fill a key (issue 18, row 3): an honest provider from
    another /24 still gets in, taking the slot of the crowded prefix's provider expiring
    soonest; one more identity of the crowded /24 is refused; and a provider from a
    prefix of its own is never pushed out by one from a prefix with more."""
    providers = store(max_providers_per_key=64)
    sybils = [
        Contact(NodeId.from_int(1000 + i), (f"198.51.100.{i % 250}", 4000)) for i in range(64)
    ]
    for number, sybil in enumerate(sybils):
        providers.add(key(1), sybil, float(number))
    honest = Contact(NodeId.from_int(7), ("203.0.113.7", 4000))
    providers.add(key(1), honest, 100.0)
    live = providers.get(key(1), 100.0, 100)
    assert honest in live and sybils[0] not in live and len(live) == 64
    with pytest.raises(KeyFull):
        providers.add(key(1), Contact(NodeId.from_int(5000), ("198.51.100.99", 4000)), 101.0)
    for number in range(30):  # more honest providers, each from a /24 of its own
        other = Contact(NodeId.from_int(20 + number), (f"192.0.{number}.1", 4000))
        providers.add(key(1), other, 102.0 + number)
    live = providers.get(key(1), 200.0, 100)
    assert honest in live and len(live) == 64
    assert sum(contact.address[0].startswith("198.51.100.") for contact in live) == 33


# ---------------------------------------------------------------------- node-wide limits


def at(number: int, prefix: str, port: int = 4000) -> Contact:
    """Peer `number` at a host of the /24 `prefix` (three octets)."""
    return Contact(NodeId.from_int(number), (f"{prefix}.{number % 250 + 1}", port))


def budget_store(
    max_records: int, max_records_per_prefix: int | None = None, **limits: int
) -> ProviderStore:
    return ProviderStore(
        DhtConfig(max_records=max_records, max_records_per_prefix=max_records_per_prefix, **limits)
    )


def prefix_counts(records: ProviderStore) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in records.records():
        name = record.provider.address[0].rsplit(".", 1)[0]
        counts[name] = counts.get(name, 0) + 1
    return counts


def test_a_full_store_takes_room_from_the_most_crowded_prefix() -> None:
    """With `max_records` stored, a newcomer from a less crowded prefix takes the place
    of the most crowded prefix's record expiring soonest, until the two are level; then
    it gets BudgetFull, as does one more record of the crowded prefix (issue 18, row 2)."""
    records = budget_store(10)
    for number in range(10):
        records.add(key(number), at(1000 + number, "198.51.100"), float(number))
    with pytest.raises(BudgetFull) as raised:
        records.add(key(99), at(1099, "198.51.100"), 20.0)
    assert isinstance(raised.value, RecordRejected)
    for number in range(5):
        records.add(key(100 + number), at(2000 + number, "203.0.113"), 30.0 + number)
    # The crowded prefix lost its five records expiring soonest: those added first.
    assert [int(record.key) - 0xC0FFEE00 for record in records.records()][:5] == [5, 6, 7, 8, 9]
    assert prefix_counts(records) == {"198.51.100": 5, "203.0.113": 5}
    with pytest.raises(BudgetFull):
        records.add(key(105), at(2005, "203.0.113"), 40.0)
    records.add(key(200), at(3000, "192.0.2"), 41.0)  # a third prefix still gets in
    assert len(records) == 10
    assert records.get(key(200), 41.0, 10) == [at(3000, "192.0.2")]
    statistics = records.statistics()
    assert (statistics.evicted, statistics.rejected_budget_full) == (6, 2)
    assert (statistics.records, statistics.prefixes) == (10, 3)
    # Refreshes are never refused, and expired records free their places before a refusal.
    assert records.add(key(6), at(1006, "198.51.100"), 42.0) == 42.0 + TTL
    records.add(key(300), at(1300, "198.51.100"), TTL + 7.5)  # key 7's expired at 7 + TTL
    assert len(records) == 10


def test_a_store_full_of_many_prefixes_refuses_rather_than_churns() -> None:
    """A store filled evenly from many prefixes refuses a newcomer: nobody it holds is
    less entitled than the newcomer."""
    records = budget_store(8)
    for number in range(8):
        records.add(key(number), at(number, f"10.0.{number}"), 0.0)
    with pytest.raises(BudgetFull):
        records.add(key(8), at(8, "10.0.8"), 1.0)
    assert records.statistics().evicted == 0


def test_per_prefix_quota() -> None:
    """Identities of one /24 share `max_records_per_prefix`: beyond it a new record gets
    PrefixQuotaExceeded (a QuotaExceeded); refreshes, other prefixes and records made
    room for by expiry pass."""
    records = budget_store(100, 3)
    for number in range(3):
        records.add(key(number), at(100 + number, "198.51.100"), float(number))
    with pytest.raises(PrefixQuotaExceeded) as raised:
        records.add(key(3), at(200, "198.51.100"), HOUR)  # another identity, same /24
    assert isinstance(raised.value, QuotaExceeded)
    assert "198.51.100.0/24" in str(raised.value)
    assert records.add(key(0), at(100, "198.51.100"), HOUR) == HOUR + TTL
    records.add(key(3), at(200, "203.0.113"), HOUR)
    with pytest.raises(PrefixQuotaExceeded):  # a record cannot move into a full prefix
        records.add(key(3), at(200, "198.51.100"), HOUR)
    assert records.get(key(3), HOUR, 10) == [at(200, "203.0.113")]
    assert records.statistics().rejected_over_prefix_quota == 2
    records.add(key(4), at(201, "198.51.100"), TTL + 1.0)  # key 1's record has expired
    assert prefix_counts(records) == {"198.51.100": 3, "203.0.113": 1}


def test_a_lifted_prefix_quota_lets_one_prefix_fill_the_budget() -> None:
    """max_records_per_prefix = None (a loopback testnet) lets one prefix hold every
    record the budget allows, and no more."""
    records = budget_store(50, None)
    for number in range(50):
        records.add(key(number), at(number, "127.0.0"), 0.0)
    with pytest.raises(BudgetFull):
        records.add(key(50), at(50, "127.0.0"), 0.0)
    assert len(records) == 50


def test_a_record_refreshed_from_another_prefix_moves_there() -> None:
    """A provider announcing again from another /24 moves its record (and its place in
    the counts) to that prefix."""
    records = budget_store(10, 5)
    records.add(key(1), at(7, "198.51.100"), 0.0)
    records.add(key(1), at(7, "203.0.113"), 1.0)
    assert records.get(key(1), 1.0, 10) == [at(7, "203.0.113")]
    assert prefix_counts(records) == {"203.0.113": 1}
    statistics = records.statistics()
    assert (statistics.records, statistics.prefixes, statistics.refreshed) == (1, 1, 1)


def test_refreshing_in_a_loop_does_not_grow_the_store() -> None:
    """Re-announcing one record thousands of times keeps the store's queues bounded,
    and the record still expires 48 h after its last announcement."""
    records = budget_store(10)
    records.add(key(1), peer(1), 0.0)
    records.add(key(2), peer(2), 0.0)
    for step in range(5000):
        records.add(key(1), peer(1), float(step))
    assert len(records._queue) <= 2 * len(records) + 1024
    assert all(len(prefix.queue) <= 2 * prefix.count + 8 for prefix in records._prefixes.values())
    assert records.expire(TTL) == 1
    assert records.expire(4999.0 + TTL) == 1
    assert len(records) == 0


@settings(derandomize=True, max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 5), st.integers(0, 11), st.integers(0, 20 * 3600), st.booleans()),
        max_size=80,
    )
)
def test_limits_hold_for_any_sequence(steps: list[tuple[int, int, int, bool]]) -> None:
    """Whatever the adds and sweeps, the store never holds more than its budget, a
    prefix its quota or a key its providers, its counts agree with its records, and a
    refusal leaves it unchanged."""
    records = budget_store(8, 5, max_providers_per_key=3)
    now = 0.0
    for key_number, peer_number, advance, sweep in steps:
        now += advance
        provider = at(peer_number, f"10.0.{peer_number % 3}")
        before = records.records()
        try:
            records.add(key(key_number), provider, now)
        except RecordRejected:
            assert records.records() == before or records.statistics().expired
        if sweep:
            records.expire(now)
        stored = records.records()
        assert len(stored) == len(records) <= 8
        assert all(count <= 5 for count in prefix_counts(records).values())
        by_key: dict[NodeId, int] = {}
        for record in stored:
            by_key[record.key] = by_key.get(record.key, 0) + 1
        assert all(count <= 3 for count in by_key.values())
        statistics = records.statistics()
        assert statistics.keys == len(by_key)
        assert statistics.prefixes == len(prefix_counts(records))


# ---------------------------------------------------------------------- changes to save


def saved_pairs(records: list[ProviderRecord]) -> set[tuple[int, int]]:
    return {(int(record.key) - 0xC0FFEE00, int(record.provider.node_id)) for record in records}


def take_all(
    records: ProviderStore,
) -> tuple[list[ProviderRecord], list[tuple[NodeId, NodeId]], bool]:
    changes = records.take_changes()
    taken: list[ProviderRecord] = []
    while batch := changes.take_records(2):
        taken.extend(batch)
    assert len(changes) == 0
    return taken, changes.removed, changes.full


def test_changes_name_only_what_changed_since_the_last_take() -> None:
    """take_changes() gives the records added or refreshed since the last take and the
    saved ones removed since (evicted or expired); a record added and removed in
    between leaves no trace."""
    records = budget_store(4, None)
    for number in range(3):
        records.add(key(number), peer(number), float(number))
    taken, removed, full = take_all(records)
    assert (saved_pairs(taken), removed, full) == ({(0, 0), (1, 1), (2, 2)}, [], False)
    records.add(key(1), peer(1), 10.0)  # refreshed
    records.add(key(6), at(6, "192.0.2"), 12.0)  # added
    records.add(key(7), at(7, "192.0.2"), 13.0)  # added; the store is full: evicts key 0's
    assert records.statistics().evicted == 1
    taken, removed, full = take_all(records)
    assert (saved_pairs(taken), removed, full) == (
        {(1, 1), (6, 6), (7, 7)},
        [(key(0), peer(0).node_id)],
        False,
    )
    assert records.expire(13.0 + TTL) == 4
    taken, removed, full = take_all(records)
    assert taken == [] and not full
    assert sorted(int(k) - 0xC0FFEE00 for k, _ in removed) == [1, 2, 6, 7]
    assert take_all(records) == ([], [], False)
    records.add(key(9), peer(9), 14.0 + TTL)
    assert records.expire(14.0 + 2 * TTL) == 1  # never saved: nothing to delete
    assert take_all(records) == ([], [], False)


def test_a_failed_save_makes_the_next_changes_a_full_rewrite() -> None:
    """After save_failed() the next changes replace the table with every record."""
    records = budget_store(10)
    records.add(key(1), peer(1), 0.0)
    take_all(records)
    records.add(key(2), peer(2), 1.0)
    records.save_failed()
    taken, removed, full = take_all(records)
    assert full and removed == []
    assert saved_pairs(taken) == {(1, 1), (2, 2)}
    assert take_all(records) == ([], [], False)
