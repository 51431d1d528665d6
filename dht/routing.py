"""The Kademlia routing table: k-buckets of contacts, as a pure state machine.

What it is for: remembering which nodes we know, so that FIND_NODE can answer with the
k contacts closest to a target and lookups can start from them (Maymounkov & Mazières,
"Kademlia: A Peer-to-peer Information System Based on the XOR Metric", 2002).

What it promises:

- Sans-I/O, as h11: no trio, no clock, no randomness, no I/O. Time comes in as `now`,
  randomness as a `random_below(n)` callable. The table never pings anyone; it returns
  a decision (`PingOldest`) and the DHT service carries it out and reports back
  (`ping_answered` / `ping_failed`). bmuller/kademlia's table, which starts its own
  pings and reads `time.monotonic()`, is the model not to follow (STYLE.md).
- k-buckets (§2.2): every contact sits in the one bucket whose id range holds its id;
  a bucket holds at most `config.k` contacts, least-recently seen first. Our own id is
  never inserted.
- Bucket splitting (§2.4): the table starts with one bucket covering the whole 256-bit
  space. A full bucket splits in two only if its range holds our own id, so bucket `i`
  holds the ids that share exactly `i` leading bits with ours and the last bucket the
  ids that share at least as many. The §4.2 relaxation (also splitting while the depth
  is not a multiple of b) exists for lookups that step b bits at a time and for very
  unbalanced trees; our lookups step one bit (alpha parallel queries, b = 1), so the
  classic rule is kept. It gives O(1) bucket lookup from the common-prefix length.
- Least-recently-seen eviction with a replacement cache (§2.2, §4.1): a newcomer for a
  full bucket that cannot split goes to the bucket's replacement cache (at most
  `config.replacement_cache_size`, the most recently seen kept) and the service is asked
  to ping the bucket's least-recently-seen contact. Live old contacts stay: long-lived
  nodes are the likeliest to stay up, and a flood of new ids cannot flush the table.
- `closest()` is exact (sorted by XOR distance to the target, §2.1) and visits buckets
  in order of distance, each one a separate band, so it reads about count/k buckets
  however large the table is.
- Limits per IP prefix (IPv4 /24, IPv6 /48; a host that is not an IP literal is its own
  prefix) per bucket and per table, against one operator filling our table with Sybils.
  A contact over a limit is refused and never inserted, nor cached. "Per bucket" is
  the bucket as it is when the contact arrives (after any split it causes).

Transitions of `seen(contact, now)`, the one call for "this authenticated node talked to
us, and listens at this address":

    ==================================  ===============================  =================
    state                               effect                           decision
    ==================================  ===============================  =================
    contact is our own id               none                             Refused(OWN_ID)
    known, same address                 moved to tail, failures reset    Updated
    known, new address within limits    address replaced, moved to tail  Updated(old_addr)
    known, new address over a limit     none (old address, place kept)   Refused(..LIMIT)
    new, over a prefix limit            none (not cached either)         Refused(..LIMIT)
    new, bucket has room                appended at the tail             Added
    new, bucket full, holds our id      split (§2.4), then as above      (as above)
    new, bucket full, oldest seen       newcomer cached                  Cached
    within ping_oldest_after
    new, bucket full, no ping pending   newcomer cached, ping pending    PingOldest(o, new)
    new, bucket full, ping pending      newcomer cached                  Cached
    ==================================  ===============================  =================

Known contacts: the transport authenticated the NodeId, so the newest address wins (an
old one is likely stale). "New" includes a contact waiting in a replacement cache. A
pending ping is forgotten after `PENDING_PING_EXPIRY` seconds in case the service never
reported back; with a replacement cache of size 0 the newcomer is not kept. A bucket
whose least-recently-seen contact was heard from within `config.ping_oldest_after`
holds only contacts known to be alive, so nobody is pinged (BEP 5's "good" nodes): in
a busy network every inbound request from a newcomer would otherwise cost a ping. A
dead contact still leaves through its failures (`failed` below), the newcomer waiting
in the cache to take its place.

Answers and failures (the eviction and failure policy):

    ===================  ======================================  ====================
    call                 state, effect                           decision
    ===================  ======================================  ====================
    ping_answered(o)     o known: moved to tail, failures reset  Updated
                         (the newcomer stays cached)
                         o no longer known                       None
    ping_failed(o)       o is its bucket's pending ping:         Evicted(o, promoted)
                         evicted, newest fitting replacement
                         promoted
                         o seen since, or gone: stale, ignored   None
    failed(id)           a replacement fits the limits: evicted  Evicted(c, promoted)
    (an RPC failed)      and the replacement promoted
                         no replacement: failures += 1           FailureCounted(c, n)
                         n reaches MAX_CONSECUTIVE_FAILURES      Evicted(c, None)
                         only cached: dropped from the cache     None
    remove(id)           known: evicted, replacement promoted    Evicted(c, promoted)
                         only cached: dropped from the cache     None
    ===================  ======================================  ====================

Without a replacement a failing contact is kept (Kademlia §4.1: valid contacts sometimes
fail to answer when packets are lost, and an empty slot helps nobody) until
`MAX_CONSECUTIVE_FAILURES` RPCs in a row have failed; any `seen()` resets the count. A
promoted replacement is placed by its last-seen time, so the bucket stays in
least-recently-seen order.

Bucket refresh (§2.3): each bucket remembers when a lookup last targeted an id in its
range (`touch_bucket`); `stale_buckets(now)` lists those idle for
`config.bucket_refresh_interval` (all of them at start) and `random_id_in_bucket` picks
the target of a refresh lookup. Persistence: `to_records()` / `from_records()` are plain
tuples `(node_id bytes, host, port, last_seen)` that the service writes to SQLite.
"""

