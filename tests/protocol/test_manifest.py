"""Tests of protocol/manifest.py: Padme, nonces and associated data, the sealed info,
and the manifest codec's strictness."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import blake3
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.aead import TAG_SIZE, decrypt_into, encrypt_into
from protocol.chunk import chunk_id as manifest_id
from protocol.errors import (
    CorruptChunk,
    ForeignChunk,
    LocalProtocolError,
    TamperedManifest,
    WrongKey,
)
from protocol.manifest import (
    DEFAULT_SEGMENT_SIZE,
    MAX_MANIFEST_SIZE,
    MAX_SEGMENT_SIZE,
    MIN_SEGMENT_SIZE,
    SEALED_INFO_SIZE,
    EncodingParams,
    FileInfo,
    Manifest,
    padme,
    sealed_info_nonce,
    segment_associated_data,
    segment_nonce,
)

DETERMINISTIC = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=150,
    suppress_health_check=[HealthCheck.too_slow],
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
PREFIX = bytes(range(0xA0, 0xB0))
SMALL = EncodingParams(3, 10, MIN_SEGMENT_SIZE)


def make_manifest(
    size: int, params: EncodingParams = SMALL, name: str = "f", key: bytes = KEY
) -> Manifest:
    """A valid manifest for a file of `size` bytes, with made-up chunk ids."""
    padded = padme(size)
    count = params.segment_count(padded)
    rng = random.Random(size)
    ids = rng.randbytes(count * params.n * 32)
    return Manifest(params, padded, PREFIX, ids, FileInfo(name, size).seal(key, PREFIX))


# ---------------------------------------------------------------------------- Padme


@pytest.mark.parametrize(
    ("length", "padded"),
    [
        (0, 0),
        (1, 1),
        (2, 2),
        (3, 3),
        (7, 7),
        (8, 8),
        (9, 10),
        (17, 18),
        (100, 104),
        (1000, 1024),
        (4097, 4352),
        (10_000, 10_240),
        (1_000_000, 1_015_808),
        (2**30, 2**30),
        (2**30 + 1, 2**30 + 2**25),
        (10**12, 117 * 2**33),
    ],
)
def test_padme_known_values(length: int, padded: int) -> None:
    """Padme rounds to the buckets of the PURBs paper, with 0, 1 and 2 their own."""
    assert padme(length) == padded


@DETERMINISTIC
@given(st.integers(min_value=0, max_value=2**64))
def test_padme_properties(length: int) -> None:
    """A bucket holds its length, is its own bucket, costs at most 12% and has at most
    floor(log2 E) + 1 significant bits."""
    padded = padme(length)
    assert padded >= length
    assert padme(padded) == padded
    if length >= 3:
        assert padded - length <= length * 0.12
        exponent = length.bit_length() - 1
        significant = padded.bit_length() - (padded & -padded).bit_length() + 1
        assert significant <= exponent.bit_length() + 1


def test_padme_is_monotone_and_rejects_negative() -> None:
    """Longer inputs never pad shorter, and a negative length is a caller's bug."""
    values = [padme(length) for length in range(5000)]
    assert values == sorted(values)
    assert len(set(values)) < 500  # few buckets: that is the point
    with pytest.raises(LocalProtocolError):
        padme(-1)


# ----------------------------------------------------------- nonces and associated data


def test_nonce_and_associated_data_layout() -> None:
    """Nonces and associated data are laid out byte for byte as docs/PROTOCOL.md says."""
    assert segment_nonce(PREFIX, 0x0102) == PREFIX + bytes.fromhex("00 00000000000102")
    assert sealed_info_nonce(PREFIX) == PREFIX + bytes.fromhex("01 00000000000000")
    assert segment_associated_data(2, 3) == (
        b"freehold segment" + bytes.fromhex("01 0000000000000002 0000000000000003")
    )
    with pytest.raises(LocalProtocolError):
        segment_associated_data(3, 3)
    with pytest.raises(LocalProtocolError):
        segment_nonce(PREFIX[:-1], 0)
    with pytest.raises(LocalProtocolError):
        segment_nonce(PREFIX, 2**56)


def test_nonces_never_repeat_within_a_file() -> None:
    """Every segment nonce is distinct, and none is the sealed info's."""
    nonces = {segment_nonce(PREFIX, index) for index in range(10_000)}
    nonces.add(sealed_info_nonce(PREFIX))
    assert len(nonces) == 10_001


