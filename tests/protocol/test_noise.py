"""Tests of protocol/noise.py: published vectors, interop with `noiseprotocol`, failures."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import nacl.bindings
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from noise.connection import Keypair, NoiseConnection
from noise.state import CipherState as TheirCipherState

from protocol.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from protocol.noise import (
    MAX_MESSAGE_SIZE,
    MAX_NONCE,
    MAX_PLAINTEXT_SIZE,
    PATTERNS,
    CipherState,
    HandshakeState,
    TransportState,
    _hmac_hash,
    x25519_public_key,
)

VECTORS_PATH = Path(__file__).parent.parent / "vectors" / "noise-test-vectors.json"
VECTORS: list[dict[str, Any]] = json.loads(VECTORS_PATH.read_text())["vectors"]

# Fixed keys: tests are deterministic. Distinct bytes so no two keys coincide.
INITIATOR_STATIC = bytes(range(1, 33))
RESPONDER_STATIC = bytes(range(33, 65))
INITIATOR_EPHEMERAL = bytes(range(65, 97))
RESPONDER_EPHEMERAL = bytes(range(97, 129))
KEY = bytes(range(129, 161))
LOW_ORDER_POINT = bytes(32)  # u = 0: every DH with it is all zeros
HYPOTHESIS = settings(derandomize=True, max_examples=200, deadline=None)
# noiseprotocol warns whenever a test fixes its ephemeral key; we do so on purpose.
FIXED_EPHEMERAL_WARNING = "ignore:One of ephemeral keypairs is already set"
XX_NAME = b"Noise_XX_25519_ChaChaPoly_BLAKE2b"


def _optional_hex(vector: dict[str, Any], key: str) -> bytes | None:
    return bytes.fromhex(vector[key]) if key in vector else None


def _vector_state(vector: dict[str, Any], role: str) -> HandshakeState:
    return HandshakeState(
        vector["protocol_name"].split("_")[1],
        initiator=role == "init",
        prologue=bytes.fromhex(vector[f"{role}_prologue"]),
        static_private=_optional_hex(vector, f"{role}_static"),
        ephemeral_private=bytes.fromhex(vector[f"{role}_ephemeral"]),
        remote_static=_optional_hex(vector, f"{role}_remote_static"),
    )


def _statics(pattern: str, initiator: bool) -> dict[str, bytes | None]:
    """The static-key arguments a side of `pattern` needs, from the fixed test keys."""
    spec = PATTERNS[pattern]
    first_letter, second_letter = pattern[0], pattern[1]
    own_letter = first_letter if initiator else second_letter
    own_static = INITIATOR_STATIC if initiator else RESPONDER_STATIC
    remote_static = RESPONDER_STATIC if initiator else INITIATOR_STATIC
    remote_pre = spec.responder_pre_message if initiator else spec.initiator_pre_message
    return {
        "static_private": None if own_letter == "N" else own_static,
        "remote_static": x25519_public_key(remote_static) if "s" in remote_pre else None,
    }


def _our_side(pattern: str, *, initiator: bool, prologue: bytes = b"") -> HandshakeState:
    return HandshakeState(
        pattern,
        initiator=initiator,
        prologue=prologue,
        ephemeral_private=INITIATOR_EPHEMERAL if initiator else RESPONDER_EPHEMERAL,
        **_statics(pattern, initiator),
    )


def _their_side(pattern: str, *, initiator: bool, prologue: bytes = b"") -> NoiseConnection:
    connection = NoiseConnection.from_name(f"Noise_{pattern}_25519_ChaChaPoly_BLAKE2b".encode())
    if initiator:
        connection.set_as_initiator()
    else:
        connection.set_as_responder()
    connection.set_prologue(prologue)
    statics = _statics(pattern, initiator)
    if statics["static_private"] is not None:
        connection.set_keypair_from_private_bytes(Keypair.STATIC, statics["static_private"])
    if statics["remote_static"] is not None:
        connection.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, statics["remote_static"])
    ephemeral = INITIATOR_EPHEMERAL if initiator else RESPONDER_EPHEMERAL
    connection.set_keypair_from_private_bytes(Keypair.EPHEMERAL, ephemeral)
    connection.start_handshake()
    return connection


def _handshake_pair(pattern: str = "XX") -> tuple[HandshakeState, HandshakeState]:
    """An initiator and a responder of ours, back to back, handshake complete."""
    initiator = _our_side(pattern, initiator=True)
    responder = _our_side(pattern, initiator=False)
    writer, reader = initiator, responder
    while not initiator.is_complete:
        reader.read_message(writer.write_message(b"payload"))
        writer, reader = reader, writer
    return initiator, responder


def _transport_pair() -> tuple[TransportState, TransportState]:
    initiator, responder = _handshake_pair()
    return initiator.split(), responder.split()


# --- published test vectors -------------------------------------------------------------


@pytest.mark.parametrize("vector", VECTORS, ids=[v["protocol_name"] for v in VECTORS])
def test_cacophony_vector(vector: dict[str, Any]) -> None:
    """Every handshake and transport message and the handshake hash match the vector."""
    initiator = _vector_state(vector, "init")
    responder = _vector_state(vector, "resp")
    transports: tuple[TransportState, TransportState] | None = None
    for index, message in enumerate(vector["messages"]):
        payload = bytes.fromhex(message["payload"])
        expected = bytes.fromhex(message["ciphertext"])
        from_initiator = index % 2 == 0
        if transports is None:
            sender, receiver = (initiator, responder) if from_initiator else (responder, initiator)
            ciphertext = sender.write_message(payload)
            assert ciphertext == expected, f"message {index}"
            assert receiver.read_message(ciphertext) == payload
            if initiator.is_complete:
                assert responder.is_complete
                transports = (initiator.split(), responder.split())
        else:
            initiator_transport, responder_transport = transports
            if from_initiator:
                sending, receiving = initiator_transport, responder_transport
            else:
                sending, receiving = responder_transport, initiator_transport
            ciphertext = sending.encrypt(payload)
            assert ciphertext == expected, f"message {index}"
            assert receiving.decrypt(ciphertext) == payload
    assert transports is not None
    assert initiator.handshake_hash.hex() == vector["handshake_hash"]
    assert responder.handshake_hash.hex() == vector["handshake_hash"]


@pytest.mark.parametrize("vector", VECTORS, ids=[v["protocol_name"] for v in VECTORS])
def test_vector_remote_static_learned(vector: dict[str, Any]) -> None:
    """A side whose pattern transmits the peer's static key ends up with that exact key."""
    initiator = _vector_state(vector, "init")
    responder = _vector_state(vector, "resp")
    writer, reader = initiator, responder
    for message in vector["messages"]:
        if initiator.is_complete:
            break
        reader.read_message(writer.write_message(bytes.fromhex(message["payload"])))
        writer, reader = reader, writer
    if "resp_static" in vector:
        expected = x25519_public_key(bytes.fromhex(vector["resp_static"]))
        assert initiator.remote_static_public == expected
    if "init_static" in vector:
        expected = x25519_public_key(bytes.fromhex(vector["init_static"]))
        assert responder.remote_static_public == expected


