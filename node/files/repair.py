"""Repairing a file: its lost chunks rebuilt and placed anew. Needs no key.

The verify capability is enough (DESIGN.md#keeping-files-alive-without-their-owner):
zfec works on ciphertext, so any k of a segment's chunks rebuild the others, with the
same bytes and the same ids. `repair_file`, for every segment:

1. audits its holders as `check` does (node/files/checking.py): a chunk counts as held
   only if a holder proved it in this run;
2. with all n proven, does nothing; with fewer than k, cannot help (the segment is
   lost, says so);
3. otherwise fetches k proven chunks whole (each hashed against its id), rebuilds the
   missing ones (`protocol.encoding.rebuild_chunks`, which checks each rebuilt chunk
   against its id in the manifest), and places each, with the segment's group record,
   on the node closest to its id among those near the group key that hold no chunk of
   the segment: the placement rule of node/files/locate.py, holders of siblings left
   out. A node that refuses is replaced by the next.

The manifest, and the parts and index of a large one, are kept at n proven copies the
same way: missing copies are stored on the nodes nearest their ids that lack one.
`RepairCounters` (on the node's `FileNetwork`) count what repairs moved, for `status`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from dht.contact import Contact
from node.errors import NodeError, Unreadable
from node.files.checking import Group, SegmentReport, audit_group, prove_whole
from node.files.locate import candidates, closest
from node.files.network import FileNetwork
from node.files.retrieval import fetch_part_list, fetch_stored
from protocol.capability import ReadCapability, VerifyCapability
from protocol.chunk import GroupRecord
from protocol.encoding import rebuild_group
from protocol.errors import ProtocolError
from protocol.identity import NodeId
from protocol.lease import Lease
from protocol.manifest import Manifest
from protocol.manifest_index import ManifestIndex, join_parts, read_root

__all__ = ["RepairReport", "SegmentRepair", "keep_whole", "repair_file", "repair_group"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SegmentRepair:
    """What repair found and did for one segment."""

    index: int
    live_before: int
    rebuilt: int
    """Chunks rebuilt and stored on a new holder."""
    live_after: int
    problem: str = ""
    """Why the segment could not be made whole, if it was not."""


@dataclass(frozen=True, slots=True)
class RepairReport:
    """What `repair_file` did, segment by segment; `found` as for a check."""

    k: int
    n: int
    found: bool
    manifest_copies_added: int = 0
    segments: tuple[SegmentRepair, ...] = ()
    bytes_fetched: int = 0
    bytes_stored: int = 0

    @property
    def healthy(self) -> bool:
        return self.found and all(segment.live_after >= self.n for segment in self.segments)

    @property
    def readable(self) -> bool:
        return self.found and all(segment.live_after >= self.k for segment in self.segments)


@dataclass(slots=True)
class _Moved:
    fetched: int = 0
    stored: int = 0
    manifest_copies: int = 0
    segments: list[SegmentRepair] = field(default_factory=list)


async def repair_file(
    net: FileNetwork, capability: VerifyCapability | ReadCapability
) -> RepairReport:
    """Audit every segment of the file and rebuild what is missing (module docstring)."""
    params = net.settings.params
    manifest_id = capability.manifest_id
    try:
        root_bytes = await fetch_stored(net, manifest_id, "manifest")
    except Unreadable:
        return RepairReport(params.k, params.n, False)
    moved = _Moved()
    root = read_root(root_bytes, manifest_id)
    await keep_whole(net, manifest_id, root_bytes, _copies(net, root), moved)
    if isinstance(root, ManifestIndex):
        parts = await fetch_part_list(net, root)
        for part_id, data in zip(root.part_ids, parts, strict=True):
            await keep_whole(net, part_id, data, _copies(net, root), moved)
        manifest = join_parts(root, parts)
    else:
        manifest = root
    for index in range(manifest.segment_count):
        moved.segments.append(await _repair_segment(net, manifest, index, moved))
    counters = net.repairs
    counters.segments_checked += len(moved.segments)
    counters.segments_repaired += sum(1 for s in moved.segments if s.rebuilt)
    counters.chunks_rebuilt += sum(s.rebuilt for s in moved.segments)
    counters.bytes_moved += moved.fetched + moved.stored
    return RepairReport(
        manifest.params.k,
        manifest.params.n,
        True,
        moved.manifest_copies,
        tuple(moved.segments),
        moved.fetched,
        moved.stored,
    )


def _copies(net: FileNetwork, root: Manifest | ManifestIndex) -> int:
    """How many copies of a manifest chunk to keep: the file's n (placement's)."""
    return root.params.n if isinstance(root, Manifest) else net.settings.params.n


async def keep_whole(
    net: FileNetwork,
    identifier: bytes,
    data: bytes,
    copies: int,
    moved: _Moved | None = None,
    *,
    leases: Sequence[Lease] = (),
) -> int:
    """Store `data` (a manifest chunk) on more nodes near its id until `copies` prove
    it; the number of copies added. Each new holder is sent `leases` for it."""
    moved = moved if moved is not None else _Moved()
    before = moved.manifest_copies
    proven = await prove_whole(net, identifier, data)
    if len(proven) >= copies:
        return 0
    holding = {contact.node_id for contact in proven}
    group = GroupRecord.single(identifier)
    for contact in await _fresh_candidates(net, identifier, holding):
        if len(holding) >= copies:
            break
        try:
            await net.client.store(contact, data, group)
        except NodeError as exc:
            logger.info("%s did not take a manifest copy: %s", contact.node_id.short(), exc)
            continue
        holding.add(contact.node_id)
        moved.manifest_copies += 1
        moved.stored += len(data)
        await carry_leases(net, contact, leases, identifier)
    return moved.manifest_copies - before


async def _fresh_candidates(net: FileNetwork, key: bytes, excluded: set[NodeId]) -> list[Contact]:
    """The nodes near `key` a lookup finds (this one included), closest first, without
    `excluded` and peers proven lying."""
    return [
        contact
        for contact in await candidates(net, key)
        if contact.node_id not in excluded and not net.liars.avoided(contact.node_id)
    ]


async def _repair_segment(
    net: FileNetwork, manifest: Manifest, index: int, moved: _Moved
) -> SegmentRepair:
    group = Group.of_segment(manifest, index)
    return await repair_group(net, group, await audit_group(net, group), moved)


async def carry_leases(
    net: FileNetwork, contact: Contact, leases: Sequence[Lease], chunk_id: bytes
) -> None:
    """Send the new holder of `chunk_id` the leases it is kept under (a repairer's are
    those of its own chunk of the group: the same file's). A refusal is logged: the
    owner's next renewal reaches the new holder anyway."""
    for lease in leases:
        try:
            await net.client.add_lease(contact, lease, [chunk_id])
        except NodeError as exc:
            logger.info(
                "%s did not take a lease a repair carried: %s", contact.node_id.short(), exc
            )


async def repair_group(
    net: FileNetwork,
    group: Group,
    report: SegmentReport,
    moved: _Moved | None = None,
    *,
    leases: Sequence[Lease] = (),
) -> SegmentRepair:
    """Rebuild what `report` (an audit of `group`) found missing, and place it (module
    rule 3). Works from a group record as well as from a manifest: no key either way.
    Each new holder is sent `leases` for its chunk."""
    moved = moved if moved is not None else _Moved()
    k, n, ids, index = group.k, group.n, group.chunk_ids, group.index
    if report.live >= n:
        return SegmentRepair(index, report.live, 0, report.live)
    if report.live < k:
        return SegmentRepair(
            index, report.live, 0, report.live, f"only {report.live} of the {k} chunks needed"
        )
    sources = await _fetch_k(net, ids, report, k, moved)
    if len(sources) < k:
        return SegmentRepair(
            index, report.live, 0, report.live, "proven holders did not give k chunks whole"
        )
    # Each block number needs a holder; a repeated id (k = 1) needs one per number.
    missing: list[int] = []
    for identifier in dict.fromkeys(ids):
        numbers = [number for number, other in enumerate(ids) if other == identifier]
        missing += numbers[len(report.holders.get(identifier, ())) :]
    have = {ids.index(identifier): data for identifier, data in sources}
    try:
        rebuilt = await net.codec(rebuild_group, k, n, ids, have, missing)
    except ProtocolError as exc:  # the ids do not make one segment
        return SegmentRepair(index, report.live, 0, report.live, f"cannot rebuild: {exc}")
    holding = {contact.node_id for holders in report.holders.values() for contact in holders}
    nearby = await _fresh_candidates(net, ids[0], holding)
    placed = 0
    for number, chunk in zip(missing, rebuilt, strict=True):
        record = GroupRecord(k, n, number, ids)
        while True:
            contact = closest([c for c in nearby if c.node_id not in holding], chunk.chunk_id)
            if contact is None:
                break
            holding.add(contact.node_id)  # one chunk of the segment per node
            try:
                await net.client.store(contact, chunk.data, record)
            except NodeError as exc:
                logger.info("%s did not take a rebuilt chunk: %s", contact.node_id.short(), exc)
                continue
            placed += 1
            moved.stored += len(chunk.data)
            await carry_leases(net, contact, leases, chunk.chunk_id)
            break
    problem = "" if placed == len(missing) else "no node near the group key took every chunk"
    return SegmentRepair(index, report.live, placed, report.live + placed, problem)


async def _fetch_k(
    net: FileNetwork, ids: Sequence[bytes], report: SegmentReport, k: int, moved: _Moved
) -> list[tuple[bytes, bytes]]:
    """k proven chunks of the segment, fetched whole and hashed, as (id, bytes)."""
    got: dict[bytes, bytes] = {}
    for identifier, holders in report.holders.items():
        for contact in holders:
            if len(got) >= k:
                break
            try:
                fetched = await net.client.fetch(contact, identifier)
            except NodeError:
                continue
            moved.fetched += len(fetched.data)
            if fetched.digest == identifier:
                got[identifier] = fetched.data
                break
            net.liars.caught(contact.node_id, "served bytes that are not the chunk asked for")
        if len(got) >= k:
            break
    return list(got.items())
