"""The chunk messages' published test vectors (tests/vectors/chunk-message-vectors.json,
docs/PROTOCOL.md#chunk-message-test-vectors), checked against the reference codec.

Each vector's message is rebuilt here from its decoded fields alone, as another
implementation would read them, so the test holds the fields and the frame to each
other, not only the frame to the generator.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

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
    decode_envelope,
    encode_envelope,
)
from tests.protocol.make_chunk_vectors import VECTORS_PATH, build_vectors, render

ROOT = Path(__file__).resolve().parents[2]
FILE: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
VECTORS: list[dict[str, Any]] = FILE["vectors"]
IDS = [vector["description"] for vector in VECTORS]


def group_from(fields: dict[str, Any]) -> GroupRecord:
    return GroupRecord(
        fields["k"],
        fields["n"],
        fields["index"],
        tuple(bytes.fromhex(identifier) for identifier in fields["chunk_ids"]),
    )


def message_from(name: str, fields: dict[str, Any]) -> Message:
    """The message a vector describes, built from its JSON fields."""
    if name == "STORE_CHUNK":
        return StoreChunk(group_from(fields["group"]), bytes.fromhex(fields["data"]))
    if name == "CHUNK_STORED":
        return ChunkStored(fields["free"])
    if name == "FETCH_CHUNK":
        return FetchChunk(bytes.fromhex(fields["chunk_id"]))
    if name == "CHUNK":
        return ChunkData(group_from(fields["group"]), bytes.fromhex(fields["data"]))
    if name == "HAS_CHUNKS":
        return HasChunks(tuple(bytes.fromhex(each) for each in fields["chunk_ids"]))
    if name == "CHUNKS_HELD":
        return ChunksHeld(tuple(fields["held"]))
    if name == "AUDIT_CHUNKS":
        ids = tuple(bytes.fromhex(each) for each in fields["chunk_ids"])
        return AuditChunks(ids, tuple(fields["offsets"]), fields["length"])
    if name == "CHUNKS_AUDITED":
        return ChunksAudited(
            tuple(None if each is None else bytes.fromhex(each) for each in fields["answers"])
        )
    if name == "ERROR":
        assert ErrorCode(fields["code"]).name == fields["code_name"]
        return Error(ErrorCode(fields["code"]), fields["message"])
    raise AssertionError(f"unknown message {name}")


def envelope_from(vector: dict[str, Any]) -> Envelope:
    return Envelope(
        Kind(vector["kind"]),
        vector["request_id"],
        message_from(vector["message"], vector["fields"]),
    )


@pytest.mark.parametrize("vector", VECTORS, ids=IDS)
def test_vector_encodes_byte_for_byte(vector: dict[str, Any]) -> None:
    """The codec encodes the vector's fields to exactly the vector's frame."""
    assert encode_envelope(envelope_from(vector)).hex() == vector["frame"]


@pytest.mark.parametrize("vector", VECTORS, ids=IDS)
def test_vector_decodes_to_its_fields(vector: dict[str, Any]) -> None:
    """The vector's frame decodes to the vector's kind, request id, type and fields."""
    envelope = decode_envelope(bytes.fromhex(vector["frame"]))
    assert envelope == envelope_from(vector)
    assert MESSAGES.type_code(type(envelope.message)) == vector["type_code"]


def test_vectors_cover_every_chunk_message_and_an_error() -> None:
    """There is a vector of each chunk message, codes 20 to 27, and of ERROR."""
    assert {vector["type_code"] for vector in VECTORS} == {3, *range(20, 28)}


def test_vector_group_is_a_real_two_of_three_group() -> None:
    """The vectors' group: two data blocks and zfec's parity block, each named by its hash."""
    group = FILE["group"]
    blocks = [bytes.fromhex(chunk["data"]) for chunk in group["chunks"]]
    assert blocks[group["k"] :] == zfec_parity(blocks[: group["k"]], group["k"], group["n"])
    for chunk, block in zip(group["chunks"], blocks, strict=True):
        assert chunk["id"] == chunk_id(block).hex()


def test_vectors_file_is_what_the_generator_writes() -> None:
    """The JSON file is up to date with tests/protocol/make_chunk_vectors.py."""
    assert VECTORS_PATH.read_text(encoding="utf-8") == render(build_vectors())


def test_protocol_doc_carries_the_annotated_vector() -> None:
    """docs/PROTOCOL.md shows the STORE_CHUNK vector's frame, and its annotation's bytes
    put together are that frame."""
    text = (ROOT / "docs" / "PROTOCOL.md").read_text(encoding="utf-8")
    frame = VECTORS[0]["frame"]
    assert VECTORS[0]["message"] == "STORE_CHUNK"
    section = text.split("### Chunk message test vectors", 1)[1].split("\n## ", 1)[0]
    blocks = section.split("```")[1::2]
    assert frame in ["".join(block.split()) for block in blocks]
    # The annotation: the first column of each table row after the header, in order.
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    annotated = "".join(re.sub(r"[^0-9a-f]", "", row.split("|")[1]) for row in rows)
    assert annotated == frame
