"""The Noise Protocol Framework, revision 34, for the suite 25519 / ChaChaPoly / BLAKE2b.

What it promises: byte-for-byte the state machine of the Noise specification
(https://noiseprotocol.org/noise.html, rev 34), checked against the cacophony test
vectors and against an independent implementation (the `noiseprotocol` package).

- Crypto functions (§4, §12): DH = X25519 (`crypto_scalarmult`), an all-zero DH output
  (a low-order peer key) is rejected; CIPHER = ChaCha20-Poly1305 IETF with the nonce
  4 zero bytes + 8-byte little-endian counter (§12.3); HASH = BLAKE2b-512, HMAC and
  HKDF as in §4.3. All on PyNaCl / hashlib; nothing here does I/O or draws randomness:
  the ephemeral (and static) private keys are parameters.
- `CipherState`, `SymmetricState`, `HandshakeState` follow §5.1, §5.2 and §5.3. The
  handshake patterns are the twelve fundamental interactive ones of §7.5 (NN, NK, NX,
  XN, XK, XX, KN, KK, KX, IN, IK, IX); no PSK modifiers, no one-way patterns.
- `HandshakeState.split()` (§5.2 Split) returns a `TransportState`, already oriented for
  our role, the only object the transport hot path touches: one PyNaCl call per message.
- Limits (§3): every Noise message is at most `MAX_MESSAGE_SIZE` = 65535 bytes, so a
  transport plaintext is at most `MAX_PLAINTEXT_SIZE` = 65519 bytes. The nonce 2**64-1
  is reserved (§5.1): a state whose counter reaches it refuses to encrypt or decrypt.

Errors (protocol/errors.py): the peer's bytes failing a check (bad length, failed MAC,
low-order key) raise `RemoteProtocolError`; our own misuse (a call out of turn, an
oversized payload, an exhausted nonce) raises `LocalProtocolError`. Noise cannot
recover from a failed handshake message or a failed transport decryption (§5.1: the
counters would desynchronise), so either leaves the object dead: every later call
raises `LocalProtocolError`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import nacl.bindings
import nacl.exceptions

from protocol.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "DH_SIZE",
    "HASH_SIZE",
    "KEY_SIZE",
    "MAX_MESSAGE_SIZE",
    "MAX_NONCE",
    "MAX_PLAINTEXT_SIZE",
    "PATTERNS",
    "SUITE_NAME",
    "TAG_SIZE",
    "BytesLike",
    "CipherState",
    "HandshakePattern",
    "HandshakeState",
    "SymmetricState",
    "TransportState",
    "x25519_public_key",
]

BytesLike = bytes | bytearray | memoryview

SUITE_NAME = "25519_ChaChaPoly_BLAKE2b"
DH_SIZE = 32  # DHLEN, §12.1
HASH_SIZE = 64  # HASHLEN of BLAKE2b, §12.8
KEY_SIZE = 32  # cipher key length, §4.2
TAG_SIZE = 16  # Poly1305 authentication tag, §4.2
MAX_MESSAGE_SIZE = 65535  # §3
MAX_PLAINTEXT_SIZE = MAX_MESSAGE_SIZE - TAG_SIZE
MAX_NONCE = 2**64 - 1  # §5.1: reserved, never used to encrypt a message

_ZERO_DH = bytes(DH_SIZE)
_ZERO_KEY = bytes(KEY_SIZE)
_DEAD_TRANSPORT = "connection is dead: a transport message failed to decrypt earlier"
_DEAD_HANDSHAKE = "handshake is dead: a message failed earlier; start a new connection"

# Bound once: the hot path looks each up as a module global, not as an attribute chain.
_aead_encrypt = nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt
_aead_decrypt = nacl.bindings.crypto_aead_chacha20poly1305_ietf_decrypt


class _DirectAead:
    """ChaCha20-Poly1305 IETF through PyNaCl's own cffi binding of libsodium.

    The transport phase runs every byte through these two calls. PyNaCl's public
    wrappers check their arguments with a dozen Python calls and copy the input to
    bytes first, which costs four times the cipher on a small RPC; calling the same
    libsodium functions through PyNaCl's compiled module (nacl._sodium) takes
    memoryviews as they are. If that module ever changes shape, `load()` returns None
    and TransportState uses the public wrappers; tests check both give the same bytes.
    """

    __slots__ = ("_decrypt", "_encrypt", "_ffi", "_null")

    def __init__(self, ffi: Any, lib: Any) -> None:
        self._ffi = ffi
        self._null = ffi.NULL
        self._encrypt = lib.crypto_aead_chacha20poly1305_ietf_encrypt
        self._decrypt = lib.crypto_aead_chacha20poly1305_ietf_decrypt

    @classmethod
    def load(cls) -> _DirectAead | None:
        try:
            from nacl._sodium import ffi, lib  # type: ignore[import-not-found,unused-ignore]

            return cls(ffi, lib)
        except (ImportError, AttributeError):
            return None

    def encrypt(self, plaintext: BytesLike, nonce: bytes, key: bytes) -> bytearray:
        out = bytearray(len(plaintext) + TAG_SIZE)
        from_buffer = self._ffi.from_buffer
        self._encrypt(
            from_buffer(out),
            self._null,
            from_buffer(plaintext),
            len(plaintext),
            self._null,
            0,
            self._null,
            nonce,
            key,
        )
        return out  # not bytes(out): that would copy every byte sent once more

    def decrypt_into(self, ciphertext: BytesLike, nonce: bytes, key: bytes, out: bytearray) -> bool:
        """Append the plaintext to `out`; False (and `out` as it was) if the message
        fails authentication."""
        start = len(out)
        size = len(ciphertext) - TAG_SIZE
        out += _ZEROS[:size]  # room to decrypt into, without a fresh zero buffer each time
        with memoryview(out) as view:
            status = self._decrypt(
                self._ffi.from_buffer(view[start:]),
                self._null,
                self._null,
                self._ffi.from_buffer(ciphertext),
                len(ciphertext),
                self._null,
                0,
                nonce,
                key,
            )
        if status != 0:
            del out[start:]
            return False
        return True

    def decrypt(self, ciphertext: BytesLike, nonce: bytes, key: bytes) -> bytes | None:
        """The plaintext, or None if the message fails authentication."""
        out = bytearray(len(ciphertext) - TAG_SIZE)
        from_buffer = self._ffi.from_buffer
        status = self._decrypt(
            from_buffer(out),
            self._null,
            self._null,
            from_buffer(ciphertext),
            len(ciphertext),
            self._null,
            0,
            nonce,
            key,
        )
        return bytes(out) if status == 0 else None


_DIRECT_AEAD = _DirectAead.load()
_ZEROS = memoryview(bytes(MAX_MESSAGE_SIZE))


# --- Crypto functions (§4, §12) ---------------------------------------------------------


def x25519_public_key(private_key: bytes) -> bytes:
    """The X25519 public key of a 32-byte private key (clamped as in RFC 7748)."""
    _check_key_size(private_key, "an X25519 private key")
    return nacl.bindings.crypto_scalarmult_base(private_key)


def _dh(private_key: bytes, public_key: bytes) -> bytes:
    """DH (§4.1, §12.1); an all-zero result means a low-order peer key: refused."""
    try:
        shared = nacl.bindings.crypto_scalarmult(private_key, public_key)
    except nacl.exceptions.RuntimeError:
        # libsodium itself refuses small-order points and all-zero outputs.
        raise RemoteProtocolError("peer sent a low-order X25519 public key") from None
    if shared == _ZERO_DH:
        raise RemoteProtocolError("peer sent a low-order X25519 public key")
    return shared


def _hash(data: bytes) -> bytes:
    return hashlib.blake2b(data).digest()


_BLOCK_LENGTH = 128  # BLAKE2b's block length (§12.8)
_INNER_PAD = bytes(byte ^ 0x36 for byte in range(256))
_OUTER_PAD = bytes(byte ^ 0x5C for byte in range(256))


def _hmac_hash(key: bytes, data: bytes) -> bytes:
    """HMAC-HASH (§4.3, RFC 2104) with BLAKE2b, block length 128.

    Written out rather than `hmac.new(key, data, hashlib.blake2b)`: the stdlib takes its
    pure-Python path for BLAKE2b (OpenSSL does not serve it there), three times slower,
    and a handshake makes twelve of these per side. A test checks both give the same.
    """
    if len(key) > _BLOCK_LENGTH:
        key = hashlib.blake2b(key).digest()
    key = key.ljust(_BLOCK_LENGTH, b"\0")
    inner = hashlib.blake2b(key.translate(_INNER_PAD))
    inner.update(data)
    return hashlib.blake2b(key.translate(_OUTER_PAD) + inner.digest()).digest()


def _hkdf2(chaining_key: bytes, input_key_material: bytes) -> tuple[bytes, bytes]:
    """HKDF (§4.3) with num_outputs = 2, the only count used without PSKs."""
    temp_key = _hmac_hash(chaining_key, input_key_material)
    output1 = _hmac_hash(temp_key, b"\x01")
    output2 = _hmac_hash(temp_key, output1 + b"\x02")
    return output1, output2


def _nonce(counter: int) -> bytes:
    """§12.3: 32 bits of zeros, then the counter as 64 bits little-endian."""
    return (counter << 32).to_bytes(12, "little")


def _check_key_size(key: bytes, what: str) -> None:
    if not isinstance(key, bytes) or len(key) != KEY_SIZE:
        raise LocalProtocolError(f"{what} must be {KEY_SIZE} bytes")


# --- CipherState (§5.1) -----------------------------------------------------------------


class CipherState:
    """A key k (or none) and a nonce counter n (§5.1).

    `nonce` lets a test start the counter anywhere, e.g. near the reserved 2**64-1.
    """

    __slots__ = ("_key", "_nonce")

    def __init__(self, key: bytes | None = None, *, nonce: int = 0) -> None:
        if key is not None:
            _check_key_size(key, "a cipher key")
        if not 0 <= nonce <= MAX_NONCE:
            raise LocalProtocolError("a nonce is between 0 and 2**64-1")
        self._key = key
        self._nonce = nonce

    @property
    def has_key(self) -> bool:
        return self._key is not None

    @property
    def nonce(self) -> int:
        """The counter n that the next message will use."""
        return self._nonce

    def _next_nonce(self) -> int:
        counter = self._nonce
        if counter >= MAX_NONCE:
            raise LocalProtocolError("nonce exhausted (2**64-1 is reserved); rekey or reconnect")
        return counter

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        """ENCRYPT(k, n++, ad, plaintext), or the plaintext itself while there is no key."""
        if self._key is None:
            return plaintext
        counter = self._next_nonce()
        ciphertext = _aead_encrypt(plaintext, ad, _nonce(counter), self._key)
        self._nonce = counter + 1
        return ciphertext

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        """DECRYPT(k, n++, ad, ciphertext); on failure n is unchanged (§5.1)."""
        if self._key is None:
            return ciphertext
        counter = self._next_nonce()
        if len(ciphertext) < TAG_SIZE:
            raise RemoteProtocolError("ciphertext shorter than its authentication tag")
        try:
            plaintext = _aead_decrypt(ciphertext, ad, _nonce(counter), self._key)
        except nacl.exceptions.CryptoError:
            raise RemoteProtocolError("message failed authentication") from None
        self._nonce = counter + 1
        return plaintext

    def rekey(self) -> None:
        """k = REKEY(k): the first 32 bytes of ENCRYPT(k, 2**64-1, "", zeros) (§4.2)."""
        if self._key is None:
            raise LocalProtocolError("cannot rekey a CipherState without a key")
        self._key = _rekey(self._key)


def _rekey(key: bytes) -> bytes:
    return _aead_encrypt(_ZERO_KEY, b"", _nonce(MAX_NONCE), key)[:KEY_SIZE]


# --- SymmetricState (§5.2) --------------------------------------------------------------


class SymmetricState:
    """The chaining key ck, the handshake hash h and a CipherState (§5.2)."""

    __slots__ = ("_chaining_key", "_cipher", "_hash")

    def __init__(self, protocol_name: bytes) -> None:
        """InitializeSymmetric(protocol_name)."""
        if len(protocol_name) <= HASH_SIZE:
            self._hash = protocol_name.ljust(HASH_SIZE, b"\x00")
        else:
            self._hash = _hash(protocol_name)
        self._chaining_key = self._hash
        self._cipher = CipherState()

    @property
    def has_key(self) -> bool:
        return self._cipher.has_key

    @property
    def handshake_hash(self) -> bytes:
        """GetHandshakeHash(): h."""
        return self._hash

    def mix_key(self, input_key_material: bytes) -> None:
        self._chaining_key, temp_key = _hkdf2(self._chaining_key, input_key_material)
        self._cipher = CipherState(temp_key[:KEY_SIZE])  # HASHLEN 64: truncate to 32

    def mix_hash(self, data: bytes) -> None:
        self._hash = _hash(self._hash + data)

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self._cipher.encrypt_with_ad(self._hash, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self._cipher.decrypt_with_ad(self._hash, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split_keys(self) -> tuple[bytes, bytes]:
        """The two transport keys of Split(): initiator-to-responder first."""
        temp_key1, temp_key2 = _hkdf2(self._chaining_key, b"")
        return temp_key1[:KEY_SIZE], temp_key2[:KEY_SIZE]

    def split(self) -> tuple[CipherState, CipherState]:
        """Split(): two CipherStates, initiator-to-responder first."""
        key1, key2 = self.split_keys()
        return CipherState(key1), CipherState(key2)


# --- Handshake patterns (§7) ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HandshakePattern:
    """Pre-message tokens of each side and the message tokens; messages alternate,
    the initiator's first (§7.1)."""

    name: str
    initiator_pre_message: tuple[str, ...]
    responder_pre_message: tuple[str, ...]
    messages: tuple[tuple[str, ...], ...]


