"""How a manifest is stored: whole, as one chunk, or in parts named by a manifest index.

docs/PROTOCOL.md#manifests-larger-than-one-chunk. A chunk must fit in one frame, and a
manifest may be up to 128 MiB (32 * n bytes of chunk ids per segment), so a manifest
larger than the writer's part size (`MANIFEST_PART_SIZE` by default) is cut into parts,
each stored as a chunk of its own, and a *manifest index* names them:

    [1, size, part_ids]     msgpack: version (int), the manifest's size in bytes (int),
                            the parts' ids concatenated (bin, 32 bytes each)

The index is stored as a chunk too, and its id is the manifest id a capability names.
A reader tells a stored root apart by its array's length: 8 elements, a manifest; 3, an
index. Nothing about the file is in the index but the manifest's size, which the
manifest's own chunk ids already reveal to any holder.

What it promises:

- `store_manifest` gives every chunk to store, the root last, and the id that names
  the file; a manifest no larger than the part size is stored as it is, so small
  files' ids and the published vectors do not change.
- `read_root` and `join_parts` check everything against the ids: the root against the
  capability's id, each part against the id the index gives it, the joined size
  against the index. Any failure is `TamperedManifest`; nothing is ever returned that
  the capability's id does not pin.
- Sans-I/O: pure functions over bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from protocol.aead import BytesLike
from protocol.chunk import CHUNK_ID_SIZE, MAX_CHUNK_SIZE, chunk_id
from protocol.errors import LocalProtocolError, TamperedManifest
from protocol.manifest import FORMAT_VERSION, MAX_MANIFEST_SIZE, Manifest
from protocol.schema import unpack_strictly

__all__ = [
    "MANIFEST_PART_SIZE",
    "MAX_PARTS",
    "ManifestIndex",
    "StoredManifest",
    "join_parts",
    "part_length",
    "part_size",
    "read_root",
    "store_manifest",
]

MANIFEST_PART_SIZE: Final = 1024 * 1024
"""The reference writer's part size: a manifest over this many bytes is stored in parts
of this size (readers accept any part size up to MAX_CHUNK_SIZE)."""

MAX_PARTS: Final = 32768
"""Most parts one index may name (1 MiB of ids)."""

_INDEX_LENGTH: Final = 3
_MANIFEST_LENGTH: Final = 8


@dataclass(frozen=True, slots=True)
class ManifestIndex:
    """A manifest stored in parts: its total size and the ids of its parts, in order."""

    size: int
    part_ids: tuple[bytes, ...]

    def encode(self) -> bytes:
        """The index's bytes, as stored (shortest msgpack forms)."""
        data: bytes = msgpack.packb(
            (FORMAT_VERSION, self.size, b"".join(self.part_ids)), use_bin_type=True
        )
        return data


@dataclass(frozen=True, slots=True)
class StoredManifest:
    """What to store for one manifest: `chunks` as (id, bytes), the root last, and
    `root_id`, the manifest id a capability names."""

    root_id: bytes
    chunks: tuple[tuple[bytes, bytes], ...]
    index: ManifestIndex | None
    """The index, when the manifest is stored in parts; None when stored whole."""


def store_manifest(manifest: bytes, part_size: int = MANIFEST_PART_SIZE) -> StoredManifest:
    """The chunks that store `manifest`: itself if it is at most `part_size` bytes, else
    its parts and an index naming them."""
    if type(part_size) is not int or not 1 <= part_size <= MAX_CHUNK_SIZE:
        raise LocalProtocolError(f"part size {part_size!r} is outside 1..{MAX_CHUNK_SIZE}")
    if not 0 < len(manifest) <= MAX_MANIFEST_SIZE:
        raise LocalProtocolError(f"a manifest of {len(manifest)} bytes cannot be stored")
    if len(manifest) <= part_size:
        return StoredManifest(chunk_id(manifest), ((chunk_id(manifest), manifest),), None)
    parts = [manifest[at : at + part_size] for at in range(0, len(manifest), part_size)]
    if len(parts) > MAX_PARTS:
        raise LocalProtocolError(
            f"{len(parts)} parts of {part_size} bytes, at most {MAX_PARTS}: use larger parts"
        )
    stored = tuple((chunk_id(part), part) for part in parts)
    index = ManifestIndex(len(manifest), tuple(identifier for identifier, _ in stored))
    root = index.encode()
    return StoredManifest(chunk_id(root), (*stored, (chunk_id(root), root)), index)


