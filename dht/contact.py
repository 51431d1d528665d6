"""A DHT contact: a node's id and the address it listens on."""

from __future__ import annotations

from dataclasses import dataclass, field

from protocol.identity import NodeId
from protocol.messages import WireContact

__all__ = ["Address", "Contact"]

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Contact:
    """A node we can dial: its NodeId and listening (host, port)."""

    node_id: NodeId
    address: Address
    # The wire form, made once: a routing table's contacts go out in answers again and
    # again (a 200-node simulation built 100,000 of them per minute of CPU).
    _wire: WireContact | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def from_wire(cls, wire: WireContact) -> Contact:
        contact = cls(NodeId(wire.node_id), (wire.host, wire.port))
        object.__setattr__(contact, "_wire", wire)
        return contact

    def to_wire(self) -> WireContact:
        wire = self._wire
        if wire is None:
            wire = WireContact(self.node_id.value, self.address[0], self.address[1])
            object.__setattr__(self, "_wire", wire)
        return wire

    def __repr__(self) -> str:
        return f"Contact({self.node_id.short()}@{self.address[0]}:{self.address[1]})"
