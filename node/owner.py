"""What a node's owner can ask of it: put, get and check files, and its status and peers.

`Owner` works on a running `Node`'s parts (node/node.py makes them); the control socket
(node/commands.py) is one way to reach it, tests and simulations are others. Nothing
here knows about sockets, descriptors or the CLI.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, Awaitable, Callable
from typing import Any

import trio

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
from node.files.placement import Placement
from node.node import Node
from node.quota import open_capacity
from node.renewal import Leaser, Released
from protocol.capability import ReadCapability, VerifyCapability
from protocol.manifest import FileInfo

__all__ = ["Owner", "Progress"]

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], Awaitable[None]]


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


class Owner:
    """The owner's operations on `node`, which must be running."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def _leaser(self) -> Leaser:
        if self.node.leaser is None:
            raise NodeError("the node is not running")
        return self.node.leaser

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
        """Put a file (a binary file object, or an async iterable of blocks), lease it at
        the nodes that took its chunks, and add it to the node's list of files."""
        placement = Placement()
        activity = self.node.activity
        started = trio.current_time()
        try:
            capability = await put_file(
                self._files(), source, size=size, name=name, progress=progress, placement=placement
            )
            await self._leaser().leased_after_put(capability, placement, name=name, size=size)
        except BaseException as exc:
            activity.puts_failed += 1
            logger.info("put of %s failed: %s", _mb(size), exc or type(exc).__name__)
            raise
        activity.puts += 1
        activity.put_bytes += size
        logger.info(
            "put %s in %.1f s: %d chunks on %d nodes",
            _mb(size),
            trio.current_time() - started,
            placement.chunks_stored,
            len(placement.holders),
        )
        return capability

    async def keep(self, capability: VerifyCapability | ReadCapability) -> dict[str, Any]:
        """Lease a file of anyone's (the verify capability is enough), charged to this
        node, and keep renewing it."""
        result = await self._leaser().keep(capability)
        entry = self._leaser().library.get(capability.manifest_id)
        return {
            "chunks": result.chunks,
            "leased": len(result.covered),
            "holders": result.holders,
            "lease_expires": entry.lease_expires if entry is not None else None,
        }

    async def forget(self, capability: VerifyCapability | ReadCapability) -> Released:
        """Give up this node's lease of a file and drop it from the list."""
        return await self._leaser().forget(capability)

    def files(self) -> list[dict[str, Any]]:
        """The files this node put or keeps (node/library.py), oldest first."""
        return [
            {
                "name": entry.name,
                "size": entry.size,
                "put_at": entry.put_at,
                "lease_expires": entry.lease_expires,
                "pending": entry.pending,
                "capability": entry.capability,
            }
            for entry in self._leaser().library.files()
        ]

    async def get(
        self,
        capability: ReadCapability,
        write: Callable[[memoryview], Awaitable[None]],
        *,
        progress: Progress | None = None,
    ) -> FileInfo:
        """Get a file; `write` takes its bytes in order."""
        activity = self.node.activity
        started = trio.current_time()
        try:
            info = await get_file(self._files(), capability, write, progress=progress)
        except BaseException as exc:
            activity.gets_failed += 1
            logger.info("get failed: %s", exc or type(exc).__name__)
            raise
        activity.gets += 1
        activity.get_bytes += info.size
        logger.info("got %s in %.1f s", _mb(info.size), trio.current_time() - started)
        return info

    async def check(
        self, capability: VerifyCapability | ReadCapability, *, full: bool = False
    ) -> FileReport:
        """Which chunks of a file holders prove they have (a sample of a large file's
        segments unless `full`)."""
        self.node.activity.checks += 1
        return await check_file(self._files(), capability, full=full)

    async def repair(self, capability: VerifyCapability | ReadCapability) -> RepairReport:
        """Audit every segment of a file and rebuild what is missing (no key needed)."""
        report = await repair_file(self._files(), capability)
        self.node.activity.repairs += 1
        logger.info(
            "repair: %d segments, %s fetched, %s stored",
            len(report.segments),
            _mb(report.bytes_fetched),
            _mb(report.bytes_stored),
        )
        return report

    def status(self) -> dict[str, Any]:
        """The node's id, address, contacts and what it stores."""
        node = self.node
        transport, dht, chunks = node.transport, node.dht, node.chunks
        if transport is None or dht is None or chunks is None:
            raise NodeError("the node is not running")
        statistics = chunks.store.statistics()
        address = transport.address
        keeper = node.keeper
        leases = keeper.book.summary(keeper.now()) if keeper is not None else None
        kept = self._leaser().library.files()
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
            "owner_bytes": leases.owner_bytes if leases else 0,
            "donated_bytes": open_capacity(
                node.config.quota_settings(),
                statistics.capacity,
                leases.owner_bytes if leases else 0,
            ),
            "trash_chunks": leases.trash_chunks if leases else 0,
            "trash_bytes": leases.trash_bytes if leases else 0,
            "leases": leases.leases if leases else 0,
            "chunks_deleted": keeper.deleted if keeper else 0,
            "files_kept": len(kept),
            "files_kept_bytes": sum(entry.size or 0 for entry in kept),
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
