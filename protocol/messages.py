"""Every Freehold RPC message, and the strict msgpack codec that frames it.

What this module is for: two nodes must agree byte for byte on what a PING, a
FIND_NODE or an ERROR looks like. Each message is a frozen dataclass whose fields carry
their limits as `typing.Annotated` constraints; `@message(type_code=...)` registers it in
an explicit table keyed by type code. A frame on the wire is the msgpack array
`[version, kind, request_id, type_code, body]` (docs/PROTOCOL.md#messages).

What it promises:

- `decode_envelope` raises `RemoteProtocolError` (or a subclass) and nothing else for
  any input, however malformed: wrong types (a bool is not an int, a str is not bytes),
  wrong array lengths, values out of range, maps, extension types, trailing bytes.
  msgpack's length limits are set so that a small frame that claims a huge length
  cannot make us allocate much: bin and str never exceed the frame itself, arrays and
  maps never exceed the longest array the table's schemas declare (at least 64).
- Whatever `decode_envelope` returns satisfies every declared constraint, and
  `encode_envelope` refuses (`LocalProtocolError`) any message that does not: what one
  node encodes, every node decodes.
- A well-formed header with an unknown type code raises `UnknownMessageType`, and a bad
  body behind a well-formed header raises `MalformedMessage`; both carry the kind and
  the request id, so the RPC layer can answer ERROR(UNSUPPORTED) or
  ERROR(BAD_REQUEST) instead of dropping the connection.
- Dispatch goes through the table: no name read off the wire is ever looked up.
- Sans-I/O: pure functions over bytes, no clock, no randomness, no sockets.

Adding an RPC is a few lines::

    @message(type_code=4)
    @dataclass(frozen=True, slots=True)
    class FindNode(Message):
        target: Annotated[bytes, Bytes(exact_len=32)]

A field without a constraint (`bytes`, `str`, `int`, `tuple[...]`) is refused when the
class is decorated, so nobody forgets a limit. `bool`, `IntEnum` and nested frozen
dataclasses bound themselves and need none. Schemas are compiled into plain closures at
decoration time, so encoding and decoding do no reflection.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Final, TypeVar

import msgpack

from protocol.chunk import MAX_CHUNK_SIZE, MAX_SHARES, ChunkId, GroupRecord
from protocol.errors import LocalProtocolError, RemoteProtocolError
from protocol.lease import Lease
from protocol.schema import (
    CONSTRAINTS,
    Bytes,
    Constraint,
    EnumValue,
    Int,
    Items,
    Text,
    unpack_strictly,
)

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "MAX_AUDIT_CHUNKS",
    "MAX_AUDIT_LENGTH",
    "MAX_AUDIT_RANGES",
    "MAX_CHUNKS_PER_QUERY",
    "MAX_CONTACTS",
    "MAX_LEASE_CHUNKS",
    "MAX_PROVIDERS",
    "MAX_REQUEST_ID",
    "MAX_TYPE_CODE",
    "MESSAGES",
    "PROTOCOL_VERSION",
    "AddLease",
    "AddProvider",
    "AuditChunks",
    "Bytes",
    "ChunkData",
    "ChunkStored",
    "ChunksAudited",
    "ChunksHeld",
    "EnumValue",
    "Envelope",
    "Error",
    "ErrorCode",
    "FetchChunk",
    "FindNode",
    "GetProviders",
    "HasChunks",
    "Int",
    "Items",
    "Kind",
    "LeaseAdded",
    "MalformedMessage",
    "Message",
    "MessageTable",
    "Nodes",
    "Ping",
    "Pong",
    "ProviderAdded",
    "Providers",
    "StoreChunk",
    "Text",
    "UnknownMessageType",
    "WireContact",
    "decode_envelope",
    "encode_envelope",
    "message",
]

PROTOCOL_VERSION: Final = 1
"""The first element of every frame. A frame with any other version is refused."""

MAX_REQUEST_ID: Final = 2**32 - 1
"""Request ids are uint32."""

MAX_TYPE_CODE: Final = 2**16 - 1
"""Type codes are 1..65535; 0 is reserved."""

DEFAULT_MAX_FRAME_SIZE: Final = 4 * 1024 * 1024 + 64 * 1024
"""Largest encoded frame accepted by default: one whole 4 MiB segment (a chunk at k=1,
the largest a chunk can be with the default segment size) plus 64 KiB for the envelope
and the other fields of the message that carries it."""

_MAX_UINT32: Final = 2**32 - 1
_ENVELOPE_LENGTH: Final = 5
# msgpack allocates an array or map for its declared length before reading a single
# element, so their limit is what stops a small frame of nested "2**32 elements" headers
# from asking for gigabytes. A table allows the longest array its schemas declare, and at
# least this many, so that a body or envelope with a few extra elements still reaches
# the schema and gets a precise error. msgpack nests at most 1024 deep: a frame can
# reserve at most 1024 * limit pointers it has not paid for in bytes.
_MIN_ARRAY_LIMIT: Final = 64


# --------------------------------------------------------------------------- errors


class MalformedMessage(RemoteProtocolError):
    """The frame's header was readable but its message was not.

    `kind` and `request_id` come from the header, so a request can still be answered
    with ERROR(BAD_REQUEST).
    """

    def __init__(self, reason: str, *, kind: Kind, request_id: int) -> None:
        super().__init__(reason)
        self.kind = kind
        self.request_id = request_id


class UnknownMessageType(RemoteProtocolError):
    """A well-formed frame carried a type code this node does not know.

    `kind` and `request_id` come from the header, so a request can be answered with
    ERROR(UNSUPPORTED) and the connection kept.
    """

    def __init__(self, reason: str, *, kind: Kind, request_id: int, type_code: int) -> None:
        super().__init__(reason)
        self.kind = kind
        self.request_id = request_id
        self.type_code = type_code


class _Invalid(Exception):
    """A value broke its schema; `path` grows (`.field`, `[3]`) as the error unwinds."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path = ""

    def within(self, segment: str) -> _Invalid:
        self.path = segment + self.path
        return self


