"""The Freehold file format, apart from the chunks' bytes: parameters, Padme, the
segment layout, nonces and associated data, the sealed info and the manifest.

docs/PROTOCOL.md#files specifies all of it byte for byte; this module is its reference
implementation, and protocol/encoding.py builds the streaming encoder and decoder on it.

What it promises:

- `Manifest.parse` raises `TamperedManifest` and nothing else for any input: bytes that
  do not hash to the manifest id, are not msgpack, or break any rule of the format
  (version, k and n, segment size, Padme bucket, number of chunk ids, sizes, trailing
  bytes). Whatever it returns satisfies every rule, and building a `Manifest` that
  breaks one raises `LocalProtocolError`: what one node encodes, every node decodes.
- Everything a repairer needs (k, n, the segment layout, every chunk id) is readable
  without the file key. Nothing about the content is: the name and exact size are in
  the sealed info, a fixed-size XChaCha20-Poly1305 ciphertext, and the padded size
  reveals only the Padme bucket (O(log log L) bits of the length L).
- `Manifest.unseal(key)` raises `WrongKey` if the key does not open the sealed info, and
  `TamperedManifest` if it opens but breaks a rule (a size outside the Padme bucket, a
  name that is not UTF-8, padding that is not zero).
- Nonces never repeat under one key: each is the file's random 16-byte prefix, a domain
  byte (segment or sealed info) and the segment index, so two files that share a key
  by mistake still share no nonce unless their random prefixes collide.
- Sans-I/O: pure functions over bytes. Randomness (the key and the nonce prefix) is
  drawn by the encoder from a source its caller passes in.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Final

import msgpack

from protocol.aead import KEY_SIZE, TAG_SIZE, BytesLike, decrypt_into, encrypt_into
from protocol.chunk import CHUNK_ID_SIZE, MAX_SHARES, chunk_id
from protocol.errors import (
    CorruptChunk,
    ForeignChunk,
    LocalProtocolError,
    TamperedManifest,
    WrongKey,
)
from protocol.schema import unpack_strictly

__all__ = [
    "DEFAULT_K",
    "DEFAULT_N",
    "DEFAULT_SEGMENT_SIZE",
    "FORMAT_VERSION",
    "KEY_SIZE",
    "MANIFEST_ID_SIZE",
    "MAX_MANIFEST_SIZE",
    "MAX_NAME_SIZE",
    "MAX_SEGMENT_SIZE",
    "MIN_SEGMENT_SIZE",
    "NONCE_PREFIX_SIZE",
    "SEALED_INFO_SIZE",
    "EncodingParams",
    "FileInfo",
    "Manifest",
    "padme",
    "sealed_info_nonce",
    "segment_associated_data",
    "segment_nonce",
]

FORMAT_VERSION: Final = 1
"""The first element of every manifest; a manifest with any other is refused."""

MANIFEST_ID_SIZE: Final = CHUNK_ID_SIZE
"""A manifest is stored as a chunk of its own, so its id is its chunk id."""

NONCE_PREFIX_SIZE: Final = 16
"""Random bytes per file; with a domain byte and a 7-byte index they make a nonce."""

MIN_SEGMENT_SIZE: Final = 4 * 1024
MAX_SEGMENT_SIZE: Final = 64 * 1024 * 1024
DEFAULT_SEGMENT_SIZE: Final = 4 * 1024 * 1024
DEFAULT_K: Final = 3
DEFAULT_N: Final = 10
MAX_NAME_SIZE: Final = 255
"""Longest file name, in bytes of UTF-8 (NAME_MAX on common file systems)."""

MAX_MANIFEST_SIZE: Final = 128 * 1024 * 1024
"""Largest manifest accepted. Chunk ids take 32 * n bytes per segment, so with the
defaults (3-of-10, 4 MiB segments) this allows files up to about 1.6 TiB (a 1 TiB file
has an 80 MiB manifest); a larger segment size allows proportionally larger files."""

# The sealed info's plaintext: size (uint64), name length (uint8), name, zeros. Fixed
# length, so the manifest's size says nothing about the name.
_SEALED_PLAINTEXT_SIZE: Final = 8 + 1 + MAX_NAME_SIZE
SEALED_INFO_SIZE: Final = _SEALED_PLAINTEXT_SIZE + TAG_SIZE

_SEGMENT_CONTEXT: Final = b"freehold segment"
_SEALED_INFO_CONTEXT: Final = b"freehold sealed info"
_DOMAIN_SEGMENT: Final = 0
_DOMAIN_SEALED_INFO: Final = 1
_MAX_NONCE_INDEX: Final = 2**56 - 1
_MANIFEST_LENGTH: Final = 8
_MSGPACK_MAX_UINT: Final = 2**64 - 1
_SEGMENT_AD: Final = struct.Struct(">16sBQQ")


# ----------------------------------------------------------------- padding, layout


def padme(length: int) -> int:
    """The Padme bucket of `length` (Nikitin et al., PETS 2019, §4).

    With E = floor(log2 L) and W = floor(log2 E) + 1 (the paper's S), the last E - W
    bits of L are rounded up to zero; so a padded length has at most W significant bits,
    the overhead is at most 12% (and shrinks as L grows), and the bucket reveals
    O(log log L) bits. L = 0, 1 and 2 are their own buckets (log2 is undefined, or
    E - W <= 0).
    """
    if type(length) is not int or length < 0:
        raise LocalProtocolError(f"a length is a non-negative int, got {length!r}")
    if length <= 2:
        return length
    exponent = length.bit_length() - 1  # floor(log2 L)
    low_bits = exponent - exponent.bit_length()  # E - (floor(log2 E) + 1)
    if low_bits <= 0:
        return length
    mask = (1 << low_bits) - 1
    return (length + mask) & ~mask


def _params_problem(k: object, n: object, segment_size: object) -> str | None:
    """Why (k, n, segment_size) is not allowed, or None if it is."""
    if type(k) is not int or type(n) is not int or type(segment_size) is not int:
        return "k, n and segment size must be ints"
    if not 1 <= k <= n <= MAX_SHARES:
        return f"need 1 <= k <= n <= {MAX_SHARES}, got k={k}, n={n}"
    if not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
        return f"segment size {segment_size} is outside {MIN_SEGMENT_SIZE}..{MAX_SEGMENT_SIZE}"
    return None


@dataclass(frozen=True, slots=True)
class EncodingParams:
    """How a file is cut and spread: segment size, and zfec's k-of-n per segment.

    Any k chunks of a segment rebuild it; n - k may be lost. Validated once, here.
    """

    k: int = DEFAULT_K
    n: int = DEFAULT_N
    segment_size: int = DEFAULT_SEGMENT_SIZE

    def __post_init__(self) -> None:
        problem = _params_problem(self.k, self.n, self.segment_size)
        if problem is not None:
            raise LocalProtocolError(f"encoding parameters: {problem}")

    def segment_count(self, padded_size: int) -> int:
        """How many segments a file of `padded_size` (a Padme bucket) is cut into."""
        return -(-padded_size // self.segment_size)

    def manifest_size_bound(self, padded_size: int) -> int:
        """An upper bound on the manifest's size for a file of `padded_size`."""
        ids = self.segment_count(padded_size) * self.n * CHUNK_ID_SIZE
        return ids + SEALED_INFO_SIZE + NONCE_PREFIX_SIZE + 64


# ------------------------------------------------------------- nonces, associated data


def _nonce(nonce_prefix: bytes, domain: int, index: int) -> bytes:
    if type(nonce_prefix) is not bytes or len(nonce_prefix) != NONCE_PREFIX_SIZE:
        raise LocalProtocolError(f"a nonce prefix is {NONCE_PREFIX_SIZE} bytes")
    if type(index) is not int or not 0 <= index <= _MAX_NONCE_INDEX:
        raise LocalProtocolError(f"segment index {index!r} is outside 0..2**56-1")
    return nonce_prefix + bytes((domain,)) + index.to_bytes(7, "big")


def segment_nonce(nonce_prefix: bytes, index: int) -> bytes:
    """Segment `index`'s 24-byte nonce: prefix, 0x00, index as 7 bytes big-endian."""
    return _nonce(nonce_prefix, _DOMAIN_SEGMENT, index)


def sealed_info_nonce(nonce_prefix: bytes) -> bytes:
    """The sealed info's 24-byte nonce: prefix, 0x01, seven zero bytes."""
    return _nonce(nonce_prefix, _DOMAIN_SEALED_INFO, 0)


def segment_associated_data(index: int, count: int) -> bytes:
    """Segment `index` of `count`'s associated data: the 16 ASCII bytes
    "freehold segment", the format version (1 byte), then index and count (8 bytes
    big-endian each). A segment decrypted at another position or in a file of another
    length fails authentication, so reordering, dropping or truncating is detected."""
    if not 0 <= index < count <= _MSGPACK_MAX_UINT:
        raise LocalProtocolError(f"segment index {index} is not within a count of {count}")
    return _SEGMENT_AD.pack(_SEGMENT_CONTEXT, FORMAT_VERSION, index, count)


def _sealed_info_associated_data() -> bytes:
    return _SEALED_INFO_CONTEXT + bytes((FORMAT_VERSION,))


# ------------------------------------------------------------------------ sealed info


@dataclass(frozen=True, slots=True)
class FileInfo:
    """What only a reader learns: the file's name and exact size."""

    name: str
    size: int

    def __post_init__(self) -> None:
        if type(self.name) is not str:
            raise LocalProtocolError("a file name is a str")
        try:
            encoded = self.name.encode("utf-8")
        except UnicodeEncodeError:
            raise LocalProtocolError("a file name must be encodable as UTF-8") from None
        if len(encoded) > MAX_NAME_SIZE:
            raise LocalProtocolError(
                f"file name of {len(encoded)} bytes of UTF-8, at most {MAX_NAME_SIZE} allowed"
            )
        if type(self.size) is not int or not 0 <= self.size <= _MSGPACK_MAX_UINT:
            raise LocalProtocolError(f"file size {self.size!r} is not a uint64")

    def seal(self, key: bytes, nonce_prefix: bytes) -> bytes:
        """The sealed info: this, encrypted under the file key (SEALED_INFO_SIZE bytes)."""
        name = self.name.encode("utf-8")
        plaintext = bytearray(_SEALED_PLAINTEXT_SIZE)
        plaintext[:9] = self.size.to_bytes(8, "big") + bytes((len(name),))
        plaintext[9 : 9 + len(name)] = name
        out = bytearray(SEALED_INFO_SIZE)
        encrypt_into(
            out, plaintext, _sealed_info_associated_data(), sealed_info_nonce(nonce_prefix), key
        )
        return bytes(out)


def _unseal(sealed: bytes, key: bytes, nonce_prefix: bytes) -> FileInfo:
    if type(key) is not bytes or len(key) != KEY_SIZE:
        raise LocalProtocolError(f"a file key is {KEY_SIZE} bytes")
    plaintext = bytearray(_SEALED_PLAINTEXT_SIZE)
    nonce = sealed_info_nonce(nonce_prefix)
    if not decrypt_into(plaintext, sealed, _sealed_info_associated_data(), nonce, key):
        raise WrongKey(
            "wrong file key: it does not open this manifest's sealed info "
            "(the manifest itself matches its id)"
        )
    size = int.from_bytes(plaintext[:8], "big")
    name_length = plaintext[8]
    name_end = 9 + name_length
    if plaintext[name_end:] != bytes(_SEALED_PLAINTEXT_SIZE - name_end):
        raise TamperedManifest("sealed info: the bytes after the name are not zero")
    try:
        name = plaintext[9:name_end].decode("utf-8")
    except UnicodeDecodeError:
        raise TamperedManifest("sealed info: the file name is not UTF-8") from None
    return FileInfo(name, size)


# --------------------------------------------------------------------------- manifest


class _BadManifest(Exception):
    """A rule of the format is broken; the caller picks the exception class."""


def _problem(manifest: Manifest) -> str | None:
    """The first rule `manifest` breaks, or None."""
    if type(manifest.params) is not EncodingParams:
        return "params must be EncodingParams"
    padded = manifest.padded_size
    if type(padded) is not int or not 0 <= padded <= _MSGPACK_MAX_UINT:
        return f"padded size {padded!r} is not a uint64"
    if padme(padded) != padded:
        return f"padded size {padded} is not a Padme bucket (the bucket is {padme(padded)})"
    prefix = manifest.nonce_prefix
    if type(prefix) is not bytes or len(prefix) != NONCE_PREFIX_SIZE:
        return f"nonce prefix must be {NONCE_PREFIX_SIZE} bytes"
    if type(manifest.chunk_ids) is not bytes:
        return "chunk ids must be bytes"
    params = manifest.params
    expected = params.segment_count(padded) * params.n * CHUNK_ID_SIZE
    if len(manifest.chunk_ids) != expected:
        return (
            f"chunk ids: {len(manifest.chunk_ids)} bytes, expected {expected} "
            f"({params.segment_count(padded)} segments of {params.n} ids of {CHUNK_ID_SIZE} bytes)"
        )
    if type(manifest.sealed_info) is not bytes or len(manifest.sealed_info) != SEALED_INFO_SIZE:
        return f"sealed info must be {SEALED_INFO_SIZE} bytes"
    return None


@dataclass(frozen=True, slots=True)
class Manifest:
    """A file's manifest: how it was cut and coded, every chunk id, and the sealed info.

    `chunk_ids` is segment 0's n ids, then segment 1's, and so on: the concatenation of
    `segment_count * n` ids of 32 bytes. `nonce_prefix` and `sealed_info` are needed
    only to read; a repairer uses the rest.
    """

    params: EncodingParams
    padded_size: int
    nonce_prefix: bytes
    chunk_ids: bytes = field(repr=False)
    sealed_info: bytes = field(repr=False)

    def __post_init__(self) -> None:
        problem = _problem(self)
        if problem is not None:
            raise LocalProtocolError(f"manifest: {problem}")

    # --- layout, readable without the key

    @property
    def segment_count(self) -> int:
        """Number of segments, padding segments included."""
        return self.params.segment_count(self.padded_size)

    def _check_index(self, index: int) -> None:
        if type(index) is not int or not 0 <= index < self.segment_count:
            raise LocalProtocolError(
                f"segment index {index!r} is outside 0..{self.segment_count - 1}"
            )

    def plaintext_size(self, index: int) -> int:
        """Bytes of plaintext (file bytes and Padme zeros) in segment `index`."""
        self._check_index(index)
        start = index * self.params.segment_size
        return min(self.params.segment_size, self.padded_size - start)

    def ciphertext_size(self, index: int) -> int:
        """Bytes of ciphertext (tag included) of segment `index`."""
        return self.plaintext_size(index) + TAG_SIZE

    def block_size(self, index: int) -> int:
        """Bytes in each chunk of segment `index`: the ciphertext, zero-padded to a
        multiple of k, divided by k."""
        return -(-self.ciphertext_size(index) // self.params.k)

    def segment_chunk_ids(self, index: int) -> tuple[bytes, ...]:
        """The n chunk ids of segment `index`, by block number (data blocks first)."""
        self._check_index(index)
        size = self.params.n * CHUNK_ID_SIZE
        ids = self.chunk_ids[index * size : (index + 1) * size]
        return tuple(ids[at : at + CHUNK_ID_SIZE] for at in range(0, size, CHUNK_ID_SIZE))

    def block_numbers(self, index: int) -> dict[bytes, tuple[int, ...]]:
        """Segment `index`'s chunk ids, each with the block numbers it stands for.

        Usually one each; identical blocks (k = 1, or tiny blocks of zero padding) share
        an id, and one valid chunk then stands for all of them.
        """
        positions: dict[bytes, tuple[int, ...]] = {}
        for number, identifier in enumerate(self.segment_chunk_ids(index)):
            positions[identifier] = (*positions.get(identifier, ()), number)
        return positions

    def verify_chunk(self, index: int, identifier: bytes, data: BytesLike) -> tuple[int, ...]:
        """Check a chunk offered for segment `index` under `identifier`; returns the
        block numbers it stands for.

        Raises `ForeignChunk` if `identifier` is not one of the segment's ids and
        `CorruptChunk` if the bytes do not hash to it. Reads no key.
        """
        numbers = self.block_numbers(index).get(identifier)
        if numbers is None:
            raise ForeignChunk(
                "not one of this segment's chunk ids", chunk_id=identifier, segment_index=index
            )
        _check_chunk(self, index, identifier, data)
        return numbers

    # --- reading

    def unseal(self, key: bytes) -> FileInfo:
        """Open the sealed info with the file key; raises WrongKey or TamperedManifest."""
        info = _unseal(self.sealed_info, key, self.nonce_prefix)
        if padme(info.size) != self.padded_size:
            raise TamperedManifest(
                f"sealed info: a size of {info.size} pads to {padme(info.size)}, "
                f"not to the manifest's {self.padded_size}"
            )
        return info

    # --- bytes

    def encode(self) -> bytes:
        """The manifest's bytes: the msgpack array of docs/PROTOCOL.md#manifest."""
        data: bytes = msgpack.packb(
            (
                FORMAT_VERSION,
                self.params.k,
                self.params.n,
                self.params.segment_size,
                self.padded_size,
                self.nonce_prefix,
                self.chunk_ids,
                self.sealed_info,
            ),
            use_bin_type=True,
        )
        if len(data) > MAX_MANIFEST_SIZE:
            raise LocalProtocolError(
                f"manifest of {len(data)} bytes, at most {MAX_MANIFEST_SIZE} allowed: "
                "use a larger segment size"
            )
        return data

    @classmethod
    def parse(cls, data: BytesLike, expected_id: bytes) -> Manifest:
        """The manifest in `data`, checked against its id; raises TamperedManifest."""
        if type(expected_id) is not bytes or len(expected_id) != MANIFEST_ID_SIZE:
            raise LocalProtocolError(f"a manifest id is {MANIFEST_ID_SIZE} bytes")
        size = data.nbytes if type(data) is memoryview else len(data)
        if size > MAX_MANIFEST_SIZE:
            raise TamperedManifest(f"manifest of {size} bytes, at most {MAX_MANIFEST_SIZE}")
        if chunk_id(data) != expected_id:
            raise TamperedManifest("manifest bytes do not hash to the manifest id")
        try:
            return _decode(data, size)
        except _BadManifest as exc:
            raise TamperedManifest(f"manifest: {exc}") from None


def _check_chunk(manifest: Manifest, index: int, identifier: bytes, data: BytesLike) -> None:
    expected = manifest.block_size(index)
    size = data.nbytes if type(data) is memoryview else len(data)
    if size != expected:
        raise CorruptChunk(
            f"{size} bytes, expected {expected}", chunk_id=identifier, segment_index=index
        )
    if chunk_id(data) != identifier:
        raise CorruptChunk(
            "its bytes do not hash to its id", chunk_id=identifier, segment_index=index
        )


def _wire_name(value: object) -> str:
    names = {tuple: "array", dict: "map", bytes: "bytes", str: "str", int: "int"}
    return names.get(type(value), type(value).__name__)


def _decode(data: BytesLike, size: int) -> Manifest:
    try:
        fields: Any = unpack_strictly(data, size=size, max_array=_MANIFEST_LENGTH)
    except msgpack.ExtraData:
        raise _BadManifest("trailing bytes after the manifest") from None
    except Exception as exc:
        # Only msgpack's parser runs here, over bytes that came from elsewhere: any
        # failure at all is malformed input.
        raise _BadManifest(f"not msgpack ({exc or type(exc).__name__})") from None
    if type(fields) is not tuple:
        raise _BadManifest(f"expected an array, got {_wire_name(fields)}")
    if not fields or type(fields[0]) is not int:
        raise _BadManifest("the first element must be the format version, an int")
    if fields[0] != FORMAT_VERSION:
        raise _BadManifest(f"unsupported format version {fields[0]}, expected {FORMAT_VERSION}")
    if len(fields) != _MANIFEST_LENGTH:
        raise _BadManifest(f"expected {_MANIFEST_LENGTH} elements, got {len(fields)}")
    _, k, n, segment_size, padded_size, nonce_prefix, chunk_ids, sealed = fields
    for name, value in (
        ("k", k),
        ("n", n),
        ("segment size", segment_size),
        ("padded size", padded_size),
    ):
        if type(value) is not int:
            raise _BadManifest(f"{name}: expected int, got {_wire_name(value)}")
    for name, value in (
        ("nonce prefix", nonce_prefix),
        ("chunk ids", chunk_ids),
        ("sealed info", sealed),
    ):
        if type(value) is not bytes:
            raise _BadManifest(f"{name}: expected bytes, got {_wire_name(value)}")
    problem = _params_problem(k, n, segment_size)
    if problem is not None:
        raise _BadManifest(problem)
    try:
        return Manifest(
            EncodingParams(k, n, segment_size), padded_size, nonce_prefix, chunk_ids, sealed
        )
    except LocalProtocolError as exc:
        raise _BadManifest(str(exc).removeprefix("manifest: ")) from None
