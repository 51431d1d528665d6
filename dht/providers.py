"""Provider records: who provides which key, and which keys we provide ourselves.

`ProviderStore` holds the records other peers announced with ADD_PROVIDER
(DESIGN.md#dht): key -> providers, each record kept `provider_ttl` (48 h) after its last
announcement. `LocalProvisions` tracks the keys this node provides and tells the service
which of them are due to be announced again (every `republish_interval`, 22 h).

Both are pure state machines in the sans-I/O style of protocol/: no clock, no I/O, no
randomness. Time is the `now: float` argument (the service passes
`trio.current_time()`); it is expected never to decrease from one call to the next.

What the store promises:

- A record is live while `now < expires_at`; at `expires_at` exactly it is expired.
  Re-adding a record refreshes its expiry and the provider's address.
- The store trusts its caller on who the provider is. The service must pass the
  authenticated peer of the ADD_PROVIDER request as `provider`, never an address or id
  taken from a message body: "a provider record is accepted only for the authenticated
  sender" is enforced there, not here.
- Limits bound what peers can make us store. A peer holding `max_records_per_peer`
  records gets `QuotaExceeded` for a new one. A key with `max_providers_per_key` live
  providers prefers diversity: a newcomer from an address prefix (/24, /64) with fewer
  providers of the key than the most crowded prefix has takes the slot of that prefix's
  provider expiring soonest; a newcomer from a prefix as crowded as any gets `KeyFull`.
  So identities from one host or /24 cannot hold a key against honest providers
  elsewhere (they keep at most their fair part of its slots), and an honest provider
  from a prefix of its own is never pushed out by one that already has more. Both
  refusals leave the store unchanged.
- Expired records stop being returned at once; `expire(now)` frees their memory. It
  costs O(r log n) for r records removed (a heap ordered by expiry, so the sweep does not
  walk every record), and the store also sweeps by itself before refusing a record, so
  a record that has expired never counts against a quota or a key's limit.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass

from dht.config import DhtConfig
from dht.contact import Contact
from dht.errors import KeyFull, QuotaExceeded
from dht.routing import address_prefix
from protocol.identity import NodeId

__all__ = [
    "LocalProvisions",
    "ProviderRecord",
    "ProviderStore",
    "ProviderStoreStatistics",
    "Provision",
]


@dataclass(frozen=True, slots=True)
class ProviderRecord:
    """`provider` provides `key` until `expires_at` (the store's clock)."""

    key: NodeId
    provider: Contact
    expires_at: float


@dataclass(frozen=True, slots=True)
class ProviderStoreStatistics:
    """Counters of a `ProviderStore` (trio's `statistics()` convention).

    `keys`, `records` and `providers` describe the store now (expired records count until
    swept); the rest are totals since the store was created.
    """

    keys: int
    records: int
    providers: int
    added: int
    refreshed: int
    expired: int
    rejected_over_quota: int
    rejected_key_full: int


class ProviderStore:
    """The provider records other peers asked us to keep, with their limits."""

    def __init__(self, config: DhtConfig) -> None:
        self._config = config
        # key -> provider id -> record. Insertion order is kept, so iteration is
        # deterministic for a given sequence of calls.
        self._by_key: dict[NodeId, dict[NodeId, ProviderRecord]] = {}
        # provider id -> keys it has a record for: the per-peer quota.
        self._keys_by_provider: dict[NodeId, set[NodeId]] = {}
        # One entry (time, key, provider id) per stored record, with time <= the record's
        # expiry. A refresh does not push a new entry (a peer re-announcing in a loop
        # must not grow the heap); `expire` re-schedules an entry it finds refreshed.
        self._expiry_heap: list[tuple[float, NodeId, NodeId]] = []
        self._records = 0
        self._added = 0
        self._refreshed = 0
        self._expired = 0
        self._rejected_over_quota = 0
        self._rejected_key_full = 0

    def add(self, key: NodeId, provider: Contact, now: float) -> float:
        """Record that `provider` provides `key`; return when the record expires.

        `provider` must be the authenticated peer that sent the announcement. Re-adding
        refreshes the expiry and the address. Raises `QuotaExceeded` if the peer holds
        `max_records_per_peer` records already, `KeyFull` if the key has
        `max_providers_per_key` live providers; the store is then unchanged.
        """
        expires_at = now + self._config.provider_ttl
        providers = self._by_key.get(key)
        existing = None if providers is None else providers.get(provider.node_id)
        if providers is not None and existing is not None:
            # Never move an expiry earlier: the heap entry must stay at or before it.
            expires_at = max(expires_at, existing.expires_at)
            providers[provider.node_id] = ProviderRecord(key, provider, expires_at)
            self._refreshed += 1
            return expires_at
        if self._over_quota(provider.node_id) or self._key_full(key):
            # Expired records must not hold a slot: sweep, then decide.
            self.expire(now)
        if self._over_quota(provider.node_id):
            self._rejected_over_quota += 1
            raise QuotaExceeded(
                f"peer {provider.node_id.short()} already has "
                f"{self._config.max_records_per_peer} provider records here"
            )
        if self._key_full(key):
            crowded = self._most_crowded(key, address_prefix(provider.address[0]))
            if crowded is None:
                self._rejected_key_full += 1
                raise KeyFull(
                    f"key {key.short()} already has {self._config.max_providers_per_key} "
                    "providers, none from a prefix with more of them than this one's"
                )
            self._remove(key, crowded)
        self._insert(ProviderRecord(key, provider, expires_at))
        self._added += 1
        return expires_at

    def get(self, key: NodeId, now: float, limit: int) -> list[Contact]:
        """At most `limit` live providers of `key`, most recently announced first."""
        if limit < 0:
            raise ValueError("limit must be >= 0")
        providers = self._by_key.get(key)
        if providers is None:
            return []
        live = [record for record in providers.values() if now < record.expires_at]
        # Latest expiry = most recently announced = most likely still online. The id
        # breaks ties so that the answer does not depend on dict order.
        live.sort(key=lambda record: (-record.expires_at, record.provider.node_id))
        return [record.provider for record in live[:limit]]

    def expire(self, now: float) -> int:
        """Remove every record expired at `now`; return how many were removed."""
        removed = 0
        while self._expiry_heap and self._expiry_heap[0][0] <= now:
            _, key, provider_id = heapq.heappop(self._expiry_heap)
            record = self._by_key[key][provider_id]
            if record.expires_at <= now:
                self._remove(key, provider_id)
                removed += 1
            else:  # refreshed since it was scheduled
                heapq.heappush(self._expiry_heap, (record.expires_at, key, provider_id))
        self._expired += removed
        return removed

    def records(self) -> list[ProviderRecord]:
        """Every stored record (expired ones too, until swept), for persistence."""
        return [record for providers in self._by_key.values() for record in providers.values()]

    def restore(self, records: Iterable[ProviderRecord], now: float) -> int:
        """Put back records saved earlier; return how many were kept.

        Expired records are skipped, and so are records beyond a limit (a saved file is
        not allowed to exceed what `add` would accept). An expiry beyond `now` +
        `provider_ttl` (a clock that jumped, an edited file) is cut back to that.
        """
        kept = 0
        latest = now + self._config.provider_ttl
        for record in records:
            if record.expires_at <= now:
                continue
            expires_at = min(record.expires_at, latest)
            providers = self._by_key.get(record.key)
            existing = None if providers is None else providers.get(record.provider.node_id)
            if providers is not None and existing is not None:
                expires_at = max(expires_at, existing.expires_at)
                providers[record.provider.node_id] = ProviderRecord(
                    record.key, record.provider, expires_at
                )
                continue
            if self._over_quota(record.provider.node_id) or self._key_full(record.key):
                continue
            self._insert(ProviderRecord(record.key, record.provider, expires_at))
            kept += 1
        return kept

    def statistics(self) -> ProviderStoreStatistics:
        """The store's size and counters."""
        return ProviderStoreStatistics(
            keys=len(self._by_key),
            records=self._records,
            providers=len(self._keys_by_provider),
            added=self._added,
            refreshed=self._refreshed,
            expired=self._expired,
            rejected_over_quota=self._rejected_over_quota,
            rejected_key_full=self._rejected_key_full,
        )

    def __len__(self) -> int:
        """The number of records stored (expired ones too, until swept)."""
        return self._records

    def _over_quota(self, provider_id: NodeId) -> bool:
        keys = self._keys_by_provider.get(provider_id)
        return keys is not None and len(keys) >= self._config.max_records_per_peer

    def _most_crowded(self, key: NodeId, prefix: str) -> NodeId | None:
        """The provider to make room for a newcomer from `prefix` on a full key: the
        one expiring soonest in the prefix with the most providers of the key, if that
        prefix has more of them than the newcomer's would have with it; else None."""
        providers = self._by_key[key]
        by_prefix: dict[str, list[ProviderRecord]] = {}
        for record in providers.values():
            by_prefix.setdefault(address_prefix(record.provider.address[0]), []).append(record)
        crowded_prefix = max(by_prefix, key=lambda name: (len(by_prefix[name]), name))
        if len(by_prefix[crowded_prefix]) <= len(by_prefix.get(prefix, [])) + 1:
            return None
        soonest = min(by_prefix[crowded_prefix], key=lambda r: (r.expires_at, r.provider.node_id))
        return soonest.provider.node_id

    def _key_full(self, key: NodeId) -> bool:
        providers = self._by_key.get(key)
        return providers is not None and len(providers) >= self._config.max_providers_per_key

    def _insert(self, record: ProviderRecord) -> None:
        provider_id = record.provider.node_id
        self._by_key.setdefault(record.key, {})[provider_id] = record
        self._keys_by_provider.setdefault(provider_id, set()).add(record.key)
        heapq.heappush(self._expiry_heap, (record.expires_at, record.key, provider_id))
        self._records += 1

    def _remove(self, key: NodeId, provider_id: NodeId) -> None:
        providers = self._by_key[key]
        del providers[provider_id]
        if not providers:
            del self._by_key[key]
        keys = self._keys_by_provider[provider_id]
        keys.discard(key)
        if not keys:
            del self._keys_by_provider[provider_id]
        self._records -= 1


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
