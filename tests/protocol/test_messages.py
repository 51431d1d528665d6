"""Tests of protocol/messages.py: schemas, the envelope codec and its strictness.

Besides the protocol's own table (`MESSAGES`), a private table `EXTRA` holds messages that
use every field kind (nested structs, items, optionals, bools, ints, enums, large
bytes), so the codec's machinery is covered before real RPCs use it. Hypothesis
strategies are derived from the annotations, so new messages are covered automatically.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import functools
import time
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import protocol.messages as messages_module
from protocol.chunk import MAX_SHARES, GroupRecord
from protocol.errors import LocalProtocolError, RemoteProtocolError
from protocol.messages import (
    DEFAULT_MAX_FRAME_SIZE,
    MAX_REQUEST_ID,
    MESSAGES,
    PROTOCOL_VERSION,
    Bytes,
    EnumValue,
    Envelope,
    Error,
    ErrorCode,
    Int,
    Items,
    Kind,
    MalformedMessage,
    Message,
    MessageTable,
    Ping,
    Pong,
    StoreChunk,
    Text,
    UnknownMessageType,
    decode_envelope,
    encode_envelope,
    message,
)

# Fixed seed and no example database: the same examples on every run and machine.
DETERMINISTIC = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=100,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

PING_VECTOR = Envelope(Kind.REQUEST, 7, Ping(nonce=bytes(range(8))))
PING_VECTOR_HEX = "950100070191c4080001020304050607"


# ------------------------------------------------------------- a table of every kind


class Color(enum.IntEnum):
    RED = 1
    GREEN = 2


@dataclass(frozen=True, slots=True)
class Contact:
    node_id: Annotated[bytes, Bytes(exact_len=32)]
    port: Annotated[int, Int(min=0, max=65535)]
    host: Annotated[str, Text(max_len=253)]


EXTRA = MessageTable()


@message(type_code=1, table=EXTRA)
@dataclass(frozen=True, slots=True)
class Everything(Message):
    flag: bool
    count: Annotated[int, Int(min=-5, max=2**32 - 1)]
    color: Color
    code: Annotated[ErrorCode, EnumValue(fallback=ErrorCode.UNKNOWN)]
    name: Annotated[str, Text(min_len=1, max_len=16)]
    blob: Annotated[bytes, Bytes(min_len=2, max_len=64)]
    maybe_tag: Annotated[bytes | None, Bytes(exact_len=4)]
    maybe_contact: Contact | None
    contacts: Annotated[tuple[Contact, ...], Items(max_items=20)]
    keys: Annotated[
        tuple[Annotated[bytes, Bytes(exact_len=2)], ...], Items(min_items=1, max_items=3)
    ]


@message(type_code=2, table=EXTRA)
@dataclass(frozen=True, slots=True)
class Chunk(Message):
    data: Annotated[bytes, Bytes(max_len=1024 * 1024)]


@message(type_code=3, table=EXTRA)
@dataclass(frozen=True, slots=True)
class Range(Message):
    start: Annotated[int, Int(min=0, max=1000)]
    end: Annotated[int, Int(min=0, max=1000)]

    def __post_init__(self) -> None:
        if self.start > self.end:
            raise ValueError("start is after end")


@dataclass(frozen=True, slots=True)
class Loop:
    next: Loop | None


@dataclass(frozen=True, slots=True)
class HoldsLoop(Message):
    loop: Loop


@dataclass(slots=True)
class Mutable(Message):
    nonce: Annotated[bytes, Bytes(max_len=8)]


@dataclass(frozen=True, slots=True)
class Unresolvable(Message):
    thing: Missing  # type: ignore[name-defined]  # noqa: F821


# ------------------------------------------------------- strategies from the schemas

CONSTRAINTS = (Bytes, Text, Int, Items, EnumValue)


def truncate_utf8(text: str, max_len: int) -> str:
    return text.encode()[:max_len].decode("utf-8", "ignore")


def strategy_for(hint: Any) -> st.SearchStrategy[Any]:
    """Valid values of one annotated field type, boundaries included."""
    constraint: Any = None
    if typing.get_origin(hint) is Annotated:
        constraint = next(item for item in hint.__metadata__ if isinstance(item, CONSTRAINTS))
        hint = hint.__origin__
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        (inner,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if constraint is not None:
            inner = Annotated[inner, constraint]
        return st.none() | strategy_for(inner)
    if hint is bytes:
        low, high = constraint.bounds
        return st.binary(min_size=low, max_size=min(high, 64)) | st.just(b"\x5a" * high)
    if hint is str:
        low, high = constraint.min_len, constraint.max_len
        texts = (
            st.text(max_size=min(high, 64)).map(lambda text: truncate_utf8(text, high))
            | st.just("é" * (high // 2))
            | st.just("z" * high)
        )
        return texts.filter(lambda text: len(text.encode()) >= low)
    if hint is bool:
        return st.booleans()
    if hint is int:
        return st.integers(min_value=constraint.min, max_value=constraint.max)
    if isinstance(hint, type) and issubclass(hint, enum.IntEnum):
        return st.sampled_from(list(hint))
    if typing.get_origin(hint) is tuple:
        element = strategy_for(typing.get_args(hint)[0])
        return st.lists(element, min_size=constraint.min_items, max_size=constraint.max_items).map(
            tuple
        )
    if hint is GroupRecord:
        # Its invariants (len(ids) == n, index < n, k <= n) are too narrow for the
        # generic strategy's filter: draw n first.
        return chunk_groups()
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return struct_strategy(hint)
    raise AssertionError(f"no strategy for {hint!r}")


@st.composite
def chunk_groups(draw: st.DrawFn) -> GroupRecord:
    n = draw(st.integers(min_value=1, max_value=MAX_SHARES))
    k = draw(st.integers(min_value=1, max_value=n))
    index = draw(st.integers(min_value=0, max_value=n - 1))
    ids = draw(st.lists(st.binary(min_size=32, max_size=32), min_size=n, max_size=n))
    return GroupRecord(k, n, index, tuple(ids))


def build_or_none(cls: type, args: tuple[Any, ...]) -> Any:
    try:
        return cls(*args)
    except ValueError:  # the class's own invariants (__post_init__) refused these values
        return None


@functools.cache
def struct_strategy(cls: type) -> st.SearchStrategy[Any]:
    """Valid instances of a message or struct, derived from its annotations."""
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = [strategy_for(hints[field.name]) for field in dataclasses.fields(cls)]
    return (
        st.tuples(*fields)
        .map(lambda args: build_or_none(cls, args))
        .filter(lambda value: value is not None)
    )


def envelopes(cls: type) -> st.SearchStrategy[Envelope]:
    request_ids = st.integers(min_value=0, max_value=MAX_REQUEST_ID) | st.sampled_from(
        [0, MAX_REQUEST_ID]
    )
    return st.builds(Envelope, st.sampled_from(Kind), request_ids, struct_strategy(cls))


def registered(table: MessageTable) -> list[type[Message]]:
    return [table.message_types()[code] for code in sorted(table.message_types())]


TABLES = [MESSAGES, EXTRA]
EVERY_MESSAGE = [
    pytest.param(table, cls, id=cls.__name__) for table in TABLES for cls in registered(table)
]


def any_envelope(table: MessageTable) -> st.SearchStrategy[Envelope]:
    return st.sampled_from(registered(table)).flatmap(envelopes)


def decode_or_refuse(data: bytes, table: MessageTable = MESSAGES) -> Envelope | None:
    """Decode peer bytes; only RemoteProtocolError may escape, as None."""
    try:
        envelope = decode_envelope(data, table=table)
    except RemoteProtocolError:
        return None
    # Whatever decoding accepts satisfies every constraint: it encodes again unchanged.
    assert decode_envelope(encode_envelope(envelope, table=table), table=table) == envelope
    return envelope


def frame(*elements: Any) -> bytes:
    """A frame packed as given, however wrong."""
    packed: bytes = msgpack.packb(list(elements))
    return packed


def refused(data: bytes | bytearray, table: MessageTable = MESSAGES, **kwargs: Any) -> Any:
    """The exception decoding `data` raises; it must be a RemoteProtocolError."""
    with pytest.raises(RemoteProtocolError) as info:
        decode_envelope(data, table=table, **kwargs)
    return info.value


def everything(**changes: Any) -> Everything:
    valid = Everything(
        flag=True,
        count=3,
        color=Color.RED,
        code=ErrorCode.BUSY,
        name="n",
        blob=b"bb",
        maybe_tag=None,
        maybe_contact=None,
        contacts=(Contact(bytes(32), 1, "h"), Contact(bytes(32), 2, "h")),
        keys=(b"kk",),
    )
    return dataclasses.replace(valid, **changes)


def everything_body(**changes: Any) -> list[Any]:
    fields = {
        "flag": True,
        "count": 3,
        "color": 1,
        "code": 3,
        "name": "n",
        "blob": b"bb",
        "maybe_tag": None,
        "maybe_contact": None,
        "contacts": [[bytes(32), 1, "h"], [bytes(32), 2, "h"]],
        "keys": [b"kk"],
    }
    fields.update(changes)
    return list(fields.values())


# ------------------------------------------------------------------------ round trips


@pytest.mark.parametrize(("table", "cls"), EVERY_MESSAGE)
@DETERMINISTIC
@given(data=st.data())
def test_every_registered_message_round_trips(
    table: MessageTable, cls: type[Message], data: st.DataObject
) -> None:
    """Any valid envelope of any registered message decodes to itself after encoding."""
    envelope = data.draw(envelopes(cls))
    assert decode_envelope(encode_envelope(envelope, table=table), table=table) == envelope


def test_ping_test_vector() -> None:
    """A PING encodes to the documented test vector, and the vector decodes back."""
    assert encode_envelope(PING_VECTOR).hex() == PING_VECTOR_HEX
    assert decode_envelope(bytes.fromhex(PING_VECTOR_HEX)) == PING_VECTOR


def test_protocol_doc_carries_the_ping_test_vector() -> None:
    """docs/PROTOCOL.md shows the same PING test vector as the code produces."""
    protocol_doc = Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"
    assert PING_VECTOR_HEX in protocol_doc.read_text(encoding="utf-8")


def test_protocol_table_holds_ping_pong_error() -> None:
    """The protocol's table maps type codes 1, 2, 3 to PING, PONG and ERROR."""
    types_by_code = MESSAGES.message_types()
    assert {code: types_by_code[code] for code in (1, 2, 3)} == {1: Ping, 2: Pong, 3: Error}
    assert MESSAGES.type_code(Error) == 3


