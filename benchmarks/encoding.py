"""Encoding benchmark: the file encoder and decoder beside their stages alone, and pyeclib.

What it measures. A file of 256 MiB (16 MiB with --quick) is encoded and decoded with
the default parameters (3-of-10, 4 MiB segments) through protocol/encoding.py's
`Encoder` and `Decoder`, with a ThreadPoolExecutor of one worker thread and of two
(window 4, the default). The source is four distinct 4 MiB blocks of os.urandom given
over and over as an iterable with `size=` (libsodium, zfec and BLAKE3 run at the same
speed whatever the content); the encoder takes whole segments from them without
copying. Encoded segments are dropped as they come, as a node drops them once stored.
Decoding is measured from the k data chunks of each segment (no erasure decoding), and
from k parity chunks only (block numbers n-k..n-1: zfec rebuilds all k data blocks).
The chunks that decoding needs come from one untimed encode beforehand and stay in
memory: twice the file size (512 MiB for the full run; the machine has 24 GiB). The
decoded length is checked; the content is authenticated by the AEAD as it is decoded.

Each pipeline row is set beside the stages it is made of, each measured alone on the
same buffers just before the row (for 0.15 s, cycling over the first 4 segments):

| row                | stages                                                          |
|--------------------|-----------------------------------------------------------------|
| encode             | XChaCha20-Poly1305 encrypt of a segment (`encrypt_into`, into a |
|                    | reused buffer); zfec encode of its k blocks into n-k parity     |
|                    | blocks; BLAKE3 of its n chunks                                  |
| decode, data       | BLAKE3 of k chunks; XChaCha20-Poly1305 decrypt                  |
| decode, parity     | BLAKE3 of k chunks; zfec decode of k parity blocks; decrypt     |
| encode, ISA-L      | as encode, with ISA-L computing zfec's parity (node/isal.py,    |
|                    | what a node uses on Linux); left out where ISA-L does not load  |

On two threads each stage is measured running on two threads at once (not assumed to
double). The stages and their row are measured three times in turn (once with --quick)
and the best figure of each is kept, as timeit does: other processes share the machine,
and the best figure is the one they disturbed least. Every rate is in MB/s (10**6
bytes) of file bytes: a stage's rate is segments per second times 4 MiB (the stage
table also gives the bytes it processed per second).
The ideal is what the stages add up to, 1 / sum(1 / stage rate); "ratio to ideal" is
measured / ideal (1.0: the pipeline costs nothing beyond its stages) and "ratio to
slowest" is measured / the slowest stage's rate.

Targets (not tests): encode at least 90% of its ideal on one thread; encode on two
threads at least 1.7 times the one-thread encode of the same run; decode from data
chunks at least 600 MB/s on one thread. The other rows have none.

malloc. Everything above runs twice, each time in a fresh process: with glibc's default
malloc settings (what a node runs with today), and "tuned", with mallopt
M_MMAP_THRESHOLD = 32 MiB and M_TRIM_THRESHOLD = 256 MiB set through ctypes before the
buffers are made. By default glibc serves a buffer above the mmap threshold (128 KiB at
first, raised to the size of a freed mmapped buffer, at most 32 MiB) with mmap, and gives
the heap's top back to the system above the trim threshold (twice the mmap threshold);
a segment's buffers add up to more than that, so their pages are faulted in again and
again. Setting M_MMAP_THRESHOLD alone also stops the trim threshold from following it
(it stays at 128 KiB), which faults more, not less (when this was written, a 4 MiB
`encode_segment` faulted about 3700 times with it alone, 2050 with the defaults and
none with both): both are set. Every row and stage
reports its minor page faults per segment (getrusage, the whole process). Where mallopt
is not there (not glibc), the tuned run is left out and the run says so.

Baseline. If pyeclib is installed (the optional `bench` extra), its isa-l backend
(`isa_l_rs_vand`, k=3, m=7) is timed in the same processes on one and two threads:
erasure encode alone of a segment's ciphertext (it also splits and copies the data
fragments, each with a header, where zfec takes the k blocks and returns only parity)
and decode from k parity fragments, beside zfec's figures; and a whole encode with
pyeclib in place of zfec (encrypt, `bytes()` of the ciphertext as pyeclib takes only
bytes, encode, BLAKE3 of the n fragments) through the same executor and window, beside
Freehold's encode. pyeclib's C module holds the GIL while it codes (1.8.0 never calls
PyEval_SaveThread), so its erasure steps of two threads take turns, while their
encryption and hashing still overlap. Without pyeclib the run says the baseline is
missing.

--profile runs one more encode and decode from parity chunks with no executor under
cProfile (it sees only its own thread) and prints where they spend their time; the
timed rows are not profiled.
"""

from __future__ import annotations

import cProfile
import ctypes
import importlib.metadata
import importlib.util
import io
import json
import multiprocessing
import os
import pstats
import resource
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from multiprocessing.connection import Connection
from typing import Any, Final

import blake3
import zfec

from benchmarks import BenchmarkError, BenchmarkOptions
from node.isal import load_isal
from protocol.aead import TAG_SIZE, decrypt_into, encrypt_into
from protocol.capability import ReadCapability
from protocol.encoding import (
    EncodedSegment,
    Parity,
    zfec_parity,
)
from protocol.manifest import EncodingParams, Manifest, segment_associated_data, segment_nonce
from protocol.stream import DEFAULT_WINDOW, Decoder, Encoder

__all__ = [
    "FULL_RUN",
    "QUICK_RUN",
    "MallocSetting",
    "RunShape",
    "run_encoding_benchmark",
]

