"""Checking a file: which of its chunks holders can prove they have, now. Needs no key.

A chunk counts as live only if a holder proved it in this run (protocol/audit.py):
saying yes to HAS_CHUNKS is not enough. For each segment checked:

1. the nodes near its group key that our routing table knows, then those near each
   chunk not found yet, are asked which of its chunks they hold (HAS_CHUNKS,
   node/files/locate.py); if what follows does not prove all n chunks, a lookup and
   the provider records find more, and everyone found is audited afresh;
2. every holder that said yes is audited (AUDIT_CHUNKS) for those chunks, at offsets
   drawn afresh; our own chunks are read whole, checked, and are trusted answers;
3. the judge's verdict is taken as it is only when it is unanimous (every answer fits
   a codeword with k + 1 witnesses) or anchored by k of our own chunks;
4. anything else (a dissent, or no decision) is anchored: k chunks are fetched whole
   and hashed, the segment's n chunks rebuilt from them, and every answer judged
   against the real bytes. A holder is proven lying only by bytes that do not hash to
   their id, an answer of the wrong length, or an answer that contradicts an anchored
   codeword; if the manifest's ids do not make one segment (a crafted capability),
   nobody is blamed.

The manifest (and the parts and index of a large one) is audited against its own
bytes, which the checker fetched and verified first. Holders proven lying are recorded
(node/liars.py). On a file of more than `SAMPLE_SEGMENTS` segments a random sample of
that many is checked, unless `full`; the report says which.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final

import trio

from dht.contact import Contact
from node.errors import NodeError, Unreadable
from node.files.locate import locate, locate_known
from node.files.network import FileNetwork
from node.files.retrieval import fetch_part_list, fetch_stored
from protocol.audit import AUDIT_LENGTH, AUDIT_RANGES, Answer, choose_offsets, judge, stripe
from protocol.capability import ReadCapability, VerifyCapability
from protocol.chunk import GroupRecord
from protocol.encoding import rebuild_group
from protocol.errors import ProtocolError
from protocol.identity import NodeId
from protocol.manifest import Manifest
from protocol.manifest_index import ManifestIndex, join_parts, read_root
from protocol.messages import MAX_AUDIT_CHUNKS

__all__ = [
    "SAMPLE_SEGMENTS",
    "FileReport",
    "Group",
    "SegmentReport",
    "audit_group",
    "audit_segment",
    "audit_whole",
    "check_file",
    "prove_whole",
]

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
    holders: Mapping[bytes, frozenset[Contact]] = field(default_factory=dict, compare=False)
    """Each chunk id proven, and the holders that proved it (for repair)."""
    lied_about: frozenset[int] = frozenset()
    """Block numbers a holder proven lying claimed (for stewards: lost at once)."""


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

    def summary(self) -> dict[str, Any]:
        """The report as JSON-ready values (the control socket's and the web page's)."""
        return {
            "k": self.k,
            "n": self.n,
            "found": self.found,
            "manifest_holders": self.manifest_holders,
            "segment_count": self.segment_count,
            "segments": [
                {
                    "index": segment.index,
                    "live": segment.live,
                    "missing": segment.missing,
                    "lying": [node_id.hex() for node_id in segment.lying],
                    "fetched": segment.fetched,
                }
                for segment in self.segments
            ],
            "sampled": self.sampled,
            "readable": self.readable,
            "healthy": self.healthy,
        }


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
    holders = len(await prove_whole(net, manifest_id, root_bytes))
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


@dataclass(frozen=True, slots=True)
class Group:
    """What an audit needs of one segment: its k-of-n, its chunk ids by block number
    and their size. A manifest gives it (`of_segment`), and so does any holder's group
    record with its own chunk's size: no manifest, no key."""

    k: int
    n: int
    chunk_ids: tuple[bytes, ...]
    block_size: int
    index: int = 0
    """The segment's index in its file, when known (for messages)."""

    @classmethod
    def of_segment(cls, manifest: Manifest, index: int) -> Group:
        params = manifest.params
        ids = manifest.segment_chunk_ids(index)
        return cls(params.k, params.n, ids, manifest.block_size(index), index)

    @classmethod
    def of_record(cls, record: GroupRecord, block_size: int) -> Group:
        return cls(record.k, record.n, record.chunk_ids, block_size)


async def audit_segment(net: FileNetwork, manifest: Manifest, index: int) -> SegmentReport:
    """Audit the claimed holders of segment `index` (`audit_group`)."""
    return await audit_group(net, Group.of_segment(manifest, index))