def test_decode_accepts_bytearray_and_memoryview() -> None:
    """decode_envelope takes any contiguous byte buffer, not only bytes."""
    data = bytes.fromhex(PING_VECTOR_HEX)
    assert decode_envelope(bytearray(data)) == PING_VECTOR
    assert decode_envelope(memoryview(data)) == PING_VECTOR


def test_unknown_error_code_decodes_to_unknown() -> None:
    """An error code from a newer peer decodes to ErrorCode.UNKNOWN, not an error."""
    envelope = decode_envelope(frame(1, 1, 5, 3, [4242, "new"]))
    assert envelope.message == Error(ErrorCode.UNKNOWN, "new")


def test_error_code_outside_uint32_is_refused() -> None:
    """An error code outside uint32 is malformed even though unknown codes are accepted."""
    error = refused(frame(1, 1, 5, 3, [-1, "x"]))
    assert isinstance(error, MalformedMessage)
    assert str(error) == "Error.code: unknown ErrorCode value -1"


# ---------------------------------------------------------------- fuzzing the decoder


@pytest.mark.parametrize("table", TABLES, ids=["MESSAGES", "EXTRA"])
@DETERMINISTIC
@given(data=st.binary(max_size=300))
def test_random_bytes_only_raise_remote_protocol_error(table: MessageTable, data: bytes) -> None:
    """Random bytes either decode to a valid envelope or raise RemoteProtocolError."""
    decode_or_refuse(data, table)


