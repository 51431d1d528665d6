"""The link layer: authenticated, ordered pipes that carry whole frames.

A `Link` carries frames (each one encoded envelope, see protocol.messages) between two
nodes that know each other's NodeId. Two implementations exist: TCP with the Noise
secure channel (node.transport.tcp) and an in-memory network with seeded latency, loss
and partitions (node.transport.memory). Everything above (request ids, timeouts, the
connection pool, limits) lives in node.transport.rpc and node.transport.connection and
is shared by both, so the node never knows which one it runs on.

Listening is split in two steps so that the shared layer can enforce the connection
limit and the handshake timeout the same way for both: `LinkListener.accept()` hands
back a `PendingLink` (a peer that has connected but not yet authenticated), and
`PendingLink.handshake()` turns it into a `Link`.

A link reports failure with two errors of node.errors: `LinkClosed` (with the reason,
and whether the peer misbehaved) and `NoRoom` (its queue stayed full until the caller's
deadline). The connection above turns them into TransportErrors.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import trio

from protocol.identity import NodeId

if TYPE_CHECKING:
    from node.transport.budget import ByteBudget, SendMeter
    from node.transport.config import TransportConfig

__all__ = [
    "Address",
    "Link",
    "LinkLayer",
    "LinkListener",
    "PendingLink",
]

# (host, port). For TCP a host name or IP literal; for the in-memory network a name.
Address = tuple[str, int]


class Link(ABC):
    """An authenticated pipe of frames to one peer."""

    remote_node_id: NodeId
    remote_address: Address

    def use_receive_budget(self, budget: ByteBudget, key: str, *, known: bool = False) -> None:
        """Reserve each large frame being received from `budget` under `key` (an
        address prefix), for links that buffer partial frames (node/transport/budget.py).
        The in-memory links hand over whole frames and ignore it."""
        return None

    @property
    def queued_bytes(self) -> int:
        """Bytes handed to the link and not yet sent."""
        return 0

    def use_send_meter(self, meter: SendMeter) -> None:
        """Count what this link queues in `meter` (links that queue; see budget.py)."""
        return None

    @abstractmethod
    async def send_frame(self, frame: bytes, *, deadline: float = math.inf) -> None:
        """Queue one frame; returns once it is handed to the link. Raises LinkClosed, or
        NoRoom if the link's queue stays full until `deadline` (the frame is not sent)."""

    @abstractmethod
    async def receive_frame(self) -> bytes | bytearray:
        """The next frame (raises LinkClosed at the end, or if the peer broke the rules)."""

    @abstractmethod
    async def aclose(self) -> None:
        """Close the link; idempotent."""

    async def run(self) -> None:
        """The link's own background work (the TCP writer), run by the connection in
        its nursery for the life of the link. Returns or is cancelled when the link
        closes; never raises."""
        await trio.sleep_forever()


class PendingLink(ABC):
    """An inbound connection that has not authenticated yet."""

    remote_address: Address

    @abstractmethod
    async def handshake(self) -> Link:
        """Run the responder's side of the handshake (raises LinkClosed on failure)."""

    @abstractmethod
    async def aclose(self) -> None:
        """Drop the connection without a handshake."""


class LinkListener(ABC):
    """A bound listening endpoint."""

    address: Address

    @abstractmethod
    async def accept(self) -> PendingLink:
        """Wait for the next inbound connection."""

    @abstractmethod
    async def aclose(self) -> None:
        """Stop listening."""


class LinkLayer(ABC):
    """One node's access to a network: listen on it and dial others on it."""

    @abstractmethod
    async def open_listener(self, address: Address, config: TransportConfig) -> LinkListener:
        """Bind `address` (port 0 picks a free one; see the listener's .address)."""

    @abstractmethod
    async def connect(
        self, address: Address, expected_node_id: NodeId | None, config: TransportConfig
    ) -> Link:
        """Dial `address` and authenticate; the peer must be `expected_node_id` if given.

        Raises LinkClosed (with the reason) if the peer cannot be reached, fails the
        handshake or turns out to be someone else. Does not time out by itself.
        """
