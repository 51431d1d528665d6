"""Audits: evidence that holders have a segment's chunks now, judged without the chunks.

docs/PROTOCOL.md#audits. The *stripe audit*: the auditor draws fresh random offsets
and asks every holder of a segment for the same few bytes of its chunk at those offsets
(AUDIT_CHUNKS). zfec codes byte position by position, so the answers of the segment's
holders, cut at the same offsets, are one codeword of the segment's k-of-n code: any k
of them give the others (`codeword`), and an answer that does not fit is a holder that
does not have its chunk's bytes. A holder cannot guess the bytes (the offsets are fresh)
and cannot keep a part of its chunk and hope (eight ranges: keeping half the chunk
passes one audit in 256); one that fetches the ranges from k others' chunks to
compute its own pays k times what it was asked, every audit.

The judge (rules):

1. An answer of the wrong length fails at once.
2. The answers point to one codeword C: fixed by the auditor's trusted answers (its own
   chunks, read from its own verified store, or chunks it fetched whole and hashed) if
   there are k of them, else computed from k block numbers, trusted ones first, each
   taking its most common answer. C is *anchored* when k trusted answers fix it: then
   it is the truth, and every answer that does not fit it is a lie. Otherwise C is
   *decided* when at least k + 1 distinct holders (witnesses) have an answer that fits
   it, and no rival codeword could gather as many: two distinct codewords of an MDS
   code share at most k - 1 block numbers, so a rival's witnesses are holders that
   dissent from C somewhere plus those agreeing with C at k - 1 numbers at most. The
   holders count, not the numbers: one holder answering for many numbers is one
   witness, however many it claims.
3. A decided, unanchored C is the truth if at least k + 1 honest holders answered. So
   an auditor takes an unanchored verdict only when it is unanimous (every answer
   fits); any dissent, or no decision, and it fetches chunks whole to anchor it
   (node/files/checking.py). Only a contradiction of an anchored codeword, or bytes
   that do not hash to their id, is proof of a lie.

Limit, stated in docs/SECURITY.md: if every holder that answers belongs to one
colluding party (at least k + 1 of them), their answers can fit a codeword of their
choosing, unanimously; anchoring defeats that, at the cost of k chunks.

Sans-I/O: the offsets' randomness is a parameter; nothing here reads a clock or a file.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Hashable, Sequence
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from protocol.aead import BytesLike
from protocol.encoding import codeword
from protocol.errors import LocalProtocolError
from protocol.identity import RandomBytes
from protocol.messages import MAX_AUDIT_LENGTH, MAX_AUDIT_RANGES

__all__ = [
    "AUDIT_LENGTH",
    "AUDIT_RANGES",
    "Answer",
    "Verdict",
    "choose_offsets",
    "judge",
    "stripe",
]

AUDIT_RANGES: Final = 8
"""Offsets the reference auditor draws per audit."""
AUDIT_LENGTH: Final = 16
"""Bytes it asks at each: 128 bytes per chunk audited."""
_Key = TypeVar("_Key", bound=Hashable)


def choose_offsets(
    random_bytes: RandomBytes,
    block_size: int,
    *,
    count: int = AUDIT_RANGES,
    length: int = AUDIT_LENGTH,
) -> tuple[int, ...]:
    """`count` offsets drawn uniformly (8 random bytes each) from 0..block_size-length,
    for blocks of `block_size` bytes; the range length is min(length, block_size)."""
    if not 1 <= count <= MAX_AUDIT_RANGES or not 1 <= length <= MAX_AUDIT_LENGTH:
        raise LocalProtocolError(f"count {count} or length {length} is outside the limits")
    if block_size < 1:
        raise LocalProtocolError(f"block size {block_size} is not positive")
    span = block_size - min(length, block_size) + 1
    drawn = random_bytes(8 * count)
    if type(drawn) is not bytes or len(drawn) != 8 * count:
        raise LocalProtocolError("random_bytes gave the wrong number of bytes")
    return tuple(int.from_bytes(drawn[at : at + 8], "big") % span for at in range(0, 8 * count, 8))


def stripe(data: BytesLike, offsets: Sequence[int], length: int) -> bytes | None:
    """A holder's answer: `length` bytes of `data` at each offset, joined; None if a
    range runs past the end (a chunk shorter than asked is not this chunk)."""
    view = memoryview(data).cast("B")
    if any(offset < 0 or offset + length > view.nbytes for offset in offsets):
        return None
    return b"".join(view[offset : offset + length] for offset in offsets)


@dataclass(frozen=True, slots=True)
class Answer(Generic[_Key]):
    """One holder's answer for one chunk: `key` names the answer (the holder and the
    chunk, as the caller likes), `holder` the node that gave it, `number` the chunk's
    block number in its segment."""

    key: _Key
    holder: Hashable
    number: int
    data: bytes
    trusted: bool = False
    """Read by the auditor from its own verified store: true by definition."""


@dataclass(frozen=True, slots=True)
class Verdict(Generic[_Key]):
    """What the answers show (module rules): whether a codeword is decided, whether it
    is anchored (fixed by k trusted answers: the truth), and the answers that fit it
    and those that do not. Undecided, `passed` and `failed` are only what the likeliest
    codeword suggests: evidence of nothing."""

    decided: bool
    anchored: bool
    passed: frozenset[_Key]
    failed: frozenset[_Key]


def judge(
    k: int, n: int, answers: Collection[Answer[_Key]], *, expected_length: int
) -> Verdict[_Key]:
    """Judge one segment's answers to one audit (module rules). Cheap and bounded: one
    codeword is computed, whatever the answers (no search over subsets)."""
    if not 1 <= k <= n:
        raise LocalProtocolError(f"k = {k}, n = {n}")
    valid = [a for a in answers if len(a.data) == expected_length and 0 <= a.number < n]
    trusted = {a.number: a.data for a in valid if a.trusted}
    candidate = _candidate(k, n, valid, trusted)
    if candidate is None:
        valid_keys = frozenset(a.key for a in valid)
        return Verdict(False, False, frozenset(), frozenset(a.key for a in answers) - valid_keys)
    passed = frozenset(a.key for a in valid if a.data == candidate[a.number])
    failed = frozenset(a.key for a in answers) - passed
    if len(trusted) >= k:
        return Verdict(True, True, passed, failed)
    return Verdict(_is_decided(k, candidate, valid), False, passed, failed)


def _candidate(
    k: int, n: int, answers: Sequence[Answer[_Key]], trusted: dict[int, bytes]
) -> list[bytes] | None:
    """The codeword the answers point to (rule 2): from the trusted answers if there are
    k, else from k block numbers, trusted ones first, each taking its most common
    answer. None if fewer than k numbers were answered, or if it does not fit a trusted
    answer (then the auditor's own chunks disagree: not for an audit to settle)."""
    values: dict[int, bytes] = dict(trusted)
    for number in sorted({a.number for a in answers} - set(trusted)):
        counts = Counter(a.data for a in answers if a.number == number)
        # Most common first; a tie goes to the smallest bytes, so the choice is stable.
        values[number] = min(counts, key=lambda data: (-counts[data], data))
    if len(values) < k:
        return None
    order = sorted(values, key=lambda number: (number not in trusted, number))
    candidate = codeword(k, n, {number: values[number] for number in order[:k]})
    if any(candidate[number] != data for number, data in trusted.items()):
        return None
    return candidate


def _is_decided(k: int, candidate: list[bytes], answers: Sequence[Answer[_Key]]) -> bool:
    """Rule 2's witnesses: at least k + 1 holders with an answer that fits, and no rival
    codeword able to gather as many."""
    witnesses = {a.holder for a in answers if a.data == candidate[a.number]}
    if len(witnesses) < k + 1:
        return False
    dissenters = {a.holder for a in answers if a.data != candidate[a.number]}
    agreeing: dict[int, set[Hashable]] = {}
    for a in answers:
        if a.data == candidate[a.number] and a.holder not in dissenters:
            agreeing.setdefault(a.number, set()).add(a.holder)
    shared = sorted((len(holders) for holders in agreeing.values()), reverse=True)[: k - 1]
    return len(dissenters) + sum(shared) < k + 1
