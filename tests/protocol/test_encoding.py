"""Tests of protocol/encoding.py: round trips, tampering of every kind, sources,
executors, the published vectors, and memory that stays flat on a 1 GiB stream."""

from __future__ import annotations

import array
import io
import json
import random
import time
import tracemalloc
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.capability import ReadCapability
from protocol.chunk import chunk_id as manifest_id
from protocol.encoding import (
    Candidate,
    Chunk,
    EncodedSegment,
    decode_segment,
    encode_segment,
    parity_matrix,
    rebuild_chunks,
    rebuild_group,
)
from protocol.errors import (
    ChunkRejected,
    CorruptChunk,
    CorruptSegment,
    ForeignChunk,
    InconsistentGroup,
    LocalProtocolError,
    NotEnoughChunks,
    ProtocolError,
    RemoteProtocolError,
    TamperedManifest,
    WrongKey,
)
from protocol.manifest import (
    MIN_SEGMENT_SIZE,
    EncodingParams,
    FileInfo,
    Manifest,
    padme,
    sealed_info_nonce,
    segment_associated_data,
    segment_nonce,
)
from protocol.stream import Decoder, Encoder
from tests.protocol.make_encoding_vectors import fixed_random

DETERMINISTIC = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=100,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
VECTORS_PATH = Path(__file__).parent.parent / "vectors" / "encoding-vectors.json"
VECTORS: list[dict[str, Any]] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))["vectors"]

SEGMENT = MIN_SEGMENT_SIZE
SMALL = EncodingParams(3, 10, SEGMENT)
MiB = 1024 * 1024


def seeded(seed: int) -> Callable[[int], bytes]:
    rng = random.Random(seed)
    return rng.randbytes


def content(size: int, seed: int = 0) -> bytes:
    return random.Random(f"content {seed}").randbytes(size)


class Encoded:
    """One file encoded with SMALL-ish parameters, its chunks kept in memory."""

    def __init__(
        self, data: bytes, params: EncodingParams = SMALL, *, seed: int = 0, name: str = "f"
    ) -> None:
        self.data = data
        self.encoder = Encoder(data, random_bytes=seeded(seed), name=name, params=params)
        self.segments = list(self.encoder.segments())
        self.capability = self.encoder.read_capability
        self.manifest = self.encoder.manifest_bytes

    def chunks(self, index: int) -> list[Chunk]:
        return list(self.segments[index].chunks)

    def fetch_all(self, index: int) -> list[Chunk]:
        return self.chunks(index)

    def decoder(
        self, fetch: Callable[[int], Iterable[Candidate]] | None = None, **kw: Any
    ) -> Decoder:
        return Decoder(self.capability, self.manifest, fetch or self.fetch_all, **kw)

    def decode(self, fetch: Callable[[int], Iterable[Candidate]] | None = None, **kw: Any) -> bytes:
        return b"".join(self.decoder(fetch, **kw).blocks())


