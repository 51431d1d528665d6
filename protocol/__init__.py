"""Freehold protocol.

The file format's public names are re-exported here (docs/PROTOCOL.md#files): the
push-style `FileEncoder` and `FileDecoder`, the pull-style `Encoder` and `Decoder` built
on them, the per-segment functions they run, chunks and their group records, manifests
and capabilities, and the errors they raise. They load on first use (PEP 562), so that a
program that needs only `protocol.errors` (the CLI) does not pay for the codecs."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "Candidate",
    "Chunk",
    "ChunkRejected",
    "CorruptChunk",
    "CorruptSegment",
    "DecodedSegment",
    "Decoder",
    "EncodedSegment",
    "Encoder",
    "EncodingParams",
    "Executor",
    "FileDecoder",
    "FileEncoder",
    "FileInfo",
    "ForeignChunk",
    "GroupRecord",
    "InvalidGroupRecord",
    "LocalProtocolError",
    "MalformedCapability",
    "Manifest",
    "NotEnoughChunks",
    "ProtocolError",
    "ReadCapability",
    "RebuiltChunks",
    "RemoteProtocolError",
    "TamperedManifest",
    "VerifyCapability",
    "WrongKey",
    "decode_segment",
    "encode_segment",
    "padme",
    "parse_capability",
    "rebuild_chunks",
]

_MODULES = {
    "Candidate": "protocol.encoding",
    "Chunk": "protocol.encoding",
    "ChunkRejected": "protocol.errors",
    "CorruptChunk": "protocol.errors",
    "CorruptSegment": "protocol.errors",
    "DecodedSegment": "protocol.encoding",
    "Decoder": "protocol.stream",
    "EncodedSegment": "protocol.encoding",
    "Encoder": "protocol.stream",
    "EncodingParams": "protocol.manifest",
    "Executor": "protocol.stream",
    "FileDecoder": "protocol.stream",
    "FileEncoder": "protocol.stream",
    "GroupRecord": "protocol.chunk",
    "InvalidGroupRecord": "protocol.errors",
    "FileInfo": "protocol.manifest",
    "ForeignChunk": "protocol.errors",
    "LocalProtocolError": "protocol.errors",
    "MalformedCapability": "protocol.errors",
    "Manifest": "protocol.manifest",
    "NotEnoughChunks": "protocol.errors",
    "ProtocolError": "protocol.errors",
    "ReadCapability": "protocol.capability",
    "RebuiltChunks": "protocol.encoding",
    "RemoteProtocolError": "protocol.errors",
    "TamperedManifest": "protocol.errors",
    "VerifyCapability": "protocol.capability",
    "WrongKey": "protocol.errors",
    "decode_segment": "protocol.encoding",
    "encode_segment": "protocol.encoding",
    "padme": "protocol.manifest",
    "parse_capability": "protocol.capability",
    "rebuild_chunks": "protocol.encoding",
}


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
