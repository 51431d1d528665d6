"""Checking a file: which of its chunks holders can prove they have, now. Needs no key.

A chunk counts as live only if a holder passed an audit of it in this run
(protocol/audit.py): saying yes to HAS_CHUNKS is not enough. For each segment checked:

1. the nodes near its group key that our routing table knows are asked which of its
   chunks they hold (HAS_CHUNKS, node/files/locate.py); if the audit below does not
   prove all n chunks from them, a lookup and the provider records find more, and
   everyone found is audited afresh;
2. every holder that said yes is audited (AUDIT_CHUNKS) for those chunks, at offsets
   drawn afresh for the segment; our own chunks are read whole, checked, and anchor the
   codeword;
3. the judge finds the segment's codeword: answers that fit it pass, answers that do
   not are lies. When it cannot decide (fewer than k + 1 witnesses, or no clear
   majority), every claimed chunk is fetched whole and hashed instead: the last word,
   at the cost of the chunks.

The manifest (and the parts and index of a large one) is checked the same way against
its own bytes, which the checker fetched and verified first. Holders caught lying are
recorded (node/liars.py). On a file of more than `SAMPLE_SEGMENTS` segments a random
sample of that many is checked, unless `full`; the report says which.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import trio

from dht.contact import Contact
from node.errors import NodeError, Unreadable
from node.files.locate import locate, locate_known
from node.files.network import FileNetwork
from node.files.retrieval import fetch_part_list, fetch_stored
from protocol.audit import AUDIT_LENGTH, AUDIT_RANGES, Answer, choose_offsets, judge, stripe
from protocol.capability import ReadCapability, VerifyCapability
from protocol.identity import NodeId
from protocol.manifest import Manifest
from protocol.manifest_index import ManifestIndex, join_parts, read_root

__all__ = ["SAMPLE_SEGMENTS", "FileReport", "SegmentReport", "check_file"]

logger = logging.getLogger(__name__)

SAMPLE_SEGMENTS: Final = 64
"""Segments checked of a larger file, unless the check is full."""
SEGMENTS_CHECKING: Final = 4
"""Segments checked at once."""
PARTS_CHECKING: Final = 8
"""Manifest parts checked at once (each is placed near its own id: one lookup each)."""


@dataclass(frozen=True, slots=True)
class SegmentReport:
    """One segment as the audits found it."""

    index: int
    live: int
    """Distinct chunks of the segment a holder proved it has, in this run."""
    missing: int
    """n - live: chunks nobody proved."""
    lying: tuple[NodeId, ...]
    """Holders that answered for a chunk of the segment with bytes that are not it, and
    holders that claim chunks of it but were caught lying before (not asked again)."""
    fetched: bool
    """Settled by fetching whole chunks: the audit alone could not decide."""


@dataclass(frozen=True, slots=True)
class FileReport:
    """What a check found. `found` is False when no node gave a manifest under the
    capability's id (never stored, or every copy gone); then nothing else is known."""

    k: int
    n: int
    found: bool
    manifest_holders: int
    """The fewest holders that proved any chunk of the stored manifest."""
    segment_count: int
    segments: tuple[SegmentReport, ...]
    """The segments checked, by index: all of them, or a sample."""

    @property
    def sampled(self) -> bool:
        return len(self.segments) < self.segment_count

    @property
    def readable(self) -> bool:
        return (
            self.found
            and self.manifest_holders > 0
            and all(segment.live >= self.k for segment in self.segments)
        )

    @property
    def healthy(self) -> bool:
        return self.readable and all(segment.live >= self.n for segment in self.segments)


