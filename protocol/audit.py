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
2. A codeword C is *decided* when it fits every trusted answer (the auditor's own
   chunks, read from its own verified store), at least k + 1 block numbers have an
   answer equal to C's, from at least k + 1 distinct holders (witnesses), and no rival
   codeword could do as well: two distinct codewords of an MDS code share at most
   k - 1 block numbers, so a rival's witnesses are holders that dissent from C
   somewhere plus those agreeing with C at k - 1 numbers at most. C is decided when,
   with S the numbers with an answer equal to C's and D those with an answer that
   differs, |S| >= k + |D| (with m answers on distinct numbers, up to (m - k - 1) / 2
   liars are found), or when that bound on a rival's witnesses is under k + 1 (one
   node claiming many chunks it does not hold is one dissenter, however many numbers
   it claims). (Or k trusted numbers alone fix C.) The holders count because one
   holder answering for many block numbers is one witness: it could invent a codeword
   of its own.
3. Decided: answers equal to C's pass, the others fail. Not decided (fewer than k + 1
   numbers answered, or no clear majority): nothing passes or fails; the auditor must
   fetch whole chunks to know (node/files/checking.py does).

Limit, stated in docs/SECURITY.md: answers that all come from one colluding party can
be made to fit a codeword of its own choosing; a segment all of whose answering holders
collude passes. The auditor's own chunk, or one whole chunk fetched and hashed, anchors
the codeword and defeats that.

Sans-I/O: the offsets' randomness is a parameter; nothing here reads a clock or a file.
"""

from __future__ import annotations

import itertools
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
MAX_SUBSETS: Final = 2000
"""k-subsets the judge tries before it calls a segment undecided (rule 3)."""

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
    """What the answers show (module rules). Undecided: both sets are empty."""

    decided: bool
    passed: frozenset[_Key]
    failed: frozenset[_Key]


def judge(
    k: int, n: int, answers: Collection[Answer[_Key]], *, expected_length: int
) -> Verdict[_Key]:
    """Judge one segment's answers to one audit (module rules)."""
    if not 1 <= k <= n:
        raise LocalProtocolError(f"k = {k}, n = {n}")
    wrong_length = frozenset(a.key for a in answers if len(a.data) != expected_length)
    valid = [a for a in answers if len(a.data) == expected_length and 0 <= a.number < n]
    wrong_length |= frozenset(a.key for a in answers if not 0 <= a.number < n)
    trusted = {a.number: a.data for a in valid if a.trusted}
    found = _decided_codeword(k, n, valid, trusted)
    if found is None:
        return Verdict(False, frozenset(), wrong_length)
    passed = frozenset(a.key for a in valid if a.data == found[a.number])
    failed = frozenset(a.key for a in answers) - passed
    return Verdict(True, passed, failed)


def _decided_codeword(
    k: int, n: int, answers: Sequence[Answer[_Key]], trusted: dict[int, bytes]
) -> list[bytes] | None:
    """The decided codeword (rule 2), or None."""
    if len(trusted) >= k:
        chosen = dict(itertools.islice(sorted(trusted.items()), k))
        candidate = codeword(k, n, chosen)
        if all(candidate[number] == data for number, data in trusted.items()):
            return candidate
        return None  # our own chunks disagree with each other: not for audits to settle
    # Each block number's distinct answers, most common first; trusted ones alone.
    values: dict[int, list[bytes]] = {}
    for number in sorted({a.number for a in answers}):
        if number in trusted:
            values[number] = [trusted[number]]
        else:
            counts = Counter(a.data for a in answers if a.number == number)
            values[number] = [data for data, _ in counts.most_common()]
    if len(values) < k + 1:
        return None
    # The likeliest first: trusted numbers, then the most agreed answers.
    order = sorted(values, key=lambda number: (number not in trusted, number))
    tried = 0
    for numbers in itertools.combinations(order, k):
        if not all(number in numbers for number in trusted):
            continue
        for choice in itertools.product(*(values[number] for number in numbers)):
            tried += 1
            if tried > MAX_SUBSETS:
                return None
            candidate = codeword(k, n, dict(zip(numbers, choice, strict=True)))
            if _is_decided(k, candidate, values, trusted, answers):
                return candidate
    return None


def _is_decided(
    k: int,
    candidate: list[bytes],
    values: dict[int, list[bytes]],
    trusted: dict[int, bytes],
    answers: Sequence[Answer[_Key]],
) -> bool:
    if any(candidate[number] != data for number, data in trusted.items()):
        return False
    support = sum(1 for number, seen in values.items() if candidate[number] in seen)
    differing = sum(
        1 for number, seen in values.items() if any(data != candidate[number] for data in seen)
    )
    witnesses = {a.holder for a in answers if a.data == candidate[a.number]}
    if support < k + 1 or len(witnesses) < k + 1:
        return False
    if support >= k + differing:
        return True
    # Many numbers have a dissenting answer, but perhaps all from few holders (one node
    # claiming what it does not hold): a rival codeword's witnesses are holders that
    # dissent somewhere, plus those agreeing with this one at the k - 1 or fewer numbers
    # the two codewords can share. If even that cannot make k + 1, no rival is possible.
    dissenters = {a.holder for a in answers if a.data != candidate[a.number]}
    agreeing: dict[int, set[Hashable]] = {}
    for a in answers:
        if a.data == candidate[a.number] and a.holder not in dissenters:
            agreeing.setdefault(a.number, set()).add(a.holder)
    shared = sorted((len(holders) for holders in agreeing.values()), reverse=True)[: k - 1]
    return len(dissenters) + sum(shared) < k + 1
