"""Provider records: expiry, refresh, limits per key and per peer, and our provisions."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dht.config import DhtConfig
from dht.contact import Contact
from dht.errors import DhtError, KeyFull, QuotaExceeded, RecordRejected
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
    """restore() drops expired records and records beyond a limit, and caps expiries at ttl."""
    records = store(max_providers_per_key=2)
    saved = [
        ProviderRecord(key(1), peer(1), 100.0),  # expired at now=100
        ProviderRecord(key(1), peer(2), 200.0),
        ProviderRecord(key(1), peer(3), 10 * TTL),  # from a clock far ahead
        ProviderRecord(key(1), peer(4), 300.0),  # the key is full by then
    ]
    assert records.restore(saved, 100.0) == 2
    assert records.records() == [
        ProviderRecord(key(1), peer(2), 200.0),
        ProviderRecord(key(1), peer(3), 100.0 + TTL),
    ]
    assert records.expire(200.0) == 1


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