async def audit_group(
    net: FileNetwork,
    group: Group,
    known: Mapping[bytes, Sequence[Contact]] | None = None,
    *,
    enough: int | None = None,
) -> SegmentReport:
    """Audit the claimed holders of a group (module rules 1-4), in rounds, until
    `enough` chunks (default: all n) are proven. With `known` (each chunk id's holders
    proven last time: a steward's), those are audited first, with neither lookup nor
    HAS_CHUNKS. Then those our routing table knows near its group key, with no lookup
    (a healthy file's holders are there in a network we know well); last, a lookup and
    the provider records find more, and everyone found is audited afresh. What any
    round proved counts."""
    n, ids, index = group.n, group.chunk_ids, group.index
    wanted = n if enough is None else min(n, enough)
    rounds: list[_Round] = []
    if known:
        located = [list(known.get(identifier, ())) for identifier in ids]
        rounds.append(await _audit_round(net, group, located))
    if not rounds or _live(ids, _merged(rounds)) < wanted:
        rounds.append(await _audit_round(net, group, await locate_known(net, ids)))
        if _live(ids, _merged(rounds)) < wanted:
            rounds.append(await _audit_round(net, group, await locate(net, ids)))
    proven = _merged(rounds)
    lying = set().union(*(result.lying for result in rounds))
    live = _live(ids, proven)
    contacts = {c.node_id: c for result in rounds for c in result.contacts.values()}
    return SegmentReport(
        index,
        live,
        n - live,
        tuple(sorted(lying, key=lambda node_id: node_id.value)),
        any(result.fetched for result in rounds),
        {
            identifier: frozenset(contacts[node_id] for node_id in holders)
            for identifier, holders in proven.items()
        },
        frozenset(set().union(*(result.lied_about for result in rounds))),
    )


def _merged(rounds: Sequence[_Round]) -> dict[bytes, set[NodeId]]:
    """Each chunk id, and the holders any of `rounds` proved."""
    proven: dict[bytes, set[NodeId]] = {}
    for result in rounds:
        for identifier, holders in result.proven.items():
            proven.setdefault(identifier, set()).update(holders)
    return proven


def _live(ids: Sequence[bytes], proven: dict[bytes, set[NodeId]]) -> int:
    """Live chunks of a segment: each distinct id counts once per block number it
    stands for, up to the distinct holders that proved it (with k = 1 every number is
    the same chunk: one proven copy is one live chunk, not n)."""
    return sum(min(ids.count(identifier), len(holders)) for identifier, holders in proven.items())


@dataclass(slots=True)
class _Round:
    proven: dict[bytes, set[NodeId]]
    """Each chunk id, and the holders that proved they have it."""
    lying: set[NodeId]
    """Holders proven lying now, and holders that claim chunks but were proven lying
    before (not asked again)."""
    fetched: bool
    contacts: dict[NodeId, Contact]
    lied_about: set[int]


async def _audit_round(
    net: FileNetwork, group: Group, located: Sequence[Sequence[Contact]]
) -> _Round:
    """Audit the holders `located` names for each chunk, at fresh offsets, and judge:
    a unanimous verdict, or one anchored by our own chunks, is taken as it is; anything
    else is anchored by fetching chunks whole (`_anchor`)."""
    k, n, ids, index = group.k, group.n, group.chunk_ids, group.index
    block = group.block_size
    length = min(AUDIT_LENGTH, block)
    offsets = choose_offsets(net.random_bytes, block, count=AUDIT_RANGES, length=length)
    claimed: dict[NodeId, tuple[Contact, list[int]]] = {}
    first_number: dict[bytes, int] = {}
    for number, identifier in enumerate(ids):
        first_number.setdefault(identifier, number)
    known_liars: set[NodeId] = set()  # proven lying before: their claims are not asked
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
            for at in range(0, len(numbers), MAX_AUDIT_CHUNKS):
                nursery.start_soon(ask, contact, numbers[at : at + MAX_AUDIT_CHUNKS])
    expected = len(offsets) * length
    verdict = await net.codec(partial(judge, k, n, answers, expected_length=expected))
    contacts = {node_id: contact for node_id, (contact, _) in claimed.items()}
    if verdict.anchored or (verdict.decided and not verdict.failed):
        passed, fetched = set(verdict.passed), False
        lying = {node_id for node_id, _ in verdict.failed}
    else:
        passed, lying = await _anchor(net, group, answers, offsets, length, contacts)
        fetched = True
    for node_id in lying:
        net.liars.caught(node_id, f"proven lying about a chunk of segment {index} of a file")
    proven: dict[bytes, set[NodeId]] = {}
    for node_id, number in passed:
        proven.setdefault(ids[number], set()).add(node_id)
    lied_about = {number for node_id in lying for number in claimed.get(node_id, (None, []))[1]}
    return _Round(proven, lying | known_liars, fetched, contacts, lied_about)


