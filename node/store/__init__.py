"""The chunk store: the chunks this node holds for the network, each with its group record.

`open_chunk_store` gives the backend the configuration names: `DiskChunkStore` (files
under <data-dir>/chunks/ and an SQLite index; node.store.disk states its durability
promises) or `MemoryChunkStore` for tests and simulations. Both keep the `ChunkStore`
contract of node.store.base. The store is synchronous; the node calls it through
`trio.to_thread.run_sync`, and it is safe to call from several threads at once.
"""

from __future__ import annotations

from pathlib import Path

from node.store.base import ChunkInfo, ChunkStore, StoreStatistics
from node.store.config import StoreConfig
from node.store.disk import DiskChunkStore
from node.store.memory import MemoryChunkStore
from node.store.recovery import RecoveryReport

__all__ = [
    "ChunkInfo",
    "ChunkStore",
    "DiskChunkStore",
    "MemoryChunkStore",
    "RecoveryReport",
    "StoreConfig",
    "StoreStatistics",
    "open_chunk_store",
]


def open_chunk_store(data_dir: str | Path, config: StoreConfig) -> ChunkStore:
    """The store `config` asks for: in memory, or under `<data_dir>/chunks/` (recovered
    from any crash). Close it when done."""
    if config.in_memory:
        return MemoryChunkStore(config)
    return DiskChunkStore.open(data_dir, config)
