"""Fetching one segment's chunks, as a sans-I/O state machine.

`SegmentFetch` gets k valid chunks of one segment from whoever holds them. It never
talks to anyone: `next_actions(now)` says what to start now (fetch this chunk from this
node, or find more holders), and the driver (node/files/retrieval.py, one task per
action in a nursery) reports each outcome with `fetched()`, `failed()`, `located()` or
`locate_failed()`. Time is an input: when nothing is reported before `deadline`, the
driver calls `next_actions(now)` again and the machine hedges.

The rules:

1. **Where chunks are.** Holders are found in up to three steps, each run once:
   - step 0, *guesses*: the nodes placement most likely chose, from the driver's routing
     table (`likely`, the first k + 1 of them by block number), fetched from straight
     away with no question asked. Given only while guesses have proved right at least
     as often as wrong in this download (`Guesses`).
   - step 1, *near* (`Locate(NEAR)`): the nodes near the group key are asked which of
     the segment's chunks they hold, stopping once k + 1 chunks have a holder; without
     guesses the fetch starts here.
   - step 2, *everywhere* (`Locate(EVERYWHERE)`): everyone a lookup of the group key
     finds, and the nodes provider records name, are asked.
   The next step is taken when every holder found so far has been tried and nothing is
   in flight, or when the hedge fires with nobody left to try (rule 3). A step skips
   nodes that did not answer at all (UNREACHABLE); step 1 also skips the nodes we are
   fetching from now (a hung one would hold it up), step 2 asks them (slow is not gone,
   and a node may hold other chunks of the segment than the one it is sending).
2. **What is fetched.** k fetches at a time, one per chunk number, data blocks first
   (0..k-1: no erasure decoding needed), each chunk number from its holders in the
   order they were found; a (chunk, node) pair is tried at most once. A node that did
   not answer at all is not tried again for any chunk of the segment. A node proven
   lying before (`avoid`) is tried only when nobody else is left: every chunk is
   hashed anyway, so avoiding it saves transfers, and trying it last means no record
   of lies, however it came about, can make a readable file unreadable.
3. **Hedging.** When `HEDGE_AFTER` seconds pass with nothing reported, one more fetch
   starts, for a chunk number not in flight; with nobody left to try, the next step of
   rule 1 starts at once rather than when the slow fetches give up. Every report, and
   every hedge, restarts that wait.
4. **What counts.** A chunk counts only if its bytes hash to its id in the segment
   (the driver hashes off the event loop and reports the digest): bytes that hash to
   another chunk of the segment are a *foreign* chunk, any other bytes *wrong bytes*;
   both are failures of that (chunk, node) pair and the next holder is tried.
5. **End.** DONE once k distinct chunk numbers are fetched: `result()` is those k
   chunks, by block number. GAVE_UP once nothing is in flight, no step is running and
   the last step has run: `problems` says why, first problems first. After either,
   `next_actions()` is empty and reports are ignored (the driver cancels what runs).

Each (chunk, node) pair, and how it changes:

| state       | event                                               | next state  |
|-------------|-----------------------------------------------------|-------------|
| (unknown)   | `likely` (step 0), or `located()` names it          | QUEUED      |
| QUEUED      | `next_actions()`: fewer than k - got in flight, or  | IN_FLIGHT   |
|             | the hedge; returns Fetch(number, contact)           |             |
| QUEUED      | its node became UNREACHABLE                         | (dropped)   |
| IN_FLIGHT   | `fetched()`, digest is the chunk's id               | FETCHED     |
| IN_FLIGHT   | `fetched()` with another digest; `failed()`         | FAILED      |
| FETCHED,    | anything (terminal; never tried again)              | same        |
| FAILED      |                                                     |             |

The fetch: RUNNING until DONE or GAVE_UP (rule 5), for good.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from dht.contact import Contact
from protocol.encoding import Candidate
from protocol.identity import NodeId

__all__ = [
    "HEDGE_AFTER",
    "Failure",
    "Fetch",
    "FetchState",
    "FetchStatistics",
    "Guesses",
    "Locate",
    "Scope",
    "SegmentFetch",
]

HEDGE_AFTER: Final = 2.0
"""Seconds with nothing reported after which one more fetch starts (rule 3)."""


class FetchState(enum.Enum):
    RUNNING = "running"
    DONE = "done"
    GAVE_UP = "gave up"


class Scope(enum.Enum):
    """Where a step of rule 1 looks for holders."""

    NEAR = "near the group key"
    EVERYWHERE = "everywhere"


class Failure(enum.Enum):
    """How a fetch from one node failed."""

    UNREACHABLE = "unreachable"
    """No answer at all (no connection, closed, timed out): not asked again."""
    REFUSED = "refused"
    """An answer without the chunk (NOT_FOUND, BUSY, another message)."""


@dataclass(frozen=True, slots=True)
class Fetch:
    """A decision: fetch chunk `number` of the segment from `contact`."""

    number: int
    contact: Contact


@dataclass(frozen=True, slots=True)
class Locate:
    """A decision: find holders of the segment's chunks (rule 1), not asking `skip`."""

    scope: Scope
    skip: frozenset[NodeId]


