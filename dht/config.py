"""Every DHT parameter in one validated frozen dataclass (h2's model)."""

from __future__ import annotations

from dataclasses import dataclass

from protocol.messages import MAX_CONTACTS, MAX_PROVIDERS

__all__ = ["DhtConfig"]

HOUR = 3600.0


@dataclass(frozen=True, slots=True)
class DhtConfig:
    """Kademlia's parameters and Freehold's limits. Times are in seconds."""

    # Kademlia §2.2 / §2.3.
    k: int = 20
    alpha: int = 3
    # Disjoint lookup paths (S/Kademlia; dht/lookup.py rule 7): each has its own window
    # of k and alpha queries in flight, and no contact is queried by two. Colluding
    # Sybils must then be in the window of every path to eclipse a lookup. 1 is plain
    # Kademlia. With 30% colluding Sybils, 6 of 40 plain lookups were eclipsed in the
    # seeded 300-node test network, 1 with 2 paths, none with 3 or 4 (tests/dht); with 4
    # at 1,000 nodes none was, and recall was 100% at 10-30% (plain: 20% eclipsed and 67%
    # at 30%), for 3.9 times the queries (simulations/README.md, eclipse). 4 rather than
    # 3 is margin for Sybils that hold more than their share of a node's seeds.
    disjoint_paths: int = 4
    # Contacts kept per bucket in the replacement cache (Kademlia §4.1).
    replacement_cache_size: int = 10
    # A full bucket pings its least-recently-seen contact for a newcomer only if that
    # contact has been silent this long (BEP 5 calls fresher nodes "good"); 0 always pings.
    ping_oldest_after: float = 15 * 60.0
    # Limits on contacts from one IP prefix (/24 for IPv4, /48 for IPv6), per bucket and
    # per table, against one operator filling a table with Sybils. None turns a limit
    # off, as tests on loopback or in memory need.
    ip_prefix_limit_per_bucket: int | None = 2
    ip_prefix_limit_per_table: int | None = 10
    # Query timeouts adapt to measured round trips (RFC 6298 style): timeout = srtt +
    # 4 * rttvar, clamped to [min_query_timeout, max_query_timeout]; initial_query_timeout
    # until a peer has been measured. In a lookup a query past its timeout only frees its
    # slot (its answer counts until max_query_timeout), so the floor decides how long a
    # dead contact holds a slot. With a quarter of 50 loopback nodes killed and 90
    # operations in flight, a provider lookup's p99 was 650 ms with a floor of 0.2 s and
    # 360 ms with 0.1 s. Lower is not better: at 0.05 s and 200 nodes on one saturated
    # core, live peers' answers outran the floor, the extra queries cost CPU, and
    # provides got slower. Where round trips are longer the measured estimate decides.
    initial_query_timeout: float = 2.0
    min_query_timeout: float = 0.1
    max_query_timeout: float = 5.0
    # Provider records (DESIGN.md#dht): kept 48 h, republished by their provider every
    # 22 h; quotas bound what one peer can make us store.
    provider_ttl: float = 48 * HOUR
    republish_interval: float = 22 * HOUR
    # Republish lookups in flight at once: keys announced together (a restart announces
    # every held chunk) come due together, and go out as a stream, not one burst.
    republish_concurrency: int = 8
    # Each key is republished up to this share of the interval early, by an amount of
    # its own (`DhtConfig.republish_offset`): keys announced together drift apart, so
    # that their republishing spreads over the interval instead of coming in bursts.
    republish_spread: float = 0.1
    max_records_per_peer: int = 100_000
    max_providers_per_key: int = MAX_PROVIDERS
    # The node-wide budget of provider records, and the share one address prefix (/24,
    # /48) may hold (dht/providers.py has the rules; None lifts the prefix quota, for
    # loopback testnets whose peers all share 127.0.0.0/24). Load: a node keeping
    # 10 GiB holds some 7,700 chunks of 1.4 MB (a 4 MiB segment at 3-of-10), each
    # announced to the k = 20 closest nodes, so on average a node stores 20 records per
    # chunk a node holds: about 150,000 (small files' smaller chunks, manifests and the
    # uneven spread of ids over the key space push some nodes above that). 500,000
    # leaves three times that and costs about 140 MB at the 280 bytes a record with a
    # key of its own takes (benchmarks/providers.py). A tenth of it per prefix: at
    # least ten /24s are needed to fill the store, and one /24 of honest nodes may still
    # hold a third of a typical node's load.
    max_records: int = 500_000
    max_records_per_prefix: int | None = 50_000
    # Buckets with no lookup for this long are refreshed with a random-id lookup.
    bucket_refresh_interval: float = 1 * HOUR
    # Whether a join refreshes every bucket right after looking itself up (Kademlia
    # §2.3). Off, a join is the self-lookup alone, as in BitTorrent's DHT (BEP 5): the
    # far buckets fill from the queries the newcomer then receives and makes, and every
    # bucket is refreshed once bucket_refresh_interval has passed. The refresh made a
    # join about three times as costly (some 75 RPCs and Noise handshakes instead of 25
    # in a 300-node simulation) and lookups are as exact without it (tests/dht).
    refresh_on_join: bool = False
    # How often expired records are swept out.
    expiry_sweep_interval: float = 10 * 60.0

    def __post_init__(self) -> None:
        if not 1 <= self.k <= MAX_CONTACTS:
            raise ValueError(f"DhtConfig.k must be 1..{MAX_CONTACTS}")
        if not 1 <= self.alpha <= self.k:
            raise ValueError("DhtConfig.alpha must be 1..k")
        if self.disjoint_paths < 1:
            raise ValueError("DhtConfig.disjoint_paths must be at least 1")
        if self.replacement_cache_size < 0:
            raise ValueError("DhtConfig.replacement_cache_size must be >= 0")
        if self.ping_oldest_after < 0:
            raise ValueError("DhtConfig.ping_oldest_after must be >= 0")
        for name in ("ip_prefix_limit_per_bucket", "ip_prefix_limit_per_table"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"DhtConfig.{name} must be >= 1 or None")
        if not 0 < self.min_query_timeout <= self.initial_query_timeout <= self.max_query_timeout:
            raise ValueError("need 0 < min_query_timeout <= initial <= max_query_timeout")
        if self.republish_concurrency < 1:
            raise ValueError("republish_concurrency must be at least 1")
        if not 0.0 <= self.republish_spread < 1.0:
            raise ValueError("republish_spread must be in [0, 1)")
        if not 0 < self.republish_interval < self.provider_ttl:
            raise ValueError("republish_interval must be positive and below provider_ttl")
        if not 1 <= self.max_providers_per_key <= MAX_PROVIDERS:
            raise ValueError(f"DhtConfig.max_providers_per_key must be 1..{MAX_PROVIDERS}")
        if self.max_records_per_prefix is not None and self.max_records_per_prefix < 1:
            raise ValueError("DhtConfig.max_records_per_prefix must be >= 1 or None")
        for name in (
            "max_records_per_peer",
            "max_records",
            "bucket_refresh_interval",
            "expiry_sweep_interval",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"DhtConfig.{name} must be positive")

    def republish_offset(self, key: bytes) -> float:
        """How much earlier than `republish_interval` the key `key` is republished each
        time: a fraction of `republish_spread` of the interval, fixed by the key's own
        bytes, so that keys announced at one moment come due at different ones."""
        fraction = int.from_bytes(key[:4], "big") / 2**32
        return self.republish_spread * self.republish_interval * fraction
