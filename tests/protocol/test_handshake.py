"""Tests of protocol/handshake.py: two SecureHandshakes wired back to back (h11 style)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from noise.connection import Keypair, NoiseConnection

from protocol.errors import LocalProtocolError, RemoteProtocolError
from protocol.handshake import (
    PAYLOAD_SIZE,
    PAYLOAD_VERSION,
    PROLOGUE,
    SIGNATURE_DOMAIN,
    SecureHandshake,
    WeakPeerIdentity,
    WrongPeerIdentity,
    decode_identity_payload,
    encode_identity_payload,
)
from protocol.identity import Identity, NodeId, meets_difficulty, verify_signature
from protocol.noise import HandshakeState, x25519_public_key

DIALER = Identity(bytes([1]) * 32)
LISTENER = Identity(bytes([2]) * 32)
STRANGER = Identity(bytes([3]) * 32)
HYPOTHESIS = settings(derandomize=True, max_examples=150, deadline=None)


def _key(label: int) -> bytes:
    """A fixed 32-byte private key standing for fresh randomness."""
    return bytes([label]) * 32


@dataclass
class Pair:
    """A dialer and a listener, back to back (h11's ConnectionPair)."""

    initiator: SecureHandshake
    responder: SecureHandshake

    def run(self) -> None:
        """Deliver every message in order until both sides finish."""
        message_1 = self.initiator.start()
        message_2 = self.responder.receive(message_1)
        assert message_2 is not None
        message_3 = self.initiator.receive(message_2)
        assert message_3 is not None
        assert self.responder.receive(message_3) is None


def _pair(
    *,
    dialer: Identity = DIALER,
    listener: Identity = LISTENER,
    expected_by_dialer: NodeId | None = None,
    expected_by_listener: NodeId | None = None,
    listener_prologue: bytes = PROLOGUE,
) -> Pair:
    return Pair(
        SecureHandshake(
            dialer,
            initiator=True,
            noise_static_private=_key(10),
            ephemeral_private=_key(11),
            expected_node_id=expected_by_dialer,
        ),
        SecureHandshake(
            listener,
            initiator=False,
            noise_static_private=_key(20),
            ephemeral_private=_key(21),
            expected_node_id=expected_by_listener,
            prologue=listener_prologue,
        ),
    )


def _transcript() -> tuple[bytes, bytes, bytes]:
    """The three messages of a successful handshake between DIALER and LISTENER."""
    pair = _pair()
    message_1 = pair.initiator.start()
    message_2 = pair.responder.receive(message_1)
    assert message_2 is not None
    message_3 = pair.initiator.receive(message_2)
    assert message_3 is not None
    return message_1, message_2, message_3


def test_handshake_completes_and_learns_identities() -> None:
    """Both sides complete, learn each other's NodeId and agree on the handshake hash."""
    pair = _pair(expected_by_dialer=LISTENER.node_id)
    pair.run()
    assert pair.initiator.is_complete and pair.responder.is_complete
    assert pair.initiator.remote_node_id == LISTENER.node_id
    assert pair.responder.remote_node_id == DIALER.node_id
    assert pair.initiator.remote_public_key == LISTENER.public_key
    assert pair.responder.remote_public_key == DIALER.public_key
    assert pair.initiator.handshake_hash == pair.responder.handshake_hash
    assert len(pair.initiator.handshake_hash) == 64


def test_transport_both_ways() -> None:
    """The transport states from a completed handshake carry messages in both directions."""
    pair = _pair()
    pair.run()
    dialer_transport = pair.initiator.transport()
    listener_transport = pair.responder.transport()
    for number in range(3):
        request = b"request %d" % number
        assert listener_transport.decrypt(dialer_transport.encrypt(request)) == request
        response = b"response %d" % number
        assert dialer_transport.decrypt(listener_transport.encrypt(response)) == response


def test_message_sizes() -> None:
    """Message 1 is the bare ephemeral; 2 and 3 carry the encrypted 97-byte payload."""
    message_1, message_2, message_3 = _transcript()
    assert len(message_1) == 32
    assert len(message_2) == 32 + (32 + 16) + (PAYLOAD_SIZE + 16)
    assert len(message_3) == (32 + 16) + (PAYLOAD_SIZE + 16)


def test_payload_layout() -> None:
    """The payload is version 1, the Ed25519 key, and a signature over domain + static key."""
    static_public = x25519_public_key(_key(10))
    payload = encode_identity_payload(DIALER, static_public)
    assert len(payload) == PAYLOAD_SIZE == 97
    assert payload[0] == PAYLOAD_VERSION == 1
    assert payload[1:33] == DIALER.public_key
    assert verify_signature(DIALER.public_key, SIGNATURE_DOMAIN + static_public, payload[33:])
    assert decode_identity_payload(payload, static_public) == DIALER.public_key


def test_dialer_expecting_another_node_gets_wrong_peer_identity() -> None:
    """A dialer that expects another NodeId raises WrongPeerIdentity and sends nothing more."""
    pair = _pair(expected_by_dialer=STRANGER.node_id)
    message_2 = pair.responder.receive(pair.initiator.start())
    assert message_2 is not None
    with pytest.raises(WrongPeerIdentity) as caught:
        pair.initiator.receive(message_2)
    assert caught.value.expected == STRANGER.node_id
    assert caught.value.actual == LISTENER.node_id
    assert isinstance(caught.value, RemoteProtocolError)
    assert not pair.initiator.is_complete
    with pytest.raises(LocalProtocolError, match="failed"):
        pair.initiator.transport()


def test_listener_expecting_another_node_gets_wrong_peer_identity() -> None:
    """expected_node_id works on the responder side too."""
    pair = _pair(expected_by_listener=STRANGER.node_id)
    with pytest.raises(WrongPeerIdentity):
        pair.run()
    assert not pair.responder.is_complete


def _forging_responder(payload_for: bytes) -> tuple[SecureHandshake, bytes]:
    """An honest dialer, and the message 2 of a raw-Noise responder whose identity payload
    signs `payload_for` instead of its own Noise static key."""
    dialer = _pair().initiator
    responder = HandshakeState(
        "XX",
        initiator=False,
        prologue=PROLOGUE,
        static_private=_key(20),
        ephemeral_private=_key(21),
    )
    responder.read_message(dialer.start())
    return dialer, responder.write_message(encode_identity_payload(LISTENER, payload_for))


def test_signature_over_another_static_key_is_rejected() -> None:
    """A payload whose signature covers a different Noise static key is rejected: this is
    what stops a relay from replaying someone else's identity payload."""
    dialer, message_2 = _forging_responder(x25519_public_key(_key(99)))
    with pytest.raises(RemoteProtocolError, match="does not cover the Noise static key"):
        dialer.receive(message_2)
    with pytest.raises(LocalProtocolError):
        _ = dialer.remote_node_id


def test_genuine_raw_responder_is_accepted() -> None:
    """The forging helper, given the right static key, produces an accepted message 2."""
    dialer, message_2 = _forging_responder(x25519_public_key(_key(20)))
    assert dialer.receive(message_2) is not None
    assert dialer.remote_node_id == LISTENER.node_id


def _with_payload(payload: bytes) -> tuple[SecureHandshake, bytes]:
    dialer = _pair().initiator
    responder = HandshakeState(
        "XX",
        initiator=False,
        prologue=PROLOGUE,
        static_private=_key(20),
        ephemeral_private=_key(21),
    )
    responder.read_message(dialer.start())
    return dialer, responder.write_message(payload)


def _valid_payload() -> bytes:
    return encode_identity_payload(LISTENER, x25519_public_key(_key(20)))


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        _valid_payload()[:-1],
        _valid_payload() + b"\x00",
        bytes([2]) + _valid_payload()[1:],
        _valid_payload()[:40] + bytes([_valid_payload()[40] ^ 1]) + _valid_payload()[41:],
        _valid_payload()[:-1] + bytes([_valid_payload()[-1] ^ 1]),
        bytes(PAYLOAD_SIZE),
    ],
    ids=["empty", "short", "long", "version-2", "other-key", "bad-signature", "zeros"],
)
def test_garbage_payload_is_rejected(payload: bytes) -> None:
    """A payload of the wrong length or version, or with a bad signature, is rejected."""
    dialer, message_2 = _with_payload(payload)
    with pytest.raises(RemoteProtocolError):
        dialer.receive(message_2)


