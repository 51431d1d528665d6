"""Kademlia's iterative lookup (Kademlia §2.3) as a sans-I/O state machine.

`Lookup` finds the k contacts closest to a target id, and for GET_PROVIDERS also the
providers those contacts know. It never sends anything: `next_queries(now)` says which
contacts to query now, and the driver (the DHT service, one task per query in a
nursery) reports each outcome with `answered()` or `failed()`. Time is an input; the
driver enforces each `Query.deadline` itself (`trio.move_on_at`) and calls `failed()`
when it passes, so this module has no timer to fire.

The rules:

1. **Candidates.** Contacts come from the seeds (hop 0) and from answers (hop of the
   contact that told us + 1; the first teller counts). Dropped on arrival: our own id,
   the answerer listing itself, any id already known in this lookup (the first address
   seen for an id is kept) and contacts with no dialable address. At most
   `CANDIDATE_FACTOR * k` not-yet-queried candidates are kept; the farthest go first.
2. **Queries.** The *window* is the k closest contacts not failed. `next_queries()`
   queries the closest unqueried contacts of the window, so that at most alpha are in
   flight. Each contact is queried at most once. There are no lock-step rounds: a slot
   freed by an answer or a failure is refilled by the next `next_queries()`, so one slow
   peer never holds the lookup up beyond its own timeout (DESIGN.md#dht). Each query's
   deadline is now + the peer's adaptive timeout (dht/rtt.py), or
   `initial_query_timeout` without an estimator. Past it the driver reports `slow()`:
   the contact steps out of the window, so its slot goes to the next closest contact,
   but the query stays open and an answer that comes before the lookup ends still
   counts (the contact is back in the window). The lookup does not wait for slow
   contacts: after a mass failure, the dead ones cost one adaptive timeout each, not the
   driver's give-up time. (The estimator doubles the timeout of a peer it has not
   measured yet, since that first request also pays for the handshake.)
3. **Answers.** An answer with more than k contacts, or more than
   `max_providers_per_key` providers, breaks the protocol (an honest node sends at most
   k, Kademlia §2.3): it is ignored entirely and counts as a failure of that contact,
   so a node that misbehaves is never in the result. Answers are not filtered by
   distance: an honest node sends the k closest it knows, which may be farther from the
   target than itself. Far entries cost nothing: they rank beyond the window and are
   never queried, and the candidate cap forgets them.
4. **Termination.** The lookup is done when every contact of the window has answered.
   That is Kademlia's "the initiator has received responses from the k closest nodes it
   has seen", except that the paper's last phase queries all remaining k at once while
   we keep at most alpha in flight throughout. Queries still in flight then are to
   contacts outside the window; they are abandoned (the driver cancels them) and
   `answered()`/`failed()` after done are ignored. With no seeds, or once every
   contact has failed, the lookup is done with whatever answered.
5. **Result.** `result()` is the k closest contacts that *answered*, closest first.
6. **Providers** (want_providers=True, GET_PROVIDERS). The termination rule is the
   same, so the lookup goes on past the first answer that names providers until the k
   closest have answered, and `providers()` holds the providers known to all of them.
   They are deduplicated by node id and bounded by `max_providers_per_key`; when full,
   providers reported by nodes closer to the target win, since those are the nodes
   ADD_PROVIDER stores records on.

Liars. A node may answer with invented contacts close to the target. Such a contact
enters the window and is queried; it cannot answer (nobody holds its key, and the
dialer rejects any peer whose Noise identity is not the id it asked for), so it fails
and its slot is refilled at once: each fake costs one timeout in one of the alpha
slots, and at most k fakes enter per lying answer. Because the result holds only
contacts that answered, a fake id can never be in it. Known limit: one address is kept
per id (the first seen), so a liar that names real close ids with wrong addresses before
any honest node does can make us miss them; S/Kademlia's disjoint paths are the remedy.

Contact states in one lookup, and how they change:

| state       | event                                                | next state  |
|-------------|------------------------------------------------------|-------------|
| (unknown)   | seed, or entry of an accepted answer (rule 1)        | CANDIDATE   |
| CANDIDATE   | `next_queries()`: in the window, fewer than alpha    | IN_FLIGHT   |
|             | in flight; returns Query(contact, sent_at, deadline) |             |
| CANDIDATE   | beyond the `CANDIDATE_FACTOR * k` closest candidates | (unknown)   |
| IN_FLIGHT   | `slow()`: past its deadline; slot freed at once      | SLOW        |
| IN_FLIGHT,  | `answered()` within the limits (rule 3)              | ANSWERED    |
| SLOW        |                                                      |             |
| IN_FLIGHT   | `answered()` with too many entries                   | FAILED      |
| IN_FLIGHT,  | `failed()`: error, or the driver gave up; slot freed | FAILED      |
| SLOW        |                                                      |             |
| ANSWERED    | anything (terminal; never queried again)             | ANSWERED    |
| FAILED      | anything (terminal; never queried again)             | FAILED      |

The lookup itself: RUNNING until the window has all answered (rule 4), then DONE for
good: `next_queries()` returns [] and later reports are ignored.

Statistics: queries sent, answered, failed (rejected answers included), rejected, and
hops. Queries are not in rounds, so a hop is one link of the chain of discovery: a seed
is hop 0, a contact learnt from a hop-h answer is hop h + 1, and `hops` is the largest
hop among the result contacts (the number of sequential round trips needed, minus one).
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from dht.config import DhtConfig
from dht.contact import Contact
from dht.rtt import RttEstimator
from protocol.identity import NodeId

__all__ = ["CANDIDATE_FACTOR", "ContactState", "Lookup", "LookupStatistics", "Query"]

CANDIDATE_FACTOR = 3
"""Not-yet-queried candidates kept, in multiples of k (rule 1)."""

MAX_PORT = 65535


class ContactState(enum.Enum):
    """Where one contact stands in one lookup (see the module's table)."""

    CANDIDATE = "candidate"
    IN_FLIGHT = "in flight"
    SLOW = "slow"
    ANSWERED = "answered"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Query:
    """A decision: query `contact` now, and give up on it at `deadline`.

    The driver measures the round trip as (time of the answer - `sent_at`) for
    `RttEstimator.observe()`."""

    contact: Contact
    sent_at: float
    deadline: float


@dataclass(frozen=True, slots=True)
class LookupStatistics:
    """Counters of one lookup (trio's `statistics()` convention)."""

    queries_sent: int
    answered: int
    failed: int
    """Queries that timed out or errored, and answers rejected (rule 3)."""
    rejected: int
    """Answers ignored for carrying too many entries; also counted in `failed`."""
    hops: int
    """Largest discovery hop among the result contacts (module docstring)."""
    in_flight: int
    started_at: float | None
    """`now` of the first `next_queries()`; None if it was never called."""
    finished_at: float | None
    """`now` of the report that finished the lookup; None if not finished by a report."""


@dataclass(slots=True, eq=False)  # compared by identity: list.remove finds the very entry
class _Entry:
    contact: Contact
    distance: int
    hop: int
    state: ContactState


def _distance(entry: _Entry) -> int:
    return entry.distance


# The states of the entries that make up the window: all but SLOW (failed and retired
# entries are gone from the lookup's entries).
_IN_WINDOW = (ContactState.CANDIDATE, ContactState.IN_FLIGHT, ContactState.ANSWERED)


@dataclass(slots=True)
class _Provider:
    contact: Contact
    reporter_distance: int
    arrival: int

    @property
    def rank(self) -> tuple[int, int]:
        return (self.reporter_distance, self.arrival)


def _is_dialable(contact: Contact) -> bool:
    host, port = contact.address
    return isinstance(host, str) and bool(host) and isinstance(port, int) and 0 < port <= MAX_PORT


class Lookup:
    """One iterative FIND_NODE or GET_PROVIDERS lookup of `target` (module docstring)."""

    __slots__ = (
        "_answered_count",
        "_answered_kept",
        "_candidate_limit",
        "_candidates",
        "_config",
        "_entries",
        "_failed_count",
        "_failed_ids",
        "_finished",
        "_finished_at",
        "_in_flight",
        "_order",
        "_own_id",
        "_provider_arrivals",
        "_providers",
        "_queries_sent",
        "_rejected_count",
        "_retired_ids",
        "_rtt",
        "_slow_count",
        "_started_at",
        "_target_number",
        "_want_providers",
        "target",
    )

    def __init__(
        self,
        target: NodeId,
        seeds: Iterable[Contact],
        *,
        config: DhtConfig,
        own_id: NodeId | None = None,
        want_providers: bool = False,
        rtt: RttEstimator | None = None,
    ) -> None:
        self.target = target
        self._target_number = int(target)
        self._config = config
        # Ids are kept as their bytes: hashing and comparing those is done in C, where a
        # NodeId's take a Python call each, and a lookup makes thousands.
        self._own_id = None if own_id is None else own_id.value
        self._want_providers = want_providers
        self._rtt = rtt
        self._candidate_limit = CANDIDATE_FACTOR * config.k
        # Every contact not failed and not retired, by id, and the same entries closest
        # to the target first (XOR distances to one target are all distinct).
        self._entries: dict[bytes, _Entry] = {}
        self._order: list[_Entry] = []
        self._failed_ids: set[bytes] = set()
        # Answered contacts that fell behind k closer answered ones: never in the result
        # again (answers are final), so only their ids are kept, to not query them twice.
        self._retired_ids: set[bytes] = set()
        # How many entries are CANDIDATE, and ANSWERED, so that the caps are only
        # applied (a pass over the entries) when they are exceeded.
        self._candidates = 0
        self._answered_kept = 0
        self._in_flight = 0
        self._slow_count = 0
        self._providers: dict[NodeId, _Provider] = {}
        self._provider_arrivals = 0
        self._queries_sent = 0
        self._answered_count = 0
        self._failed_count = 0
        self._rejected_count = 0
        self._started_at: float | None = None
        self._finished_at: float | None = None
        self._finished = False
        self._learn(seeds, hop=0, reporter=None)
        self._check_finished(now=None)

    # ------------------------------------------------------------------ decisions

    @property
    def want_providers(self) -> bool:
        """Whether this lookup collects providers (GET_PROVIDERS) or only nodes."""
        return self._want_providers

    def next_queries(self, now: float) -> list[Query]:
        """The contacts to query now: the closest unqueried ones of the window, up to
        alpha in flight in all. Each is IN_FLIGHT from here on."""
        if self._finished:
            return []
        if self._started_at is None:
            self._started_at = now
        free = self._config.alpha - self._in_flight
        queries: list[Query] = []
        if free <= 0:
            return queries
        for entry in self._window():
            if entry.state is not ContactState.CANDIDATE:
                continue
            query = Query(entry.contact, sent_at=now, deadline=now + self._timeout_for(entry))
            entry.state = ContactState.IN_FLIGHT
            self._candidates -= 1
            self._in_flight += 1
            self._queries_sent += 1
            queries.append(query)
            if len(queries) == free:
                break
        return queries

    # --------------------------------------------------------------------- events

    def answered(
        self,
        contact: Contact,
        contacts: Sequence[Contact],
        now: float,
        *,
        providers: Sequence[Contact] = (),
    ) -> None:
        """`contact` answered its query with `contacts` (and, for GET_PROVIDERS,
        `providers`). Raises ValueError if it has no query in flight."""
        if providers and not self._want_providers:
            raise ValueError("providers given to a lookup made with want_providers=False")
        entry = self._in_flight_entry(contact)
        if entry is None:
            return
        config = self._config
        if len(contacts) > config.k or len(providers) > config.max_providers_per_key:
            self._rejected_count += 1
            self._fail(entry)
            self._check_finished(now)
            return
        self._release(entry)
        entry.state = ContactState.ANSWERED
        self._answered_count += 1
        self._answered_kept += 1
        self._learn(contacts, hop=entry.hop + 1, reporter=entry.contact.node_id)
        if self._want_providers:
            self._collect_providers(providers, reporter_distance=entry.distance)
        self._retire_answered()
        self._check_finished(now)

    def slow(self, contact: Contact, now: float) -> None:
        """`contact`'s query passed its (adaptive) deadline: its slot is free at once,
        so another contact is queried, but a late answer is still taken until the driver
        gives up on it with `failed()`. Raises ValueError if it has no query in flight."""
        entry = self._in_flight_entry(contact)
        if entry is None or entry.state is ContactState.SLOW:
            return
        entry.state = ContactState.SLOW
        self._in_flight -= 1
        self._slow_count += 1
        self._check_finished(now)

    def failed(self, contact: Contact, now: float) -> None:
        """`contact`'s query timed out or failed; its slot is free at once. Raises
        ValueError if it has no query in flight."""
        entry = self._in_flight_entry(contact)
        if entry is None:
            return
        self._fail(entry)
        self._check_finished(now)

    # -------------------------------------------------------------------- results

    @property
    def is_done(self) -> bool:
        """True once the k closest contacts not failed have all answered (rule 4)."""
        return self._finished

    @property
    def in_flight(self) -> int:
        """Queries holding one of the alpha slots."""
        return self._in_flight

    @property
    def waiting(self) -> int:
        """Queries not yet reported: in flight, and slow ones still awaited."""
        return self._in_flight + self._slow_count

    def result(self) -> list[Contact]:
        """The k closest contacts that answered, closest first."""
        return [entry.contact for entry in self._result_entries()]

    def providers(self) -> list[Contact]:
        """Providers collected so far (GET_PROVIDERS), those reported by nodes closest to
        the target first; empty for a FIND_NODE lookup."""
        ranked = sorted(self._providers.values(), key=lambda provider: provider.rank)
        return [provider.contact for provider in ranked]

    def contact(self, node_id: NodeId) -> Contact:
        """The contact this lookup knows by `node_id` (KeyError if none)."""
        return self._entries[node_id.value].contact

    def state(self, node_id: NodeId) -> ContactState | None:
        """Where `node_id` stands in this lookup; None if unknown (or forgotten)."""
        key = node_id.value
        entry = self._entries.get(key)
        if entry is not None:
            return entry.state
        if key in self._failed_ids:
            return ContactState.FAILED
        if key in self._retired_ids:
            return ContactState.ANSWERED
        return None

    def statistics(self) -> LookupStatistics:
        """A snapshot of this lookup's counters."""
        return LookupStatistics(
            queries_sent=self._queries_sent,
            answered=self._answered_count,
            failed=self._failed_count,
            rejected=self._rejected_count,
            hops=max((entry.hop for entry in self._result_entries()), default=0),
            in_flight=self._in_flight,
            started_at=self._started_at,
            finished_at=self._finished_at,
        )

    # ------------------------------------------------------------------ internals

    def _timeout_for(self, entry: _Entry) -> float:
        if self._rtt is None:
            return self._config.initial_query_timeout
        return self._rtt.timeout_for(entry.contact.node_id)

    def _window(self) -> list[_Entry]:
        """The k closest contacts neither failed nor slow, closest first. A slow contact
        steps out of the window, so that its slot goes to the next closest contact
        rather than waiting on it; if it answers before the lookup ends it is back."""
        return self._closest(_IN_WINDOW)

    def _result_entries(self) -> list[_Entry]:
        return self._closest((ContactState.ANSWERED,))

    def _closest(self, states: tuple[ContactState, ...]) -> list[_Entry]:
        """The k closest entries in one of `states`, closest first."""
        found: list[_Entry] = []
        k = self._config.k
        for entry in self._order:
            if entry.state in states:
                found.append(entry)
                if len(found) == k:
                    break
        return found

    def _remove(self, entries: Iterable[_Entry]) -> None:
        gone = {id(entry) for entry in entries}
        for entry in self._order:
            if id(entry) in gone:
                del self._entries[entry.contact.node_id.value]
        self._order = [entry for entry in self._order if id(entry) not in gone]

    def _in_flight_entry(self, contact: Contact) -> _Entry | None:
        if self._finished:
            return None  # an abandoned query that raced its cancellation (rule 4)
        entry = self._entries.get(contact.node_id.value)
        if entry is None or entry.state not in (ContactState.IN_FLIGHT, ContactState.SLOW):
            raise ValueError(f"{contact!r} has no query in flight in this lookup")
        return entry

    def _release(self, entry: _Entry) -> None:
        if entry.state is ContactState.SLOW:
            self._slow_count -= 1
        else:
            self._in_flight -= 1

    def _fail(self, entry: _Entry) -> None:
        key = entry.contact.node_id.value
        self._release(entry)
        del self._entries[key]
        self._order.remove(entry)
        self._failed_ids.add(key)
        self._failed_count += 1

    def _learn(self, contacts: Iterable[Contact], *, hop: int, reporter: NodeId | None) -> None:
        """Rule 1: add new candidates, then forget the farthest beyond the cap."""
        skip = (self._own_id, None if reporter is None else reporter.value)
        entries, failed, retired = self._entries, self._failed_ids, self._retired_ids
        target = self._target_number
        for contact in contacts:
            key = contact.node_id.value
            if (
                key in skip
                or key in entries
                or key in failed
                or key in retired
                or not _is_dialable(contact)
            ):
                continue
            distance = int.from_bytes(key, "big") ^ target
            entry = _Entry(contact, distance, hop, ContactState.CANDIDATE)
            entries[key] = entry
            bisect.insort(self._order, entry, key=_distance)
            self._candidates += 1
        if self._candidates > self._candidate_limit:
            candidates = [e for e in self._order if e.state is ContactState.CANDIDATE]
            self._remove(candidates[self._candidate_limit :])
            self._candidates = self._candidate_limit

    def _retire_answered(self) -> None:
        """Answered contacts behind k closer answered ones can never return to the
        result or the window; keep only their ids."""
        if self._answered_kept <= self._config.k:
            return
        answered = [e for e in self._order if e.state is ContactState.ANSWERED]
        behind = answered[self._config.k :]
        self._answered_kept = self._config.k
        self._remove(behind)
        self._retired_ids.update(entry.contact.node_id.value for entry in behind)

    def _collect_providers(self, providers: Sequence[Contact], *, reporter_distance: int) -> None:
        """Rule 6: dedupe by id, keep the report of the closest reporter, bound the set."""
        limit = self._config.max_providers_per_key
        for contact in providers:
            if not _is_dialable(contact):
                continue
            known = self._providers.get(contact.node_id)
            if known is not None and known.reporter_distance <= reporter_distance:
                continue
            self._provider_arrivals += 1
            self._providers[contact.node_id] = _Provider(
                contact, reporter_distance, self._provider_arrivals
            )
            if len(self._providers) > limit:
                worst = max(self._providers.values(), key=lambda provider: provider.rank)
                del self._providers[worst.contact.node_id]

    def _check_finished(self, now: float | None) -> None:
        if self._finished:
            return
        if all(entry.state is ContactState.ANSWERED for entry in self._window()):
            self._finished = True
            self._finished_at = now
