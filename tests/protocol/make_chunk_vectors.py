"""Write tests/vectors/chunk-message-vectors.json: the chunk messages' test vectors.

Run `.venv/bin/python -m tests.protocol.make_chunk_vectors` from the repository root
after a deliberate change of the chunk messages (docs/PROTOCOL.md#chunk-messages), and
say why in the commit: every other implementation's vectors change with it.
tests/protocol/test_chunk_vectors.py checks, byte for byte, that the codec still
produces these frames and decodes them back to the same fields.

The inputs are fixed and small: a 2-of-3 group of 6-byte chunks (data blocks
`000102030405` and `060708090a0b`, and the parity block zfec computes from them), the
six chunk messages about it, an ERROR answer, a chunk stored as a group of one (as
a manifest is), and an audit of chunks 0 and 2 of a holder that holds only chunk 0
(2 bytes at offsets 1 and 3). A holder never looks inside a chunk, so these bytes need not be a real
file's ciphertext.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from protocol.audit import stripe
from protocol.chunk import GroupRecord, chunk_id
from protocol.encoding import zfec_parity
from protocol.messages import (
    MESSAGES,
    AuditChunks,
    ChunkData,
    ChunksAudited,
    ChunksHeld,
    ChunkStored,
    Envelope,
    Error,
    ErrorCode,
    FetchChunk,
    HasChunks,
    Kind,
    Message,
    StoreChunk,
    encode_envelope,
)

VECTORS_PATH = Path(__file__).resolve().parent.parent / "vectors" / "chunk-message-vectors.json"

K, N = 2, 3
DATA_BLOCKS = [bytes(range(0, 6)), bytes(range(6, 12))]
BLOCKS = DATA_BLOCKS + zfec_parity(DATA_BLOCKS, K, N)
IDS = tuple(chunk_id(block) for block in BLOCKS)
# What a holder of 10 GiB, holding only chunk 1, has left.
FREE = 10 * 1024**3 - len(BLOCKS[1])
LONE_CHUNK = b"manifest"  # stands in for a manifest: any bytes, stored as a group of one

NAMES = {
    StoreChunk: "STORE_CHUNK",
    ChunkStored: "CHUNK_STORED",
    FetchChunk: "FETCH_CHUNK",
    ChunkData: "CHUNK",
    HasChunks: "HAS_CHUNKS",
    ChunksHeld: "CHUNKS_HELD",
    Error: "ERROR",
    AuditChunks: "AUDIT_CHUNKS",
    ChunksAudited: "CHUNKS_AUDITED",
}
AUDIT_OFFSETS = (1, 3)
AUDIT_LENGTH = 2

# (description, kind, request id, message)
CASES: list[tuple[str, Kind, int, Message]] = [
    (
        "store chunk 1 of a 2-of-3 group",
        Kind.REQUEST,
        1,
        StoreChunk(GroupRecord(K, N, 1, IDS), BLOCKS[1]),
    ),
    ("the chunk is stored; 10 GiB - 6 bytes remain", Kind.RESPONSE, 1, ChunkStored(FREE)),
    ("fetch chunk 1", Kind.REQUEST, 2, FetchChunk(IDS[1])),
    (
        "chunk 1 with its group record",
        Kind.RESPONSE,
        2,
        ChunkData(GroupRecord(K, N, 1, IDS), BLOCKS[1]),
    ),
    ("which of the group's three chunks are held?", Kind.REQUEST, 3, HasChunks(IDS)),
    ("chunks 0 and 1 are held, chunk 2 is not", Kind.RESPONSE, 3, ChunksHeld((True, True, False))),
    ("fetch chunk 2 (not held)", Kind.REQUEST, 4, FetchChunk(IDS[2])),
    (
        "chunk 2 is not held here",
        Kind.RESPONSE,
        4,
        Error(ErrorCode.NOT_FOUND, "no such chunk here"),
    ),
    (
        "store a chunk as a group of one (as a manifest is stored)",
        Kind.REQUEST,
        5,
        StoreChunk(GroupRecord.single(chunk_id(LONE_CHUNK)), LONE_CHUNK),
    ),
    (
        "audit chunks 0 and 2: 2 bytes at offsets 1 and 3 of each",
        Kind.REQUEST,
        6,
        AuditChunks((IDS[0], IDS[2]), AUDIT_OFFSETS, AUDIT_LENGTH),
    ),
    (
        "chunk 0's bytes 1-2 and 3-4; chunk 2 is not held here",
        Kind.RESPONSE,
        6,
        ChunksAudited((stripe(BLOCKS[0], AUDIT_OFFSETS, AUDIT_LENGTH), None)),
    ),
]


def group_fields(group: GroupRecord) -> dict[str, Any]:
    return {
        "k": group.k,
        "n": group.n,
        "index": group.index,
        "chunk_ids": [identifier.hex() for identifier in group.chunk_ids],
    }


def fields_of(message: Message) -> dict[str, Any]:
    """The message's fields as the JSON file writes them: bytes in hex, in wire order."""
    if isinstance(message, StoreChunk | ChunkData):
        return {"group": group_fields(message.group), "data": message.data.hex()}
    if isinstance(message, ChunkStored):
        return {"free": message.free}
    if isinstance(message, FetchChunk):
        return {"chunk_id": message.chunk_id.hex()}
    if isinstance(message, HasChunks):
        return {"chunk_ids": [identifier.hex() for identifier in message.chunk_ids]}
    if isinstance(message, ChunksHeld):
        return {"held": list(message.held)}
    if isinstance(message, AuditChunks):
        return {
            "chunk_ids": [identifier.hex() for identifier in message.chunk_ids],
            "offsets": list(message.offsets),
            "length": message.length,
        }
    if isinstance(message, ChunksAudited):
        return {"answers": [None if a is None else a.hex() for a in message.answers]}
    if isinstance(message, Error):
        return {
            "code": int(message.code),
            "code_name": message.code.name,
            "message": message.message,
        }
    raise TypeError(f"no vector format for {type(message).__name__}")


def build_vector(description: str, kind: Kind, request_id: int, message: Message) -> dict[str, Any]:
    return {
        "description": description,
        "message": NAMES[type(message)],
        "kind": int(kind),
        "request_id": request_id,
        "type_code": MESSAGES.type_code(type(message)),
        "fields": fields_of(message),
        "frame": encode_envelope(Envelope(kind, request_id, message)).hex(),
    }


def build_vectors() -> dict[str, Any]:
    return {
        "description": (
            "Freehold chunk message test vectors (docs/PROTOCOL.md#chunk-messages). Each "
            "frame is one whole envelope [version, kind, request_id, type_code, body] in "
            "hex, without the transport's 4-byte length prefix; fields are in wire order, "
            "bytes in hex. The 2-of-3 group's chunks are its two data blocks and zfec's "
            "parity block of them."
        ),
        "group": {
            "k": K,
            "n": N,
            "chunks": [
                {"id": identifier.hex(), "data": block.hex()}
                for identifier, block in zip(IDS, BLOCKS, strict=True)
            ],
        },
        "vectors": [build_vector(*case) for case in CASES],
    }


def render(vectors: dict[str, Any]) -> str:
    return json.dumps(vectors, indent=1, ensure_ascii=False) + "\n"


def main() -> None:
    VECTORS_PATH.write_text(render(build_vectors()), encoding="utf-8")
    print(f"wrote {VECTORS_PATH} ({VECTORS_PATH.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