@st.composite
def mutated_frames(draw: st.DrawFn, table: MessageTable) -> bytes:
    data = bytearray(encode_envelope(draw(any_envelope(table)), table=table))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        operation = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete"]))
        index = draw(st.integers(min_value=0, max_value=max(len(data) - 1, 0)))
        if operation == "flip" and data:
            data[index] ^= 1 << draw(st.integers(min_value=0, max_value=7))
        elif operation == "set" and data:
            data[index] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0xC0, 0xC1, 0xC3, 0xDD, 0xFF]))
        elif operation == "truncate":
            del data[index:]
        elif operation == "insert":
            data[index:index] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[index : index + draw(st.integers(min_value=1, max_value=8))]
    return bytes(data)


@pytest.mark.parametrize("table", TABLES, ids=["MESSAGES", "EXTRA"])
@DETERMINISTIC
@given(data=st.data())
def test_mutated_frames_only_raise_remote_protocol_error(
    table: MessageTable, data: st.DataObject
) -> None:
    """Valid frames with flipped, set, inserted or deleted bytes decode or raise
    RemoteProtocolError, nothing else."""
    decode_or_refuse(data.draw(mutated_frames(table)), table)


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-3, max_value=40)
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.binary(max_size=40)
    | st.text(max_size=20)
    | st.builds(msgpack.ExtType, st.integers(min_value=0, max_value=127), st.binary(max_size=4)),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=3), children)
    ),
    max_leaves=20,
)


@pytest.mark.parametrize("table", TABLES, ids=["MESSAGES", "EXTRA"])
@DETERMINISTIC
@given(value=msgpack_values)
def test_arbitrary_msgpack_only_raises_remote_protocol_error(
    table: MessageTable, value: Any
) -> None:
    """Any msgpack value as a whole frame decodes or raises RemoteProtocolError."""
    decode_or_refuse(msgpack.packb(value), table)


@pytest.mark.parametrize("table", TABLES, ids=["MESSAGES", "EXTRA"])
@DETERMINISTIC
@given(data=st.data())
def test_bad_body_behind_good_header_is_malformed_with_request_id(
    table: MessageTable, data: st.DataObject
) -> None:
    """A random body behind a valid header decodes or raises RemoteProtocolError, and
    a MalformedMessage carries the header's kind and request id."""
    kind = data.draw(st.sampled_from(Kind))
    request_id = data.draw(st.integers(min_value=0, max_value=MAX_REQUEST_ID))
    type_code = data.draw(st.sampled_from(sorted(table.message_types())))
    data_frame = frame(1, int(kind), request_id, type_code, data.draw(msgpack_values))
    try:
        decode_or_refuse(data_frame, table)
        decode_envelope(data_frame, table=table)
    except MalformedMessage as error:
        assert (error.kind, error.request_id) == (kind, request_id)
    except RemoteProtocolError:
        pass  # broke a frame-wide msgpack limit before the header could be read


# ------------------------------------------- generated fast paths against the checks


def codec_of(cls: type) -> Any:
    codec = messages_module._STRUCT_CODECS[cls]
    assert codec.checked is not None  # every struct has a generated fast path
    return codec


def outcome(function: Any, value: Any) -> tuple[Any, ...]:
    """What a codec function makes of `value`: the result (with its type), or the
    error's path and reason."""
    try:
        result = function(value)
    except messages_module._Invalid as error:
        return ("invalid", error.path, error.reason)
    return ("ok", type(result), result)


def leaves(value: Any, path: tuple[int, ...] = ()) -> list[tuple[int, ...]]:
    """The paths of every element of a nested tuple, arrays included."""
    found = [path]
    if isinstance(value, tuple):
        for index, item in enumerate(value):
            found.extend(leaves(item, (*path, index)))
    return found


