"""The iterative lookup state machine, by hand and on a simulated 300-node network."""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dht.config import DhtConfig
from dht.contact import Contact
from dht.lookup import CANDIDATE_FACTOR, ContactState, Lookup, Query
from dht.rtt import RttEstimator
from protocol.identity import NodeId

TARGET = NodeId.from_int(0)  # hand-made tests: a contact's distance is its number


def contact(number: int, host: str = "10.0.0.1") -> Contact:
    return Contact(NodeId.from_int(number), (host, 1 + number % 65535))


def ids(contacts: Sequence[Contact]) -> list[int]:
    return [int(c.node_id) for c in contacts]


def queried(queries: Sequence[Query]) -> list[int]:
    return [int(q.contact.node_id) for q in queries]


# ------------------------------------------------------------------ hand-made cases


def test_queries_closest_first_and_finishes_when_k_closest_answered() -> None:
    """The lookup queries closer contacts as it learns them and stops once the k closest answer."""
    lookup = Lookup(
        TARGET, [contact(9), contact(8)], config=DhtConfig(k=2, alpha=1, disjoint_paths=1)
    )
    assert queried(lookup.next_queries(0.0)) == [8]
    assert lookup.next_queries(0.0) == []  # alpha = 1 already in flight
    lookup.answered(contact(8), [contact(4), contact(50)], 1.0)
    assert not lookup.is_done
    assert queried(lookup.next_queries(1.0)) == [4]
    lookup.answered(contact(4), [contact(2)], 2.0)
    assert not lookup.is_done  # 2 is closer and has not answered yet
    assert queried(lookup.next_queries(2.0)) == [2]
    lookup.answered(contact(2), [], 3.0)
    assert lookup.is_done
    assert ids(lookup.result()) == [2, 4]
    assert lookup.next_queries(3.0) == []
    stats = lookup.statistics()
    assert (stats.queries_sent, stats.answered, stats.failed, stats.hops) == (3, 3, 0, 2)
    assert (stats.started_at, stats.finished_at) == (0.0, 3.0)
    assert lookup.state(NodeId.from_int(9)) is ContactState.CANDIDATE  # never needed


def test_done_does_not_wait_for_queries_outside_the_window() -> None:
    """Once the k closest answered, a farther query is abandoned and its report ignored."""
    lookup = Lookup(
        TARGET, [contact(8), contact(9)], config=DhtConfig(k=2, alpha=2, disjoint_paths=1)
    )
    assert queried(lookup.next_queries(0.0)) == [8, 9]
    lookup.answered(contact(8), [contact(1)], 1.0)
    assert queried(lookup.next_queries(1.0)) == [1]
    lookup.answered(contact(1), [], 2.0)
    assert lookup.is_done  # 9 is still in flight, but outside the window {1, 8}
    lookup.failed(contact(9), 3.0)  # raced its cancellation: ignored
    lookup.answered(contact(9), [contact(0)], 3.0)
    assert ids(lookup.result()) == [1, 8]
    assert lookup.statistics().failed == 0
    assert lookup.statistics().finished_at == 2.0


def test_not_done_while_a_closer_query_is_in_flight() -> None:
    """A farther answer does not finish the lookup while a closer contact is in flight; its failure
    lets the next contact into the window."""
    seeds = [contact(7), contact(8), contact(9)]
    lookup = Lookup(TARGET, seeds, config=DhtConfig(k=2, alpha=2, disjoint_paths=1))
    assert queried(lookup.next_queries(0.0)) == [7, 8]
    lookup.answered(contact(8), [], 1.0)
    assert not lookup.is_done
    assert lookup.next_queries(1.0) == []  # 9 is outside the window {7, 8}
    lookup.failed(contact(7), 2.0)
    assert not lookup.is_done
    assert queried(lookup.next_queries(2.0)) == [9]
    lookup.answered(contact(9), [], 3.0)
    assert lookup.is_done
    assert ids(lookup.result()) == [8, 9]


def test_failed_query_is_replaced_at_once() -> None:
    """After failed(), next_queries() hands out a replacement without waiting for the others."""
    seeds = [contact(n) for n in range(1, 7)]
    lookup = Lookup(TARGET, seeds, config=DhtConfig(k=4, alpha=3, disjoint_paths=1))
    assert queried(lookup.next_queries(0.0)) == [1, 2, 3]
    lookup.failed(contact(2), 0.5)
    assert lookup.in_flight == 2
    assert queried(lookup.next_queries(0.5)) == [4]
    assert lookup.in_flight == 3
    assert lookup.state(NodeId.from_int(2)) is ContactState.FAILED


