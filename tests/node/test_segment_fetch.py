"""The segment fetch's rules (node/files/segment_fetch.py), driven by hand: no network,
no trio, time as a number. Each test plays the driver: it takes the decisions and
reports outcomes."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dht.contact import Contact
from node.files.segment_fetch import (
    HEDGE_AFTER,
    Failure,
    Fetch,
    FetchState,
    Guesses,
    Locate,
    Scope,
    SegmentFetch,
)
from protocol.chunk import chunk_id
from protocol.identity import NodeId

K, N = 3, 10


def node(number: int) -> Contact:
    return Contact(NodeId(bytes([number]) * 32), ("127.0.0.1", 4000 + number))


CHUNKS = [bytes([number]) * 8 for number in range(N)]
IDS = [chunk_id(data) for data in CHUNKS]


def fetches(actions: list[Fetch | Locate]) -> list[tuple[int, int]]:
    """The fetches among `actions`, as (chunk number, node's first byte)."""
    return [
        (action.number, action.contact.node_id.value[0])
        for action in actions
        if isinstance(action, Fetch)
    ]


def locates(actions: list[Fetch | Locate]) -> list[Locate]:
    return [action for action in actions if isinstance(action, Locate)]


def give(fetch: SegmentFetch, action: Fetch, now: float, data: bytes | None = None) -> None:
    """The holder of `action` sends `data` (by default the right chunk)."""
    sent = CHUNKS[action.number] if data is None else data
    fetch.fetched(action.number, action.contact, sent, chunk_id(sent), now)


def test_guesses_fetch_k_data_blocks_at_once_and_finish() -> None:
    """With guesses, the first k chunk numbers are fetched from their likely holders at
    once, and k good chunks end the fetch with those chunks, in block order."""
    likely = [node(number) for number in range(N)]
    guesses = Guesses()
    fetch = SegmentFetch(IDS, K, now=0.0, likely=likely, guesses=guesses)
    actions = fetch.next_actions(0.0)
    assert fetches(actions) == [(0, 0), (1, 1), (2, 2)]
    assert not locates(actions)
    for action in reversed(actions):
        assert isinstance(action, Fetch)
        give(fetch, action, 0.5)
    assert fetch.state is FetchState.DONE
    assert fetch.result() == [(IDS[number], CHUNKS[number]) for number in range(K)]
    assert (guesses.right, guesses.wrong) == (3, 0)
    assert fetch.next_actions(1.0) == []


def test_without_guesses_it_asks_near_the_group_key_first() -> None:
    """No guesses: the first decision is to locate near the group key, skipping no one;
    the holders it finds are fetched from, data blocks first."""
    fetch = SegmentFetch(IDS, K, now=0.0)
    actions = fetch.next_actions(0.0)
    assert actions == [Locate(Scope.NEAR, frozenset())]
    assert fetch.next_actions(0.1) == []  # nothing more while it locates
    holders = [[node(number + 20)] for number in range(N)]
    holders[0] = []  # nobody says it holds chunk 0
    fetch.located(holders, 0.2)
    assert fetches(fetch.next_actions(0.2)) == [(1, 21), (2, 22), (3, 23)]


def test_hedge_fires_after_the_wait_with_nothing_reported() -> None:
    """A slow holder: after HEDGE_AFTER seconds with no report, one more fetch starts,
    for a chunk number not in flight; every report restarts the wait."""
    likely = [node(number) for number in range(N)]
    fetch = SegmentFetch(IDS, K, now=0.0, likely=likely)
    first = fetch.next_actions(0.0)
    assert fetch.deadline == HEDGE_AFTER
    assert fetch.next_actions(HEDGE_AFTER - 0.01) == []
    give(fetch, first[1], 1.0)  # a report: the wait restarts
    assert fetch.deadline == 1.0 + HEDGE_AFTER
    assert fetch.next_actions(HEDGE_AFTER) == []
    hedge = fetch.next_actions(1.0 + HEDGE_AFTER)
    assert fetches(hedge) == [(3, 3)]  # likely[k], the only other guess
    assert fetch.statistics().hedges == 1
    assert fetch.deadline == 1.0 + 2 * HEDGE_AFTER


def test_hedge_with_nobody_left_starts_the_next_step_at_once() -> None:
    """Every guess is in flight and slow: the hedge finds nobody to try, so it starts
    locating near the group key without the slow nodes, rather than wait on them."""
    likely = [node(number) for number in range(K)]
    fetch = SegmentFetch(IDS, K, now=0.0, likely=likely)
    assert len(fetches(fetch.next_actions(0.0))) == K
    actions = fetch.next_actions(HEDGE_AFTER)
    slow = frozenset(contact.node_id for contact in likely)
    assert actions == [Locate(Scope.NEAR, slow)]


def test_slow_holders_are_asked_again_in_the_last_step() -> None:
    """The middle step skips nodes still sending; the last step asks them (slow is not
    gone, and a slow node may hold other chunks of the segment), and a chunk it holds is
    fetched from it once a slot frees."""
    likely = [node(number) for number in range(K)]
    fetch = SegmentFetch(IDS, K, now=0.0, likely=likely)
    first = fetch.next_actions(0.0)
    slow = frozenset(contact.node_id for contact in likely)
    assert fetch.next_actions(HEDGE_AFTER) == [Locate(Scope.NEAR, slow)]
    fetch.located([[] for _ in IDS], HEDGE_AFTER + 0.1)  # nobody else holds anything
    assert fetch.next_actions(HEDGE_AFTER + 0.1) == []  # k in flight: wait
    last = fetch.next_actions(2 * HEDGE_AFTER + 0.1)
    assert last == [Locate(Scope.EVERYWHERE, frozenset())]
    holders = [[] for _ in IDS]
    holders[3] = [node(0)]  # the slow node 0 also holds chunk 3
    fetch.located(holders, 2 * HEDGE_AFTER + 0.2)
    second = first[1]
    assert isinstance(second, Fetch)
    fetch.failed(1, second.contact, Failure.REFUSED, "not found", 2 * HEDGE_AFTER + 0.3)
    assert fetches(fetch.next_actions(2 * HEDGE_AFTER + 0.3)) == [(3, 0)]


def test_wrong_bytes_count_as_a_failure_of_that_holder_only() -> None:
    """A holder that sends bytes that are not the chunk: that (chunk, node) pair fails,
    the next holder of the chunk is tried, and the liar may still serve other chunks."""
    fetch = SegmentFetch(IDS, K, now=0.0)
    fetch.next_actions(0.0)
    liar, honest = node(50), node(51)
    fetch.located([[liar, honest], [liar], [honest], [], [], [], [], [], [], []], 0.1)
    actions = fetch.next_actions(0.1)
    assert fetches(actions) == [(0, 50), (1, 50), (2, 51)]
    by_number = {action.number: action for action in actions if isinstance(action, Fetch)}
    give(fetch, by_number[0], 0.2, data=b"not the chunk")
    assert fetch.statistics().wrong_bytes == 1
    assert "chunk 0 from" in fetch.problems[0] and "not the chunk" in fetch.problems[0]
    assert fetches(fetch.next_actions(0.2)) == [(0, 51)]
    give(fetch, by_number[1], 0.3)  # the liar's chunk 1 is good: it counts
    give(fetch, by_number[2], 0.3)
    assert fetch.state is FetchState.RUNNING and fetch.fetched_count == 2


def test_a_foreign_chunk_is_refused_and_named() -> None:
    """A holder that sends another chunk of the segment than the one asked for: refused
    (it is not the chunk asked for), and the problem says which chunk it sent."""
    likely = [node(number) for number in range(N)]
    fetch = SegmentFetch(IDS, K, now=0.0, likely=likely)
    actions = fetch.next_actions(0.0)
    first = actions[0]
    assert isinstance(first, Fetch)
    give(fetch, first, 0.1, data=CHUNKS[7])
    assert fetch.statistics().foreign == 1 and fetch.fetched_count == 0
    assert "sent chunk 7 of the segment instead" in fetch.problems[0]


def test_unreachable_nodes_are_not_tried_again_for_any_chunk() -> None:
    """A node that did not answer at all is dropped from every chunk's queue, and the
    steps that follow skip it."""
    fetch = SegmentFetch(IDS, K, now=0.0)
    fetch.next_actions(0.0)
    dead, alive = node(60), node(61)
    fetch.located([[dead], [dead, alive], [alive], [alive], [], [], [], [], [], []], 0.1)
    actions = fetch.next_actions(0.1)
    assert fetches(actions) == [(0, 60), (1, 60), (2, 61)]
    zero = actions[0]
    assert isinstance(zero, Fetch)
    fetch.failed(0, dead, Failure.UNREACHABLE, "connection refused", 0.2)
    one = actions[1]
    assert isinstance(one, Fetch)
    fetch.failed(1, dead, Failure.UNREACHABLE, "connection refused", 0.2)
    after = fetch.next_actions(0.2)
    assert fetches(after) == [(1, 61), (3, 61)]
    assert fetch.statistics().unreachable == 2


def test_too_few_holders_gives_up_after_the_last_step_saying_why() -> None:
    """Only two chunks exist anywhere: after the guesses, near and everywhere, the fetch
    gives up with its problems, and ignores reports after that."""
    likely = [node(number) for number in range(K + 1)]
    fetch = SegmentFetch(IDS, K, now=0.0, likely=likely)
    actions = fetch.next_actions(0.0)
    assert fetches(actions) == [(0, 0), (1, 1), (2, 2)]
    for action in actions:
        assert isinstance(action, Fetch)
        if action.number < 2:
            give(fetch, action, 0.1)
        else:
            fetch.failed(2, action.contact, Failure.REFUSED, "no such chunk here", 0.1)
    actions = fetch.next_actions(0.1)
    assert fetches(actions) == [(3, 3)]  # the last guess
    fetch.failed(3, node(3), Failure.REFUSED, "no such chunk here", 0.2)
    assert fetch.next_actions(0.2) == [Locate(Scope.NEAR, frozenset())]
    fetch.located([[] for _ in IDS], 0.3)
    assert fetch.next_actions(0.3) == [Locate(Scope.EVERYWHERE, frozenset())]
    fetch.located([[] for _ in IDS], 0.4)
    assert fetch.next_actions(0.4) == []
    assert fetch.state is FetchState.GAVE_UP
    assert fetch.fetched_count == 2
    assert fetch.problems[0].endswith("no such chunk here")
    with pytest.raises(ValueError, match="gave up"):
        fetch.result()
    fetch.fetched(2, node(2), CHUNKS[2], IDS[2], 1.0)  # late: ignored
    assert fetch.fetched_count == 2


def test_a_failed_lookup_is_a_problem_not_a_crash() -> None:
    """When no lookup is possible the step reports why, and the fetch goes on to give
    up with that reason."""
    fetch = SegmentFetch(IDS, K, now=0.0)
    assert locates(fetch.next_actions(0.0))[0].scope is Scope.NEAR
    fetch.locate_failed("looking up nodes failed: no contacts", 0.1)
    assert locates(fetch.next_actions(0.1))[0].scope is Scope.EVERYWHERE
    fetch.locate_failed("looking up nodes failed: no contacts", 0.2)
    assert fetch.next_actions(0.2) == []
    assert fetch.state is FetchState.GAVE_UP
    assert fetch.problems == ["finding holders: looking up nodes failed: no contacts"] * 2


def test_each_pair_is_tried_once_and_located_duplicates_are_dropped() -> None:
    """A node named again by a later step for a chunk it already failed is not asked
    again for that chunk."""
    fetch = SegmentFetch(IDS, K, now=0.0)
    fetch.next_actions(0.0)
    holder = node(70)
    fetch.located([[holder, holder]] + [[] for _ in IDS[1:]], 0.1)
    actions = fetch.next_actions(0.1)
    assert fetches(actions) == [(0, 70)]
    fetch.failed(0, holder, Failure.REFUSED, "not found", 0.2)
    assert locates(fetch.next_actions(0.2))[0].scope is Scope.EVERYWHERE
    fetch.located([[holder]] + [[] for _ in IDS[1:]], 0.3)
    assert fetch.next_actions(0.3) == []
    assert fetch.state is FetchState.GAVE_UP


@settings(deadline=None, max_examples=200, derandomize=True, database=None)
@given(seed=st.integers(0, 2**32), holders=st.integers(1, 6), liars=st.integers(0, 6))
def test_it_ends_and_never_takes_a_wrong_chunk(seed: int, holders: int, liars: int) -> None:
    """Any mix of honest holders, liars and dead nodes, outcomes in any order: the fetch
    ends (DONE or GAVE_UP, never stuck), DONE only with k right chunks, and it is DONE
    whenever k chunk numbers have an honest holder that answers."""
    rng = random.Random(seed)
    nodes = [node(number) for number in range(holders + liars)]
    lying = {contact.node_id for contact in nodes[holders:]}
    dead = {contact.node_id for contact in nodes[:holders] if rng.random() < 0.3}
    held = {contact.node_id: set(rng.sample(range(N), rng.randint(0, N))) for contact in nodes}
    likely = rng.sample(nodes, len(nodes)) if rng.random() < 0.5 else None
    fetch = SegmentFetch(IDS, K, now=0.0, likely=likely, guesses=Guesses())
    now = 0.0
    pending: list[Fetch | Locate] = []
    for _ in range(1000):
        pending += fetch.next_actions(now)
        if fetch.state is not FetchState.RUNNING:
            break
        if not pending:
            now = fetch.deadline
            continue
        action = pending.pop(rng.randrange(len(pending)))
        now += rng.random()
        if isinstance(action, Locate):
            fetch.located(
                [
                    [contact for contact in nodes if number in held[contact.node_id]]
                    for number in range(N)
                ],
                now,
            )
        elif action.contact.node_id in dead:
            fetch.failed(action.number, action.contact, Failure.UNREACHABLE, "dead", now)
        elif action.contact.node_id in lying:
            give(fetch, action, now, data=b"lies")
        elif action.number in held[action.contact.node_id]:
            give(fetch, action, now)
        else:
            fetch.failed(action.number, action.contact, Failure.REFUSED, "not found", now)
    assert fetch.state is not FetchState.RUNNING
    honest_numbers = {
        number
        for contact in nodes
        if contact.node_id not in lying and contact.node_id not in dead
        for number in held[contact.node_id]
    }
    if fetch.state is FetchState.DONE:
        result = fetch.result()
        assert len({identifier for identifier, _ in result}) == K
        assert all(chunk_id(data) == identifier for identifier, data in result)
    else:
        assert len(honest_numbers) < K


def test_nodes_proven_lying_before_are_tried_only_when_nobody_else_is_left() -> None:
    """An avoided node holding chunk 0 waits until the honest holders of other chunks
    have been tried; once they have failed, it is asked after all (a record of lies
    never makes a readable segment unreadable)."""
    liar = node(90)
    fetch = SegmentFetch(IDS, K, now=0.0, avoid=lambda node_id: node_id == liar.node_id)
    fetch.next_actions(0.0)
    holders: list[list[Contact]] = [[liar], [node(1)], [node(2)], [node(3)]] + [[] for _ in IDS[4:]]
    fetch.located(holders, 0.1)
    first = fetch.next_actions(0.1)
    assert fetches(first) == [(1, 1), (2, 2), (3, 3)]
    for action in first:
        assert isinstance(action, Fetch)
        if action.number == 3:
            fetch.failed(3, action.contact, Failure.REFUSED, "no such chunk here", 0.2)
    assert fetches(fetch.next_actions(0.2)) == [(0, 90)]
