"""A fair share of donated disk: what a chunk costs a holder, and who may still add one.

Pure rules, no I/O; node/leases.py keeps the counters they read, node/chunks.py and
node/keeper.py ask them before storing a chunk or taking a lease.

**Cost.** A chunk costs its holder more than its bytes: a file rounded up to the file
system's block, an index row, and its group record (32 bytes per sibling, kept in
SQLite, whose pages are not full). `chunk_cost` counts all of it, and at least
`MIN_CHARGE`, so that 1,500 chunks of 16 bytes with a 256-id record are charged what
they take on disk (12,886 bytes each by `du`; charged 12,800), not 24 KB.
`python -m benchmarks.quota` measures a store on disk against these charges.
The store's capacity counts costs too (node/store/base.py).

**Parties.** Every kept chunk is charged in full to each party that keeps it there:
the payer of every lease on it (the lease's key when the key's own node named the
chunk, else the node that did: node/leases.py rule 2), or, for a day after an upload
and until a lease comes, the node that stored it; and, once nobody keeps it, to those
who last did, until it is deleted. Each charge is also made to the network prefix the
request came from: /24 for IPv4, /48 for IPv6 (`network_prefix`). Thousands of
identities cost microseconds; thousands of prefixes do not. Loopback addresses have no
prefix: a testnet on one machine is many honest nodes behind 127.0.0.1.

**The rules**, for a store or a lease of `cost` new bytes from party P (key, prefix)
on a node of `capacity` whose owner keeps `owner` bytes:

| # | rule                                                            | refused as     |
|---|-----------------------------------------------------------------|----------------|
| 1 | the owner's own chunks: only the capacity bounds them            | REFUSED (full) |
| 2 | others together leave the owner's reserve free: used + cost <=   | REFUSED (full) |
|   | capacity - max(0, reserve - owner)                               |                |
| 3 | P's key keeps at most `key_share` of the open capacity (+ earned) | OVER_QUOTA     |
| 4 | P's prefix keeps at most `prefix_share` of the open capacity     | OVER_QUOTA     |

where reserve = `owner_reserve` x capacity and the open capacity is capacity -
max(owner, reserve): what is donated. An uploader refused OVER_QUOTA places the chunk
on the next node, as for any refusal: an attacker fills at most its prefix's share of
each node, and honest uploads find room on the rest.

**Room to earn more.** `earned` is added to a key's share: zero today. The next step
lets a node earn quota by storing for others, proven by the audits its peers already
make of it (node/stewardship.py); the rule has the term, the counters do not yet.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final

__all__ = [
    "BLOCK_SIZE",
    "COVER_COST",
    "DEFAULT_SHARE",
    "MIN_CHARGE",
    "QuotaSettings",
    "Usage",
    "chunk_cost",
    "network_prefix",
    "over_quota",
    "room_for_others",
]

BLOCK_SIZE: Final = 4096
"""A chunk's file is charged in whole blocks of this size (ext4's and most others')."""

ROW_COST: Final = 512
"""An index row and the lease book's rows for a chunk, beside its group record."""

ID_COST: Final = 32
"""Each sibling id of the group record (kept whole in the index row)."""

COVER_COST: Final = 256
"""Each lease a chunk is kept under costs a row of the lease book: charged to the lease's
payer on top of the chunk, so that naming one chunk under a thousand throwaway keys is
not free."""

MIN_CHARGE: Final = BLOCK_SIZE
"""No chunk costs less: even an empty one takes a block, a directory entry and rows."""


def chunk_cost(size: int, n: int) -> int:
    """What keeping a chunk of `size` bytes in a group of `n` costs on disk."""
    blocks = -(-size // BLOCK_SIZE) * BLOCK_SIZE
    return max(MIN_CHARGE, blocks + ROW_COST + ID_COST * n)


def network_prefix(host: str) -> str | None:
    """The prefix a peer at `host` is accounted under: "a.b.c.0/24" for IPv4, the /48
    for IPv6, None for loopback; a name that is not an address is its own prefix (a
    simulated network's hosts)."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return None
    bits = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{bits}", strict=False))


DEFAULT_SHARE: Final = 0.25
"""A key's, and a prefix's, share of a node's open capacity by default: an attacker
behind one prefix takes at most a quarter of each node it reaches, and an honest user
on a network of a few nodes still has a useful part of each."""


@dataclass(frozen=True, slots=True)
class QuotaSettings:
    """The shares: fractions of the open capacity, and the owner's reserve."""

    key_share: float = DEFAULT_SHARE
    prefix_share: float = DEFAULT_SHARE
    owner_reserve: float = 0.10

    def __post_init__(self) -> None:
        for name in ("key_share", "prefix_share", "owner_reserve"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, not {value}")


@dataclass(frozen=True, slots=True)
class Usage:
    """What a holder keeps, as the rules read it: every chunk's cost (trash included),
    what the owner keeps, and what one party's key and prefix keep."""

    used: int
    owner: int
    key: int
    prefix: int


def open_capacity(settings: QuotaSettings, capacity: int, owner: int) -> int:
    """What the node donates to others: capacity less the owner's use or reserve."""
    return max(0, capacity - max(owner, int(settings.owner_reserve * capacity)))


def room_for_others(settings: QuotaSettings, capacity: int, usage: Usage, cost: int) -> bool:
    """Rule 2: whether `cost` more bytes of others' chunks leave the owner's reserve."""
    headroom = max(0, int(settings.owner_reserve * capacity) - usage.owner)
    return usage.used + cost <= capacity - headroom


def over_quota(
    settings: QuotaSettings,
    capacity: int,
    usage: Usage,
    cost: int,
    *,
    has_prefix: bool,
    prefix_cost: int | None = None,
    earned: int = 0,
) -> str | None:
    """Rules 3 and 4: why `cost` more bytes for this key (and `prefix_cost`, by default
    the same, for its prefix) are over their share, or None. Nothing added is never
    over: a share that shrank refuses more, it takes nothing back."""
    donated = open_capacity(settings, capacity, usage.owner)
    key_limit = int(settings.key_share * donated) + earned
    if cost > 0 and usage.key + cost > key_limit:
        return f"this key keeps {usage.key} bytes here; its share is {key_limit}"
    prefix_limit = int(settings.prefix_share * donated)
    prefix_cost = cost if prefix_cost is None else prefix_cost
    if has_prefix and prefix_cost > 0 and usage.prefix + prefix_cost > prefix_limit:
        return f"this network prefix keeps {usage.prefix} bytes here; its share is {prefix_limit}"
    return None