def test_failed_contact_is_never_queried_again() -> None:
    """A contact that failed and is named again by a later answer is not re-queried."""
    lookup = Lookup(
        TARGET, [contact(5), contact(6)], config=DhtConfig(k=2, alpha=1, disjoint_paths=1)
    )
    lookup.next_queries(0.0)
    lookup.failed(contact(5), 1.0)
    assert queried(lookup.next_queries(1.0)) == [6]
    lookup.answered(contact(6), [contact(5)], 2.0)
    assert lookup.is_done
    assert ids(lookup.result()) == [6]


def test_no_seeds_or_all_failed_is_done_and_empty() -> None:
    """A lookup with no seeds is done at once; one whose contacts all fail ends empty."""
    empty = Lookup(TARGET, [], config=DhtConfig(disjoint_paths=1))
    assert empty.is_done
    assert empty.result() == []
    assert empty.next_queries(0.0) == []
    lookup = Lookup(TARGET, [contact(3)], config=DhtConfig(disjoint_paths=1))
    lookup.next_queries(0.0)
    lookup.failed(contact(3), 1.0)
    assert lookup.is_done
    assert lookup.result() == []


def test_oversized_answer_counts_as_failure() -> None:
    """An answer with more than k contacts is ignored and its sender treated as failed."""
    lookup = Lookup(
        TARGET, [contact(8), contact(9)], config=DhtConfig(k=2, alpha=1, disjoint_paths=1)
    )
    lookup.next_queries(0.0)
    lookup.answered(contact(8), [contact(1), contact(2), contact(3)], 1.0)
    assert lookup.state(NodeId.from_int(8)) is ContactState.FAILED
    assert lookup.state(NodeId.from_int(1)) is None
    stats = lookup.statistics()
    assert (stats.answered, stats.failed, stats.rejected) == (0, 1, 1)
    assert queried(lookup.next_queries(1.0)) == [9]
    lookup.answered(contact(9), [], 2.0)
    assert ids(lookup.result()) == [9]


def test_duplicates_own_id_self_and_undialable_entries_are_dropped() -> None:
    """Our own id, the answerer itself, repeated ids and undialable contacts are never queried."""
    own = NodeId.from_int(1)
    lookup = Lookup(
        TARGET,
        [contact(8), contact(8, host="10.9.9.9"), contact(1)],
        config=DhtConfig(k=8, alpha=3, disjoint_paths=1),
        own_id=own,
    )
    assert queried(lookup.next_queries(0.0)) == [8]
    answer = [
        contact(1),
        contact(8, host="10.6.6.6"),
        contact(4),
        contact(4, host="10.7.7.7"),
        contact(4),
        Contact(NodeId.from_int(2), ("", 80)),
        Contact(NodeId.from_int(3), ("10.0.0.3", 0)),
    ]
    lookup.answered(contact(8), answer, 1.0)
    queries = lookup.next_queries(1.0)
    assert queried(queries) == [4]
    assert queries[0].contact.address == contact(4).address  # first address seen wins
    for dropped in (1, 2, 3):
        assert lookup.state(NodeId.from_int(dropped)) is None
    lookup.answered(contact(4), [contact(8), contact(4)], 2.0)
    assert lookup.is_done
    assert ids(lookup.result()) == [4, 8]
    assert lookup.result()[1].address == ("10.0.0.1", 9)
    assert lookup.statistics().queries_sent == 2


def test_candidates_are_capped_farthest_first() -> None:
    """Only the CANDIDATE_FACTOR * k closest unqueried candidates are kept."""
    k = 2
    limit = CANDIDATE_FACTOR * k
    seeds = [contact(n) for n in range(100, 100 + limit + 3)]
    lookup = Lookup(TARGET, reversed(seeds), config=DhtConfig(k=k, alpha=1, disjoint_paths=1))
    for number in range(100, 100 + limit):
        assert lookup.state(NodeId.from_int(number)) is ContactState.CANDIDATE
    for number in range(100 + limit, 100 + limit + 3):
        assert lookup.state(NodeId.from_int(number)) is None


def test_reports_for_contacts_not_in_flight_are_refused() -> None:
    """answered() or failed() for a contact with no query in flight is a driver bug."""
    lookup = Lookup(
        TARGET, [contact(5), contact(6)], config=DhtConfig(k=2, alpha=1, disjoint_paths=1)
    )
    with pytest.raises(ValueError):
        lookup.answered(contact(5), [], 0.0)  # never queried
    lookup.next_queries(0.0)
    lookup.answered(contact(5), [], 1.0)
    with pytest.raises(ValueError):
        lookup.failed(contact(5), 1.0)  # already answered
    with pytest.raises(ValueError):
        lookup.answered(contact(6), [], 1.0, providers=[contact(9)])  # not a provider lookup