# ---------------------------------------------------------------- compiled schemas

_Check = Callable[[Any], Any]
_Namer = Callable[[object], str]

# Names of the types msgpack decodes to, for error messages about peer input.
_WIRE_NAMES: Final[Mapping[type, str]] = {
    tuple: "array",
    dict: "map",
    type(None): "nil",
    bytes: "bytes",
    str: "str",
    int: "int",
    bool: "bool",
    float: "float",
}


def _wire_name(value: object) -> str:
    return _WIRE_NAMES.get(type(value), "ext")


def _python_name(value: object) -> str:
    return type(value).__qualname__


@dataclass(frozen=True, slots=True)
class _Codec:
    """One schema node compiled twice: wire value -> Python, and Python -> wire value.

    `test`, for a leaf, is a Python expression with `{v}` for the value that is true
    when the value passes the leaf's checks both ways (and so comes out unchanged), for
    structs and arrays to inline (see `_generated`); it may be false for some valid
    values (non-ASCII text), which then take the checking path. None: call the codec.
    """

    decode: _Check
    encode: _Check
    max_array: int  # the longest array (struct or items) this schema node contains
    test: str | None = None
    # Where `decode` and `encode` are generated fast paths: the checking closures they
    # fall back on (tests hold the two to the same results).
    checked: tuple[_Check, _Check] | None = None


def _leaf(make: Callable[[_Namer], _Check], test: str | None = None) -> _Codec:
    """A codec whose check is the same both ways: a leaf passes valid values through."""
    return _Codec(make(_wire_name), make(_python_name), 0, test)


# Fast paths. The checking closures below find the first problem and name it, which
# takes a call per field and a try block per level: a NODES answer of 20 contacts took
# 30 us to decode and 12 to encode (12 and 7 with the fast paths). So structs and
# arrays also get a function generated from their schema (`_generated`) that tests
# every leaf inline and builds the value; on any doubt (a failed test, an exception)
# it hands the value to the checking closure, which gives the same result or the
# precise error. The generated code is made from the schema alone (field counts,
# bounds, indices), never from input.


def _generated(source: str, namespace: dict[str, Any]) -> _Check:
    """The function `fast` defined by `source`, with `namespace` as its globals."""
    scope = dict(namespace)
    exec(compile(source, "<protocol.messages fast path>", "exec"), scope)
    fast: _Check = scope["fast"]
    return fast


def _bytes_codec(low: int, high: int) -> _Codec:
    def make(name_of: _Namer) -> _Check:
        if low == high:

            def check_exact(value: Any) -> Any:
                if type(value) is not bytes:
                    raise _Invalid(f"expected bytes, got {name_of(value)}")
                if len(value) != low:
                    raise _Invalid(f"{len(value)} bytes, exactly {low} required")
                return value

            return check_exact

        def check(value: Any) -> Any:
            if type(value) is not bytes:
                raise _Invalid(f"expected bytes, got {name_of(value)}")
            size = len(value)
            if size > high:
                raise _Invalid(f"{size} bytes, at most {high} allowed")
            if size < low:
                raise _Invalid(f"{size} bytes, at least {low} required")
            return value

        return check

    if low == high:
        return _leaf(make, f"(type({{v}}) is bytes and len({{v}}) == {low})")
    return _leaf(make, f"(type({{v}}) is bytes and {low} <= len({{v}}) <= {high})")


def _text_codec(low: int, high: int) -> _Codec:
    def make(name_of: _Namer) -> _Check:
        def check(value: Any) -> Any:
            if type(value) is not str:
                raise _Invalid(f"expected str, got {name_of(value)}")
            if value.isascii():
                size = len(value)
            else:
                try:
                    size = len(value.encode("utf-8"))
                except UnicodeEncodeError:
                    raise _Invalid("not encodable as UTF-8 (lone surrogate)") from None
            if size > high:
                raise _Invalid(f"{size} bytes of UTF-8, at most {high} allowed")
            if size < low:
                raise _Invalid(f"{size} bytes of UTF-8, at least {low} required")
            return value

        return check

    # An ASCII string has as many UTF-8 bytes as characters; others take the check.
    test = f"(type({{v}}) is str and {{v}}.isascii() and {low} <= len({{v}}) <= {high})"
    return _leaf(make, test)


