"""Manifests stored whole or in parts (protocol/manifest_index.py): what is stored, and
that nothing the capability's id does not pin is ever read."""

from __future__ import annotations

import json
import random

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.capability import ReadCapability, parse_capability
from protocol.chunk import MAX_CHUNK_SIZE, chunk_id
from protocol.errors import LocalProtocolError, TamperedManifest
from protocol.manifest import EncodingParams, Manifest
from protocol.manifest_index import (
    MANIFEST_PART_SIZE,
    MAX_PARTS,
    ManifestIndex,
    join_parts,
    part_length,
    part_size,
    read_root,
    store_manifest,
)
from protocol.stream import Encoder, FileDecoder
from tests.protocol import make_manifest_index_vectors

PARAMS = EncodingParams(3, 10, 4096)


def manifest_of(size: int, seed: int = 0) -> bytes:
    encoder = Encoder(
        random.Random(seed).randbytes(size),
        random_bytes=random.Random(seed).randbytes,
        params=PARAMS,
    )
    for _ in encoder.segments():
        pass
    return encoder.manifest_bytes


def test_a_small_manifest_is_its_own_root() -> None:
    """At most one part's worth: one chunk, the manifest itself, named by its hash."""
    data = manifest_of(3000)
    stored = store_manifest(data)
    assert stored.index is None
    assert stored.chunks == ((chunk_id(data), data),)
    assert stored.root_id == chunk_id(data)
    root = read_root(data, stored.root_id)
    assert isinstance(root, Manifest) and root.encode() == data


@settings(deadline=None, max_examples=30, derandomize=True, database=None)
@given(part_size=st.integers(min_value=1, max_value=4000))
def test_parts_and_index_give_back_the_manifest(part_size: int) -> None:
    """A manifest over the part size: parts of that size in order, the index last
    (the root), and reading them back gives the same manifest."""
    data = manifest_of(20 * 4096)
    if len(data) > part_size * MAX_PARTS:
        return
    stored = store_manifest(data, part_size)
    if len(data) <= part_size:
        assert stored.index is None
        return
    index = stored.index
    assert index is not None and index.size == len(data)
    *parts, (root_id, root) = stored.chunks
    assert root_id == stored.root_id == chunk_id(root)
    assert b"".join(part for _, part in parts) == data
    assert all(len(part) == part_size for _, part in parts[:-1])
    assert [identifier for identifier, _ in parts] == list(index.part_ids)
    assert read_root(root, root_id) == index
    assert join_parts(index, [part for _, part in parts]).encode() == data


def test_the_index_bytes_are_specified() -> None:
    """[1, size, ids] with the shortest forms, as docs/PROTOCOL.md shows."""
    index = ManifestIndex(2_500_000, (bytes(32), b"\x01" * 32, b"\x02" * 32))
    encoded = index.encode()
    assert encoded[:1] == b"\x93"
    assert msgpack.unpackb(encoded) == [1, 2_500_000, bytes(32) + b"\x01" * 32 + b"\x02" * 32]


def test_a_tampered_part_or_size_is_refused() -> None:
    """A part that does not hash to its id, parts that join to another size, or a
    root that does not hash to the capability's id: TamperedManifest."""
    data = manifest_of(20 * 4096)
    stored = store_manifest(data, 1000)
    index = stored.index
    assert index is not None
    parts = [part for _, part in stored.chunks[:-1]]
    broken = list(parts)
    broken[2] = bytes([broken[2][0] ^ 1]) + broken[2][1:]
    with pytest.raises(TamperedManifest, match="part 2 does not hash"):
        join_parts(index, broken)
    lying = ManifestIndex(index.size + 1, index.part_ids)
    with pytest.raises(TamperedManifest, match="716 bytes, 717 expected"):
        join_parts(lying, parts)
    root = stored.chunks[-1][1]
    with pytest.raises(TamperedManifest, match="do not hash"):
        read_root(root, bytes(32))
    with pytest.raises(LocalProtocolError, match="parts given"):
        join_parts(index, parts[:-1])


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ([2, 100, bytes(32)], "version 2"),
        ([1, 0, bytes(32)], "size 0"),
        ([1, 2**28, bytes(32)], "outside"),
        ([1, 100, bytes(31)], "multiple of 32"),
        ([1, 100, b""], "multiple of 32"),
        ([1, 100, "x" * 32], "multiple of 32"),
        ([1, 1, bytes(64)], "2 parts for 1 bytes"),
        ([1, True, bytes(32)], "size True"),
    ],
)
def test_malformed_indexes_are_tampered_manifests(fields: list[object], problem: str) -> None:
    """Each broken rule of an index is refused, naming it."""
    data = msgpack.packb(fields, use_bin_type=True)
    with pytest.raises(TamperedManifest, match=problem):
        read_root(data, chunk_id(data))


