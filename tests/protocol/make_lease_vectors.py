"""Write tests/vectors/lease-vectors.json: the leases' test vectors.

Run `.venv/bin/python -m tests.protocol.make_lease_vectors` from the repository root
after a deliberate change of the lease record or its messages (docs/PROTOCOL.md#leases),
and say why in the commit. tests/protocol/test_lease.py checks, byte for byte, that
the code still produces these bytes, signatures and frames.

The inputs are fixed: the Ed25519 key whose 32-byte seed is 0x01 repeated, a manifest
id of 0x07 repeated, a lease issued at 1 800 000 000 for 90 days, its release a day
later, and the ADD_LEASE of the lease for two chunks (one held) with its answer.
Ed25519 signatures are deterministic, so the vectors are too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from protocol.identity import Identity
from protocol.lease import Lease, make_lease
from protocol.messages import AddLease, Envelope, Kind, LeaseAdded, encode_envelope

VECTORS_PATH = Path(__file__).resolve().parent.parent / "vectors" / "lease-vectors.json"

SEED = bytes([1]) * 32
MANIFEST_ID = bytes([7]) * 32
ISSUED = 1_800_000_000
EXPIRES = ISSUED + 90 * 24 * 3600
RELEASED = ISSUED + 24 * 3600
CHUNKS = (bytes([0xA1]) * 32, bytes([0xB2]) * 32)


def lease_fields(lease: Lease) -> dict[str, Any]:
    return {
        "manifest_id": lease.manifest_id.hex(),
        "public_key": lease.public_key.hex(),
        "issued": lease.issued,
        "expires": lease.expires,
        "signature": lease.signature.hex(),
    }


def build_vectors() -> dict[str, Any]:
    identity = Identity(SEED)
    lease = make_lease(identity, MANIFEST_ID, ISSUED, EXPIRES)
    release = make_lease(identity, MANIFEST_ID, RELEASED, RELEASED)
    request = Envelope(Kind.REQUEST, 9, AddLease(lease, CHUNKS))
    answer = Envelope(Kind.RESPONSE, 9, LeaseAdded((True, False)))
    return {
        "description": (
            "Freehold lease test vectors (docs/PROTOCOL.md#leases). The key is the Ed25519 "
            "key of the 32-byte seed given; signed_bytes is what its signature covers; "
            "frames are whole envelopes in hex, without the transport's length prefix."
        ),
        "seed": SEED.hex(),
        "leases": [
            {
                "description": "a lease of 90 days",
                "fields": lease_fields(lease),
                "signed_bytes": lease.signed_bytes().hex(),
            },
            {
                "description": "its release a day later (expires = issued)",
                "fields": lease_fields(release),
                "signed_bytes": release.signed_bytes().hex(),
            },
        ],
        "frames": [
            {
                "description": "ADD_LEASE: the lease, for two chunks",
                "message": "ADD_LEASE",
                "type_code": 28,
                "kind": 0,
                "request_id": 9,
                "chunk_ids": [chunk.hex() for chunk in CHUNKS],
                "frame": encode_envelope(request).hex(),
            },
            {
                "description": "LEASE_ADDED: the first chunk is held here, the second not",
                "message": "LEASE_ADDED",
                "type_code": 29,
                "kind": 1,
                "request_id": 9,
                "held": [True, False],
                "frame": encode_envelope(answer).hex(),
            },
        ],
    }


def render(vectors: dict[str, Any]) -> str:
    return json.dumps(vectors, indent=1) + "\n"


if __name__ == "__main__":
    VECTORS_PATH.write_text(render(build_vectors()), encoding="utf-8")
    print(f"wrote {VECTORS_PATH}")