def replaced(value: Any, path: tuple[int, ...], new: Any) -> Any:
    if not path:
        return new
    head, *rest = path
    return (*value[:head], replaced(value[head], tuple(rest), new), *value[head + 1 :])


# Fewer examples: each one makes and checks several variants.
FAST_PATH_EXAMPLES = settings(DETERMINISTIC, max_examples=30)


@pytest.mark.parametrize(("table", "cls"), EVERY_MESSAGE)
@FAST_PATH_EXAMPLES
@given(data=st.data())
def test_fast_decoding_agrees_with_the_checks(
    table: MessageTable, cls: type[Message], data: st.DataObject
) -> None:
    """The generated decoder gives what the checking decoder gives, value or error
    (path and reason), for valid bodies and for bodies with any one part replaced."""
    codec = codec_of(cls)
    envelope = data.draw(envelopes(cls))
    body = msgpack.unpackb(encode_envelope(envelope, table=table), use_list=False)[4]
    assert outcome(codec.decode, body) == ("ok", cls, envelope.message)
    for _ in range(3):
        path = data.draw(st.sampled_from(leaves(body)))
        changed = replaced(body, path, data.draw(replacements.map(as_wire)))
        assert outcome(codec.decode, changed) == outcome(codec.checked[0], changed)


def constraints_in(cls: type, seen: set[type]) -> list[Any]:
    """Every constraint declared in `cls` and the structs it holds."""
    found: list[Any] = []
    if cls in seen:
        return found
    seen.add(cls)
    for hint in typing.get_type_hints(cls, include_extras=True).values():
        stack = [hint]
        while stack:
            hint = stack.pop()
            if typing.get_origin(hint) is Annotated:
                found.extend(item for item in hint.__metadata__ if isinstance(item, CONSTRAINTS))
                stack.append(hint.__origin__)
            elif typing.get_args(hint):
                stack.extend(typing.get_args(hint))
            elif isinstance(hint, type) and dataclasses.is_dataclass(hint):
                found.extend(constraints_in(hint, seen))
    return found


