"""Files to chunks and back: the streaming encoder and decoder of docs/PROTOCOL.md#files.

Encoding a file: its size is padded to a Padme bucket with zeros, the result is cut into
segments, each segment is encrypted with XChaCha20-Poly1305 under the file key (nonce
and associated data from protocol/manifest.py), zero-padded to a multiple of k and cut
into k blocks, and zfec adds n - k parity blocks. Each block is a chunk named by its
BLAKE3-256 hash. The manifest lists every chunk id; the read capability names the
manifest and carries the key. Decoding verifies each chunk against the manifest before
use, rebuilds each segment from any k of its chunks, decrypts it and drops the padding.

What it promises:

- Memory stays bounded by a few segments, whatever the file size: `Encoder` and
  `Decoder` hold at most `window` segments in flight (one without an executor), plus
  the manifest's chunk ids (32 * n bytes per segment).
- The heavy work of one segment is one pure function, `encode_segment`,
  `decode_segment` or `rebuild_chunks`, which only calls libsodium, zfec and BLAKE3 on
  whole buffers (all three release the GIL) and shares no state: safe to run in worker
  threads. Given an executor (anything with `submit(fn, *args)` returning an object with
  `result()`, such as a ThreadPoolExecutor), `Encoder` and `Decoder` run them there and
  still yield in order; everything else, including reading the source and calling
  `fetch`, stays on the caller's thread.
- Never wrong output. Every chunk's hash is checked before use; a chunk that fails is
  reported (`CorruptChunk`, `ForeignChunk`, both carrying its id) and another is taken;
  a segment with fewer than k valid chunks raises `NotEnoughChunks`; a manifest that does
  not match its id, `TamperedManifest`; a key that does not fit, `WrongKey`.
- Sans-I/O: no clock and no ambient randomness. The file key and nonce prefix come from
  a `random_bytes` callable; a source is read only through the file object or iterable
  the caller hands over.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain, islice
from typing import Any, Final, NamedTuple, Protocol, TypeVar

import zfec

from protocol.aead import KEY_SIZE, TAG_SIZE, BytesLike, decrypt_into, encrypt_into
from protocol.capability import ReadCapability
from protocol.chunk import chunk_id
from protocol.errors import (
    ChunkRejected,
    CorruptChunk,
    CorruptSegment,
    ForeignChunk,
    LocalProtocolError,
    NotEnoughChunks,
)
from protocol.identity import RandomBytes
from protocol.manifest import (
    MAX_MANIFEST_SIZE,
    NONCE_PREFIX_SIZE,
    EncodingParams,
    FileInfo,
    Manifest,
    padme,
    segment_associated_data,
    segment_nonce,
)

__all__ = [
    "DEFAULT_WINDOW",
    "Candidate",
    "Chunk",
    "DecodedSegment",
    "Decoder",
    "EncodedSegment",
    "Encoder",
    "Executor",
    "Fetch",
    "ReadableFile",
    "RebuiltChunks",
    "Source",
    "SupportsResult",
    "decode_segment",
    "encode_segment",
    "rebuild_chunks",
]

DEFAULT_WINDOW: Final = 4
"""Segments in flight at once when an executor is given."""

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


class Chunk(NamedTuple):
    """A block of an encoded segment and its id, BLAKE3-256 of the block."""

    chunk_id: bytes
    data: bytes


Candidate = tuple[bytes, BytesLike]
"""A chunk offered to a decoder: (the id it is offered under, its bytes)."""

Fetch = Callable[[int], Iterable[Candidate]]
"""`fetch(segment_index)`: that segment's candidate chunks, pulled lazily, only as many
as decoding needs (k, and one more for each that fails)."""


@dataclass(frozen=True, slots=True)
class EncodedSegment:
    """Segment `index` of a file: its n chunks, by block number (data blocks first)."""

    index: int
    chunks: tuple[Chunk, ...]


@dataclass(frozen=True, slots=True)
class DecodedSegment:
    """Segment `index`'s plaintext (Padme zeros included), and the chunks turned down on
    the way. The plaintext is a read-only view of the buffer it was decrypted in: not
    copied out (4 MiB a segment)."""

    index: int
    plaintext: memoryview
    rejected: tuple[ChunkRejected, ...]


@dataclass(frozen=True, slots=True)
class RebuiltChunks:
    """Chunks of segment `index` made again from k others, and the chunks turned down."""

    index: int
    chunks: tuple[Chunk, ...]
    rejected: tuple[ChunkRejected, ...]


def _nbytes(data: BytesLike) -> int:
    return data.nbytes if type(data) is memoryview else len(data)


# zfec's encoder and decoder only read their matrices once built: shared by all threads.
@functools.cache
def _zfec_encoder(k: int, n: int) -> Any:
    return zfec.Encoder(k, n)


@functools.cache
def _zfec_decoder(k: int, n: int) -> Any:
    return zfec.Decoder(k, n)


Parity = Callable[[Sequence[bytes], int, int], Sequence[bytes]]
"""`parity(blocks, k, n)`: the n - k parity blocks (block numbers k..n-1) of zfec's code
for the k data `blocks`, all of one length. Whatever computes them must give zfec's bytes
(docs/PROTOCOL.md#chunks): chunk ids are their hashes. Called from worker threads."""


def zfec_parity(blocks: Sequence[bytes], k: int, n: int) -> list[bytes]:
    """The parity blocks, by zfec itself: the reference `Parity`."""
    return list(_zfec_encoder(k, n).encode(list(blocks), list(range(k, n))))


@functools.cache
def parity_matrix(k: int, n: int) -> bytes:
    """The parity rows of zfec's encoding matrix E (docs/PROTOCOL.md#chunks), row-major:
    byte `i * k + j` is E[k + i][j], the weight of data block j in parity block k + i.

    Read off zfec itself, by encoding one-byte blocks that are 1 in block j and 0
    elsewhere, so another GF(2^8) coder given this matrix computes zfec's code.
    """
    columns = [zfec_parity([bytes([row == j]) for row in range(k)], k, n) for j in range(k)]
    return bytes(columns[j][i][0] for i in range(n - k) for j in range(k))


# ------------------------------------------------------------------- one segment


def encode_segment(
    plaintext: BytesLike,
    index: int,
    *,
    segment_count: int,
    key: bytes,
    nonce_prefix: bytes,
    params: EncodingParams,
    parity: Parity = zfec_parity,
) -> EncodedSegment:
    """Encrypt and erasure-code segment `index` of `segment_count`; pure, thread-safe.

    `plaintext` is the segment's bytes, Padme zeros included: `params.segment_size`
    bytes, fewer (at least 1) only for the last segment. It is not kept. `parity`
    computes the parity blocks (zfec by default).
    """
    size = _nbytes(plaintext)
    if type(index) is not int or not 0 <= index < segment_count:
        raise LocalProtocolError(f"segment index {index!r} is outside 0..{segment_count - 1}")
    last = index == segment_count - 1
    if not (1 <= size <= params.segment_size if last else size == params.segment_size):
        raise LocalProtocolError(
            f"segment {index} of {segment_count} has {size} bytes; every segment but the "
            f"last has {params.segment_size}, the last 1..{params.segment_size}"
        )
    k, n = params.k, params.n
    ciphertext_size = size + TAG_SIZE
    block_size = -(-ciphertext_size // k)
    # Encrypted straight into the buffer that is cut into blocks; its tail stays zero.
    buffer = bytearray(block_size * k)
    encrypt_into(
        buffer,
        plaintext,
        segment_associated_data(index, segment_count),
        segment_nonce(nonce_prefix, index),
        key,
    )
    view = memoryview(buffer)
    blocks = [bytes(view[at : at + block_size]) for at in range(0, len(buffer), block_size)]
    view.release()
    del buffer
    if n > k:
        extra = parity(blocks, k, n)
        if len(extra) != n - k or any(len(block) != block_size for block in extra):
            raise LocalProtocolError(
                f"the parity function gave {len(extra)} blocks, not {n - k} of {block_size} bytes"
            )
        blocks += extra
    return EncodedSegment(index, tuple(Chunk(chunk_id(b), b) for b in blocks))


def _collect(
    manifest: Manifest, index: int, candidates: Iterable[Candidate], verified: bool = False
) -> tuple[list[BytesLike], tuple[ChunkRejected, ...]]:
    """The k primary blocks of segment `index`, from the first k valid candidates (their
    hashes not checked again if the caller has: `verified`)."""
    params = manifest.params
    k = params.k
    numbers = manifest.block_numbers(index)
    blocks: dict[int, BytesLike] = {}
    rejected: list[ChunkRejected] = []
    for identifier, data in candidates:
        if type(identifier) is not bytes:
            raise LocalProtocolError(f"a candidate's chunk id is bytes, got {identifier!r:.40}")
        wanted = numbers.get(identifier)
        if wanted is None:
            rejected.append(
                ForeignChunk(
                    "not one of this segment's chunk ids", chunk_id=identifier, segment_index=index
                )
            )
            continue
        if all(number in blocks for number in wanted):
            continue  # a copy of a chunk we already have
        if not verified:
            try:
                manifest.verify_chunk(index, identifier, data)
            except CorruptChunk as exc:
                rejected.append(exc)
                continue
        for number in wanted:
            blocks.setdefault(number, data)
        if len(blocks) >= k:
            break
    else:
        raise NotEnoughChunks(
            segment_index=index, valid=len(blocks), needed=k, rejected=tuple(rejected)
        )
    chosen = sorted(blocks)[:k]
    if chosen[-1] < k:  # the data blocks themselves: nothing to decode
        return [blocks[number] for number in chosen], tuple(rejected)
    # zfec reorders the lists it is given in place: give it fresh ones.
    decoder = _zfec_decoder(k, params.n)
    primary: list[BytesLike] = decoder.decode([blocks[number] for number in chosen], chosen)
    return primary, tuple(rejected)


def decode_segment(
    manifest: Manifest,
    key: bytes,
    index: int,
    candidates: Iterable[Candidate],
    *,
    verified: bool = False,
) -> DecodedSegment:
    """Rebuild and decrypt segment `index` from the first k valid `candidates`; pure,
    thread-safe. Candidates are consumed lazily, and checked before use.

    Raises `NotEnoughChunks` if the candidates run out first (it lists those rejected),
    and `CorruptSegment` if the rebuilt segment does not decrypt. Call
    `manifest.unseal(key)` first: it tells a wrong key (`WrongKey`) from a file encoded
    inconsistently, which only a segment can reveal.

    `verified=True` says the caller has already checked each candidate's bytes against
    its id with `manifest.verify_chunk` (a node does, as each chunk arrives, to try
    another holder at once), so they are not hashed again; ids that are not the
    segment's are still refused. Output stays right even if that is untrue: the segment
    is authenticated as a whole when it is decrypted, so bad bytes raise
    `CorruptSegment` (naming no chunk) instead of `CorruptChunk`.
    """
    primary, rejected = _collect(manifest, index, candidates, verified)
    # One buffer: the blocks are joined into it and the segment decrypted in place.
    buffer = bytearray().join(primary)
    del primary
    ciphertext_size = manifest.ciphertext_size(index)
    if buffer[ciphertext_size:] != bytes(len(buffer) - ciphertext_size):
        raise CorruptSegment(
            "the zero padding after the ciphertext is not zero", segment_index=index
        )
    view = memoryview(buffer)
    plaintext = view[: ciphertext_size - TAG_SIZE]
    if not decrypt_into(
        plaintext,
        view[:ciphertext_size],
        segment_associated_data(index, manifest.segment_count),
        segment_nonce(manifest.nonce_prefix, index),
        key,
    ):
        raise CorruptSegment(
            "its chunks match the manifest but it does not decrypt: a wrong key, or a file "
            "encoded inconsistently",
            segment_index=index,
        )
    return DecodedSegment(index, plaintext.toreadonly(), rejected)


def rebuild_chunks(
    manifest: Manifest, index: int, candidates: Iterable[Candidate], block_numbers: Iterable[int]
) -> RebuiltChunks:
    """Make segment `index`'s chunks `block_numbers` again from any k valid candidates,
    without the key: what a repairer does for lost chunks. Pure, thread-safe.

    Raises `NotEnoughChunks` as `decode_segment` does, and `CorruptSegment` if a rebuilt
    chunk does not hash to its id in the manifest (the file was encoded inconsistently).
    """
    params = manifest.params
    wanted = list(block_numbers)
    for number in wanted:
        if type(number) is not int or not 0 <= number < params.n:
            raise LocalProtocolError(f"block number {number!r} is outside 0..{params.n - 1}")
    primary, rejected = _collect(manifest, index, candidates)
    blocks = _zfec_encoder(params.k, params.n).encode(list(primary), list(wanted))
    ids = manifest.segment_chunk_ids(index)
    chunks = []
    for number, block in zip(wanted, blocks, strict=True):
        data = bytes(block)
        identifier = chunk_id(data)
        if identifier != ids[number]:
            raise CorruptSegment(
                f"rebuilt block {number} does not hash to its id: the file was encoded "
                "inconsistently",
                segment_index=index,
            )
        chunks.append(Chunk(identifier, data))
    return RebuiltChunks(index, tuple(chunks), rejected)


# ------------------------------------------------------------------------ sources

_SEEK_END: Final = 2  # io.SEEK_END


def _source_size(source: Source, declared: int | None) -> int:
    """The number of bytes `source` will give: `declared`, or found without reading."""
    if declared is not None:
        if type(declared) is not int or declared < 0:
            raise LocalProtocolError(f"size must be a non-negative int, got {declared!r}")
        if isinstance(source, bytes | bytearray | memoryview) and declared != _nbytes(source):
            raise LocalProtocolError(
                f"size={declared} was declared for a source of {_nbytes(source)} bytes"
            )
        return declared
    if isinstance(source, bytes | bytearray | memoryview):
        return _nbytes(source)
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


def _view(block: Any) -> memoryview:
    try:
        view = memoryview(block)
    except TypeError:
        raise LocalProtocolError(
            f"source blocks must be bytes-like, got {type(block).__name__}"
        ) from None
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def _blocks_of(source: Source) -> Iterator[memoryview]:
    """The source as a stream of byte views, each non-empty, read only as needed."""
    if isinstance(source, bytes | bytearray | memoryview):
        view = _view(source)
        if view.nbytes:
            yield view
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
        view = _view(block)
        if view.nbytes:
            yield view


_READ_SIZE: Final = 1024 * 1024


def _read_into(file: Any, out: memoryview) -> int:
    """Fill `out` from a file object; returns how many bytes it gave before its end."""
    readinto = getattr(file, "readinto", None)
    filled = 0
    wanted = out.nbytes
    while filled < wanted:
        if readinto is not None:
            got = readinto(out[filled:])
        else:
            data = file.read(wanted - filled)
            got = None if data is None else len(data)
            if got:
                out[filled : filled + got] = data
        if got is None:
            raise LocalProtocolError("the file is non-blocking and had no data ready")
        if got == 0:
            break
        filled += got
    return filled


class _Plaintexts:
    """Cuts a source into segment plaintexts, Padme zeros included, checking that it
    gives exactly the declared number of bytes."""

    def __init__(self, source: Source, size: int, padded_size: int, segment_size: int) -> None:
        self._source = source
        self._size = size
        self._padded_size = padded_size
        self._segment_size = segment_size
        self._zeros = b""

    def __iter__(self) -> Iterator[BytesLike]:
        if hasattr(self._source, "read") and hasattr(self._source, "readinto"):
            return self._from_file(self._source)
        return self._from_blocks(_blocks_of(self._source))

    def _layout(self) -> Iterator[tuple[int, int]]:
        """(segment length, file bytes in it) for each segment."""
        for start in range(0, self._padded_size, self._segment_size):
            length = min(self._segment_size, self._padded_size - start)
            yield length, max(0, min(length, self._size - start))

    def _padding(self, length: int) -> BytesLike:
        # Segments of padding alone share one zero buffer: it is never written.
        if len(self._zeros) < length:
            self._zeros = bytes(self._segment_size)
        return memoryview(self._zeros)[:length]

    def _short(self, got: int) -> LocalProtocolError:
        return LocalProtocolError(f"the source ended after {got} bytes; {self._size} were declared")

    def _long(self) -> LocalProtocolError:
        return LocalProtocolError(f"the source gave more than the {self._size} bytes declared")

    def _from_file(self, file: Any) -> Iterator[BytesLike]:
        taken = 0
        for length, file_bytes in self._layout():
            if not file_bytes:
                yield self._padding(length)
                continue
            buffer = bytearray(length)
            got = _read_into(file, memoryview(buffer)[:file_bytes])
            taken += got
            if got < file_bytes:
                raise self._short(taken)
            yield buffer
            del buffer  # before the next is allocated: one plaintext buffer at a time
        if _read_into(file, memoryview(bytearray(1))):
            raise self._long()
        if taken != self._size:
            raise self._short(taken)

    def _from_blocks(self, blocks: Iterator[memoryview]) -> Iterator[BytesLike]:
        taken = 0
        pending = memoryview(b"")
        for length, file_bytes in self._layout():
            if not file_bytes:
                yield self._padding(length)
                continue
            if not pending.nbytes:
                pending = next(blocks, pending)
            if file_bytes == length <= pending.nbytes and type(pending.obj) is bytes:
                # A whole segment inside an immutable block: no copy.
                yield pending[:length]
                pending = pending[length:]
                taken += length
                continue
            buffer = bytearray(length)
            filled = 0
            while filled < file_bytes:
                if not pending.nbytes:
                    pending = next(blocks, pending)
                    if not pending.nbytes:
                        raise self._short(taken + filled)
                step = min(pending.nbytes, file_bytes - filled)
                buffer[filled : filled + step] = pending[:step]
                pending = pending[step:]
                filled += step
            taken += filled
            yield buffer
            del buffer  # before the next is allocated: one plaintext buffer at a time
        if pending.nbytes or next(blocks, None) is not None:
            raise self._long()
        if taken != self._size:
            raise self._short(taken)


# ----------------------------------------------------------------------- encoder


def _draw(random_bytes: RandomBytes, size: int, what: str) -> bytes:
    value = random_bytes(size)
    if type(value) is not bytes or len(value) != size:
        raise LocalProtocolError(f"random_bytes({size}) for the {what} gave {value!r:.40}")
    return value


def _check_window(executor: Executor | None, window: int) -> None:
    if type(window) is not int or window < 1:
        raise LocalProtocolError(f"window must be an int >= 1, got {window!r}")
    if executor is not None and not callable(getattr(executor, "submit", None)):
        raise LocalProtocolError("executor must have a submit(fn, *args) method")


class Encoder:
    """Encodes one file: iterate `segments()` once, then read `manifest`,
    `manifest_bytes`, `manifest_id` and `read_capability`.

    The file key (32 bytes) and nonce prefix (16 bytes) are drawn from `random_bytes`,
    in that order, when the encoder is made; so is the size, which must be known before
    the first segment is encrypted: `source` is a bytes-like object, a seekable file
    object (its size is what remains after its current position), or any other file
    object or iterable of blocks with `size=`. A source that turns out shorter or longer
    than its size raises `LocalProtocolError`.

    With an `executor`, up to `window` segments are encoded at once in its workers; the
    source is still read, and segments still yielded, in order on the caller's thread.
    `parity` computes the parity blocks: zfec by default, or anything that gives zfec's
    bytes faster (node/isal.py).
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
    ) -> None:
        params = EncodingParams() if params is None else params
        if type(params) is not EncodingParams:
            raise LocalProtocolError("params must be EncodingParams")
        _check_window(executor, window)
        self.params = params
        self.info = FileInfo(name, _source_size(source, size))
        self.padded_size = padme(self.info.size)
        self.segment_count = params.segment_count(self.padded_size)
        bound = params.manifest_size_bound(self.padded_size)
        if bound > MAX_MANIFEST_SIZE:
            raise LocalProtocolError(
                f"a file of {self.info.size} bytes needs a manifest of about {bound} bytes, "
                f"more than {MAX_MANIFEST_SIZE}: use a larger segment size"
            )
        self._source = source
        self._executor = executor
        self._window = window
        self._parity = parity
        self._key = _draw(random_bytes, KEY_SIZE, "file key")
        self._nonce_prefix = _draw(random_bytes, NONCE_PREFIX_SIZE, "nonce prefix")
        self._started = False
        self._manifest: Manifest | None = None
        self._manifest_bytes = b""

    def segments(self) -> Iterator[EncodedSegment]:
        """Each segment's n chunks, in order; once only."""
        if self._started:
            raise LocalProtocolError("segments() can be iterated only once")
        self._started = True
        return self._run()

    def _run(self) -> Iterator[EncodedSegment]:
        params = self.params
        encode = functools.partial(
            encode_segment,
            segment_count=self.segment_count,
            key=self._key,
            nonce_prefix=self._nonce_prefix,
            params=params,
            parity=self._parity,
        )
        plaintexts = _Plaintexts(
            self._source, self.info.size, self.padded_size, params.segment_size
        )
        ids = bytearray()
        executor = self._executor
        pending: deque[SupportsResult[EncodedSegment]] = deque()
        for index, plaintext in enumerate(plaintexts):
            if executor is None:
                segment = encode(plaintext, index)
            else:
                pending.append(executor.submit(encode, plaintext, index))
                if len(pending) < self._window:
                    continue
                segment = pending.popleft().result()
            del plaintext
            ids += b"".join(chunk.chunk_id for chunk in segment.chunks)
            yield segment
            del segment
        while pending:
            segment = pending.popleft().result()
            ids += b"".join(chunk.chunk_id for chunk in segment.chunks)
            yield segment
            del segment
        sealed = self.info.seal(self._key, self._nonce_prefix)
        manifest = Manifest(params, self.padded_size, self._nonce_prefix, bytes(ids), sealed)
        self._manifest_bytes = manifest.encode()
        self._manifest = manifest

    def _finished(self) -> Manifest:
        if self._manifest is None:
            raise LocalProtocolError("the manifest is ready once segments() is exhausted")
        return self._manifest

    @property
    def manifest(self) -> Manifest:
        """The parsed manifest; LocalProtocolError until `segments()` is exhausted."""
        return self._finished()

    @property
    def manifest_bytes(self) -> bytes:
        """The manifest's bytes, as stored."""
        self._finished()
        return self._manifest_bytes

    @property
    def manifest_id(self) -> bytes:
        """BLAKE3-256 of `manifest_bytes`."""
        self._finished()
        return chunk_id(self._manifest_bytes)

    @property
    def read_capability(self) -> ReadCapability:
        """`freehold:<manifest id>#<file key>`: keep it secret, it reads the file."""
        return ReadCapability(self.manifest_id, self._key)


# ----------------------------------------------------------------------- decoder


class Decoder:
    """Decodes one file: the manifest is checked and its sealed info opened when the
    decoder is made, then `blocks()` yields the plaintext in order.

    `fetch(segment_index)` gives that segment's candidate chunks as (id, bytes) pairs; it
    is called once per segment, in order and on the caller's thread (up to `window`
    segments ahead of the one being yielded when there is an executor), and its iterable
    is consumed lazily: k at first, and one more for each that is rejected. Rejected chunks are
    appended to `rejected` and passed to `on_reject` as they are found. Segments that
    hold only Padme zeros are never fetched.

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
        if type(capability) is not ReadCapability:
            raise LocalProtocolError("decoding needs a ReadCapability")
        _check_window(executor, window)
        self.manifest = Manifest.parse(manifest, capability.manifest_id)
        self.info = self.manifest.unseal(capability.file_key)
        self.rejected: list[ChunkRejected] = []
        self._key = capability.file_key
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
        manifest = self.manifest
        segment_size = manifest.params.segment_size
        k = manifest.params.k
        size = self.info.size
        count = -(-size // segment_size)  # segments with file bytes; the rest is padding
        executor = self._executor
        window = 1 if executor is None else self._window
        pending: deque[tuple[int, Iterator[Candidate], list[Candidate], Any]] = deque()
        next_index = 0
        while next_index < count or pending:
            while next_index < count and len(pending) < window:
                candidates_iter = iter(self._fetch(next_index))
                first = list(islice(candidates_iter, k))
                if executor is None:
                    job: Any = None
                else:
                    job = executor.submit(decode_segment, manifest, self._key, next_index, first)
                pending.append((next_index, candidates_iter, first, job))
                next_index += 1
            index, candidates_iter, first, job = pending.popleft()
            try:
                if job is None:
                    decoded = decode_segment(manifest, self._key, index, first)
                else:
                    decoded = job.result()
            except NotEnoughChunks:
                decoded = self._retry(index, first, candidates_iter)
            del job, first
            self._report(decoded.rejected)
            keep = size - index * segment_size
            plaintext = decoded.plaintext
            del decoded
            yield plaintext if keep >= len(plaintext) else plaintext[:keep]
            del plaintext

    def _retry(
        self, index: int, first: list[Candidate], rest: Iterator[Candidate]
    ) -> DecodedSegment:
        """The first k candidates were not enough: start again on this thread, pulling
        one more for each rejected, so that every rejection is found and reported once.
        (The first candidates are hashed again; this path is taken only on failure.)"""
        try:
            return decode_segment(self.manifest, self._key, index, chain(first, rest))
        except NotEnoughChunks as exc:
            self._report(exc.rejected)
            raise
