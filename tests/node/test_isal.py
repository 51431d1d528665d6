"""node/isal.py: ISA-L computes exactly zfec's parity blocks, or is not used."""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import platform
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node import isal
from node.isal import IsalParity, best_parity, load_isal
from protocol.encoding import encode_segment, zfec_parity
from protocol.errors import LocalProtocolError
from protocol.manifest import EncodingParams
from protocol.stream import Encoder
from tests.protocol.make_encoding_vectors import fixed_random

VECTORS_PATH = Path(__file__).parent.parent / "vectors" / "encoding-vectors.json"
VECTORS: list[dict[str, Any]] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))["vectors"]
# pyeclib, which bundles ISA-L, is a dependency here: not finding it is a broken install.
ISAL_EXPECTED = sys.platform == "linux" and platform.machine() in ("x86_64", "aarch64")


@pytest.fixture(scope="module")
def parity() -> IsalParity:
    found = load_isal()
    if found is None:
        if ISAL_EXPECTED:
            pytest.fail("ISA-L did not load: is pyeclib installed?")
        pytest.skip("no ISA-L on this platform")
    return found


@pytest.fixture
def fresh_choice() -> Iterator[None]:
    best_parity.cache_clear()
    yield
    best_parity.cache_clear()


@settings(max_examples=150, deadline=None)
@given(
    shape=st.integers(1, 12).flatmap(
        lambda k: st.tuples(st.just(k), st.integers(k + 1, min(k + 12, 256)))
    ),
    size=st.one_of(st.integers(1, 80), st.integers(81, 5000)),
    seed=st.binary(min_size=1, max_size=64),
)
def test_isal_gives_zfecs_bytes(
    parity: IsalParity, shape: tuple[int, int], size: int, seed: bytes
) -> None:
    """Any k-of-n and block length (the short ones take ISA-L's scalar tail), any bytes."""
    k, n = shape
    stream = (seed * (size * k // len(seed) + 1))[: size * k]
    blocks = [bytes(b ^ j for b in stream[j * size : (j + 1) * size]) for j in range(k)]
    assert parity.agrees(k, n)  # ISA-L computes these, not the zfec fallback
    assert parity(blocks, k, n) == zfec_parity(blocks, k, n)


def test_isal_covers_the_widest_code(parity: IsalParity) -> None:
    """n = 256, zfec's limit: every row of the matrix."""
    blocks = [bytes([j]) * 100 + bytes(range(256)) for j in range(20)]
    assert parity.agrees(20, 256)
    assert parity(blocks, 20, 256) == zfec_parity(blocks, 20, 256)


@pytest.mark.parametrize("vector", VECTORS, ids=[vector["description"] for vector in VECTORS])
def test_published_vectors_with_isal(parity: IsalParity, vector: dict[str, Any]) -> None:
    """Files encoded with ISA-L's parity are the published vectors, chunk for chunk."""
    key = bytes.fromhex(vector["file_key"])
    prefix = bytes.fromhex(vector["nonce_prefix"])
    params = EncodingParams(vector["k"], vector["n"], vector["segment_size"])
    assert params.n == params.k or parity.agrees(params.k, params.n)
    encoder = Encoder(
        bytes.fromhex(vector["input"]),
        random_bytes=fixed_random(key, prefix),
        name=vector["name"],
        params=params,
        parity=parity,
    )
    chunks = [
        [(chunk.chunk_id.hex(), chunk.data.hex()) for chunk in segment.chunks]
        for segment in encoder.segments()
    ]
    expected = [
        [(chunk["id"], chunk["data"]) for chunk in segment["chunks"]]
        for segment in vector["segments"]
    ]
    assert chunks == expected
    assert encoder.manifest_id.hex() == vector["manifest_id"]


@pytest.mark.parametrize(("k", "n"), [(95, 120), (100, 120), (200, 256), (255, 256)])
def test_wide_codes_with_many_data_blocks(parity: IsalParity, k: int, n: int) -> None:
    """k up to 255 (the self-check once built its test blocks too short past k = 94, and
    every upload with such a k failed)."""
    params = EncodingParams(k, n, 64 * 1024)
    data = bytes(range(256)) * 700
    with_isal = Encoder(
        data, random_bytes=fixed_random(bytes(32), bytes(16)), params=params, parity=parity
    )
    with_zfec = Encoder(data, random_bytes=fixed_random(bytes(32), bytes(16)), params=params)
    assert parity.agrees(k, n)
    assert list(with_isal.segments()) == list(with_zfec.segments())


def test_bad_blocks_are_refused(parity: IsalParity) -> None:
    with pytest.raises(ValueError, match="one length"):
        parity([b"abc", b"ab", b"abc"], 3, 5)
    with pytest.raises(ValueError, match="one length"):
        parity([b"abc", bytearray(b"abc"), b"abc"], 3, 5)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="2 data blocks"):
        parity([b"abc", b"abc"], 3, 5)


class LyingLibrary:
    """Has ISA-L's two entry points (plain functions, which take the ctypes attributes
    IsalParity sets), but its parity is garbage."""

    def __init__(self) -> None:
        self.encodes = 0

        def ec_init_tables(k: int, rows: int, matrix: bytes, tables: Any) -> None:
            pass

        def ec_encode_data(
            size: int, k: int, rows: int, tables: Any, data: Any, coding: Any
        ) -> None:
            self.encodes += 1
            for row in range(rows):
                ctypes.memset(coding[row], 0xAB, size)

        self.ec_init_tables = ec_init_tables
        self.ec_encode_data = ec_encode_data


def test_a_library_that_disagrees_with_zfec_is_not_used(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The self-check catches a wrong library before it computes a single real chunk,
    and zfec's parity is what comes out."""
    lying = LyingLibrary()
    parity = IsalParity(lying, "liar.so")  # type: ignore[arg-type]
    blocks = [b"one!", b"two!", b"three"[:4]]
    with caplog.at_level(logging.WARNING, logger="node.isal"):
        assert parity(blocks, 3, 10) == zfec_parity(blocks, 3, 10)
    assert lying.encodes == 1  # the self-check only
    assert "liar.so disagrees with zfec for 3-of-10" in caplog.text
    assert not parity.agrees(3, 10)
    parity(blocks, 3, 10)
    assert lying.encodes == 1  # not tried again


def test_a_library_wrong_only_on_short_blocks_is_not_used(parity: IsalParity) -> None:
    """The self-check tries several lengths, so a library right on long blocks but wrong
    on short ones (another code path in ISA-L) is caught too."""
    real = ctypes.CDLL(parity.name)
    IsalParity(real)  # gives the real functions their argument types

    class ShortWrong:
        ec_init_tables = real.ec_init_tables

        def __init__(self) -> None:
            def ec_encode_data(
                size: int, k: int, rows: int, tables: Any, data: Any, coding: Any
            ) -> None:
                real.ec_encode_data(size, k, rows, tables, data, coding)
                if size < 64:
                    ctypes.memset(coding[0], 0, 1)

            self.ec_encode_data = ec_encode_data

    suspect = IsalParity(ShortWrong(), "short-wrong.so")  # type: ignore[arg-type]
    assert not suspect.agrees(3, 10)
    blocks = [bytes([1, 2, 3]), bytes([4, 5, 6]), bytes([7, 8, 9])]
    assert suspect(blocks, 3, 10) == zfec_parity(blocks, 3, 10)


def test_a_library_that_raises_means_zfec(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def __init__(self) -> None:
            def fail(*arguments: Any) -> None:
                raise OSError("no such luck")

            self.ec_init_tables = fail
            self.ec_encode_data = fail

    broken = IsalParity(Broken(), "broken.so")  # type: ignore[arg-type]
    blocks = [b"ab", b"cd"]
    with caplog.at_level(logging.WARNING, logger="node.isal"):
        assert broken(blocks, 2, 4) == zfec_parity(blocks, 2, 4)
    assert "broken.so failed its check for 2-of-4" in caplog.text


def test_blocks_over_a_c_int_are_refused(
    parity: IsalParity, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ec_encode_data's length is a C int: longer blocks would wrap around."""
    monkeypatch.setattr(isal, "MAX_BLOCK_SIZE", 10)
    with pytest.raises(ValueError, match="over ISA-L's 10"):
        parity([bytes(11)] * 3, 3, 10)


def test_the_next_library_is_tried_when_one_fails_its_check(
    parity: IsalParity, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = iter([False, True])
    monkeypatch.setattr(isal, "find_isal", lambda: [parity.name, parity.name])
    monkeypatch.setattr(IsalParity, "agrees", lambda self, k, n: next(answers))
    assert load_isal() is not None
    assert next(answers, "used up") == "used up"


def test_nothing_to_load_means_no_isal(monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing file, or a library without ISA-L's functions (libc), is passed over."""
    libc = ctypes.util.find_library("c")
    places = ["/nonexistent/libisal.so.2"] + ([libc] if libc else [])
    monkeypatch.setattr(isal, "find_isal", lambda: places)
    assert load_isal() is None


def test_freehold_parity_zfec_turns_isal_off(
    monkeypatch: pytest.MonkeyPatch, fresh_choice: None
) -> None:
    monkeypatch.setenv("FREEHOLD_PARITY", "zfec")
    assert best_parity() is zfec_parity


def test_default_choice_is_isal_where_it_is_installed(
    monkeypatch: pytest.MonkeyPatch, fresh_choice: None
) -> None:
    monkeypatch.delenv("FREEHOLD_PARITY", raising=False)
    chosen = best_parity()
    if ISAL_EXPECTED:
        assert isinstance(chosen, IsalParity)
    blocks = [b"x" * 10, b"y" * 10, b"z" * 10]
    assert chosen(blocks, 3, 10) == zfec_parity(blocks, 3, 10)


def test_a_parity_function_giving_the_wrong_blocks_is_an_error() -> None:
    """encode_segment does not trust its parity function's shape."""
    params = EncodingParams(3, 10, 4096)
    for wrong in (
        lambda blocks, k, n: zfec_parity(blocks, k, n)[:-1],
        lambda blocks, k, n: [block + b"!" for block in zfec_parity(blocks, k, n)],
    ):
        with pytest.raises(LocalProtocolError, match="parity function gave"):
            encode_segment(
                b"data",
                0,
                segment_count=1,
                key=bytes(32),
                nonce_prefix=bytes(16),
                params=params,
                parity=wrong,
            )