def _int_codec(low: int, high: int) -> _Codec:
    def make(name_of: _Namer) -> _Check:
        def check(value: Any) -> Any:
            if type(value) is not int:
                raise _Invalid(f"expected int, got {name_of(value)}")
            if not low <= value <= high:
                raise _Invalid(f"{value} is outside {low}..{high}")
            return value

        return check

    return _leaf(make, f"(type({{v}}) is int and {low} <= {{v}} <= {high})")


def _bool_codec() -> _Codec:
    def make(name_of: _Namer) -> _Check:
        def check(value: Any) -> Any:
            if type(value) is not bool:
                raise _Invalid(f"expected bool, got {name_of(value)}")
            return value

        return check

    return _leaf(make, "(type({v}) is bool)")


def _enum_codec(enum_type: type[enum.IntEnum], fallback: enum.IntEnum | None) -> _Codec:
    members = {int(member): member for member in enum_type}
    enum_name = enum_type.__qualname__

    def decode(value: Any) -> Any:
        if type(value) is not int:
            raise _Invalid(f"expected int, got {_wire_name(value)}")
        member = members.get(value)
        if member is not None:
            return member
        if fallback is not None and 0 <= value <= _MAX_UINT32:
            return fallback
        raise _Invalid(f"unknown {enum_name} value {value}")

    def encode(value: Any) -> Any:
        # msgpack packs an IntEnum member as the plain integer.
        if type(value) is not enum_type:
            raise _Invalid(f"expected {enum_name}, got {_python_name(value)}")
        return value

    return _Codec(decode, encode, 0)


def _optional_codec(inner: _Codec) -> _Codec:
    inner_decode, inner_encode = inner.decode, inner.encode

    def decode(value: Any) -> Any:
        return None if value is None else inner_decode(value)

    def encode(value: Any) -> Any:
        return None if value is None else inner_encode(value)

    test = None if inner.test is None else f"({{v}} is None or {inner.test})"
    return _Codec(decode, encode, inner.max_array, test)


def _items_codec(inner: _Codec, low: int, high: int) -> _Codec:
    inner_decode, inner_encode = inner.decode, inner.encode

    def counted(value: Any, name_of: _Namer) -> None:
        if type(value) is not tuple:
            expected = "an array" if name_of is _wire_name else "a tuple"
            raise _Invalid(f"expected {expected}, got {name_of(value)}")
        if len(value) > high:
            raise _Invalid(f"{len(value)} items, at most {high} allowed")
        if len(value) < low:
            raise _Invalid(f"{len(value)} items, at least {low} required")

    def decode(value: Any) -> Any:
        counted(value, _wire_name)
        out = []
        for index, item in enumerate(value):
            try:
                out.append(inner_decode(item))
            except _Invalid as exc:
                raise exc.within(f"[{index}]") from None
        return tuple(out)

    def encode(value: Any) -> Any:
        counted(value, _python_name)
        out = []
        for index, item in enumerate(value):
            try:
                out.append(inner_encode(item))
            except _Invalid as exc:
                raise exc.within(f"[{index}]") from None
        return out

    sized = f"type(value) is tuple and {low} <= len(value) <= {high}"
    namespace = {"_Invalid": _Invalid, "_decode": inner_decode, "_encode": inner_encode}
    if inner.test is not None:
        item = inner.test.format(v="item")
        # Valid leaves come out unchanged: the array is its own decoding.
        fast_decode, fast_encode = (
            _generated(
                f"def fast(value):\n"
                f"    if {sized}:\n"
                f"        for item in value:\n"
                f"            if not {item}:\n"
                f"                break\n"
                f"        else:\n"
                f"            return {result}\n"
                f"    return _slow(value)\n",
                {**namespace, "_slow": slow},
            )
            for result, slow in (("value", decode), ("list(value)", encode))
        )
    else:
        fast_decode, fast_encode = (
            _generated(
                f"def fast(value):\n"
                f"    if {sized}:\n"
                f"        try:\n"
                f"            return {wrap}[{inner_name}(item) for item in value]{close}\n"
                f"        except _Invalid:\n"
                f"            pass\n"
                f"    return _slow(value)\n",
                {**namespace, "_slow": slow},
            )
            for inner_name, slow, wrap, close in (
                ("_decode", decode, "tuple(", ")"),
                ("_encode", encode, "", ""),
            )
        )
    return _Codec(fast_decode, fast_encode, max(inner.max_array, high), None, (decode, encode))


# One compiled codec per struct class, shared by every table and every enclosing struct.
_STRUCT_CODECS: dict[type, _Codec] = {}


