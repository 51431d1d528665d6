"""Authenticated, encrypted RPC between nodes, over TCP or an in-memory network.

`Transport` (node.transport.rpc) is what the rest of the node uses; it runs over a
`LinkLayer`: `TcpLinkLayer` (Noise over TCP) or `MemoryNetwork.link_layer()`.
"""

from node.errors import LinkClosed
from node.transport.config import TransportConfig
from node.transport.handler import Handler, Peer
from node.transport.link import Address, Link, LinkLayer, LinkListener, PendingLink
from node.transport.memory import MemoryLinkLayer, MemoryNetwork
from node.transport.rpc import Transport, TransportStatistics, open_transport
from node.transport.tcp import TcpLinkLayer

__all__ = [
    "Address",
    "Handler",
    "Link",
    "LinkClosed",
    "LinkLayer",
    "LinkListener",
    "MemoryLinkLayer",
    "MemoryNetwork",
    "Peer",
    "PendingLink",
    "TcpLinkLayer",
    "Transport",
    "TransportConfig",
    "TransportStatistics",
    "open_transport",
]