def test_direct_aead_matches_pynacl_public_wrappers() -> None:
    """The direct libsodium calls and PyNaCl's public wrappers give the same bytes."""
    plaintext = bytes(range(256)) * 17
    nonce = segment_nonce(PREFIX, 5)
    direct = bytearray(len(plaintext) + TAG_SIZE)
    public = bytearray(len(plaintext) + TAG_SIZE)
    encrypt_into(direct, plaintext, b"ad", nonce, KEY)
    encrypt_into(public, memoryview(plaintext), b"ad", nonce, KEY, direct=False)
    assert direct == public
    for use_direct in (True, False):
        out = bytearray(len(plaintext))
        assert decrypt_into(out, direct, b"ad", nonce, KEY, direct=use_direct)
        assert out == plaintext
        assert not decrypt_into(out, direct, b"AD", nonce, KEY, direct=use_direct)
        assert not decrypt_into(out, direct[:10], b"ad", nonce, KEY, direct=use_direct)
    # In place: the plaintext overwrites the ciphertext it came from.
    view = memoryview(direct)
    assert decrypt_into(view[: len(plaintext)], view, b"ad", nonce, KEY)
    assert direct[: len(plaintext)] == plaintext


# ------------------------------------------------------------------------ parameters


def test_encoding_params_are_validated() -> None:
    """k-of-n and the segment size are checked once, when the parameters are made."""
    assert EncodingParams() == EncodingParams(3, 10, DEFAULT_SEGMENT_SIZE)
    EncodingParams(1, 1, MIN_SEGMENT_SIZE)
    EncodingParams(256, 256, MAX_SEGMENT_SIZE)
    for k, n, segment_size in [
        (0, 10, 4096),
        (4, 3, 4096),
        (3, 257, 4096),
        (3, 10, 4095),
        (3, 10, MAX_SEGMENT_SIZE + 1),
        (True, 10, 4096),
    ]:
        with pytest.raises(LocalProtocolError):
            EncodingParams(k, n, segment_size)


# ----------------------------------------------------------------------- sealed info


def _utf8_size(text: str) -> int | None:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate
        return None


names = st.text(max_size=80).filter(lambda text: (_utf8_size(text) or 999) <= 255)


@DETERMINISTIC
@given(names, st.integers(min_value=0, max_value=100_000))
def test_sealed_info_round_trip(name: str, size: int) -> None:
    """Any name of up to 255 bytes of UTF-8 and any size come back from the sealed info."""
    manifest = make_manifest(size, name=name)
    assert len(manifest.sealed_info) == SEALED_INFO_SIZE
    assert manifest.unseal(KEY) == FileInfo(name, size)


def test_sealed_info_hides_the_name_length() -> None:
    """The sealed info is the same size whatever the name, and names are bounded."""
    assert len(FileInfo("", 0).seal(KEY, PREFIX)) == len(FileInfo("é" * 127, 0).seal(KEY, PREFIX))
    FileInfo("x" * 255, 0)
    with pytest.raises(LocalProtocolError):
        FileInfo("x" * 256, 0)
    with pytest.raises(LocalProtocolError):
        FileInfo("\udc80", 0)
    with pytest.raises(LocalProtocolError):
        FileInfo("x", -1)


def test_unseal_with_wrong_key_raises_wrong_key() -> None:
    """Another key does not open the sealed info: WrongKey, not garbage."""
    manifest = make_manifest(10)
    assert manifest.unseal(KEY) == FileInfo("f", 10)
    with pytest.raises(WrongKey):
        manifest.unseal(OTHER_KEY)
    with pytest.raises(LocalProtocolError):
        manifest.unseal(KEY[:31])


def test_unseal_checks_size_against_the_padded_size() -> None:
    """A sealed size outside the manifest's Padme bucket is a tampered manifest."""
    honest = make_manifest(5000)
    lying = Manifest(
        honest.params,
        honest.padded_size,
        PREFIX,
        honest.chunk_ids,
        FileInfo("f", 4000).seal(KEY, PREFIX),
    )
    with pytest.raises(TamperedManifest, match="pads to"):
        lying.unseal(KEY)


def test_unseal_rejects_malformed_sealed_plaintext() -> None:
    """Sealed info that decrypts but has junk after the name or a non-UTF-8 name is
    refused."""
    nonce = sealed_info_nonce(PREFIX)
    ad = b"freehold sealed info\x01"
    for plaintext, match in [
        ((0).to_bytes(8, "big") + b"\x01a" + b"\x00" * 253 + b"\x01", "not zero"),
        ((0).to_bytes(8, "big") + b"\x02\xff\xfe" + b"\x00" * 253, "UTF-8"),
    ]:
        sealed = bytearray(SEALED_INFO_SIZE)
        encrypt_into(sealed, plaintext, ad, nonce, KEY)
        manifest = Manifest(SMALL, 0, PREFIX, b"", bytes(sealed))
        with pytest.raises(TamperedManifest, match=match):
            manifest.unseal(KEY)