def _struct_codec(cls: type, building: frozenset[type]) -> _Codec:
    cached = _STRUCT_CODECS.get(cls)
    if cached is not None:
        return cached
    name = cls.__qualname__
    if cls in building:
        raise LocalProtocolError(f"{name}: a struct may not contain itself")
    if not dataclasses.is_dataclass(cls) or not cls.__dataclass_params__.frozen:  # type: ignore[attr-defined]
        raise LocalProtocolError(f"{name}: messages and their parts must be frozen dataclasses")
    try:
        hints = typing.get_type_hints(cls, include_extras=True)
    except Exception as exc:  # NameError, TypeError...: whatever stops resolution
        raise LocalProtocolError(f"{name}: cannot resolve field annotations: {exc}") from exc
    fields = dataclasses.fields(cls)
    field_names = {field.name for field in fields}
    for hint_name, hint in hints.items():
        if hint_name not in field_names and typing.get_origin(hint) is not typing.ClassVar:
            raise LocalProtocolError(f"{name}.{hint_name}: only plain dataclass fields allowed")
    compiled: list[tuple[str, _Codec]] = []
    for field in fields:
        if not field.init or field.kw_only is True:
            raise LocalProtocolError(f"{name}.{field.name}: fields must be positional in __init__")
        compiled.append(
            (field.name, _codec_for(hints[field.name], f"{name}.{field.name}", building | {cls}))
        )
    codec = _compile_struct(cls, compiled)
    _STRUCT_CODECS[cls] = codec
    return codec


def _compile_struct(cls: type, compiled: list[tuple[str, _Codec]]) -> _Codec:
    count = len(compiled)
    decoders = tuple((name, codec.decode) for name, codec in compiled)
    encoders = tuple((name, codec.encode) for name, codec in compiled)
    expected = f"an array of {count} field{'' if count == 1 else 's'}"
    max_array = max([count] + [codec.max_array for _, codec in compiled])

    def decode(value: Any) -> Any:
        if type(value) is not tuple:
            raise _Invalid(f"expected {expected}, got {_wire_name(value)}")
        if len(value) != count:
            raise _Invalid(f"expected {expected}, got {len(value)}")
        args = []
        for (name, decode_field), item in zip(decoders, value, strict=True):
            try:
                args.append(decode_field(item))
            except _Invalid as exc:
                raise exc.within(f".{name}") from None
        try:
            return cls(*args)
        except (ValueError, TypeError) as exc:  # a __post_init__ that checks invariants
            raise _Invalid(str(exc)) from None

    def encode(value: Any) -> Any:
        if type(value) is not cls:
            raise _Invalid(f"expected {cls.__qualname__}, got {_python_name(value)}")
        out = []
        for name, encode_field in encoders:
            try:
                out.append(encode_field(getattr(value, name)))
            except _Invalid as exc:
                raise exc.within(f".{name}") from None
        return out

    fast_decode, fast_encode = _fast_struct(cls, compiled, decode, encode)
    return _Codec(fast_decode, fast_encode, max_array, None, (decode, encode))


def _generated_init_only(cls: type) -> bool:
    """Whether building `cls` runs nothing but the __init__ that @dataclass wrote: no
    __post_init__, no __new__ of its own, no __init__ written by hand (which @dataclass
    keeps, and whose checks must run). @dataclass compiles its methods from source text,
    so their code comes from "<string>"; a hand-written one comes from a file."""
    init = cls.__dict__.get("__init__")
    code = getattr(init, "__code__", None)
    return (
        code is not None
        and code.co_filename == "<string>"
        and all("__new__" not in vars(base) for base in cls.__mro__ if base is not object)
        and not hasattr(cls, "__post_init__")
    )


def _fast_struct(
    cls: type, compiled: list[tuple[str, _Codec]], decode: _Check, encode: _Check
) -> tuple[_Check, _Check]:
    """The generated fast paths of a struct (see `_generated`)."""
    names = [f"f{position}" for position in range(len(compiled))]
    namespace: dict[str, Any] = {
        "_cls": cls,
        "_Invalid": _Invalid,
        "_slow_decode": decode,
        "_slow_encode": encode,
    }
    tests: list[str] = []
    decode_calls: list[str] = []
    encode_calls: list[str] = []
    for position, (_, codec) in enumerate(compiled):
        variable = names[position]
        if codec.test is not None:
            tests.append(codec.test.format(v=variable))
        else:
            namespace[f"_decode{position}"] = codec.decode
            namespace[f"_encode{position}"] = codec.encode
            decode_calls.append(f"            {variable} = _decode{position}({variable})\n")
            encode_calls.append(f"            {variable} = _encode{position}({variable})\n")
    valid = " and ".join(tests) or "True"
    arguments = ", ".join(names)
    build = f"return _cls({arguments})"
    slots = getattr(cls, "__slots__", ())
    if _generated_init_only(cls) and all(name in slots for name, _ in compiled):
        # A frozen dataclass's __init__ sets each field through object.__setattr__ (and
        # does nothing else without __post_init__); the slots' own setters do the same
        # at two thirds of the cost, which counts for the 20 contacts of an answer.
        namespace["_new"] = object.__new__
        setters = []
        for variable, (name, _) in zip(names, compiled, strict=True):
            namespace[f"_set_{variable}"] = cls.__dict__[name].__set__
            setters.append(f"_set_{variable}(made, {variable}); ")
        build = f"made = _new(_cls); {''.join(setters)}return made"
    unpack = f"        {arguments}, = value\n" if names else ""
    attributes = "".join(
        f"        {variable} = value.{name}\n"
        for variable, (name, _) in zip(names, compiled, strict=True)
    )
    fast_decode = _generated(
        f"def fast(value):\n"
        f"    if type(value) is tuple and len(value) == {len(names)}:\n"
        f"{unpack}"
        f"        try:\n"
        f"{''.join(decode_calls)}"
        f"            if {valid}:\n"
        f"                {build}\n"
        f"        except (_Invalid, ValueError, TypeError):\n"
        f"            pass\n"
        f"    return _slow_decode(value)\n",
        namespace,
    )
    fast_encode = _generated(
        f"def fast(value):\n"
        f"    if type(value) is _cls:\n"
        f"{attributes}"
        f"        try:\n"
        f"{''.join(encode_calls)}"
        f"            if {valid}:\n"
        f"                return [{arguments}]\n"
        f"        except _Invalid:\n"
        f"            pass\n"
        f"    return _slow_encode(value)\n",
        namespace,
    )
    return fast_decode, fast_encode


