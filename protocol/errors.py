"""The one exception hierarchy of protocol/.

As in h11: `LocalProtocolError` means our own side misused the code (a bug or a bad
argument); `RemoteProtocolError` means the peer sent something that breaks the
protocol. A driver that catches `RemoteProtocolError` closes that peer's request or
connection and carries on; it never lets it take the node down.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base class of every error raised by protocol/."""


class LocalProtocolError(ProtocolError):
    """Our side asked for something the protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that break the protocol (malformed, forged or out of order)."""


# --- Chunks (docs/PROTOCOL.md#chunks) ----------------------------------------------------


class InvalidGroupRecord(RemoteProtocolError, ValueError):
    """A group record (k, n, index, the n chunk ids) breaks a rule, or is not the record
    of the chunk it came with. A `ValueError` too, so that the message codec reports it
    as a malformed body (BAD_REQUEST), as it does any struct's broken invariant."""


class InconsistentGroup(RemoteProtocolError):
    """Chunks rebuilt from k chunks of a group do not hash to the group's other ids:
    the ids were not made from one segment (a crafted manifest or group record)."""


# --- Files (docs/PROTOCOL.md#files) ------------------------------------------------------


class MalformedCapability(LocalProtocolError):
    """A capability string is not one: the message says what is wrong and where."""


class WrongKey(LocalProtocolError):
    """The file key does not open the manifest's sealed info.

    The manifest itself is genuine (it hashes to its id), so the key half of the read
    capability is wrong: mistyped, or pasted from another file.
    """


class TamperedManifest(RemoteProtocolError):
    """Manifest bytes do not hash to the manifest id, or break a rule of the format."""


class ChunkRejected(RemoteProtocolError):
    """A chunk offered for a segment cannot be used; the decoder tries another.

    `chunk_id` is the id the chunk was offered under, `segment_index` the segment it
    was offered for.
    """

    def __init__(self, reason: str, *, chunk_id: bytes, segment_index: int) -> None:
        super().__init__(f"segment {segment_index}, chunk {chunk_id.hex()[:16]}…: {reason}")
        self.reason = reason
        self.chunk_id = chunk_id
        self.segment_index = segment_index


class CorruptChunk(ChunkRejected):
    """A chunk's bytes do not hash to the id it was offered under."""


class ForeignChunk(ChunkRejected):
    """A chunk offered under an id that is not one of the segment's: it belongs to
    another segment or another file."""


class NotEnoughChunks(RemoteProtocolError):
    """A segment cannot be decoded: fewer than k of its chunks were valid.

    `rejected` holds every chunk turned down for this segment, with its reason.
    """

    def __init__(
        self,
        *,
        segment_index: int,
        valid: int,
        needed: int,
        rejected: tuple[ChunkRejected, ...],
    ) -> None:
        summary = f"segment {segment_index}: {valid} valid chunks, {needed} needed"
        if rejected:
            reasons = "; ".join(
                f"{chunk.chunk_id.hex()[:16]}… {chunk.reason}" for chunk in rejected
            )
            summary += f"; rejected {len(rejected)}: {reasons}"
        super().__init__(summary)
        self.segment_index = segment_index
        self.valid = valid
        self.needed = needed
        self.rejected = rejected


class CorruptSegment(RemoteProtocolError):
    """A segment whose chunks all match the manifest does not decrypt under a key that
    opens the manifest: whoever encoded the file made it inconsistent."""

    def __init__(self, reason: str, *, segment_index: int) -> None:
        super().__init__(f"segment {segment_index}: {reason}")
        self.segment_index = segment_index