from __future__ import annotations

import bisect
import enum
import functools
import heapq
import ipaddress
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final, TypeAlias

from dht.config import DhtConfig
from dht.contact import Address, Contact
from protocol.errors import LocalProtocolError
from protocol.identity import NODE_ID_BITS, NodeId

__all__ = [
    "IPV4_PREFIX_BITS",
    "IPV6_PREFIX_BITS",
    "MAX_CONSECUTIVE_FAILURES",
    "PENDING_PING_EXPIRY",
    "Added",
    "BucketRange",
    "BucketSnapshot",
    "Cached",
    "Evicted",
    "FailureCounted",
    "PingOldest",
    "RandomBelow",
    "RefusalReason",
    "Refused",
    "RoutingRecord",
    "RoutingTable",
    "SeenDecision",
    "Updated",
    "address_prefix",
]

MAX_CONSECUTIVE_FAILURES: Final = 5
"""Failed RPCs in a row after which a contact with no replacement is evicted. Lookups
replace slow queries after an adaptive timeout, so one failure is weak evidence; five in
a row, with no answer in between, is a dead or unreachable node."""

PENDING_PING_EXPIRY: Final = 60.0
"""Seconds after which a ping the service never reported back on stops holding its
bucket: the service's pings time out far sooner (`DhtConfig.max_query_timeout`)."""

IPV4_PREFIX_BITS: Final = 24
IPV6_PREFIX_BITS: Final = 48

_ID_SPACE: Final = 1 << NODE_ID_BITS
_MAX_PORT: Final = 65535

RandomBelow: TypeAlias = Callable[[int], int]
"""`random_below(n)` returns a uniform integer in [0, n): `secrets.randbelow`, or
`random.Random(seed).randrange` in tests and simulations."""

RoutingRecord: TypeAlias = tuple[bytes, str, int, float]
"""One persisted contact: (node_id bytes, host, port, last_seen)."""


class RefusalReason(enum.Enum):
    """Why `seen()` refused a contact."""

    OWN_ID = "our own id"
    BUCKET_PREFIX_LIMIT = "too many contacts from this IP prefix in its bucket"
    TABLE_PREFIX_LIMIT = "too many contacts from this IP prefix in the table"


@dataclass(frozen=True, slots=True)
class Added:
    """The contact was new and now sits at the tail of its bucket."""

    contact: Contact


