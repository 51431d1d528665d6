"""Tests of protocol/capability.py: the text form of read and verify capabilities."""

from __future__ import annotations

import base64
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.capability import ReadCapability, VerifyCapability, parse_capability
from protocol.errors import LocalProtocolError, MalformedCapability

DETERMINISTIC = settings(derandomize=True, database=None, deadline=None, max_examples=200)

MANIFEST_ID = bytes(range(32))
KEY = bytes(range(100, 132))
ID_TEXT = "aaaqeayeaudaocajbifqydiob4ibceqtcqkrmfyydenbwha5dypq"
KEY_TEXT = "mrswmz3infvgw3dnnzxxa4lson2hk5txpb4xu634pv7h7aebqkbq"
READ = f"freehold:{ID_TEXT}#{KEY_TEXT}"
values = st.binary(min_size=32, max_size=32)


def test_known_capability_text() -> None:
    """A capability is the scheme, then lowercase unpadded base32 of the id and the key."""
    capability = ReadCapability(MANIFEST_ID, KEY)
    assert str(capability) == READ
    assert str(capability.verify_capability()) == f"freehold:{ID_TEXT}"
    assert base64.b32encode(MANIFEST_ID).decode().rstrip("=").lower() == ID_TEXT
    assert ReadCapability.parse(READ) == capability
    assert VerifyCapability.parse(f"freehold:{ID_TEXT}") == capability.verify_capability()


@DETERMINISTIC
@given(values, values)
def test_round_trip(manifest_id: bytes, key: bytes) -> None:
    """Every capability parses back from its text, which is one copy-pasteable word."""
    read = ReadCapability(manifest_id, key)
    text = str(read)
    assert re.fullmatch(r"freehold:[a-z2-7]{52}#[a-z2-7]{52}", text)
    assert ReadCapability.parse(text) == read
    assert parse_capability(text) == read
    verify = read.verify_capability()
    assert str(verify) == text.partition("#")[0]
    assert VerifyCapability.parse(str(verify)) == verify
    assert parse_capability(str(verify)) == verify


def test_parse_forgives_case_and_surrounding_whitespace() -> None:
    """Upper case and the whitespace copy and paste add are accepted."""
    assert ReadCapability.parse(f"  {READ.upper()}\n") == ReadCapability(MANIFEST_ID, KEY)
    assert VerifyCapability.parse(f"FreeHold:{ID_TEXT.upper()}") == VerifyCapability(MANIFEST_ID)


def test_repr_hides_the_key() -> None:
    """Logging a read capability does not leak its key."""
    capability = ReadCapability(MANIFEST_ID, KEY)
    assert KEY.hex() not in repr(capability)
    assert KEY_TEXT not in repr(capability)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty capability"),
        ("   ", "empty capability"),
        (ID_TEXT, "no scheme"),
        (f"http:{ID_TEXT}#{KEY_TEXT}", "unknown scheme 'http'"),
        (f"freehold:{ID_TEXT[:-2]}#{KEY_TEXT}", "manifest id has 50 characters (31 bytes), "),
        (
            f"freehold:{ID_TEXT}a#{KEY_TEXT}",
            "manifest id has 53 characters (33 bytes), expected 52",
        ),
        (f"freehold:{ID_TEXT[:13]}1{ID_TEXT[14:]}#{KEY_TEXT}", "bad character '1' at position 22"),
        (f"freehold:{ID_TEXT}#{KEY_TEXT[:5]}=", "bad character '=' at position 67 in the file key"),
        (f"freehold:{ID_TEXT}#{KEY_TEXT[:-1]}b", "not canonical: its last character"),
        (f"freehold:{ID_TEXT}#", "the file key is empty"),
        (f"freehold:#{KEY_TEXT}", "the manifest id is empty"),
        (f"freehold:{ID_TEXT}#{KEY_TEXT}#", "a second '#' at position 114"),
        (f"freehold:{ID_TEXT}", "this is a verify capability"),
        (f"freehold: {ID_TEXT}#{KEY_TEXT}", "bad character ' ' at position 9"),
        (
            f"freehold:{ID_TEXT}#{KEY_TEXT[:10]}\u212a{KEY_TEXT[11:]}",
            "bad character '\u212a' at position 72",
        ),
    ],
)
def test_malformed_read_capabilities_say_what_is_wrong(text: str, message: str) -> None:
    """Each malformed capability is refused with a message that names the problem."""
    with pytest.raises(MalformedCapability) as error:
        ReadCapability.parse(text)
    assert message in str(error.value)


def test_verify_capability_refuses_a_read_capability() -> None:
    """A verify capability has no key; parse_capability takes either kind."""
    with pytest.raises(MalformedCapability, match="this is a read capability"):
        VerifyCapability.parse(READ)
    assert isinstance(parse_capability(READ), ReadCapability)


def test_malformed_capabilities_are_local_errors() -> None:
    """Capabilities are user input: MalformedCapability is a LocalProtocolError."""
    with pytest.raises(LocalProtocolError):
        parse_capability("nope")
    with pytest.raises(MalformedCapability, match="is text"):
        parse_capability(b"freehold:" + ID_TEXT.encode())  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        ReadCapability(MANIFEST_ID, KEY[:31])
    with pytest.raises(LocalProtocolError):
        VerifyCapability(MANIFEST_ID + b"\x00")


@DETERMINISTIC
@given(st.text(max_size=130) | st.text(alphabet="freehold:#abcdefghijklmnopqrstuvwxyz234567="))
def test_random_text_raises_only_malformed_capability(text: str) -> None:
    """Arbitrary text either parses or raises MalformedCapability, and nothing else."""
    try:
        capability = parse_capability(text)
    except MalformedCapability:
        return
    assert parse_capability(str(capability)) == capability


@DETERMINISTIC
@given(values, values, st.data())
def test_mutated_capabilities_never_parse_to_another_value_silently(
    manifest_id: bytes, key: bytes, data: st.DataObject
) -> None:
    """A changed character either is refused or changes the capability (never both
    strings for one value): the text form is canonical up to case."""
    text = str(ReadCapability(manifest_id, key))
    position = data.draw(st.integers(min_value=0, max_value=len(text) - 1))
    replacement = data.draw(st.sampled_from("abcdefghijklmnopqrstuvwxyz234567#:="))
    mutated = text[:position] + replacement + text[position + 1 :]
    try:
        parsed = parse_capability(mutated)
    except MalformedCapability:
        return
    assert (parsed == ReadCapability(manifest_id, key)) == (mutated == text)