def _pattern(name: str, initiator_pre: str, responder_pre: str, *messages: str) -> HandshakePattern:
    return HandshakePattern(
        name,
        tuple(initiator_pre.split()),
        tuple(responder_pre.split()),
        tuple(tuple(message.split()) for message in messages),
    )


# §7.5, transcribed one line each: name, "-> pre", "<- pre", then "->", "<-", "->" ...
PATTERNS: dict[str, HandshakePattern] = {
    pattern.name: pattern
    for pattern in (
        _pattern("NN", "", "", "e", "e ee"),
        _pattern("NK", "", "s", "e es", "e ee"),
        _pattern("NX", "", "", "e", "e ee s es"),
        _pattern("XN", "", "", "e", "e ee", "s se"),
        _pattern("XK", "", "s", "e es", "e ee", "s se"),
        _pattern("XX", "", "", "e", "e ee s es", "s se"),
        _pattern("KN", "s", "", "e", "e ee se"),
        _pattern("KK", "s", "s", "e es ss", "e ee se"),
        _pattern("KX", "s", "", "e", "e ee se s es"),
        _pattern("IN", "", "", "e s", "e ee se"),
        _pattern("IK", "", "s", "e es s ss", "e ee se"),
        _pattern("IX", "", "", "e s", "e ee se s es"),
    )
}


