"""The Freehold secure-channel handshake: Noise XX with the node's Ed25519 identity bound in.

Specified in docs/PROTOCOL.md#secure-channel; the construction is libp2p-noise's. Both
sides run Noise_XX_25519_ChaChaPoly_BLAKE2b (protocol/noise.py, Noise rev 34 §7.5) with
the prologue `PROLOGUE`. Each side's identity travels encrypted in its handshake payload:

    payload = version (1 byte, = 1) | Ed25519 public key (32) | signature (64)
    signature = Ed25519(identity key, b"freehold-noise-static-key:" + Noise static public key)

so the peer learns a NodeId and a proof that whoever holds that identity chose this
Noise static key; Noise in turn proves that the other end holds the static key's
private half (the es / se DHs). The Noise static key is fresh for every connection.

Sans-I/O, in h11's style: `start()` gives the initiator's first message, `receive()`
takes the peer's message and gives back the next one to send (or None). The driver
frames each message with a 2-byte big-endian length. Transitions, by role:

    role       call            reads                            writes                 state
    initiator  start()         -                                msg 1: e               wait
    responder  receive(msg 1)  e; payload must be empty         msg 2: e ee s es + id  wait
    initiator  receive(msg 2)  e ee s es + id; checks the id    msg 3: s se + id       complete
    responder  receive(msg 3)  s se + id; checks the id         None                   complete

("id" is the identity payload above, encrypted by Noise.)

The initiator checks the responder's identity (and `expected_node_id`) before it sends
its own, so a dialer reaching the wrong node never reveals who it is. Both sides check
that the peer's NodeId meets the network's proof of work (`difficulty` bits,
protocol/identity.py's `meets_difficulty`): an id that costs nothing to make gets no
connection. Any error from the peer's bytes raises RemoteProtocolError
(WrongPeerIdentity for the wrong node, WeakPeerIdentity for an id without the work) and
leaves the handshake dead: every later call raises LocalProtocolError.
"""

from __future__ import annotations

from protocol.errors import LocalProtocolError, RemoteProtocolError
from protocol.identity import (
    PUBLIC_KEY_SIZE,
    SIGNATURE_SIZE,
    Identity,
    NodeId,
    RandomBytes,
    check_difficulty,
    meets_difficulty,
    verify_signature,
)
from protocol.noise import DH_SIZE, BytesLike, HandshakeState, TransportState

__all__ = [
    "NOISE_PROTOCOL_NAME",
    "PAYLOAD_SIZE",
    "PAYLOAD_VERSION",
    "PROLOGUE",
    "SIGNATURE_DOMAIN",
    "SecureHandshake",
    "WeakPeerIdentity",
    "WrongPeerIdentity",
    "decode_identity_payload",
    "encode_identity_payload",
]

PROLOGUE = b"freehold/1"
NOISE_PATTERN = "XX"
NOISE_PROTOCOL_NAME = "Noise_XX_25519_ChaChaPoly_BLAKE2b"
PAYLOAD_VERSION = 1
PAYLOAD_SIZE = 1 + PUBLIC_KEY_SIZE + SIGNATURE_SIZE  # 97
SIGNATURE_DOMAIN = b"freehold-noise-static-key:"


class WrongPeerIdentity(RemoteProtocolError):
    """The peer proved an identity, but not the one we dialed."""

    def __init__(self, expected: NodeId, actual: NodeId) -> None:
        super().__init__(f"expected peer {expected.short()}…, reached {actual.short()}…")
        self.expected = expected
        self.actual = actual


class WeakPeerIdentity(RemoteProtocolError):
    """The peer proved an identity whose NodeId lacks the network's proof of work."""

    def __init__(self, actual: NodeId, difficulty: int) -> None:
        super().__init__(
            f"peer {actual.short()}… has no proof of work: its id does not meet "
            f"the network's difficulty of {difficulty} bits"
        )
        self.difficulty = difficulty
        self.actual = actual


def encode_identity_payload(identity: Identity, noise_static_public: bytes) -> bytes:
    """The 97-byte handshake payload binding `identity` to a Noise static key."""
    signature = identity.sign(SIGNATURE_DOMAIN + noise_static_public)
    return bytes([PAYLOAD_VERSION]) + identity.public_key + signature


def decode_identity_payload(payload: bytes, noise_static_public: bytes) -> bytes:
    """The peer's Ed25519 public key, once its payload is checked against the Noise
    static key the peer used in this handshake; RemoteProtocolError otherwise."""
    if len(payload) != PAYLOAD_SIZE:
        raise RemoteProtocolError(
            f"identity payload is {len(payload)} bytes, expected {PAYLOAD_SIZE}"
        )
    if payload[0] != PAYLOAD_VERSION:
        raise RemoteProtocolError(f"unknown identity payload version {payload[0]}")
    public_key = payload[1 : 1 + PUBLIC_KEY_SIZE]
    signature = payload[1 + PUBLIC_KEY_SIZE :]
    if not verify_signature(public_key, SIGNATURE_DOMAIN + noise_static_public, signature):
        raise RemoteProtocolError("identity signature does not cover the Noise static key")
    return public_key