@dataclass(slots=True)
class Guesses:
    """How often a download found a chunk on the node placement most likely chose.

    Shared by the segments of one download: while these guesses are right at least as
    often as not, a segment's first chunks are fetched from those nodes straight away
    (step 0). Once they are mostly wrong (a large network, where our routing table
    holds few of the nodes placement saw) the segments ask first, for the rest of the
    download."""

    right: int = 0
    wrong: int = 0

    def worth_it(self) -> bool:
        return self.right >= self.wrong


@dataclass(frozen=True, slots=True)
class FetchStatistics:
    """Counters of one segment's fetch (trio's `statistics()` convention)."""

    fetches: int
    """Fetches started, hedges included."""
    hedges: int
    """Fetches started by the hedge (rule 3)."""
    wrong_bytes: int
    """Chunks whose bytes hashed to no chunk of the segment."""
    foreign: int
    """Chunks that were another chunk of the segment than the one asked for."""
    unreachable: int
    """Fetches that got no answer at all."""
    refused: int
    """Fetches answered without the chunk."""


class SegmentFetch:
    """The fetch of k valid chunks of one segment (module docstring)."""

    def __init__(
        self,
        chunk_ids: Sequence[bytes],
        k: int,
        *,
        now: float,
        likely: Sequence[Contact] | None = None,
        guesses: Guesses | None = None,
        hedge_after: float = HEDGE_AFTER,
        avoid: Callable[[NodeId], bool] = lambda node_id: False,
    ) -> None:
        """`likely`: the nodes placement most likely chose for `chunk_ids`, in block
        order (step 0); None to start at step 1. Outcomes of fetches from them are
        counted in `guesses`. Nodes for which `avoid` is true (proven lying before) are
        tried only when nobody else is left (rule 2)."""
        if not 1 <= k <= len(chunk_ids):
            raise ValueError(f"k = {k} is outside 1..{len(chunk_ids)}")
        self.chunk_ids = tuple(chunk_ids)
        self.k = k
        self.state = FetchState.RUNNING
        self.problems: list[str] = []
        self._fetches = self._hedges = self._wrong_bytes = self._foreign = 0
        self._unreachable_count = self._refused = 0
        self._numbers = {identifier: number for number, identifier in enumerate(chunk_ids)}
        self._options: dict[int, list[Contact]] = {}
        self._got: dict[int, bytes] = {}
        self._active: dict[int, NodeId] = {}
        self._tried: set[tuple[int, NodeId]] = set()
        self._unreachable: set[NodeId] = set()
        self._guesses = guesses
        self._guessed: set[tuple[int, NodeId]] = set()
        self._locating = False
        self._hedge_after = hedge_after
        self._avoid = avoid
        self.deadline = now + hedge_after
        self.step = 0
        """The last step of rule 1 started (0: only guesses so far, if any)."""
        for number, contact in enumerate((likely or ())[: k + 1]):
            self._options[number] = [contact]
            self._guessed.add((number, contact.node_id))

    # -- decisions --------------------------------------------------------------------

    @property
    def fetched_count(self) -> int:
        """Distinct chunk numbers fetched so far."""
        return len(self._got)

    def statistics(self) -> FetchStatistics:
        return FetchStatistics(
            fetches=self._fetches,
            hedges=self._hedges,
            wrong_bytes=self._wrong_bytes,
            foreign=self._foreign,
            unreachable=self._unreachable_count,
            refused=self._refused,
        )

    def next_actions(self, now: float) -> list[Fetch | Locate]:
        """What to start now: fetches, and at most one step of finding holders."""
        if self.state is not FetchState.RUNNING:
            return []
        actions: list[Fetch | Locate] = []
        if now >= self.deadline:  # rule 3: nothing reported for hedge_after seconds
            self.deadline = now + self._hedge_after
            option = self._next_option()
            if option is not None:
                self._hedges += 1
                actions.append(self._start(option))
            elif not self._locating and self.step < 2:
                actions.append(self._start_locating())
        while len(self._active) < self.k - len(self._got):
            option = self._next_option()
            if option is None:
                break
            actions.append(self._start(option))
        if not self._active and not self._locating:
            if self.step >= 2:
                self.state = FetchState.GAVE_UP
                return actions
            actions.append(self._start_locating())
        return actions

    def _next_option(self) -> tuple[int, Contact] | None:
        # Nodes proven lying before (`avoid`) only once nobody else is left to try.
        for avoided_too in (False, True):
            for number in sorted(self._options):  # the data blocks, 0..k-1, come first
                if number in self._got or number in self._active:
                    continue
                left = self._options[number]
                left[:] = [c for c in left if c.node_id not in self._unreachable]
                for position, contact in enumerate(left):
                    if avoided_too or not self._avoid(contact.node_id):
                        del left[position]
                        self._tried.add((number, contact.node_id))
                        return number, contact
        return None

    def _start(self, option: tuple[int, Contact]) -> Fetch:
        number, contact = option
        self._active[number] = contact.node_id
        self._fetches += 1
        return Fetch(number, contact)

    def _start_locating(self) -> Locate:
        self.step += 1
        self._locating = True
        if self.step == 1:
            return Locate(Scope.NEAR, frozenset(self._unreachable | set(self._active.values())))
        return Locate(Scope.EVERYWHERE, frozenset(self._unreachable))

    # -- reports ----------------------------------------------------------------------

    def _report(self, now: float) -> bool:
        """Whether a report counts (the fetch is still running); restarts the hedge."""
        if self.state is not FetchState.RUNNING:
            return False
        self.deadline = now + self._hedge_after
        return True

    def _finish_fetch(self, number: int, contact: Contact) -> bool:
        if self._active.get(number) != contact.node_id:
            return False  # not a fetch we started (or already reported)
        del self._active[number]
        return True

    def _guess(self, number: int, contact: Contact, right: bool) -> None:
        if self._guesses is not None and (number, contact.node_id) in self._guessed:
            if right:
                self._guesses.right += 1
            else:
                self._guesses.wrong += 1

    def fetched(
        self, number: int, contact: Contact, data: bytes, digest: bytes, now: float
    ) -> None:
        """`contact` sent `data` for chunk `number`; `digest` is its BLAKE3-256 (rule 4)."""
        if not self._report(now) or not self._finish_fetch(number, contact):
            return
        wanted = self.chunk_ids[number]
        if digest != wanted:
            other = self._numbers.get(digest)
            if other is not None:
                self._foreign += 1
                reason = f"sent chunk {other} of the segment instead"
            else:
                self._wrong_bytes += 1
                reason = "sent bytes that are not the chunk"
            self.problems.append(f"chunk {number} from {contact.node_id.short()}: {reason}")
            self._guess(number, contact, right=False)
            return
        self._got.setdefault(number, data)
        self._guess(number, contact, right=True)
        if len(self._got) >= self.k:
            self.state = FetchState.DONE

    def failed(
        self, number: int, contact: Contact, failure: Failure, reason: str, now: float
    ) -> None:
        """Fetching chunk `number` from `contact` failed (`reason` for the user)."""
        if not self._report(now) or not self._finish_fetch(number, contact):
            return
        self.problems.append(f"chunk {number} from {contact.node_id.short()}: {reason}")
        if failure is Failure.UNREACHABLE:
            self._unreachable_count += 1
            self._unreachable.add(contact.node_id)
        else:
            self._refused += 1
        self._guess(number, contact, right=False)

    def located(self, holders: Sequence[Sequence[Contact]], now: float) -> None:
        """The step of rule 1 that ran found `holders[number]` for each chunk number."""
        if not self._report(now):
            return
        self._locating = False
        for number, found in enumerate(holders):
            known = self._options.setdefault(number, [])
            queued = {contact.node_id for contact in known}
            for contact in found:
                if (number, contact.node_id) not in self._tried and contact.node_id not in queued:
                    known.append(contact)
                    queued.add(contact.node_id)

    def locate_failed(self, reason: str, now: float) -> None:
        """The step of rule 1 that ran could not look (no lookup possible): `reason`."""
        if not self._report(now):
            return
        self._locating = False
        self.problems.append(f"finding holders: {reason}")

    # -- outcome ----------------------------------------------------------------------

    def result(self) -> list[Candidate]:
        """The k chunks fetched, by block number, as (id, bytes); once DONE."""
        if self.state is not FetchState.DONE:
            raise ValueError(f"the fetch is {self.state.value}, not done")
        return [
            (self.chunk_ids[number], self._got[number]) for number in sorted(self._got)[: self.k]
        ]
