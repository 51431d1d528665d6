"""Capabilities: the one-line strings that name a stored file and grant access to it.

A read capability is `freehold:<manifest id>#<file key>`; the part before `#` alone is
the verify capability, enough to fetch the manifest, check every chunk and repair the
file, but not to read it (the key, as in a link, goes after `#`). Both 32-byte values
are written in lowercase RFC 4648 base32 without padding (52 characters each): case
does not matter, and there is no `-`, `_`, `+` or `/` for a mail client or a terminal
to wrap at or a shell to mangle (docs/PROTOCOL.md#capabilities).

What it promises:

- `str()` gives the canonical form; `parse()` gives back an equal capability.
- `parse()` raises `MalformedCapability` (a `LocalProtocolError`) and nothing else for
  any text that is not a capability, saying what is wrong: an unknown scheme, a bad
  character and its position (counting from 0 in the text as given), a wrong length
  in characters and bytes, a read capability where a verify capability is wanted or
  the reverse. Each capability has exactly one canonical text; parsing also accepts
  upper case and surrounding whitespace, as copy and paste produce.
- A read capability's `repr` does not show the key.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Final

from protocol.errors import LocalProtocolError, MalformedCapability

__all__ = [
    "SCHEME",
    "ReadCapability",
    "VerifyCapability",
    "parse_capability",
    "spell_id",
]

SCHEME: Final = "freehold"
_VALUE_SIZE: Final = 32
_ENCODED_SIZE: Final = 52  # ceil(32 * 8 / 5)
_LOWER: Final = "abcdefghijklmnopqrstuvwxyz234567"
# Upper case is accepted too, but only ASCII: str.lower() maps some other characters
# (the Kelvin sign) onto ASCII letters.
_ALPHABET: Final = frozenset(_LOWER + _LOWER.upper())
# 52 characters carry 260 bits, 4 more than 32 bytes: in the canonical encoding they are
# zero, so the last character's value is 0 or 16 ("a" or "q").
_CANONICAL_LAST: Final = frozenset("aq")


def _encode(value: bytes) -> str:
    return base64.b32encode(value).decode("ascii").rstrip("=").lower()


def spell_id(value: bytes) -> str:
    """A manifest or chunk id as a capability spells it (lowercase base32, no padding),
    so that what a message names can be found in the capability the user holds."""
    return _encode(value)


def _check_value(value: object, what: str) -> None:
    if type(value) is not bytes or len(value) != _VALUE_SIZE:
        raise LocalProtocolError(f"a {what} is {_VALUE_SIZE} bytes")


def _decode(text: str, offset: int, what: str) -> bytes:
    """Decode one base32 value found at `offset` in the text as given."""
    if not text:
        raise MalformedCapability(f"the {what} is empty")
    for position, char in enumerate(text):
        if char not in _ALPHABET:
            hint = " (base32 padding is not written)" if char == "=" else ""
            raise MalformedCapability(
                f"bad character {char!r} at position {offset + position} in the {what}{hint}"
            )
    if len(text) != _ENCODED_SIZE:
        raise MalformedCapability(
            f"{what} has {len(text)} characters ({len(text) * 5 // 8} bytes), "
            f"expected {_ENCODED_SIZE} ({_VALUE_SIZE} bytes)"
        )
    if text[-1].lower() not in _CANONICAL_LAST:
        raise MalformedCapability(
            f"{what} is not canonical: its last character (position "
            f"{offset + len(text) - 1}) must be 'a' or 'q', not {text[-1]!r}"
        )
    return base64.b32decode(text.upper() + "====")


def _split(text: object) -> tuple[str, int, str | None, int]:
    """(manifest id text, its offset, key text or None, its offset)."""
    if not isinstance(text, str):
        raise MalformedCapability(f"a capability is text, got {type(text).__name__}")
    stripped = text.strip()
    start = len(text) - len(text.lstrip())
    if not stripped:
        raise MalformedCapability("empty capability")
    scheme, colon, rest = stripped.partition(":")
    if not colon:
        raise MalformedCapability(f"no scheme: a capability starts with '{SCHEME}:'")
    if scheme.lower() != SCHEME:
        raise MalformedCapability(f"unknown scheme {scheme!r}, expected '{SCHEME}'")
    id_offset = start + len(scheme) + 1
    id_text, hash_sign, key_text = rest.partition("#")
    if not hash_sign:
        return id_text, id_offset, None, 0
    key_offset = id_offset + len(id_text) + 1
    second = key_text.find("#")
    if second >= 0:
        raise MalformedCapability(f"a second '#' at position {key_offset + second}")
    return id_text, id_offset, key_text, key_offset


@dataclass(frozen=True, slots=True)
class VerifyCapability:
    """`freehold:<manifest id>`: enough to check and repair a file, not to read it."""

    manifest_id: bytes

    def __post_init__(self) -> None:
        _check_value(self.manifest_id, "manifest id")

    def __str__(self) -> str:
        return f"{SCHEME}:{_encode(self.manifest_id)}"

    @classmethod
    def parse(cls, text: str) -> VerifyCapability:
        """Parse a verify capability; raises MalformedCapability (a read capability
        included: use `parse_capability(text)` to take either)."""
        id_text, id_offset, key_text, _ = _split(text)
        if key_text is not None:
            raise MalformedCapability(
                "this is a read capability (it has '#' and a key), not a verify capability"
            )
        return cls(_decode(id_text, id_offset, "manifest id"))


@dataclass(frozen=True, slots=True)
class ReadCapability:
    """`freehold:<manifest id>#<file key>`: enough to read the file."""

    manifest_id: bytes
    file_key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _check_value(self.manifest_id, "manifest id")
        _check_value(self.file_key, "file key")

    def __str__(self) -> str:
        return f"{SCHEME}:{_encode(self.manifest_id)}#{_encode(self.file_key)}"

    def verify_capability(self) -> VerifyCapability:
        """The same file's verify capability: this without the key."""
        return VerifyCapability(self.manifest_id)

    @classmethod
    def parse(cls, text: str) -> ReadCapability:
        """Parse a read capability; raises MalformedCapability."""
        id_text, id_offset, key_text, key_offset = _split(text)
        if key_text is None:
            raise MalformedCapability(
                "no '#<file key>': this is a verify capability, which can check and repair "
                "the file but not read it"
            )
        manifest_id = _decode(id_text, id_offset, "manifest id")
        return cls(manifest_id, _decode(key_text, key_offset, "file key"))


def parse_capability(text: str) -> ReadCapability | VerifyCapability:
    """Parse either kind of capability; raises MalformedCapability."""
    id_text, id_offset, key_text, key_offset = _split(text)
    manifest_id = _decode(id_text, id_offset, "manifest id")
    if key_text is None:
        return VerifyCapability(manifest_id)
    return ReadCapability(manifest_id, _decode(key_text, key_offset, "file key"))
