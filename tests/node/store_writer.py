"""The child process of the SIGKILL tests in test_store.py: puts chunks until killed.

    python tests/node/store_writer.py DATA_DIR SEED CHUNK_SIZE LIMIT [DIE_AT PHASE]

Puts up to LIMIT chunks of CHUNK_SIZE seeded random bytes into the disk store under
DATA_DIR, and prints each chunk's id in hex on a line of its own, flushed, only once
`put` has returned: a printed id is an acknowledged chunk.

With DIE_AT = N the process SIGKILLs itself during the put of its N-th chunk (counting
from 1), at a moment chosen through the store's own parameters, so that the kill lands
in that phase for certain:
- PHASE "write": halfway through writing the chunk's bytes to its temp file (`write`);
- PHASE "index": with the chunk's file in place, just before its index row is committed
  (the store reads `clock` for the row's time then; the test checks that the file is
  there, so it notices if that ever changes).
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time

from node.store import DiskChunkStore, StoreConfig
from protocol.chunk import GroupRecord
from protocol.chunk import chunk_id as chunk_id_of

# Group records as the default encoding makes them: 3-of-10.
K = 3
N = 10


def main(arguments: list[str]) -> None:
    data_dir, seed, chunk_size, limit = arguments[0], *map(int, arguments[1:4])
    die_at, phase = (int(arguments[4]), arguments[5]) if len(arguments) > 4 else (None, "")
    rng = random.Random(seed)
    dying = False

    def write(descriptor: int, data: memoryview) -> int:
        if dying and phase == "write":
            os.write(descriptor, data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        return os.write(descriptor, data)

    def clock() -> float:
        if dying and phase == "index":
            os.kill(os.getpid(), signal.SIGKILL)
        return time.time()

    config = StoreConfig(capacity=limit * chunk_size)
    with DiskChunkStore.open(data_dir, config, write=write, clock=clock) as store:
        for number in range(1, limit + 1):
            data = rng.randbytes(chunk_size)
            chunk_id = chunk_id_of(data)
            index = number % N
            siblings = [rng.randbytes(32) for _ in range(N)]
            siblings[index] = chunk_id
            dying = number == die_at
            store.put(chunk_id, data, GroupRecord(K, N, index, tuple(siblings)))
            print(chunk_id.hex(), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