# --- HandshakeState (§5.3) --------------------------------------------------------------


class HandshakeState:
    """One side of a Noise handshake (§5.3): write_message / read_message, alternating
    from the initiator's first message, until `is_complete`; then `split()` once.

    Turn rule: message i (from 0) is written by the initiator when i is even and by the
    responder when it is odd; the other side reads it. Calling the wrong one, or either
    after completion, raises LocalProtocolError.
    """

    __slots__ = (
        "_ephemeral_private",
        "_ephemeral_public",
        "_failed",
        "_initiator",
        "_message_index",
        "_pattern",
        "_remote_ephemeral",
        "_remote_static",
        "_split_done",
        "_static_private",
        "_static_public",
        "_symmetric",
        "protocol_name",
    )

    def __init__(
        self,
        pattern: str,
        *,
        initiator: bool,
        prologue: bytes,
        static_private: bytes | None,
        ephemeral_private: bytes,
        remote_static: bytes | None = None,
    ) -> None:
        """Initialize() of §5.3. `ephemeral_private` is the caller's fresh randomness
        (32 bytes); `remote_static` is the peer's static key where the pattern has it
        as a pre-message (the K of NK, the K of KN for the responder, ...)."""
        if pattern not in PATTERNS:
            raise LocalProtocolError(f"unsupported handshake pattern {pattern!r}")
        self._pattern = PATTERNS[pattern]
        self._initiator = initiator
        self.protocol_name = f"Noise_{pattern}_{SUITE_NAME}"

        own_pre, remote_pre = self._pre_messages()
        own_tokens = [
            token
            for index, message in enumerate(self._pattern.messages)
            if self._writes(index)
            for token in message
        ]
        needs_static = "s" in own_pre or "s" in own_tokens
        if needs_static != (static_private is not None):
            raise LocalProtocolError(
                f"pattern {pattern} {'needs' if needs_static else 'takes no'} local static key"
            )
        needs_remote_static = "s" in remote_pre
        if needs_remote_static != (remote_static is not None):
            raise LocalProtocolError(
                f"pattern {pattern} {'needs' if needs_remote_static else 'takes no'} "
                "remote static key in advance"
            )

        self._static_private = static_private
        self._static_public = None if static_private is None else x25519_public_key(static_private)
        self._ephemeral_private = ephemeral_private
        self._ephemeral_public = x25519_public_key(ephemeral_private)
        if remote_static is not None:
            _check_key_size(remote_static, "a remote static key")
        self._remote_static = remote_static
        self._remote_ephemeral: bytes | None = None
        self._message_index = 0
        self._failed = False
        self._split_done = False

        self._symmetric = SymmetricState(self.protocol_name.encode("ascii"))
        self._symmetric.mix_hash(bytes(prologue))
        # Pre-message public keys are hashed initiator's first, then responder's (§5.3).
        initiator_static = self._static_public if initiator else self._remote_static
        responder_static = self._remote_static if initiator else self._static_public
        for token in self._pattern.initiator_pre_message:
            assert token == "s" and initiator_static is not None
            self._symmetric.mix_hash(initiator_static)
        for token in self._pattern.responder_pre_message:
            assert token == "s" and responder_static is not None
            self._symmetric.mix_hash(responder_static)

    # -- queries --

    @property
    def is_initiator(self) -> bool:
        return self._initiator

    @property
    def is_complete(self) -> bool:
        """True once every handshake message has been written or read."""
        return self._message_index == len(self._pattern.messages)

    @property
    def handshake_hash(self) -> bytes:
        """h at the end of the handshake (§11.2, channel binding); 64 bytes."""
        if not self.is_complete:
            raise LocalProtocolError("the handshake hash is final only once complete")
        return self._symmetric.handshake_hash

    @property
    def local_static_public(self) -> bytes | None:
        return self._static_public

    @property
    def remote_static_public(self) -> bytes | None:
        """The peer's static X25519 key, once known (pre-message or received)."""
        return self._remote_static

    # -- the state machine --

    def write_message(self, payload: BytesLike = b"") -> bytes:
        """WriteMessage(payload): the next handshake message, which is ours to send."""
        self._require_turn(writing=True)
        payload = bytes(payload)
        tokens = self._pattern.messages[self._message_index]
        size = self._message_size(tokens, len(payload))
        if size > MAX_MESSAGE_SIZE:
            raise LocalProtocolError(f"handshake message would be {size} > 65535 bytes")
        try:
            parts: list[bytes] = []
            for token in tokens:
                if token == "e":
                    parts.append(self._ephemeral_public)
                    self._symmetric.mix_hash(self._ephemeral_public)
                elif token == "s":
                    assert self._static_public is not None
                    parts.append(self._symmetric.encrypt_and_hash(self._static_public))
                else:
                    self._symmetric.mix_key(self._dh_token(token))
            parts.append(self._symmetric.encrypt_and_hash(payload))
        except BaseException:
            self._failed = True  # h and ck have moved on: this state cannot continue
            raise
        self._message_index += 1
        return b"".join(parts)

    def read_message(self, message: BytesLike) -> bytes:
        """ReadMessage(message): process the peer's next handshake message and return
        its payload. Any malformed or forged message raises RemoteProtocolError."""
        self._require_turn(writing=False)
        message = bytes(message)
        try:
            if len(message) > MAX_MESSAGE_SIZE:
                raise RemoteProtocolError("handshake message longer than 65535 bytes")
            offset = 0
            for token in self._pattern.messages[self._message_index]:
                if token == "e":
                    remote_ephemeral = self._take(message, offset, DH_SIZE)
                    offset += DH_SIZE
                    self._remote_ephemeral = remote_ephemeral
                    self._symmetric.mix_hash(remote_ephemeral)
                elif token == "s":
                    size = DH_SIZE + (TAG_SIZE if self._symmetric.has_key else 0)
                    encrypted_static = self._take(message, offset, size)
                    offset += size
                    self._remote_static = self._symmetric.decrypt_and_hash(encrypted_static)
                else:
                    self._symmetric.mix_key(self._dh_token(token))
            payload = self._symmetric.decrypt_and_hash(message[offset:])
        except BaseException:
            self._failed = True
            raise
        self._message_index += 1
        return payload

    def split(self) -> TransportState:
        """Split() (§5.2), oriented for our role. Allowed once: two TransportStates with
        the same keys would reuse nonces."""
        if self._failed:
            raise LocalProtocolError(_DEAD_HANDSHAKE)
        if not self.is_complete:
            raise LocalProtocolError("split() before the handshake is complete")
        if self._split_done:
            raise LocalProtocolError("split() was already called")
        self._split_done = True
        initiator_to_responder, responder_to_initiator = self._symmetric.split_keys()
        if self._initiator:
            return TransportState(initiator_to_responder, responder_to_initiator)
        return TransportState(responder_to_initiator, initiator_to_responder)

    # -- helpers --

    def _writes(self, index: int) -> bool:
        return (index % 2 == 0) == self._initiator

    def _pre_messages(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(our pre-message tokens, the peer's)."""
        pattern = self._pattern
        if self._initiator:
            return pattern.initiator_pre_message, pattern.responder_pre_message
        return pattern.responder_pre_message, pattern.initiator_pre_message

    def _require_turn(self, *, writing: bool) -> None:
        if self._failed:
            raise LocalProtocolError(_DEAD_HANDSHAKE)
        if self.is_complete:
            raise LocalProtocolError("the handshake is complete; use split()")
        if self._writes(self._message_index) != writing:
            wanted = "write_message" if not writing else "read_message"
            raise LocalProtocolError(f"out of turn: call {wanted}() now")

    def _message_size(self, tokens: tuple[str, ...], payload_size: int) -> int:
        has_key = self._symmetric.has_key
        size = 0
        for token in tokens:
            if token == "e":
                size += DH_SIZE
            elif token == "s":
                size += DH_SIZE + (TAG_SIZE if has_key else 0)
            else:
                has_key = True
        return size + payload_size + (TAG_SIZE if has_key else 0)

    @staticmethod
    def _take(message: bytes, offset: int, size: int) -> bytes:
        chunk = message[offset : offset + size]
        if len(chunk) != size:
            raise RemoteProtocolError("handshake message too short")
        return chunk

    def _dh_token(self, token: str) -> bytes:
        """The DH of ee / es / se / ss (§5.3): first letter initiator's key, second
        responder's; each side uses its private half and the peer's public one."""
        initiator_letter, responder_letter = token[0], token[1]
        own_letter, remote_letter = (
            (initiator_letter, responder_letter)
            if self._initiator
            else (responder_letter, initiator_letter)
        )
        own_private = self._ephemeral_private if own_letter == "e" else self._static_private
        remote_public = self._remote_ephemeral if remote_letter == "e" else self._remote_static
        assert own_private is not None and remote_public is not None  # guaranteed by PATTERNS
        return _dh(own_private, remote_public)


# --- TransportState: the two CipherStates of Split(), hot path --------------------------


class TransportState:
    """The transport phase (§5, after Split) for one side: a sending and a receiving
    key, each with its own counter. Every message carries its own tag; there is no
    associated data (§5: EncryptWithAd with a zero-length ad).

    Kept minimal because the transport runs every byte through it: one PyNaCl call,
    the key bound once, the counter a plain int. A failed decryption kills the state
    in both directions. `send_nonce` / `receive_nonce` let a test start the counters
    anywhere.
    """

    __slots__ = (
        "_dead",
        "_direct",
        "_receive_key",
        "_receive_nonce",
        "_send_key",
        "_send_nonce",
    )

    def __init__(
        self,
        send_key: bytes,
        receive_key: bytes,
        *,
        send_nonce: int = 0,
        receive_nonce: int = 0,
        direct: bool = True,
    ) -> None:
        _check_key_size(send_key, "a send key")
        _check_key_size(receive_key, "a receive key")
        if not (0 <= send_nonce <= MAX_NONCE and 0 <= receive_nonce <= MAX_NONCE):
            raise LocalProtocolError("a nonce is between 0 and 2**64-1")
        self._send_key = send_key
        self._receive_key = receive_key
        self._send_nonce = send_nonce
        self._receive_nonce = receive_nonce
        self._dead = False
        # `direct=False` forces PyNaCl's public wrappers (the tests compare the two).
        self._direct = _DIRECT_AEAD if direct else None

    def encrypt(self, plaintext: BytesLike) -> bytes | bytearray:
        """One Noise transport message (at most 65535 bytes) carrying `plaintext`."""
        if self._dead:
            raise LocalProtocolError(_DEAD_TRANSPORT)
        if len(plaintext) > MAX_PLAINTEXT_SIZE:
            raise LocalProtocolError(
                f"plaintext of {len(plaintext)} bytes exceeds {MAX_PLAINTEXT_SIZE}"
            )
        counter = self._send_nonce
        if counter >= MAX_NONCE:
            raise LocalProtocolError("send nonce exhausted (2**64-1 is reserved); reconnect")
        self._send_nonce = counter + 1
        nonce = (counter << 32).to_bytes(12, "little")
        if self._direct is not None:
            return self._direct.encrypt(plaintext, nonce, self._send_key)
        if not isinstance(plaintext, bytes):
            plaintext = bytes(plaintext)
        return _aead_encrypt(plaintext, b"", nonce, self._send_key)

    def decrypt(self, ciphertext: BytesLike) -> bytes:
        """The plaintext of the peer's next transport message. A message that is too
        long, too short or fails authentication raises RemoteProtocolError and kills
        this state."""
        nonce = self._receive_nonce_for(ciphertext)
        plaintext: bytes | None
        if self._direct is not None:
            plaintext = self._direct.decrypt(ciphertext, nonce, self._receive_key)
        else:
            try:
                plaintext = _aead_decrypt(bytes(ciphertext), b"", nonce, self._receive_key)
            except nacl.exceptions.CryptoError:
                plaintext = None
        if plaintext is None:
            self._dead = True
            raise RemoteProtocolError("transport message failed authentication; connection is dead")
        self._receive_nonce += 1
        return plaintext

    def decrypt_into(self, ciphertext: BytesLike, out: bytearray) -> None:
        """`decrypt`, appending the plaintext to `out` instead of returning it (no copy
        of its own); on any error `out` is left as it was."""
        if self._direct is None:
            plaintext = self.decrypt(ciphertext)
            try:
                out += plaintext
            except BufferError:  # `out` is exported: the message was not taken after all
                self._receive_nonce -= 1
                raise
            return
        nonce = self._receive_nonce_for(ciphertext)
        if not self._direct.decrypt_into(ciphertext, nonce, self._receive_key, out):
            self._dead = True
            raise RemoteProtocolError("transport message failed authentication; connection is dead")
        self._receive_nonce += 1

    def _receive_nonce_for(self, ciphertext: BytesLike) -> bytes:
        """The nonce of the peer's next message, once the state and the message's size
        are checked (a bad size kills the state)."""
        if self._dead:
            raise LocalProtocolError(_DEAD_TRANSPORT)
        counter = self._receive_nonce
        if counter >= MAX_NONCE:
            raise LocalProtocolError("receive nonce exhausted (2**64-1 is reserved); reconnect")
        if not TAG_SIZE <= len(ciphertext) <= MAX_MESSAGE_SIZE:
            self._dead = True
            raise RemoteProtocolError(
                f"transport message of {len(ciphertext)} bytes is not {TAG_SIZE}..65535"
            )
        return (counter << 32).to_bytes(12, "little")