# -------------------------------------------------------------------------- manifest


def test_manifest_layout_queries() -> None:
    """Segment sizes, block sizes and per-segment chunk ids follow the layout."""
    manifest = make_manifest(10_000)  # padded 10240: segments of 4096, 4096, 2048
    assert manifest.segment_count == 3
    assert [manifest.plaintext_size(index) for index in range(3)] == [4096, 4096, 2048]
    assert manifest.ciphertext_size(2) == 2064
    assert manifest.block_size(0) == 1371  # ceil(4112 / 3)
    assert manifest.block_size(2) == 688
    ids = manifest.segment_chunk_ids(1)
    assert len(ids) == 10
    assert b"".join(ids) == manifest.chunk_ids[320:640]
    with pytest.raises(LocalProtocolError):
        manifest.segment_chunk_ids(3)
    assert make_manifest(0).segment_count == 0


def test_verify_chunk_tells_foreign_from_corrupt() -> None:
    """A chunk under an id the segment lacks is foreign; under its id with other bytes,
    corrupt; both errors carry the id."""
    params = EncodingParams(1, 3, MIN_SEGMENT_SIZE)
    block = bytes(range(100)) + bytes(20)  # 104 bytes of plaintext + tag
    block_id = blake3.blake3(block).digest()
    manifest = Manifest(params, 104, PREFIX, block_id * 3, FileInfo("f", 100).seal(KEY, PREFIX))
    assert manifest.block_numbers(0) == {block_id: (0, 1, 2)}
    assert manifest.verify_chunk(0, block_id, block) == (0, 1, 2)
    with pytest.raises(ForeignChunk) as foreign:
        manifest.verify_chunk(0, bytes(32), block)
    assert foreign.value.chunk_id == bytes(32)
    with pytest.raises(CorruptChunk) as corrupt:
        manifest.verify_chunk(0, block_id, block[:-1] + b"\x01")
    assert corrupt.value.chunk_id == block_id
    assert corrupt.value.segment_index == 0
    with pytest.raises(CorruptChunk, match="103 bytes, expected 120"):
        manifest.verify_chunk(0, block_id, block[:103])


def test_manifest_round_trip_and_wire_layout() -> None:
    """A manifest encodes to the documented msgpack array and parses back equal."""
    manifest = make_manifest(10_000)
    data = manifest.encode()
    fields = msgpack.unpackb(data)
    assert fields[:5] == [1, 3, 10, 4096, 10_240]
    assert fields[5:] == [PREFIX, manifest.chunk_ids, manifest.sealed_info]
    assert Manifest.parse(data, manifest_id(data)) == manifest
    assert Manifest.parse(memoryview(data), manifest_id(data)) == manifest


@DETERMINISTIC
@given(
    st.integers(min_value=1, max_value=12).flatmap(
        lambda n: st.tuples(st.integers(min_value=1, max_value=n), st.just(n))
    ),
    st.sampled_from([MIN_SEGMENT_SIZE, 5000, 65536]),
    st.integers(min_value=0, max_value=300_000),
)
def test_manifest_round_trip_property(kn: tuple[int, int], segment_size: int, size: int) -> None:
    """Every valid manifest survives encode and parse."""
    manifest = make_manifest(size, EncodingParams(kn[0], kn[1], segment_size))
    data = manifest.encode()
    assert Manifest.parse(data, manifest_id(data)) == manifest


def test_manifest_of_a_terabyte_file_is_representable() -> None:
    """A 1 TiB file with the default parameters has an 80 MiB manifest, under the limit."""
    params = EncodingParams()
    padded = padme(2**40)
    assert params.segment_count(padded) == 262_144
    ids = bytes(params.segment_count(padded) * params.n * 32)
    manifest = Manifest(params, padded, PREFIX, ids, bytes(SEALED_INFO_SIZE))
    data = manifest.encode()
    assert len(data) < MAX_MANIFEST_SIZE
    assert Manifest.parse(data, manifest_id(data)).segment_count == 262_144