def _constraint_of(hint: Any, where: str) -> tuple[Any, Constraint | None]:
    """Split `Annotated[base, constraint]` into its base type and our one constraint."""
    if typing.get_origin(hint) is not Annotated:
        return hint, None
    ours = [item for item in hint.__metadata__ if isinstance(item, CONSTRAINTS)]
    if len(ours) > 1:
        raise LocalProtocolError(f"{where}: more than one constraint")
    return hint.__origin__, (ours[0] if ours else None)


def _codec_for(hint: Any, where: str, building: frozenset[type]) -> _Codec:
    """Compile one field type; `where` names the field in errors ("Ping.nonce")."""
    base, constraint = _constraint_of(hint, where)
    origin = typing.get_origin(base)
    if origin is typing.Union or origin is types.UnionType:
        args = typing.get_args(base)
        present = [arg for arg in args if arg is not type(None)]
        if len(present) != 1 or len(args) != 2:
            raise LocalProtocolError(f"{where}: the only union allowed is X | None")
        inner = present[0] if constraint is None else Annotated[present[0], constraint]
        return _optional_codec(_codec_for(inner, where, building))

    base_name = getattr(origin or base, "__name__", repr(base))

    def need(kind: type) -> Any:
        if not isinstance(constraint, kind):
            found = "none" if constraint is None else f"{type(constraint).__name__}(...)"
            raise LocalProtocolError(
                f"{where}: a {base_name} field must carry a {kind.__name__}(...) constraint, "
                f"found {found}"
            )
        return constraint

    def refuse_constraint() -> None:
        if constraint is not None:
            raise LocalProtocolError(
                f"{where}: {type(constraint).__name__}(...) does not apply to a {base_name} field"
            )

    if base is bytes:
        return _bytes_codec(*need(Bytes).bounds)
    if base is str:
        text: Text = need(Text)
        return _text_codec(text.min_len, text.max_len)
    if base is bool:
        refuse_constraint()
        return _bool_codec()
    if base is int:
        bounds: Int = need(Int)
        return _int_codec(bounds.min, bounds.max)
    if isinstance(base, type) and issubclass(base, enum.IntEnum):
        for member in base:
            if not 0 <= member <= _MAX_UINT32:
                raise LocalProtocolError(f"{where}: {member!r} is not a uint32")
        if constraint is None:
            return _enum_codec(base, None)
        fallback: EnumValue = need(EnumValue)
        if type(fallback.fallback) is not base:
            raise LocalProtocolError(f"{where}: fallback must be a member of {base!r}")
        return _enum_codec(base, fallback.fallback)
    if origin is tuple:
        args = typing.get_args(base)
        if len(args) != 2 or args[1] is not Ellipsis:
            raise LocalProtocolError(f"{where}: only tuple[X, ...] is allowed")
        items: Items = need(Items)
        inner = _codec_for(args[0], f"{where}[]", building)
        return _items_codec(inner, items.min_items, items.max_items)
    if isinstance(base, type) and dataclasses.is_dataclass(base):
        refuse_constraint()
        return _struct_codec(base, building)
    unsupported = base_name if origin is None else repr(base)
    raise LocalProtocolError(f"{where}: unsupported field type {unsupported}")


# ------------------------------------------------------------------ messages, table


class Kind(enum.IntEnum):
    """Whether a frame asks (REQUEST) or answers (RESPONSE, same request id)."""

    REQUEST = 0
    RESPONSE = 1


_KINDS: Final[Mapping[int, Kind]] = {int(kind): kind for kind in Kind}