class SecureHandshake:
    """One side of the secure-channel handshake (see the module docstring's table).

    `noise_static_private` and `ephemeral_private` are 32 fresh random bytes each, drawn
    by the caller for this connection. `expected_node_id`, if given (a dialer usually
    knows whom it dials), must be the peer's NodeId or the handshake fails with
    WrongPeerIdentity; `difficulty` is the network's proof of work on NodeIds, which
    the peer's id must meet or the handshake fails with WeakPeerIdentity.
    """

    __slots__ = (
        "_difficulty",
        "_expected_node_id",
        "_failed",
        "_messages_read",
        "_noise",
        "_our_payload",
        "_remote_public_key",
        "_started",
    )

    def __init__(
        self,
        identity: Identity,
        *,
        initiator: bool,
        noise_static_private: bytes,
        ephemeral_private: bytes,
        expected_node_id: NodeId | None = None,
        difficulty: int = 0,
        prologue: bytes = PROLOGUE,
    ) -> None:
        self._noise = HandshakeState(
            NOISE_PATTERN,
            initiator=initiator,
            prologue=prologue,
            static_private=noise_static_private,
            ephemeral_private=ephemeral_private,
        )
        static_public = self._noise.local_static_public
        assert static_public is not None  # XX always has a local static key
        self._our_payload = encode_identity_payload(identity, static_public)
        self._expected_node_id = expected_node_id
        self._difficulty = check_difficulty(difficulty)
        self._remote_public_key: bytes | None = None
        self._messages_read = 0
        self._started = False
        self._failed = False

    @classmethod
    def fresh(
        cls,
        identity: Identity,
        random_bytes: RandomBytes,
        *,
        initiator: bool,
        expected_node_id: NodeId | None = None,
        difficulty: int = 0,
    ) -> SecureHandshake:
        """A handshake with a fresh Noise static key and ephemeral key from
        `random_bytes`: the Ed25519 signature in the payload binds the static key to
        our identity, so nothing long-lived is kept besides the identity."""
        return cls(
            identity,
            initiator=initiator,
            noise_static_private=random_bytes(DH_SIZE),
            ephemeral_private=random_bytes(DH_SIZE),
            expected_node_id=expected_node_id,
            difficulty=difficulty,
        )

    # -- queries --

    @property
    def is_initiator(self) -> bool:
        return self._noise.is_initiator

    @property
    def is_complete(self) -> bool:
        return self._noise.is_complete and not self._failed

    @property
    def remote_public_key(self) -> bytes:
        """The peer's Ed25519 public key, known once its payload has been checked."""
        if self._remote_public_key is None:
            raise LocalProtocolError("the peer's identity is not known yet")
        return self._remote_public_key

    @property
    def remote_node_id(self) -> NodeId:
        return NodeId.from_public_key(self.remote_public_key)

    @property
    def handshake_hash(self) -> bytes:
        """Noise's h at the end of the handshake: the same 64 bytes on both sides."""
        self._require_alive()
        return self._noise.handshake_hash

    # -- the state machine --

    def start(self) -> bytes:
        """The initiator's first message (Noise XX message 1, empty payload)."""
        self._require_alive()
        if not self.is_initiator:
            raise LocalProtocolError("only the initiator calls start()")
        if self._started:
            raise LocalProtocolError("start() was already called")
        self._started = True
        return self._noise.write_message(b"")

    def receive(self, message: BytesLike) -> bytes | None:
        """Process the peer's handshake message; return our next message, or None when
        there is nothing more to send."""
        self._require_alive()
        if self.is_initiator and not self._started:
            raise LocalProtocolError("call start() before receive()")
        try:
            payload = self._noise.read_message(message)
            self._messages_read += 1
            if self.is_initiator or self._messages_read == 2:
                self._check_identity(payload)
            elif payload:
                raise RemoteProtocolError("handshake message 1 must have an empty payload")
            if self._noise.is_complete:
                return None
            return self._noise.write_message(self._our_payload)
        except RemoteProtocolError:
            self._failed = True
            raise

    def transport(self) -> TransportState:
        """The transport state for this connection; once, after completion."""
        self._require_alive()
        if not self._noise.is_complete:
            raise LocalProtocolError("the handshake is not complete")
        return self._noise.split()

    # -- helpers --

    def _require_alive(self) -> None:
        if self._failed:
            raise LocalProtocolError("handshake failed earlier; close the connection")

    def _check_identity(self, payload: bytes) -> None:
        remote_static = self._noise.remote_static_public
        assert remote_static is not None  # read in the same XX message as the payload
        public_key = decode_identity_payload(payload, remote_static)
        actual = NodeId.from_public_key(public_key)
        if self._expected_node_id is not None and actual != self._expected_node_id:
            raise WrongPeerIdentity(self._expected_node_id, actual)
        if not meets_difficulty(actual, self._difficulty):
            raise WeakPeerIdentity(actual, self._difficulty)
        self._remote_public_key = public_key