def edge_values(constraint: Any) -> list[Any]:
    """Values at and just beyond a constraint's bounds."""
    if isinstance(constraint, Int):
        edges = [constraint.min - 1, constraint.min, constraint.max, constraint.max + 1]
        return [value for value in edges if -(2**63) <= value < 2**64]  # msgpack's range
    if isinstance(constraint, Bytes | Text | Items):
        low, high = (
            constraint.bounds
            if isinstance(constraint, Bytes)
            else (constraint.min_len, constraint.max_len)
            if isinstance(constraint, Text)
            else (constraint.min_items, constraint.max_items)
        )
        lengths = [size for size in (low - 1, low, high, high + 1) if 0 <= size <= 300]
        if isinstance(constraint, Bytes):
            return [b"e" * size for size in lengths]
        if isinstance(constraint, Text):
            return ["e" * size for size in lengths] + ["é" * (size // 2) for size in lengths]
        return [(b"e" * 32,) * size for size in lengths]
    return []


EDGE_VALUES = sorted(
    {
        (type(value).__name__, value)
        for table in TABLES
        for cls in registered(table)
        for constraint in constraints_in(cls, set())
        for value in edge_values(constraint)
    },
    key=repr,
)
replacements = msgpack_values | st.sampled_from([value for _, value in EDGE_VALUES])


def as_wire(value: Any) -> Any:
    """A value as msgpack decodes it here (arrays as tuples)."""
    return msgpack.unpackb(msgpack.packb(value), use_list=False, strict_map_key=False)


@pytest.mark.parametrize(("table", "cls"), EVERY_MESSAGE)
@FAST_PATH_EXAMPLES
@given(data=st.data())
def test_fast_encoding_agrees_with_the_checks(
    table: MessageTable, cls: Any, data: st.DataObject
) -> None:
    """The generated encoder gives what the checking encoder gives, for valid messages
    and for messages with one field set to anything at all."""
    codec = codec_of(cls)
    value = data.draw(struct_strategy(cls))
    assert outcome(codec.encode, value) == outcome(codec.checked[1], value)
    field = data.draw(st.sampled_from(dataclasses.fields(cls)))
    broken = copy.copy(value)
    object.__setattr__(broken, field.name, data.draw(replacements))
    assert outcome(codec.encode, broken) == outcome(codec.checked[1], broken)


def test_fast_paths_take_non_ascii_text_through_the_checks() -> None:
    """Text that is not ASCII fails the inline test (characters are not bytes) and is
    measured in UTF-8 by the check: 16 two-byte characters fit Text(max_len=32)..."""
    codec = codec_of(Everything)
    body = tuple(as_wire(everything_body(name="é" * 8)))
    assert codec.decode(body).name == "é" * 8
    # ...and 9 of them are 18 bytes, over this field's 16.
    assert outcome(codec.decode, tuple(as_wire(everything_body(name="é" * 9)))) == (
        "invalid",
        ".name",
        "18 bytes of UTF-8, at most 16 allowed",
    )


# --------------------------------------------------------------- specific bad inputs


def test_wrong_version_is_refused() -> None:
    """A frame of another protocol version is refused and names both versions."""
    error = refused(frame(2, 0, 7, 1, [b""]))
    assert str(error) == "unsupported protocol version 2, this node speaks 1"
    assert not isinstance(error, MalformedMessage)


def test_bool_is_not_an_int() -> None:
    """A bool where an int belongs is refused, in the header and in a body."""
    assert str(refused(frame(True, 0, 7, 1, [b""]))) == "envelope version: expected int, got bool"
    assert str(refused(frame(1, 0, True, 1, [b""]))) == "request id: expected int, got bool"
    assert str(refused(frame(1, 1, 7, 3, [True, "x"]))) == "Error.code: expected int, got bool"
    error = refused(frame(1, 0, 7, 1, everything_body(count=True)), EXTRA)
    assert str(error) == "Everything.count: expected int, got bool"


def test_int_is_not_a_bool() -> None:
    """An int where a bool belongs is refused."""
    error = refused(frame(1, 0, 7, 1, everything_body(flag=1)), EXTRA)
    assert str(error) == "Everything.flag: expected bool, got int"


def test_str_is_not_bytes_and_bytes_is_not_str() -> None:
    """msgpack str and bin are distinct types and never stand in for each other."""
    assert str(refused(frame(1, 0, 7, 1, ["abc"]))) == "Ping.nonce: expected bytes, got str"
    assert str(refused(frame(1, 1, 7, 3, [1, b"x"]))) == "Error.message: expected str, got bytes"


def test_too_long_bytes_is_malformed_with_request_id() -> None:
    """An over-long field raises MalformedMessage naming the field, its length and limit."""
    error = refused(frame(1, 0, 7, 1, [bytes(40)]))
    assert isinstance(error, MalformedMessage)
    assert str(error) == "Ping.nonce: 40 bytes, at most 32 allowed"
    assert (error.kind, error.request_id) == (Kind.REQUEST, 7)


def test_nested_error_names_the_path() -> None:
    """An error inside a nested struct names the whole path to the field."""
    contacts = [[bytes(32), 1, "h"], [bytes(32), 70000, "h"]]
    error = refused(frame(1, 0, 7, 1, everything_body(contacts=contacts)), EXTRA)
    assert str(error) == "Everything.contacts[1].port: 70000 is outside 0..65535"
    error = refused(frame(1, 0, 7, 1, everything_body(keys=[b"kk", b"k"])), EXTRA)
    assert str(error) == "Everything.keys[1]: 1 bytes, exactly 2 required"


def test_nil_only_where_optional() -> None:
    """nil is accepted for an optional field and refused for any other."""
    assert str(refused(frame(1, 0, 7, 1, [None]))) == "Ping.nonce: expected bytes, got nil"
    envelope = decode_envelope(frame(1, 0, 7, 1, everything_body(maybe_tag=b"tag!")), table=EXTRA)
    assert envelope.message == everything(maybe_tag=b"tag!")


def test_item_counts_are_enforced() -> None:
    """Arrays with fewer or more items than declared are refused."""
    error = refused(frame(1, 0, 7, 1, everything_body(keys=[])), EXTRA)
    assert str(error) == "Everything.keys: 0 items, at least 1 required"
    error = refused(frame(1, 0, 7, 1, everything_body(keys=[b"kk"] * 4)), EXTRA)
    assert str(error) == "Everything.keys: 4 items, at most 3 allowed"


def test_strict_enum_refuses_unknown_values() -> None:
    """A bare IntEnum field refuses values that are not members."""
    error = refused(frame(1, 0, 7, 1, everything_body(color=9)), EXTRA)
    assert str(error) == "Everything.color: unknown Color value 9"


def test_text_is_measured_in_utf8_bytes() -> None:
    """Text limits count UTF-8 bytes, and invalid UTF-8 is refused."""
    error = refused(frame(1, 0, 7, 1, everything_body(name="é" * 9)), EXTRA)
    assert str(error) == "Everything.name: 18 bytes of UTF-8, at most 16 allowed"
    invalid_utf8 = bytes.fromhex("950101070392 01 a1 ff".replace(" ", ""))
    assert "malformed msgpack" in str(refused(invalid_utf8))


def test_post_init_invariants_apply_on_decode() -> None:
    """A message's own __post_init__ check refuses a decoded body as malformed."""
    error = refused(frame(1, 0, 7, 3, [9, 2]), EXTRA)
    assert isinstance(error, MalformedMessage)
    assert str(error) == "Range: start is after end"


def test_trailing_bytes_are_refused() -> None:
    """A valid frame followed by anything is refused."""
    error = refused(bytes.fromhex(PING_VECTOR_HEX) + b"\x00")
    assert str(error) == "trailing bytes after the envelope"


def test_map_instead_of_array_is_refused() -> None:
    """Maps are never allowed, as the envelope or as a body."""
    assert str(refused(msgpack.packb({"version": 1}))) == "envelope: expected an array, got map"
    error = refused(frame(1, 0, 7, 1, {"nonce": b""}))
    assert isinstance(error, MalformedMessage)
    assert str(error) == "Ping: expected an array of 1 field, got map"
    error = refused(frame(1, 0, 7, 1, [{}]))
    assert str(error) == "Ping.nonce: expected bytes, got map"


def test_extension_types_are_refused() -> None:
    """msgpack extension types (timestamps included) are refused, even empty ones."""
    assert "max_ext_len" in str(refused(frame(1, 0, 7, 1, [msgpack.ExtType(1, b"x")])))
    empty_extension = bytes.fromhex("9501000701 91 c70005".replace(" ", ""))
    assert "extension type 5 is not allowed" in str(refused(empty_extension))
    assert "max_ext_len" in str(refused(frame(1, 0, 7, 1, [msgpack.Timestamp(1, 0)])))


def test_floats_are_refused() -> None:
    """A float is never an int."""
    assert str(refused(frame(1, 0, 7.0, 1, [b""]))) == "request id: expected int, got float"


def test_exact_array_lengths() -> None:
    """Envelopes and bodies with missing or extra elements are refused."""
    assert str(refused(frame(1, 0, 7, 1, [b""], 0))) == "envelope: expected 5 elements, got 6"
    assert str(refused(frame(1, 0, 7, 1))) == "envelope: expected 5 elements, got 4"
    assert str(refused(frame())) == "envelope: empty array"
    error = refused(frame(1, 0, 7, 1, [b"", b""]))
    assert str(error) == "Ping: expected an array of 1 field, got 2"


def test_oversized_frame_is_refused_before_parsing() -> None:
    """A frame larger than max_size is refused without being parsed."""
    data = bytes.fromhex(PING_VECTOR_HEX)
    error = refused(data, max_size=len(data) - 1)
    assert str(error) == f"frame of {len(data)} bytes, at most {len(data) - 1} allowed"
    assert decode_envelope(data, max_size=len(data)) == PING_VECTOR
    assert str(refused(bytes(DEFAULT_MAX_FRAME_SIZE + 1))).startswith("frame of")


@pytest.mark.parametrize(
    "declared",
    [
        pytest.param("c6ffffffff", id="bin32"),
        pytest.param("dbffffffff", id="str32"),
        pytest.param("ddffffffff", id="array32"),
        pytest.param("dfffffffff", id="map32"),
        pytest.param("c9ffffffff05", id="ext32"),
        pytest.param("dd0000ffff" * 200, id="nested-arrays"),
    ],
)
def test_huge_declared_lengths_are_refused_cheaply(declared: str) -> None:
    """A tiny frame claiming a huge length is refused at once, allocating nothing big."""
    data = bytes.fromhex("9501000701 91".replace(" ", "") + declared)
    started = time.perf_counter()
    error = refused(data)
    assert time.perf_counter() - started < 0.05
    assert "malformed msgpack" in str(error)


def test_deep_nesting_is_refused() -> None:
    """Arrays nested far deeper than any schema are refused, not a RecursionError."""
    assert str(refused(b"\x91" * 100_000)) == "malformed msgpack: nested too deeply"


def test_unknown_type_code_raises_unknown_message_type() -> None:
    """An unknown type code in a valid header raises UnknownMessageType with its ids."""
    error = refused(frame(1, 0, 99, 4242, ["whatever", {}]))
    assert isinstance(error, UnknownMessageType)
    assert (error.kind, error.request_id, error.type_code) == (Kind.REQUEST, 99, 4242)
    assert str(error) == "unknown message type 4242"
    response = refused(frame(1, 1, 100, 0, []))
    assert isinstance(response, UnknownMessageType)
    assert (response.kind, response.request_id) == (Kind.RESPONSE, 100)


def test_non_integer_type_code_is_malformed() -> None:
    """A type code that is not an int is malformed, with the header's request id."""
    error = refused(frame(1, 0, 8, "ping", [b""]))
    assert isinstance(error, MalformedMessage)
    assert error.request_id == 8
    assert str(error) == "type code: expected int, got str"


def test_unknown_kind_is_refused() -> None:
    """A kind other than request (0) or response (1) is refused."""
    error = refused(frame(1, 2, 7, 1, [b""]))
    assert str(error) == "unknown envelope kind 2"
    assert not isinstance(error, MalformedMessage | UnknownMessageType)


@pytest.mark.parametrize("request_id", [-1, 2**32])
def test_request_id_must_be_uint32(request_id: int) -> None:
    """Request ids outside uint32 are refused."""
    assert str(refused(frame(1, 0, request_id, 1, [b""]))) == (
        f"request id {request_id} is not a uint32"
    )


def test_garbage_is_refused_with_a_reason() -> None:
    """Empty input, truncated frames and reserved bytes are refused with a message."""
    truncated = bytes.fromhex(PING_VECTOR_HEX)[:-1]
    assert str(refused(b"")) == "malformed msgpack: Unpack failed: incomplete input"
    assert str(refused(truncated)) == "malformed msgpack: Unpack failed: incomplete input"
    assert str(refused(b"\xc1")) == "malformed msgpack: reserved type byte 0xc1"


# ------------------------------------------------------------- encoding our messages


def rejected(envelope: Envelope, table: MessageTable = MESSAGES, **kwargs: Any) -> str:
    """The message of the LocalProtocolError encoding `envelope` raises."""
    with pytest.raises(LocalProtocolError) as info:
        encode_envelope(envelope, table=table, **kwargs)
    return str(info.value)


def request(message: Message) -> Envelope:
    return Envelope(Kind.REQUEST, 1, message)


def test_encode_rejects_invalid_own_messages() -> None:
    """Our own message that breaks its constraints is a LocalProtocolError on encode."""
    assert rejected(request(Ping(bytes(33)))) == "Ping.nonce: 33 bytes, at most 32 allowed"
    assert rejected(request(Ping("abc"))) == "Ping.nonce: expected bytes, got str"  # type: ignore[arg-type]
    assert rejected(request(Ping(bytearray(2)))) == "Ping.nonce: expected bytes, got bytearray"  # type: ignore[arg-type]
    assert rejected(request(Error(3, "x"))) == "Error.code: expected ErrorCode, got int"  # type: ignore[arg-type]
    assert rejected(request(Error(ErrorCode.BUSY, "é" * 513))) == (
        "Error.message: 1026 bytes of UTF-8, at most 1024 allowed"
    )
    assert rejected(request(Error(ErrorCode.BUSY, "\ud800"))) == (
        "Error.message: not encodable as UTF-8 (lone surrogate)"
    )


def test_encode_rejects_invalid_nested_values() -> None:
    """Nested structs, items, optionals and ints are checked on encode too."""
    assert rejected(request(everything(count=True)), EXTRA) == (
        "Everything.count: expected int, got bool"
    )
    assert rejected(request(everything(count=-6)), EXTRA) == (
        "Everything.count: -6 is outside -5..4294967295"
    )
    assert rejected(request(everything(contacts=[])), EXTRA) == (
        "Everything.contacts: expected a tuple, got list"
    )
    assert rejected(request(everything(contacts=(Contact(b"", 1, "h"),))), EXTRA) == (
        "Everything.contacts[0].node_id: 0 bytes, exactly 32 required"
    )
    assert rejected(request(everything(maybe_contact=Ping(b""))), EXTRA) == (
        "Everything.maybe_contact: expected Contact, got Ping"
    )
    assert rejected(request(everything(keys=(b"kk",) * 4)), EXTRA) == (
        "Everything.keys: 4 items, at most 3 allowed"
    )


def test_encode_rejects_a_bad_envelope() -> None:
    """Kinds must be Kind, request ids uint32, and messages registered in the table."""
    assert rejected(Envelope(0, 1, Ping(b""))) == "envelope kind: expected Kind, got int"  # type: ignore[arg-type]
    assert rejected(Envelope(Kind.REQUEST, 2**32, Ping(b""))) == (
        "request id: 4294967296 is not a uint32"
    )
    assert rejected(Envelope(Kind.REQUEST, True, Ping(b""))) == "request id: True is not a uint32"
    assert rejected(request(Ping(b"")), EXTRA) == "Ping is not a registered message"
    assert rejected(request(Message())) == "Message is not a registered message"


def test_encode_rejects_oversized_frames() -> None:
    """A message whose frame exceeds max_size is a LocalProtocolError."""
    envelope = request(Chunk(bytes(1000)))
    assert rejected(envelope, EXTRA, max_size=1000) == (
        "Chunk: frame of 1009 bytes, at most 1000 allowed"
    )
    assert len(encode_envelope(envelope, table=EXTRA, max_size=1009)) == 1009


# ----------------------------------------------------------------- defining messages


def register(cls: type[Message], type_code: int = 1) -> str:
    """The message of the LocalProtocolError registering `cls` in a fresh table raises."""
    with pytest.raises(LocalProtocolError) as info:
        MessageTable().register(cls, type_code=type_code)
    return str(info.value)


@pytest.mark.parametrize(
    ("annotation", "needed"),
    [
        pytest.param(bytes, "Bytes", id="bytes"),
        pytest.param(str, "Text", id="str"),
        pytest.param(int, "Int", id="int"),
        pytest.param(tuple[Contact, ...], "Items", id="tuple"),
        pytest.param(bytes | None, "Bytes", id="optional-bytes"),
        pytest.param(Annotated[tuple[bytes, ...], Items(max_items=2)], "Bytes", id="items-of"),
    ],
)
def test_decorator_rejects_unconstrained_fields(annotation: Any, needed: str) -> None:
    """A bytes, str, int or tuple field without its constraint is refused at decoration."""
    namespace = {"__annotations__": {"field": annotation}, "__module__": __name__}
    cls: type[Message] = dataclass(frozen=True, slots=True)(
        type("Unconstrained", (Message,), namespace)
    )
    assert f"must carry a {needed}(...) constraint, found none" in register(cls)


def test_decorator_rejects_wrong_constraints() -> None:
    """A constraint of the wrong kind, or one on a self-bounded type, is refused."""

    @dataclass(frozen=True, slots=True)
    class TextOnBytes(Message):
        field: Annotated[bytes, Text(max_len=3)]

    @dataclass(frozen=True, slots=True)
    class BoundedBool(Message):
        field: Annotated[bool, Int(min=0, max=1)]

    @dataclass(frozen=True, slots=True)
    class TwoConstraints(Message):
        field: Annotated[bytes, Bytes(max_len=3), Bytes(max_len=4)]

    @dataclass(frozen=True, slots=True)
    class ForeignFallback(Message):
        field: Annotated[Color, EnumValue(fallback=ErrorCode.UNKNOWN)]

    assert "must carry a Bytes(...) constraint, found Text(...)" in register(TextOnBytes)
    assert "Int(...) does not apply to a bool field" in register(BoundedBool)
    assert "more than one constraint" in register(TwoConstraints)
    assert "fallback must be a member of" in register(ForeignFallback)


def test_decorator_rejects_unsupported_types() -> None:
    """Floats, lists, fixed tuples and real unions have no wire form and are refused."""

    @dataclass(frozen=True, slots=True)
    class HasFloat(Message):
        field: float

    @dataclass(frozen=True, slots=True)
    class HasList(Message):
        field: Annotated[list[bool], Items(max_items=3)]

    @dataclass(frozen=True, slots=True)
    class HasPair(Message):
        field: Annotated[tuple[bool, bool], Items(max_items=2)]

    @dataclass(frozen=True, slots=True)
    class HasUnion(Message):
        field: bool | Color

    assert "unsupported field type float" in register(HasFloat)
    assert "unsupported field type list[bool]" in register(HasList)
    assert "only tuple[X, ...] is allowed" in register(HasPair)
    assert "the only union allowed is X | None" in register(HasUnion)


def test_decorator_rejects_bad_classes() -> None:
    """Only frozen dataclass subclasses of Message, not self-nesting, can be registered."""

    @dataclass(frozen=True, slots=True)
    class NotAMessage:
        flag: bool

    assert "frozen dataclasses" in register(Mutable)
    assert "must subclass Message" in register(NotAMessage)  # type: ignore[arg-type]
    assert "Loop: a struct may not contain itself" in register(HoldsLoop)
    assert "cannot resolve field annotations" in register(Unresolvable)


def test_decorator_rejects_bad_type_codes() -> None:
    """Type codes are ints in 1..65535, each used once per table."""
    for bad_code in [0, 65536, True]:
        assert "type code must be an int in 1..65535" in register(Pong, type_code=bad_code)
    table = MessageTable()
    table.register(Ping, type_code=1)
    with pytest.raises(LocalProtocolError, match="type code 1 is taken by Ping"):
        table.register(Pong, type_code=1)
    with pytest.raises(LocalProtocolError, match="Ping: already registered"):
        table.register(Ping, type_code=2)


@pytest.mark.parametrize(
    ("constraint", "bounds"),
    [
        (Bytes, {}),
        (Bytes, {"max_len": -1}),
        (Bytes, {"min_len": 5, "max_len": 4}),
        (Bytes, {"exact_len": 3, "max_len": 4}),
        (Bytes, {"max_len": 2**32}),
        (Text, {"max_len": -1}),
        (Int, {"min": 2, "max": 1}),
        (Int, {"min": 0, "max": 2**64}),
        (Int, {"min": 0.0, "max": 1}),
        (Items, {"min_items": 3, "max_items": 2}),
    ],
)
def test_constraints_check_their_own_bounds(constraint: Any, bounds: dict[str, Any]) -> None:
    """Constraints with missing, negative, inverted or out-of-range bounds are refused."""
    with pytest.raises(LocalProtocolError):
        constraint(**bounds)


def test_bytes_may_allow_several_mebibytes() -> None:
    """A Bytes field may allow several MiB, as STORE_CHUNK will need."""
    assert Bytes(max_len=8 * 1024 * 1024).bounds == (0, 8 * 1024 * 1024)


@pytest.mark.parametrize(
    ("group", "reason"),
    [
        ([3, 2, 0, [b"\x01" * 32] * 2], "k = 3 is outside 1..n (n = 2)"),
        ([1, 2, 2, [b"\x01" * 32] * 2], "index = 2 is outside 0..n-1 (n = 2)"),
        ([1, 3, 0, [b"\x01" * 32] * 2], "2 chunk ids for n = 3"),
        ([1, 1, 0, [b"\x01" * 31]], "31 bytes"),
    ],
)
def test_inconsistent_chunk_group_is_malformed(group: list[Any], reason: str) -> None:
    """A STORE_CHUNK whose group record breaks its invariants is refused as malformed."""
    frame = msgpack.packb(
        (PROTOCOL_VERSION, Kind.REQUEST, 7, MESSAGES.type_code(StoreChunk), [group, b"data"])
    )
    error = refused(frame)
    assert isinstance(error, MalformedMessage)
    assert error.request_id == 7
    assert reason in str(error)


HAND_WRITTEN = MessageTable()


@message(type_code=1, table=HAND_WRITTEN)
@dataclass(frozen=True, slots=True)
class CheckedInInit(Message):
    start: Annotated[int, Int(min=0, max=10)]
    end: Annotated[int, Int(min=0, max=10)]

    def __init__(self, start: int, end: int) -> None:
        if start > end:
            raise ValueError("start is after end")
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "end", end)


@message(type_code=2, table=HAND_WRITTEN)
@dataclass(frozen=True, slots=True)
class CheckedInNew(Message):
    start: Annotated[int, Int(min=0, max=10)]

    def __new__(cls, *args: Any) -> CheckedInNew:
        if args and args[0] == 7:
            raise ValueError("seven is refused")
        return super().__new__(cls)


@pytest.mark.parametrize(
    ("type_code", "body", "reason"),
    [(1, [5, 1], "start is after end"), (2, [7], "seven is refused")],
)
def test_hand_written_constructors_run_on_decode(
    type_code: int, body: list[Any], reason: str
) -> None:
    """A hand-written __init__ or __new__ checks peer input too: the fast path builds
    through the constructor unless it is the one @dataclass generated."""
    error = refused(frame(1, 0, 9, type_code, body), HAND_WRITTEN)
    assert isinstance(error, MalformedMessage)
    assert reason in str(error)
    assert decode_envelope(frame(1, 0, 9, 1, [1, 5]), table=HAND_WRITTEN).message == (
        CheckedInInit(1, 5)
    )