def test_non_empty_first_payload_is_rejected() -> None:
    """The listener rejects a message 1 that carries a payload."""
    dialer = HandshakeState(
        "XX",
        initiator=True,
        prologue=PROLOGUE,
        static_private=_key(10),
        ephemeral_private=_key(11),
    )
    listener = _pair().responder
    with pytest.raises(RemoteProtocolError, match="empty payload"):
        listener.receive(dialer.write_message(b"early data"))


def test_prologue_mismatch_fails() -> None:
    """Sides with different prologues cannot complete the handshake."""
    pair = _pair(listener_prologue=b"freehold/2")
    with pytest.raises(RemoteProtocolError):
        pair.run()


def test_api_misuse_raises_local_protocol_error() -> None:
    """Calls out of order raise LocalProtocolError and do not break the handshake."""
    pair = _pair()
    with pytest.raises(LocalProtocolError):
        pair.responder.start()
    with pytest.raises(LocalProtocolError):
        pair.initiator.receive(bytes(32))
    with pytest.raises(LocalProtocolError):
        pair.initiator.transport()
    with pytest.raises(LocalProtocolError):
        _ = pair.initiator.handshake_hash
    with pytest.raises(LocalProtocolError):
        _ = pair.responder.remote_node_id
    pair.run()
    with pytest.raises(LocalProtocolError):
        pair.initiator.start()
    with pytest.raises(LocalProtocolError):
        pair.responder.receive(bytes(64))
    pair.initiator.transport()
    with pytest.raises(LocalProtocolError):
        pair.initiator.transport()


