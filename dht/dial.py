"""Which addresses from peers' answers a node will dial.

A peer's NODES or PROVIDERS answer names contacts by host and port, and a node that
dials whatever it is told can be made to resolve host names, knock on its own loopback
services or its LAN's, or open connection after connection to chosen ports. The rules,
for an address that came from a peer (never for what the operator configured):

| # | the host is                                   | dialled                              |
|---|-----------------------------------------------|--------------------------------------|
| 1 | not an IP literal (a host name)               | never                                |
| 2 | unspecified, multicast, link-local, reserved  | never                                |
| 3 | loopback (127/8, ::1)                         | only if this node lives on loopback  |
| 4 | private (10/8, 172.16/12, 192.168/16,         | only if this node lives on a private |
|   | fc00::/7, 100.64/10)                          | network                              |
| 5 | anything else (public)                        | yes                                  |

A node "lives on" loopback or a private network when the address it listens on, or one
of its bootstrap addresses, is of that kind: a testnet on one machine, a test network
on a LAN, a simulation. And from one answer a node takes at most `k` contacts (honest
nodes send k = 20; the wire allows 32), none whose NodeId misses the network's proof of
work (`id_difficulty`, protocol/identity.py): the handshake would refuse it anyway, so
it is not worth a dial, nor a place in a lookup.

Sans-I/O: pure functions of strings.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from protocol.identity import NodeId, meets_difficulty

__all__ = ["DialPolicy", "Scope", "scope_of"]


class Scope(Enum):
    """What kind of address a host is (the rules' rows)."""

    NAME = "a host name"
    NEVER = "an address nobody dials"
    LOOPBACK = "loopback"
    PRIVATE = "private"
    PUBLIC = "public"


_SHARED = ipaddress.IPv4Network("100.64.0.0/10")  # carrier-grade NAT


def scope_of(host: str) -> Scope:
    """The kind of address `host` is."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return Scope.NAME
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return Scope.LOOPBACK
    if address.is_unspecified or address.is_multicast or address.is_link_local:
        return Scope.NEVER
    if address.is_reserved:
        return Scope.NEVER
    if address.is_private or (isinstance(address, ipaddress.IPv4Address) and address in _SHARED):
        return Scope.PRIVATE
    if not address.is_global:
        return Scope.NEVER
    return Scope.PUBLIC


@dataclass(frozen=True, slots=True)
class DialPolicy:
    """The rules above for a node that lives in `home` scopes, on a network whose
    NodeIds carry `id_difficulty` bits of proof of work."""

    home: frozenset[Scope]
    id_difficulty: int = 0

    @classmethod
    def for_node(cls, hosts: Iterable[str], *, id_difficulty: int = 0) -> DialPolicy:
        """The policy of a node listening on, and bootstrapping through, `hosts`."""
        return cls(frozenset(scope_of(host) for host in hosts), id_difficulty)

    def allows(self, host: str, node_id: bytes | None = None) -> bool:
        """Whether a contact at `host` (with id `node_id`, if given), named by a peer,
        may be dialled."""
        if node_id is not None and not meets_difficulty(NodeId(node_id), self.id_difficulty):
            return False
        scope = scope_of(host)
        if scope is Scope.PUBLIC:
            return True
        if scope in (Scope.LOOPBACK, Scope.PRIVATE):
            return scope in self.home
        return False
