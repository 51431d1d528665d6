"""What a request handler is, and the peer it is told about.

A service answers the requests of one message class with a handler, given to
`Transport.add_handler` (node.transport.rpc). The connection that receives a request
(node.transport.connection) calls the handler with the authenticated `Peer` that sent it
and the request, and sends back the message the handler returns.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from node.transport.link import Address
from protocol.identity import NodeId
from protocol.messages import Message

__all__ = ["AsyncHandler", "Handler", "InlineHandler", "Peer"]


@dataclass(frozen=True, slots=True)
class Peer:
    """The authenticated sender of a request, as handlers see it."""

    node_id: NodeId
    address: Address


# A request handler. An async function gets a task of its own per request, bounded by
# the request timeout. A plain function is for quick non-blocking answers (PING, a
# routing-table lookup): it runs inline in the connection's read loop, which saves a
# task per request, so it must never block.
AsyncHandler = Callable[[Peer, Message], Awaitable[Message]]
InlineHandler = Callable[[Peer, Message], Message]
Handler = AsyncHandler | InlineHandler
