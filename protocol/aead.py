"""XChaCha20-Poly1305 (IETF), the AEAD of stored files, through libsodium.

What it promises: `encrypt_into` and `decrypt_into` are libsodium's
crypto_aead_xchacha20poly1305_ietf_encrypt and _decrypt (24-byte nonce, 32-byte key,
16-byte tag appended to the ciphertext), and nothing more: the nonces and associated
data of the file format are built in protocol/manifest.py.

Both write into a buffer the caller owns, so a segment is encrypted straight into the
buffer that is cut into erasure-coding blocks. They call libsodium through PyNaCl's
compiled module (nacl._sodium), as protocol/noise.py does: PyNaCl's public wrappers
insist on `bytes`, and allocate and copy the output, which doubles the cost of a
4 MiB segment. If that module ever changes shape, the public wrappers are used instead
(same bytes, slower); tests check that both give the same output. libsodium runs
without the GIL (cffi releases it), so these are safe and useful in worker threads.
"""

from __future__ import annotations

from typing import Any, Final

import nacl.bindings
import nacl.exceptions

from protocol.errors import LocalProtocolError

__all__ = [
    "KEY_SIZE",
    "NONCE_SIZE",
    "TAG_SIZE",
    "BytesLike",
    "decrypt_into",
    "encrypt_into",
]

BytesLike = bytes | bytearray | memoryview

KEY_SIZE: Final = 32
NONCE_SIZE: Final = 24
TAG_SIZE: Final = 16


class _Direct:
    """The two libsodium calls, taking any contiguous buffer as it is."""

    __slots__ = ("_decrypt", "_encrypt", "_from_buffer", "_null")

    def __init__(self, ffi: Any, lib: Any) -> None:
        self._from_buffer = ffi.from_buffer
        self._null = ffi.NULL
        self._encrypt = lib.crypto_aead_xchacha20poly1305_ietf_encrypt
        self._decrypt = lib.crypto_aead_xchacha20poly1305_ietf_decrypt

    @classmethod
    def load(cls) -> _Direct | None:
        try:
            from nacl._sodium import ffi, lib  # type: ignore[import-not-found,unused-ignore]

            return cls(ffi, lib)
        except (ImportError, AttributeError):
            return None

    def encrypt(
        self, out: bytearray | memoryview, plaintext: BytesLike, ad: bytes, nonce: bytes, key: bytes
    ) -> None:
        from_buffer = self._from_buffer
        size = len(plaintext) if type(plaintext) is not memoryview else plaintext.nbytes
        self._encrypt(
            from_buffer(out, require_writable=True),
            self._null,
            from_buffer(plaintext),
            size,
            ad,
            len(ad),
            self._null,
            nonce,
            key,
        )

    def decrypt(
        self,
        out: bytearray | memoryview,
        ciphertext: BytesLike,
        size: int,
        ad: bytes,
        nonce: bytes,
        key: bytes,
    ) -> bool:
        from_buffer = self._from_buffer
        status = self._decrypt(
            from_buffer(out, require_writable=True),
            self._null,
            self._null,
            from_buffer(ciphertext),
            size,
            ad,
            len(ad),
            nonce,
            key,
        )
        return bool(status == 0)


_DIRECT: Final = _Direct.load()


def _check(nonce: bytes, key: bytes) -> None:
    if type(key) is not bytes or len(key) != KEY_SIZE:
        raise LocalProtocolError(f"an XChaCha20-Poly1305 key is {KEY_SIZE} bytes")
    if type(nonce) is not bytes or len(nonce) != NONCE_SIZE:
        raise LocalProtocolError(f"an XChaCha20-Poly1305 nonce is {NONCE_SIZE} bytes")


def _nbytes(data: BytesLike) -> int:
    return data.nbytes if type(data) is memoryview else len(data)


def encrypt_into(
    out: bytearray | memoryview,
    plaintext: BytesLike,
    associated_data: bytes,
    nonce: bytes,
    key: bytes,
    *,
    direct: bool = True,
) -> int:
    """Write ciphertext and tag to the start of `out`; returns their length.

    `out` must be writable, contiguous and at least `len(plaintext) + TAG_SIZE` bytes.
    `direct=False` forces PyNaCl's public wrapper (for tests).
    """
    _check(nonce, key)
    size = _nbytes(plaintext) + TAG_SIZE
    if _nbytes(out) < size:
        raise LocalProtocolError(f"output buffer of {_nbytes(out)} bytes, {size} needed")
    if direct and _DIRECT is not None:
        _DIRECT.encrypt(out, plaintext, associated_data, nonce, key)
    else:
        sealed = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
            bytes(plaintext), associated_data, nonce, key
        )
        memoryview(out)[:size] = sealed
    return size


def decrypt_into(
    out: bytearray | memoryview,
    ciphertext: BytesLike,
    associated_data: bytes,
    nonce: bytes,
    key: bytes,
    *,
    direct: bool = True,
) -> bool:
    """Check and decrypt `ciphertext` (tag included) into the start of `out`.

    Returns False, leaving `out` in an unspecified state, if authentication fails.
    `out` must be writable and at least `len(ciphertext) - TAG_SIZE` bytes; it may start
    where `ciphertext` starts (libsodium checks the tag before it decrypts, and then
    decrypts front to back), so a segment can be decrypted in place.
    """
    _check(nonce, key)
    size = _nbytes(ciphertext)
    if size < TAG_SIZE:
        return False
    if _nbytes(out) < size - TAG_SIZE:
        raise LocalProtocolError(f"output buffer of {_nbytes(out)} bytes, {size - TAG_SIZE} needed")
    if direct and _DIRECT is not None:
        return _DIRECT.decrypt(out, ciphertext, size, associated_data, nonce, key)
    try:
        opened = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
            bytes(ciphertext), associated_data, nonce, key
        )
    except nacl.exceptions.CryptoError:
        return False
    memoryview(out)[: len(opened)] = opened
    return True
