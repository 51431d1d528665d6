"""The file layer end to end on real nodes (the simulation harness: every node the
`Node` that `freehold node` runs, on an in-memory network under trio's MockClock):
a file whose manifest is too large for one chunk is stored as parts and an index,
and read, checked and refused when damaged like any other."""

from __future__ import annotations

import dataclasses
import io
import random

import pytest
from trio.testing import MockClock

from node.errors import Unreadable
from node.files import FileNetwork, check_file, fetch_manifest, get_file, put_file
from node.files.checking import SAMPLE_SEGMENTS
from node.files.retrieval import fetch_stored
from protocol.capability import VerifyCapability
from protocol.manifest import EncodingParams
from protocol.manifest_index import ManifestIndex, read_root
from simulations.harness import SIMULATED_NODE, open_network

SEGMENT = 4096
PART = 1024  # small parts, so that a small file's manifest needs several
SIZE = 40 * SEGMENT + 123


@pytest.fixture
def clock() -> MockClock:
    return MockClock(autojump_threshold=0)


def small(files: FileNetwork | None) -> FileNetwork:
    """The node's file layer with 4 KiB segments and 1 KiB manifest parts."""
    assert files is not None
    settings = dataclasses.replace(
        files.settings, params=EncodingParams(3, 10, SEGMENT), manifest_part_size=PART
    )
    return dataclasses.replace(files, settings=settings)


async def read_back(files: FileNetwork, capability: object) -> bytes:
    pieces: list[bytes] = []

    async def write(data: memoryview) -> None:
        pieces.append(bytes(data))

    await get_file(files, capability, write)  # type: ignore[arg-type]
    return b"".join(pieces)


async def test_a_manifest_larger_than_a_part_is_stored_in_parts(clock: MockClock) -> None:
    """The capability names an index of parts; another node reads the file back byte
    for byte, and check counts the manifest's holders over the index and every part."""
    data = random.Random(1).randbytes(SIZE)
    async with open_network(12, seed=7, node_config=SIMULATED_NODE) as network:
        uploader, reader = network.nodes[0], network.nodes[5]
        files = small(uploader.node.files)
        capability = await put_file(files, io.BytesIO(data), size=SIZE, name="big")
        holder = small(reader.node.files)
        root = read_root(
            await _fetch_root_bytes(holder, capability.manifest_id), capability.manifest_id
        )
        assert isinstance(root, ManifestIndex)
        assert len(root.part_ids) >= 10  # 41 segments * 320 bytes of ids, in 1 KiB parts
        manifest = await fetch_manifest(holder, capability.manifest_id)
        assert manifest.segment_count == 41
        assert await read_back(holder, capability) == data
        report = await check_file(holder, VerifyCapability(capability.manifest_id))
        assert report.healthy and report.manifest_holders >= 1
        network.nursery.cancel_scope.cancel()


async def _fetch_root_bytes(files: FileNetwork, manifest_id: bytes) -> bytes:
    return await fetch_stored(files, manifest_id, "manifest")


async def test_a_lost_manifest_part_makes_the_file_unreadable_saying_so(
    clock: MockClock,
) -> None:
    """When every copy of one part is gone, get fails naming the manifest part, and
    check reports the file unreadable (no holder for the manifest)."""
    data = random.Random(2).randbytes(SIZE)
    async with open_network(12, seed=8, node_config=SIMULATED_NODE) as network:
        files = small(network.nodes[0].node.files)
        capability = await put_file(files, io.BytesIO(data), size=SIZE)
        root = read_root(
            await _fetch_root_bytes(files, capability.manifest_id), capability.manifest_id
        )
        assert isinstance(root, ManifestIndex)
        lost = root.part_ids[3]
        for simulated in network.nodes:
            chunks = simulated.node.chunks
            assert chunks is not None
            if chunks.store.has(lost):
                chunks.store.delete(lost)
        reader = small(network.nodes[7].node.files)
        with pytest.raises(Unreadable, match="manifest part 3"):
            await read_back(reader, capability)
        report = await check_file(reader, capability)
        assert report.manifest_holders == 0 and not report.readable
        network.nursery.cancel_scope.cancel()


async def test_a_small_manifest_is_stored_whole(clock: MockClock) -> None:
    """A manifest no larger than a part is the root itself, as before parts existed."""
    data = random.Random(3).randbytes(3000)
    async with open_network(12, seed=9, node_config=SIMULATED_NODE) as network:
        files = small(network.nodes[0].node.files)
        capability = await put_file(files, io.BytesIO(data), size=len(data))
        root = read_root(
            await _fetch_root_bytes(files, capability.manifest_id), capability.manifest_id
        )
        assert not isinstance(root, ManifestIndex)
        assert await read_back(small(network.nodes[3].node.files), capability) == data
        network.nursery.cancel_scope.cancel()


async def test_a_large_file_is_checked_on_a_sample_unless_full(clock: MockClock) -> None:
    """Over SAMPLE_SEGMENTS segments, check audits a random sample of that many and
    says so; --full audits every segment."""
    count = SAMPLE_SEGMENTS + 6
    size = count * SEGMENT - 200  # Padme keeps it within `count` segments
    data = random.Random(4).randbytes(size)
    async with open_network(12, seed=10, node_config=SIMULATED_NODE) as network:
        files = dataclasses.replace(
            small(network.nodes[0].node.files),
            settings=dataclasses.replace(
                small(network.nodes[0].node.files).settings, manifest_part_size=2**20
            ),
        )
        capability = await put_file(files, io.BytesIO(data), size=size)
        checker = small(network.nodes[6].node.files)
        sampled = await check_file(checker, capability)
        assert sampled.segment_count == count and sampled.sampled
        assert len(sampled.segments) == SAMPLE_SEGMENTS and sampled.healthy
        full = await check_file(checker, capability, full=True)
        assert not full.sampled and [s.index for s in full.segments] == list(range(count))
        network.nursery.cancel_scope.cancel()