async def check_file(
    net: FileNetwork, capability: VerifyCapability | ReadCapability, *, full: bool = False
) -> FileReport:
    """Audit the file's holders (module docstring)."""
    params = net.settings.params
    manifest_id = capability.manifest_id
    try:
        root_bytes = await fetch_stored(net, manifest_id, "manifest")
    except Unreadable:
        return FileReport(params.k, params.n, False, 0, 0, ())
    root = read_root(root_bytes, manifest_id)
    holders = await _prove_whole(net, manifest_id, root_bytes)
    if isinstance(root, ManifestIndex):
        try:
            parts = await fetch_part_list(net, root)
        except Unreadable:  # a part is gone: the file cannot be read, whatever its chunks
            return FileReport(params.k, params.n, True, 0, 0, ())
        manifest = join_parts(root, parts)
        holders = min(holders, await _prove_parts(net, root, parts))
    else:
        manifest = root
    count = manifest.segment_count
    chosen = list(range(count))
    if not full and count > SAMPLE_SEGMENTS:
        picker = random.Random(net.random_bytes(16))
        chosen = sorted(picker.sample(chosen, SAMPLE_SEGMENTS))
    reports: dict[int, SegmentReport] = {}
    limit = trio.Semaphore(SEGMENTS_CHECKING)

    async def check(index: int) -> None:
        async with limit:
            reports[index] = await audit_segment(net, manifest, index)

    async with trio.open_nursery() as nursery:
        for index in chosen:
            nursery.start_soon(check, index)
    segments = tuple(reports[index] for index in chosen)
    return FileReport(manifest.params.k, manifest.params.n, True, holders, count, segments)


# ------------------------------------------------------------------------ segments


async def audit_segment(net: FileNetwork, manifest: Manifest, index: int) -> SegmentReport:
    """Audit the claimed holders of segment `index` (module rules 1-3): first those our
    routing table knows near its group key, with no lookup (a healthy file's holders
    are there in a network we know well); only if they do not prove all n chunks, a
    lookup and the provider records find more, and everyone found is audited afresh."""
    n = manifest.params.n
    ids = manifest.segment_chunk_ids(index)
    known = await locate_known(net, ids)
    first = await _audit_round(net, manifest, index, known)
    if first.live >= n:
        return first
    second = await _audit_round(net, manifest, index, await locate(net, ids))
    lying = tuple(sorted(set(first.lying) | set(second.lying), key=lambda node: node.value))
    best = second if second.live >= first.live else first
    return SegmentReport(index, best.live, best.missing, lying, best.fetched)


async def _audit_round(
    net: FileNetwork, manifest: Manifest, index: int, located: Sequence[Sequence[Contact]]
) -> SegmentReport:
    """Audit the holders `located` names for each chunk, at fresh offsets, and judge."""
    k, n = manifest.params.k, manifest.params.n
    ids = manifest.segment_chunk_ids(index)
    block = manifest.block_size(index)
    length = min(AUDIT_LENGTH, block)
    offsets = choose_offsets(net.random_bytes, block, count=AUDIT_RANGES, length=length)
    claimed: dict[NodeId, tuple[Contact, list[int]]] = {}
    first_number: dict[bytes, int] = {}
    for number, identifier in enumerate(ids):
        first_number.setdefault(identifier, number)
    known_liars: set[NodeId] = set()  # caught before: their claims are not even asked
    for number, found in enumerate(located):
        if first_number[ids[number]] != number:
            continue  # a repeated id (k = 1, or blocks of zeros): one chunk, asked once
        for contact in found:
            if net.liars.avoided(contact.node_id):
                known_liars.add(contact.node_id)
            else:
                claimed.setdefault(contact.node_id, (contact, []))[1].append(number)
    answers: list[Answer[tuple[NodeId, int]]] = []

    async def ask(contact: Contact, numbers: list[int]) -> None:
        try:
            audited = await net.client.audit(contact, [ids[j] for j in numbers], offsets, length)
        except NodeError as exc:
            logger.debug("%s did not answer an audit: %s", contact.node_id.short(), exc)
            return
        for number, data in zip(numbers, audited.answers, strict=True):
            if data is not None:
                key = (contact.node_id, number)
                answers.append(Answer(key, contact.node_id, number, data, audited.trusted))

    async with trio.open_nursery() as nursery:
        for contact, numbers in claimed.values():
            nursery.start_soon(ask, contact, numbers)
    verdict = judge(k, n, answers, expected_length=len(offsets) * length)
    passed, failed = set(verdict.passed), set(verdict.failed)
    if not verdict.decided:
        undecided = [answer.key for answer in answers if answer.key not in failed]
        contacts = {node_id: contact for node_id, (contact, _) in claimed.items()}
        good, bad = await _fetch_whole(net, ids, undecided, contacts)
        passed, failed = good, failed | bad
    live_ids = {ids[number] for _, number in passed}
    caught = {node_id for node_id, _ in failed}
    for node_id in caught:
        net.liars.caught(node_id, f"failed an audit of segment {index} of a file")
    lying = sorted(caught | known_liars, key=lambda node_id: node_id.value)
    live = sum(1 for identifier in ids if identifier in live_ids)
    return SegmentReport(index, live, n - live, tuple(lying), not verdict.decided)