def test_deadlines_come_from_the_rtt_estimator() -> None:
    """Each query's deadline is now plus the peer's adaptive timeout."""
    config = DhtConfig(k=2, alpha=2, disjoint_paths=1)
    rtt = RttEstimator(config)
    rtt.observe(NodeId.from_int(5), 0.1)  # srtt 0.1, rttvar 0.05: 0.3 s
    lookup = Lookup(TARGET, [contact(5), contact(6)], config=config, rtt=rtt)
    queries = {int(q.contact.node_id): q for q in lookup.next_queries(10.0)}
    assert queries[5].sent_at == 10.0
    assert queries[5].deadline == pytest.approx(10.3)
    # Unmeasured: twice the global estimate, since its first request pays for the handshake.
    assert queries[6].deadline == pytest.approx(10.6)
    plain = Lookup(TARGET, [contact(5)], config=config)
    assert plain.next_queries(10.0)[0].deadline == 10.0 + config.initial_query_timeout


def test_provider_lookup_continues_past_first_providers() -> None:
    """A provider lookup keeps going until the k closest answered and merges their providers."""
    config = DhtConfig(k=2, alpha=1, disjoint_paths=1)
    lookup = Lookup(TARGET, [contact(8)], config=config, want_providers=True)
    provider_1, provider_2, provider_3 = (contact(n, host="10.1.1.1") for n in (501, 502, 503))
    lookup.next_queries(0.0)
    lookup.answered(contact(8), [contact(4), contact(2)], 1.0, providers=[provider_1])
    assert not lookup.is_done
    assert queried(lookup.next_queries(1.0)) == [2]
    lookup.answered(contact(2), [], 2.0, providers=[provider_2, provider_1, provider_2])
    assert not lookup.is_done
    assert queried(lookup.next_queries(2.0)) == [4]
    lookup.answered(contact(4), [], 3.0, providers=[provider_3])
    assert lookup.is_done
    # Deduplicated; those reported by the closest node (2) first.
    assert lookup.providers() == [provider_2, provider_1, provider_3]
    assert ids(lookup.result()) == [2, 4]


def test_providers_are_bounded_preferring_closer_reporters() -> None:
    """Past max_providers_per_key, providers reported by farther nodes are dropped first."""
    config = DhtConfig(k=2, alpha=2, max_providers_per_key=2, disjoint_paths=1)
    lookup = Lookup(TARGET, [contact(8), contact(3)], config=config, want_providers=True)
    far = [contact(n, host="10.2.2.2") for n in (601, 602)]
    near = [contact(n, host="10.3.3.3") for n in (701, 702)]
    lookup.next_queries(0.0)
    lookup.answered(contact(8), [], 1.0, providers=far)
    assert lookup.providers() == far
    lookup.answered(contact(3), [], 2.0, providers=near)
    assert lookup.providers() == near


def test_answer_with_too_many_providers_is_rejected() -> None:
    """An answer with more than max_providers_per_key providers counts as a failure."""
    config = DhtConfig(k=2, alpha=1, max_providers_per_key=2, disjoint_paths=1)
    lookup = Lookup(TARGET, [contact(8)], config=config, want_providers=True)
    lookup.next_queries(0.0)
    lookup.answered(contact(8), [], 1.0, providers=[contact(n) for n in (601, 602, 603)])
    assert lookup.providers() == []
    assert lookup.statistics().rejected == 1
    assert lookup.is_done
    assert lookup.result() == []


# ---------------------------------------------------------------- simulated network

NETWORK_SIZE = 300


@dataclass
class Network:
    """Nodes with Kademlia-like views: up to k random members per bucket plus their true
    k nearest neighbours. Liars answer only with invented ids close to the target."""

    k: int
    contacts: dict[NodeId, Contact]
    views: dict[NodeId, list[Contact]]
    providers: dict[NodeId, list[Contact]] = field(default_factory=dict)
    liars: frozenset[NodeId] = frozenset()

    def true_closest(self, target: NodeId, *, exclude: NodeId) -> list[Contact]:
        others = [c for c in self.contacts.values() if c.node_id != exclude]
        return sorted(others, key=lambda c: target.distance(c.node_id))[: self.k]

    def answer(self, node_id: NodeId, target: NodeId, rng: random.Random) -> list[Contact]:
        if node_id in self.liars:
            return [fake_contact(target, rng) for _ in range(self.k)]
        view = self.views[node_id]
        return sorted(view, key=lambda c: target.distance(c.node_id))[: self.k]


