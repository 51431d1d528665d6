"""The one exception hierarchy of dht/.

Every error the DHT raises on purpose is a `DhtError`. A record the store refuses is a
`RecordRejected` (the service answers the peer with an ERROR and carries on); a
persistence failure is a `StorageError`, so that no sqlite3 exception leaks out.
"""

from __future__ import annotations

__all__ = [
    "BudgetFull",
    "DhtError",
    "KeyFull",
    "PrefixQuotaExceeded",
    "QuotaExceeded",
    "RecordRejected",
    "RpcFailed",
    "StorageError",
]


class DhtError(Exception):
    """Base class of every error raised by dht/."""


class RecordRejected(DhtError):
    """A provider record was refused; the store is unchanged."""


class QuotaExceeded(RecordRejected):
    """The peer already holds as many records here as `max_records_per_peer` allows."""


class PrefixQuotaExceeded(QuotaExceeded):
    """The peer's address prefix (/24, /48) already holds as many records here as
    `max_records_per_prefix` allows."""


class BudgetFull(RecordRejected):
    """The node holds `max_records` records, none of them from a prefix with more
    records than the newcomer's: nothing may make room for it."""


class KeyFull(RecordRejected):
    """The key already has `max_providers_per_key` unexpired providers."""


class StorageError(DhtError):
    """The DHT database could not be opened, read or written (missing, corrupt, foreign
    or of an unsupported schema version)."""


class RpcFailed(DhtError):
    """A request to a peer failed: unreachable, no answer in time, an ERROR answer, or
    an answer that is not what the request calls for. To the DHT these are all the
    same: that contact did not help."""
