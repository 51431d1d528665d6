"""Node identities: Ed25519 keys, NodeIds and the XOR metric.

A node's identity is an Ed25519 signing key. Its NodeId is BLAKE2b-256 of the 32-byte
public key, so ids are uniform in the 256-bit keyspace and nobody can pick one without
a key that hashes to it. Distance between ids is their XOR read as a big-endian
integer (Kademlia §2.1).

A proof-of-work condition (the S/Kademlia static puzzle, simplified) makes mass id
generation costly: with difficulty d, BLAKE2b-256 of the NodeId must start with d zero
bits, so an id takes 2**d key generations on average to make and one hash to check.
The difficulty is a network parameter: the handshake refuses a peer whose id misses it
(protocol/handshake.py), and so does a node told of such a contact (dht/dial.py). Here
0, the default, accepts every id; a node's default is in docs/PROTOCOL.md#proof-of-work-on-nodeids.

Sans-I/O: randomness comes in as a parameter and the key file format is given as bytes;
reading and writing the file (with its 0600 mode) is node/'s job.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import total_ordering

import nacl.exceptions
import nacl.signing

from protocol.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "KEY_FILE_MAGIC",
    "NODE_ID_BITS",
    "NODE_ID_SIZE",
    "PUBLIC_KEY_SIZE",
    "SIGNATURE_SIZE",
    "Identity",
    "NodeId",
    "RandomBytes",
    "check_difficulty",
    "meets_difficulty",
    "verify_signature",
]

NODE_ID_SIZE = 32
NODE_ID_BITS = NODE_ID_SIZE * 8
PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
SEED_SIZE = 32
# Key file: this magic line, then the 32-byte Ed25519 seed. Nothing else.
KEY_FILE_MAGIC = b"freehold-ed25519-seed-v1\n"
# Attempts before generate() gives up; at difficulty d the expected count is 2**d.
MAX_GENERATE_ATTEMPTS = 1 << 24

RandomBytes = Callable[[int], bytes]


@total_ordering
@dataclass(frozen=True, slots=True)
class NodeId:
    """A 256-bit node (or key) id. Ordered and hashable; `int` is its big-endian value."""

    value: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.value, bytes) or len(self.value) != NODE_ID_SIZE:
            raise LocalProtocolError(f"a NodeId is {NODE_ID_SIZE} bytes")

    @classmethod
    def from_public_key(cls, public_key: bytes) -> NodeId:
        """The id of the node whose Ed25519 public key this is."""
        if len(public_key) != PUBLIC_KEY_SIZE:
            raise LocalProtocolError(f"an Ed25519 public key is {PUBLIC_KEY_SIZE} bytes")
        return cls(hashlib.blake2b(public_key, digest_size=NODE_ID_SIZE).digest())

    @classmethod
    def from_hex(cls, text: str) -> NodeId:
        """Parse the 64-hex-digit form; raises LocalProtocolError if malformed."""
        try:
            raw = bytes.fromhex(text)
        except ValueError as exc:
            raise LocalProtocolError(f"not a hex NodeId: {text!r}") from exc
        return cls(raw)

    @classmethod
    def from_int(cls, number: int) -> NodeId:
        """The id whose big-endian value is `number` (0 <= number < 2**256)."""
        if not 0 <= number < 1 << NODE_ID_BITS:
            raise LocalProtocolError("NodeId integer out of range")
        return cls(number.to_bytes(NODE_ID_SIZE, "big"))

    def __int__(self) -> int:
        return int.from_bytes(self.value, "big")

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, NodeId):
            return NotImplemented
        return self.value < other.value

    def distance(self, other: NodeId) -> int:
        """XOR distance (Kademlia §2.1): symmetric, zero only to itself."""
        return int(self) ^ int(other)

    def hex(self) -> str:
        return self.value.hex()

    def short(self) -> str:
        """The first 8 hex digits, for logs."""
        return self.value[:4].hex()

    def __str__(self) -> str:
        return self.hex()

    def __repr__(self) -> str:
        return f"NodeId({self.short()}…)"


def check_difficulty(difficulty: int) -> int:
    """`difficulty` if it is a number of bits a puzzle can ask for; else LocalProtocolError."""
    if isinstance(difficulty, bool) or not 0 <= difficulty <= NODE_ID_BITS:
        raise LocalProtocolError(f"difficulty must be 0..{NODE_ID_BITS} bits")
    return difficulty


def meets_difficulty(node_id: NodeId, difficulty: int) -> bool:
    """True if BLAKE2b-256(node_id) starts with `difficulty` zero bits."""
    if check_difficulty(difficulty) == 0:
        return True
    puzzle = hashlib.blake2b(node_id.value, digest_size=NODE_ID_SIZE).digest()
    return int.from_bytes(puzzle, "big") >> (NODE_ID_BITS - difficulty) == 0


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Check an Ed25519 signature. Malformed keys or signatures are simply invalid."""
    if len(public_key) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        return False
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError):
        return False
    return True


class Identity:
    """An Ed25519 signing key with its NodeId. The private half never leaves this object
    except through `to_key_file()`."""

    __slots__ = ("_signing_key", "node_id", "public_key")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != SEED_SIZE:
            raise LocalProtocolError(f"an Ed25519 seed is {SEED_SIZE} bytes")
        self._signing_key = nacl.signing.SigningKey(seed)
        self.public_key: bytes = bytes(self._signing_key.verify_key)
        self.node_id: NodeId = NodeId.from_public_key(self.public_key)

    @classmethod
    def generate(cls, random_bytes: RandomBytes, *, difficulty: int = 0) -> Identity:
        """A new identity whose id meets `difficulty` bits of proof of work."""
        check_difficulty(difficulty)
        for _ in range(MAX_GENERATE_ATTEMPTS):
            identity = cls(random_bytes(SEED_SIZE))
            if meets_difficulty(identity.node_id, difficulty):
                return identity
        raise LocalProtocolError(f"no id met difficulty {difficulty} in time")

    def sign(self, message: bytes) -> bytes:
        """A detached 64-byte Ed25519 signature over `message`."""
        return self._signing_key.sign(message).signature

    def to_key_file(self) -> bytes:
        """The key file's bytes: magic line and seed. Secret: store with mode 0600."""
        return KEY_FILE_MAGIC + bytes(self._signing_key)

    @classmethod
    def from_key_file(cls, data: bytes) -> Identity:
        """Parse a key file; raises RemoteProtocolError if it is not one."""
        if not data.startswith(KEY_FILE_MAGIC) or len(data) != len(KEY_FILE_MAGIC) + SEED_SIZE:
            raise RemoteProtocolError("not a Freehold key file (bad magic or length)")
        return cls(data[len(KEY_FILE_MAGIC) :])

    def __repr__(self) -> str:
        return f"Identity({self.node_id!r})"