def fake_contact(target: NodeId, rng: random.Random) -> Contact:
    """An id that exists nowhere, within 2**200 of the target (closer than any real node)."""
    return Contact(NodeId.from_int(int(target) ^ rng.getrandbits(200)), ("10.66.6.6", 666))


@functools.cache
def build_network(seed: int, k: int, per_bucket: int | None = None) -> Network:
    """`per_bucket` members of each bucket (k if None) plus each node's k nearest."""
    per_bucket = k if per_bucket is None else per_bucket
    rng = random.Random(seed)
    contacts = {}
    for index in range(NETWORK_SIZE):
        node_id = NodeId(rng.randbytes(32))
        contacts[node_id] = Contact(node_id, (f"10.{index // 256}.{index % 256}.1", 7000))
    views = {}
    for node_id in contacts:
        buckets: dict[int, list[Contact]] = {}
        others = [c for other, c in contacts.items() if other != node_id]
        for other in others:
            buckets.setdefault(node_id.distance(other.node_id).bit_length(), []).append(other)
        view = {
            c.node_id: c
            for members in buckets.values()
            for c in rng.sample(members, k=min(per_bucket, len(members)))
        }
        for neighbour in sorted(others, key=lambda c: node_id.distance(c.node_id))[:k]:
            view[neighbour.node_id] = neighbour
        views[node_id] = list(view.values())
    return Network(k=k, contacts=contacts, views=views)


Respond = Callable[[Contact], tuple[list[Contact], list[Contact]] | None]


def drive(
    lookup: Lookup, respond: Respond, *, alpha: int, rng: random.Random, paths: int = 1
) -> None:
    """A synchronous fake driver: complete one random in-flight query at a time, so answers
    arrive out of order; `respond` returns (contacts, providers), or None for a timeout."""
    in_flight: dict[NodeId, Query] = {}
    now = 0.0
    while not lookup.is_done:
        for query in lookup.next_queries(now):
            assert query.contact.node_id not in in_flight
            in_flight[query.contact.node_id] = query
        assert len(in_flight) == lookup.in_flight <= alpha * paths
        for path in range(paths):
            assert sum(query.path == path for query in in_flight.values()) <= alpha
        assert in_flight, "lookup stalled: not done, nothing in flight"
        query = in_flight.pop(rng.choice(sorted(in_flight)))
        outcome = respond(query.contact)
        if outcome is None:
            now = max(now, query.deadline)
            lookup.failed(query.contact, now)
        else:
            now += 0.01
            contacts, providers = outcome
            lookup.answered(query.contact, contacts, now, providers=providers)
        stats = lookup.statistics()
        assert stats.answered + stats.failed + stats.in_flight == stats.queries_sent
        check_bookkeeping(lookup)


def check_bookkeeping(lookup: Lookup) -> None:
    """The lookup's private indexes agree with its entries (white box: they exist only
    to avoid passes over the entries, and a drift would silently change decisions)."""
    entries = list(lookup._entries.values())
    order = lookup._order
    assert sorted(order, key=lambda entry: entry.distance) == order
    assert {id(entry) for entry in order} == {id(entry) for entry in entries}
    assert len(order) == len(entries)
    states = [entry.state for entry in order]
    paths = lookup._config.disjoint_paths
    assert lookup._candidates == states.count(ContactState.CANDIDATE)
    assert lookup._candidates <= lookup._candidate_limit * paths
    for path in range(paths):
        owned = [entry for entry in order if entry.path == path]
        answered = [entry for entry in owned if entry.state is ContactState.ANSWERED]
        assert lookup._answered_kept[path] == len(answered) <= lookup._config.k
        in_flight = [entry for entry in owned if entry.state is ContactState.IN_FLIGHT]
        assert lookup._path_in_flight[path] == len(in_flight)
    for entry in order:
        assert (entry.path < 0) == (entry.state is ContactState.CANDIDATE)


def network_responder(network: Network, target: NodeId, rng: random.Random) -> Respond:
    def respond(contact: Contact) -> tuple[list[Contact], list[Contact]] | None:
        if contact.node_id not in network.contacts:
            return None  # invented id: nobody answers
        answer = network.answer(contact.node_id, target, rng)
        return answer, network.providers.get(contact.node_id, [])

    return respond