def test_failed_handshake_stays_dead() -> None:
    """After a RemoteProtocolError every call raises LocalProtocolError."""
    listener = _pair().responder
    with pytest.raises(RemoteProtocolError):
        listener.receive(b"short")
    with pytest.raises(LocalProtocolError, match="failed"):
        listener.receive(_transcript()[0])
    assert not listener.is_complete


@HYPOTHESIS
@given(
    which=st.integers(min_value=0, max_value=2),
    position=st.integers(min_value=0, max_value=300),
    mask=st.integers(min_value=1, max_value=255),
    mutation=st.sampled_from(["flip", "truncate", "extend"]),
    extra=st.binary(min_size=1, max_size=20),
)
def test_mutated_handshake_messages_only_raise_remote_errors(
    which: int, position: int, mask: int, mutation: str, extra: bytes
) -> None:
    """Any mutation of any one handshake message makes some side raise
    RemoteProtocolError, and nothing ever raises anything else."""
    pair = _pair(expected_by_dialer=LISTENER.node_id)
    receivers = [pair.responder.receive, pair.initiator.receive, pair.responder.receive]
    message = pair.initiator.start()
    with pytest.raises(RemoteProtocolError):
        for index in range(3):
            if index == which:
                mutable = bytearray(message)
                if mutation == "flip":
                    mutable[position % len(mutable)] ^= mask
                elif mutation == "truncate":
                    del mutable[position % len(mutable) :]
                else:
                    mutable += extra
                message = bytes(mutable)
            reply = receivers[index](message)
            if index < 2:
                assert reply is not None
                message = reply


# --- the transcript published in docs/PROTOCOL.md#secure-channel --------------------------

