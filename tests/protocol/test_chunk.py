"""The chunk and its group record (protocol/chunk.py), alone and as STORE_CHUNK carries it."""

from __future__ import annotations

from typing import Any

import blake3
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.chunk import MAX_SHARES, GroupRecord, chunk_id, is_chunk
from protocol.errors import InvalidGroupRecord, RemoteProtocolError
from protocol.messages import (
    MESSAGES,
    PROTOCOL_VERSION,
    Envelope,
    Kind,
    MalformedMessage,
    StoreChunk,
    decode_envelope,
    encode_envelope,
)

DETERMINISTIC = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=200,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
ID = bytes(32)


def test_chunk_id_is_blake3_of_the_bytes() -> None:
    """A chunk's id is BLAKE3-256 of its bytes and nothing else."""
    data = b"freehold chunk"
    assert chunk_id(data) == blake3.blake3(data).digest()
    assert chunk_id(memoryview(data)) == chunk_id(bytearray(data))
    assert is_chunk(chunk_id(data), data)
    assert not is_chunk(chunk_id(data), data + b"\x00")


def test_group_record_names_its_chunk() -> None:
    """chunk_id is the id at the record's index; single() is a group of one."""
    ids = tuple(bytes([number]) * 32 for number in range(4))
    record = GroupRecord(2, 4, 1, ids)
    assert record.chunk_id == ids[1]
    assert GroupRecord.single(ids[2]) == GroupRecord(1, 1, 0, (ids[2],))


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ((0, 1, 0, (ID,)), "k = 0"),
        ((2, 1, 0, (ID,)), "k = 2"),
        ((1, 0, 0, ()), "n = 0"),
        ((1, MAX_SHARES + 1, 0, (ID,) * (MAX_SHARES + 1)), "n = 257"),
        ((1, 2, 2, (ID, ID)), "index = 2"),
        ((1, 2, -1, (ID, ID)), "index = -1"),
        ((1, 2, 0, (ID,)), "1 chunk ids for n = 2"),
        ((1, 1, 0, (ID[:31],)), "must be 32 bytes, not 31"),
        ((1, 1, 0, ("a" * 32,)), "must be 32 bytes, not str"),
        ((1, 1, 0, [ID]), "must be a tuple"),
        ((True, 1, 0, (ID,)), "k must be an integer"),
        ((1, 1.0, 0, (ID,)), "n must be an integer"),
    ],
)
def test_invalid_group_records_are_refused(fields: tuple[Any, ...], problem: str) -> None:
    """Each broken rule of a group record raises InvalidGroupRecord naming the problem."""
    with pytest.raises(InvalidGroupRecord, match=problem):
        GroupRecord(*fields)


def test_invalid_group_record_is_a_remote_protocol_error() -> None:
    """Group records come from peers and disk: their errors are the protocol's."""
    assert issubclass(InvalidGroupRecord, RemoteProtocolError)


@st.composite
def group_records(draw: st.DrawFn) -> GroupRecord:
    n = draw(st.integers(min_value=1, max_value=MAX_SHARES))
    ids = draw(st.lists(st.binary(min_size=32, max_size=32), min_size=n, max_size=n))
    return GroupRecord(
        draw(st.integers(min_value=1, max_value=n)),
        n,
        draw(st.integers(min_value=0, max_value=n - 1)),
        tuple(ids),
    )


def store_chunk_frame(group: object, data: bytes = b"data") -> bytes:
    body = [group, data]
    return msgpack.packb((PROTOCOL_VERSION, Kind.REQUEST, 7, MESSAGES.type_code(StoreChunk), body))


@DETERMINISTIC
@given(record=group_records())
def test_group_record_wire_round_trip(record: GroupRecord) -> None:
    """A record goes on the wire as [k, n, index, [id, ...]] and comes back equal."""
    frame = encode_envelope(Envelope(Kind.REQUEST, 7, StoreChunk(record, b"x")))
    wire = [record.k, record.n, record.index, list(record.chunk_ids)]
    assert frame == store_chunk_frame(wire, b"x")
    decoded = decode_envelope(frame).message
    assert isinstance(decoded, StoreChunk) and decoded.group == record


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-3, max_value=300)
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.binary(max_size=40)
    | st.binary(min_size=32, max_size=32)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=3), children)
    ),
    max_leaves=20,
)
near_records = st.tuples(
    st.integers(min_value=-1, max_value=258),
    st.integers(min_value=-1, max_value=258),
    st.integers(min_value=-1, max_value=258),
    st.lists(st.binary(min_size=30, max_size=33), max_size=8),
).map(list)


@DETERMINISTIC
@given(value=msgpack_values | near_records)
def test_group_record_from_garbage_is_malformed_or_valid(value: Any) -> None:
    """Any msgpack value in a STORE_CHUNK's group field gives a valid record or
    MalformedMessage (BAD_REQUEST), nothing else."""
    try:
        message = decode_envelope(store_chunk_frame(value)).message
    except MalformedMessage as error:
        assert error.request_id == 7
    else:
        assert isinstance(message, StoreChunk)
        group = message.group
        assert GroupRecord(group.k, group.n, group.index, group.chunk_ids) == group
