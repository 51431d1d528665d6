"""The PING, PONG and DHT messages' published test vectors
(tests/vectors/dht-message-vectors.json, docs/PROTOCOL.md#dht-message-test-vectors),
checked against the reference codec.

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
    decode_envelope,
    encode_envelope,
)
from tests.protocol.make_dht_vectors import VECTORS_PATH, build_vectors, render

ROOT = Path(__file__).resolve().parents[2]
FILE: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
VECTORS: list[dict[str, Any]] = FILE["vectors"]
IDS = [vector["description"] for vector in VECTORS]


def contact_from(fields: dict[str, Any]) -> WireContact:
    return WireContact(bytes.fromhex(fields["node_id"]), fields["host"], fields["port"])


def contacts_from(items: list[dict[str, Any]]) -> tuple[WireContact, ...]:
    return tuple(contact_from(item) for item in items)


def message_from(name: str, fields: dict[str, Any]) -> Message:
    """The message a vector describes, built from its JSON fields."""
    if name == "PING":
        return Ping(bytes.fromhex(fields["nonce"]))
    if name == "PONG":
        return Pong(bytes.fromhex(fields["nonce"]))
    if name == "FIND_NODE":
        return FindNode(bytes.fromhex(fields["target"]), fields["sender_port"])
    if name == "NODES":
        return Nodes(contacts_from(fields["contacts"]))
    if name == "ADD_PROVIDER":
        return AddProvider(bytes.fromhex(fields["key"]), fields["sender_port"])
    if name == "PROVIDER_ADDED":
        return ProviderAdded(fields["ttl"])
    if name == "GET_PROVIDERS":
        return GetProviders(bytes.fromhex(fields["key"]), fields["sender_port"])
    if name == "PROVIDERS":
        return Providers(contacts_from(fields["providers"]), contacts_from(fields["closer"]))
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


def test_vectors_cover_ping_pong_and_every_dht_message() -> None:
    """There is a vector of PING, PONG and each DHT message, codes 10 to 15."""
    assert {vector["type_code"] for vector in VECTORS} == {1, 2, 10, 11, 12, 13, 14, 15}


def test_each_answer_follows_its_request() -> None:
    """Requests and answers come in pairs with the same request id."""
    for request, answer in zip(VECTORS[::2], VECTORS[1::2], strict=True):
        assert (request["kind"], answer["kind"]) == (0, 1)
        assert request["request_id"] == answer["request_id"]


def test_vector_nodes_and_key_are_what_they_say() -> None:
    """Each node's id is the NodeId of its Ed25519 seed, the key is chunk 1 of the chunk
    message vectors, and the NODES answer lists its contacts closest to the key first."""
    for node in FILE["nodes"]:
        assert Identity(bytes.fromhex(node["ed25519_seed"])).node_id.hex() == node["node_id"]
    assert FILE["key"] == chunk_id(bytes.fromhex("060708090a0b")).hex()
    key = int(FILE["key"], 16)
    (nodes,) = [vector for vector in VECTORS if vector["message"] == "NODES"]
    distances = [int(contact["node_id"], 16) ^ key for contact in nodes["fields"]["contacts"]]
    assert distances == sorted(distances)


def test_vectors_file_is_what_the_generator_writes() -> None:
    """The JSON file is up to date with tests/protocol/make_dht_vectors.py."""
    assert VECTORS_PATH.read_text(encoding="utf-8") == render(build_vectors())


def test_protocol_doc_carries_the_ping_and_the_annotated_nodes_vector() -> None:
    """docs/PROTOCOL.md's PING vector is this file's, and it shows the NODES vector's
    frame with an annotation whose bytes put together are that frame."""
    text = (ROOT / "docs" / "PROTOCOL.md").read_text(encoding="utf-8")
    assert VECTORS[0]["message"] == "PING"
    assert VECTORS[0]["frame"] in text.split("## Secure channel", 1)[0]
    (nodes,) = [vector for vector in VECTORS if vector["message"] == "NODES"]
    frame = nodes["frame"]
    section = text.split("### DHT message test vectors", 1)[1].split("\n## ", 1)[0]
    section = section.split("\n### ", 1)[0]
    blocks = section.split("```")[1::2]
    assert frame in ["".join(block.split()) for block in blocks]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    annotated = "".join(re.sub(r"[^0-9a-f]", "", row.split("|")[1]) for row in rows)
    assert annotated == frame
