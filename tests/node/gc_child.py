"""The child process of the SIGKILL-during-collection test in test_keeper.py.

    python tests/node/gc_child.py DATA_DIR LEASED UNLEASED DIE_AT PHASE

Fills a disk store under DATA_DIR with LEASED chunks under a running lease and
UNLEASED chunks whose upload lease is over, then runs the garbage collector
(node/keeper.py) with no grace, and SIGKILLs itself during the DIE_AT-th deletion
(counting from 1), in PHASE:
- "before": the chunk marked as being deleted, the store not yet touched;
- "after": deleted from the store, the lease book not yet told;
- "told": both done, before the next chunk.
It prints the ids of the leased chunks in hex first, one a line, flushed.
"""

from __future__ import annotations

import os
import random
import signal
import sys
from pathlib import Path
from typing import Any

import trio

from node.chunks import inline
from node.keeper import LeaseKeeper
from node.leases import DAY, LEASES_FILE, LeaseBook, LeaseSettings
from node.quota import chunk_cost
from node.store import DiskChunkStore, StoreConfig
from protocol.chunk import GroupRecord, chunk_id
from protocol.identity import Identity
from protocol.lease import make_lease

START = 1_800_000_000.0
OWNER = Identity(bytes([1]) * 32)
SETTINGS = LeaseSettings(trash_grace=0.0)


class DyingStore:
    """The store, but the process dies around its DIE_AT-th delete."""

    def __init__(self, store: DiskChunkStore, die_at: int, phase: str) -> None:
        self._store = store
        self._die_at = die_at
        self._phase = phase
        self.deletes = 0

    def delete(self, identifier: bytes) -> None:
        self.deletes += 1
        dying = self.deletes == self._die_at
        if dying and self._phase == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        self._store.delete(identifier)
        if dying and self._phase == "after":
            os.kill(os.getpid(), signal.SIGKILL)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def main(arguments: list[str]) -> None:
    data_dir = Path(arguments[0])
    leased, unleased, die_at = map(int, arguments[1:4])
    phase = arguments[4]
    rng = random.Random(leased * 1000 + unleased)
    store = DiskChunkStore.open(data_dir, StoreConfig(capacity=10**9))
    book = LeaseBook(data_dir / LEASES_FILE, OWNER.node_id, SETTINGS)
    manifest = bytes(32)
    lease = make_lease(OWNER, manifest, int(START), int(START + 90 * DAY))
    kept: list[bytes] = []
    for number in range(leased + unleased):
        data = rng.randbytes(rng.randrange(1, 9000))
        identifier = chunk_id(data)
        store.put(identifier, data, GroupRecord.single(identifier))
        book.add_upload(identifier, chunk_cost(len(data), 1), OWNER.node_id, None, START)
        if number < leased:
            book.add_lease(lease, [identifier], None, None, START, used=0, capacity=10**9)
            kept.append(identifier)
    for identifier in kept:
        print(identifier.hex(), flush=True)
    dying = DyingStore(store, die_at, phase)

    async def collect() -> None:
        keeper = LeaseKeeper(
            book,
            dying,  # type: ignore[arg-type]
            transport=None,
            offload=inline,
            wall_clock=lambda: START + 2 * DAY + trio.current_time(),
        )
        deleted = 0

        def told(identifier: bytes) -> None:
            nonlocal deleted
            deleted += 1
            if deleted == die_at and phase == "told":
                os.kill(os.getpid(), signal.SIGKILL)

        keeper.on_deleted = told
        await keeper.sweep(0.0)

    trio.run(collect)


if __name__ == "__main__":
    main(sys.argv[1:])