async def _fetch_whole(
    net: FileNetwork,
    ids: Sequence[bytes],
    keys: Sequence[tuple[NodeId, int]],
    contacts: dict[NodeId, Contact],
) -> tuple[set[tuple[NodeId, int]], set[tuple[NodeId, int]]]:
    """Fetch each claimed chunk whole and hash it: (those that are the chunk, those that
    are not). A holder that does not answer is neither."""
    good: set[tuple[NodeId, int]] = set()
    bad: set[tuple[NodeId, int]] = set()
    limit = trio.Semaphore(SEGMENTS_CHECKING)

    async def fetch(key: tuple[NodeId, int]) -> None:
        node_id, number = key
        async with limit:
            try:
                got = await net.client.fetch(contacts[node_id], ids[number])
            except NodeError:
                return
        (good if got.digest == ids[number] else bad).add(key)

    async with trio.open_nursery() as nursery:
        for key in keys:
            nursery.start_soon(fetch, key)
    return good, bad


# ------------------------------------------------------------------------ manifest


async def _prove_whole(net: FileNetwork, identifier: bytes, data: bytes) -> int:
    """How many of the nodes that say they hold chunk `identifier` (a manifest, an
    index or a part: stored whole) pass an audit against `data`, its verified bytes."""
    length = min(AUDIT_LENGTH, len(data))
    offsets = choose_offsets(net.random_bytes, len(data), length=length)
    expected = stripe(data, offsets, length)
    holders = [
        contact
        for contact in (await locate(net, [identifier]))[0]
        if not net.liars.avoided(contact.node_id)
    ]
    proven = 0

    async def ask(contact: Contact) -> None:
        nonlocal proven
        try:
            audited = await net.client.audit(contact, [identifier], offsets, length)
        except NodeError:
            return
        answer = audited.answers[0]
        if answer == expected:
            proven += 1
        elif answer is not None:
            net.liars.caught(contact.node_id, "failed an audit of a manifest")

    async with trio.open_nursery() as nursery:
        for contact in holders:
            nursery.start_soon(ask, contact)
    return proven


async def _prove_parts(net: FileNetwork, index: ManifestIndex, parts: Sequence[bytes]) -> int:
    """The fewest proven holders of any part of a manifest stored in parts."""
    counts: dict[bytes, int] = {}
    limit = trio.Semaphore(PARTS_CHECKING)

    async def prove(part_id: bytes, data: bytes) -> None:
        async with limit:
            counts[part_id] = await _prove_whole(net, part_id, data)

    async with trio.open_nursery() as nursery:
        for part_id, data in zip(index.part_ids, parts, strict=True):
            if part_id not in counts:
                counts[part_id] = 0
                nursery.start_soon(prove, part_id, data)
    return min(counts.values())