def start_lookup(
    network: Network,
    seed: int,
    *,
    alpha: int = 3,
    want_providers: bool = False,
    paths: int = 1,
) -> tuple[Lookup, NodeId, NodeId, random.Random]:
    """A lookup of a random target from a random honest node, seeded from its own view."""
    rng = random.Random(seed)
    target = NodeId(rng.randbytes(32))
    honest = sorted(set(network.contacts) - network.liars)
    querier = rng.choice(honest)
    seeds = network.answer(querier, target, rng)
    config = DhtConfig(k=network.k, alpha=alpha, disjoint_paths=paths)
    lookup = Lookup(target, seeds, config=config, own_id=querier, want_providers=want_providers)
    return lookup, target, querier, rng


@settings(derandomize=True, max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), alpha=st.integers(1, 4), paths=st.integers(1, 5))
def test_finds_the_true_k_closest(seed: int, alpha: int, paths: int) -> None:
    """On an honest network the lookup returns exactly the true k closest to the target,
    over one path or several disjoint ones."""
    network = build_network(1, 8)
    lookup, target, querier, rng = start_lookup(network, seed, alpha=alpha, paths=paths)
    drive(lookup, network_responder(network, target, rng), alpha=alpha, rng=rng, paths=paths)
    assert lookup.result() == network.true_closest(target, exclude=querier)
    assert querier not in {c.node_id for c in lookup.result()}
    stats = lookup.statistics()
    assert stats.failed == 0
    assert stats.hops >= 0


@pytest.mark.parametrize("paths", [1, 4])
def test_finds_the_true_k_closest_over_many_hops(paths: int) -> None:
    """With sparse views (2 per bucket) and 3 random seeds, lookups take several hops and still
    find the true k closest."""
    network = build_network(5, 8, per_bucket=2)
    hops = []
    for seed in range(40):
        rng = random.Random(seed)
        target = NodeId(rng.randbytes(32))
        querier = rng.choice(sorted(network.contacts))
        others = sorted(set(network.contacts) - {querier})
        seeds = [network.contacts[node_id] for node_id in rng.sample(others, 3)]
        config = DhtConfig(k=8, alpha=3, disjoint_paths=paths)
        lookup = Lookup(target, seeds, config=config, own_id=querier)
        drive(lookup, network_responder(network, target, rng), alpha=3, rng=rng, paths=paths)
        assert lookup.result() == network.true_closest(target, exclude=querier)
        hops.append(lookup.statistics().hops)
    assert max(hops) >= 4


def test_finds_the_true_k_closest_with_default_config() -> None:
    """With the default k = 20, alpha = 3 and disjoint paths the lookup also finds the true 20
    closest."""
    network = build_network(2, 20)
    paths = DhtConfig().disjoint_paths
    for seed in range(5):
        lookup, target, querier, rng = start_lookup(network, seed, paths=paths)
        drive(lookup, network_responder(network, target, rng), alpha=3, rng=rng, paths=paths)
        assert lookup.result() == network.true_closest(target, exclude=querier)


