"""Checking a file: which of its chunks live nodes say they hold. Needs no key.

`check_file` asks, for the manifest (and the parts and index of a large one) and for
each segment, the nodes near it and where provider records point which chunks they
hold (HAS_CHUNKS, node/files/locate.py), and reports how many distinct chunks of each
segment are held. It takes holders at their word: proof of possession comes with
audits (see the issues).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import trio

from node.errors import Unreadable
from node.files.locate import locate
from node.files.network import FileNetwork
from node.files.retrieval import fetch_parts, fetch_root
from protocol.capability import ReadCapability, VerifyCapability
from protocol.manifest_index import ManifestIndex

__all__ = ["FileReport", "check_file"]

PARTS_LOCATING: Final = 8
"""Manifest parts asked about at once (each is placed near its own id: one lookup each)."""


@dataclass(frozen=True, slots=True)
class FileReport:
    """How many distinct chunks of each segment live nodes hold; `manifest_holders` is
    the fewest holders of any chunk of the stored manifest (itself, or its index and
    parts)."""

    k: int
    n: int
    manifest_holders: int
    live_chunks: tuple[int, ...]

    @property
    def readable(self) -> bool:
        return self.manifest_holders > 0 and all(count >= self.k for count in self.live_chunks)

    @property
    def healthy(self) -> bool:
        return self.readable and all(count >= self.n for count in self.live_chunks)


async def check_file(net: FileNetwork, capability: VerifyCapability | ReadCapability) -> FileReport:
    """Ask the network which chunks of the file are held; needs no key."""
    params = net.settings.params
    manifest_id = capability.manifest_id
    manifest_holders = len((await locate(net, [manifest_id]))[0])
    try:
        root = await fetch_root(net, manifest_id)
        if isinstance(root, ManifestIndex):
            manifest = await fetch_parts(net, root)  # a malformed index fails here, fast
            manifest_holders = min(manifest_holders, await _fewest_holders(net, root))
        else:
            manifest = root
    except Unreadable:
        # No live node gave the manifest: the file is unreadable (a report, so that
        # `freehold check` exits 2 for it), not an error of the check itself.
        return FileReport(params.k, params.n, 0, ())
    live: list[int] = []
    for index in range(manifest.segment_count):
        holders = await locate(net, manifest.segment_chunk_ids(index))
        live.append(sum(1 for found in holders if found))
    return FileReport(manifest.params.k, manifest.params.n, manifest_holders, tuple(live))


async def _fewest_holders(net: FileNetwork, index: ManifestIndex) -> int:
    """The fewest nodes holding any part `index` names, each distinct part asked about
    once, `PARTS_LOCATING` at a time."""
    counts: list[int] = []
    limit = trio.Semaphore(PARTS_LOCATING)

    async def count(part_id: bytes) -> None:
        async with limit:
            counts.append(len((await locate(net, [part_id]))[0]))

    async with trio.open_nursery() as nursery:
        for part_id in set(index.part_ids):
            nursery.start_soon(count, part_id)
    return min(counts)