def test_neither_a_manifest_nor_an_index_is_refused() -> None:
    """A root of another length, or not an array, is a tampered manifest."""
    for value in ([1, 2], [1, 2, 3, 4], {"a": 1}, b"raw"):
        data = msgpack.packb(value, use_bin_type=True)
        with pytest.raises(TamperedManifest):
            read_root(data, chunk_id(data))


def test_an_index_naming_an_index_is_refused() -> None:
    """Parts that join to an index, not a manifest: refused (one level only)."""
    inner = ManifestIndex(5000, (bytes(32),)).encode()
    index = ManifestIndex(len(inner), (chunk_id(inner),))
    with pytest.raises(TamperedManifest, match="another index"):
        join_parts(index, [inner])


def test_writer_limits() -> None:
    """Part sizes outside 1..MAX_CHUNK_SIZE and too many parts are the writer's mistake."""
    data = manifest_of(3000)
    for size in (0, MAX_CHUNK_SIZE + 1):
        with pytest.raises(LocalProtocolError, match="part size"):
            store_manifest(data, size)
    with pytest.raises(LocalProtocolError, match="cannot be stored"):
        store_manifest(b"")
    assert MANIFEST_PART_SIZE <= MAX_CHUNK_SIZE


def test_an_index_in_a_longer_msgpack_form_is_still_an_index() -> None:
    """Readers accept any valid msgpack form (the id pins the bytes): an index whose
    array header is written as array 16 reads the same."""
    ids = bytes(32) + b"\x01" * 32
    shortest = ManifestIndex(5000, (bytes(32), b"\x01" * 32)).encode()
    longer = b"\xdc\x00\x03" + shortest[1:]
    assert read_root(longer, chunk_id(longer)) == read_root(shortest, chunk_id(shortest))
    assert read_root(longer, chunk_id(longer)).part_ids == (ids[:32], ids[32:])  # type: ignore[union-attr]
    with pytest.raises(TamperedManifest):
        read_root(shortest + b"\x00", chunk_id(shortest + b"\x00"))


def test_the_published_vector() -> None:
    """The reference writes the vector's parts and index byte for byte, and reading
    them back decodes encoding vector 3's file with its chunks."""
    assert make_manifest_index_vectors.render(
        make_manifest_index_vectors.build_vectors()
    ) == make_manifest_index_vectors.VECTORS_PATH.read_text(encoding="utf-8")
    vector = json.loads(make_manifest_index_vectors.VECTORS_PATH.read_text())["vectors"][0]
    source = json.loads(make_manifest_index_vectors.SOURCE.read_text())["vectors"][3]
    index_bytes = bytes.fromhex(vector["index"])
    capability = parse_capability(vector["read_capability"])
    assert isinstance(capability, ReadCapability)
    index = read_root(index_bytes, capability.manifest_id)
    assert isinstance(index, ManifestIndex)
    parts = [bytes.fromhex(part["data"]) for part in vector["parts"]]
    assert [len(part) for part in parts] == [500, 500, 274]
    manifest = join_parts(index, parts)
    decoder = FileDecoder(capability, manifest)
    plaintext = b"".join(
        bytes(
            decoder.decode(
                segment["index"],
                [(bytes.fromhex(c["id"]), bytes.fromhex(c["data"])) for c in segment["chunks"]],
            ).plaintext
        )
        for segment in source["segments"][: decoder.segments_to_read]
    )
    assert plaintext == bytes.fromhex(source["input"])


def test_the_first_part_fixes_every_other_parts_length() -> None:
    """Parts are all p bytes but the last (1..p): the first part gives p, and an index
    naming another number of parts than ceil(size / p), or a part of another length,
    is refused before the rest is fetched or joined."""
    data = manifest_of(20 * 4096)
    stored = store_manifest(data, 1000)
    index = stored.index
    assert index is not None
    parts = [part for _, part in stored.chunks[:-1]]
    assert part_size(index, parts[0]) == 1000
    assert [part_length(index, number, 1000) for number in range(len(parts))] == [
        len(part) for part in parts
    ]
    assert part_length(index, len(parts) - 1, 1000) == len(data) % 1000 or 1000
    with pytest.raises(TamperedManifest, match="parts of equal length would be 14"):
        part_size(index, parts[0][:500])  # p = 500 would need 14 parts, not 7
    with pytest.raises(TamperedManifest, match="for a 16-byte manifest"):
        part_size(ManifestIndex(16, index.part_ids[:1]), parts[0])
    uneven = ManifestIndex(len(data), (chunk_id(parts[0][:10]), *index.part_ids[1:]))
    with pytest.raises(TamperedManifest):
        join_parts(uneven, [parts[0][:10], *parts[1:]])
