"""Leases: the signed records under which holders keep a file's chunks.

docs/PROTOCOL.md#leases. A lease says "the owner of this Ed25519 key wants the file
whose manifest is `manifest_id` kept until `expires`". Holders keep a chunk only while
some lease covers it (or, for a day, the upload that brought it), and charge its disk
cost to each key that leases it. A lease is a struct that travels as it is (ADD_LEASE
carries one):

    [manifest_id, public_key, issued, expires, signature]

and the signature is Ed25519 by `public_key` over `signed_bytes`: the 18-byte domain
`b"freehold-lease-v1\\x00"`, then manifest_id (32 bytes), public_key (32), issued and
expires (8 bytes each, big-endian, UNIX seconds). Fixed widths, nothing to canonicalise.

The rules, in the order `problem` applies them (a holder's `now` and limits are given):

| # | rule                                                          | otherwise       |
|---|---------------------------------------------------------------|-----------------|
| 1 | the signature verifies under `public_key`                      | forged          |
| 2 | `issued` is at most `now + skew`                               | from the future |
| 3 | a lease (expires > issued) is not over: `expires > now`        | expired         |
| 4 | a release (expires <= issued) is a release: always accepted    |                 |

and a holder keeps, per (key, manifest), only the record with the greatest `issued`:
an older one, replayed, changes nothing. A release ends that key's lease and nobody
else's. A holder counts a lease as lasting at most `max_length` past `issued`
(`effective_expiry`), whatever it says, so no key can book a disk for ever.

Sans-I/O: the clock is a parameter; signing takes the caller's `Identity`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Final

from protocol.identity import (
    PUBLIC_KEY_SIZE,
    SIGNATURE_SIZE,
    Identity,
    NodeId,
    verify_signature,
)
from protocol.schema import Bytes, Int

__all__ = [
    "LEASE_DOMAIN",
    "MAX_TIME",
    "Lease",
    "effective_expiry",
    "make_lease",
    "problem",
]

LEASE_DOMAIN: Final = b"freehold-lease-v1\x00"
"""What every lease signature starts with, so that no other signed text is a lease."""

MAX_TIME: Final = 2**64 - 1
"""Largest `issued` or `expires` (uint64 seconds)."""


@dataclass(frozen=True, slots=True)
class Lease:
    """A signed wish that the file `manifest_id` be kept until `expires` (UNIX seconds);
    `expires <= issued` makes it a release of the key's lease on that file."""

    manifest_id: Annotated[bytes, Bytes(exact_len=32)]
    public_key: Annotated[bytes, Bytes(exact_len=PUBLIC_KEY_SIZE)]
    issued: Annotated[int, Int(min=0, max=MAX_TIME)]
    expires: Annotated[int, Int(min=0, max=MAX_TIME)]
    signature: Annotated[bytes, Bytes(exact_len=SIGNATURE_SIZE)]

    @property
    def is_release(self) -> bool:
        """Whether this record gives the lease up rather than grants it."""
        return self.expires <= self.issued

    @property
    def holder(self) -> NodeId:
        """The id of the key's node: what the lease is charged to."""
        return NodeId.from_public_key(self.public_key)

    def signed_bytes(self) -> bytes:
        """What the signature covers (the module docstring gives the layout)."""
        return signed_bytes(self.manifest_id, self.public_key, self.issued, self.expires)

    def verifies(self) -> bool:
        """Whether the signature is `public_key`'s over these fields."""
        return verify_signature(self.public_key, self.signed_bytes(), self.signature)


def signed_bytes(manifest_id: bytes, public_key: bytes, issued: int, expires: int) -> bytes:
    """The bytes a lease's signature covers."""
    return (
        LEASE_DOMAIN
        + manifest_id
        + public_key
        + issued.to_bytes(8, "big")
        + expires.to_bytes(8, "big")
    )


def make_lease(identity: Identity, manifest_id: bytes, issued: int, expires: int) -> Lease:
    """A lease (or, with `expires <= issued`, a release) signed by `identity`."""
    signature = identity.sign(signed_bytes(manifest_id, identity.public_key, issued, expires))
    return Lease(manifest_id, identity.public_key, issued, expires, signature)


def problem(lease: Lease, now: float, *, skew: float) -> str | None:
    """Why a holder whose clock reads `now` refuses `lease`, or None to take it."""
    if not lease.verifies():
        return "its signature does not verify: the lease is forged or damaged"
    if lease.issued > now + skew:
        return f"it was issued {lease.issued - now:.0f} s in the future of this holder's clock"
    if not lease.is_release and lease.expires <= now:
        return f"it expired {now - lease.expires:.0f} s ago"
    return None


def effective_expiry(lease: Lease, max_length: float) -> float:
    """When a holder lets the lease end: its `expires`, but at most `max_length` seconds
    after it was issued (and `issued` itself for a release)."""
    if lease.is_release:
        return float(lease.issued)
    return float(min(lease.expires, lease.issued + max_length))