@dataclass(frozen=True, slots=True)
class Updated:
    """A known contact moved to the tail; `old_address` is set if its address changed."""

    contact: Contact
    old_address: Address | None = None


@dataclass(frozen=True, slots=True)
class PingOldest:
    """The bucket is full: ping `oldest`, then report `ping_answered` or `ping_failed`.
    `newcomer` waits in the replacement cache meanwhile."""

    oldest: Contact
    newcomer: Contact


@dataclass(frozen=True, slots=True)
class Cached:
    """The bucket is full and a ping of its oldest contact is already in flight; the
    newcomer waits in the replacement cache."""

    newcomer: Contact


@dataclass(frozen=True, slots=True)
class Refused:
    """The contact was not inserted (nor cached), for `reason`."""

    contact: Contact
    reason: RefusalReason


@dataclass(frozen=True, slots=True)
class Evicted:
    """`contact` left the table; `promoted` took its place from the replacement cache."""

    contact: Contact
    promoted: Contact | None


@dataclass(frozen=True, slots=True)
class FailureCounted:
    """`contact` failed an RPC and stays, having now failed `failures` times in a row."""

    contact: Contact
    failures: int


SeenDecision: TypeAlias = Added | Updated | PingOldest | Cached | Refused


@dataclass(frozen=True, slots=True)
class BucketRange:
    """The ids `low <= int(id) < high` that bucket `index` covers."""

    index: int
    low: int
    high: int

    @property
    def depth(self) -> int:
        """How many leading bits every id in the range shares (the prefix length)."""
        return NODE_ID_BITS + 1 - (self.high - self.low).bit_length()

    def __contains__(self, node_id: object) -> bool:
        return isinstance(node_id, NodeId) and self.low <= int(node_id) < self.high


@dataclass(frozen=True, slots=True)
class BucketSnapshot:
    """A read-only view of one bucket: its range, contacts least-recently seen first,
    replacement cache oldest first, and when a lookup last targeted it."""

    range: BucketRange
    contacts: tuple[Contact, ...]
    replacements: tuple[Contact, ...]
    last_lookup: float