def test_bad_manifests_are_refused_when_built() -> None:
    """Building a manifest that breaks a rule is the caller's bug: LocalProtocolError."""
    good = make_manifest(10_000)
    changes: list[dict[str, Any]] = [
        {"padded_size": 10_000},  # not a Padme bucket
        {"padded_size": -1},
        {"nonce_prefix": PREFIX[:-1]},
        {"chunk_ids": good.chunk_ids[:-32]},
        {"sealed_info": good.sealed_info[:-1]},
    ]
    for change in changes:
        with pytest.raises(LocalProtocolError):
            dataclasses.replace(good, **change)


def _packed(*fields: object) -> bytes:
    data: bytes = msgpack.packb(list(fields))
    return data


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "not msgpack"),
        (b"\xc1", "not msgpack"),
        (_packed(1, 3, 10, 4096, 0, PREFIX, b"", bytes(280)) + b"\x00", "trailing"),
        (msgpack.packb({"version": 1}), "expected an array"),
        (_packed(), "format version"),
        (_packed(2, 3, 10, 4096, 0, PREFIX, b"", bytes(280)), "unsupported format version 2"),
        (_packed(1, 3, 10, 4096, 0, PREFIX, b""), "expected 8 elements, got 7"),
        (_packed(1, True, 10, 4096, 0, PREFIX, b"", bytes(280)), "k: expected int, got bool"),
        (_packed(1, 3, 10, 4096, 0, "prefix", b"", bytes(280)), "nonce prefix: expected bytes"),
        (_packed(1, 0, 10, 4096, 0, PREFIX, b"", bytes(280)), "1 <= k <= n"),
        (_packed(1, 3, 257, 4096, 0, PREFIX, b"", bytes(280)), "1 <= k <= n"),
        (_packed(1, 3, 10, 1024, 0, PREFIX, b"", bytes(280)), "segment size 1024"),
        (_packed(1, 3, 10, 4096, 9, PREFIX, b"", bytes(280)), "not a Padme bucket"),
        (_packed(1, 3, 10, 4096, 8, PREFIX, b"", bytes(280)), "chunk ids: 0 bytes, expected 320"),
        (_packed(1, 3, 10, 4096, 2**64 - 1, PREFIX, b"", bytes(280)), "Padme"),
        (_packed(1, 3, 10, 4096, 0, PREFIX[:8], b"", bytes(280)), "nonce prefix"),
        (_packed(1, 3, 10, 4096, 0, PREFIX, b"", bytes(20)), "sealed info"),
        (msgpack.packb([1, 3, 10, 4096, 0, PREFIX, b"", msgpack.ExtType(1, b"")]), "extension"),
    ],
)
def test_malformed_manifests_say_what_is_wrong(data: bytes, match: str) -> None:
    """Each broken rule raises TamperedManifest naming the rule."""
    with pytest.raises(TamperedManifest, match=match):
        Manifest.parse(data, manifest_id(data))


def test_manifest_must_hash_to_its_id() -> None:
    """Bytes that do not hash to the expected id are refused before being parsed."""
    data = make_manifest(100).encode()
    with pytest.raises(TamperedManifest, match="do not hash"):
        Manifest.parse(data, bytes(32))
    with pytest.raises(LocalProtocolError):
        Manifest.parse(data, b"short")


@DETERMINISTIC
@given(st.binary(max_size=400))
def test_random_bytes_raise_only_tampered_manifest(data: bytes) -> None:
    """Arbitrary bytes, even with a matching id, raise TamperedManifest and nothing else."""
    with pytest.raises(TamperedManifest):
        Manifest.parse(data, manifest_id(data))


VALID = make_manifest(10_000).encode()


@DETERMINISTIC
@given(
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=len(VALID) - 1), st.integers(0, 255)),
        max_size=4,
    ),
    st.none() | st.integers(min_value=0, max_value=len(VALID) - 1),
)
def test_mutated_manifests_raise_only_tampered_manifest(
    changes: list[tuple[int, int]], cut: int | None
) -> None:
    """A valid manifest with bytes changed or cut off, checked against the id of the
    changed bytes, parses to a valid manifest or raises TamperedManifest."""
    data = bytearray(VALID)
    for position, value in changes:
        data[position] = value
    mutated = bytes(data if cut is None else data[:cut])
    try:
        manifest = Manifest.parse(mutated, manifest_id(mutated))
    except TamperedManifest:
        return
    again = manifest.encode()
    assert Manifest.parse(again, manifest_id(again)) == manifest


def test_manifest_size_limit() -> None:
    """A manifest over the size limit is refused before it is hashed or parsed."""
    with pytest.raises(TamperedManifest, match="at most"):
        Manifest.parse(bytes(MAX_MANIFEST_SIZE + 1), bytes(32))
