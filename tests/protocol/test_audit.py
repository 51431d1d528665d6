"""The stripe audit's judge (protocol/audit.py): answers cut from a segment's chunks at
the same offsets are one codeword, so liars are found without the chunks."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.audit import AUDIT_LENGTH, AUDIT_RANGES, Answer, choose_offsets, judge, stripe
from protocol.encoding import encode_segment
from protocol.errors import LocalProtocolError
from protocol.manifest import EncodingParams

SEGMENT = 4096


def chunks_of(k: int, n: int, seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    segment = encode_segment(
        rng.randbytes(SEGMENT),
        0,
        segment_count=1,
        key=rng.randbytes(32),
        nonce_prefix=rng.randbytes(16),
        params=EncodingParams(k, n, SEGMENT),
    )
    return [chunk.data for chunk in segment.chunks]


def answers_for(
    chunks: list[bytes], offsets: tuple[int, ...], liars: dict[int, bytes] | None = None
) -> list[Answer[int]]:
    liars = liars or {}
    out = []
    for number, data in enumerate(chunks):
        answer = liars.get(number, stripe(data, offsets, AUDIT_LENGTH))
        assert answer is not None
        out.append(Answer(number, number, number, answer))
    return out


OFFSETS = choose_offsets(random.Random(1).randbytes, 1366)
EXPECTED = AUDIT_RANGES * AUDIT_LENGTH


def test_honest_holders_all_pass() -> None:
    """Ten honest answers fit one codeword: all pass, the verdict is decided."""
    chunks = chunks_of(3, 10)
    verdict = judge(3, 10, answers_for(chunks, OFFSETS), expected_length=EXPECTED)
    assert verdict.decided and verdict.passed == frozenset(range(10)) and not verdict.failed


@pytest.mark.parametrize("liar", [0, 5, 9])
def test_a_unanimous_verdict_is_needed_to_pass_anyone_unanchored(liar: int) -> None:
    """One liar among ten: if its number is not among those the codeword is computed
    from, the verdict is decided and names it (but the auditor, seeing a dissent, will
    anchor before blaming); if it is, nothing is decided. Never is the liar passed."""
    chunks = chunks_of(3, 10, seed=liar)
    invented = {liar: random.Random(liar).randbytes(EXPECTED)}
    verdict = judge(3, 10, answers_for(chunks, OFFSETS, invented), expected_length=EXPECTED)
    assert liar not in verdict.passed or not verdict.decided
    assert not verdict.anchored
    if verdict.decided:
        assert verdict.failed == frozenset({liar})
        assert verdict.passed == frozenset(range(10)) - {liar}
    else:
        assert liar in (0, 1, 2)


def test_too_many_liars_or_too_few_answers_is_undecided() -> None:
    """Four liars of ten, or only k answers: nothing is decided (what `passed` then
    holds is only the likeliest codeword's suggestion, evidence of nothing)."""
    chunks = chunks_of(3, 10)
    rng = random.Random(9)
    invented = {number: rng.randbytes(EXPECTED) for number in (0, 4, 5, 9)}
    verdict = judge(3, 10, answers_for(chunks, OFFSETS, invented), expected_length=EXPECTED)
    assert not verdict.decided and not verdict.anchored
    only_k = answers_for(chunks, OFFSETS)[:3]
    assert not judge(3, 10, only_k, expected_length=EXPECTED).decided


def test_a_trusted_answer_anchors_the_codeword_against_a_colluding_majority() -> None:
    """Five colluders answer from a codeword of their own; without an anchor they win
    (the stated limit), with the auditor's own k chunks the honest ones pass."""
    chunks = chunks_of(3, 10)
    fake = chunks_of(3, 10, seed=99)
    colluders = {number: stripe(fake[number], OFFSETS, AUDIT_LENGTH) for number in range(5)}
    answers = answers_for(chunks, OFFSETS, colluders)  # type: ignore[arg-type]
    unanchored = judge(3, 10, answers, expected_length=EXPECTED)
    assert not unanchored.decided or unanchored.failed != frozenset(range(5))
    assert not unanchored.anchored
    anchored = [
        Answer(a.key, a.holder, a.number, a.data, trusted=a.number in (7, 8, 9)) for a in answers
    ]
    verdict = judge(3, 10, anchored, expected_length=EXPECTED)
    assert verdict.decided and verdict.failed == frozenset(range(5))


def test_wrong_lengths_fail_and_duplicates_are_judged_each() -> None:
    """A short answer fails; two holders answering for one chunk are judged one by one
    against an anchored codeword (k trusted answers)."""
    chunks = chunks_of(3, 10)
    answers = [
        Answer(a.key, a.holder, a.number, a.data, trusted=a.number in (7, 8, 9))
        for a in answers_for(chunks, OFFSETS)
    ]
    answers.append(Answer(10, 10, 4, stripe(chunks[4], OFFSETS, AUDIT_LENGTH) or b""))
    answers.append(Answer(11, 11, 4, bytes(EXPECTED)))
    answers.append(Answer(12, 12, 5, b"short"))
    verdict = judge(3, 10, answers, expected_length=EXPECTED)
    assert verdict.decided and verdict.anchored
    assert 10 in verdict.passed and verdict.failed == frozenset({11, 12})


def test_offsets_are_drawn_within_the_block_and_stripes_refuse_short_chunks() -> None:
    """Offsets leave room for the range; a chunk too short for them is no answer."""
    offsets = choose_offsets(random.Random(3).randbytes, 100, count=16, length=64)
    assert len(offsets) == 16 and all(0 <= offset <= 36 for offset in offsets)
    assert choose_offsets(random.Random(3).randbytes, 10, count=2, length=64) == (0, 0)
    assert stripe(bytes(range(10)), (2, 5), 3) == bytes([2, 3, 4, 5, 6, 7])
    assert stripe(bytes(10), (8,), 3) is None
    with pytest.raises(LocalProtocolError):
        choose_offsets(random.Random(3).randbytes, 100, count=17)


@settings(deadline=None, max_examples=60, derandomize=True, database=None)
@given(
    k=st.integers(1, 6),
    extra=st.integers(0, 6),
    seed=st.integers(0, 2**32),
)
def test_a_decided_verdict_never_passes_a_liar_or_fails_an_honest_holder(
    k: int, extra: int, seed: int
) -> None:
    """Any code, any subset of holders answering, liars inventing independently: with
    k + 1 honest holders answering, a decided verdict is exactly right; with no liar,
    it is decided."""
    n = k + extra
    rng = random.Random(seed)
    chunks = chunks_of(k, n, seed)
    offsets = choose_offsets(rng.randbytes, len(chunks[0]))
    answering = rng.sample(range(n), rng.randint(1, n))
    lying = {number for number in answering if rng.random() < 0.3}
    answers = [
        Answer(
            number,
            number,
            number,
            rng.randbytes(EXPECTED)
            if number in lying
            else stripe(chunks[number], offsets, AUDIT_LENGTH) or b"",
        )
        for number in answering
    ]
    verdict = judge(k, n, answers, expected_length=EXPECTED)
    honest = set(answering) - lying
    if verdict.decided and len(honest) >= k + 1:
        assert verdict.passed == frozenset(honest)
        assert verdict.failed == frozenset(lying)
    if not lying and len(honest) >= k + 1:
        assert verdict.decided


def test_one_holder_answering_for_every_chunk_is_one_witness() -> None:
    """A single node claiming all ten chunks can invent a codeword that fits all its
    answers: with no other witness, nothing is decided."""
    fake = chunks_of(3, 10, seed=42)
    answers = [
        Answer(number, "liar", number, stripe(fake[number], OFFSETS, AUDIT_LENGTH) or b"")
        for number in range(10)
    ]
    assert not judge(3, 10, answers, expected_length=EXPECTED).decided
    honest = chunks_of(3, 10, seed=43)
    four_holders = [
        Answer(number, number % 4, number, stripe(honest[number], OFFSETS, AUDIT_LENGTH) or b"")
        for number in range(10)
    ]
    assert judge(3, 10, four_holders, expected_length=EXPECTED).decided


def test_one_node_claiming_chunks_it_lacks_is_never_passed() -> None:
    """Ten honest holders, and one node answering for all ten numbers with invented
    bytes: unanchored, it is never passed (the verdict is not decided, or it is named);
    anchored by the auditor's own k chunks, it is named for every number."""
    chunks = chunks_of(3, 10, seed=5)
    rng = random.Random(5)
    answers = answers_for(chunks, OFFSETS)
    answers += [Answer(("liar", j), "liar", j, rng.randbytes(EXPECTED)) for j in range(10)]
    liar = frozenset(("liar", j) for j in range(10))
    verdict = judge(3, 10, answers, expected_length=EXPECTED)
    assert not (verdict.decided and verdict.passed & liar)
    anchored = [
        Answer(a.key, a.holder, a.number, a.data, trusted=a.key in (0, 1, 2)) for a in answers
    ]
    verdict = judge(3, 10, anchored, expected_length=EXPECTED)
    assert verdict.anchored and verdict.failed == liar
    assert verdict.passed == frozenset(range(10))


def test_sybils_claiming_every_number_cannot_outvote_honest_holders() -> None:
    """The review's attack: four colluders answer every number from a codeword of their
    own, seven honest holders answer theirs. Unanchored, nothing is decided (no honest
    holder is failed on a decided verdict); anchored by k trusted chunks, the colluders
    fail everywhere and every honest holder passes."""
    chunks = chunks_of(3, 10, seed=8)
    fake = chunks_of(3, 10, seed=80)
    honest = [Answer(j, j, j, stripe(chunks[j], OFFSETS, AUDIT_LENGTH) or b"") for j in range(7)]
    sybils = [
        Answer(("s", s, j), ("s", s), j, stripe(fake[j], OFFSETS, AUDIT_LENGTH) or b"")
        for s in range(4)
        for j in range(10)
    ]
    verdict = judge(3, 10, honest + sybils, expected_length=EXPECTED)
    assert not verdict.decided
    trusted = [Answer(a.key, a.holder, a.number, a.data, trusted=a.number < 3) for a in honest]
    verdict = judge(3, 10, trusted + sybils, expected_length=EXPECTED)
    assert verdict.anchored
    assert verdict.passed == frozenset(range(7))
    assert verdict.failed == frozenset(a.key for a in sybils)


def test_the_judge_is_bounded_whatever_the_code() -> None:
    """20-of-256 with a junk holder claiming 237 numbers: one codeword, judged fast (the
    review found a subset search that never ended)."""
    rng = random.Random(11)
    answers = [Answer(j, "junk", j, rng.randbytes(EXPECTED)) for j in range(19, 256)]
    answers += [Answer(("t", j), "me", j, rng.randbytes(EXPECTED), trusted=True) for j in range(19)]
    verdict = judge(20, 256, answers, expected_length=EXPECTED)
    assert not verdict.decided