@settings(derandomize=True, max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), paths=st.sampled_from([1, 4]))
def test_liars_cannot_get_fake_ids_into_the_result(seed: int, paths: int) -> None:
    """With 10% of nodes answering invented close ids, the result is still the true k closest."""
    honest_network = build_network(3, 8)
    rng = random.Random(seed)
    liars = frozenset(rng.sample(sorted(honest_network.contacts), NETWORK_SIZE // 10))
    network = Network(
        k=honest_network.k,
        contacts=honest_network.contacts,
        views=honest_network.views,
        liars=liars,
    )
    lookup, target, querier, rng = start_lookup(network, seed, paths=paths)
    drive(lookup, network_responder(network, target, rng), alpha=3, rng=rng, paths=paths)
    result = lookup.result()
    assert all(c.node_id in network.contacts for c in result)
    assert result == network.true_closest(target, exclude=querier)


def test_liar_seed_costs_only_timeouts() -> None:
    """A lying seed's invented contacts all fail, and the honest seed still leads to the answer."""
    network = build_network(1, 8)
    rng = random.Random(7)
    target = NodeId(rng.randbytes(32))
    liar, honest = sorted(network.contacts)[:2]
    network = Network(
        k=network.k, contacts=network.contacts, views=network.views, liars=frozenset({liar})
    )
    seeds = [network.contacts[liar], network.contacts[honest]]
    config = DhtConfig(k=8, alpha=3, disjoint_paths=1)
    lookup = Lookup(target, seeds, config=config, own_id=None)
    drive(lookup, network_responder(network, target, rng), alpha=3, rng=rng)
    assert (
        lookup.result()
        == sorted(network.contacts.values(), key=lambda c: target.distance(c.node_id))[:8]
    )
    assert lookup.statistics().failed == 8  # every invented contact was queried once


def test_provider_lookup_collects_providers_of_the_k_closest() -> None:
    """A provider lookup ends with the providers held by every one of the k closest nodes."""
    network = build_network(1, 8)
    for seed in range(5):
        rng = random.Random(seed)
        key = NodeId(rng.randbytes(32))
        querier = rng.choice(sorted(network.contacts))
        holders = network.true_closest(key, exclude=querier)
        providers: dict[NodeId, list[Contact]] = {
            holder.node_id: [contact(10_000 + index, host="10.200.0.1")]
            for index, holder in enumerate(holders)
        }
        # A far node also knows one provider: finding it first must not end the lookup.
        far = max(network.contacts, key=key.distance)
        providers[far] = [contact(20_000, host="10.201.0.1")]
        with_providers = Network(
            k=network.k, contacts=network.contacts, views=network.views, providers=providers
        )
        seeds = [network.contacts[far], *network.answer(querier, key, rng)]
        lookup = Lookup(
            key,
            seeds,
            config=DhtConfig(k=8, alpha=3, disjoint_paths=1),
            own_id=querier,
            want_providers=True,
        )
        drive(lookup, network_responder(with_providers, key, rng), alpha=3, rng=rng)
        found = {int(p.node_id) for p in lookup.providers()}
        assert {10_000 + index for index in range(len(holders))} <= found
        assert lookup.result() == holders


def test_slow_contact_steps_out_of_the_window() -> None:
    """A query past its deadline frees its slot for the next closest contact, and the
    lookup ends without waiting for it; a late answer after the end is ignored."""
    config = DhtConfig(k=2, alpha=2, disjoint_paths=1)
    lookup = Lookup(TARGET, [contact(1), contact(2), contact(3)], config=config)
    assert ids([q.contact for q in lookup.next_queries(0.0)]) == [1, 2]
    lookup.slow(contact(1), 1.0)
    assert lookup.in_flight == 1 and lookup.waiting == 2
    assert ids([q.contact for q in lookup.next_queries(1.0)]) == [3]
    lookup.answered(contact(2), [], 1.5)
    assert not lookup.is_done
    lookup.answered(contact(3), [], 2.0)
    assert lookup.is_done
    assert ids(lookup.result()) == [2, 3]
    lookup.answered(contact(1), [], 3.0)  # too late: ignored
    assert ids(lookup.result()) == [2, 3]


def test_slow_contact_that_answers_in_time_is_back_in_the_result() -> None:
    """A slow contact whose answer comes before the lookup ends takes its place again."""
    config = DhtConfig(k=2, alpha=2, disjoint_paths=1)
    lookup = Lookup(TARGET, [contact(1), contact(2), contact(3)], config=config)
    lookup.next_queries(0.0)
    lookup.slow(contact(1), 1.0)
    lookup.next_queries(1.0)
    lookup.answered(contact(1), [], 1.2)
    lookup.answered(contact(2), [], 1.5)
    assert lookup.is_done
    assert ids(lookup.result()) == [1, 2]


def test_slow_contact_lets_the_next_candidate_into_the_window() -> None:
    """A contact turning slow lets the next closest candidate into the window, which is
    then asked before the lookup ends."""
    config = DhtConfig(k=3, alpha=3, disjoint_paths=1)
    lookup = Lookup(TARGET, [contact(1), contact(2), contact(3), contact(4)], config=config)
    lookup.next_queries(0.0)  # 1, 2, 3
    lookup.answered(contact(2), [], 0.5)
    lookup.answered(contact(3), [], 0.6)
    assert ids([q.contact for q in lookup.next_queries(0.6)]) == []  # 4: beyond k
    assert not lookup.is_done  # contact 1 is closer and still in flight
    lookup.slow(contact(1), 1.0)
    assert not lookup.is_done  # 4 moved into the window and must be asked
    assert ids([q.contact for q in lookup.next_queries(1.0)]) == [4]
    lookup.answered(contact(4), [], 1.2)
    assert lookup.is_done
    assert ids(lookup.result()) == [2, 3, 4]


@pytest.mark.parametrize("late", ["answers", "fails"])
def test_a_slow_contact_nobody_can_replace_is_waited_for(late: str) -> None:
    """When everything else answered and nothing is left to ask, a slow contact keeps its
    place in the window (stepping out would make room for nobody): its answer, or its
    failure when the driver gives up, ends the lookup. (With four disjoint paths each
    path runs out of contacts early in a small network, and ending there dropped live
    strangers whose first answer, handshake included, outran their timeout.)"""
    config = DhtConfig(k=2, alpha=2, disjoint_paths=1)
    lookup = Lookup(TARGET, [contact(1), contact(2)], config=config)
    lookup.next_queries(0.0)
    lookup.answered(contact(2), [], 0.5)
    lookup.slow(contact(1), 1.0)
    assert not lookup.is_done
    assert lookup.next_queries(1.0) == []
    if late == "answers":
        lookup.answered(contact(1), [], 2.0)
        assert ids(lookup.result()) == [1, 2]
    else:
        lookup.failed(contact(1), 5.0)
        assert ids(lookup.result()) == [2]
    assert lookup.is_done
    assert lookup.statistics().finished_at == (2.0 if late == "answers" else 5.0)


@settings(derandomize=True, max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_bookkeeping_holds_through_slow_late_and_failed_reports(seed: int) -> None:
    """Random interleavings of queries, answers, failures, slow reports and late answers
    (before and after the end) keep the lookup's indexes true to its entries, and its
    result the closest contacts that answered, over one path or several."""
    network = build_network(2, 6)
    lookup, target, _, rng = start_lookup(network, seed, alpha=3, paths=1 + seed % 4)
    respond = network_responder(network, target, rng)
    open_queries: dict[NodeId, Contact] = {}
    slow: set[NodeId] = set()
    answered: set[NodeId] = set()
    now = 0.0
    for _ in range(400):
        now += 0.01
        for query in lookup.next_queries(now):
            open_queries[query.contact.node_id] = query.contact
        if not open_queries:
            break
        node_id = rng.choice(sorted(open_queries))
        event = rng.choice(["answer", "answer", "fail", "slow"])
        if event == "slow" and node_id not in slow:
            slow.add(node_id)
            lookup.slow(open_queries[node_id], now)
        elif event == "fail":
            lookup.failed(open_queries.pop(node_id), now)
        else:
            peer = open_queries.pop(node_id)
            outcome = respond(peer)
            if outcome is None:
                lookup.failed(peer, now)
            else:
                if not lookup.is_done:
                    answered.add(node_id)
                lookup.answered(peer, outcome[0], now, providers=outcome[1])
        check_bookkeeping(lookup)
    result = [contact.node_id for contact in lookup.result()]
    assert set(result) <= answered
    assert result == sorted(result, key=target.distance)


# ------------------------------------------------------------------ disjoint paths


def test_paths_are_dealt_the_seeds_and_never_query_the_same_contact() -> None:
    """Seeds are dealt round-robin closest first; a contact two paths know is queried by one
    only, and answers feed only the path that asked (rule 7)."""
    config = DhtConfig(k=2, alpha=1, disjoint_paths=2)
    lookup = Lookup(TARGET, [contact(11), contact(10)], config=config)
    first = lookup.next_queries(0.0)
    assert [(int(q.contact.node_id), q.path) for q in first] == [(10, 0), (11, 1)]
    lookup.answered(contact(10), [contact(3), contact(5)], 1.0)
    lookup.answered(contact(11), [contact(3), contact(6)], 1.0)  # 3 is known to both
    second = lookup.next_queries(1.0)
    # Path 0 takes 3; path 1's window then skips it: [6, 11], not [3, 6].
    assert [(int(q.contact.node_id), q.path) for q in second] == [(3, 0), (6, 1)]
    lookup.answered(contact(3), [contact(1)], 2.0)
    lookup.answered(contact(6), [contact(1), contact(2)], 2.0)  # 1 is path 0's too
    third = lookup.next_queries(2.0)
    assert [(int(q.contact.node_id), q.path) for q in third] == [(1, 0), (2, 1)]
    lookup.answered(contact(1), [], 3.0)
    assert not lookup.is_done  # path 1's window [2, 6] waits for 2
    lookup.answered(contact(2), [], 3.0)
    assert lookup.is_done
    assert ids(lookup.result()) == [1, 2]
    # (10 and 11 fell behind k closer answers of their own paths and are forgotten.)
    owners = {number: lookup.path_of(NodeId.from_int(number)) for number in (3, 1, 6, 2)}
    assert owners == {3: 0, 1: 0, 6: 1, 2: 1}
    assert lookup.statistics().queries_sent == 6  # every contact queried once
    assert lookup.path_of(NodeId.from_int(5)) is None  # known, never queried


def test_a_single_seed_is_split_among_the_paths_at_its_answer() -> None:
    """With fewer seeds than paths, the first answer's new contacts are dealt to the empty
    paths too, closest first, so the lookup runs disjoint from the second hop on."""
    config = DhtConfig(k=3, alpha=1, disjoint_paths=3)
    lookup = Lookup(TARGET, [contact(20)], config=config)
    assert [(int(q.contact.node_id), q.path) for q in lookup.next_queries(0.0)] == [(20, 0)]
    lookup.answered(contact(20), [contact(n) for n in (9, 4, 7)], 1.0)
    queries = lookup.next_queries(1.0)
    assert [(int(q.contact.node_id), q.path) for q in queries] == [(4, 0), (7, 1), (9, 2)]


SYBILS = (5, 6, 7)


def sybil_world(paths: int) -> tuple[Lookup, dict[int, int]]:
    """Target 0; the honest true closest are 1, 2 and 4, reached through honest 30 and 8.
    Colluding Sybils 5, 6 and 7 (and seed 20) answer with Sybils only, plus honest 8 named
    where they know it will not be queried (behind k Sybils), to keep it from other paths.
    Returns the finished lookup and the path that queried each contact."""
    answers = {
        20: [5, 6, 7],
        5: [6, 7, 8],
        6: [5, 7, 8],
        7: [5, 6, 8],
        30: [8],
        8: [1, 2, 4],
        1: [2, 4],
        2: [1, 4],
        4: [1, 2],
    }
    lookup = Lookup(
        TARGET, [contact(20), contact(30)], config=DhtConfig(k=3, alpha=1, disjoint_paths=paths)
    )
    now = 0.0
    queried_by: dict[int, int] = {}
    while not lookup.is_done:
        queries = lookup.next_queries(now)
        assert queries, "stalled"
        now += 1.0
        for query in queries:
            number = int(query.contact.node_id)
            assert number not in queried_by
            queried_by[number] = query.path
            lookup.answered(query.contact, [contact(n) for n in answers[number]], now)
    return lookup, queried_by


def test_colluding_sybils_on_one_path_cannot_eclipse_the_lookup() -> None:
    """Sybils that fill one path's window with each other eclipse a plain lookup, but not one
    with a second, disjoint path; naming the honest contact cannot take it from that path."""
    plain, _ = sybil_world(paths=1)
    assert ids(plain.result()) == list(SYBILS)  # the attack works on one path
    disjoint, queried_by = sybil_world(paths=2)
    assert ids(disjoint.result()) == [1, 2, 4]
    assert queried_by == {20: 0, 5: 0, 6: 0, 7: 0, 30: 1, 8: 1, 1: 1, 2: 1, 4: 1}


def sybil_responder(
    network: Network, sybils: frozenset[NodeId], target: NodeId, querier: NodeId, rng: random.Random
) -> Respond:
    """Honest nodes answer from their views; Sybils with the k Sybils closest to the target
    (leaving out themselves and the querier), as in `simulations/scenarios/eclipse.py`."""
    ranked = sorted(sybils, key=target.distance)

    def respond(peer: Contact) -> tuple[list[Contact], list[Contact]]:
        if peer.node_id in sybils:
            others = [sybil for sybil in ranked if sybil not in (peer.node_id, querier)]
            return [network.contacts[sybil] for sybil in others[: network.k]], []
        return network.answer(peer.node_id, target, rng), []

    return respond


def sybil_recalls(paths: int, fraction: float, lookups: int) -> list[float]:
    """Seeded lookups on a sparse 300-node network where `fraction` of the nodes collude,
    answering with the k Sybils closest to the target; each lookup's share of the honest
    nodes among the true k closest that it found."""
    network = build_network(1, 8, per_bucket=2)
    sybils = frozenset(random.Random(99).sample(sorted(network.contacts), int(fraction * 300)))
    honest = sorted(set(network.contacts) - sybils)
    recalls = []
    for seed in range(lookups):
        rng = random.Random(seed)
        target = NodeId(rng.randbytes(32))
        querier = rng.choice(honest)
        config = DhtConfig(k=network.k, alpha=3, disjoint_paths=paths)
        seeds = network.answer(querier, target, rng)
        lookup = Lookup(target, seeds, config=config, own_id=querier)
        respond = sybil_responder(network, sybils, target, querier, rng)
        drive(lookup, respond, alpha=3, rng=rng, paths=paths)
        wanted = {c.node_id for c in network.true_closest(target, exclude=querier)} - sybils
        found = wanted.intersection(c.node_id for c in lookup.result())
        recalls.append(len(found) / len(wanted))
    return recalls


def test_disjoint_paths_keep_lookups_among_colluding_sybils_from_being_eclipsed() -> None:
    """With 30% colluding Sybils on a sparse network, plain lookups are eclipsed now and then,
    and the default disjoint paths find every honest node among the true k closest."""
    plain = sybil_recalls(paths=1, fraction=0.3, lookups=40)
    assert plain.count(0.0) >= 3
    disjoint = sybil_recalls(paths=DhtConfig().disjoint_paths, fraction=0.3, lookups=40)
    assert disjoint == [1.0] * 40
