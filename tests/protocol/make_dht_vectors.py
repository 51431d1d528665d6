"""Write tests/vectors/dht-message-vectors.json: PING, PONG and the DHT messages' vectors.

Run `.venv/bin/python -m tests.protocol.make_dht_vectors` from the repository root after
a deliberate change of these messages (docs/PROTOCOL.md#dht-messages), and say why in
the commit: every other implementation's vectors change with it.
tests/protocol/test_dht_vectors.py checks, byte for byte, that the codec still produces
these frames and decodes them back to the same fields.

The inputs are fixed: two nodes, whose ids are the NodeIds of the Ed25519 seeds 32
bytes `01` and 32 bytes `02` (the handshake vector's dialer and listener), one at an
IPv4 and one at an IPv6 address; the key looked up is chunk 1 of the chunk message
vectors (the BLAKE3-256 of `060708090a0b`). The PING is the one docs/PROTOCOL.md#test-vector
shows; each DHT request is followed by an answer an honest node could give.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

from protocol.chunk import chunk_id
from protocol.identity import Identity
from protocol.messages import (
    MESSAGES,
    AddProvider,
    Envelope,
    FindNode,
    GetProviders,
    Kind,
    Message,
    Nodes,
    Ping,
    Pong,
    ProviderAdded,
    Providers,
    WireContact,
    encode_envelope,
)

VECTORS_PATH: Final = (
    Path(__file__).resolve().parent.parent / "vectors" / "dht-message-vectors.json"
)

SEEDS: Final = (bytes([1]) * 32, bytes([2]) * 32)
HOSTS: Final = (("203.0.113.5", 4410), ("2001:db8::7", 50123))
CONTACTS: Final = tuple(
    WireContact(Identity(seed).node_id.value, host, port)
    for seed, (host, port) in zip(SEEDS, HOSTS, strict=True)
)
KEY: Final = chunk_id(bytes(range(6, 12)))  # chunk 1 of chunk-message-vectors.json
NONCE: Final = bytes(range(8))
SENDER_PORT: Final = 4410
TTL: Final = 48 * 3600  # a fresh record's life, in seconds


def by_distance(contacts: tuple[WireContact, ...], target: bytes) -> tuple[WireContact, ...]:
    """`contacts` closest to `target` first, as an answer lists them."""
    key = int.from_bytes(target, "big")
    return tuple(sorted(contacts, key=lambda c: int.from_bytes(c.node_id, "big") ^ key))


CLOSEST: Final = by_distance(CONTACTS, KEY)

NAMES: Final = {
    Ping: "PING",
    Pong: "PONG",
    FindNode: "FIND_NODE",
    Nodes: "NODES",
    AddProvider: "ADD_PROVIDER",
    ProviderAdded: "PROVIDER_ADDED",
    GetProviders: "GET_PROVIDERS",
    Providers: "PROVIDERS",
}

# (description, kind, request id, message)
CASES: Final[list[tuple[str, Kind, int, Message]]] = [
    ("ping with an 8-byte nonce", Kind.REQUEST, 7, Ping(NONCE)),
    ("pong: the same nonce", Kind.RESPONSE, 7, Pong(NONCE)),
    (
        "which nodes are closest to the key? (the sender listens on 4410)",
        Kind.REQUEST,
        8,
        FindNode(KEY, SENDER_PORT),
    ),
    ("two contacts, closest to the key first", Kind.RESPONSE, 8, Nodes(CLOSEST)),
    ("the sender provides the key", Kind.REQUEST, 9, AddProvider(KEY, SENDER_PORT)),
    ("the record is kept 48 hours", Kind.RESPONSE, 9, ProviderAdded(TTL)),
    (
        "who provides the key? (the sender does not listen)",
        Kind.REQUEST,
        10,
        GetProviders(KEY, 0),
    ),
    (
        "one provider, and one contact close to the key",
        Kind.RESPONSE,
        10,
        Providers((CONTACTS[0],), (CONTACTS[1],)),
    ),
]


def contact_fields(contact: WireContact) -> dict[str, Any]:
    return {"node_id": contact.node_id.hex(), "host": contact.host, "port": contact.port}


def fields_of(message: Message) -> dict[str, Any]:
    """The message's fields as the JSON file writes them: bytes in hex, in wire order."""
    if isinstance(message, Ping | Pong):
        return {"nonce": message.nonce.hex()}
    if isinstance(message, FindNode):
        return {"target": message.target.hex(), "sender_port": message.sender_port}
    if isinstance(message, AddProvider | GetProviders):
        return {"key": message.key.hex(), "sender_port": message.sender_port}
    if isinstance(message, Nodes):
        return {"contacts": [contact_fields(contact) for contact in message.contacts]}
    if isinstance(message, ProviderAdded):
        return {"ttl": message.ttl}
    if isinstance(message, Providers):
        return {
            "providers": [contact_fields(contact) for contact in message.providers],
            "closer": [contact_fields(contact) for contact in message.closer],
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
            "Freehold PING, PONG and DHT message test vectors (docs/PROTOCOL.md#dht-messages). "
            "Each frame is one whole envelope [version, kind, request_id, type_code, body] "
            "in hex, without the transport's 4-byte length prefix; fields are in wire order, "
            "bytes in hex. Each node's id is the NodeId (BLAKE2b, 32-byte digest, of the "
            "Ed25519 public key) of its seed; the key is chunk 1 of "
            "chunk-message-vectors.json."
        ),
        "nodes": [
            {"ed25519_seed": seed.hex(), **contact_fields(contact)}
            for seed, contact in zip(SEEDS, CONTACTS, strict=True)
        ],
        "key": KEY.hex(),
        "vectors": [build_vector(*case) for case in CASES],
    }


def render(vectors: dict[str, Any]) -> str:
    return json.dumps(vectors, indent=1, ensure_ascii=False) + "\n"


def main() -> None:
    VECTORS_PATH.write_text(render(build_vectors()), encoding="utf-8")
    print(f"wrote {VECTORS_PATH} ({VECTORS_PATH.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
