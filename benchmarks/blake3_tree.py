"""BLAKE3's tree in pure Python, to measure the audit Freehold did not choose.

A BLAKE3 slice proof (the bao format) proves a holder has a 1 KiB piece of a chunk
against the chunk id alone: the piece and the chaining values of its siblings up the
tree. The `blake3` package hashes in native code but exposes no tree node, so a Freehold
node would compute them with a BLAKE3 of its own: the verifier needs a few dozen
compressions per proof, but the prover needs every node of the tree (the "outboard")
for every chunk it holds. This module is that BLAKE3 (the spec's compression function
and tree, checked against the `blake3` package in tests/benchmarks), used only by
`python -m benchmarks audit` to put numbers on both sides. Not for production use.
"""

from __future__ import annotations

from typing import Final

__all__ = ["CHUNK_LEN", "chunk_cv", "parent_cv", "root_hash", "subtree_cv", "verify_path"]

CHUNK_LEN: Final = 1024
_BLOCK_LEN: Final = 64
_IV: Final = (
    0x6A09E667,
    0xBB67AE85,
    0x3C6EF372,
    0xA54FF53A,
    0x510E527F,
    0x9B05688C,
    0x1F83D9AB,
    0x5BE0CD19,
)
_PERMUTATION: Final = (2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8)
_CHUNK_START, _CHUNK_END, _PARENT, _ROOT = 1, 2, 4, 8
_MASK: Final = 0xFFFFFFFF


def _g(state: list[int], a: int, b: int, c: int, d: int, x: int, y: int) -> None:
    sa, sb, sc, sd = state[a], state[b], state[c], state[d]
    sa = (sa + sb + x) & _MASK
    sd ^= sa
    sd = ((sd >> 16) | (sd << 16)) & _MASK
    sc = (sc + sd) & _MASK
    sb ^= sc
    sb = ((sb >> 12) | (sb << 20)) & _MASK
    sa = (sa + sb + y) & _MASK
    sd ^= sa
    sd = ((sd >> 8) | (sd << 24)) & _MASK
    sc = (sc + sd) & _MASK
    sb ^= sc
    sb = ((sb >> 7) | (sb << 25)) & _MASK
    state[a], state[b], state[c], state[d] = sa, sb, sc, sd


def _compress(
    cv: tuple[int, ...], block: bytes, counter: int, length: int, flags: int
) -> list[int]:
    m = [int.from_bytes(block[i : i + 4], "little") for i in range(0, 64, 4)]
    state = [*cv, *_IV[:4], counter & _MASK, counter >> 32, length, flags]
    for round_number in range(7):
        _g(state, 0, 4, 8, 12, m[0], m[1])
        _g(state, 1, 5, 9, 13, m[2], m[3])
        _g(state, 2, 6, 10, 14, m[4], m[5])
        _g(state, 3, 7, 11, 15, m[6], m[7])
        _g(state, 0, 5, 10, 15, m[8], m[9])
        _g(state, 1, 6, 11, 12, m[10], m[11])
        _g(state, 2, 7, 8, 13, m[12], m[13])
        _g(state, 3, 4, 9, 14, m[14], m[15])
        if round_number < 6:
            m = [m[i] for i in _PERMUTATION]
    return [state[i] ^ state[i + 8] for i in range(8)] + [state[i + 8] ^ cv[i] for i in range(8)]


def _words(words: list[int]) -> bytes:
    return b"".join(word.to_bytes(4, "little") for word in words)


def chunk_cv(data: bytes, index: int, *, root: bool = False) -> bytes:
    """The chaining value of 1 KiB chunk number `index` (its bytes, up to 1024); the
    root hash instead if it is the whole input."""
    cv: tuple[int, ...] = _IV
    blocks = [data[at : at + _BLOCK_LEN] for at in range(0, max(len(data), 1), _BLOCK_LEN)]
    out: list[int] = []
    for number, block in enumerate(blocks):
        flags = (_CHUNK_START if number == 0 else 0) | (
            _CHUNK_END | (_ROOT if root else 0) if number == len(blocks) - 1 else 0
        )
        out = _compress(cv, block.ljust(_BLOCK_LEN, b"\0"), index, len(block), flags)
        cv = tuple(out[:8])
    return _words(out[:8])


def parent_cv(left: bytes, right: bytes, *, root: bool = False) -> bytes:
    """The chaining value (or root hash) of a parent node of two children's values."""
    out = _compress(_IV, left + right, 0, _BLOCK_LEN, _PARENT | (_ROOT if root else 0))
    return _words(out[:8])


def subtree_cv(data: bytes, first_chunk: int, *, root: bool = False) -> bytes:
    """The chaining value of the subtree over `data`, whose first chunk is number
    `first_chunk` of the whole input (BLAKE3's tree: the left subtree takes the largest
    power of two of chunks that leaves at least one on the right)."""
    chunks = max(1, -(-len(data) // CHUNK_LEN))
    if chunks == 1:
        return chunk_cv(data, first_chunk, root=root)
    left_chunks = 1 << ((chunks - 1).bit_length() - 1)
    split = left_chunks * CHUNK_LEN
    left = subtree_cv(data[:split], first_chunk)
    right = subtree_cv(data[split:], first_chunk + left_chunks)
    return parent_cv(left, right, root=root)


def root_hash(data: bytes) -> bytes:
    """BLAKE3-256 of `data`, through the tree: equal to the `blake3` package's."""
    return subtree_cv(data, 0, root=True)


def verify_path(piece: bytes, index: int, siblings: list[tuple[bool, bytes]], root: bytes) -> bool:
    """Whether chunk `index`'s bytes `piece` and its siblings' values, from the bottom
    up (each with whether the sibling is on the left), give `root`: a slice proof's
    check, as a verifier would do it."""
    value = chunk_cv(piece, index, root=not siblings)
    for level, (on_left, sibling) in enumerate(siblings):
        last = level == len(siblings) - 1
        value = (
            parent_cv(sibling, value, root=last)
            if on_left
            else parent_cv(value, sibling, root=last)
        )
    return value == root