def read_root(data: BytesLike, expected_id: bytes) -> Manifest | ManifestIndex:
    """The manifest or manifest index stored under `expected_id`; TamperedManifest if
    `data` does not hash to it or is neither."""
    size = data.nbytes if type(data) is memoryview else len(data)
    if type(expected_id) is not bytes or len(expected_id) != CHUNK_ID_SIZE:
        raise LocalProtocolError(f"a manifest id is {CHUNK_ID_SIZE} bytes")
    if size > MAX_MANIFEST_SIZE:
        raise TamperedManifest(f"manifest of {size} bytes, at most {MAX_MANIFEST_SIZE}")
    if chunk_id(data) != expected_id:
        raise TamperedManifest("manifest bytes do not hash to the manifest id")
    try:
        value: Any = unpack_strictly(data, size=size, max_array=_MANIFEST_LENGTH)
    except Exception:  # only msgpack runs here: the manifest's rules say what is wrong
        value = None
    if type(value) is tuple and len(value) == _INDEX_LENGTH:
        return _index_from(value)
    # A manifest, or something that is neither: the manifest's rules say what is wrong.
    return Manifest.parse(data, expected_id)


def part_size(index: ManifestIndex, first: BytesLike) -> int:
    """The part size p of `index`, read off its first part: every part but the last
    has p bytes and the last 1..p, so the index must name ceil(size / p) parts.
    TamperedManifest otherwise. A reader fetches the first part, calls this, and then
    knows the length of every other part before it fetches it: no index can make it
    hold more than the manifest's size (plus that first part)."""
    length = first.nbytes if type(first) is memoryview else len(first)
    count = len(index.part_ids)
    if not 0 < length <= index.size:
        raise TamperedManifest(
            f"manifest part 0 has {length} bytes for a {index.size}-byte manifest"
        )
    if -(-index.size // length) != count:
        raise TamperedManifest(
            f"{count} parts named for {index.size} bytes in parts of {length}: "
            f"parts of equal length would be {-(-index.size // length)}"
        )
    return length


def part_length(index: ManifestIndex, number: int, size: int) -> int:
    """The length part `number` must have, with parts of `size` bytes (`part_size`)."""
    return min(size, index.size - number * size)


def join_parts(index: ManifestIndex, parts: Sequence[BytesLike]) -> Manifest:
    """The manifest an index names, from its parts in order; each must hash to its id
    and have the length `part_size` gives (TamperedManifest otherwise, as for any rule
    of the manifest broken)."""
    if len(parts) != len(index.part_ids):
        raise LocalProtocolError(f"{len(parts)} parts given, the index names {len(index.part_ids)}")
    size = part_size(index, parts[0])
    for number, (identifier, part) in enumerate(zip(index.part_ids, parts, strict=True)):
        length = part.nbytes if type(part) is memoryview else len(part)
        if length != part_length(index, number, size):
            raise TamperedManifest(
                f"manifest part {number} has {length} bytes, "
                f"{part_length(index, number, size)} expected"
            )
        if chunk_id(part) != identifier:
            raise TamperedManifest(f"manifest part {number} does not hash to its id")
    joined = b"".join(parts)
    if _array_head(joined) == _INDEX_LENGTH:
        raise TamperedManifest("a manifest index names another index")
    # The index pins every part, so the joined bytes' own hash is all there is to check.
    return Manifest.parse(joined, chunk_id(joined))


def _array_head(data: BytesLike) -> int | None:
    """The element count of the array `data` starts with, if it is a fixarray (as
    every manifest and index an encoder writes is); None otherwise. (A 3-element array
    written longer still fails as a manifest: it has not 8 elements.)"""
    first = bytes(data[:1])
    return first[0] & 0x0F if first and 0x90 <= first[0] <= 0x9F else None


def _index_from(fields: tuple[Any, ...]) -> ManifestIndex:
    version, total, ids = fields
    if type(version) is not int or version != FORMAT_VERSION:
        raise TamperedManifest(f"manifest index: version {version!r}, expected {FORMAT_VERSION}")
    if type(total) is not int or not 0 < total <= MAX_MANIFEST_SIZE:
        raise TamperedManifest(f"manifest index: size {total!r} is outside 1..{MAX_MANIFEST_SIZE}")
    if type(ids) is not bytes or not ids or len(ids) % CHUNK_ID_SIZE:
        raise TamperedManifest("manifest index: part ids must be a non-empty multiple of 32 bytes")
    count = len(ids) // CHUNK_ID_SIZE
    if count > MAX_PARTS:
        raise TamperedManifest(f"manifest index: {count} parts, at most {MAX_PARTS}")
    if count > total:  # some part would be empty
        raise TamperedManifest(f"manifest index: {count} parts for {total} bytes")
    part_ids = tuple(ids[at : at + CHUNK_ID_SIZE] for at in range(0, len(ids), CHUNK_ID_SIZE))
    return ManifestIndex(total, part_ids)