@functools.lru_cache(maxsize=65536)
def address_prefix(host: str) -> str:
    """The prefix a host counts against for the IP limits: its IPv4 /24 or IPv6 /48 (an
    IPv4-mapped IPv6 address counts as its IPv4 address); any other host, such as an
    in-memory name like "node-7", is a prefix of its own."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return f"name:{host.lower()}"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if isinstance(address, ipaddress.IPv4Address):
        shift = 32 - IPV4_PREFIX_BITS
        return f"{ipaddress.IPv4Address(int(address) >> shift << shift)}/{IPV4_PREFIX_BITS}"
    shift = 128 - IPV6_PREFIX_BITS
    return f"{ipaddress.IPv6Address(int(address) >> shift << shift)}/{IPV6_PREFIX_BITS}"


@dataclass(slots=True, eq=False)  # compared by identity: list.remove finds the very entry
class _Entry:
    contact: Contact
    number: int  # int(contact.node_id), kept for XOR distances
    prefix: str  # address_prefix(contact.address[0])
    last_seen: float
    failures: int = 0


def _entry(contact: Contact, now: float) -> _Entry:
    return _Entry(contact, int(contact.node_id), address_prefix(contact.address[0]), now)


def _last_seen(entry: _Entry) -> float:
    return entry.last_seen


@dataclass(slots=True, eq=False)
class _Bucket:
    low: int
    high: int
    last_lookup: float
    entries: list[_Entry] = field(default_factory=list)  # least-recently seen first
    replacements: list[_Entry] = field(default_factory=list)  # least-recently seen first
    ping_pending: NodeId | None = None
    ping_since: float = 0.0

    def covers(self, number: int) -> bool:
        return self.low <= number < self.high


class RoutingTable:
    """Kademlia k-buckets around `own_id`. Every method is synchronous and pure: it
    changes the table and returns what the caller should do."""

    __slots__ = ("_buckets", "_config", "_entries", "_own_number", "_prefix_counts", "own_id")

    def __init__(self, own_id: NodeId, config: DhtConfig | None = None) -> None:
        self.own_id: Final = own_id
        self._config = config if config is not None else DhtConfig()
        self._own_number = int(own_id)
        # Never looked up: every bucket is stale until a lookup touches it (§2.3 join).
        self._buckets = [_Bucket(0, _ID_SPACE, last_lookup=float("-inf"))]
        self._entries: dict[NodeId, _Entry] = {}
        self._prefix_counts: Counter[str] = Counter()

    @property
    def config(self) -> DhtConfig:
        return self._config

    # -- introspection ---------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, node_id: object) -> bool:
        return isinstance(node_id, NodeId) and node_id in self._entries

    def __repr__(self) -> str:
        return f"RoutingTable({self.own_id!r}, {len(self)} contacts, {len(self._buckets)} buckets)"

    def get(self, node_id: NodeId) -> Contact | None:
        """The contact with this id, if it is in the table (not counting replacements)."""
        entry = self._entries.get(node_id)
        return entry.contact if entry is not None else None

    def contacts(self) -> list[Contact]:
        """Every contact, bucket by bucket, least-recently seen first within a bucket."""
        return [entry.contact for bucket in self._buckets for entry in bucket.entries]

    @property
    def buckets(self) -> tuple[BucketSnapshot, ...]:
        """A snapshot of every bucket, farthest from our id first."""
        return tuple(
            BucketSnapshot(
                self._range(index),
                tuple(entry.contact for entry in bucket.entries),
                tuple(entry.contact for entry in bucket.replacements),
                bucket.last_lookup,
            )
            for index, bucket in enumerate(self._buckets)
        )

    def bucket_index(self, node_id: NodeId) -> int:
        """The index of the bucket whose range holds `node_id`."""
        return self._index_of(int(node_id))

    # -- contacts coming and going -------------------------------------------------------

    def seen(self, contact: Contact, now: float) -> SeenDecision:
        """Record that the node `contact.node_id` (authenticated by the transport) was
        heard from and listens at `contact.address`. See the transition table above."""
        node_id = contact.node_id
        if node_id == self.own_id:
            return Refused(contact, RefusalReason.OWN_ID)
        known = self._entries.get(node_id)
        if known is not None:
            return self._refresh(known, contact, now)
        newcomer = _entry(contact, now)
        index = self._index_of(newcomer.number)
        # §2.4: a full bucket splits only if it holds our own id (the last one). Split
        # first, so that the limits apply to the bucket the contact would really join.
        while len(self._buckets[index].entries) >= self._config.k and self._can_split(index):
            self._split()
            index = self._index_of(newcomer.number)
        bucket = self._buckets[index]
        refusal = self._check_limits(bucket, newcomer.prefix)
        if refusal is not None:
            return Refused(contact, refusal)
        if len(bucket.entries) < self._config.k:
            self._drop_replacement(bucket, node_id)
            self._insert(bucket, newcomer)
            return Added(contact)
        return self._full(bucket, newcomer, now)

    def ping_answered(self, oldest: Contact, now: float) -> Updated | None:
        """The ping asked for by `PingOldest(oldest, ...)` was answered: `oldest` stays."""
        entry = self._entries.get(oldest.node_id)
        if entry is None:
            return None
        self._touch(entry, now)
        return Updated(entry.contact)

    def ping_failed(self, oldest: Contact) -> Evicted | None:
        """The ping asked for by `PingOldest(oldest, ...)` failed: evict `oldest` and
        promote the newest replacement, unless the report is stale (None)."""
        bucket = self._buckets[self._index_of(int(oldest.node_id))]
        if bucket.ping_pending != oldest.node_id:
            return None
        return self._evict(self._entries[oldest.node_id])

    def failed(self, node_id: NodeId) -> Evicted | FailureCounted | None:
        """An RPC to `node_id` failed. Evict it if a replacement can take its place,
        otherwise count the failure and evict at `MAX_CONSECUTIVE_FAILURES`."""
        entry = self._entries.get(node_id)
        if entry is None:
            self._drop_replacement(self._buckets[self._index_of(int(node_id))], node_id)
            return None
        bucket = self._buckets[self._index_of(entry.number)]
        if self._replacement_for(bucket, leaving=entry) is not None:
            return self._evict(entry)
        entry.failures += 1
        if entry.failures >= MAX_CONSECUTIVE_FAILURES:
            return self._evict(entry)
        return FailureCounted(entry.contact, entry.failures)

    def remove(self, node_id: NodeId) -> Evicted | None:
        """Take `node_id` out of the table (promoting a replacement) or out of its
        bucket's replacement cache (None)."""
        entry = self._entries.get(node_id)
        if entry is None:
            self._drop_replacement(self._buckets[self._index_of(int(node_id))], node_id)
            return None
        return self._evict(entry)

    # -- queries -------------------------------------------------------------------------

    def closest(
        self,
        target: NodeId,
        count: int,
        *,
        exclude: Iterable[NodeId] | None = None,
        answering: bool = False,
    ) -> list[Contact]:
        """The `count` contacts closest to `target` by XOR distance, closest first,
        leaving out the ids in `exclude` and, when `answering` another node, the
        contacts whose last RPC failed (they stay in the table until evicted, but
        naming them would only cost the asker a timeout). Exact: buckets are visited in
        increasing, disjoint bands of distance (see `_buckets_by_distance`), each one
        sorted."""
        found: list[Contact] = []
        if count <= 0:
            return found
        target_number = int(target)
        # Compared as numbers: hashing a NodeId per entry cost more than the rest.
        excluded = {int(node_id) for node_id in exclude} if exclude else set()

        def distance(entry: _Entry) -> int:
            return entry.number ^ target_number

        for bucket in self._buckets_by_distance(target_number):
            candidates = [
                entry
                for entry in bucket.entries
                if entry.number not in excluded and not (answering and entry.failures)
            ]
            wanted = count - len(found)
            if len(candidates) > wanted:
                candidates = heapq.nsmallest(wanted, candidates, key=distance)
            else:
                candidates.sort(key=distance)
            found.extend(entry.contact for entry in candidates)
            if len(found) >= count:
                break
        return found

    # -- refresh (§2.3) ------------------------------------------------------------------

    def touch_bucket(self, target: NodeId, now: float) -> None:
        """A lookup for `target` ran: its bucket needs no refresh for a while."""
        self._buckets[self._index_of(int(target))].last_lookup = now

    def stale_buckets(self, now: float, interval: float | None = None) -> list[BucketRange]:
        """The buckets no lookup has targeted for `interval` seconds (by default
        `config.bucket_refresh_interval`), farthest first."""
        if interval is None:
            interval = self._config.bucket_refresh_interval
        return [
            self._range(index)
            for index, bucket in enumerate(self._buckets)
            if now - bucket.last_lookup >= interval
        ]

    def random_id_in_bucket(self, index: int, random_below: RandomBelow) -> NodeId:
        """A uniformly random id in bucket `index`'s range, the target of a refresh."""
        if not 0 <= index < len(self._buckets):
            raise ValueError(f"no bucket {index}: the table has {len(self._buckets)}")
        bucket = self._buckets[index]
        size = bucket.high - bucket.low
        offset = random_below(size)
        if not 0 <= offset < size:
            raise ValueError("random_below(n) must return an integer in [0, n)")
        return NodeId.from_int(bucket.low + offset)

    # -- persistence ---------------------------------------------------------------------

    def to_records(self) -> list[RoutingRecord]:
        """Every contact as a plain tuple (node_id, host, port, last_seen), for SQLite."""
        return [
            (entry.contact.node_id.value, *entry.contact.address, entry.last_seen)
            for bucket in self._buckets
            for entry in bucket.entries
        ]

    @classmethod
    def from_records(
        cls,
        own_id: NodeId,
        records: Iterable[RoutingRecord],
        config: DhtConfig | None = None,
    ) -> RoutingTable:
        """A table rebuilt from `to_records()` output, replayed in last-seen order under
        the same rules as `seen()`; no ping is left in flight. Raises ValueError on a
        malformed record."""
        contacts = sorted(
            (_contact_from_record(position, record) for position, record in enumerate(records)),
            key=lambda pair: pair[1],
        )
        table = cls(own_id, config)
        for contact, last_seen in contacts:
            table.seen(contact, last_seen)
        for bucket in table._buckets:
            bucket.ping_pending = None
        return table

    # -- internals -----------------------------------------------------------------------

    def _index_of(self, number: int) -> int:
        # Bucket i < last holds the ids sharing exactly i leading bits with ours.
        common_prefix = NODE_ID_BITS - (number ^ self._own_number).bit_length()
        return min(common_prefix, len(self._buckets) - 1)

    def _can_split(self, index: int) -> bool:
        bucket = self._buckets[index]
        return index == len(self._buckets) - 1 and bucket.high - bucket.low > 1

    def _range(self, index: int) -> BucketRange:
        bucket = self._buckets[index]
        return BucketRange(index, bucket.low, bucket.high)

    def _buckets_by_distance(self, target_number: int) -> Iterator[_Bucket]:
        """Every bucket, nearest to the target first, each one a band of distances
        that does not overlap the next. Every id in buckets j..last shares our first j
        bits, so among them bit j of the distance to the target decides first: bucket j
        comes before all deeper buckets if the target's bit j differs from ours, after
        them otherwise."""
        difference = target_number ^ self._own_number
        last = len(self._buckets) - 1
        deferred: list[int] = []
        for index in range(last):
            if difference >> (NODE_ID_BITS - 1 - index) & 1:
                yield self._buckets[index]
            else:
                deferred.append(index)
        yield self._buckets[last]
        for index in reversed(deferred):
            yield self._buckets[index]

    def _check_limits(
        self, bucket: _Bucket, prefix: str, *, leaving: _Entry | None = None
    ) -> RefusalReason | None:
        """Would one more contact from `prefix` in `bucket` break a limit? `leaving` is
        an entry about to go, not counted."""
        discount = 1 if leaving is not None and leaving.prefix == prefix else 0
        per_bucket = self._config.ip_prefix_limit_per_bucket
        if per_bucket is not None:
            in_bucket = sum(1 for entry in bucket.entries if entry.prefix == prefix)
            if in_bucket - discount >= per_bucket:
                return RefusalReason.BUCKET_PREFIX_LIMIT
        per_table = self._config.ip_prefix_limit_per_table
        if per_table is not None and self._prefix_counts[prefix] - discount >= per_table:
            return RefusalReason.TABLE_PREFIX_LIMIT
        return None

    def _refresh(self, entry: _Entry, contact: Contact, now: float) -> Updated | Refused:
        bucket = self._buckets[self._index_of(entry.number)]
        old_address = None
        if contact.address != entry.contact.address:
            prefix = address_prefix(contact.address[0])
            if prefix != entry.prefix:
                refusal = self._check_limits(bucket, prefix)
                if refusal is not None:
                    return Refused(contact, refusal)
                self._prefix_counts[entry.prefix] -= 1
                self._prefix_counts[prefix] += 1
                entry.prefix = prefix
            old_address = entry.contact.address
            entry.contact = contact
        self._touch(entry, now)
        return Updated(entry.contact, old_address)

    def _touch(self, entry: _Entry, now: float) -> None:
        """`entry` was heard from: most recently seen, no failures, no ping pending."""
        bucket = self._buckets[self._index_of(entry.number)]
        entry.last_seen = now
        entry.failures = 0
        bucket.entries.remove(entry)
        bucket.entries.append(entry)
        if bucket.ping_pending == entry.contact.node_id:
            bucket.ping_pending = None

    def _insert(self, bucket: _Bucket, entry: _Entry) -> None:
        # By last-seen time, so that a promoted replacement does not jump the queue.
        bisect.insort_right(bucket.entries, entry, key=_last_seen)
        self._entries[entry.contact.node_id] = entry
        self._prefix_counts[entry.prefix] += 1

    def _full(self, bucket: _Bucket, newcomer: _Entry, now: float) -> PingOldest | Cached:
        size = self._config.replacement_cache_size
        if size > 0:
            self._drop_replacement(bucket, newcomer.contact.node_id)
            bucket.replacements.append(newcomer)
            del bucket.replacements[:-size]  # keep the most recently seen
        if bucket.ping_pending is not None and now - bucket.ping_since < PENDING_PING_EXPIRY:
            return Cached(newcomer.contact)
        oldest = bucket.entries[0]
        if now - oldest.last_seen < self._config.ping_oldest_after:
            return Cached(newcomer.contact)
        bucket.ping_pending = oldest.contact.node_id
        bucket.ping_since = now
        return PingOldest(oldest.contact, newcomer.contact)

    def _replacement_for(self, bucket: _Bucket, *, leaving: _Entry) -> int | None:
        """The position of the most recently seen replacement that would fit the limits
        once `leaving` has gone."""
        for position in range(len(bucket.replacements) - 1, -1, -1):
            candidate = bucket.replacements[position]
            if self._check_limits(bucket, candidate.prefix, leaving=leaving) is None:
                return position
        return None

    def _evict(self, entry: _Entry) -> Evicted:
        bucket = self._buckets[self._index_of(entry.number)]
        position = self._replacement_for(bucket, leaving=entry)
        bucket.entries.remove(entry)
        del self._entries[entry.contact.node_id]
        self._prefix_counts[entry.prefix] -= 1
        if self._prefix_counts[entry.prefix] == 0:
            del self._prefix_counts[entry.prefix]
        if bucket.ping_pending == entry.contact.node_id:
            bucket.ping_pending = None
        promoted = None
        if position is not None:
            replacement = bucket.replacements.pop(position)
            replacement.failures = 0
            self._insert(bucket, replacement)
            promoted = replacement.contact
        return Evicted(entry.contact, promoted)

    def _drop_replacement(self, bucket: _Bucket, node_id: NodeId) -> None:
        bucket.replacements[:] = [
            entry for entry in bucket.replacements if entry.contact.node_id != node_id
        ]

    def _split(self) -> None:
        """Split the last bucket (the one holding our id) in two halves (§2.4)."""
        whole = self._buckets[-1]
        middle = (whole.low + whole.high) // 2
        if self._own_number < middle:
            near = _Bucket(whole.low, middle, whole.last_lookup)
            far = _Bucket(middle, whole.high, whole.last_lookup)
        else:
            near = _Bucket(middle, whole.high, whole.last_lookup)
            far = _Bucket(whole.low, middle, whole.last_lookup)
        for half in (near, far):
            half.entries = [entry for entry in whole.entries if half.covers(entry.number)]
            half.replacements = [entry for entry in whole.replacements if half.covers(entry.number)]
            pending = whole.ping_pending
            if pending is not None and half.covers(int(pending)):
                half.ping_pending, half.ping_since = pending, whole.ping_since
        self._buckets[-1] = far
        self._buckets.append(near)


def _contact_from_record(position: int, record: RoutingRecord) -> tuple[Contact, float]:
    try:
        raw_id, host, port, last_seen = record
    except (TypeError, ValueError) as exc:
        raise ValueError(f"routing record {position} is not a 4-tuple") from exc
    if not isinstance(raw_id, bytes) or not isinstance(host, str) or not host:
        raise ValueError(f"routing record {position}: bad node id or host")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= _MAX_PORT:
        raise ValueError(f"routing record {position}: bad port {port!r}")
    if isinstance(last_seen, bool) or not isinstance(last_seen, int | float):
        raise ValueError(f"routing record {position}: bad last_seen {last_seen!r}")
    try:
        node_id = NodeId(raw_id)
    except LocalProtocolError as exc:
        raise ValueError(f"routing record {position}: {exc}") from exc
    return Contact(node_id, (host, port)), float(last_seen)
