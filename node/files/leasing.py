"""Sending a file's lease to its holders: after a put, to renew, to give it up.

docs/PROTOCOL.md#leases. A lease names the manifest; a holder keeps the chunks that an
ADD_LEASE names under it. So the leaser has to reach, for every chunk of the file (its
segments' chunks, and the manifest, with its parts if it has any), the nodes that hold
it:

- right after a put, the placement says who took what (`send_lease`), with no lookup;
- to renew, to add a lease of one's own with the verify capability, or to release one,
  `lease_file` fetches the manifest, asks who holds each group's chunks (HAS_CHUNKS near
  the group key, then provider records, as a check does: node/files/locate.py), and
  sends each holder one ADD_LEASE per `MAX_LEASE_CHUNKS` of the chunks it holds.

What it promises: a holder that does not answer or refuses is left out and counted; the
round says how many of the file's chunks at least one holder now keeps under the
lease, so the owner knows whether to try again soon (node/renewal.py).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import trio

from dht.contact import Contact
from node.errors import NodeError
from node.files.locate import locate
from node.files.network import FileNetwork
from node.files.retrieval import fetch_parts, fetch_root
from protocol.identity import NodeId
from protocol.lease import Lease
from protocol.manifest_index import ManifestIndex
from protocol.messages import MAX_LEASE_CHUNKS

__all__ = ["LeaseRound", "lease_file", "send_lease"]

logger = logging.getLogger(__name__)

# Groups located at once while leasing a file, and ADD_LEASEs in flight.
GROUPS_LOCATING: Final = 4
LEASES_IN_FLIGHT: Final = 8

Holdings = Mapping[NodeId, tuple[Contact, Sequence[bytes]]]


@dataclass(slots=True)
class LeaseRound:
    """What one round of ADD_LEASEs for a file achieved."""

    chunks: int = 0
    """Distinct chunks of the file."""
    covered: set[bytes] = field(default_factory=set)
    """The chunks at least one holder took the lease for."""
    holders: int = 0
    """Holders that took it for at least one chunk."""
    refusals: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return len(self.covered) >= self.chunks


async def send_lease(net: FileNetwork, lease: Lease, holdings: Holdings) -> LeaseRound:
    """Send `lease` to each holder for the chunks it holds."""
    result = LeaseRound(chunks=len({c for _, ids in holdings.values() for c in ids}))
    limit = trio.Semaphore(LEASES_IN_FLIGHT)

    async def send(contact: Contact, ids: Sequence[bytes]) -> None:
        took = False
        for start in range(0, len(ids), MAX_LEASE_CHUNKS):
            batch = list(dict.fromkeys(ids[start : start + MAX_LEASE_CHUNKS]))
            try:
                async with limit:
                    flags = await net.client.add_lease(contact, lease, batch)
            except NodeError as exc:
                result.refusals.append(str(exc))
                logger.info("%s did not take a lease: %s", contact.node_id.short(), exc)
                return
            for chunk_id, flag in zip(batch, flags, strict=True):
                if flag:
                    result.covered.add(chunk_id)
                    took = True
        result.holders += took

    async with trio.open_nursery() as nursery:
        for contact, ids in holdings.values():
            nursery.start_soon(send, contact, ids)
    return result


async def lease_file(net: FileNetwork, manifest_id: bytes, lease: Lease) -> LeaseRound:
    """Find every holder of the file's chunks and send them `lease` (module docstring).
    Raises `Unreadable` when the manifest cannot be fetched."""
    root = await fetch_root(net, manifest_id)
    groups: list[list[bytes]] = [[manifest_id]]
    if isinstance(root, ManifestIndex):
        groups += [[part] for part in root.part_ids]
        manifest = await fetch_parts(net, root)
    else:
        manifest = root
    groups += [list(manifest.segment_chunk_ids(i)) for i in range(manifest.segment_count)]
    holdings: dict[NodeId, tuple[Contact, list[bytes]]] = {}
    limit = trio.Semaphore(GROUPS_LOCATING)

    async def find(ids: list[bytes]) -> None:
        async with limit:
            found = await locate(net, ids, every_provider=len(ids) == 1)
        for chunk_id, contacts in zip(ids, found, strict=True):
            for contact in contacts:
                holdings.setdefault(contact.node_id, (contact, []))[1].append(chunk_id)

    async with trio.open_nursery() as nursery:
        for ids in groups:
            nursery.start_soon(find, ids)
    result = await send_lease(net, lease, holdings)
    result.chunks = len({c for ids in groups for c in ids})
    return result