class Message:
    """Base class of every registered message; subclasses are frozen dataclasses."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Envelope:
    """One frame: a message, whether it is a request or a response, and its request id."""

    kind: Kind
    request_id: int
    message: Message


@dataclass(frozen=True, slots=True)
class _Entry:
    type_code: int
    name: str
    decode: _Check
    encode: _Check


_MessageT = TypeVar("_MessageT", bound=Message)


class MessageTable:
    """The explicit type code <-> message class table that frames are dispatched by.

    `MESSAGES` is the protocol's table; tests build their own so that their messages
    stay out of it.
    """

    def __init__(self) -> None:
        self._by_code: dict[int, _Entry] = {}
        self._by_class: dict[type, _Entry] = {}
        self._classes: dict[int, type[Message]] = {}
        self._max_array = _MIN_ARRAY_LIMIT

    def register(self, cls: type[_MessageT], *, type_code: int) -> type[_MessageT]:
        """Compile `cls`'s schema and give it `type_code`; raises LocalProtocolError."""
        name = getattr(cls, "__qualname__", repr(cls))
        if type(type_code) is not int or not 1 <= type_code <= MAX_TYPE_CODE:
            raise LocalProtocolError(f"{name}: type code must be an int in 1..{MAX_TYPE_CODE}")
        if not isinstance(cls, type) or not issubclass(cls, Message):
            raise LocalProtocolError(f"{name}: a message must subclass Message")
        if type_code in self._by_code:
            taken = self._by_code[type_code].name
            raise LocalProtocolError(f"{name}: type code {type_code} is taken by {taken}")
        if cls in self._by_class:
            raise LocalProtocolError(f"{name}: already registered")
        codec = _struct_codec(cls, frozenset())
        entry = _Entry(type_code, name, codec.decode, codec.encode)
        self._by_code[type_code] = entry
        self._by_class[cls] = entry
        self._classes[type_code] = cls
        self._max_array = max(self._max_array, codec.max_array)
        return cls

    def message_types(self) -> Mapping[int, type[Message]]:
        """A read-only live view: type code -> message class."""
        return types.MappingProxyType(self._classes)

    def type_code(self, cls: type[Message]) -> int:
        """The type code of a registered class; raises LocalProtocolError otherwise."""
        entry = self._by_class.get(cls)
        if entry is None:
            raise LocalProtocolError(f"{cls.__qualname__} is not a registered message")
        return entry.type_code


MESSAGES: Final = MessageTable()
"""The protocol's message table; `@message` registers here unless told otherwise."""


def message(
    *, type_code: int, table: MessageTable = MESSAGES
) -> Callable[[type[_MessageT]], type[_MessageT]]:
    """Class decorator: register a frozen dataclass message under `type_code`."""

    def register(cls: type[_MessageT]) -> type[_MessageT]:
        return table.register(cls, type_code=type_code)

    return register


class ErrorCode(enum.IntEnum):
    """Why a request failed. Codes this node does not know decode to UNKNOWN."""

    UNKNOWN = 0
    BAD_REQUEST = 1
    UNSUPPORTED = 2
    BUSY = 3
    INTERNAL = 4
    NOT_FOUND = 5
    TOO_LARGE = 6
    REFUSED = 7
    OVER_QUOTA = 8


@message(type_code=1)
@dataclass(frozen=True, slots=True)
class Ping(Message):
    """Are you there? The peer answers PONG with the same nonce."""

    nonce: Annotated[bytes, Bytes(max_len=32)]


@message(type_code=2)
@dataclass(frozen=True, slots=True)
class Pong(Message):
    """Answer to PING, echoing its nonce."""

    nonce: Annotated[bytes, Bytes(max_len=32)]


@message(type_code=3)
@dataclass(frozen=True, slots=True)
class Error(Message):
    """A request failed; the answer to any request type."""

    code: Annotated[ErrorCode, EnumValue(fallback=ErrorCode.UNKNOWN)]
    message: Annotated[str, Text(max_len=1024)]


# ---------------------------------------------------------------------------- DHT
# docs/PROTOCOL.md#dht. Every DHT request carries the port its sender listens on (0 if
# it does not): the receiver pairs it with the host the authenticated connection comes
# from to learn a contact it can dial back.

MAX_CONTACTS: Final = 32
"""Most contacts in one NODES or PROVIDERS answer (k = 20 is what honest nodes send)."""

MAX_PROVIDERS: Final = 64
"""Most providers in one PROVIDERS answer."""


@dataclass(frozen=True, slots=True)
class WireContact:
    """A node as the DHT passes it around: its id and where to dial it."""

    node_id: Annotated[bytes, Bytes(exact_len=32)]
    host: Annotated[str, Text(min_len=1, max_len=253)]
    port: Annotated[int, Int(min=1, max=65535)]


@message(type_code=10)
@dataclass(frozen=True, slots=True)
class FindNode(Message):
    """Which contacts do you know closest to `target`? Answered by NODES."""

    target: Annotated[bytes, Bytes(exact_len=32)]
    sender_port: Annotated[int, Int(min=0, max=65535)]


@message(type_code=11)
@dataclass(frozen=True, slots=True)
class Nodes(Message):
    """Answer to FIND_NODE: up to k contacts, closest to the target first."""

    contacts: Annotated[tuple[WireContact, ...], Items(max_items=MAX_CONTACTS)]


@message(type_code=12)
@dataclass(frozen=True, slots=True)
class AddProvider(Message):
    """Record that the sender (the authenticated peer, nobody else) provides `key`."""

    key: Annotated[bytes, Bytes(exact_len=32)]
    sender_port: Annotated[int, Int(min=1, max=65535)]


@message(type_code=13)
@dataclass(frozen=True, slots=True)
class ProviderAdded(Message):
    """Answer to ADD_PROVIDER: the record is kept for `ttl` seconds."""

    ttl: Annotated[int, Int(min=0, max=2**32 - 1)]


@message(type_code=14)
@dataclass(frozen=True, slots=True)
class GetProviders(Message):
    """Who provides `key`? Answered by PROVIDERS."""

    key: Annotated[bytes, Bytes(exact_len=32)]
    sender_port: Annotated[int, Int(min=0, max=65535)]