TRANSCRIPT = {
    "message_1": "73b2d8b76aa9b53660032bc8f5d8bee3a3ae4e3b3a7fd49ade81f7347a34aa68",
    "message_2": (
        "bce059bf5b2ab7a91f3e863acf0c84d3ebbe04ca8490094b052b5b15afab1743"
        "887b89e89380fcb220198f0fd07908766a91bc28e8b4e3c7728b729fcd1776a7"
        "c795f951914857e6f5fd914739e5fce16b9b03a2279decc1322673dfb8085303"
        "e422127dc0d4af3a882746831b44dab891e8539d6ab3b9b34db98add9fc95943"
        "e192bfbcef33d7c578964c4dadd45a2a24fc471d1db2a95dd3562db943210a59"
        "d86c9a49a31f07e5551f3291e8a97fc83af182543f5bd9ca4483125b63b62a0c"
        "9c"
    ),
    "message_3": (
        "38dbccc5d3c3766afd47ce20a709eae9d891d0d38bd71efbf3fdc33ab31b8a7b"
        "f544addfbdc4cddf847fd04f00183e77bd8a8968221a639116e6402420fc7eb1"
        "e9d76ca13d21d0da1d802f51077216bc9e5ee4933643440b303bfa5ebb4a2b78"
        "bca6e398bdcb8afc7196e82d63d9c5316f4accab1176135cceb2e7795c2fcd75"
        "d6d3c380ec28e26c8278d0f03da9064e50de99dcfe92e2e44220db7cdefeae08"
        "3e"
    ),
    "handshake_hash": (
        "b924530b590766f196e5aced9be893c7a80b868710853d5d58a9d471fed42d3d"
        "6db313c12c3b3ade751212cbb9efff95db07995d64488b34f190afaccb9019c7"
    ),
    "dialer_node_id": "c5e21ab1c9f6022d81c3b25e3436cb7f1df77f9652ae3e1310c28e621dd87b4c",
    "listener_node_id": "c11ae4092c56101421f745612bdc6b51c1e646c61ac3f5eccfed2f59c200f581",
    "transport_initiator_hello": "475aca00b9146d5b181bed0a40e3d8a54ac6c98ab3",
    "transport_responder_world": "8a49e4d24a5d04eda68e134e3b6d1a3a1264b22038",
}


def test_published_transcript() -> None:
    """The handshake between the documented keys reproduces the documented bytes."""
    pair = _pair()
    message_1 = pair.initiator.start()
    message_2 = pair.responder.receive(message_1)
    assert message_2 is not None
    message_3 = pair.initiator.receive(message_2)
    assert message_3 is not None
    assert pair.responder.receive(message_3) is None
    assert message_1.hex() == TRANSCRIPT["message_1"]
    assert message_2.hex() == TRANSCRIPT["message_2"]
    assert message_3.hex() == TRANSCRIPT["message_3"]
    assert pair.initiator.handshake_hash.hex() == TRANSCRIPT["handshake_hash"]
    assert pair.responder.remote_node_id.hex() == TRANSCRIPT["dialer_node_id"]
    assert pair.initiator.remote_node_id.hex() == TRANSCRIPT["listener_node_id"]
    dialer_transport, listener_transport = pair.initiator.transport(), pair.responder.transport()
    assert dialer_transport.encrypt(b"hello").hex() == TRANSCRIPT["transport_initiator_hello"]
    assert listener_transport.encrypt(b"world").hex() == TRANSCRIPT["transport_responder_world"]


