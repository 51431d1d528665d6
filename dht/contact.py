"""A DHT contact: a node's id and the address it listens on."""

from __future__ import annotations

from dataclasses import dataclass

from protocol.identity import NodeId
from protocol.messages import WireContact

__all__ = ["Address", "Contact"]

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Contact:
    """A node we can dial: its NodeId and listening (host, port)."""

    node_id: NodeId
    address: Address

    @classmethod
    def from_wire(cls, wire: WireContact) -> Contact:
        return cls(NodeId(wire.node_id), (wire.host, wire.port))

    def to_wire(self) -> WireContact:
        return WireContact(self.node_id.value, self.address[0], self.address[1])

    def __repr__(self) -> str:
        return f"Contact({self.node_id.short()}@{self.address[0]}:{self.address[1]})"