@message(type_code=15)
@dataclass(frozen=True, slots=True)
class Providers(Message):
    """Answer to GET_PROVIDERS: the providers we hold records for, and the contacts we
    know closest to the key (so the lookup can go on)."""

    providers: Annotated[tuple[WireContact, ...], Items(max_items=MAX_PROVIDERS)]
    closer: Annotated[tuple[WireContact, ...], Items(max_items=MAX_CONTACTS)]


# ------------------------------------------------------------------------- chunks
# docs/PROTOCOL.md#chunk-messages. What a chunk is, its id, its group record and their
# limits are protocol/chunk.py's; these are the requests that move chunks.

MAX_CHUNKS_PER_QUERY: Final = MAX_SHARES
"""Most chunk ids in one HAS_CHUNKS: one group's worth."""


@message(type_code=20)
@dataclass(frozen=True, slots=True)
class StoreChunk(Message):
    """Keep this chunk. The receiver checks that `data` hashes to `group.chunk_id`, then
    answers CHUNK_STORED once it is on disk, or ERROR (REFUSED when full)."""

    group: GroupRecord
    data: Annotated[bytes, Bytes(max_len=MAX_CHUNK_SIZE)]


@message(type_code=21)
@dataclass(frozen=True, slots=True)
class ChunkStored(Message):
    """Answer to STORE_CHUNK: the chunk is durably stored; `free` bytes remain."""

    free: Annotated[int, Int(min=0, max=2**64 - 1)]


@message(type_code=22)
@dataclass(frozen=True, slots=True)
class FetchChunk(Message):
    """Send me chunk `chunk_id`. Answered by CHUNK, or ERROR NOT_FOUND."""

    chunk_id: ChunkId


@message(type_code=23)
@dataclass(frozen=True, slots=True)
class ChunkData(Message):
    """Answer to FETCH_CHUNK: the chunk and its group record. The asker checks the
    hash; a holder that sends wrong bytes is treated as not holding it."""

    group: GroupRecord
    data: Annotated[bytes, Bytes(max_len=MAX_CHUNK_SIZE)]


@message(type_code=24)
@dataclass(frozen=True, slots=True)
class HasChunks(Message):
    """Which of these chunks do you hold? Answered by CHUNKS_HELD."""

    chunk_ids: Annotated[tuple[ChunkId, ...], Items(max_items=MAX_CHUNKS_PER_QUERY)]


@message(type_code=25)
@dataclass(frozen=True, slots=True)
class ChunksHeld(Message):
    """Answer to HAS_CHUNKS: one flag per id asked, in the same order."""

    held: Annotated[tuple[bool, ...], Items(max_items=MAX_CHUNKS_PER_QUERY)]


# ------------------------------------------------------------------------- audits
# docs/PROTOCOL.md#audits. Proof that a holder has a chunk's bytes now, in far fewer
# bytes than the chunk: the auditor picks fresh random offsets, the holder answers the
# bytes there. protocol/audit.py says how answers are judged without the chunks.

MAX_AUDIT_CHUNKS: Final = 64
"""Most chunk ids one AUDIT_CHUNKS names: with the ranges, at most 1,024 reads a request,
so an audit costs a holder no more disk work than a few fetches."""

MAX_AUDIT_RANGES: Final = 16
"""Most offsets one AUDIT_CHUNKS asks about (the same for every chunk it names)."""

MAX_AUDIT_LENGTH: Final = 64
"""Most bytes asked at each offset."""


@message(type_code=26)
@dataclass(frozen=True, slots=True)
class AuditChunks(Message):
    """Prove you hold these chunks now: for each, send its `length` bytes at each of
    `offsets`, joined in order. Answered by CHUNKS_AUDITED."""

    chunk_ids: Annotated[tuple[ChunkId, ...], Items(min_items=1, max_items=MAX_AUDIT_CHUNKS)]
    offsets: Annotated[
        tuple[Annotated[int, Int(min=0, max=MAX_CHUNK_SIZE - 1)], ...],
        Items(min_items=1, max_items=MAX_AUDIT_RANGES),
    ]
    length: Annotated[int, Int(min=1, max=MAX_AUDIT_LENGTH)]


@message(type_code=27)
@dataclass(frozen=True, slots=True)
class ChunksAudited(Message):
    """Answer to AUDIT_CHUNKS: one entry per chunk id asked, in the same order: the
    bytes asked of it (len(offsets) * length), or nil if the chunk is not held here
    (or is too short for the ranges asked)."""

    answers: Annotated[
        tuple[Annotated[bytes, Bytes(max_len=MAX_AUDIT_RANGES * MAX_AUDIT_LENGTH)] | None, ...],
        Items(max_items=MAX_AUDIT_CHUNKS),
    ]


# ------------------------------------------------------------------------- leases
# docs/PROTOCOL.md#leases. protocol/lease.py says what a lease is and when a holder
# takes one.

MAX_LEASE_CHUNKS: Final = MAX_SHARES
"""Most chunk ids one ADD_LEASE names; a holder of more of the file gets several."""


@message(type_code=28)
@dataclass(frozen=True, slots=True)
class AddLease(Message):
    """Keep these chunks, which are the file `lease.manifest_id`'s, under `lease` (or,
    for a release, stop keeping them under that key). Answered by LEASE_ADDED."""

    lease: Lease
    chunk_ids: Annotated[tuple[ChunkId, ...], Items(min_items=1, max_items=MAX_LEASE_CHUNKS)]


