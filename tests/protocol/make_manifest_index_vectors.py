"""Write tests/vectors/manifest-index-vectors.json: a manifest stored in parts.

docs/PROTOCOL.md#manifests-larger-than-one-chunk. Uploaders cut only manifests over
1 MiB, but readers take any part size; so that the vector stays small, the manifest of
encoding vector 3 (three segments, 1 274 bytes) is cut into parts of 500 bytes. Run
`.venv/bin/python -m tests.protocol.make_manifest_index_vectors` from the repository
root after a deliberate change of the format; tests/protocol/test_manifest_index.py
checks the reference implementation against the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

from protocol.capability import ReadCapability
from protocol.manifest_index import store_manifest

VECTORS: Final = Path(__file__).resolve().parent.parent / "vectors"
SOURCE: Final = VECTORS / "encoding-vectors.json"
VECTORS_PATH: Final = VECTORS / "manifest-index-vectors.json"
VECTOR: Final = 3
PART_SIZE: Final = 500


def build_vectors() -> dict[str, Any]:
    source = json.loads(SOURCE.read_text(encoding="utf-8"))["vectors"][VECTOR]
    manifest = bytes.fromhex(source["manifest"])
    stored = store_manifest(manifest, PART_SIZE)
    *parts, (index_id, index) = stored.chunks
    capability = ReadCapability(index_id, bytes.fromhex(source["file_key"]))
    return {
        "description": (
            "A manifest stored in parts under a manifest index (docs/PROTOCOL.md"
            "#manifests-larger-than-one-chunk). Bytes are hex. The manifest is that of "
            f"encoding vector {VECTOR} ({source['description']}); its file decodes "
            "with the chunks listed there."
        ),
        "vectors": [
            {
                "encoding_vector": VECTOR,
                "part_size": PART_SIZE,
                "manifest": manifest.hex(),
                "parts": [{"id": key.hex(), "data": data.hex()} for key, data in parts],
                "index": index.hex(),
                "manifest_id": index_id.hex(),
                "read_capability": str(capability),
                "verify_capability": str(capability.verify_capability()),
            }
        ],
    }


def render(vectors: dict[str, Any]) -> str:
    return json.dumps(vectors, indent=1, ensure_ascii=False) + "\n"


def main() -> None:
    VECTORS_PATH.write_text(render(build_vectors()), encoding="utf-8")
    print(f"wrote {VECTORS_PATH} ({VECTORS_PATH.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