def flip(data: bytes, bit: int) -> bytes:
    changed = bytearray(data)
    changed[bit // 8] ^= 1 << (bit % 8)
    return bytes(changed)


# ----------------------------------------------------------------------- vectors


@pytest.mark.parametrize("vector", VECTORS, ids=[vector["description"] for vector in VECTORS])
def test_vector_encodes_byte_for_byte(vector: dict[str, Any]) -> None:
    """The encoder, given the vector's key and nonce prefix, reproduces every chunk, the
    manifest, its id and both capabilities exactly."""
    key = bytes.fromhex(vector["file_key"])
    prefix = bytes.fromhex(vector["nonce_prefix"])
    data = bytes.fromhex(vector["input"])
    params = EncodingParams(vector["k"], vector["n"], vector["segment_size"])
    encoder = Encoder(
        data, random_bytes=fixed_random(key, prefix), name=vector["name"], params=params
    )
    segments = list(encoder.segments())
    assert len(segments) == len(vector["segments"])
    count = len(segments)
    for segment, expected in zip(segments, vector["segments"], strict=True):
        assert segment.index == expected["index"]
        assert segment_nonce(prefix, segment.index).hex() == expected["nonce"]
        assert segment_associated_data(segment.index, count).hex() == expected["associated_data"]
        assert [(chunk.chunk_id.hex(), chunk.data.hex()) for chunk in segment.chunks] == [
            (chunk["id"], chunk["data"]) for chunk in expected["chunks"]
        ]
    assert sealed_info_nonce(prefix).hex() == vector["sealed_info_nonce"]
    assert encoder.manifest.sealed_info.hex() == vector["sealed_info"]
    assert encoder.manifest_bytes.hex() == vector["manifest"]
    assert encoder.manifest_id.hex() == vector["manifest_id"]
    assert padme(len(data)) == vector["padded_size"]
    assert str(encoder.read_capability) == vector["read_capability"]
    assert str(encoder.read_capability.verify_capability()) == vector["verify_capability"]


@pytest.mark.parametrize("vector", VECTORS, ids=[vector["description"] for vector in VECTORS])
def test_vector_decodes_from_its_last_chunks(vector: dict[str, Any]) -> None:
    """Each vector decodes from its capability, manifest and last k chunks per segment."""
    k = vector["k"]
    chunks = [
        [(bytes.fromhex(chunk["id"]), bytes.fromhex(chunk["data"])) for chunk in segment["chunks"]]
        for segment in vector["segments"]
    ]
    decoder = Decoder(
        ReadCapability.parse(vector["read_capability"]),
        bytes.fromhex(vector["manifest"]),
        lambda index: chunks[index][-k:],
    )
    assert decoder.name == vector["name"]
    assert b"".join(decoder.blocks()).hex() == vector["input"]


def test_vectors_cover_the_cases_of_the_issue() -> None:
    """Empty, one byte, one whole segment, several with a short last, other k and n."""
    sizes = {vector["size"] for vector in VECTORS}
    assert {0, 1, vector_segment_size()} <= sizes
    assert any(len(vector["segments"]) >= 3 for vector in VECTORS)
    assert {(vector["k"], vector["n"]) for vector in VECTORS} > {(3, 10)}
    assert VECTORS_PATH.stat().st_size < 200_000


def vector_segment_size() -> int:
    return int(VECTORS[0]["segment_size"])


# -------------------------------------------------------------------- round trips

boundaries = st.tuples(st.integers(min_value=0, max_value=4), st.sampled_from([-1, 0, 1])).map(
    lambda pair: max(0, pair[0] * SEGMENT + pair[1])
)
sizes = boundaries | st.integers(min_value=0, max_value=5 * SEGMENT) | st.sampled_from([0, 1, 2])
shares = st.integers(min_value=1, max_value=12).flatmap(
    lambda n: st.tuples(st.integers(min_value=1, max_value=n), st.just(n))
)


@DETERMINISTIC
@given(sizes, shares, st.sampled_from([SEGMENT, 2 * SEGMENT + 4]), st.data())
def test_round_trip_from_any_k_chunks(
    size: int, kn: tuple[int, int], segment_size: int, data: st.DataObject
) -> None:
    """decode(encode(x)) == x from any k chunks of each segment, at every boundary."""
    k, n = kn
    file = Encoded(content(size, size), EncodingParams(k, n, segment_size), seed=size)
    choices = {segment.index: data.draw(st.permutations(range(n)))[:k] for segment in file.segments}
    fetched: list[int] = []

    def fetch(index: int) -> list[Chunk]:
        fetched.append(index)
        return [file.chunks(index)[number] for number in choices[index]]

    decoder = file.decoder(fetch)
    assert (decoder.name, decoder.size) == ("f", size)
    assert b"".join(decoder.blocks()) == file.data
    assert decoder.rejected == []
    assert fetched == list(range(-(-size // segment_size)))
    # Each chunk is named by its hash, and the segment's ids are the manifest's.
    for segment in file.segments:
        ids = file.encoder.manifest.segment_chunk_ids(segment.index)
        assert tuple(chunk.chunk_id for chunk in segment.chunks) == ids


def test_round_trip_with_default_parameters() -> None:
    """The default 3-of-10, 4 MiB segments round-trip a file of a few segments."""
    data = content(9 * MiB + 12345)
    encoder = Encoder(data, random_bytes=seeded(1), name="big.bin")
    segments = list(encoder.segments())
    assert len(segments) == 3
    assert all(len(segment.chunks) == 10 for segment in segments)
    decoder = Decoder(
        encoder.read_capability,
        encoder.manifest_bytes,
        lambda index: segments[index].chunks[4:],
    )
    assert b"".join(decoder.blocks()) == data


def test_padding_segments_are_never_fetched() -> None:
    """A segment holding only Padme zeros is stored but never needed to read."""
    size = 64 * SEGMENT + 1  # pads to 66 segments, the last of them zeros only
    file = Encoded(content(size), EncodingParams(2, 3, SEGMENT))
    assert len(file.segments) == 66
    fetched: list[int] = []

    def fetch(index: int) -> list[Chunk]:
        fetched.append(index)
        return file.chunks(index)

    assert file.decode(fetch) == file.data
    assert fetched == list(range(65))


def test_encryption_is_fresh_each_time() -> None:
    """Two encodings of the same file with different randomness share no chunk."""
    first = Encoded(content(3 * SEGMENT), seed=1)
    second = Encoded(content(3 * SEGMENT), seed=2)
    ids = {chunk.chunk_id for segment in first.segments for chunk in segment.chunks}
    assert not ids & {chunk.chunk_id for segment in second.segments for chunk in segment.chunks}


# ---------------------------------------------------------------------- tampering

TAMPER = Encoded(content(2 * SEGMENT + 100), EncodingParams(3, 5, SEGMENT), name="t.bin")


@DETERMINISTIC
@given(st.data())
def test_any_bit_flip_in_a_chunk_is_detected(data: st.DataObject) -> None:
    """A chunk with any one bit flipped is rejected by id, and another is taken."""
    index = data.draw(st.integers(min_value=0, max_value=len(TAMPER.segments) - 1))
    number = data.draw(st.integers(min_value=0, max_value=4))
    chunk = TAMPER.chunks(index)[number]
    bit = data.draw(st.integers(min_value=0, max_value=len(chunk.data) * 8 - 1))
    bad = Chunk(chunk.chunk_id, flip(chunk.data, bit))
    others = [other for other in TAMPER.chunks(index) if other is not chunk]

    def fetch(segment: int) -> list[Chunk]:
        return [bad, *others] if segment == index else TAMPER.chunks(segment)

    decoder = TAMPER.decoder(fetch)
    assert b"".join(decoder.blocks()) == TAMPER.data
    assert [(type(r), r.chunk_id, r.segment_index) for r in decoder.rejected] == [
        (CorruptChunk, chunk.chunk_id, index)
    ]
    # Offered only k chunks, one of them bad: not enough, and it says which.
    with pytest.raises(NotEnoughChunks) as error:
        TAMPER.decode(lambda segment: [bad, *others][:3] if segment == index else fetch(segment))
    assert (error.value.segment_index, error.value.valid, error.value.needed) == (index, 2, 3)
    assert [rejected.chunk_id for rejected in error.value.rejected] == [chunk.chunk_id]


@DETERMINISTIC
@given(st.integers(min_value=0, max_value=len(TAMPER.manifest) * 8 - 1))
def test_any_bit_flip_in_the_manifest_is_detected(bit: int) -> None:
    """A manifest with a bit flipped does not match the read capability's id."""
    tampered = flip(TAMPER.manifest, bit)
    with pytest.raises(TamperedManifest):
        Decoder(TAMPER.capability, tampered, TAMPER.fetch_all)


@DETERMINISTIC
@given(st.integers(min_value=0, max_value=len(TAMPER.manifest) * 8 - 1))
def test_a_re_hashed_flipped_manifest_never_gives_wrong_output(bit: int) -> None:
    """Even named by its new hash, a manifest with a bit flipped gives the original
    bytes or a ProtocolError, never anything else."""
    tampered = flip(TAMPER.manifest, bit)
    capability = ReadCapability(manifest_id(tampered), TAMPER.capability.file_key)

    def fetch(index: int) -> list[Chunk]:
        return TAMPER.chunks(index) if index < len(TAMPER.segments) else []

    try:
        output = b"".join(Decoder(capability, tampered, fetch).blocks())
    except ProtocolError:
        return
    assert output == TAMPER.data


def test_verified_candidates_are_not_hashed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """decode_segment(verified=True) takes the caller's word that each chunk matches its
    id (a node checks each as it arrives): same plaintext, no second hash; ids that are
    not the segment's are still refused."""
    manifest = Manifest.parse(TAMPER.manifest, TAMPER.capability.manifest_id)
    key = TAMPER.capability.file_key
    expected = [decode_segment(manifest, key, i, TAMPER.chunks(i)).plaintext for i in range(3)]

    def no_hashing(*arguments: object) -> None:
        raise AssertionError("hashed again")

    monkeypatch.setattr("protocol.manifest._check_chunk", no_hashing)
    for index in range(3):
        got = decode_segment(manifest, key, index, TAMPER.chunks(index), verified=True)
        assert got.plaintext == expected[index]
        # From parity chunks only (zfec rebuilds the data blocks), too.
        parity = TAMPER.chunks(index)[2:]
        assert (
            decode_segment(manifest, key, index, parity, verified=True).plaintext
            == (expected[index])
        )
    with pytest.raises(AssertionError, match="hashed again"):
        decode_segment(manifest, key, 0, TAMPER.chunks(0))  # unverified: hashed
    foreign = TAMPER.chunks(1)[0]
    with pytest.raises(NotEnoughChunks) as error:
        decode_segment(manifest, key, 0, [foreign, *TAMPER.chunks(0)[:2]], verified=True)
    assert [type(r) for r in error.value.rejected] == [ForeignChunk]


@pytest.mark.parametrize("number", [0, 1, 4])
def test_a_false_verified_claim_never_gives_wrong_output(number: int) -> None:
    """A chunk wrongly claimed verified (flipped bits under its right id) is caught when
    the segment is authenticated: CorruptSegment, never wrong bytes."""
    manifest = Manifest.parse(TAMPER.manifest, TAMPER.capability.manifest_id)
    chunks = TAMPER.chunks(0)
    bad = Chunk(chunks[number].chunk_id, flip(chunks[number].data, 100))
    offered = [chunk if i != number else bad for i, chunk in enumerate(chunks)]
    if number == 4:  # a parity chunk: offer it among the first k so that it is used
        offered = [offered[0], offered[1], bad]
    with pytest.raises(CorruptSegment):
        decode_segment(manifest, TAMPER.capability.file_key, 0, offered, verified=True)


def test_wrong_key_is_reported_before_any_fetch() -> None:
    """A read capability with another key raises WrongKey when the decoder is made."""
    capability = ReadCapability(TAMPER.capability.manifest_id, bytes(32))
    with pytest.raises(WrongKey):
        Decoder(capability, TAMPER.manifest, lambda index: pytest.fail("fetched"))


def test_chunks_of_another_file_are_foreign() -> None:
    """Chunks of another file are rejected as foreign (under their own ids) or corrupt
    (under this file's ids), and the segment fails with NotEnoughChunks."""
    other = Encoded(TAMPER.data, EncodingParams(3, 5, SEGMENT), seed=99)
    with pytest.raises(NotEnoughChunks) as error:
        TAMPER.decode(other.fetch_all)
    assert error.value.segment_index == 0
    assert error.value.valid == 0
    assert {type(rejected) for rejected in error.value.rejected} == {ForeignChunk}
    assert len(error.value.rejected) == 5

    def disguised(index: int) -> list[tuple[bytes, bytes]]:
        ours, theirs = TAMPER.chunks(index), other.chunks(index)
        return [(mine.chunk_id, foreign.data) for mine, foreign in zip(ours, theirs, strict=True)]

    with pytest.raises(NotEnoughChunks) as error:
        TAMPER.decode(disguised)
    assert {type(rejected) for rejected in error.value.rejected} == {CorruptChunk}


def test_chunks_of_another_segment_are_foreign() -> None:
    """A chunk of segment 1 offered for segment 0 is foreign to it."""
    decoder = TAMPER.decoder(lambda index: [*TAMPER.chunks(1)[:1], *TAMPER.chunks(index)])
    assert b"".join(decoder.blocks()) == TAMPER.data
    assert isinstance(decoder.rejected[0], ForeignChunk)
    assert decoder.rejected[0].segment_index == 0


def test_too_few_chunks_says_which_segment_and_how_many() -> None:
    """With fewer than k chunks the error names the segment, the counts and the rejects."""
    corrupt = Chunk(TAMPER.chunks(1)[4].chunk_id, bytes(len(TAMPER.chunks(1)[4].data)))

    def fetch(index: int) -> list[Chunk]:
        return TAMPER.chunks(index) if index == 0 else [*TAMPER.chunks(1)[:2], corrupt]

    reported: list[ChunkRejected] = []
    with pytest.raises(NotEnoughChunks) as error:
        TAMPER.decode(fetch, on_reject=reported.append)
    assert reported == list(error.value.rejected)
    message = str(error.value)
    assert message.startswith("segment 1: 2 valid chunks, 3 needed; rejected 1: ")
    assert corrupt.chunk_id.hex()[:16] in message
    assert "do not hash to its id" in message


def test_reordered_or_extended_segments_fail_authentication() -> None:
    """A manifest that lists segments in another order, or in a longer file, fails the
    associated data of the segments it moved: CorruptSegment, never wrong bytes."""
    honest = Manifest.parse(TAMPER.manifest, TAMPER.capability.manifest_id)
    key = TAMPER.capability.file_key
    row = honest.params.n * 32
    ids = honest.chunk_ids
    swapped = Manifest(
        honest.params,
        honest.padded_size,
        honest.nonce_prefix,
        ids[row : 2 * row] + ids[:row] + ids[2 * row :],
        honest.sealed_info,
    )
    with pytest.raises(CorruptSegment, match="segment 0"):
        decode_segment(swapped, key, 0, TAMPER.chunks(1))
    # Three segments claimed as the first three of four: the segment count differs.
    size = 4 * SEGMENT - 100
    longer = Manifest(
        honest.params,
        padme(size),
        honest.nonce_prefix,
        ids + ids[:row],
        FileInfo("t.bin", size).seal(key, honest.nonce_prefix),
    )
    assert longer.segment_count == 4
    assert longer.unseal(key).size == size
    with pytest.raises(CorruptSegment):
        decode_segment(longer, key, 0, TAMPER.chunks(0))


def test_segments_under_another_key_are_corrupt_segments() -> None:
    """A manifest whose sealed info opens but whose segments were encrypted under another
    key gives CorruptSegment: the file was encoded inconsistently."""
    honest = Manifest.parse(TAMPER.manifest, TAMPER.capability.manifest_id)
    other_key = bytes(range(32))
    forged = Manifest(
        honest.params,
        honest.padded_size,
        honest.nonce_prefix,
        honest.chunk_ids,
        FileInfo("t.bin", len(TAMPER.data)).seal(other_key, honest.nonce_prefix),
    )
    data = forged.encode()
    decoder = Decoder(ReadCapability(manifest_id(data), other_key), data, TAMPER.fetch_all)
    with pytest.raises(CorruptSegment):
        b"".join(decoder.blocks())


def test_error_classes_are_distinct() -> None:
    """Each failure has its own class; a wrong key is the caller's, the rest are remote."""
    remote = [TamperedManifest, CorruptChunk, ForeignChunk, NotEnoughChunks, CorruptSegment]
    assert all(issubclass(error, RemoteProtocolError) for error in remote)
    assert issubclass(WrongKey, LocalProtocolError)
    assert not issubclass(WrongKey, RemoteProtocolError)
    assert issubclass(CorruptChunk, ChunkRejected) and issubclass(ForeignChunk, ChunkRejected)
    assert not issubclass(CorruptChunk, ForeignChunk)
    assert not issubclass(ForeignChunk, CorruptChunk)


# ------------------------------------------------------------------ lazy fetching


class Counting:
    """A candidate supply that records how many chunks the decoder pulled."""

    def __init__(self, chunks: list[Chunk]) -> None:
        self.chunks = chunks
        self.pulled = 0

    def __iter__(self) -> Iterator[Chunk]:
        for chunk in self.chunks:
            self.pulled += 1
            yield chunk


def test_decoder_pulls_k_chunks_and_one_more_per_failure() -> None:
    """Candidates are pulled lazily: k per segment, plus one for each rejected chunk, and
    every rejection is reported as it is found."""
    supplies: dict[int, Counting] = {}
    bad = TAMPER.chunks(0)[1]
    bad = Chunk(bad.chunk_id, b"\x00" * len(bad.data))

    def fetch(index: int) -> Counting:
        chunks = TAMPER.chunks(index)
        if index == 0:
            chunks = [chunks[0], bad, *chunks[2:]]
        supplies[index] = Counting(chunks)
        return supplies[index]

    reported: list[ChunkRejected] = []
    decoder = TAMPER.decoder(fetch, on_reject=reported.append)
    assert b"".join(decoder.blocks()) == TAMPER.data
    assert {index: supply.pulled for index, supply in supplies.items()} == {0: 4, 1: 3, 2: 3}
    assert reported == decoder.rejected
    assert [rejected.chunk_id for rejected in reported] == [bad.chunk_id]


def test_copies_of_a_chunk_count_once_and_a_good_copy_follows_a_bad_one() -> None:
    """The same chunk offered twice counts once; a good copy after a corrupt one of the
    same id is used (hedged fetches from two peers)."""
    chunks = TAMPER.chunks(0)
    corrupt = Chunk(chunks[0].chunk_id, bytes(len(chunks[0].data)))
    candidates = [chunks[2], chunks[2], corrupt, chunks[0], chunks[4]]
    decoded = decode_segment(
        Manifest.parse(TAMPER.manifest, TAMPER.capability.manifest_id),
        TAMPER.capability.file_key,
        0,
        candidates,
    )
    assert decoded.plaintext == TAMPER.data[:SEGMENT]
    assert [rejected.chunk_id for rejected in decoded.rejected] == [chunks[0].chunk_id]


def test_identical_chunks_of_a_one_of_n_segment() -> None:
    """With k = 1 every chunk of a segment is the same block: any one decodes it."""
    file = Encoded(content(1000), EncodingParams(1, 4, SEGMENT))
    assert len({chunk.chunk_id for chunk in file.chunks(0)}) == 1
    assert file.decode(lambda index: file.chunks(index)[3:]) == file.data


# ------------------------------------------------------------------------- repair


def _gf_multiply(a: int, b: int) -> int:
    """GF(2^8) with x^8 + x^4 + x^3 + x^2 + 1, as docs/PROTOCOL.md#chunks says."""
    product = 0
    while b:
        if b & 1:
            product ^= a
        a <<= 1
        if a & 0x100:
            a ^= 0x11D
        b >>= 1
    return product


def _gf_inverse(a: int) -> int:
    return next(b for b in range(1, 256) if _gf_multiply(a, b) == 1)


def _documented_matrix(k: int, n: int) -> list[list[int]]:
    """E = V x T^-1 exactly as docs/PROTOCOL.md#chunks writes it, by Gauss-Jordan."""
    points = [0] + [1] * (n - 1)
    for r in range(2, n):
        points[r] = _gf_multiply(points[r - 1], 2)
    vandermonde = []
    for p in points:
        row, power = [], 1
        for _ in range(k):
            row.append(power)
            power = _gf_multiply(power, p)
        vandermonde.append(row)
    # Invert T (the first k rows) by row reduction of [T | I].
    work = [vandermonde[r][:] + [int(r == c) for c in range(k)] for r in range(k)]
    for col in range(k):
        pivot = next(r for r in range(col, k) if work[r][col])
        work[col], work[pivot] = work[pivot], work[col]
        scale = _gf_inverse(work[col][col])
        work[col] = [_gf_multiply(x, scale) for x in work[col]]
        for r in range(k):
            if r != col and work[r][col]:
                f = work[r][col]
                work[r] = [x ^ _gf_multiply(f, y) for x, y in zip(work[r], work[col], strict=True)]
    inverse = [row[k:] for row in work]
    encoding = []
    for row in vandermonde:
        out = []
        for c in range(k):
            total = 0
            for t in range(k):
                total ^= _gf_multiply(row[t], inverse[t][c])
            out.append(total)
        encoding.append(out)
    return encoding


@pytest.mark.parametrize(("k", "n"), [(1, 3), (2, 4), (3, 10), (5, 9), (7, 20), (16, 40)])
def test_parity_matrix_is_the_documented_one(k: int, n: int) -> None:
    """The matrix read off zfec is E of the spec (whose first k rows are the identity),
    so another GF(2^8) coder given it computes the specified chunks."""
    documented = _documented_matrix(k, n)
    assert documented[:k] == [[int(r == c) for c in range(k)] for r in range(k)]
    expected = bytes(documented[k + i][j] for i in range(n - k) for j in range(k))
    assert parity_matrix(k, n) == expected


def test_rebuild_lost_chunks_without_the_key() -> None:
    """From any k chunks and the manifest alone, a repairer remakes the lost ones."""
    manifest = Manifest.parse(TAMPER.manifest, TAMPER.capability.verify_capability().manifest_id)
    for index in range(manifest.segment_count):
        chunks = TAMPER.chunks(index)
        corrupt = Chunk(chunks[4].chunk_id, bytes(len(chunks[4].data)))
        rebuilt = rebuild_chunks(
            manifest, index, [corrupt, chunks[3], chunks[1], chunks[2]], range(5)
        )
        assert rebuilt.chunks == tuple(chunks)
        assert [rejected.chunk_id for rejected in rebuilt.rejected] == [chunks[4].chunk_id]
    with pytest.raises(NotEnoughChunks):
        rebuild_chunks(manifest, 0, TAMPER.chunks(0)[:2], [4])
    with pytest.raises(LocalProtocolError):
        rebuild_chunks(manifest, 0, TAMPER.chunks(0), [5])


# ------------------------------------------------------------------------ sources


class Unseekable(io.RawIOBase):
    """A pipe-like file: reads at most 1000 bytes at a time, cannot seek."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self._data.read(min(len(buffer), 1000))
        buffer[: len(chunk)] = chunk
        return len(chunk)


class ReadOnly:
    """A file object with only read()."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def read(self, size: int = -1) -> bytes:
        return self._data.read(size)


def decoded(encoder: Encoder) -> bytes:
    segments = list(encoder.segments())
    decoder = Decoder(
        encoder.read_capability, encoder.manifest_bytes, lambda index: segments[index].chunks
    )
    return b"".join(decoder.blocks())


def test_sources_of_every_kind_give_the_same_file() -> None:
    """Bytes, seekable and unseekable files, read-only files and blocks of any size or
    type encode the same file."""
    data = content(3 * SEGMENT + 77)
    view = array.array("I", data[: len(data) // 4 * 4])
    rest = data[len(data) // 4 * 4 :]
    buffered = io.BytesIO(b"skip" + data)
    buffered.read(4)  # a seekable file is encoded from where it stands
    sources: list[tuple[Any, int | None]] = [
        (data, None),
        (bytearray(data), None),
        (io.BytesIO(data), None),
        (buffered, None),
        (Unseekable(data), len(data)),
        (ReadOnly(data), len(data)),
        ([data], len(data)),
        ((data[i : i + 999] for i in range(0, len(data), 999)), len(data)),
        ([b"", data[:5000], b"", memoryview(data)[5000:]], len(data)),
        ([memoryview(view), rest], len(data)),
    ]
    for source, size in sources:
        encoder = Encoder(source, random_bytes=seeded(0), size=size, params=SMALL)
        assert encoder.info.size == len(data)
        assert decoded(encoder) == data


def test_mutable_blocks_are_copied() -> None:
    """A caller that refills one bytearray for every block still encodes its file."""
    data = content(5 * SEGMENT)

    def refilled() -> Iterator[bytearray]:
        block = bytearray(3000)
        for start in range(0, len(data), 3000):
            piece = data[start : start + 3000]
            block[: len(piece)] = piece
            yield block if len(piece) == 3000 else bytearray(piece)

    encoder = Encoder(refilled(), random_bytes=seeded(0), size=len(data), params=SMALL)
    assert decoded(encoder) == data


def test_sizes_must_be_known_and_kept() -> None:
    """The size must be known up front and the source must give exactly that many bytes."""
    data = content(2 * SEGMENT)
    with pytest.raises(LocalProtocolError, match="needs size="):
        Encoder(iter([data]), random_bytes=seeded(0), params=SMALL)
    with pytest.raises(LocalProtocolError, match="cannot seek"):
        Encoder(Unseekable(data), random_bytes=seeded(0), params=SMALL)
    with pytest.raises(LocalProtocolError, match="declared"):
        Encoder(data, random_bytes=seeded(0), size=5, params=SMALL)
    cases: list[tuple[Any, int, str]] = [
        ([data], len(data) + 1, "ended after 8192 bytes; 8193 were declared"),
        ([data, b"", b"x"], len(data), "more than the 8192 bytes"),
        ([data[:100]], len(data), "ended after 100 bytes"),
        (Unseekable(data), len(data) - 1, "more than the 8191 bytes"),
        (Unseekable(data), len(data) + 10, "ended after 8192 bytes"),
        (ReadOnly(data), len(data) - 1, "more than"),
        (ReadOnly(data), 3 * SEGMENT, "ended after 8192 bytes"),
        (["text"], 4, "bytes-like, got str"),
    ]
    for source, size, message in cases:
        encoder = Encoder(source, random_bytes=seeded(0), size=size, params=SMALL)
        with pytest.raises(LocalProtocolError, match=message):
            list(encoder.segments())


def test_encoder_misuse() -> None:
    """Segments are iterated once, the manifest waits for them, randomness is checked."""
    encoder = Encoder(b"abc", random_bytes=seeded(0), params=SMALL)
    with pytest.raises(LocalProtocolError, match="exhausted"):
        _ = encoder.manifest_bytes
    list(encoder.segments())
    with pytest.raises(LocalProtocolError, match="only once"):
        encoder.segments()
    assert encoder.manifest.unseal(encoder.read_capability.file_key) == FileInfo("", 3)
    with pytest.raises(LocalProtocolError, match="random_bytes"):
        Encoder(b"abc", random_bytes=lambda size: bytes(size - 1))
    with pytest.raises(LocalProtocolError, match="file name"):
        Encoder(b"abc", random_bytes=seeded(0), name="x" * 256)
    with pytest.raises(LocalProtocolError, match="window"):
        Encoder(b"abc", random_bytes=seeded(0), window=0)
    with pytest.raises(LocalProtocolError, match="larger segment size"):
        Encoder(iter([]), random_bytes=seeded(0), size=2**45, params=SMALL)
    decoder = Decoder(encoder.read_capability, encoder.manifest_bytes, lambda index: [])
    decoder.blocks()
    with pytest.raises(LocalProtocolError, match="only once"):
        decoder.blocks()
    verify = encoder.read_capability.verify_capability()
    with pytest.raises(LocalProtocolError, match="ReadCapability"):
        Decoder(verify, encoder.manifest_bytes, lambda index: [])  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError, match="chunk id is bytes"):
        decode_segment(encoder.manifest, bytes(32), 0, [("id", b"")])  # type: ignore[list-item]


def test_encoder_draws_the_key_then_the_nonce_prefix() -> None:
    """The key is the first 32 random bytes and the nonce prefix the next 16."""
    key, prefix = bytes(range(32)), bytes(range(16))
    encoder = Encoder(b"hello", random_bytes=fixed_random(key, prefix), params=SMALL)
    list(encoder.segments())
    assert encoder.read_capability.file_key == key
    assert encoder.manifest.nonce_prefix == prefix


def test_encode_segment_checks_its_plaintext_size() -> None:
    """Every segment but the last is exactly the segment size; the last is not empty."""
    arguments: dict[str, Any] = {
        "segment_count": 2,
        "key": bytes(32),
        "nonce_prefix": bytes(16),
        "params": SMALL,
    }
    assert isinstance(encode_segment(bytes(SEGMENT), 0, **arguments), EncodedSegment)
    assert isinstance(encode_segment(b"x", 1, **arguments), EncodedSegment)
    for plaintext, index in [(bytes(SEGMENT - 1), 0), (b"", 1), (bytes(SEGMENT + 1), 1), (b"x", 2)]:
        with pytest.raises(LocalProtocolError):
            encode_segment(plaintext, index, **arguments)


# ---------------------------------------------------------------------- executors


class Deferred:
    """An executor that runs each job only when its result is asked for, and records the
    most jobs ever waiting."""

    def __init__(self) -> None:
        self.waiting = 0
        self.most_waiting = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Deferred.Job:
        self.waiting += 1
        self.most_waiting = max(self.most_waiting, self.waiting)
        return Deferred.Job(self, fn, args)

    class Job:
        def __init__(self, owner: Deferred, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
            self.owner, self.fn, self.args = owner, fn, args

        def result(self) -> Any:
            self.owner.waiting -= 1
            return self.fn(*self.args)


def test_executor_gives_the_same_bytes_in_order() -> None:
    """Encoding and decoding in worker threads give exactly the inline results."""
    data = content(10 * SEGMENT + 5)
    inline = Encoded(data, seed=5)
    with ThreadPoolExecutor(max_workers=2) as executor:
        threaded = Encoder(
            data, random_bytes=seeded(5), name="f", params=SMALL, executor=executor, window=3
        )
        segments = list(threaded.segments())
        assert segments == inline.segments
        assert threaded.manifest_bytes == inline.manifest
        decoder = inline.decoder(
            lambda index: inline.chunks(index)[5:], executor=executor, window=3
        )
        assert b"".join(decoder.blocks()) == data


@pytest.mark.parametrize("window", [1, 2, 5])
def test_executor_window_bounds_the_segments_in_flight(window: int) -> None:
    """No more than `window` segments are ever submitted and not yet collected."""
    data = content(12 * SEGMENT)
    encoding = Deferred()
    encoder = Encoder(data, random_bytes=seeded(0), params=SMALL, executor=encoding, window=window)
    segments = list(encoder.segments())
    assert encoding.most_waiting == window
    decoding = Deferred()
    bad = Chunk(segments[3].chunks[0].chunk_id, bytes(len(segments[3].chunks[0].data)))

    def fetch(index: int) -> list[Chunk]:
        chunks = list(segments[index].chunks)
        return [bad, *chunks[1:]] if index == 3 else chunks

    decoder = Decoder(
        encoder.read_capability, encoder.manifest_bytes, fetch, executor=decoding, window=window
    )
    assert b"".join(decoder.blocks()) == data
    assert decoding.most_waiting == window
    assert [rejected.chunk_id for rejected in decoder.rejected] == [bad.chunk_id]


# ------------------------------------------------------------------------- memory


def test_memory_stays_flat_encoding_a_gigabyte() -> None:
    """Encoding a 1 GiB stream with the default parameters peaks, by tracemalloc, below
    5 segments plus the manifest (8 if the consumer holds each segment while asking for
    the next)."""
    # What is alive at the peak: a plaintext buffer and one segment's chunks as they are
    # made (n/k = 3.3 segments), plus the segment the consumer holds, if it does.
    block = content(MiB)
    size = 1024 * MiB
    segment_size = EncodingParams().segment_size
    tracemalloc.start()
    try:
        started = time.perf_counter()
        encoder = Encoder((block for _ in range(1024)), random_bytes=seeded(0), size=size)
        chunks = 0
        for segment in encoder.segments():
            chunks += len(segment.chunks)
            del segment
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        holding = Encoder((block for _ in range(64)), random_bytes=seeded(0), size=64 * MiB)
        for _ in holding.segments():
            pass
        _, holding_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert chunks == 256 * 10
    print(
        f"encoded 1 GiB in {elapsed:.1f} s, tracemalloc peak {peak / MiB:.1f} MiB "
        f"({holding_peak / MiB:.1f} MiB when the consumer holds a segment)"
    )
    manifest_size = len(encoder.manifest_bytes)
    assert peak < 5 * segment_size + manifest_size, f"peak {peak / MiB:.1f} MiB"
    assert holding_peak < 8 * segment_size, f"peak {holding_peak / MiB:.1f} MiB"


def test_memory_stays_flat_with_an_executor() -> None:
    """With two workers and a window of 2, encoding peaks below (window + 2) times what
    one segment and its chunks take."""
    block = content(MiB)
    params = EncodingParams()
    tracemalloc.start()
    try:
        with ThreadPoolExecutor(max_workers=2) as executor:
            encoder = Encoder(
                (block for _ in range(128)),
                random_bytes=seeded(0),
                size=128 * MiB,
                executor=executor,
                window=2,
            )
            for _ in encoder.segments():
                pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    per_segment = params.segment_size * (1 + params.n / params.k)
    print(f"encoded 128 MiB on 2 workers, tracemalloc peak {peak / MiB:.1f} MiB")
    assert peak < 4 * per_segment, f"peak {peak / MiB:.1f} MiB"


def test_memory_stays_flat_decoding() -> None:
    """Decoding 64 MiB from parity chunks peaks below 4 segments."""
    data_block = content(MiB)
    encoder = Encoder((data_block for _ in range(64)), random_bytes=seeded(0), size=64 * MiB)
    parity = [segment.chunks[7:] for segment in encoder.segments()]
    tracemalloc.start()
    try:
        decoder = Decoder(encoder.read_capability, encoder.manifest_bytes, lambda i: parity[i])
        count = 0
        for block in decoder.blocks():
            assert block[: len(data_block)] == data_block
            count += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 16
    print(f"decoded 64 MiB from parity chunks, tracemalloc peak {peak / MiB:.1f} MiB")
    assert peak < 4 * EncodingParams().segment_size, f"peak {peak / MiB:.1f} MiB"


def test_a_group_is_rebuilt_from_any_k_of_its_chunks_without_a_manifest() -> None:
    """rebuild_group gives a group's missing chunks from k others and their ids alone;
    chunks that are not the group's, or ids from two segments, are refused."""
    params = EncodingParams(3, 10, 4096)
    rng = random.Random(31)
    segment = encode_segment(
        rng.randbytes(4096),
        0,
        segment_count=1,
        key=rng.randbytes(32),
        nonce_prefix=rng.randbytes(16),
        params=params,
    )
    ids = [chunk.chunk_id for chunk in segment.chunks]
    have = {number: segment.chunks[number].data for number in (2, 5, 9)}
    rebuilt = rebuild_group(3, 10, ids, have, [0, 1, 7])
    assert [chunk.data for chunk in rebuilt] == [segment.chunks[j].data for j in (0, 1, 7)]
    with pytest.raises(LocalProtocolError, match="not the group's chunk 5"):
        rebuild_group(3, 10, ids, {**have, 5: bytes(len(have[5]))}, [0])
    other = encode_segment(
        rng.randbytes(4096),
        0,
        segment_count=1,
        key=rng.randbytes(32),
        nonce_prefix=rng.randbytes(16),
        params=params,
    )
    mixed = [*ids[:9], other.chunks[9].chunk_id]
    with pytest.raises(InconsistentGroup):
        rebuild_group(3, 10, mixed, {j: segment.chunks[j].data for j in (0, 1, 2)}, [9])
