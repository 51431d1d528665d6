"""Whole files to chunks and back, streaming: docs/PROTOCOL.md#files.

Two layers, one pipeline:

- **Push-style, sans-I/O** (as h11 takes bytes in and gives events out):
  `FileEncoder` takes the file's bytes as they come (`receive_data`, or `writable()` and
  `advance()` to read straight into its buffer) and gives out each segment's plaintext,
  Padme zeros included, as soon as its bytes are in (`next_plaintext`). Encrypting and
  erasure-coding a segment is `encode()`, a pure function safe to run in any thread;
  `record()` takes the encoded segments back in order, and the manifest follows the last.
  `FileDecoder` opens the manifest with the key and turns any k valid chunks of a
  segment into that segment's bytes of the file (`decode()`, pure, any thread, any
  order), the padding cut off. A driver decides where the bytes come from, which thread
  does the work and how many segments are in flight: node/files does it with trio.
- **Pull-style**, for callers with everything at hand (tests, benchmarks, the vectors, a
  script): `Encoder` reads a bytes object, a file object or an iterable of blocks through
  a `FileEncoder`, and `Decoder` pulls candidates from a `fetch(index)` callable through
  a `FileDecoder`; either may run segments on an executor, a window of them at a time.

What it promises:

- Memory stays bounded by a few segments, whatever the file size: a `FileEncoder` holds
  one plaintext buffer being filled, plus the chunk ids (32 * n bytes per segment);
  `Encoder` and `Decoder` hold at most `window` segments in flight (one without an
  executor).
- Never wrong output: every chunk's hash is checked before use (`decode_segment`), a
  source that gives more or fewer bytes than its declared size raises
  `LocalProtocolError`, and nothing of a segment is output before its tag is checked.
- Sans-I/O: no clock and no ambient randomness. The file key and nonce prefix come from
  a `random_bytes` callable; a source is read only through the object the caller hands
  over.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import chain, islice
from typing import Any, Final, Protocol, TypeVar

from protocol.aead import KEY_SIZE, BytesLike
from protocol.capability import ReadCapability
from protocol.encoding import (
    Candidate,
    DecodedSegment,
    EncodedSegment,
    Parity,
    decode_segment,
    encode_segment,
    zfec_parity,
)
from protocol.errors import ChunkRejected, LocalProtocolError, NotEnoughChunks
from protocol.identity import RandomBytes
from protocol.manifest import (
    MAX_MANIFEST_SIZE,
    NONCE_PREFIX_SIZE,
    EncodingParams,
    FileInfo,
    Manifest,
    padme,
)
from protocol.manifest_index import MANIFEST_PART_SIZE, StoredManifest, store_manifest

__all__ = [
    "DEFAULT_WINDOW",
    "Decoder",
    "Encoder",
    "Executor",
    "Fetch",
    "FileDecoder",
    "FileEncoder",
    "ReadableFile",
    "SegmentPlaintext",
    "Source",
    "SupportsResult",
    "fill_from",
]

DEFAULT_WINDOW: Final = 4
"""Segments in flight at once when an executor is given."""

_READ_SIZE: Final = 1024 * 1024
_SEEK_END: Final = 2  # io.SEEK_END

_T = TypeVar("_T")
_T_co = TypeVar("_T_co", covariant=True)


class SupportsResult(Protocol[_T_co]):
    """What `Executor.submit` returns: `result()` waits, and returns or raises."""

    def result(self) -> _T_co: ...


class Executor(Protocol):
    """Runs `fn(*args)` somewhere, e.g. `concurrent.futures.ThreadPoolExecutor`."""

    def submit(self, fn: Callable[..., _T], /, *args: Any) -> SupportsResult[_T]: ...


class ReadableFile(Protocol):
    """A binary file object. `readinto`, `seekable`, `seek` and `tell` are used when
    present: a seekable file needs no declared size."""

    def read(self, size: int = ..., /) -> bytes: ...


Source = BytesLike | ReadableFile | Iterable[BytesLike]
"""What `Encoder` reads: one bytes-like object, a binary file object, or an iterable of
bytes-like blocks of any sizes (which needs `size=`)."""

Fetch = Callable[[int], Iterable[Candidate]]
"""`fetch(segment_index)`: that segment's candidate chunks, pulled lazily, only as many
as decoding needs (k, and one more for each that fails)."""


@dataclass(frozen=True, slots=True)
class SegmentPlaintext:
    """Segment `index`'s bytes, Padme zeros included, ready to be encoded."""

    index: int
    data: BytesLike


