"""What the DHT needs from a transport, and nothing more.

dht/ may not import node/ (DESIGN.md: node -> dht -> protocol), so the DHT states its
needs as a Protocol and node/ supplies an adapter over its Transport. The simulations
and the node use the same adapter; nothing here knows about TCP or memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from dht.contact import Address, Contact
from protocol.identity import NodeId
from protocol.messages import Message

__all__ = ["Caller", "InlineHandler", "RpcTransport"]


class Caller(Protocol):
    """The authenticated sender of an inbound request."""

    @property
    def node_id(self) -> NodeId: ...

    @property
    def address(self) -> Address: ...


# Handlers answer at once from memory (routing table, record store): they must not block.
# Raising dht.errors.RecordRejected answers the request with an ERROR (REFUSED).
InlineHandler = Callable[[Caller, Message], Message]


class RpcTransport(Protocol):
    @property
    def node_id(self) -> NodeId: ...

    async def call(self, contact: Contact, message: Message, *, timeout: float) -> Message:
        """Send `message` to `contact` (authenticated as its NodeId) and return the
        answer. Raises dht.errors.RpcFailed for every failure of the peer."""
        ...

    async def ping(self, contact: Contact, *, timeout: float) -> float:
        """Check that `contact` is alive; its round trip in seconds. Raises RpcFailed."""
        ...

    async def identify(self, address: Address, *, timeout: float) -> NodeId:
        """Who listens at `address` (authenticated)? For bootstrap. Raises RpcFailed."""
        ...

    def serve(self, message_type: type[Message], handler: InlineHandler) -> None:
        """Answer inbound requests of `message_type` with `handler`."""
        ...
