"""What a node's owner can ask of it: put, get and check files, and its status and peers.

`Owner` works on a running `Node`'s parts (node/node.py makes them); the control socket
(node/commands.py) is one way to reach it, tests and simulations are others. Nothing
here knows about sockets, descriptors or the CLI.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Awaitable, Callable
from typing import Any

from node.errors import NodeError
from node.files import (
    FileNetwork,
    FileReport,
    RepairReport,
    check_file,
    get_file,
    put_file,
    repair_file,
)
from node.node import Node
from protocol.capability import ReadCapability, VerifyCapability
from protocol.manifest import FileInfo

__all__ = ["Owner", "Progress"]

Progress = Callable[[int, int], Awaitable[None]]


class Owner:
    """The owner's operations on `node`, which must be running."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def _files(self) -> FileNetwork:
        if self.node.files is None:
            raise NodeError("the node is not running")
        return self.node.files

    async def put(
        self,
        source: Any | AsyncIterable[bytes],
        *,
        size: int,
        name: str = "",
        progress: Progress | None = None,
    ) -> ReadCapability:
        """Put a file (a binary file object, or an async iterable of blocks)."""
        return await put_file(self._files(), source, size=size, name=name, progress=progress)

    async def get(
        self,
        capability: ReadCapability,
        write: Callable[[memoryview], Awaitable[None]],
        *,
        progress: Progress | None = None,
    ) -> FileInfo:
        """Get a file; `write` takes its bytes in order."""
        return await get_file(self._files(), capability, write, progress=progress)

    async def check(
        self, capability: VerifyCapability | ReadCapability, *, full: bool = False
    ) -> FileReport:
        """Which chunks of a file holders prove they have (a sample of a large file's
        segments unless `full`)."""
        return await check_file(self._files(), capability, full=full)

    async def repair(self, capability: VerifyCapability | ReadCapability) -> RepairReport:
        """Audit every segment of a file and rebuild what is missing (no key needed)."""
        return await repair_file(self._files(), capability)

    def status(self) -> dict[str, Any]:
        """The node's id, address, contacts and what it stores."""
        node = self.node
        transport, dht, chunks = node.transport, node.dht, node.chunks
        if transport is None or dht is None or chunks is None:
            raise NodeError("the node is not running")
        statistics = chunks.store.statistics()
        address = transport.address
        return {
            "node_id": transport.node_id.hex(),
            "listen": f"{address[0]}:{address[1]}" if address else None,
            "data_dir": str(node.config.data_dir),
            "contacts": len(dht.routing),
            "connections": len(transport.connected_peers()),
            "chunks": statistics.chunks,
            "used_bytes": statistics.used_bytes,
            "capacity": statistics.capacity,
            "free_bytes": statistics.free_bytes,
            "chunks_served": chunks.served,
            "chunks_stored": chunks.stored,
            "announcements_pending": chunks.announcements_pending,
            "segments_watched": len(node.steward.plan.groups) if node.steward else 0,
            "segments_checked_for_repair": self._files().repairs.segments_checked,
            "segments_repaired": self._files().repairs.segments_repaired,
            "chunks_rebuilt": self._files().repairs.chunks_rebuilt,
            "repair_bytes_moved": self._files().repairs.bytes_moved,
        }

    def peers(self) -> list[dict[str, Any]]:
        """The node's routing table, and which contacts it is connected to."""
        transport, dht = self.node.transport, self.node.dht
        if transport is None or dht is None:
            raise NodeError("the node is not running")
        connected = {peer.node_id for peer in transport.connected_peers()}
        return [
            {
                "node_id": contact.node_id.hex(),
                "address": f"{contact.address[0]}:{contact.address[1]}",
                "connected": contact.node_id in connected,
            }
            for contact in dht.routing.contacts()
        ]

    def liars(self) -> list[dict[str, Any]]:
        """The peers caught lying (node/liars.py), most recent first."""
        files = self._files()
        return [
            {
                "node_id": liar.node_id.hex(),
                "reason": liar.reason,
                "times": liar.times,
                "last_caught": liar.last_caught,
                "avoided": files.liars.avoided(liar.node_id),
            }
            for liar in files.liars.entries()
        ]