def _draw(random_bytes: RandomBytes, size: int, what: str) -> bytes:
    value = random_bytes(size)
    if type(value) is not bytes or len(value) != size:
        raise LocalProtocolError(f"random_bytes({size}) for the {what} gave {value!r:.40}")
    return value


def _view(block: Any) -> memoryview:
    try:
        view = memoryview(block)
    except TypeError:
        raise LocalProtocolError(
            f"source blocks must be bytes-like, got {type(block).__name__}"
        ) from None
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


# ----------------------------------------------------------------- push: encoding


class FileEncoder:
    """Encodes one file of `size` bytes, pushed in as it comes (see the module header).

    The file key (32 bytes) and nonce prefix (16 bytes) are drawn from `random_bytes`,
    in that order, when the encoder is made. The size must be known before the first
    segment is encrypted (every segment's associated data binds the segment count).

    Bytes go in through `receive_data` (copied into the segment being filled; a whole
    segment inside one immutable `bytes` block is taken without a copy) or, with no
    copy, by filling `writable()` and calling `advance()`. `next_plaintext()` gives each
    segment whose bytes are all in, in order, then the segments of padding alone once
    the last byte is in. `end_of_data()` says the source ended: it raises if bytes are
    missing, as `receive_data` does if there are too many.
    """

    def __init__(
        self,
        *,
        size: int,
        random_bytes: RandomBytes,
        name: str = "",
        params: EncodingParams | None = None,
        parity: Parity = zfec_parity,
        manifest_part_size: int = MANIFEST_PART_SIZE,
    ) -> None:
        params = EncodingParams() if params is None else params
        if type(params) is not EncodingParams:
            raise LocalProtocolError("params must be EncodingParams")
        if type(size) is not int or size < 0:
            raise LocalProtocolError(f"size must be a non-negative int, got {size!r}")
        self.params = params
        self.info = FileInfo(name, size)
        self.padded_size = padme(size)
        self.segment_count = params.segment_count(self.padded_size)
        bound = params.manifest_size_bound(self.padded_size)
        if bound > MAX_MANIFEST_SIZE:
            raise LocalProtocolError(
                f"a file of {size} bytes needs a manifest of about {bound} bytes, "
                f"more than {MAX_MANIFEST_SIZE}: use a larger segment size"
            )
        self._parity = parity
        self._part_size = manifest_part_size
        self._key = _draw(random_bytes, KEY_SIZE, "file key")
        self._nonce_prefix = _draw(random_bytes, NONCE_PREFIX_SIZE, "nonce prefix")
        self._received = 0
        # The segment being filled: its index, buffer and how many file bytes it holds.
        self._index = 0
        self._buffer: bytearray | None = None
        self._filled = 0
        self._ready: deque[SegmentPlaintext] = deque()
        self._zeros = b""
        self._ids = bytearray()
        self._recorded = 0
        self._manifest: Manifest | None = None
        self._manifest_bytes = b""
        self._stored: StoredManifest | None = None

    # -- bytes in ---------------------------------------------------------------------

    @property
    def remaining(self) -> int:
        """File bytes not received yet."""
        return self.info.size - self._received

    def _segment_length(self, index: int) -> int:
        return min(self.params.segment_size, self.padded_size - index * self.params.segment_size)

    def _file_bytes(self, index: int) -> int:
        """How many of segment `index`'s bytes are the file's (the rest is padding)."""
        start = index * self.params.segment_size
        return max(0, min(self._segment_length(index), self.info.size - start))

    def writable(self) -> memoryview:
        """Where the next file bytes go: the unfilled part of the segment being filled,
        ending where the file's bytes in it end (empty once every byte is in). Fill a
        prefix of it and call `advance(count)`."""
        if not self.remaining:
            return memoryview(b"")
        if self._buffer is None:
            self._buffer = bytearray(self._segment_length(self._index))
        return memoryview(self._buffer)[self._filled : self._file_bytes(self._index)]

    def advance(self, count: int) -> None:
        """`count` bytes were written at the start of `writable()`."""
        if type(count) is not int or not 0 <= count <= self._file_bytes(self._index) - self._filled:
            raise LocalProtocolError(f"advance({count!r}) is beyond what writable() gave")
        if count and self._buffer is None:
            raise LocalProtocolError("advance() before writable(): no byte was written")
        self._filled += count
        self._received += count
        if self._filled == self._file_bytes(self._index) and self._buffer is not None:
            self._ready.append(SegmentPlaintext(self._index, self._buffer))
            self._buffer = None
            self._filled = 0
            self._index += 1

    def receive_data(self, data: BytesLike) -> None:
        """The file's next bytes; `LocalProtocolError` past the declared size."""
        view = _view(data)
        if view.nbytes > self.remaining:
            raise LocalProtocolError(
                f"the source gave more than the {self.info.size} bytes declared"
            )
        length = self.params.segment_size
        while view.nbytes:
            if (
                self._filled == 0
                and self._file_bytes(self._index) == length <= view.nbytes
                and type(view.obj) is bytes
            ):
                # A whole segment inside an immutable block: taken as it is, no copy
                # (and any buffer writable() made for it is let go).
                self._buffer = None
                self._ready.append(SegmentPlaintext(self._index, view[:length]))
                self._index += 1
                self._received += length
                view = view[length:]
                continue
            target = self.writable()
            step = min(target.nbytes, view.nbytes)
            target[:step] = view[:step]
            target.release()
            self.advance(step)
            view = view[step:]

    def end_of_data(self) -> None:
        """The source has ended; `LocalProtocolError` if it gave too few bytes."""
        if self.remaining:
            raise LocalProtocolError(
                f"the source ended after {self._received} bytes; {self.info.size} were declared"
            )
        if self.segment_count == 0 and self._manifest is None:
            self._finish()  # an empty file has no segment: its manifest is ready now

    def next_plaintext(self) -> SegmentPlaintext | None:
        """The next segment to encode, in order, or None until more bytes come (or, once
        every segment was given, for good)."""
        if self._ready:
            return self._ready.popleft()
        if self.remaining or self._index >= self.segment_count:
            return None
        # Every file byte is in: the rest are segments of padding alone, which share one
        # zero buffer (never written).
        length = self._segment_length(self._index)
        if len(self._zeros) < length:
            self._zeros = bytes(self.params.segment_size)
        plaintext = SegmentPlaintext(self._index, memoryview(self._zeros)[:length])
        self._index += 1
        return plaintext

    # -- segments out -----------------------------------------------------------------

    def encode(self, plaintext: SegmentPlaintext) -> EncodedSegment:
        """Encrypt and erasure-code one segment: pure, and safe in any thread."""
        return encode_segment(
            plaintext.data,
            plaintext.index,
            segment_count=self.segment_count,
            key=self._key,
            nonce_prefix=self._nonce_prefix,
            params=self.params,
            parity=self._parity,
        )

    def record(self, segment: EncodedSegment) -> None:
        """Take segment `segment.index`'s chunk ids into the manifest; segments must come
        in order, each once. The manifest is made when the last one comes."""
        if segment.index != self._recorded:
            raise LocalProtocolError(
                f"segment {segment.index} recorded, segment {self._recorded} expected"
            )
        self._ids += b"".join(chunk.chunk_id for chunk in segment.chunks)
        self._recorded += 1
        if self._recorded == self.segment_count:
            self._finish()

    def _finish(self) -> None:
        sealed = self.info.seal(self._key, self._nonce_prefix)
        manifest = Manifest(
            self.params, self.padded_size, self._nonce_prefix, bytes(self._ids), sealed
        )
        self._manifest_bytes = manifest.encode()
        self._stored = store_manifest(self._manifest_bytes, self._part_size)
        self._manifest = manifest
        self._ids = bytearray()

    @property
    def done(self) -> bool:
        """Whether every segment has been recorded (and, for an empty file, the end of
        the data seen): the manifest is ready."""
        return self._manifest is not None

    def _finished(self) -> Manifest:
        if self._manifest is None:
            raise LocalProtocolError(
                "the manifest is ready once every segment is recorded (segments() exhausted)"
            )
        return self._manifest

    @property
    def manifest(self) -> Manifest:
        """The parsed manifest; LocalProtocolError until every segment is recorded."""
        return self._finished()

    @property
    def manifest_bytes(self) -> bytes:
        """The manifest's bytes, as stored."""
        self._finished()
        return self._manifest_bytes

    @property
    def stored_manifest(self) -> StoredManifest:
        """The chunks that store the manifest: itself, or its parts and an index
        (protocol/manifest_index.py), and the id that names it."""
        self._finished()
        assert self._stored is not None
        return self._stored

    @property
    def manifest_id(self) -> bytes:
        """The id the capability names: BLAKE3-256 of `manifest_bytes`, or of the
        manifest index when the manifest is stored in parts."""
        return self.stored_manifest.root_id

    @property
    def read_capability(self) -> ReadCapability:
        """`freehold:<manifest id>#<file key>`: keep it secret, it reads the file."""
        return ReadCapability(self.manifest_id, self._key)


