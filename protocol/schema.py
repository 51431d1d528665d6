"""The limits a message field carries, as `typing.Annotated` metadata.

docs/PROTOCOL.md#field-types. Every bytes, text, int and array field of a message, or of
a struct nested in one, says its limits with exactly one of these; the codec of
protocol/messages.py compiles them and refuses a field that has none. They live apart
from the codec so that a module defining a wire struct (protocol/chunk.py's group
record) needs no more than this to declare it, and the codec can import that struct.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from protocol.errors import LocalProtocolError

__all__ = [
    "CONSTRAINTS",
    "Bytes",
    "Constraint",
    "EnumValue",
    "Int",
    "Items",
    "Text",
    "unpack_strictly",
]

# msgpack can carry integers in [-2**63, 2**64 - 1] and lengths up to 2**32 - 1.
MSGPACK_MIN_INT: Final = -(2**63)
MSGPACK_MAX_INT: Final = 2**64 - 1
MSGPACK_MAX_LEN: Final = 2**32 - 1


def _check_bounds(owner: str, low: int, high: int, ceiling: int) -> None:
    if type(low) is not int or type(high) is not int:
        raise LocalProtocolError(f"{owner}: bounds must be ints")
    if not 0 <= low <= high <= ceiling:
        raise LocalProtocolError(f"{owner}: need 0 <= {low} <= {high} <= {ceiling}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Bytes:
    """A `bytes` field (msgpack bin): give `max_len` (with an optional `min_len`) or
    `exact_len`."""

    max_len: int | None = None
    min_len: int = 0
    exact_len: int | None = None

    def __post_init__(self) -> None:
        if self.exact_len is not None:
            if self.max_len is not None or self.min_len != 0:
                raise LocalProtocolError("Bytes: exact_len excludes min_len and max_len")
            _check_bounds("Bytes", self.exact_len, self.exact_len, MSGPACK_MAX_LEN)
        elif self.max_len is None:
            raise LocalProtocolError("Bytes: give max_len or exact_len")
        else:
            _check_bounds("Bytes", self.min_len, self.max_len, MSGPACK_MAX_LEN)

    @property
    def bounds(self) -> tuple[int, int]:
        """The allowed length as (least, most)."""
        if self.exact_len is not None:
            return self.exact_len, self.exact_len
        assert self.max_len is not None
        return self.min_len, self.max_len


@dataclass(frozen=True, slots=True, kw_only=True)
class Text:
    """A `str` field (msgpack str); the lengths count bytes of its UTF-8 encoding."""

    max_len: int
    min_len: int = 0

    def __post_init__(self) -> None:
        _check_bounds("Text", self.min_len, self.max_len, MSGPACK_MAX_LEN)


@dataclass(frozen=True, slots=True, kw_only=True)
class Int:
    """An `int` field, `min <= value <= max` (both required, within msgpack's range)."""

    min: int
    max: int

    def __post_init__(self) -> None:
        if type(self.min) is not int or type(self.max) is not int:
            raise LocalProtocolError("Int: min and max must be ints")
        if not MSGPACK_MIN_INT <= self.min <= self.max <= MSGPACK_MAX_INT:
            raise LocalProtocolError(
                f"Int: need {MSGPACK_MIN_INT} <= {self.min} <= {self.max} <= {MSGPACK_MAX_INT}"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class Items:
    """A `tuple[X, ...]` field (msgpack array) of `min_items..max_items` elements."""

    max_items: int
    min_items: int = 0

    def __post_init__(self) -> None:
        _check_bounds("Items", self.min_items, self.max_items, MSGPACK_MAX_LEN)


@dataclass(frozen=True, slots=True, kw_only=True)
class EnumValue:
    """An `IntEnum` field that decodes values it does not know to `fallback`.

    A bare `IntEnum` field refuses unknown values. Use this where newer peers may send
    new values that older ones should still accept, as with `ErrorCode`.
    """

    fallback: enum.IntEnum


CONSTRAINTS: Final = (Bytes, Text, Int, Items, EnumValue)
"""Every constraint class, for `isinstance` checks."""

Constraint = Bytes | Text | Int | Items | EnumValue


def _refuse_extension(code: int, data: bytes) -> object:
    raise ValueError(f"msgpack extension type {code} is not allowed")


def unpack_strictly(data: Any, *, size: int, max_array: int) -> Any:
    """One msgpack value from `data` (`size` bytes) as every Freehold format reads it:
    arrays as tuples, str as UTF-8, map keys only str or bin, no extension types, and no
    array or map declaring more than `max_array` elements (msgpack allocates them before
    reading any: the limit keeps a small input from asking for gigabytes). bin and str
    are only made once all their bytes are there, so `size` bounds them. Raises what
    msgpack raises (`msgpack.ExtraData` for trailing bytes, ...): callers turn that into
    their own error."""
    return msgpack.unpackb(
        data,
        use_list=False,
        raw=False,
        strict_map_key=True,
        ext_hook=_refuse_extension,
        max_bin_len=size,
        max_str_len=size,
        max_array_len=max_array,
        max_map_len=max_array,
        max_ext_len=0,
    )
