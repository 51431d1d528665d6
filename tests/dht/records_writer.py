"""The child process of the crash test in test_storage.py: saves provider record
changes until killed.

    python tests/dht/records_writer.py PATH SEED

Keeps a ProviderStore of about 5,000 records; each round adds 1,000 new records,
refreshes 1,000 from another port, and lets the oldest expire, then saves the changes
(`take_changes`, `DhtStorage.save_record_changes`, as the service does). Before each
save it prints `saving ROUND DIGEST`, and `saved ROUND` once the save has returned,
both flushed. DIGEST is the sha256 of the sorted (key, provider id, port) of every
record the save stores: after a kill the database must hold exactly the last saved
round's state, or the state of the round being saved if that one had committed.
"""

from __future__ import annotations

import hashlib
import random
import sys

from dht.config import DhtConfig
from dht.contact import Contact
from dht.providers import ProviderRecord, ProviderStore
from dht.storage import DhtStorage
from protocol.identity import NodeId

ADDED_PER_ROUND = 1000
TTL = 5.0  # rounds: a record lives five rounds unless refreshed


def digest(records: list[ProviderRecord]) -> str:
    rows = sorted(
        (record.key.value, record.provider.node_id.value, record.provider.address[1])
        for record in records
    )
    return hashlib.sha256(repr(rows).encode()).hexdigest()


def main(arguments: list[str]) -> None:
    path, seed = arguments[0], int(arguments[1])
    rng = random.Random(seed)
    config = DhtConfig(provider_ttl=TTL, republish_interval=1.0, max_records_per_prefix=None)
    store = ProviderStore(config)
    providers = [NodeId(rng.randbytes(32)) for _ in range(50)]
    storage = DhtStorage.open(path)
    round_number = 0
    while True:
        round_number += 1
        now = float(round_number)
        for _ in range(ADDED_PER_ROUND):
            provider = rng.choice(providers)
            store.add(NodeId(rng.randbytes(32)), Contact(provider, ("10.1.2.3", 4000)), now)
        current = store.records()
        for record in rng.sample(current, min(ADDED_PER_ROUND, len(current))):
            moved = Contact(record.provider.node_id, ("10.1.2.3", 4000 + round_number))
            store.add(record.key, moved, now)
        store.expire(now)
        changes = store.take_changes()
        records: list[ProviderRecord] = []
        while batch := changes.take_records(500):
            records.extend(batch)
        # Said before the save, so that a kill between its commit and its "saved" line
        # still leaves the test knowing the state the database may hold.
        print(f"saving {round_number} {digest(store.records())}", flush=True)
        # The DHT's clock is the wall clock here, so the rows' times stay as they are.
        storage.save_record_changes(
            records, changes.removed, full=changes.full, now=now, wall_time=now
        )
        print(f"saved {round_number}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
