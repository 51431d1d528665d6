"""The push-style FileEncoder and FileDecoder (protocol/stream.py): bytes in, segments
out, in any pieces, with the same bytes as the pull-style Encoder and the vectors."""

from __future__ import annotations

import io
import random
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.capability import ReadCapability
from protocol.errors import LocalProtocolError, NotEnoughChunks
from protocol.manifest import MIN_SEGMENT_SIZE, EncodingParams
from protocol.stream import Encoder, FileDecoder, FileEncoder, fill_from

DETERMINISTIC = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SEGMENT = MIN_SEGMENT_SIZE
SMALL = EncodingParams(3, 10, SEGMENT)


def seeded(seed: int) -> Callable[[int], bytes]:
    return random.Random(seed).randbytes


def drain(encoder: FileEncoder) -> list[tuple[int, list[bytes]]]:
    """Encode and record every segment ready now; their (index, chunk ids)."""
    out = []
    while (plaintext := encoder.next_plaintext()) is not None:
        segment = encoder.encode(plaintext)
        encoder.record(segment)
        out.append((segment.index, [chunk.chunk_id for chunk in segment.chunks]))
    return out


@DETERMINISTIC
@given(
    size=st.integers(min_value=0, max_value=5 * SEGMENT + 7),
    cuts=st.lists(st.integers(min_value=1, max_value=3 * SEGMENT), max_size=20),
)
def test_pieces_of_any_size_give_the_pull_encoders_bytes(size: int, cuts: list[int]) -> None:
    """Pushing the file in pieces of any sizes gives the segments, manifest and
    capability the pull-style Encoder gives for the whole file."""
    data = random.Random(size).randbytes(size)
    reference = Encoder(data, random_bytes=seeded(1), params=SMALL)
    expected = [(s.index, [c.chunk_id for c in s.chunks]) for s in reference.segments()]
    encoder = FileEncoder(size=size, random_bytes=seeded(1), params=SMALL)
    got = []
    position = 0
    for cut in cuts:
        piece = data[position : position + cut]
        position += len(piece)
        encoder.receive_data(bytearray(piece))  # mutable: always copied
        got += drain(encoder)
    encoder.receive_data(data[position:])
    encoder.end_of_data()
    got += drain(encoder)
    assert got == expected
    assert encoder.done and encoder.manifest_bytes == reference.manifest_bytes
    assert encoder.read_capability == reference.read_capability


def test_segments_come_out_as_soon_as_their_bytes_are_in() -> None:
    """A segment is ready once its last byte arrives, not when the file ends; the
    padding-only segments follow the file's last byte."""
    size = 2 * SEGMENT + 10  # padme(8202) = 8704: 3 segments, 10 file bytes in the last
    encoder = FileEncoder(size=size, random_bytes=seeded(0), params=SMALL)
    assert encoder.segment_count == 3
    encoder.receive_data(bytes(SEGMENT - 1))
    assert encoder.next_plaintext() is None
    encoder.receive_data(bytes(1))
    first = encoder.next_plaintext()
    assert first is not None and first.index == 0 and len(first.data) == SEGMENT
    assert encoder.next_plaintext() is None
    encoder.receive_data(bytes(SEGMENT + 10))
    indexes = [p.index for p in iter(encoder.next_plaintext, None)]
    assert indexes == [1, 2]
    assert encoder.next_plaintext() is None


def test_a_whole_immutable_segment_is_not_copied() -> None:
    """A bytes block holding a whole segment is encoded from the block itself."""
    data = random.Random(3).randbytes(2 * SEGMENT)
    encoder = FileEncoder(size=len(data), random_bytes=seeded(0), params=SMALL)
    encoder.receive_data(data)
    first = encoder.next_plaintext()
    assert first is not None
    assert isinstance(first.data, memoryview) and first.data.obj is data


def test_writable_and_advance_fill_the_segment_in_place() -> None:
    """writable() is the segment's own buffer, limited to the file bytes it holds."""
    encoder = FileEncoder(size=SEGMENT + 5, random_bytes=seeded(0), params=SMALL)
    target = encoder.writable()
    assert target.nbytes == SEGMENT
    target[:3] = b"abc"
    encoder.advance(3)
    assert encoder.writable().nbytes == SEGMENT - 3
    with pytest.raises(LocalProtocolError, match="beyond"):
        encoder.advance(SEGMENT)
    encoder.receive_data(bytes(SEGMENT - 3))
    last = encoder.writable()
    assert last.nbytes == 5  # the file's last 5 bytes; the rest of the segment is padding
    plaintext = encoder.next_plaintext()
    assert plaintext is not None and bytes(plaintext.data[:3]) == b"abc"


@pytest.mark.parametrize("size", [0, 1, SEGMENT, 3 * SEGMENT + 1])
def test_fill_from_reads_a_file_with_no_copy(size: int) -> None:
    """fill_from reads a file object segment by segment into the encoder's buffers."""
    data = random.Random(size).randbytes(size)
    reference = Encoder(data, random_bytes=seeded(2), params=SMALL)
    list(reference.segments())
    encoder = FileEncoder(size=size, random_bytes=seeded(2), params=SMALL)
    source = io.BytesIO(data)
    while True:
        fill_from(encoder, source)
        drain(encoder)
        if not encoder.remaining:
            break
    encoder.end_of_data()
    drain(encoder)
    assert encoder.manifest_bytes == reference.manifest_bytes


