"""Write tests/vectors/encoding-vectors.json: the file format's test vectors.

Run `.venv/bin/python -m tests.protocol.make_encoding_vectors` from the repository root
after a deliberate change of the format (docs/PROTOCOL.md#files), and say why in the
commit: every other implementation's vectors change with it. tests/protocol/
test_encoding.py checks, byte for byte, that the encoder still produces these.

Each vector fixes the file key and nonce prefix (the encoder's only random input) and
derives its input from BLAKE3's extendable output, so the file is small to regenerate
and nothing depends on a random seed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blake3

from protocol.manifest import (
    EncodingParams,
    padme,
    sealed_info_nonce,
    segment_associated_data,
    segment_nonce,
)
from protocol.stream import Encoder

VECTORS_PATH = Path(__file__).resolve().parent.parent / "vectors" / "encoding-vectors.json"
SEGMENT_SIZE = 4096

# (description, file name, input size, k, n): the cases of issue 4, and k = 1 (every
# chunk of a segment the same, so a segment's ids repeat).
CASES: list[tuple[str, str, int, int, int]] = [
    ("empty file", "empty", 0, 3, 10),
    ("one byte", "one-byte.bin", 1, 3, 10),
    ("exactly one segment", "one-segment.bin", SEGMENT_SIZE, 3, 10),
    ("three segments, the last short", "résumé.pdf", 10_000, 3, 10),
    ("2-of-4, two segments", "two-of-four.bin", 5_000, 2, 4),
    ("1-of-3: three copies", "copies.txt", 100, 1, 3),
]


def vector_input(number: int, size: int) -> bytes:
    """Vector `number`'s input: BLAKE3's XOF output for a fixed context string."""
    return blake3.blake3(f"freehold encoding vector {number}".encode()).digest(length=size)


def vector_key(number: int) -> bytes:
    """32 bytes: `number`, then 1, 2, ... 31."""
    return bytes((number, *range(1, 32)))


def vector_nonce_prefix(number: int) -> bytes:
    """16 bytes: 0xa0 + `number`, then 0xa1 ... 0xaf."""
    return bytes((0xA0 + number, *range(0xA1, 0xB0)))


def fixed_random(*values: bytes) -> Callable[[int], bytes]:
    """A random_bytes that returns `values` in order, checking each size asked for."""
    queue = list(values)

    def random_bytes(size: int) -> bytes:
        value = queue.pop(0)
        assert len(value) == size, f"asked for {size} bytes, the vector has {len(value)}"
        return value

    return random_bytes


def build_vector(number: int) -> dict[str, Any]:
    """Encode case `number` and describe every step of it."""
    description, name, size, k, n = CASES[number]
    data = vector_input(number, size)
    key = vector_key(number)
    prefix = vector_nonce_prefix(number)
    params = EncodingParams(k, n, SEGMENT_SIZE)
    encoder = Encoder(data, random_bytes=fixed_random(key, prefix), name=name, params=params)
    segments = []
    for segment in encoder.segments():
        count = encoder.segment_count
        segments.append(
            {
                "index": segment.index,
                "nonce": segment_nonce(prefix, segment.index).hex(),
                "associated_data": segment_associated_data(segment.index, count).hex(),
                "chunks": [
                    {"id": chunk.chunk_id.hex(), "data": chunk.data.hex()}
                    for chunk in segment.chunks
                ],
            }
        )
    capability = encoder.read_capability
    return {
        "description": description,
        "name": name,
        "input": data.hex(),
        "size": size,
        "padded_size": padme(size),
        "k": k,
        "n": n,
        "segment_size": SEGMENT_SIZE,
        "file_key": key.hex(),
        "nonce_prefix": prefix.hex(),
        "sealed_info_nonce": sealed_info_nonce(prefix).hex(),
        "segments": segments,
        "sealed_info": encoder.manifest.sealed_info.hex(),
        "manifest": encoder.manifest_bytes.hex(),
        "manifest_id": encoder.manifest_id.hex(),
        "read_capability": str(capability),
        "verify_capability": str(capability.verify_capability()),
    }


def build_vectors() -> dict[str, Any]:
    return {
        "description": (
            "Freehold file format test vectors (docs/PROTOCOL.md#files). Bytes are hex. "
            "The encoder's random input is file_key then nonce_prefix."
        ),
        "format_version": 1,
        "vectors": [build_vector(number) for number in range(len(CASES))],
    }


def render(vectors: dict[str, Any]) -> str:
    return json.dumps(vectors, indent=1, ensure_ascii=False) + "\n"


def main() -> None:
    VECTORS_PATH.write_text(render(build_vectors()), encoding="utf-8")
    print(f"wrote {VECTORS_PATH} ({VECTORS_PATH.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
