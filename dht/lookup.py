"""Kademlia's iterative lookup (Kademlia §2.3) as a sans-I/O state machine.

`Lookup` finds the k contacts closest to a target id, and for GET_PROVIDERS also the
providers those contacts know. It never sends anything: `next_queries(now)` says which
contacts to query now, and the driver (the DHT service, one task per query in a
nursery) reports each outcome with `answered()` or `failed()`. Time is an input; the
driver enforces each `Query.deadline` itself (`trio.move_on_at`) and calls `failed()`
when it passes, so this module has no timer to fire.

The rules (1-6 are those of one path; rule 7 says how `DhtConfig.disjoint_paths` paths
share a lookup; with one path it is plain Kademlia):

1. **Candidates.** Contacts come from the seeds (hop 0) and from answers (hop of the
   contact that told us + 1; the first teller counts). Dropped on arrival: our own id,
   the answerer listing itself, any id already known in this lookup (the first address
   seen for an id is kept) and contacts with no dialable address. At most
   `CANDIDATE_FACTOR * k` not-yet-queried candidates are kept per path; the farthest
   go first (a candidate is forgotten once it is beyond the cap of every path that
   knows it).
2. **Queries.** The *window* is the k closest contacts not failed. `next_queries()`
   queries the closest unqueried contacts of the window, so that at most alpha are in
   flight (per path). Each contact is queried at most once. There are no lock-step rounds: a slot
   freed by an answer or a failure is refilled by the next `next_queries()`, so one slow
   peer never holds the lookup up beyond its own timeout (DESIGN.md#dht). Each query's
   deadline is now + the peer's adaptive timeout (dht/rtt.py), or
   `initial_query_timeout` without an estimator. Past it the driver reports `slow()`:
   the contact steps out of the window, so its slot goes to the next closest contact,
   but the query stays open and an answer that comes before the lookup ends still
   counts (the contact is back in the window). The lookup does not wait for slow
   contacts it can replace: after a mass failure, the dead ones cost one adaptive
   timeout each, not the driver's give-up time. (The estimator doubles the timeout of a
   peer it has not measured yet, since that first request also pays for the
   handshake.) A slow contact that nobody would replace (the window holds fewer than k
   contacts without it) stays in the window, and is waited for until it answers or the
   driver gives up: stepping out would only drop it from the result. That happens when
   a path knows fewer than k live contacts, in small networks; there, the first answer
   of a stranger far away can outrun a timeout estimated from nearer peers.
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
5. **Result.** `result()` is the k closest contacts that *answered*, closest first
   (on any path).
6. **Providers** (want_providers=True, GET_PROVIDERS). The termination rule is the
   same, so the lookup goes on past the first answer that names providers until the k
   closest have answered, and `providers()` holds the providers known to all of them.
   They are deduplicated by node id and bounded by `max_providers_per_key`; when full,
   providers reported by nodes closer to the target win, since those are the nodes
   ADD_PROVIDER stores records on.
7. **Disjoint paths** (S/Kademlia, Baumgart and Mies 2007, "lookup over disjoint
   paths"). The lookup runs d = `disjoint_paths` paths, each with its own window
   (rule 2 over the contacts it knows), its own alpha queries in flight and its own
   end (rule 4); the lookup is done when every path is. *Knowing:* the seeds, closest
   first, are dealt round-robin, seed i to path i mod d; an answer's contacts are
   known to the path of the contact that answered (a contact named on several paths
   is known to each). While some path has no contact yet (fewer seeds than paths), an
   answer's new contacts are dealt, closest first, round-robin among the answerer's
   path and the empty ones, so a lookup from one seed runs disjoint from the second
   hop. *Querying:* a contact is queried by one path only, the first whose window
   reaches it; from then on it is in no other path's window, and its answer feeds
   only its own path. So the paths never share a queried node, and Sybils that answer
   only with each other capture the paths that reach them, not the others. Naming an
   honest contact does not take it from another path: until queried it stays in the
   window of every path that knows it. Cost: each path must hear from its own k
   closest, so a lookup sends about d times the queries of one path; its latency
   stays about that of one path.

Liars. A node may answer with invented contacts close to the target. Such a contact
enters the window and is queried; it cannot answer (nobody holds its key, and the
dialer rejects any peer whose Noise identity is not the id it asked for), so it fails
and its slot is refilled at once: each fake costs one timeout in one of the alpha
slots, and at most k fakes enter per lying answer. Because the result holds only
contacts that answered, a fake id can never be in it. Known limit: one address is kept
per id (the first seen), so a liar that names real close ids with wrong addresses before
any honest node does can make us miss them (the disjoint paths do not help there: the
id, with its wrong address, is one entry for all of them).

Contact states in one lookup, and how they change:

| state       | event                                                | next state  |
|-------------|------------------------------------------------------|-------------|
| (unknown)   | seed, or entry of an accepted answer (rule 1)        | CANDIDATE   |
| CANDIDATE   | `next_queries()`: in a path's window, fewer than     | IN_FLIGHT   |
|             | alpha in flight on that path; returns Query(contact, | (that path) |
|             | sent_at, deadline, path)                             |             |
| CANDIDATE   | beyond the `CANDIDATE_FACTOR * k` closest candidates | (unknown)   |
|             | of every path that knows it                          |             |
| IN_FLIGHT   | `slow()`: past its deadline; slot freed at once      | SLOW        |
| IN_FLIGHT,  | `answered()` within the limits (rule 3)              | ANSWERED    |
| SLOW        |                                                      |             |
| IN_FLIGHT   | `answered()` with too many entries                   | FAILED      |
| IN_FLIGHT,  | `failed()`: error, or the driver gave up; slot freed | FAILED      |
| SLOW        |                                                      |             |
| ANSWERED    | anything (terminal; never queried again)             | ANSWERED    |
| FAILED      | anything (terminal; never queried again)             | FAILED      |

Answered contacts behind k closer answered ones of their own path are forgotten but for
their ids (never queried again). The lookup itself: RUNNING until every path's window
has all answered (rules 4 and 7), then DONE for good: `next_queries()` returns [] and
later reports are ignored.

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
    path: int = 0
    """The disjoint path (rule 7) the query belongs to: 0 .. disjoint_paths - 1."""


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
    paths: int
    """The paths that know this contact, one bit each (rule 7)."""
    path: int = -1
    """The one path that queried it; -1 while it is a candidate."""


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
        "_path_count",
        "_path_in_flight",
        "_path_started",
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
        self._path_count = config.disjoint_paths
        # Every contact not failed and not retired, by id, and the same entries closest
        # to the target first (XOR distances to one target are all distinct).
        self._entries: dict[bytes, _Entry] = {}
        self._order: list[_Entry] = []
        self._failed_ids: set[bytes] = set()
        # Answered contacts that fell behind k closer answered ones: never in the result
        # again (answers are final), so only their ids are kept, to not query them twice.
        self._retired_ids: set[bytes] = set()
        # How many entries are CANDIDATE, and ANSWERED per path, so that the caps are
        # only applied (a pass over the entries) when they are exceeded.
        self._candidates = 0
        self._answered_kept = [0] * self._path_count
        self._in_flight = 0
        self._path_in_flight = [0] * self._path_count
        # Whether each path has been dealt a contact yet (rule 7).
        self._path_started = [False] * self._path_count
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
        self._learn(seeds, hop=0, reporter=None, path=None)
        self._check_finished(now=None)

    # ------------------------------------------------------------------ decisions

    @property
    def want_providers(self) -> bool:
        """Whether this lookup collects providers (GET_PROVIDERS) or only nodes."""
        return self._want_providers

    def next_queries(self, now: float) -> list[Query]:
        """The contacts to query now: on each path, the closest unqueried ones of its
        window, up to alpha in flight on the path. Each is IN_FLIGHT from here on, and
        belongs to the path that queried it (rule 7)."""
        if self._finished:
            return []
        if self._started_at is None:
            self._started_at = now
        queries: list[Query] = []
        for path in range(self._path_count):
            free = self._config.alpha - self._path_in_flight[path]
            if free <= 0:
                continue
            sent = 0
            for entry in self._window(path):
                if entry.state is not ContactState.CANDIDATE:
                    continue
                deadline = now + self._timeout_for(entry)
                queries.append(Query(entry.contact, sent_at=now, deadline=deadline, path=path))
                entry.state = ContactState.IN_FLIGHT
                entry.path = path
                self._candidates -= 1
                self._in_flight += 1
                self._path_in_flight[path] += 1
                self._queries_sent += 1
                sent += 1
                if sent == free:
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
        self._answered_kept[entry.path] += 1
        self._learn(contacts, hop=entry.hop + 1, reporter=entry.contact.node_id, path=entry.path)
        if self._want_providers:
            self._collect_providers(providers, reporter_distance=entry.distance)
        self._retire_answered(entry.path)
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
        self._path_in_flight[entry.path] -= 1
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
        """True once, on every path, the k closest contacts not failed have all
        answered (rules 4 and 7)."""
        return self._finished

    @property
    def in_flight(self) -> int:
        """Queries holding one of the alpha slots (of any path)."""
        return self._in_flight

    def path_of(self, node_id: NodeId) -> int | None:
        """The path that queried `node_id` (rule 7); None if no path has (or it is
        forgotten)."""
        entry = self._entries.get(node_id.value)
        if entry is None or entry.path < 0:
            return None
        return entry.path

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

    def _window(self, path: int) -> list[_Entry]:
        """The window of `path`: the k closest contacts not failed that the path knows
        and no other path has queried, closest first, slow ones only where nobody else
        fills their place. A slow contact steps out of the window to make room for the
        next closest contact rather than wait on it; if it answers before the lookup
        ends it is back. With nobody to make room for, it stays, and is waited for."""
        found: list[_Entry] = []
        slow: list[_Entry] = []
        k = self._config.k
        bit = 1 << path
        for entry in self._order:
            if entry.state is ContactState.SLOW:
                if entry.path == path:
                    slow.append(entry)
                continue
            if entry.state not in _IN_WINDOW:
                continue
            if entry.path == path if entry.path >= 0 else entry.paths & bit:
                found.append(entry)
                if len(found) == k:
                    return found
        if slow:
            found = sorted([*found, *slow[: k - len(found)]], key=_distance)
        return found

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
            self._path_in_flight[entry.path] -= 1

    def _fail(self, entry: _Entry) -> None:
        key = entry.contact.node_id.value
        self._release(entry)
        del self._entries[key]
        self._order.remove(entry)
        self._failed_ids.add(key)
        self._failed_count += 1

    def _learn(
        self, contacts: Iterable[Contact], *, hop: int, reporter: NodeId | None, path: int | None
    ) -> None:
        """Rules 1 and 7: add new candidates to `path` (the seeds, `path` None, and
        while some path has none, an answer's new contacts are dealt round-robin, closest
        first), then forget the farthest beyond the cap."""
        skip = (self._own_id, None if reporter is None else reporter.value)
        entries, failed, retired = self._entries, self._failed_ids, self._retired_ids
        target = self._target_number
        fresh: dict[bytes, tuple[int, Contact]] = {}
        for contact in contacts:
            key = contact.node_id.value
            if key in skip or key in failed or key in retired or key in fresh:
                continue
            known = entries.get(key)
            if known is not None:
                if path is not None and known.state is ContactState.CANDIDATE:
                    known.paths |= 1 << path
                continue
            if _is_dialable(contact):
                fresh[key] = (int.from_bytes(key, "big") ^ target, contact)
        started = self._path_started
        if path is None:
            dealt = list(range(self._path_count))
        else:
            dealt = [path, *(other for other in range(self._path_count) if not started[other])]
        new = sorted(fresh.items(), key=lambda item: item[1][0])
        for position, (key, (distance, contact)) in enumerate(new):
            owner = dealt[position % len(dealt)]
            started[owner] = True
            entry = _Entry(contact, distance, hop, ContactState.CANDIDATE, 1 << owner)
            entries[key] = entry
            bisect.insort(self._order, entry, key=_distance)
            self._candidates += 1
        if self._candidates > self._candidate_limit * self._path_count:
            self._cap_candidates()

    def _cap_candidates(self) -> None:
        """Rule 1's cap, per path: a candidate is forgotten once it is beyond the
        `CANDIDATE_FACTOR * k` closest candidates of every path that knows it."""
        limit = self._candidate_limit
        kept = [0] * self._path_count
        beyond: list[_Entry] = []
        for entry in self._order:
            if entry.state is not ContactState.CANDIDATE:
                continue
            wanted = False
            for path in range(self._path_count):
                if entry.paths >> path & 1 and kept[path] < limit:
                    kept[path] += 1
                    wanted = True
            if not wanted:
                beyond.append(entry)
        self._remove(beyond)
        self._candidates -= len(beyond)

    def _retire_answered(self, path: int) -> None:
        """Answered contacts behind k closer answered ones of their own path can never
        return to the result or a window; keep only their ids."""
        k = self._config.k
        if self._answered_kept[path] <= k:
            return
        answered = [e for e in self._order if e.state is ContactState.ANSWERED and e.path == path]
        behind = answered[k:]
        self._answered_kept[path] = k
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
        for path in range(self._path_count):
            if any(entry.state is not ContactState.ANSWERED for entry in self._window(path)):
                return
        self._finished = True
        self._finished_at = now