# ----------------------------------------------------------------- push: decoding


class FileDecoder:
    """Decodes one file: the manifest is checked and its sealed info opened when the
    decoder is made (`TamperedManifest`, `WrongKey`), then `decode(index, candidates)`
    gives segment `index`'s bytes of the file for any `index` below `segments_to_read`,
    in any order and any thread. Segments that hold only Padme zeros are never read."""

    def __init__(self, capability: ReadCapability, manifest: Manifest | BytesLike) -> None:
        if type(capability) is not ReadCapability:
            raise LocalProtocolError("decoding needs a ReadCapability")
        if not isinstance(manifest, Manifest):
            manifest = Manifest.parse(manifest, capability.manifest_id)
        self.manifest = manifest
        self.info = manifest.unseal(capability.file_key)
        self._key = capability.file_key
        segment_size = manifest.params.segment_size
        self.segments_to_read = -(-self.info.size // segment_size)
        """Segments with file bytes in them: 0..segments_to_read-1."""

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def size(self) -> int:
        return self.info.size

    def decode(
        self, index: int, candidates: Iterable[Candidate], *, verified: bool = False
    ) -> DecodedSegment:
        """Segment `index` from the first k valid `candidates`, cut where the file ends;
        pure, thread-safe. Raises as `decode_segment` does (`verified` as there)."""
        if type(index) is not int or not 0 <= index < self.segments_to_read:
            raise LocalProtocolError(
                f"segment {index!r} is not one with file bytes (0..{self.segments_to_read - 1})"
            )
        decoded = decode_segment(self.manifest, self._key, index, candidates, verified=verified)
        keep = self.info.size - index * self.manifest.params.segment_size
        if keep >= decoded.plaintext.nbytes:
            return decoded
        return DecodedSegment(index, decoded.plaintext[:keep], decoded.rejected)


# -------------------------------------------------------------------- pull: sources


def _source_size(source: Source, declared: int | None) -> int:
    """The number of bytes `source` will give: `declared`, or found without reading."""
    if declared is not None:
        if type(declared) is not int or declared < 0:
            raise LocalProtocolError(f"size must be a non-negative int, got {declared!r}")
        if isinstance(source, bytes | bytearray | memoryview) and declared != len(_view(source)):
            raise LocalProtocolError(
                f"size={declared} was declared for a source of {len(_view(source))} bytes"
            )
        return declared
    if isinstance(source, bytes | bytearray | memoryview):
        return _view(source).nbytes
    if hasattr(source, "read"):
        file: Any = source
        seekable = getattr(file, "seekable", None)
        if seekable is not None and seekable():
            start: int = file.tell()
            end: int = file.seek(0, _SEEK_END)
            file.seek(start)
            return max(end - start, 0)
        raise LocalProtocolError("this file object cannot seek, so its size is unknown: pass size=")
    raise LocalProtocolError(
        "an iterable of blocks needs size=: the size is padded and bound into every "
        "segment before the first is encrypted"
    )


def _blocks_of(source: Source) -> Iterator[memoryview]:
    """The source as a stream of byte views, read only as needed."""
    if isinstance(source, bytes | bytearray | memoryview):
        yield _view(source)
        return
    if hasattr(source, "read"):
        file: Any = source
        while True:
            data = file.read(_READ_SIZE)
            if data is None:
                raise LocalProtocolError("the file is non-blocking and had no data ready")
            if not data:
                return
            yield _view(data)
    for block in source:
        yield _view(block)


def fill_from(encoder: FileEncoder, file: Any) -> None:
    """Read the segment `encoder` is filling straight into its buffer from a file object
    with `readinto` (no copy), until that segment is ready. Past the file's last byte,
    checks that the file ends there. `LocalProtocolError` if it ends early or goes on.
    Blocking: run it where blocking is fine."""
    target = encoder.writable()
    while target.nbytes:
        got = file.readinto(target)
        if got is None:
            raise LocalProtocolError("the file is non-blocking and had no data ready")
        if got == 0:
            encoder.end_of_data()  # raises: bytes are missing
        target = target[got:]
        encoder.advance(got)
    if not encoder.remaining and file.readinto(bytearray(1)):
        raise LocalProtocolError(
            f"the source gave more than the {encoder.info.size} bytes declared"
        )


def _plaintexts(encoder: FileEncoder, source: Source) -> Iterator[SegmentPlaintext]:
    """Push `source` through `encoder`, yielding each segment as soon as it is ready."""
    if hasattr(source, "read") and hasattr(source, "readinto"):
        while True:
            fill_from(encoder, source)
            while (plaintext := encoder.next_plaintext()) is not None:
                yield plaintext
            if not encoder.remaining:
                break
    else:
        for view in _blocks_of(source):
            encoder.receive_data(view)
            while (plaintext := encoder.next_plaintext()) is not None:
                yield plaintext
    encoder.end_of_data()
    while (plaintext := encoder.next_plaintext()) is not None:
        yield plaintext


def _check_window(executor: Executor | None, window: int) -> None:
    if type(window) is not int or window < 1:
        raise LocalProtocolError(f"window must be an int >= 1, got {window!r}")
    if executor is not None and not callable(getattr(executor, "submit", None)):
        raise LocalProtocolError("executor must have a submit(fn, *args) method")


# ----------------------------------------------------------------- pull: encoding


class Encoder:
    """Encodes one file from a source: iterate `segments()` once, then read `manifest`,
    `manifest_bytes`, `manifest_id` and `read_capability`.

    `source` is a bytes-like object, a seekable file object (its size is what remains
    after its current position), or any other file object or iterable of blocks with
    `size=`. A source that turns out shorter or longer than its size raises
    `LocalProtocolError`. The rest is `FileEncoder`'s: the key and nonce prefix are drawn
    from `random_bytes` when the encoder is made, and `parity` computes the parity
    blocks (zfec by default, or anything that gives zfec's bytes faster: node/isal.py).

    With an `executor`, up to `window` segments are encoded at once in its workers; the
    source is still read, and segments still yielded, in order on the caller's thread.
    """

    def __init__(
        self,
        source: Source,
        *,
        random_bytes: RandomBytes,
        size: int | None = None,
        name: str = "",
        params: EncodingParams | None = None,
        executor: Executor | None = None,
        window: int = DEFAULT_WINDOW,
        parity: Parity = zfec_parity,
        manifest_part_size: int = MANIFEST_PART_SIZE,
    ) -> None:
        _check_window(executor, window)
        self._file = FileEncoder(
            size=_source_size(source, size),
            random_bytes=random_bytes,
            name=name,
            params=params,
            parity=parity,
            manifest_part_size=manifest_part_size,
        )
        self.params = self._file.params
        self.info = self._file.info
        self.padded_size = self._file.padded_size
        self.segment_count = self._file.segment_count
        self._source = source
        self._executor = executor
        self._window = window
        self._started = False

    def segments(self) -> Iterator[EncodedSegment]:
        """Each segment's n chunks, in order; once only."""
        if self._started:
            raise LocalProtocolError("segments() can be iterated only once")
        self._started = True
        return self._run()

    def _run(self) -> Iterator[EncodedSegment]:
        file = self._file
        executor = self._executor
        pending: deque[SupportsResult[EncodedSegment]] = deque()
        for plaintext in _plaintexts(file, self._source):
            if executor is None:
                segment = file.encode(plaintext)
            else:
                pending.append(executor.submit(file.encode, plaintext))
                if len(pending) < self._window:
                    continue
                segment = pending.popleft().result()
            del plaintext
            file.record(segment)
            yield segment
            del segment
        while pending:
            segment = pending.popleft().result()
            file.record(segment)
            yield segment
            del segment

    @property
    def manifest(self) -> Manifest:
        """The parsed manifest; LocalProtocolError until `segments()` is exhausted."""
        return self._file.manifest

    @property
    def manifest_bytes(self) -> bytes:
        """The manifest's bytes, as stored."""
        return self._file.manifest_bytes

    @property
    def stored_manifest(self) -> StoredManifest:
        """The chunks that store the manifest, and the id that names it."""
        return self._file.stored_manifest

    @property
    def manifest_id(self) -> bytes:
        """The id the capability names (FileEncoder.manifest_id)."""
        return self._file.manifest_id

    @property
    def read_capability(self) -> ReadCapability:
        """`freehold:<manifest id>#<file key>`: keep it secret, it reads the file."""
        return self._file.read_capability


# ----------------------------------------------------------------- pull: decoding


class Decoder:
    """Decodes one file from a `fetch(index)` callable: the manifest is checked and its
    sealed info opened when the decoder is made, then `blocks()` yields the plaintext in
    order.

    `fetch(segment_index)` gives that segment's candidate chunks as (id, bytes) pairs; it
    is called once per segment, in order and on the caller's thread (up to `window`
    segments ahead of the one being yielded when there is an executor), and its iterable
    is consumed lazily: k at first, and one more for each that is rejected. Rejected
    chunks are appended to `rejected` and passed to `on_reject` as they are found.
    Segments that hold only Padme zeros are never fetched.

    Raises `TamperedManifest` or `WrongKey` when made; `blocks()` raises
    `NotEnoughChunks` when a segment's candidates run out, and `CorruptSegment` if one
    does not decrypt.
    """

    def __init__(
        self,
        capability: ReadCapability,
        manifest: BytesLike,
        fetch: Fetch,
        *,
        on_reject: Callable[[ChunkRejected], None] | None = None,
        executor: Executor | None = None,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        _check_window(executor, window)
        self._file = FileDecoder(capability, manifest)
        self.manifest = self._file.manifest
        self.info = self._file.info
        self.rejected: list[ChunkRejected] = []
        self._fetch = fetch
        self._on_reject = on_reject
        self._executor = executor
        self._window = window
        self._started = False

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def size(self) -> int:
        return self.info.size

    def blocks(self) -> Iterator[memoryview]:
        """The file's bytes, one segment at a time, padding removed; once only."""
        if self._started:
            raise LocalProtocolError("blocks() can be iterated only once")
        self._started = True
        return self._run()

    def _report(self, rejected: Iterable[ChunkRejected]) -> None:
        for chunk in rejected:
            self.rejected.append(chunk)
            if self._on_reject is not None:
                self._on_reject(chunk)

    def _run(self) -> Iterator[memoryview]:
        file = self._file
        k = file.manifest.params.k
        count = file.segments_to_read
        executor = self._executor
        window = 1 if executor is None else self._window
        pending: deque[tuple[int, Iterator[Candidate], list[Candidate], Any]] = deque()
        next_index = 0
        while next_index < count or pending:
            while next_index < count and len(pending) < window:
                candidates = iter(self._fetch(next_index))
                first = list(islice(candidates, k))
                job = None if executor is None else executor.submit(file.decode, next_index, first)
                pending.append((next_index, candidates, first, job))
                next_index += 1
            index, candidates, first, job = pending.popleft()
            try:
                decoded = file.decode(index, first) if job is None else job.result()
            except NotEnoughChunks:
                decoded = self._retry(index, first, candidates)
            del job, first
            self._report(decoded.rejected)
            plaintext = decoded.plaintext
            del decoded
            yield plaintext
            del plaintext

    def _retry(
        self, index: int, first: list[Candidate], rest: Iterator[Candidate]
    ) -> DecodedSegment:
        """The first k candidates were not enough: start again on this thread, pulling
        one more for each rejected, so that every rejection is found and reported once.
        (The first candidates are hashed again; this path is taken only on failure.)"""
        try:
            return self._file.decode(index, chain(first, rest))
        except NotEnoughChunks as exc:
            self._report(exc.rejected)
            raise