MIB: Final = 1024 * 1024
PARAMS: Final = EncodingParams()
WINDOW: Final = DEFAULT_WINDOW
THREAD_COUNTS: Final = (1, 2)
SOURCE_BLOCKS: Final = 4
# Segments whose chunks are kept whole as the stages' inputs. A multiple of every thread
# count: thread t of T takes inputs t, t + T, ..., so no two threads share an output
# buffer.
STAGE_SEGMENTS: Final = 4
ENCODE_SHARE_OF_IDEAL: Final = 0.9
ENCODE_TWO_THREAD_SPEEDUP: Final = 1.7
DECODE_DATA_TARGET: Final = 600.0  # MB/s on one thread
PYECLIB_BACKEND: Final = "isa_l_rs_vand"
PROFILE_LINES: Final = 20

# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD: Final = -1
M_MMAP_THRESHOLD: Final = -3


@dataclass(frozen=True, slots=True)
class RunShape:
    """How much a run measures: the file size, how long each stage runs alone, and how
    many times each measurement is made (the best is kept)."""

    file_size: int
    stage_seconds: float
    trials: int


FULL_RUN: Final = RunShape(file_size=256 * MIB, stage_seconds=0.15, trials=3)
QUICK_RUN: Final = RunShape(file_size=16 * MIB, stage_seconds=0.03, trials=1)


@dataclass(frozen=True, slots=True)
class MallocSetting:
    """glibc malloc thresholds set with mallopt, or None to keep glibc's default."""

    name: str
    mmap_threshold: int | None
    trim_threshold: int | None

    def describe(self) -> str:
        if self.mmap_threshold is None or self.trim_threshold is None:
            return "glibc's default thresholds"
        return (
            f"mallopt M_MMAP_THRESHOLD={self.mmap_threshold // MIB} MiB, "
            f"M_TRIM_THRESHOLD={self.trim_threshold // MIB} MiB"
        )


DEFAULT_MALLOC: Final = MallocSetting("default", None, None)
TUNED_MALLOC: Final = MallocSetting("tuned", 32 * MIB, 256 * MIB)
MALLOC_SETTINGS: Final = (DEFAULT_MALLOC, TUNED_MALLOC)


# ------------------------------------------------------------------------ figures


@dataclass(frozen=True, slots=True)
class StageFigure:
    """One stage alone on `threads` threads."""

    key: str
    label: str
    threads: int
    rate: float  # file bytes per second: segments per second times the segment size
    processed_rate: float  # bytes the stage read per second
    faults_per_segment: float


@dataclass(frozen=True, slots=True)
class PipelineFigure:
    """One run of the encoder or decoder over the whole file."""

    key: str
    label: str
    threads: int
    rate: float  # file bytes per second
    faults_per_segment: float
    stages: tuple[StageFigure, ...]

    @property
    def ideal(self) -> float:
        return 1.0 / sum(1.0 / stage.rate for stage in self.stages)

    @property
    def slowest(self) -> StageFigure:
        return min(self.stages, key=lambda stage: stage.rate)


@dataclass(frozen=True, slots=True)
class BaselineFigure:
    """pyeclib beside Freehold's counterpart (`compared_with`, a stage or a row)."""

    key: str
    label: str
    threads: int
    rate: float
    faults_per_segment: float
    compared_with: str
    freehold_rate: float


@dataclass(frozen=True, slots=True)
class Measurements:
    """Everything one process measured under one malloc setting."""

    malloc: MallocSetting
    pipelines: tuple[PipelineFigure, ...]
    stages: tuple[StageFigure, ...]
    baseline: tuple[BaselineFigure, ...]
    baseline_name: str | None
    baseline_missing: str | None
    profile: str | None


# ---------------------------------------------------------------- the file's data


@dataclass(frozen=True, slots=True)
class _EncodedFile:
    """One encode of the file, kept for decoding and for the stages' inputs."""

    capability: ReadCapability
    manifest_bytes: bytes
    manifest: Manifest
    data: list[list[tuple[bytes, bytes]]]  # per segment: its k data chunks
    parity: list[list[tuple[bytes, bytes]]]  # per segment: its last k parity chunks
    whole: list[EncodedSegment]  # the first STAGE_SEGMENTS segments, all n chunks


