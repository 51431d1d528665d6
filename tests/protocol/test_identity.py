"""Node identities: NodeIds, XOR distance, signatures, proof of work, key files."""

from __future__ import annotations

import hashlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import LocalProtocolError, RemoteProtocolError
from protocol.identity import Identity, NodeId, meets_difficulty, verify_signature

ids = st.binary(min_size=32, max_size=32).map(NodeId)


def seeded_bytes(seed: int):
    rng = random.Random(seed)
    return lambda size: rng.randbytes(size)


def test_node_id_is_blake2b_of_public_key() -> None:
    """A NodeId is BLAKE2b-256 of the Ed25519 public key."""
    identity = Identity(bytes(range(32)))
    assert identity.node_id.value == hashlib.blake2b(identity.public_key, digest_size=32).digest()
    # A fixed vector, so that any change of the derivation shows up here.
    assert identity.public_key.hex() == (
        "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
    )


@settings(derandomize=True, max_examples=200)
@given(ids, ids, ids)
def test_xor_distance_is_a_metric(a: NodeId, b: NodeId, c: NodeId) -> None:
    """XOR distance is zero only to itself, symmetric, and obeys the triangle inequality."""
    assert a.distance(a) == 0
    assert a.distance(b) == b.distance(a)
    assert (a.distance(b) == 0) == (a == b)
    assert a.distance(c) <= a.distance(b) + b.distance(c)


def test_node_id_rejects_wrong_length_and_bad_hex() -> None:
    """NodeIds are exactly 32 bytes; malformed hex is refused with a LocalProtocolError."""
    with pytest.raises(LocalProtocolError):
        NodeId(b"\x00" * 31)
    with pytest.raises(LocalProtocolError):
        NodeId.from_hex("zz" * 32)
    with pytest.raises(LocalProtocolError):
        NodeId.from_int(1 << 256)
    assert NodeId.from_int(5) == NodeId(bytes(31) + b"\x05")
    assert NodeId.from_hex(NodeId.from_int(5).hex()) == NodeId.from_int(5)


def test_signatures_verify_and_forgeries_fail() -> None:
    """A signature verifies for its key and message only; malformed inputs are invalid."""
    identity = Identity.generate(seeded_bytes(1))
    other = Identity.generate(seeded_bytes(2))
    signature = identity.sign(b"hello")
    assert verify_signature(identity.public_key, b"hello", signature)
    assert not verify_signature(identity.public_key, b"hellO", signature)
    assert not verify_signature(other.public_key, b"hello", signature)
    assert not verify_signature(identity.public_key, b"hello", signature[:-1])
    assert not verify_signature(b"\x00" * 31, b"hello", signature)
    assert not verify_signature(b"\xff" * 32, b"hello", signature)


def test_generate_is_deterministic_for_a_seeded_source() -> None:
    """The key source is a parameter: the same random bytes give the same identity."""
    assert Identity.generate(seeded_bytes(7)).node_id == Identity.generate(seeded_bytes(7)).node_id
    assert Identity.generate(seeded_bytes(7)).node_id != Identity.generate(seeded_bytes(8)).node_id


def test_proof_of_work_difficulty() -> None:
    """generate() with difficulty d yields an id whose puzzle hash starts with d zero bits."""
    identity = Identity.generate(seeded_bytes(3), difficulty=8)
    puzzle = hashlib.blake2b(identity.node_id.value, digest_size=32).digest()
    assert puzzle[0] == 0
    assert meets_difficulty(identity.node_id, 8)
    assert meets_difficulty(identity.node_id, 0)
    # Most ids fail a high difficulty.
    failures = sum(
        not meets_difficulty(Identity.generate(seeded_bytes(seed)).node_id, 8) for seed in range(50)
    )
    assert failures >= 45
    with pytest.raises(LocalProtocolError):
        meets_difficulty(identity.node_id, 257)


def test_key_file_round_trip_and_rejects_garbage() -> None:
    """A key file restores the same identity; anything else is refused."""
    identity = Identity.generate(seeded_bytes(4))
    restored = Identity.from_key_file(identity.to_key_file())
    assert restored.node_id == identity.node_id
    assert restored.sign(b"x") == identity.sign(b"x")
    for bad in (b"", identity.to_key_file()[:-1], b"X" + identity.to_key_file()[1:]):
        with pytest.raises(RemoteProtocolError):
            Identity.from_key_file(bad)
