"""Provider records: who provides which key, and which keys we provide ourselves.

`ProviderStore` holds the records other peers announced with ADD_PROVIDER
(DESIGN.md#dht): key -> providers, each record kept `provider_ttl` (48 h) after its last
announcement. `LocalProvisions` tracks the keys this node provides and tells the service
which of them are due to be announced again (every `republish_interval`, 22 h).

Both are pure state machines in the sans-I/O style of protocol/: no clock, no I/O, no
randomness. Time is the `now: float` argument (the service passes
`trio.current_time()`); it is expected never to decrease from one call to the next (a
reading that does is taken as the latest one seen, so a record never expires before
one added earlier).

What the store promises:

- A record is live while `now < expires_at`; at `expires_at` exactly it is expired.
  Re-adding a record refreshes its expiry and the provider's address.
- The store trusts its caller on who the provider is. The service must pass the
  authenticated peer of the ADD_PROVIDER request as `provider`, never an address or id
  taken from a message body: "a provider record is accepted only for the authenticated
  sender" is enforced there, not here.
- Limits bound what peers can make us store (docs/PROTOCOL.md#provider-record-limits).
  A record's prefix is its provider address's /24 (IPv4) or /48 (IPv6),
  `address_prefix`. A refresh from the record's prefix is never refused; one from
  another prefix moves the record there if that prefix is under its quota. A new record
  is checked in this order, and the first rule that refuses it leaves the store
  unchanged:

  | rule        | when                            | then                                  |
  |-------------|---------------------------------|---------------------------------------|
  | per peer    | the peer holds                  | `QuotaExceeded`                       |
  |             | `max_records_per_peer`          |                                       |
  | per prefix  | its prefix holds                | `PrefixQuotaExceeded`                 |
  |             | `max_records_per_prefix`        |                                       |
  | per key     | the key has                     | the prefix with the most providers of |
  | (diversity) | `max_providers_per_key`         | the key loses the one expiring        |
  |             | providers                       | soonest, if it has more than the      |
  |             |                                 | newcomer's would; else `KeyFull`      |
  | node-wide   | the store holds `max_records`   | the prefix holding the most records   |
  |             |                                 | loses the one expiring soonest, if it |
  |             |                                 | holds more than the newcomer's would; |
  |             |                                 | else `BudgetFull`                      |

  So identities from one host or /24 cannot hold a key, or the store, against honest
  providers elsewhere: a full key or store always takes in a newcomer from a prefix
  with fewer records than the most crowded one, and the crowded prefix pays with the
  record it would lose first anyway. A prefix is never pushed out by one that already
  has more. A store filled from many prefixes evenly refuses (`BudgetFull`) rather than
  churn: the records it holds are as entitled as the newcomer. The per-prefix quota
  caps any one prefix before the budget is reached (a tenth of it by default, so a full
  budget holds records of ten prefixes at least). `max_records_per_prefix` = None
  lifts that quota (loopback testnets, where every peer shares 127.0.0.0/24).
- Expired records stop being returned at once; `expire(now)` frees their memory in
  O(r) for r records removed (records are kept in expiry order), and the store also
  sweeps by itself before refusing a record, so a record that has expired never counts
  against a limit.
- Persistence is incremental: `take_changes()` hands out what changed since the last
  call (records added or refreshed, saved records removed since), for the
  service to write to SQLite off the event loop. The changes it keeps in between are
  bounded by the store's size, however many records come and go: a record added and
  removed between two saves leaves no trace, and a saved one is deleted once.

Memory. A record costs about 280 bytes with a key of its own, its place among the
changes not yet saved included (benchmarks/providers.py measures it: 660 to 710 bytes
before this layout): one slotted
`_Entry` per record, held by its key directly when it is the key's only one; Contacts
and key NodeIds shared; per-prefix counters; and two queues of references in expiry
order (one for the store, one per prefix) instead of a heap of tuples.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from dht.config import DhtConfig
from dht.contact import Contact
from dht.errors import BudgetFull, KeyFull, PrefixQuotaExceeded, QuotaExceeded
from dht.routing import address_prefix
from protocol.identity import NodeId

__all__ = [
    "LocalProvisions",
    "ProviderRecord",
    "ProviderStore",
    "ProviderStoreStatistics",
    "Provision",
    "RecordChanges",
]

# A queue is compacted when it holds more than twice its live records plus this many
# entries, so that stale entries never cost more than the live ones and compacting is
# O(1) a record amortized. A prefix's queue gets a small slack: there may be as many
# prefixes as records.
_COMPACT_SLACK = 1024
_PREFIX_COMPACT_SLACK = 8


@dataclass(frozen=True, slots=True)
class ProviderRecord:
    """`provider` provides `key` until `expires_at` (the store's clock)."""

    key: NodeId
    provider: Contact
    expires_at: float


@dataclass(frozen=True, slots=True)
class ProviderStoreStatistics:
    """Counters of a `ProviderStore` (trio's `statistics()` convention).

    `keys`, `records`, `providers` and `prefixes` describe the store now (expired
    records count until swept); the rest are totals since the store was created.
    `evicted` counts records removed to make room for a newcomer from a less crowded
    prefix (a full key or a full store); each `rejected_*` counts one refusal rule.
    """

    keys: int
    records: int
    providers: int
    prefixes: int
    added: int
    refreshed: int
    expired: int
    evicted: int
    rejected_over_quota: int
    rejected_over_prefix_quota: int
    rejected_key_full: int
    rejected_budget_full: int


class _Prefix:
    """The records of one address prefix: how many, and a queue in expiry order."""

    __slots__ = ("count", "name", "queue")

    def __init__(self, name: str) -> None:
        self.name = name
        self.count = 0
        # Entries in expiry order; an entry may also appear earlier, stale (see _Entry).
        self.queue: deque[_Entry] = deque()


class _Provider:
    """A peer that has records here: its latest Contact (shared by its records) and
    that address's prefix, and how many records it holds."""

    __slots__ = ("contact", "count", "prefix")

    def __init__(self, contact: Contact, prefix: _Prefix) -> None:
        self.contact = contact
        self.prefix = prefix
        self.count = 0


class _Entry:
    """One record. `prefix` is None once removed. The entry is appended to the store's
    queue and its prefix's queue each time it is added or refreshed, and `queued` /
    `queued_in_prefix` count its appearances there: every appearance but the last is
    stale. `persisted` says the database may hold a row for it, so removing it early
    must be written there too."""

    __slots__ = (
        "contact",
        "expires_at",
        "key",
        "persisted",
        "prefix",
        "queued",
        "queued_in_prefix",
    )

    def __init__(self, key: NodeId, contact: Contact, expires_at: float, prefix: _Prefix) -> None:
        self.key = key
        self.contact = contact
        self.expires_at = expires_at
        self.prefix: _Prefix | None = prefix
        self.queued = 0
        self.queued_in_prefix = 0
        self.persisted = False

    def record(self) -> ProviderRecord:
        return ProviderRecord(self.key, self.contact, self.expires_at)


class RecordChanges:
    """What changed in a `ProviderStore` since the changes were last taken.

    `full`: the saved table must be replaced (every row deleted first), as after a
    failed save. `removed`: (key, provider id) of records removed before their expiry
    whose rows may be saved. The records added or refreshed come out of
    `take_records(limit)` a batch at a time, so that a driver can hand control back to
    its event loop between batches; each record taken is then counted as saved.
    """

    __slots__ = ("_entries", "_left", "full", "removed")

    def __init__(
        self, entries: dict[_Entry, None], removed: list[tuple[NodeId, NodeId]], *, full: bool
    ) -> None:
        # The store no longer touches `entries` (it collects the next changes in a dict
        # of its own), so one pass over it is safe.
        self._entries = iter(entries)
        self._left = len(entries)
        self.removed = removed
        self.full = full

    def take_records(self, limit: int) -> list[ProviderRecord]:
        """Up to `limit` of the records added or refreshed, as they are now; [] when
        all have been taken. Records removed meanwhile are left out."""
        if limit < 1:
            raise ValueError("limit must be >= 1")
        taken: list[ProviderRecord] = []
        for entry in self._entries:
            self._left -= 1
            if entry.prefix is not None:
                entry.persisted = True
                taken.append(entry.record())
                if len(taken) == limit:
                    break
        return taken

    def __len__(self) -> int:
        """How many records are still to be taken (removed ones included)."""
        return self._left


class ProviderStore:
    """The provider records other peers asked us to keep, with their limits."""

    def __init__(self, config: DhtConfig) -> None:
        self._config = config
        # key -> its entry, or its entries oldest first: most keys have one provider
        # here, and a list for it would cost a fifth of the record.
        self._by_key: dict[NodeId, _Entry | list[_Entry]] = {}
        self._providers: dict[NodeId, _Provider] = {}
        self._prefixes: dict[str, _Prefix] = {}
        # count -> the prefixes holding that many records, in the order they got there:
        # the most crowded prefix in O(1), and the same one for the same calls.
        self._prefixes_by_count: dict[int, dict[_Prefix, None]] = {}
        self._max_prefix_count = 0
        # Every entry in expiry order (stale appearances included): `expire` pops from
        # the front. Expiries are issued in order, as `now` never decreases.
        self._queue: deque[_Entry] = deque()
        self._latest_expiry = float("-inf")
        self._records = 0
        # Changes since `take_changes`: entries added or refreshed (insertion-ordered
        # for a deterministic save), and rows to delete.
        self._changed: dict[_Entry, None] = {}
        self._removed: list[tuple[NodeId, NodeId]] = []
        self._full_save = False
        self._added = 0
        self._refreshed = 0
        self._expired = 0
        self._evicted = 0
        self._rejected_over_quota = 0
        self._rejected_over_prefix_quota = 0
        self._rejected_key_full = 0
        self._rejected_budget_full = 0

    def add(self, key: NodeId, provider: Contact, now: float) -> float:
        """Record that `provider` provides `key`; return when the record expires.

        `provider` must be the authenticated peer that sent the announcement. Re-adding
        refreshes the expiry and the address. Raises a `RecordRejected` by the rules of
        the module header (`QuotaExceeded`, `PrefixQuotaExceeded`, `KeyFull`,
        `BudgetFull`); the store is then unchanged.
        """
        expires_at = max(now + self._config.provider_ttl, self._latest_expiry)
        known = self._providers.get(provider.node_id)
        # A prefix left with no record is forgotten (its count is 0 for ever after).
        if known is not None and known.contact == provider and known.prefix.count:
            contact, prefix = known.contact, known.prefix  # shared, not one per record
        else:
            contact, prefix = provider, self._prefix(address_prefix(provider.address[0]))
        entries = self._entries(key)
        existing = None
        if entries:
            key = entries[0].key  # one NodeId per key, not one per record
            for entry in entries:
                if entry.contact.node_id == provider.node_id:
                    existing = entry
                    break
        if existing is not None and existing.prefix is prefix:
            self._refresh(existing, contact, expires_at)
        elif existing is not None:
            # A refresh from another prefix: the record moves there, within that
            # prefix's quota (the other limits do not change: one record out, one in).
            if not _below(prefix.count, self._config.max_records_per_prefix):
                self._refuse_prefix(prefix)
            self._remove(existing)
            self._insert(key, contact, prefix, expires_at)
            self._refreshed += 1
        else:
            self._admit(key, contact, prefix, now)
            self._insert(key, contact, prefix, expires_at)
            self._added += 1
        self._set_provider(contact, prefix)
        return expires_at

    def get(self, key: NodeId, now: float, limit: int) -> list[Contact]:
        """At most `limit` live providers of `key`, most recently announced first."""
        if limit < 0:
            raise ValueError("limit must be >= 0")
        live = [entry for entry in self._entries(key) if now < entry.expires_at]
        # Latest expiry = most recently announced = most likely still online. The id
        # breaks ties so that the answer does not depend on the order of the list.
        live.sort(key=lambda entry: (-entry.expires_at, entry.contact.node_id))
        return [entry.contact for entry in live[:limit]]

    def expire(self, now: float) -> int:
        """Remove every record expired at `now`; return how many were removed."""
        removed = 0
        queue = self._queue
        while queue:
            entry = queue[0]
            if entry.queued > 1 or entry.prefix is None:  # a stale appearance
                queue.popleft()
                entry.queued -= 1
            elif entry.expires_at <= now:
                queue.popleft()
                entry.queued -= 1
                self._remove(entry)
                removed += 1
            else:
                break
        self._expired += removed
        return removed

    def records(self) -> list[ProviderRecord]:
        """Every stored record (expired ones too, until swept), in expiry order."""
        live = dict.fromkeys(entry for entry in self._queue if entry.prefix is not None)
        return [entry.record() for entry in sorted(live, key=_expiry)]

    def restore(self, records: Iterable[ProviderRecord], now: float) -> int:
        """Put saved records back into this empty store; return how many were kept.

        Expired records are skipped, and so are records beyond a limit (a saved file is
        not allowed to exceed what `add` would accept; the latest-expiring records are
        kept). An expiry beyond `now` + `provider_ttl` (a clock that jumped, an edited
        file) is cut back to that. The records kept count as saved already; if any were
        dropped or cut, the next changes ask for the saved table to be replaced.
        """
        if self._records:
            raise ValueError("restore() is for an empty store")
        latest = now + self._config.provider_ttl
        saved = [record for record in records if record.expires_at > now]
        saved.sort(key=lambda record: record.expires_at, reverse=True)
        kept: list[tuple[NodeId, Contact, _Prefix, float]] = []
        counts_by_key: dict[NodeId, set[NodeId]] = {}
        counts_by_provider: dict[NodeId, int] = {}
        counts_by_prefix: dict[str, int] = {}
        changed = False
        for record in saved:
            provider_id = record.provider.node_id
            seen = counts_by_key.setdefault(record.key, set())
            if provider_id in seen:
                continue  # a duplicate: the later expiry came first
            name = address_prefix(record.provider.address[0])
            if (
                len(kept) >= self._config.max_records
                or len(seen) >= self._config.max_providers_per_key
                or counts_by_provider.get(provider_id, 0) >= self._config.max_records_per_peer
                or not _below(counts_by_prefix.get(name, 0), self._config.max_records_per_prefix)
            ):
                changed = True
                continue
            seen.add(provider_id)
            counts_by_provider[provider_id] = counts_by_provider.get(provider_id, 0) + 1
            counts_by_prefix[name] = counts_by_prefix.get(name, 0) + 1
            expires_at = min(record.expires_at, latest)
            changed = changed or expires_at != record.expires_at
            kept.append((record.key, record.provider, self._prefix(name), expires_at))
        for key, provider, prefix, expires_at in reversed(kept):
            known = self._providers.get(provider.node_id)
            contact = known.contact if known is not None and known.contact == provider else provider
            entries = self._entries(key)
            entry = self._insert(entries[0].key if entries else key, contact, prefix, expires_at)
            self._set_provider(contact, prefix)
            entry.persisted = True
            del self._changed[entry]
        for name in [name for name, prefix in self._prefixes.items() if not prefix.count]:
            del self._prefixes[name]
        if changed:
            self._full_save = True
        return len(kept)

    def take_changes(self) -> RecordChanges:
        """What changed since the last call (or since the store was made), for an
        incremental save; from then on the store collects the next changes.

        After a save that failed, `save_failed()` makes the next changes a full one."""
        if self._full_save:
            changed = {entry: None for entry in self._queue if entry.prefix is not None}
            changes = RecordChanges(changed, [], full=True)
        else:
            changes = RecordChanges(self._changed, self._removed, full=False)
        self._changed = {}
        self._removed = []
        self._full_save = False
        return changes

    def save_failed(self) -> None:
        """The changes last taken were not saved: the next ones replace the table."""
        self._full_save = True
        self._changed = {}
        self._removed = []

    def statistics(self) -> ProviderStoreStatistics:
        """The store's size and counters."""
        return ProviderStoreStatistics(
            keys=len(self._by_key),
            records=self._records,
            providers=len(self._providers),
            prefixes=len(self._prefixes),
            added=self._added,
            refreshed=self._refreshed,
            expired=self._expired,
            evicted=self._evicted,
            rejected_over_quota=self._rejected_over_quota,
            rejected_over_prefix_quota=self._rejected_over_prefix_quota,
            rejected_key_full=self._rejected_key_full,
            rejected_budget_full=self._rejected_budget_full,
        )

    def __len__(self) -> int:
        """The number of records stored (expired ones too, until swept)."""
        return self._records

    # -- the rules ---------------------------------------------------------------------

    def _admit(self, key: NodeId, contact: Contact, prefix: _Prefix, now: float) -> None:
        """Make room for a new record of `contact` for `key` by the header's rules, or
        raise (the store unchanged but for expired records swept)."""
        if self._refusal(key, contact, prefix) is not None:
            self.expire(now)  # expired records must not hold a place: sweep, then decide
        config = self._config
        provider = self._providers.get(contact.node_id)
        if provider is not None and provider.count >= config.max_records_per_peer:
            self._rejected_over_quota += 1
            raise QuotaExceeded(
                f"peer {contact.node_id.short()} already has "
                f"{config.max_records_per_peer} provider records here"
            )
        if not _below(prefix.count, config.max_records_per_prefix):
            self._refuse_prefix(prefix)
        entries = self._entries(key)
        if len(entries) >= config.max_providers_per_key:
            victim = _crowded_provider(entries, prefix)
            if victim is None:
                self._rejected_key_full += 1
                raise KeyFull(
                    f"key {key.short()} already has {config.max_providers_per_key} "
                    "providers, none from a prefix with more of them than this one's"
                )
            self._evict(victim)
            return  # one record out, one in: the store's budget is unchanged
        if self._records >= config.max_records:
            victim = self._crowded_record(prefix)
            if victim is None:
                self._rejected_budget_full += 1
                raise BudgetFull(
                    f"this node holds {config.max_records} provider records, none "
                    f"from a prefix with more of them than {prefix.name}"
                )
            self._evict(victim)

    def _refuse_prefix(self, prefix: _Prefix) -> None:
        self._rejected_over_prefix_quota += 1
        raise PrefixQuotaExceeded(
            f"prefix {prefix.name} already has {self._config.max_records_per_prefix} "
            "provider records here"
        )

    def _refusal(self, key: NodeId, contact: Contact, prefix: _Prefix) -> str | None:
        """Which limit a new record would hit, before sweeping (None: none)."""
        config = self._config
        provider = self._providers.get(contact.node_id)
        if provider is not None and provider.count >= config.max_records_per_peer:
            return "peer"
        if not _below(prefix.count, config.max_records_per_prefix):
            return "prefix"
        if len(self._entries(key)) >= config.max_providers_per_key:
            return "key"
        if self._records >= config.max_records:
            return "store"
        return None

    def _crowded_record(self, prefix: _Prefix) -> _Entry | None:
        """The record to make room for a newcomer from `prefix` in a full store: the one
        expiring soonest in the prefix holding the most records, if that prefix holds
        more than the newcomer's would with it; else None."""
        if self._max_prefix_count <= prefix.count + 1:
            return None
        crowded = next(iter(self._prefixes_by_count[self._max_prefix_count]))
        queue = crowded.queue
        while queue:
            entry = queue[0]
            if entry.queued_in_prefix > 1 or entry.prefix is not crowded:
                queue.popleft()  # stale
                entry.queued_in_prefix -= 1
                continue
            return entry
        raise AssertionError(f"prefix {crowded.name} counts records its queue lacks")

    # -- bookkeeping -------------------------------------------------------------------

    def _entries(self, key: NodeId) -> Sequence[_Entry]:
        entries = self._by_key.get(key)
        if entries is None:
            return ()
        return entries if isinstance(entries, list) else (entries,)

    def _prefix(self, name: str) -> _Prefix:
        prefix = self._prefixes.get(name)
        if prefix is None:
            prefix = self._prefixes[name] = _Prefix(name)
        return prefix

    def _set_provider(self, contact: Contact, prefix: _Prefix) -> None:
        """The provider's latest contact, for its next records to share."""
        provider = self._providers.get(contact.node_id)
        if provider is not None:
            provider.contact, provider.prefix = contact, prefix

    def _refresh(self, entry: _Entry, contact: Contact, expires_at: float) -> None:
        # Never move an expiry earlier; `expires_at` is the latest issued, so appending
        # keeps both queues in expiry order.
        entry.expires_at = max(expires_at, entry.expires_at)
        entry.contact = contact
        self._latest_expiry = max(self._latest_expiry, entry.expires_at)
        self._enqueue(entry)
        self._changed[entry] = None
        self._refreshed += 1

    def _insert(self, key: NodeId, contact: Contact, prefix: _Prefix, expires_at: float) -> _Entry:
        # A sweep before the insertion may have emptied, and so forgotten, the prefix.
        prefix = self._prefixes.setdefault(prefix.name, prefix)
        entry = _Entry(key, contact, expires_at, prefix)
        self._latest_expiry = max(self._latest_expiry, expires_at)
        entries = self._by_key.get(key)
        if entries is None:
            self._by_key[key] = entry
        elif isinstance(entries, list):
            entries.append(entry)
        else:
            self._by_key[key] = [entries, entry]
        provider = self._providers.get(contact.node_id)
        if provider is None:
            provider = self._providers[contact.node_id] = _Provider(contact, prefix)
        provider.count += 1
        self._count(prefix, +1)
        self._records += 1
        self._enqueue(entry)
        self._changed[entry] = None
        return entry

    def _enqueue(self, entry: _Entry) -> None:
        prefix = entry.prefix
        assert prefix is not None
        self._queue.append(entry)
        entry.queued += 1
        if len(self._queue) > 2 * self._records + _COMPACT_SLACK:
            self._queue = _compact(self._queue, in_prefix=False)
        prefix.queue.append(entry)
        entry.queued_in_prefix += 1
        if len(prefix.queue) > 2 * prefix.count + _PREFIX_COMPACT_SLACK:
            prefix.queue = _compact(prefix.queue, in_prefix=True)

    def _evict(self, entry: _Entry) -> None:
        self._remove(entry)
        self._evicted += 1

    def _remove(self, entry: _Entry) -> None:
        """Take `entry` out of every index (its queue appearances go stale)."""
        prefix = entry.prefix
        assert prefix is not None
        entry.prefix = None
        entries = self._by_key[entry.key]
        if isinstance(entries, list):
            entries.remove(entry)
            if len(entries) == 1:
                self._by_key[entry.key] = entries[0]
        else:
            del self._by_key[entry.key]
        provider_id = entry.contact.node_id
        provider = self._providers[provider_id]
        provider.count -= 1
        if not provider.count:
            del self._providers[provider_id]
        self._count(prefix, -1)
        if not prefix.count:
            del self._prefixes[prefix.name]
            prefix.queue.clear()
        self._records -= 1
        self._changed.pop(entry, None)
        if entry.persisted:
            self._removed.append((entry.key, provider_id))

    def _count(self, prefix: _Prefix, change: int) -> None:
        """Move `prefix` from its count's set to the next one's."""
        by_count = self._prefixes_by_count
        old = prefix.count
        new = prefix.count = old + change
        if old:
            same = by_count[old]
            del same[prefix]
            if not same:
                del by_count[old]
                if old == self._max_prefix_count and change < 0:
                    self._max_prefix_count = new
        if new:
            by_count.setdefault(new, {})[prefix] = None
            self._max_prefix_count = max(self._max_prefix_count, new)


def _expiry(entry: _Entry) -> float:
    return entry.expires_at


def _below(count: int, limit: int | None) -> bool:
    return limit is None or count < limit


def _crowded_provider(entries: Sequence[_Entry], prefix: _Prefix) -> _Entry | None:
    """The provider to make room for a newcomer from `prefix` on a full key: the one
    expiring soonest in the prefix with the most providers of the key, if that prefix
    has more of them than the newcomer's would have with it; else None."""
    by_prefix: dict[str, list[_Entry]] = {}
    for entry in entries:
        assert entry.prefix is not None
        by_prefix.setdefault(entry.prefix.name, []).append(entry)
    crowded = max(by_prefix, key=lambda name: (len(by_prefix[name]), name))
    if len(by_prefix[crowded]) <= len(by_prefix.get(prefix.name, [])) + 1:
        return None
    return min(by_prefix[crowded], key=lambda entry: (entry.expires_at, entry.contact.node_id))


def _compact(queue: deque[_Entry], *, in_prefix: bool) -> deque[_Entry]:
    """`queue` without its stale appearances (each live entry's last one kept)."""
    kept: deque[_Entry] = deque()
    for entry in queue:
        if in_prefix:
            entry.queued_in_prefix -= 1
            if entry.queued_in_prefix == 0 and entry.prefix is not None:
                kept.append(entry)
        else:
            entry.queued -= 1
            if entry.queued == 0 and entry.prefix is not None:
                kept.append(entry)
    for entry in kept:
        if in_prefix:
            entry.queued_in_prefix = 1
        else:
            entry.queued = 1
    return kept


@dataclass(frozen=True, slots=True)
class Provision:
    """We provide `key`; we last announced it at `last_published` (None: not yet)."""

    key: NodeId
    last_published: float | None


class LocalProvisions:
    """The keys this node provides, and when each was last announced.

    The service drives it: `provide` when it starts holding a key, `due_for_republish`
    to learn which keys to announce, `published` after an announcement went out,
    `withdraw` when it stops holding the key. A newly provided key is due at once, so the
    first announcement takes the same path as every later one, and one that fails is
    simply still due at the next round.
    """

    def __init__(self) -> None:
        # Insertion order is kept, so keys never published come out oldest first.
        self._last_published: dict[NodeId, float | None] = {}

    def provide(self, key: NodeId) -> None:
        """Start providing `key` (due for announcement now). Providing it again is a no-op."""
        self._last_published.setdefault(key, None)

    def published(self, key: NodeId, now: float) -> None:
        """`key` was announced at `now`. Ignored if it was withdrawn in the meantime."""
        if key in self._last_published:
            self._last_published[key] = now

    def withdraw(self, key: NodeId) -> None:
        """Stop providing `key` (its records elsewhere then expire). No-op if unknown."""
        self._last_published.pop(key, None)

    def due_for_republish(self, now: float, interval: float) -> list[NodeId]:
        """The keys never announced, or last announced `interval` or more before `now`.

        Never-announced keys come first (in the order they were provided), then the
        others oldest announcement first, so that a service announcing a bounded batch per
        round serves the most urgent keys first.
        """
        if not interval > 0:
            raise ValueError("interval must be positive")
        never = [key for key, last in self._last_published.items() if last is None]
        stale = [
            (last, key)
            for key, last in self._last_published.items()
            # The same sum the service's timer waits for (last + interval): `now -
            # last >= interval` can be false at that very deadline in floating point,
            # and the republish loop then woke forever with nothing due.
            if last is not None and last + interval <= now
        ]
        stale.sort()
        return never + [key for _, key in stale]

    def records(self) -> list[Provision]:
        """Every provision, for persistence."""
        return [Provision(key, last) for key, last in self._last_published.items()]

    def restore(self, provisions: Iterable[Provision], now: float) -> None:
        """Put back provisions saved earlier. A last announcement later than `now` (a
        clock that jumped back) is taken as made at `now`."""
        for provision in provisions:
            last = provision.last_published
            self._last_published[provision.key] = None if last is None else min(last, now)

    def __contains__(self, key: object) -> bool:
        return key in self._last_published

    def __len__(self) -> int:
        return len(self._last_published)
