"""One segment to chunks and back: the pure functions of docs/PROTOCOL.md#files.

Encoding a segment: its plaintext (Padme zeros included) is encrypted with
XChaCha20-Poly1305 under the file key (nonce and associated data from
protocol/manifest.py), zero-padded to a multiple of k and cut into k blocks, and zfec
adds n - k parity blocks. Each block is a chunk named by its BLAKE3-256 hash
(protocol/chunk.py). Decoding verifies each chunk against the manifest before use,
rebuilds the segment from any k of its chunks and decrypts it; a repairer rebuilds lost
chunks the same way without the key. Whole files are protocol/stream.py's.

What it promises:

- The heavy work of one segment is one pure function, `encode_segment`,
  `decode_segment` or `rebuild_chunks`, which only calls libsodium, zfec and BLAKE3 on
  whole buffers (all three release the GIL) and shares no state: safe to run in worker
  threads.
- Never wrong output. Every chunk's hash is checked before use; a chunk that fails is
  reported (`CorruptChunk`, `ForeignChunk`, both carrying its id) and another is taken;
  a segment with fewer than k valid chunks raises `NotEnoughChunks`; a segment that does
  not decrypt, `CorruptSegment`.
- Sans-I/O: no clock, no randomness, no files.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import zfec

from protocol.aead import TAG_SIZE, BytesLike, decrypt_into, encrypt_into
from protocol.chunk import chunk_id
from protocol.errors import (
    ChunkRejected,
    CorruptChunk,
    CorruptSegment,
    ForeignChunk,
    InconsistentGroup,
    LocalProtocolError,
    NotEnoughChunks,
)
from protocol.manifest import (
    EncodingParams,
    Manifest,
    segment_associated_data,
    segment_nonce,
)

__all__ = [
    "Candidate",
    "Chunk",
    "DecodedSegment",
    "EncodedSegment",
    "Parity",
    "RebuiltChunks",
    "codeword",
    "decode_segment",
    "encode_segment",
    "parity_matrix",
    "rebuild_chunks",
    "rebuild_group",
    "zfec_parity",
]


class Chunk(NamedTuple):
    """A block of an encoded segment and its id, BLAKE3-256 of the block."""

    chunk_id: bytes
    data: bytes


Candidate = tuple[bytes, BytesLike]
"""A chunk offered to a decoder: (the id it is offered under, its bytes)."""


@dataclass(frozen=True, slots=True)
class EncodedSegment:
    """Segment `index` of a file: its n chunks, by block number (data blocks first)."""

    index: int
    chunks: tuple[Chunk, ...]


@dataclass(frozen=True, slots=True)
class DecodedSegment:
    """Segment `index`'s plaintext (Padme zeros included), and the chunks turned down on
    the way. The plaintext is a read-only view of the buffer it was decrypted in: not
    copied out (4 MiB a segment)."""

    index: int
    plaintext: memoryview
    rejected: tuple[ChunkRejected, ...]


@dataclass(frozen=True, slots=True)
class RebuiltChunks:
    """Chunks of segment `index` made again from k others, and the chunks turned down."""

    index: int
    chunks: tuple[Chunk, ...]
    rejected: tuple[ChunkRejected, ...]


def _nbytes(data: BytesLike) -> int:
    return data.nbytes if type(data) is memoryview else len(data)


# zfec's encoder and decoder only read their matrices once built: shared by all threads.
@functools.cache
def _zfec_encoder(k: int, n: int) -> Any:
    return zfec.Encoder(k, n)


@functools.cache
def _zfec_decoder(k: int, n: int) -> Any:
    return zfec.Decoder(k, n)


Parity = Callable[[Sequence[bytes], int, int], Sequence[bytes]]
"""`parity(blocks, k, n)`: the n - k parity blocks (block numbers k..n-1) of zfec's code
for the k data `blocks`, all of one length. Whatever computes them must give zfec's bytes
(docs/PROTOCOL.md#chunks): chunk ids are their hashes. Called from worker threads."""


def zfec_parity(blocks: Sequence[bytes], k: int, n: int) -> list[bytes]:
    """The parity blocks, by zfec itself: the reference `Parity`."""
    return list(_zfec_encoder(k, n).encode(list(blocks), list(range(k, n))))


def codeword(k: int, n: int, blocks: Mapping[int, BytesLike]) -> list[bytes]:
    """All n blocks of zfec's k-of-n code from any k of them (`blocks`: block number ->
    bytes, all of one length, exactly k entries). The code works byte position by
    position, so this holds for any equal-length pieces cut at the same offsets of the
    blocks: what an audit's answers are (protocol/audit.py). Pure, thread-safe."""
    if len(blocks) != k:
        raise LocalProtocolError(f"a codeword needs exactly k = {k} blocks, got {len(blocks)}")
    numbers = sorted(blocks)
    if numbers[0] < 0 or numbers[-1] >= n:
        raise LocalProtocolError(f"block numbers must be in 0..{n - 1}, got {numbers}")
    given = [bytes(blocks[number]) for number in numbers]
    if numbers[-1] < k:  # the data blocks themselves
        primary = given
    else:
        primary = [bytes(block) for block in _zfec_decoder(k, n).decode(given, numbers)]
    if n == k:
        return primary
    return primary + [bytes(block) for block in zfec_parity(primary, k, n)]


@functools.cache
def parity_matrix(k: int, n: int) -> bytes:
    """The parity rows of zfec's encoding matrix E (docs/PROTOCOL.md#chunks), row-major:
    byte `i * k + j` is E[k + i][j], the weight of data block j in parity block k + i.

    Read off zfec itself, by encoding one-byte blocks that are 1 in block j and 0
    elsewhere, so another GF(2^8) coder given this matrix computes zfec's code.
    """
    columns = [zfec_parity([bytes([row == j]) for row in range(k)], k, n) for j in range(k)]
    return bytes(columns[j][i][0] for i in range(n - k) for j in range(k))


# ------------------------------------------------------------------- one segment


def encode_segment(
    plaintext: BytesLike,
    index: int,
    *,
    segment_count: int,
    key: bytes,
    nonce_prefix: bytes,
    params: EncodingParams,
    parity: Parity = zfec_parity,
) -> EncodedSegment:
    """Encrypt and erasure-code segment `index` of `segment_count`; pure, thread-safe.

    `plaintext` is the segment's bytes, Padme zeros included: `params.segment_size`
    bytes, fewer (at least 1) only for the last segment. It is not kept. `parity`
    computes the parity blocks (zfec by default).
    """
    size = _nbytes(plaintext)
    if type(index) is not int or not 0 <= index < segment_count:
        raise LocalProtocolError(f"segment index {index!r} is outside 0..{segment_count - 1}")
    last = index == segment_count - 1
    if not (1 <= size <= params.segment_size if last else size == params.segment_size):
        raise LocalProtocolError(
            f"segment {index} of {segment_count} has {size} bytes; every segment but the "
            f"last has {params.segment_size}, the last 1..{params.segment_size}"
        )
    k, n = params.k, params.n
    ciphertext_size = size + TAG_SIZE
    block_size = -(-ciphertext_size // k)
    # Encrypted straight into the buffer that is cut into blocks; its tail stays zero.
    buffer = bytearray(block_size * k)
    encrypt_into(
        buffer,
        plaintext,
        segment_associated_data(index, segment_count),
        segment_nonce(nonce_prefix, index),
        key,
    )
    view = memoryview(buffer)
    blocks = [bytes(view[at : at + block_size]) for at in range(0, len(buffer), block_size)]
    view.release()
    del buffer
    if n > k:
        extra = parity(blocks, k, n)
        if len(extra) != n - k or any(len(block) != block_size for block in extra):
            raise LocalProtocolError(
                f"the parity function gave {len(extra)} blocks, not {n - k} of {block_size} bytes"
            )
        blocks += extra
    return EncodedSegment(index, tuple(Chunk(chunk_id(b), b) for b in blocks))


def _collect(
    manifest: Manifest, index: int, candidates: Iterable[Candidate], verified: bool = False
) -> tuple[list[BytesLike], tuple[ChunkRejected, ...]]:
    """The k primary blocks of segment `index`, from the first k valid candidates (their
    hashes not checked again if the caller has: `verified`)."""
    params = manifest.params
    k = params.k
    numbers = manifest.block_numbers(index)
    blocks: dict[int, BytesLike] = {}
    rejected: list[ChunkRejected] = []
    for identifier, data in candidates:
        if type(identifier) is not bytes:
            raise LocalProtocolError(f"a candidate's chunk id is bytes, got {identifier!r:.40}")
        wanted = numbers.get(identifier)
        if wanted is None:
            rejected.append(
                ForeignChunk(
                    "not one of this segment's chunk ids", chunk_id=identifier, segment_index=index
                )
            )
            continue
        if all(number in blocks for number in wanted):
            continue  # a copy of a chunk we already have
        if not verified:
            try:
                manifest.verify_chunk(index, identifier, data)
            except CorruptChunk as exc:
                rejected.append(exc)
                continue
        for number in wanted:
            blocks.setdefault(number, data)
        if len(blocks) >= k:
            break
    else:
        raise NotEnoughChunks(
            segment_index=index, valid=len(blocks), needed=k, rejected=tuple(rejected)
        )
    chosen = sorted(blocks)[:k]
    if chosen[-1] < k:  # the data blocks themselves: nothing to decode
        return [blocks[number] for number in chosen], tuple(rejected)
    # zfec reorders the lists it is given in place: give it fresh ones.
    decoder = _zfec_decoder(k, params.n)
    primary: list[BytesLike] = decoder.decode([blocks[number] for number in chosen], chosen)
    return primary, tuple(rejected)


def decode_segment(
    manifest: Manifest,
    key: bytes,
    index: int,
    candidates: Iterable[Candidate],
    *,
    verified: bool = False,
) -> DecodedSegment:
    """Rebuild and decrypt segment `index` from the first k valid `candidates`; pure,
    thread-safe. Candidates are consumed lazily, and checked before use.

    Raises `NotEnoughChunks` if the candidates run out first (it lists those rejected),
    and `CorruptSegment` if the rebuilt segment does not decrypt. Call
    `manifest.unseal(key)` first: it tells a wrong key (`WrongKey`) from a file encoded
    inconsistently, which only a segment can reveal.

    `verified=True` says the caller has already checked each candidate's bytes against
    its id with `manifest.verify_chunk` (a node does, as each chunk arrives, to try
    another holder at once), so they are not hashed again; ids that are not the
    segment's are still refused. Output stays right even if that is untrue: the segment
    is authenticated as a whole when it is decrypted, so bad bytes raise
    `CorruptSegment` (naming no chunk) instead of `CorruptChunk`.
    """
    primary, rejected = _collect(manifest, index, candidates, verified)
    # One buffer: the blocks are joined into it and the segment decrypted in place.
    buffer = bytearray().join(primary)
    del primary
    ciphertext_size = manifest.ciphertext_size(index)
    if buffer[ciphertext_size:] != bytes(len(buffer) - ciphertext_size):
        raise CorruptSegment(
            "the zero padding after the ciphertext is not zero", segment_index=index
        )
    view = memoryview(buffer)
    plaintext = view[: ciphertext_size - TAG_SIZE]
    if not decrypt_into(
        plaintext,
        view[:ciphertext_size],
        segment_associated_data(index, manifest.segment_count),
        segment_nonce(manifest.nonce_prefix, index),
        key,
    ):
        raise CorruptSegment(
            "its chunks match the manifest but it does not decrypt: a wrong key, or a file "
            "encoded inconsistently",
            segment_index=index,
        )
    return DecodedSegment(index, plaintext.toreadonly(), rejected)


def rebuild_group(
    k: int,
    n: int,
    chunk_ids: Sequence[bytes],
    have: Mapping[int, BytesLike],
    block_numbers: Iterable[int],
) -> list[Chunk]:
    """Chunks `block_numbers` of a group (k-of-n, the ids `chunk_ids` by block number)
    rebuilt from k of its chunks `have` (block number -> bytes): what a holder that
    knows only a group record does to repair it. No manifest, no key; pure, thread-safe.

    Raises `LocalProtocolError` unless `have` holds exactly k chunks of one length that
    hash to their ids, and `InconsistentGroup` if a rebuilt chunk does not hash to its
    id (the ids do not come from one segment)."""
    if len(chunk_ids) != n or len(have) != k:
        raise LocalProtocolError(f"need {n} ids and {k} chunks, got {len(chunk_ids)}, {len(have)}")
    for number, data in have.items():
        if not 0 <= number < n or chunk_id(data) != chunk_ids[number]:
            raise LocalProtocolError(f"chunk {number} given is not the group's chunk {number}")
    if len({_nbytes(data) for data in have.values()}) != 1:
        raise LocalProtocolError("the chunks given are not all of one length")
    full = codeword(k, n, have)
    chunks = []
    for number in block_numbers:
        data = full[number]
        if chunk_id(data) != chunk_ids[number]:
            raise InconsistentGroup(
                f"chunk {number} rebuilt from {sorted(have)} does not hash to its id"
            )
        chunks.append(Chunk(chunk_ids[number], data))
    return chunks


def rebuild_chunks(
    manifest: Manifest, index: int, candidates: Iterable[Candidate], block_numbers: Iterable[int]
) -> RebuiltChunks:
    """Make segment `index`'s chunks `block_numbers` again from any k valid candidates,
    without the key: what a repairer does for lost chunks. Pure, thread-safe.

    Raises `NotEnoughChunks` as `decode_segment` does, and `CorruptSegment` if a rebuilt
    chunk does not hash to its id in the manifest (the file was encoded inconsistently).
    """
    params = manifest.params
    wanted = list(block_numbers)
    for number in wanted:
        if type(number) is not int or not 0 <= number < params.n:
            raise LocalProtocolError(f"block number {number!r} is outside 0..{params.n - 1}")
    primary, rejected = _collect(manifest, index, candidates)
    blocks = _zfec_encoder(params.k, params.n).encode(list(primary), list(wanted))
    ids = manifest.segment_chunk_ids(index)
    chunks = []
    for number, block in zip(wanted, blocks, strict=True):
        data = bytes(block)
        identifier = chunk_id(data)
        if identifier != ids[number]:
            raise CorruptSegment(
                f"rebuilt block {number} does not hash to its id: the file was encoded "
                "inconsistently",
                segment_index=index,
            )
        chunks.append(Chunk(identifier, data))
    return RebuiltChunks(index, tuple(chunks), rejected)