def test_vectors_cover_the_four_patterns() -> None:
    """The vector file is the cacophony subset for NN, NX, XN and XX in our suite."""
    names = sorted(v["protocol_name"] for v in VECTORS)
    assert names == [f"Noise_{p}_25519_ChaChaPoly_BLAKE2b" for p in ("NN", "NX", "XN", "XX")]


# --- interoperability with the `noiseprotocol` package ------------------------------------


def _interop(ours: HandshakeState, theirs: NoiseConnection) -> None:
    """Drive a full handshake with payloads, then transport traffic both ways."""
    ours_writes = ours.is_initiator
    step = 0
    while not ours.is_complete:
        payload = f"handshake payload {step}".encode()
        if ours_writes:
            assert theirs.read_message(ours.write_message(payload)) == payload
        else:
            assert ours.read_message(bytes(theirs.write_message(payload))) == payload
        ours_writes = not ours_writes
        step += 1
    assert theirs.handshake_finished
    assert ours.handshake_hash == theirs.get_handshake_hash()
    transport = ours.split()
    for round_number in range(3):
        outbound = b"ours %d " % round_number + bytes(1000 * round_number)
        assert theirs.decrypt(bytes(transport.encrypt(outbound))) == outbound
        inbound = b"theirs %d" % round_number
        assert transport.decrypt(theirs.encrypt(inbound)) == inbound
    big = bytes(range(256)) * (MAX_PLAINTEXT_SIZE // 256)
    assert theirs.decrypt(bytes(transport.encrypt(big))) == big


@pytest.mark.filterwarnings(FIXED_EPHEMERAL_WARNING)
def test_interop_xx_our_initiator_their_responder() -> None:
    """Our XX initiator completes a handshake and talks both ways with noiseprotocol's."""
    _interop(
        _our_side("XX", initiator=True, prologue=b"freehold/1"),
        _their_side("XX", initiator=False, prologue=b"freehold/1"),
    )


@pytest.mark.filterwarnings(FIXED_EPHEMERAL_WARNING)
def test_interop_xx_their_initiator_our_responder() -> None:
    """noiseprotocol's XX initiator completes a handshake and talks both ways with ours."""
    _interop(
        _our_side("XX", initiator=False, prologue=b"freehold/1"),
        _their_side("XX", initiator=True, prologue=b"freehold/1"),
    )


@pytest.mark.filterwarnings(FIXED_EPHEMERAL_WARNING)
@pytest.mark.parametrize("initiator", [True, False], ids=["our-initiator", "our-responder"])
@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_interop_every_pattern(pattern: str, initiator: bool) -> None:
    """Every supported pattern, in either role, interoperates with noiseprotocol."""
    _interop(
        _our_side(pattern, initiator=initiator, prologue=b"prologue"),
        _their_side(pattern, initiator=not initiator, prologue=b"prologue"),
    )


def test_rekey_matches_spec_and_noiseprotocol() -> None:
    """CipherState.rekey() is the §4.2 default REKEY, as noiseprotocol computes it too."""
    ours = CipherState(KEY, nonce=5)
    ours.rekey()
    assert ours.nonce == 5  # rekey keeps n (§5.1)
    spec_key = nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt(
        bytes(32), b"", bytes(4) + b"\xff" * 8, KEY
    )[:32]
    theirs = TheirCipherState(NoiseConnection.from_name(XX_NAME).noise_protocol)
    theirs.initialize_key(KEY)
    theirs.rekey()
    theirs.set_nonce(5)
    expected = CipherState(spec_key, nonce=5).encrypt_with_ad(b"ad", b"after rekey")
    assert ours.encrypt_with_ad(b"ad", b"after rekey") == expected
    assert theirs.encrypt_with_ad(b"ad", b"after rekey") == expected


# --- failures -----------------------------------------------------------------------------


@pytest.mark.parametrize("position", [0, 31, 32, 80, -1], ids=lambda p: f"byte{p}")
def test_tampered_handshake_message_is_rejected(position: int) -> None:
    """Flipping any byte of XX message 2 makes the initiator raise RemoteProtocolError."""
    initiator = _our_side("XX", initiator=True)
    responder = _our_side("XX", initiator=False)
    responder.read_message(initiator.write_message())
    message = bytearray(responder.write_message(b"hello"))
    message[position] ^= 0x01
    with pytest.raises(RemoteProtocolError):
        initiator.read_message(message)


def test_failed_handshake_is_dead() -> None:
    """After a rejected handshake message every later call raises LocalProtocolError."""
    initiator = _our_side("XX", initiator=True)
    initiator.write_message()
    with pytest.raises(RemoteProtocolError):
        initiator.read_message(bytes(200))
    with pytest.raises(LocalProtocolError, match="dead"):
        initiator.read_message(bytes(200))
    with pytest.raises(LocalProtocolError, match="dead"):
        initiator.write_message()


@pytest.mark.parametrize("size", [0, 31, 32 + 47], ids=["empty", "short-e", "short-s"])
def test_truncated_handshake_message_is_rejected(size: int) -> None:
    """A handshake message too short for its tokens raises RemoteProtocolError."""
    initiator = _our_side("XX", initiator=True)
    responder = _our_side("XX", initiator=False)
    responder.read_message(initiator.write_message())
    message = responder.write_message()
    with pytest.raises(RemoteProtocolError):
        initiator.read_message(message[:size])


def test_oversized_handshake_message_is_rejected() -> None:
    """A handshake message longer than 65535 bytes raises RemoteProtocolError."""
    responder = _our_side("NN", initiator=False)
    with pytest.raises(RemoteProtocolError):
        responder.read_message(bytes(MAX_MESSAGE_SIZE + 1))


@pytest.mark.parametrize(
    ("initiator", "overhead"),
    [(True, 32), (False, 32 + (32 + 16) + 16)],
    ids=["message1-e", "message2-e-ee-s-es"],
)
def test_oversized_handshake_payload_is_refused(initiator: bool, overhead: int) -> None:
    """A payload that would make a handshake message exceed 65535 bytes is refused before
    any state changes, so the largest payload that fits still works."""
    side = _our_side("XX", initiator=initiator)
    if not initiator:
        side.read_message(_our_side("XX", initiator=True).write_message())
    with pytest.raises(LocalProtocolError):
        side.write_message(bytes(MAX_MESSAGE_SIZE - overhead + 1))
    message = side.write_message(bytes(MAX_MESSAGE_SIZE - overhead))
    assert len(message) == MAX_MESSAGE_SIZE


def test_low_order_ephemeral_is_rejected() -> None:
    """A peer ephemeral key of low order (all-zero DH output) raises RemoteProtocolError."""
    responder = _our_side("NN", initiator=False)
    responder.read_message(LOW_ORDER_POINT)
    with pytest.raises(RemoteProtocolError, match="low-order"):
        responder.write_message()
    initiator = _our_side("NN", initiator=True)
    initiator.write_message()
    with pytest.raises(RemoteProtocolError, match="low-order"):
        initiator.read_message(LOW_ORDER_POINT + bytes(16))


def test_tampered_transport_message_kills_the_state() -> None:
    """A transport message that fails authentication raises RemoteProtocolError, and the
    state is dead afterwards in both directions, even for the genuine message."""
    sending, receiving = _transport_pair()
    genuine = sending.encrypt(b"frame bytes")
    tampered = bytearray(genuine)
    tampered[3] ^= 0x80
    with pytest.raises(RemoteProtocolError):
        receiving.decrypt(tampered)
    with pytest.raises(LocalProtocolError, match="connection is dead"):
        receiving.decrypt(genuine)
    with pytest.raises(LocalProtocolError, match="connection is dead"):
        receiving.encrypt(b"reply")


@pytest.mark.parametrize("direct", [True, False], ids=["libsodium-direct", "pynacl"])
def test_decrypt_into_appends_and_leaves_the_buffer_alone_on_failure(direct: bool) -> None:
    """decrypt_into appends each plaintext to the buffer, as decrypt would return it; a
    message that fails (tampered, or of a bad length) leaves the buffer as it was and
    kills the state."""
    keys = bytes(range(32)), bytes(range(32, 64))
    sending = TransportState(*keys, direct=direct)
    receiving = TransportState(*reversed(keys), direct=direct)
    out = bytearray(b"kept")
    for plaintext in (b"", b"one", bytes(MAX_MESSAGE_SIZE - 16)):
        receiving.decrypt_into(memoryview(sending.encrypt(plaintext)), out)
    assert out == b"kept" + b"one" + bytes(MAX_MESSAGE_SIZE - 16)
    before = bytes(out)
    tampered = bytearray(sending.encrypt(b"frame"))
    tampered[-1] ^= 1
    with pytest.raises(RemoteProtocolError):
        receiving.decrypt_into(tampered, out)
    assert out == before
    with pytest.raises(LocalProtocolError, match="connection is dead"):
        receiving.decrypt_into(sending.encrypt(b"late"), out)
    short = TransportState(*reversed(keys), direct=direct)
    with pytest.raises(RemoteProtocolError):
        short.decrypt_into(bytes(15), out)
    assert out == before


@pytest.mark.parametrize("direct", [True, False], ids=["libsodium-direct", "pynacl"])
def test_decrypt_into_an_exported_buffer_takes_nothing(direct: bool) -> None:
    """A buffer that cannot grow (a view of it is held) raises BufferError and the
    message is not taken: the same message decrypts once the view is released."""
    keys = bytes(range(32)), bytes(range(32, 64))
    sending = TransportState(*keys, direct=direct)
    receiving = TransportState(*reversed(keys), direct=direct)
    out = bytearray(b"kept")
    message = sending.encrypt(b"frame")
    view = memoryview(out)
    with pytest.raises(BufferError):
        receiving.decrypt_into(message, out)
    view.release()
    receiving.decrypt_into(message, out)
    assert out == b"keptframe"


@pytest.mark.parametrize("size", [0, 15, MAX_MESSAGE_SIZE + 1])
def test_transport_message_of_bad_length_kills_the_state(size: int) -> None:
    """A transport message shorter than a tag or longer than 65535 bytes is the peer's
    fault: RemoteProtocolError, and the state is dead."""
    _, receiving = _transport_pair()
    with pytest.raises(RemoteProtocolError):
        receiving.decrypt(bytes(size))
    with pytest.raises(LocalProtocolError, match="connection is dead"):
        receiving.decrypt(bytes(16))


def test_transport_round_trip_accepts_bytes_like() -> None:
    """encrypt and decrypt accept bytes, bytearray and memoryview."""
    sending, receiving = _transport_pair()
    for kind in (bytes, bytearray, memoryview):
        ciphertext = sending.encrypt(kind(b"abc"))
        assert receiving.decrypt(kind(ciphertext)) == b"abc"
    buffer = bytearray(b"xx" + sending.encrypt(b"sliced") + b"yy")
    assert receiving.decrypt(memoryview(buffer)[2:-2]) == b"sliced"


def test_transport_directions_are_independent() -> None:
    """Each side's send key is the other's receive key; messages cannot be reflected."""
    initiator, responder = _transport_pair()
    assert responder.decrypt(initiator.encrypt(b"to responder")) == b"to responder"
    assert initiator.decrypt(responder.encrypt(b"to initiator")) == b"to initiator"
    reflected = initiator.encrypt(b"reflected")
    with pytest.raises(RemoteProtocolError):
        initiator.decrypt(reflected)


def test_transport_plaintext_size_limit() -> None:
    """A 65519-byte plaintext makes a 65535-byte message; one more byte is refused and
    the state stays usable."""
    sending, receiving = _transport_pair()
    with pytest.raises(LocalProtocolError):
        sending.encrypt(bytes(MAX_PLAINTEXT_SIZE + 1))
    ciphertext = sending.encrypt(bytes(MAX_PLAINTEXT_SIZE))
    assert len(ciphertext) == MAX_MESSAGE_SIZE
    assert receiving.decrypt(ciphertext) == bytes(MAX_PLAINTEXT_SIZE)


def test_cipher_state_nonce_exhaustion() -> None:
    """CipherState uses nonce 2**64-2 once, then refuses: 2**64-1 is reserved (§5.1)."""
    sender = CipherState(KEY, nonce=MAX_NONCE - 1)
    receiver = CipherState(KEY, nonce=MAX_NONCE - 1)
    assert receiver.decrypt_with_ad(b"ad", sender.encrypt_with_ad(b"ad", b"last")) == b"last"
    assert sender.nonce == MAX_NONCE
    with pytest.raises(LocalProtocolError, match="nonce exhausted"):
        sender.encrypt_with_ad(b"ad", b"one too many")
    with pytest.raises(LocalProtocolError, match="nonce exhausted"):
        receiver.decrypt_with_ad(b"ad", bytes(32))


def test_transport_nonce_exhaustion() -> None:
    """TransportState refuses to send or receive past nonce 2**64-2."""
    sending = TransportState(KEY, KEY, send_nonce=MAX_NONCE - 1)
    receiving = TransportState(KEY, KEY, receive_nonce=MAX_NONCE - 1)
    assert receiving.decrypt(sending.encrypt(b"last")) == b"last"
    with pytest.raises(LocalProtocolError, match="nonce exhausted"):
        sending.encrypt(b"one too many")
    with pytest.raises(LocalProtocolError, match="nonce exhausted"):
        receiving.decrypt(bytes(32))


def test_cipher_state_failed_decrypt_keeps_nonce() -> None:
    """A failed DecryptWithAd leaves the nonce unchanged (§5.1)."""
    sender, receiver = CipherState(KEY), CipherState(KEY)
    ciphertext = sender.encrypt_with_ad(b"", b"data")
    with pytest.raises(RemoteProtocolError):
        receiver.decrypt_with_ad(b"other ad", ciphertext)
    assert receiver.nonce == 0
    assert receiver.decrypt_with_ad(b"", ciphertext) == b"data"


def test_cipher_state_without_key_passes_through() -> None:
    """Before any MixKey, EncryptWithAd and DecryptWithAd return their input (§5.1)."""
    cipher = CipherState()
    assert cipher.encrypt_with_ad(b"ad", b"clear") == b"clear"
    assert cipher.decrypt_with_ad(b"ad", b"clear") == b"clear"
    with pytest.raises(LocalProtocolError):
        cipher.rekey()


@pytest.mark.parametrize("role", ["initiator", "responder"])
def test_out_of_turn_calls(role: str) -> None:
    """Writing or reading out of turn, and anything but split() after completion, raise
    LocalProtocolError without harming the handshake."""
    initiator = _our_side("XX", initiator=True)
    responder = _our_side("XX", initiator=False)
    with pytest.raises(LocalProtocolError, match="out of turn"):
        initiator.read_message(bytes(32))
    with pytest.raises(LocalProtocolError, match="out of turn"):
        responder.write_message()
    with pytest.raises(LocalProtocolError):
        (initiator if role == "initiator" else responder).split()
    with pytest.raises(LocalProtocolError):
        _ = (initiator if role == "initiator" else responder).handshake_hash
    writer, reader = initiator, responder
    while not initiator.is_complete:
        reader.read_message(writer.write_message())
        writer, reader = reader, writer
    finished = initiator if role == "initiator" else responder
    with pytest.raises(LocalProtocolError, match="complete"):
        finished.write_message()
    with pytest.raises(LocalProtocolError, match="complete"):
        finished.read_message(bytes(64))
    finished.split()
    with pytest.raises(LocalProtocolError, match="already"):
        finished.split()


@pytest.mark.parametrize(
    ("pattern", "arguments"),
    [
        ("XX", {"static_private": None}),
        ("NN", {"static_private": INITIATOR_STATIC}),
        ("NK", {"static_private": None, "remote_static": None}),
        ("XX", {"static_private": INITIATOR_STATIC, "remote_static": bytes(32)}),
        ("XX", {"static_private": bytes(31)}),
        ("ZZ", {"static_private": None}),
    ],
    ids=["missing-static", "unused-static", "missing-remote", "unused-remote", "short", "ZZ"],
)
def test_bad_handshake_arguments(pattern: str, arguments: dict[str, Any]) -> None:
    """Missing, superfluous or malformed keys and unknown patterns raise LocalProtocolError."""
    with pytest.raises(LocalProtocolError):
        HandshakeState(
            pattern,
            initiator=True,
            prologue=b"",
            ephemeral_private=INITIATOR_EPHEMERAL,
            **arguments,
        )


# --- property tests: random peer bytes only ever raise RemoteProtocolError ---------------


@HYPOTHESIS
@given(message=st.binary(max_size=300), pattern=st.sampled_from(sorted(PATTERNS)))
def test_random_first_message_to_responder(message: bytes, pattern: str) -> None:
    """Random bytes as message 1, and the responder's reply to it, only ever raise
    RemoteProtocolError (or are accepted where message 1 is not authenticated)."""
    responder = _our_side(pattern, initiator=False)
    try:
        responder.read_message(message)
        responder.write_message(b"reply")
    except RemoteProtocolError:
        pass


@HYPOTHESIS
@given(message=st.binary(max_size=300), pattern=st.sampled_from(sorted(PATTERNS)))
def test_random_second_message_to_initiator(message: bytes, pattern: str) -> None:
    """Random bytes as message 2 always raise RemoteProtocolError: it is authenticated."""
    initiator = _our_side(pattern, initiator=True)
    initiator.write_message()
    with pytest.raises(RemoteProtocolError):
        initiator.read_message(message)


@HYPOTHESIS
@given(ciphertexts=st.lists(st.binary(max_size=200), min_size=1, max_size=3))
def test_random_transport_messages(ciphertexts: list[bytes]) -> None:
    """Random transport messages raise RemoteProtocolError, then LocalProtocolError."""
    _, receiving = _transport_pair()
    with pytest.raises(RemoteProtocolError):
        receiving.decrypt(ciphertexts[0])
    for ciphertext in ciphertexts[1:]:
        with pytest.raises(ProtocolError):
            receiving.decrypt(ciphertext)


@pytest.mark.parametrize("size", [0, 1, 100, 65519])
def test_direct_aead_matches_pynacl_public_wrappers(size: int) -> None:
    """The fast libsodium path and PyNaCl's public wrappers produce and accept the same
    bytes, and both refuse a tampered message."""
    from protocol import noise

    assert noise._DIRECT_AEAD is not None, "PyNaCl's compiled module was not found"
    plaintext = bytes(range(256)) * (size // 256) + bytes(size % 256)
    key_a, key_b = b"a" * 32, b"b" * 32
    fast = TransportState(key_a, key_b)
    slow = TransportState(key_a, key_b, direct=False)
    fast_peer = TransportState(key_b, key_a)
    slow_peer = TransportState(key_b, key_a, direct=False)
    for _ in range(3):
        ciphertext = fast.encrypt(memoryview(plaintext))
        assert ciphertext == slow.encrypt(plaintext)
        assert slow_peer.decrypt(ciphertext) == plaintext
        assert fast_peer.decrypt(memoryview(ciphertext)) == plaintext
    tampered = bytearray(fast.encrypt(plaintext))
    tampered[-1] ^= 0x80
    slow.encrypt(plaintext)
    for receiver in (fast_peer, slow_peer):
        with pytest.raises(RemoteProtocolError):
            receiver.decrypt(bytes(tampered))


@HYPOTHESIS
@given(key=st.binary(max_size=300), data=st.binary(max_size=300))
def test_hmac_hash_matches_the_standard_library(key: bytes, data: bytes) -> None:
    """The written-out HMAC-BLAKE2b equals hmac.new(..., blake2b), short and long keys."""
    assert _hmac_hash(key, data) == hmac.new(key, data, hashlib.blake2b).digest()