def test_fill_from_refuses_a_file_that_is_short_or_long() -> None:
    """A file that ends early or goes on past the declared size is refused."""
    short = FileEncoder(size=10, random_bytes=seeded(0), params=SMALL)
    with pytest.raises(LocalProtocolError, match="ended after 4 bytes; 10"):
        fill_from(short, io.BytesIO(b"1234"))
    long = FileEncoder(size=4, random_bytes=seeded(0), params=SMALL)
    with pytest.raises(LocalProtocolError, match="more than the 4 bytes"):
        fill_from(long, io.BytesIO(b"12345"))


def test_misuse_is_refused() -> None:
    """Too many bytes, too few, segments recorded out of order, an early manifest."""
    encoder = FileEncoder(size=SEGMENT * 2, random_bytes=seeded(0), params=SMALL)
    with pytest.raises(LocalProtocolError, match="more than the 8192 bytes"):
        encoder.receive_data(bytes(SEGMENT * 2 + 1))
    encoder.receive_data(bytes(SEGMENT * 2))
    with pytest.raises(LocalProtocolError, match="more than"):
        encoder.receive_data(b"x")
    plaintexts = list(iter(encoder.next_plaintext, None))
    second = encoder.encode(plaintexts[1])
    with pytest.raises(LocalProtocolError, match="segment 1 recorded, segment 0 expected"):
        encoder.record(second)
    with pytest.raises(LocalProtocolError, match="ready once"):
        encoder.manifest  # noqa: B018
    short = FileEncoder(size=5, random_bytes=seeded(0), params=SMALL)
    short.receive_data(b"abc")
    with pytest.raises(LocalProtocolError, match="ended after 3 bytes; 5 were declared"):
        short.end_of_data()
    with pytest.raises(LocalProtocolError, match="size"):
        FileEncoder(size=-1, random_bytes=seeded(0))
    blind = FileEncoder(size=SEGMENT, random_bytes=seeded(0), params=SMALL)
    with pytest.raises(LocalProtocolError, match="before writable"):
        blind.advance(SEGMENT)  # nothing was written: zeros must not pass for the file


def test_an_empty_file_has_its_manifest_at_the_end_of_data() -> None:
    """No segment, and the manifest once the end of the data is said."""
    encoder = FileEncoder(size=0, random_bytes=seeded(0), params=SMALL)
    assert encoder.next_plaintext() is None and not encoder.done
    encoder.end_of_data()
    assert encoder.done and encoder.manifest.segment_count == 0


def test_file_decoder_decodes_any_segment_in_any_order_cut_at_the_end() -> None:
    """decode(index) works in any order; the last segment with file bytes is cut where
    the file ends, and padding-only segments are not readable."""
    size = 2 * SEGMENT + 10
    data = random.Random(5).randbytes(size)
    encoder = Encoder(data, random_bytes=seeded(5), params=SMALL)
    segments = list(encoder.segments())
    assert len(segments) == 3  # padme(8202) = 8704: 10 file bytes in the third
    decoder = FileDecoder(encoder.read_capability, encoder.manifest_bytes)
    assert decoder.segments_to_read == 3 and decoder.size == size
    tail = decoder.decode(2, segments[2].chunks[5:])  # parity chunks only
    head = decoder.decode(0, segments[0].chunks)
    middle = decoder.decode(1, segments[1].chunks[3:], verified=True)
    assert bytes(head.plaintext) + bytes(middle.plaintext) + bytes(tail.plaintext) == data
    assert tail.plaintext.nbytes == 10
    with pytest.raises(NotEnoughChunks):
        decoder.decode(0, segments[0].chunks[:2])
    with pytest.raises(LocalProtocolError, match="file bytes"):
        decoder.decode(3, [])


def test_padding_only_segments_are_encoded_but_never_read() -> None:
    """A file whose Padme bucket adds whole segments has them encoded like the others,
    and the decoder reads only the segments with file bytes."""
    size = 2**20 + 1  # padme: 2**20 + 2**15, so 8 segments of padding alone
    encoder = FileEncoder(size=size, random_bytes=seeded(6), params=SMALL)
    encoder.receive_data(bytes(size))
    encoder.end_of_data()
    assert len(drain(encoder)) == encoder.segment_count == 264
    decoder = FileDecoder(encoder.read_capability, encoder.manifest_bytes)
    assert decoder.segments_to_read == 257
    with pytest.raises(LocalProtocolError, match="file bytes"):
        decoder.decode(257, [])
    verify_only = ReadCapability(encoder.manifest_id, bytes(32))
    with pytest.raises(Exception, match="key"):
        FileDecoder(verify_only, encoder.manifest_bytes)


def test_writable_then_a_whole_bytes_segment_does_not_reuse_the_buffer() -> None:
    """A buffer writable() made and nothing written to it is dropped when a whole
    immutable segment arrives, so the next segment gets a buffer of its own."""
    data = random.Random(8).randbytes(SEGMENT + 100)
    reference = Encoder(data, random_bytes=seeded(4), params=SMALL)
    list(reference.segments())
    encoder = FileEncoder(size=len(data), random_bytes=seeded(4), params=SMALL)
    assert encoder.writable().nbytes == SEGMENT  # made, left empty
    encoder.receive_data(data[:SEGMENT])
    encoder.receive_data(data[SEGMENT:])
    encoder.end_of_data()
    drain(encoder)
    assert encoder.manifest_bytes == reference.manifest_bytes