def _source(blocks: Sequence[bytes], file_size: int) -> Iterator[bytes]:
    for index in range(file_size // PARAMS.segment_size):
        yield blocks[index % len(blocks)]


def _encode_and_keep(blocks: Sequence[bytes], file_size: int) -> _EncodedFile:
    k, n = PARAMS.k, PARAMS.n
    data: list[list[tuple[bytes, bytes]]] = []
    parity: list[list[tuple[bytes, bytes]]] = []
    whole: list[EncodedSegment] = []
    with ThreadPoolExecutor(max(THREAD_COUNTS)) as executor:
        encoder = Encoder(
            _source(blocks, file_size),
            random_bytes=os.urandom,
            size=file_size,
            params=PARAMS,
            executor=executor,
        )
        for segment in encoder.segments():
            data.append([(chunk.chunk_id, chunk.data) for chunk in segment.chunks[:k]])
            parity.append([(chunk.chunk_id, chunk.data) for chunk in segment.chunks[n - k :]])
            if len(whole) < STAGE_SEGMENTS:
                whole.append(segment)
    return _EncodedFile(
        encoder.read_capability, encoder.manifest_bytes, encoder.manifest, data, parity, whole
    )


# ----------------------------------------------------------------- measuring


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


@dataclass(frozen=True, slots=True)
class _Timing:
    rate: float  # file bytes per second
    faults_per_segment: float


def _best(timings: Sequence[_Timing]) -> _Timing:
    return max(timings, key=lambda timing: timing.rate)


def _repeat_rate(work: Callable[[int], object], threads: int, seconds: float) -> _Timing:
    """`work(i)`, one segment's worth each, on `threads` threads at once for `seconds`.

    Thread t of T calls work(t), work(t + T), ...; each stops after the first call that
    ends past the deadline, and the rate counts every call over the time until the last
    thread stopped. One untimed call per thread first warms up.
    """
    for slot in range(threads):
        work(slot)
    clock: dict[str, float] = {}
    barrier = threading.Barrier(
        threads,
        action=lambda: clock.update(start=time.perf_counter(), faults=_minor_faults()),
    )

    def loop(slot: int) -> tuple[int, float]:
        barrier.wait()
        deadline = clock["start"] + seconds
        done = 0
        while True:
            work(slot + done * threads)
            done += 1
            if time.perf_counter() >= deadline:
                return done, time.perf_counter()

    with ThreadPoolExecutor(threads) as executor:
        futures = [executor.submit(loop, slot) for slot in range(threads)]
        results = [future.result() for future in futures]
    faults = _minor_faults() - clock["faults"]
    calls = sum(done for done, _ in results)
    seconds = max(end for _, end in results) - clock["start"]
    return _Timing(calls * PARAMS.segment_size / seconds, faults / calls)


@dataclass(frozen=True, slots=True)
class _Stage:
    key: str
    label: str
    work: Callable[[int], object]  # one segment's worth, on stage input i % STAGE_SEGMENTS
    processed: int  # bytes read per call


def _measure_stages(
    stages: Sequence[_Stage], threads: int, shape: RunShape
) -> tuple[StageFigure, ...]:
    figures = []
    for stage in stages:
        timing = _repeat_rate(stage.work, threads, shape.stage_seconds)
        figures.append(
            StageFigure(
                stage.key,
                stage.label,
                threads,
                timing.rate,
                timing.rate * stage.processed / PARAMS.segment_size,
                timing.faults_per_segment,
            )
        )
    return tuple(figures)


def _best_stages(trials: Sequence[tuple[StageFigure, ...]]) -> tuple[StageFigure, ...]:
    """Each stage's best figure over the trials."""
    return tuple(max(same, key=lambda figure: figure.rate) for same in zip(*trials, strict=True))


class _StageInputs:
    """The first segments' buffers, and the stages that work on them."""

    def __init__(self, blocks: Sequence[bytes], encoded: _EncodedFile) -> None:
        k, n = PARAMS.k, PARAMS.n
        self.manifest = encoded.manifest
        self.key = encoded.capability.file_key
        self.count = len(encoded.whole)
        self.plaintexts = [blocks[index % len(blocks)] for index in range(self.count)]
        self.chunks = [[chunk.data for chunk in segment.chunks] for segment in encoded.whole]
        self.block_size = len(self.chunks[0][0])
        self.ciphertext_size = PARAMS.segment_size + TAG_SIZE
        # The segment's ciphertext, exactly (the k blocks joined, zero tail cut off).
        self.ciphertexts = [b"".join(chunks[:k])[: self.ciphertext_size] for chunks in self.chunks]
        self.associated_data = [
            segment_associated_data(index, self.manifest.segment_count)
            for index in range(self.count)
        ]
        self.nonces = [
            segment_nonce(self.manifest.nonce_prefix, index) for index in range(self.count)
        ]
        self.outputs = [bytearray(self.block_size * k) for _ in range(self.count)]
        self.zfec_encoder = zfec.Encoder(k, n)
        self.zfec_decoder = zfec.Decoder(k, n)
        self.isal = load_isal()
        if self.isal is not None and not self.isal.agrees(k, n):
            self.isal = None

    def _input(self, call: int) -> int:
        return call % self.count

    def encrypt(self, call: int) -> None:
        index = self._input(call)
        encrypt_into(
            self.outputs[index],
            self.plaintexts[index],
            self.associated_data[index],
            self.nonces[index],
            self.key,
        )

    def decrypt(self, call: int) -> None:
        index = self._input(call)
        if not decrypt_into(
            self.outputs[index],
            self.ciphertexts[index],
            self.associated_data[index],
            self.nonces[index],
            self.key,
        ):
            raise BenchmarkError(f"segment {index}'s ciphertext does not decrypt")

    def zfec_encode(self, call: int) -> None:
        k, n = PARAMS.k, PARAMS.n
        self.zfec_encoder.encode(list(self.chunks[self._input(call)][:k]), list(range(k, n)))

    def isal_encode(self, call: int) -> None:
        k, n = PARAMS.k, PARAMS.n
        assert self.isal is not None
        self.isal(self.chunks[self._input(call)][:k], k, n)

    def zfec_decode(self, call: int) -> None:
        k, n = PARAMS.k, PARAMS.n
        # zfec reorders the lists it is given: fresh ones each time.
        self.zfec_decoder.decode(
            list(self.chunks[self._input(call)][n - k :]), list(range(n - k, n))
        )

    def hash_all(self, call: int) -> None:
        for data in self.chunks[self._input(call)]:
            blake3.blake3(data).digest()

    def hash_k(self, call: int) -> None:
        for data in self.chunks[self._input(call)][: PARAMS.k]:
            blake3.blake3(data).digest()

    def encode_stages(self, isal: bool = False) -> tuple[_Stage, ...]:
        """Encoding's stages, with zfec's parity or (`isal`) ISA-L's."""
        k, n = PARAMS.k, PARAMS.n
        parity = (
            _Stage(
                "isal_encode",
                f"ISA-L encode, {k} -> {n - k} parity",
                self.isal_encode,
                k * self.block_size,
            )
            if isal
            else _Stage(
                "zfec_encode",
                f"zfec encode, {k} -> {n - k} parity",
                self.zfec_encode,
                k * self.block_size,
            )
        )
        return (
            _Stage(
                "xchacha20poly1305_encrypt",
                "XChaCha20-Poly1305 encrypt",
                self.encrypt,
                PARAMS.segment_size,
            ),
            parity,
            _Stage("blake3_n_chunks", f"BLAKE3 of {n} chunks", self.hash_all, n * self.block_size),
        )

    def decode_stages(self) -> tuple[_Stage, ...]:
        """Decoding's stages from parity chunks; from data chunks, all but zfec's."""
        k = PARAMS.k
        return (
            _Stage("blake3_k_chunks", f"BLAKE3 of {k} chunks", self.hash_k, k * self.block_size),
            _Stage(
                "zfec_decode", f"zfec decode from {k} parity", self.zfec_decode, k * self.block_size
            ),
            _Stage(
                "xchacha20poly1305_decrypt",
                "XChaCha20-Poly1305 decrypt",
                self.decrypt,
                self.ciphertext_size,
            ),
        )


# ----------------------------------------------------------------- pipeline rows


def _time_encode(
    blocks: Sequence[bytes], shape: RunShape, threads: int, parity: Parity = zfec_parity
) -> _Timing:
    """Encode the whole file through `Encoder`, dropping each segment as it comes."""
    with ThreadPoolExecutor(threads) as executor:
        faults = _minor_faults()
        start = time.perf_counter()
        encoder = Encoder(
            _source(blocks, shape.file_size),
            random_bytes=os.urandom,
            size=shape.file_size,
            params=PARAMS,
            executor=executor,
            window=WINDOW,
            parity=parity,
        )
        deque(encoder.segments(), maxlen=0)
        encoder.manifest_bytes  # noqa: B018 (the manifest is part of encoding)
        seconds = time.perf_counter() - start
        faults = _minor_faults() - faults
    return _Timing(shape.file_size / seconds, faults / encoder.segment_count)


def _time_decode(
    encoded: _EncodedFile, from_parity: bool, shape: RunShape, threads: int
) -> _Timing:
    """Decode the whole file through `Decoder` from k data chunks or k parity chunks."""
    chunks = encoded.parity if from_parity else encoded.data
    with ThreadPoolExecutor(threads) as executor:
        faults = _minor_faults()
        start = time.perf_counter()
        decoder = Decoder(
            encoded.capability,
            encoded.manifest_bytes,
            chunks.__getitem__,
            executor=executor,
            window=WINDOW,
        )
        size = sum(len(block) for block in decoder.blocks())
        seconds = time.perf_counter() - start
        faults = _minor_faults() - faults
    if size != shape.file_size or decoder.rejected:
        raise BenchmarkError(
            f"decoding gave {size} bytes of {shape.file_size}, "
            f"{len(decoder.rejected)} chunks rejected"
        )
    return _Timing(shape.file_size / seconds, faults / len(chunks))


def _measure_encode(
    blocks: Sequence[bytes],
    inputs: _StageInputs,
    shape: RunShape,
    threads: int,
    isal: bool = False,
) -> PipelineFigure:
    """The encode row (with ISA-L's parity: `isal`): its stages alone, then the encoder,
    `shape.trials` times."""
    parity: Parity = zfec_parity
    if isal:
        assert inputs.isal is not None
        parity = inputs.isal
    stage_trials = []
    timings = []
    for _ in range(shape.trials):
        stage_trials.append(_measure_stages(inputs.encode_stages(isal), threads, shape))
        timings.append(_time_encode(blocks, shape, threads, parity))
    best = _best(timings)
    return PipelineFigure(
        "encode_isal" if isal else "encode",
        "encode, ISA-L" if isal else "encode",
        threads,
        best.rate,
        best.faults_per_segment,
        _best_stages(stage_trials),
    )


def _measure_decode(
    encoded: _EncodedFile, inputs: _StageInputs, shape: RunShape, threads: int
) -> tuple[PipelineFigure, PipelineFigure]:
    """The decode rows, from data and from parity chunks: the stages alone, then the
    decoder from each, `shape.trials` times."""
    stage_trials = []
    from_data = []
    from_parity = []
    for _ in range(shape.trials):
        stage_trials.append(_measure_stages(inputs.decode_stages(), threads, shape))
        from_data.append(_time_decode(encoded, False, shape, threads))
        from_parity.append(_time_decode(encoded, True, shape, threads))
    stages = _best_stages(stage_trials)
    without_zfec = tuple(stage for stage in stages if stage.key != "zfec_decode")
    data, parity = _best(from_data), _best(from_parity)
    return (
        PipelineFigure(
            "decode_data",
            "decode, k data",
            threads,
            data.rate,
            data.faults_per_segment,
            without_zfec,
        ),
        PipelineFigure(
            "decode_parity",
            "decode, k parity",
            threads,
            parity.rate,
            parity.faults_per_segment,
            stages,
        ),
    )


# ------------------------------------------------------------------ pyeclib


def _pyeclib() -> tuple[Any, str | None, str | None]:
    """pyeclib's isa-l driver and its description, or None and why there is none."""
    if importlib.util.find_spec("pyeclib") is None:
        return None, None, "pyeclib is not installed (pip install -e '.[bench]')"
    try:
        from pyeclib.ec_iface import ECDriver

        driver = ECDriver(k=PARAMS.k, m=PARAMS.n - PARAMS.k, ec_type=PYECLIB_BACKEND)
    except Exception as exc:  # an optional baseline: any failure only means it is missing
        return None, None, f"pyeclib has no working {PYECLIB_BACKEND} ({type(exc).__name__}: {exc})"
    return driver, f"pyeclib {importlib.metadata.version('pyeclib')} {PYECLIB_BACKEND}", None


class _PyeclibInputs:
    """The stage inputs' ciphertexts as pyeclib fragments, and its two stages."""

    def __init__(self, driver: Any, inputs: _StageInputs) -> None:
        k, n = PARAMS.k, PARAMS.n
        self.driver = driver
        self.inputs = inputs
        self.fragments = [driver.encode(ciphertext) for ciphertext in inputs.ciphertexts]
        for fragments, ciphertext in zip(self.fragments, inputs.ciphertexts, strict=True):
            if len(fragments) != n or driver.decode(fragments[n - k :]) != ciphertext:
                raise BenchmarkError("pyeclib does not give back what it encoded")

    def encode(self, call: int) -> None:
        self.driver.encode(self.inputs.ciphertexts[call % self.inputs.count])

    def decode_parity(self, call: int) -> None:
        k, n = PARAMS.k, PARAMS.n
        self.driver.decode(self.fragments[call % self.inputs.count][n - k :])


def _encode_segment_with_pyeclib(
    driver: Any,
    plaintext: bytes,
    index: int,
    segment_count: int,
    key: bytes,
    nonce_prefix: bytes,
) -> list[tuple[bytes, bytes]]:
    """`encode_segment` with pyeclib in place of zfec: (id, fragment) for n fragments."""
    buffer = bytearray(len(plaintext) + TAG_SIZE)
    encrypt_into(
        buffer,
        plaintext,
        segment_associated_data(index, segment_count),
        segment_nonce(nonce_prefix, index),
        key,
    )
    fragments: list[bytes] = driver.encode(bytes(buffer))
    return [(blake3.blake3(fragment).digest(), fragment) for fragment in fragments]


def _time_pyeclib_encode(
    driver: Any, blocks: Sequence[bytes], shape: RunShape, threads: int
) -> _Timing:
    """File bytes per second of the whole encode with pyeclib, through the same kind of
    executor and window as `Encoder` (submit, and wait for the oldest once `WINDOW` are
    in flight)."""
    count = shape.file_size // PARAMS.segment_size
    key = os.urandom(32)
    nonce_prefix = os.urandom(16)
    pending: deque[Future[list[tuple[bytes, bytes]]]] = deque()
    with ThreadPoolExecutor(threads) as executor:
        faults = _minor_faults()
        start = time.perf_counter()
        for index, plaintext in enumerate(_source(blocks, shape.file_size)):
            pending.append(
                executor.submit(
                    _encode_segment_with_pyeclib, driver, plaintext, index, count, key, nonce_prefix
                )
            )
            if len(pending) >= WINDOW:
                pending.popleft().result()
        while pending:
            pending.popleft().result()
        seconds = time.perf_counter() - start
        faults = _minor_faults() - faults
    return _Timing(shape.file_size / seconds, faults / count)


def _measure_pyeclib(
    driver: Any,
    blocks: Sequence[bytes],
    inputs: _StageInputs,
    shape: RunShape,
    stages: Sequence[StageFigure],
    pipelines: Sequence[PipelineFigure],
) -> tuple[BaselineFigure, ...]:
    k = PARAMS.k
    baseline_inputs = _PyeclibInputs(driver, inputs)
    figures = []

    def freehold(key: str, threads: int) -> float:
        figures: list[StageFigure | PipelineFigure] = [*stages, *pipelines]
        for figure in figures:
            if figure.key == key and figure.threads == threads:
                return figure.rate
        raise AssertionError(f"no {key} figure on {threads} threads")

    for threads in THREAD_COUNTS:
        rows: list[tuple[str, str, Callable[[], _Timing], str]] = [
            (
                "erasure_encode",
                "erasure encode alone",
                partial(_repeat_rate, baseline_inputs.encode, threads, shape.stage_seconds),
                "zfec_encode",
            ),
            (
                "erasure_decode_parity",
                f"erasure decode from {k} parity",
                partial(_repeat_rate, baseline_inputs.decode_parity, threads, shape.stage_seconds),
                "zfec_decode",
            ),
            (
                "whole_encode",
                "whole encode (encrypt, EC, BLAKE3)",
                partial(_time_pyeclib_encode, driver, blocks, shape, threads),
                "encode",
            ),
        ]
        trials = [[measure() for _, _, measure, _ in rows] for _ in range(shape.trials)]
        for (key, label, _, compared_with), timings in zip(
            rows, zip(*trials, strict=True), strict=True
        ):
            best = _best(timings)
            figures.append(
                BaselineFigure(
                    key,
                    label,
                    threads,
                    best.rate,
                    best.faults_per_segment,
                    compared_with,
                    freehold(compared_with, threads),
                )
            )
    return tuple(figures)


# ------------------------------------------------------------ one process's run


def _profile_inline(blocks: Sequence[bytes], encoded: _EncodedFile, shape: RunShape) -> str:
    """Where an encode and a decode from parity spend their time, with no executor (the
    profiler sees only the thread it runs on); the timed rows are not profiled."""
    profiler = cProfile.Profile()
    profiler.enable()
    encoder = Encoder(
        _source(blocks, shape.file_size), random_bytes=os.urandom, size=shape.file_size
    )
    deque(encoder.segments(), maxlen=0)
    decoder = Decoder(encoded.capability, encoded.manifest_bytes, encoded.parity.__getitem__)
    deque(decoder.blocks(), maxlen=0)
    profiler.disable()
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(PROFILE_LINES)
    return stream.getvalue().strip()


def _measure(malloc: MallocSetting, shape: RunShape, profile: bool) -> Measurements:
    if (
        shape.file_size % PARAMS.segment_size
        or shape.file_size < STAGE_SEGMENTS * PARAMS.segment_size
    ):
        raise BenchmarkError(
            f"the file size must be a whole number of segments, at least {STAGE_SEGMENTS} of them"
        )
    blocks = [os.urandom(PARAMS.segment_size) for _ in range(SOURCE_BLOCKS)]
    # Also the warm-up: zfec's matrices, the executor's code paths, the heap.
    encoded = _encode_and_keep(blocks, shape.file_size)
    inputs = _StageInputs(blocks, encoded)
    stages: list[StageFigure] = []
    pipelines: list[PipelineFigure] = []
    for threads in THREAD_COUNTS:
        encode = _measure_encode(blocks, inputs, shape, threads)
        stages += encode.stages
        pipelines.append(encode)
    if inputs.isal is not None:
        for threads in THREAD_COUNTS:
            encode = _measure_encode(blocks, inputs, shape, threads, isal=True)
            stages += [stage for stage in encode.stages if stage.key == "isal_encode"]
            pipelines.append(encode)
    for threads in THREAD_COUNTS:
        from_data, from_parity = _measure_decode(encoded, inputs, shape, threads)
        stages += from_parity.stages
        pipelines += (from_data, from_parity)
    driver, baseline_name, baseline_missing = _pyeclib()
    baseline: tuple[BaselineFigure, ...] = ()
    if driver is not None:
        baseline = _measure_pyeclib(driver, blocks, inputs, shape, stages, pipelines)
    return Measurements(
        malloc,
        tuple(pipelines),
        tuple(stages),
        baseline,
        baseline_name,
        baseline_missing,
        _profile_inline(blocks, encoded, shape) if profile else None,
    )


class _MallocUnavailable(Exception):
    """This C library has no mallopt, or refused the setting."""


def _apply_malloc(setting: MallocSetting) -> None:
    """Set the thresholds of `setting` in this process (process-wide, for good)."""
    if setting.mmap_threshold is None or setting.trim_threshold is None:
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        raise _MallocUnavailable("this C library has no mallopt (not glibc)") from None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    for parameter, value in (
        (M_MMAP_THRESHOLD, setting.mmap_threshold),
        (M_TRIM_THRESHOLD, setting.trim_threshold),
    ):
        if mallopt(parameter, value) != 1:
            raise _MallocUnavailable(f"mallopt({parameter}, {value}) was refused")


def _measure_in_process(
    pipe: Connection, malloc: MallocSetting, shape: RunShape, profile: bool
) -> None:
    """Process entry: set malloc up, measure everything, send the outcome back."""
    try:
        _apply_malloc(malloc)
        pipe.send(("measured", _measure(malloc, shape, profile)))
    except _MallocUnavailable as exc:
        pipe.send(("malloc_unavailable", str(exc)))
    except BenchmarkError as exc:
        pipe.send(("failed", str(exc)))
    finally:
        pipe.close()


def _measure_in_fresh_process(
    malloc: MallocSetting, shape: RunShape, profile: bool
) -> Measurements | str:
    """The measurements of a spawned process, or why its malloc setting is unavailable.

    A fresh process for each setting: mallopt is process-wide and cannot be undone, and
    each setting starts from a new heap. The process is gone when this returns.
    """
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(
        target=_measure_in_process, args=(sender, malloc, shape, profile), daemon=True
    )
    process.start()
    sender.close()
    try:
        try:
            outcome, value = receiver.recv()
        except (EOFError, OSError):
            process.join(5.0)
            raise BenchmarkError(
                f"the measuring process ({malloc.name} malloc) exited with code {process.exitcode}"
            ) from None
    finally:
        process.join(5.0)
        if process.is_alive():
            process.kill()
            process.join()
        receiver.close()
    if outcome == "failed":
        raise BenchmarkError(str(value))
    if outcome == "malloc_unavailable":
        return str(value)
    if not isinstance(value, Measurements):
        raise BenchmarkError(f"the measuring process sent {value!r:.60}")
    return value


# ------------------------------------------------------------------------- report


def _targets(measurements: Measurements) -> dict[tuple[str, int], tuple[float, str]]:
    """Each targeted row's target (file bytes per second) and where it comes from."""
    rows = {(figure.key, figure.threads): figure for figure in measurements.pipelines}
    targets: dict[tuple[str, int], tuple[float, str]] = {}
    encode_one = rows.get(("encode", 1))
    if encode_one is not None:
        targets["encode", 1] = (
            ENCODE_SHARE_OF_IDEAL * encode_one.ideal,
            f"{ENCODE_SHARE_OF_IDEAL:g} x ideal",
        )
        targets["encode", 2] = (
            ENCODE_TWO_THREAD_SPEEDUP * encode_one.rate,
            f"{ENCODE_TWO_THREAD_SPEEDUP:g} x 1 thread",
        )
    targets["decode_data", 1] = (DECODE_DATA_TARGET * 1e6, "fixed")
    return targets


def _mb(rate: float) -> float:
    return rate / 1e6


def _print_pipelines(results: Sequence[Measurements], quick: bool) -> list[dict[str, Any]]:
    header = (
        f"{'malloc':<8} {'row':<17} {'thr':>3} {'MB/s':>7} {'ideal':>7} {'ratio':>5}  "
        f"{'slowest stage alone':<28} {'MB/s':>7} {'ratio':>5} {'faults/seg':>10} "
        f"{'target':>7} {'(basis)':<16} result"
    )
    print(header)
    print("-" * len(header))
    records = []
    for measurements in results:
        targets = _targets(measurements)
        for figure in measurements.pipelines:
            slowest = figure.slowest
            target = targets.get((figure.key, figure.threads))
            met = None if target is None else figure.rate >= target[0]
            result = "-" if met is None else ("pass" if met else "miss")
            target_text = "-" if target is None else f"{_mb(target[0]):.0f}"
            basis = "" if target is None else f"({target[1]})"
            print(
                f"{measurements.malloc.name:<8} {figure.label:<17} {figure.threads:>3} "
                f"{_mb(figure.rate):>7.1f} {_mb(figure.ideal):>7.1f} "
                f"{figure.rate / figure.ideal:>5.2f}  {slowest.label:<28} "
                f"{_mb(slowest.rate):>7.1f} {figure.rate / slowest.rate:>5.2f} "
                f"{figure.faults_per_segment:>10.0f} {target_text:>7} {basis:<16} {result}"
            )
            records.append(
                {
                    "benchmark": "encoding",
                    "kind": "pipeline",
                    "malloc": measurements.malloc.name,
                    "metric": figure.key,
                    "threads": figure.threads,
                    "mb_per_s": round(_mb(figure.rate), 1),
                    "ideal_mb_per_s": round(_mb(figure.ideal), 1),
                    "ratio_to_ideal": round(figure.rate / figure.ideal, 3),
                    "stages": [stage.key for stage in figure.stages],
                    "slowest_stage": slowest.key,
                    "slowest_stage_mb_per_s": round(_mb(slowest.rate), 1),
                    "ratio_to_slowest": round(figure.rate / slowest.rate, 3),
                    "faults_per_segment": round(figure.faults_per_segment, 1),
                    "target_mb_per_s": None if target is None else round(_mb(target[0]), 1),
                    "target_basis": None if target is None else target[1],
                    "met": met,
                    "quick": quick,
                }
            )
    return records


def _print_stages(results: Sequence[Measurements], quick: bool) -> list[dict[str, Any]]:
    header = (
        f"{'malloc':<8} {'stage alone':<30} {'thr':>3} {'MB/s':>8} {'processed MB/s':>15} "
        f"{'faults/seg':>10}"
    )
    print(header)
    print("-" * len(header))
    records = []
    for measurements in results:
        for stage in measurements.stages:
            print(
                f"{measurements.malloc.name:<8} {stage.label:<30} {stage.threads:>3} "
                f"{_mb(stage.rate):>8.1f} {_mb(stage.processed_rate):>15.1f} "
                f"{stage.faults_per_segment:>10.0f}"
            )
            records.append(
                {
                    "benchmark": "encoding",
                    "kind": "stage",
                    "malloc": measurements.malloc.name,
                    "metric": stage.key,
                    "threads": stage.threads,
                    "mb_per_s": round(_mb(stage.rate), 1),
                    "processed_mb_per_s": round(_mb(stage.processed_rate), 1),
                    "faults_per_segment": round(stage.faults_per_segment, 1),
                    "quick": quick,
                }
            )
    return records


def _print_baseline(results: Sequence[Measurements], quick: bool) -> list[dict[str, Any]]:
    header = (
        f"{'malloc':<8} {'pyeclib':<36} {'thr':>3} {'MB/s':>8} {'Freehold counterpart':<22} "
        f"{'MB/s':>8} {'pyeclib/Freehold':>16} {'faults/seg':>10}"
    )
    print(header)
    print("-" * len(header))
    records = []
    for measurements in results:
        for figure in measurements.baseline:
            ratio = figure.rate / figure.freehold_rate
            print(
                f"{measurements.malloc.name:<8} {figure.label:<36} {figure.threads:>3} "
                f"{_mb(figure.rate):>8.1f} {figure.compared_with:<22} "
                f"{_mb(figure.freehold_rate):>8.1f} {ratio:>16.2f} "
                f"{figure.faults_per_segment:>10.0f}"
            )
            records.append(
                {
                    "benchmark": "encoding",
                    "kind": "baseline",
                    "malloc": measurements.malloc.name,
                    "metric": figure.key,
                    "threads": figure.threads,
                    "pyeclib_mb_per_s": round(_mb(figure.rate), 1),
                    "compared_with": figure.compared_with,
                    "freehold_mb_per_s": round(_mb(figure.freehold_rate), 1),
                    "faults_per_segment": round(figure.faults_per_segment, 1),
                    "ratio": round(ratio, 3),
                    "quick": quick,
                }
            )
    return records


def _pyeclib_verdicts(results: Sequence[Measurements]) -> dict[str, bool]:
    """Per malloc setting: does pyeclib's whole encode beat Freehold's on two threads?"""
    verdicts = {}
    for measurements in results:
        for figure in measurements.baseline:
            if figure.key == "whole_encode" and figure.threads == max(THREAD_COUNTS):
                verdicts[measurements.malloc.name] = figure.rate > figure.freehold_rate
    return verdicts


def _speedup(figures: Sequence[BaselineFigure], key: str) -> float | None:
    rates = {figure.threads: figure.rate for figure in figures if figure.key == key}
    if 1 not in rates or max(THREAD_COUNTS) not in rates:
        return None
    return rates[max(THREAD_COUNTS)] / rates[1]


def _busy(load: tuple[float, float]) -> bool:
    """Whether other processes likely took CPU time from the run."""
    return max(load) >= (os.cpu_count() or 1)


def _report(
    results: Sequence[Measurements],
    unavailable: dict[str, str],
    shape: RunShape,
    options: BenchmarkOptions,
    load: tuple[float, float],
) -> None:
    run = "quick run, rough figures" if options.quick else "full run"
    print(
        f"encoding: {shape.file_size // MIB} MiB file, k={PARAMS.k} n={PARAMS.n}, "
        f"{PARAMS.segment_size // MIB} MiB segments, window {WINDOW}, ThreadPoolExecutor of "
        f"{' and '.join(map(str, THREAD_COUNTS))} worker threads ({run})"
    )
    print(
        f"{os.cpu_count()} CPUs; load average (1 min) {load[0]:.2f} at start, {load[1]:.2f} "
        "at end (other processes lower the figures)"
    )
    if _busy(load):
        print(
            "WARNING: the load average reached the number of CPUs: other processes took CPU "
            "time from this run, so its MB/s are low (two threads' most); a row's ratios to "
            "its stages, measured moments apart, are less affected"
        )
    print("MB = 10**6 bytes; every MB/s is of file bytes unless it says 'processed'")
    for setting in MALLOC_SETTINGS:
        note = (
            f" -- NOT MEASURED: {unavailable[setting.name]}" if setting.name in unavailable else ""
        )
        print(f"malloc {setting.name}: {setting.describe()}{note}")
    print(
        "ideal = 1 / sum(1 / stage MB/s), stages alone on as many threads, measured just "
        "before the row; ratio = row / ideal, row / slowest stage"
    )
    for measurements in results:
        if measurements.profile is not None:
            print()
            print(
                f"== profile, no executor, {measurements.malloc.name} malloc (encode, then "
                "decode from parity):"
            )
            print(measurements.profile)
    print()
    records = _print_pipelines(results, options.quick)
    print()
    records += _print_stages(results, options.quick)
    print()
    baseline_names = {m.baseline_name for m in results if m.baseline_name is not None}
    missing = next((m.baseline_missing for m in results if m.baseline_missing is not None), None)
    verdicts = _pyeclib_verdicts(results)
    if missing is not None:
        print(f"baseline MISSING: {missing}; Freehold figures only")
    else:
        print(f"baseline: {', '.join(sorted(baseline_names))}, same k and n, same processes")
        records += _print_baseline(results, options.quick)
        print()
        for measurements in results:
            name = measurements.malloc.name
            whole = [f for f in measurements.baseline if f.key == "whole_encode"]
            two = next(f for f in whole if f.threads == max(THREAD_COUNTS))
            speedup = _speedup(measurements.baseline, "erasure_encode")
            speedup_text = (
                ""
                if speedup is None
                else (
                    f"; its erasure encode alone scales {speedup:.2f}x from 1 to "
                    f"{max(THREAD_COUNTS)} threads"
                )
            )
            print(
                f"pyeclib, {name} malloc, {max(THREAD_COUNTS)} threads: whole encode "
                f"{_mb(two.rate):.1f} MB/s vs Freehold {_mb(two.freehold_rate):.1f} MB/s: "
                f"{'pyeclib WINS' if verdicts[name] else 'Freehold (zfec) wins'}{speedup_text}"
            )
    print()
    for record in records:
        print(json.dumps(record))
    print(
        json.dumps(
            {
                "benchmark": "encoding",
                "kind": "summary",
                "file_bytes": shape.file_size,
                "k": PARAMS.k,
                "n": PARAMS.n,
                "segment_size": PARAMS.segment_size,
                "window": WINDOW,
                "threads": list(THREAD_COUNTS),
                "malloc": {m.malloc.name: m.malloc.describe() for m in results},
                "malloc_unavailable": unavailable or None,
                "baseline": ", ".join(sorted(baseline_names)) or None,
                "baseline_missing": missing,
                "pyeclib_wins_on_two_threads": verdicts or None,
                # Whether the "encode, ISA-L" rows are there (node/isal.py loaded).
                "isal": any(figure.key == "encode_isal" for m in results for figure in m.pipelines),
                "cpus": os.cpu_count(),
                "load_average_start": round(load[0], 2),
                "load_average_end": round(load[1], 2),
                "machine_busy": _busy(load),
                "quick": options.quick,
                "profiled": options.profile,
            }
        )
    )


def run_encoding_benchmark(options: BenchmarkOptions) -> None:
    """Measure under each malloc setting in its own process, then print the tables and
    the JSON lines."""
    shape = QUICK_RUN if options.quick else FULL_RUN
    load_start = os.getloadavg()[0]
    results: list[Measurements] = []
    unavailable: dict[str, str] = {}
    for setting in MALLOC_SETTINGS:
        # Profile once, in the default setting's process.
        outcome = _measure_in_fresh_process(
            setting, shape, options.profile and setting is DEFAULT_MALLOC
        )
        if isinstance(outcome, str):
            unavailable[setting.name] = outcome
        else:
            results.append(outcome)
    _report(results, unavailable, shape, options, (load_start, os.getloadavg()[0]))