@message(type_code=29)
@dataclass(frozen=True, slots=True)
class LeaseAdded(Message):
    """Answer to ADD_LEASE: one flag per id asked, in the same order: whether the
    receiver holds that chunk (and so now keeps it under the lease, or released it)."""

    held: Annotated[tuple[bool, ...], Items(max_items=MAX_LEASE_CHUNKS)]


# -------------------------------------------------------------------------- codec


def encode_envelope(
    envelope: Envelope,
    *,
    max_size: int = DEFAULT_MAX_FRAME_SIZE,
    table: MessageTable = MESSAGES,
) -> bytes:
    """Encode one frame; raises LocalProtocolError if it breaks any constraint."""
    message = envelope.message
    entry = table._by_class.get(type(message))
    if entry is None:
        raise LocalProtocolError(f"{type(message).__qualname__} is not a registered message")
    kind = envelope.kind
    if type(kind) is not Kind:
        raise LocalProtocolError(f"envelope kind: expected Kind, got {_python_name(kind)}")
    request_id = envelope.request_id
    if type(request_id) is not int or not 0 <= request_id <= MAX_REQUEST_ID:
        raise LocalProtocolError(f"request id: {request_id!r} is not a uint32")
    try:
        body = entry.encode(message)
    except _Invalid as exc:
        raise LocalProtocolError(f"{entry.name}{exc.path}: {exc.reason}") from None
    data: bytes = msgpack.packb((PROTOCOL_VERSION, kind, request_id, entry.type_code, body))
    if len(data) > max_size:
        raise LocalProtocolError(
            f"{entry.name}: frame of {len(data)} bytes, at most {max_size} allowed"
        )
    return data


def decode_envelope(
    data: bytes | bytearray | memoryview,
    *,
    max_size: int = DEFAULT_MAX_FRAME_SIZE,
    table: MessageTable = MESSAGES,
) -> Envelope:
    """Decode exactly one frame; raises RemoteProtocolError (or a subclass) if malformed."""
    size = data.nbytes if type(data) is memoryview else len(data)
    if size > max_size:
        raise RemoteProtocolError(f"frame of {size} bytes, at most {max_size} allowed")
    max_array = min(table._max_array, size)
    try:
        # bin and str are only materialised once all their bytes are in the frame, so
        # the frame's own size bounds them; the field checks below then report the
        # precise limit. Arrays and maps are allocated up front: see _MIN_ARRAY_LIMIT.
        frame = unpack_strictly(data, size=size, max_array=max_array)
    except msgpack.ExtraData:
        raise RemoteProtocolError("trailing bytes after the envelope") from None
    except msgpack.StackError:
        raise RemoteProtocolError("malformed msgpack: nested too deeply") from None
    except msgpack.FormatError:
        raise RemoteProtocolError("malformed msgpack: reserved type byte 0xc1") from None
    except Exception as exc:
        # Only msgpack's parser runs here (no hooks of ours but the one above), and the
        # bytes are the peer's: any failure at all is the peer's malformed input.
        raise RemoteProtocolError(f"malformed msgpack: {exc or type(exc).__name__}") from None
    if type(frame) is not tuple:
        raise RemoteProtocolError(f"envelope: expected an array, got {_wire_name(frame)}")
    if not frame:
        raise RemoteProtocolError("envelope: empty array")
    version = frame[0]
    if type(version) is not int:
        raise RemoteProtocolError(f"envelope version: expected int, got {_wire_name(version)}")
    if version != PROTOCOL_VERSION:
        raise RemoteProtocolError(
            f"unsupported protocol version {version}, this node speaks {PROTOCOL_VERSION}"
        )
    if len(frame) != _ENVELOPE_LENGTH:
        raise RemoteProtocolError(
            f"envelope: expected {_ENVELOPE_LENGTH} elements, got {len(frame)}"
        )
    _, kind_value, request_id, type_code, body = frame
    if type(kind_value) is not int:
        raise RemoteProtocolError(f"envelope kind: expected int, got {_wire_name(kind_value)}")
    kind = _KINDS.get(kind_value)
    if kind is None:
        raise RemoteProtocolError(f"unknown envelope kind {kind_value}")
    if type(request_id) is not int:
        raise RemoteProtocolError(f"request id: expected int, got {_wire_name(request_id)}")
    if not 0 <= request_id <= MAX_REQUEST_ID:
        raise RemoteProtocolError(f"request id {request_id} is not a uint32")
    if type(type_code) is not int:
        raise MalformedMessage(
            f"type code: expected int, got {_wire_name(type_code)}",
            kind=kind,
            request_id=request_id,
        )
    entry = table._by_code.get(type_code)
    if entry is None:
        raise UnknownMessageType(
            f"unknown message type {type_code}",
            kind=kind,
            request_id=request_id,
            type_code=type_code,
        )
    try:
        decoded = entry.decode(body)
    except _Invalid as exc:
        raise MalformedMessage(
            f"{entry.name}{exc.path}: {exc.reason}", kind=kind, request_id=request_id
        ) from None
    return Envelope(kind, request_id, decoded)