async def _anchor(
    net: FileNetwork,
    group: Group,
    answers: Sequence[Answer[tuple[NodeId, int]]],
    offsets: Sequence[int],
    length: int,
    contacts: dict[NodeId, Contact],
) -> tuple[set[tuple[NodeId, int]], set[NodeId]]:
    """Fix the truth by fetching k chunks whole (each hashed against its id) and
    rebuilding the segment's n chunks from them; then every answer is judged against
    the real bytes. (The answers that passed, the holders proven lying.) Only a holder
    that served bytes that are not the chunk, answered with the wrong length, or
    contradicted the rebuilt chunks is proven lying; if the manifest's ids do not make
    one segment (a crafted capability) nobody is blamed for an answer and only the
    chunks fetched count. Costs k chunks, plus one per holder that serves wrong bytes."""
    k, n, ids = group.k, group.n, group.chunk_ids
    expected = len(offsets) * length
    verified: dict[int, tuple[NodeId, bytes]] = {}
    lying = {a.key[0] for a in answers if len(a.data) != expected}
    tried: set[tuple[NodeId, int]] = set()
    agreement = Counter((a.number, a.data) for a in answers)
    # Right-length answers, the most agreed first: likely the honest holders.
    pending = sorted(
        (a for a in answers if len(a.data) == expected),
        key=lambda a: -agreement[a.number, a.data],
    )

    async def fetch(answer: Answer[tuple[NodeId, int]]) -> None:
        try:
            got = await net.client.fetch(contacts[answer.key[0]], ids[answer.number])
        except NodeError:
            return
        if got.digest == ids[answer.number]:
            verified.setdefault(answer.number, (answer.key[0], got.data))
        else:
            lying.add(answer.key[0])  # bytes that are not the chunk: proof

    while len(verified) < k:
        wave: list[Answer[tuple[NodeId, int]]] = []
        numbers: set[int] = set()
        for answer in pending:
            if len(wave) >= k - len(verified):
                break
            if (
                answer.key in tried
                or answer.number in verified
                or answer.number in numbers
                or answer.key[0] in lying
            ):
                continue
            wave.append(answer)
            numbers.add(answer.number)
        if not wave:
            break
        tried.update(answer.key for answer in wave)
        async with trio.open_nursery() as nursery:
            for answer in wave:
                nursery.start_soon(fetch, answer)
    passed = {(holder, number) for number, (holder, _) in verified.items()}
    if len(verified) < k:
        return passed, lying  # unreadable as far as we can tell: what was fetched counts
    have = {number: data for number, (_, data) in sorted(verified.items())[:k]}
    try:
        rebuilt = await net.codec(rebuild_group, k, n, ids, have, range(n))
    except ProtocolError:  # InconsistentGroup: the ids do not make one segment
        return passed, lying
    truth = [stripe(chunk.data, offsets, length) for chunk in rebuilt]
    for answer in answers:
        if answer.data == truth[answer.number]:
            passed.add(answer.key)
        else:
            lying.add(answer.key[0])
    return passed, lying


# ------------------------------------------------------------------------ manifest


async def prove_whole(net: FileNetwork, identifier: bytes, data: bytes) -> list[Contact]:
    """The nodes that say they hold chunk `identifier` (a manifest, an index or a
    part: stored whole) and pass an audit against `data`, its verified bytes."""
    return (await audit_whole(net, identifier, data))[0]


async def audit_whole(
    net: FileNetwork,
    identifier: bytes,
    data: bytes,
    *,
    known: Sequence[Contact] = (),
    enough: int | None = None,
) -> tuple[list[Contact], list[Contact]]:
    """Audit the holders of a chunk stored whole against `data`, its verified bytes:
    (those proven, those caught lying, who are recorded as liars). With `enough`,
    `known` (who proved it last time) are audited first, with no lookup, then those our
    routing table knows near it, and a lookup and the provider records look for more
    only while fewer than `enough` are proven; without, every provider is looked up at
    once."""
    length = min(AUDIT_LENGTH, len(data))
    offsets = choose_offsets(net.random_bytes, len(data), length=length)
    expected = stripe(data, offsets, length)
    proven: list[Contact] = []
    lying: list[Contact] = []
    asked: set[NodeId] = set()

    async def ask(contact: Contact) -> None:
        try:
            audited = await net.client.audit(contact, [identifier], offsets, length)
        except NodeError:
            return
        answer = audited.answers[0]
        if answer == expected:
            proven.append(contact)
        elif answer is not None:
            lying.append(contact)
            net.liars.caught(contact.node_id, "failed an audit of a manifest")

    async def audit(found: Sequence[Contact]) -> None:
        async with trio.open_nursery() as nursery:
            for contact in found:
                if contact.node_id not in asked and not net.liars.avoided(contact.node_id):
                    asked.add(contact.node_id)
                    nursery.start_soon(ask, contact)

    if enough is not None:
        await audit(known)
        if len(proven) >= enough:
            return proven, lying
        await audit((await locate_known(net, [identifier]))[0])
        if len(proven) >= enough:
            return proven, lying
    await audit((await locate(net, [identifier], every_provider=True))[0])
    return proven, lying


async def _prove_parts(net: FileNetwork, index: ManifestIndex, parts: Sequence[bytes]) -> int:
    """The fewest proven holders of any part of a manifest stored in parts."""
    counts: dict[bytes, int] = {}
    limit = trio.Semaphore(PARTS_CHECKING)

    async def prove(part_id: bytes, data: bytes) -> None:
        async with limit:
            counts[part_id] = len(await prove_whole(net, part_id, data))

    async with trio.open_nursery() as nursery:
        for part_id, data in zip(index.part_ids, parts, strict=True):
            if part_id not in counts:
                counts[part_id] = 0
                nursery.start_soon(prove, part_id, data)
    return min(counts.values())
