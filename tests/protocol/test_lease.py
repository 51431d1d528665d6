"""Lease records (protocol/lease.py), ADD_LEASE and LEASE_ADDED, and their published
vectors (tests/vectors/lease-vectors.json)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.identity import Identity
from protocol.lease import LEASE_DOMAIN, Lease, effective_expiry, make_lease, problem
from protocol.messages import (
    AddLease,
    Envelope,
    Kind,
    LeaseAdded,
    MalformedMessage,
    decode_envelope,
    encode_envelope,
)
from tests.protocol.make_lease_vectors import VECTORS_PATH, build_vectors, render

FILE: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
DAY = 24 * 3600
ALICE = Identity(bytes([1]) * 32)
MANIFEST = bytes([7]) * 32


def lease_from(fields: dict[str, Any]) -> Lease:
    return Lease(
        bytes.fromhex(fields["manifest_id"]),
        bytes.fromhex(fields["public_key"]),
        fields["issued"],
        fields["expires"],
        bytes.fromhex(fields["signature"]),
    )


def test_the_vectors_file_is_what_the_generator_writes() -> None:
    assert VECTORS_PATH.read_text(encoding="utf-8") == render(build_vectors())


@pytest.mark.parametrize("vector", FILE["leases"], ids=lambda vector: vector["description"])
def test_lease_vectors(vector: dict[str, Any]) -> None:
    """The signed bytes are the domain then the fields at fixed widths, and the
    signature is the seed's key's over them."""
    lease = lease_from(vector["fields"])
    signed = bytes.fromhex(vector["signed_bytes"])
    assert lease.signed_bytes() == signed
    assert signed == (
        LEASE_DOMAIN
        + lease.manifest_id
        + lease.public_key
        + lease.issued.to_bytes(8, "big")
        + lease.expires.to_bytes(8, "big")
    )
    assert lease.verifies()
    identity = Identity(bytes.fromhex(FILE["seed"]))
    assert lease.public_key == identity.public_key
    assert make_lease(identity, lease.manifest_id, lease.issued, lease.expires) == lease


def test_frame_vectors() -> None:
    request, answer = FILE["frames"]
    lease = lease_from(FILE["leases"][0]["fields"])
    ids = tuple(bytes.fromhex(each) for each in request["chunk_ids"])
    envelope = Envelope(Kind.REQUEST, request["request_id"], AddLease(lease, ids))
    assert encode_envelope(envelope).hex() == request["frame"]
    assert decode_envelope(bytes.fromhex(request["frame"])) == envelope
    reply = Envelope(Kind.RESPONSE, answer["request_id"], LeaseAdded(tuple(answer["held"])))
    assert encode_envelope(reply).hex() == answer["frame"]
    assert decode_envelope(bytes.fromhex(answer["frame"])) == reply


def test_the_rules() -> None:
    now = 1_800_000_000
    lease = make_lease(ALICE, MANIFEST, now, now + 90 * DAY)
    assert problem(lease, now + DAY, skew=600) is None
    assert "expired" in (problem(lease, now + 91 * DAY, skew=600) or "")
    assert "future" in (problem(lease, now - 3600, skew=600) or "")
    assert problem(lease, now - 300, skew=600) is None  # within the skew
    release = make_lease(ALICE, MANIFEST, now, now)
    assert release.is_release and problem(release, now + 400 * DAY, skew=600) is None
    assert effective_expiry(lease, 30 * DAY) == now + 30 * DAY
    assert effective_expiry(release, 30 * DAY) == now
    assert lease.holder == ALICE.node_id


@given(
    field=st.sampled_from(["manifest_id", "public_key", "issued", "expires", "signature"]),
    flip=st.integers(min_value=0, max_value=63 * 8 - 1),
)
def test_any_change_breaks_the_signature(field: str, flip: int) -> None:
    lease = make_lease(ALICE, MANIFEST, 1_800_000_000, 1_800_000_000 + DAY)
    value = getattr(lease, field)
    if isinstance(value, int):
        changed: Any = value ^ (1 << (flip % 40))
    else:
        raw = bytearray(value)
        raw[(flip // 8) % len(raw)] ^= 1 << (flip % 8)
        changed = bytes(raw)
    fields = {name: getattr(lease, name) for name in Lease.__dataclass_fields__}
    fields[field] = changed
    assert not Lease(**fields).verifies()
    assert "signature" in (problem(Lease(**fields), 1_800_000_000, skew=600) or "")


def test_malformed_leases_do_not_decode() -> None:
    """A lease field of the wrong size makes ADD_LEASE malformed (BAD_REQUEST)."""
    lease = make_lease(ALICE, MANIFEST, 1, 2)
    frame = encode_envelope(Envelope(Kind.REQUEST, 1, AddLease(lease, (bytes(32),))))
    # Cut a byte out of the signature's bin (its length prefix then lies).
    index = frame.index(lease.signature)
    broken = frame[:index] + frame[index + 1 :]
    with pytest.raises(MalformedMessage):
        decode_envelope(broken)
    empty = Envelope(Kind.REQUEST, 1, AddLease(lease, ()))
    with pytest.raises(Exception, match="chunk_ids"):
        encode_envelope(empty)