@pytest.mark.filterwarnings("ignore:One of ephemeral keypairs is already set")
def test_published_transcript_is_plain_noise() -> None:
    """noiseprotocol, given the same keys and identity payloads, writes the same bytes:
    the Freehold handshake is standard Noise XX with a payload convention."""
    sides: dict[bool, NoiseConnection] = {}
    for initiator, static, ephemeral in ((True, 10, 11), (False, 20, 21)):
        connection = NoiseConnection.from_name(b"Noise_XX_25519_ChaChaPoly_BLAKE2b")
        if initiator:
            connection.set_as_initiator()
        else:
            connection.set_as_responder()
        connection.set_prologue(PROLOGUE)
        connection.set_keypair_from_private_bytes(Keypair.STATIC, _key(static))
        connection.set_keypair_from_private_bytes(Keypair.EPHEMERAL, _key(ephemeral))
        connection.start_handshake()
        sides[initiator] = connection
    dialer, listener = sides[True], sides[False]
    dialer_payload = encode_identity_payload(DIALER, x25519_public_key(_key(10)))
    listener_payload = encode_identity_payload(LISTENER, x25519_public_key(_key(20)))
    message_1 = bytes(dialer.write_message(b""))
    assert listener.read_message(message_1) == b""
    message_2 = bytes(listener.write_message(listener_payload))
    assert dialer.read_message(message_2) == listener_payload
    message_3 = bytes(dialer.write_message(dialer_payload))
    assert listener.read_message(message_3) == dialer_payload
    assert message_1.hex() == TRANSCRIPT["message_1"]
    assert message_2.hex() == TRANSCRIPT["message_2"]
    assert message_3.hex() == TRANSCRIPT["message_3"]
    assert dialer.get_handshake_hash().hex() == TRANSCRIPT["handshake_hash"]
    assert dialer.encrypt(b"hello").hex() == TRANSCRIPT["transport_initiator_hello"]


def _worked(seed: int, difficulty: int) -> Identity:
    """An identity whose id meets `difficulty` bits of proof of work (seeded search)."""
    return Identity.generate(random.Random(seed).randbytes, difficulty=difficulty)


def _first_without_work(difficulty: int) -> Identity:
    """The first of the fixed identities whose id misses `difficulty` bits."""
    for label in range(4, 255):
        identity = Identity(bytes([label]) * 32)
        if not meets_difficulty(identity.node_id, difficulty):
            return identity
    raise AssertionError("every id met the difficulty")


def _worked_pair(dialer: Identity, listener: Identity, difficulty: int) -> Pair:
    keys = random.Random(3).randbytes
    return Pair(
        SecureHandshake.fresh(dialer, keys, initiator=True, difficulty=difficulty),
        SecureHandshake.fresh(listener, keys, initiator=False, difficulty=difficulty),
    )


def test_both_sides_check_the_proof_of_work() -> None:
    """With a difficulty, ids with the work complete; a listener whose id lacks it is
    refused by the dialer before the dialer shows who it is, and a dialer whose id
    lacks it is refused by the listener (issue 18, row 1)."""
    difficulty = 8
    worked_dialer, worked_listener = _worked(1, difficulty), _worked(2, difficulty)
    weak = _first_without_work(difficulty)
    good = _worked_pair(worked_dialer, worked_listener, difficulty)
    good.run()
    assert good.initiator.remote_node_id == worked_listener.node_id

    weak_listener = _worked_pair(worked_dialer, weak, difficulty)
    message_2 = weak_listener.responder.receive(weak_listener.initiator.start())
    assert message_2 is not None
    with pytest.raises(WeakPeerIdentity, match="8 bits") as caught:
        weak_listener.initiator.receive(message_2)
    assert caught.value.actual == weak.node_id
    assert not weak_listener.initiator.is_complete

    weak_dialer = _worked_pair(weak, worked_listener, difficulty)
    message_2 = weak_dialer.responder.receive(weak_dialer.initiator.start())
    assert message_2 is not None
    message_3 = weak_dialer.initiator.receive(message_2)
    assert message_3 is not None
    with pytest.raises(WeakPeerIdentity):
        weak_dialer.responder.receive(message_3)
    assert not weak_dialer.responder.is_complete
    with pytest.raises(LocalProtocolError, match="failed"):
        weak_dialer.responder.transport()


def test_the_difficulty_must_be_a_number_of_bits() -> None:
    for bad in (-1, 257):
        with pytest.raises(LocalProtocolError, match="difficulty"):
            SecureHandshake.fresh(DIALER, _key, initiator=True, difficulty=bad)
