"""DhtService on its own: state saved to SQLite comes back after a restart."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import trio
from trio.testing import MockClock

from dht.service import PERSIST_INTERVAL, DhtService
from dht.storage import DhtStorage
from node.transport import MemoryNetwork
from protocol.identity import Identity, NodeId
from simulations.swarm import start_dht_node

HOUR = 3600.0


@pytest.fixture
def clock() -> MockClock:
    return MockClock(autojump_threshold=0)


async def run_node(
    nursery: trio.Nursery,
    network: MemoryNetwork,
    identity: Identity,
    host: str,
    storage: DhtStorage | None,
    port: int = 0,
) -> tuple[DhtService, trio.CancelScope]:
    _, service, scope = await start_dht_node(
        nursery,
        network,
        identity,
        host,
        port=port,
        storage=storage,
        rng=random.Random(1),
        # The wall clock the saved times refer to: virtual time, offset.
        wall_clock=lambda: 1e9 + trio.current_time(),
    )
    return service, scope


async def test_records_provisions_and_contacts_survive_a_restart(
    clock: MockClock, tmp_path: Path
) -> None:
    """A node restarted on its database knows its contacts, still holds the records it
    was given (with their expiry), and keeps republishing what it provides."""
    rng = random.Random(4)
    network = MemoryNetwork(seed=4, min_latency=0.01, max_latency=0.05)
    identities = [Identity.generate(rng.randbytes) for _ in range(6)]
    path = tmp_path / "dht.sqlite"
    key = NodeId(rng.randbytes(32))
    own_key = NodeId(rng.randbytes(32))
    async with trio.open_nursery() as nursery:
        others = []
        for number, identity in enumerate(identities[1:]):
            service, _ = await run_node(nursery, network, identity, f"peer-{number}", None)
            others.append(service)
        storage = DhtStorage.open(path)
        subject, scope = await run_node(nursery, network, identities[0], "subject", storage, 4000)
        for service in others:
            await service.bootstrap([("subject", 4000)])
        await subject.bootstrap([("peer-0", 1024)])
        for service in others:
            await service.provide(key)
        await subject.provide(own_key)
        records_before = {r.provider.node_id: r.expires_at for r in subject.records.records()}
        contacts_before = {contact.node_id for contact in subject.routing.contacts()}
        assert len(records_before) == len(others)
        assert len(contacts_before) == len(others)

        # Stop it (the state is saved on the way out), wait an hour, start it again.
        scope.cancel()
        await trio.sleep(HOUR)
        storage.close()
        storage = DhtStorage.open(path)
        restarted, _ = await run_node(nursery, network, identities[0], "subject", storage, 4000)
        assert {contact.node_id for contact in restarted.routing.contacts()} == contacts_before
        records_after = {r.provider.node_id: r.expires_at for r in restarted.records.records()}
        assert records_after.keys() == records_before.keys()
        for provider, expires_at in records_after.items():  # through the wall clock and back
            assert expires_at == pytest.approx(records_before[provider], abs=1e-3)
        assert own_key in restarted.provisions
        # It answers from what it restored, without any new announcement.
        found = {c.node_id for c in await others[0].find_providers(key)}
        assert found == {service.node_id for service in others}
        nursery.cancel_scope.cancel()
    storage.close()


async def test_records_are_saved_while_running_a_few_changes_at_a_time(
    clock: MockClock, tmp_path: Path
) -> None:
    """Every PERSIST_INTERVAL the service writes the records that changed: another
    connection sees them without the node stopping, and a record that expired is gone
    from the file after the next save."""
    rng = random.Random(5)
    network = MemoryNetwork(seed=5, min_latency=0.01, max_latency=0.05)
    identities = [Identity.generate(rng.randbytes) for _ in range(4)]
    path = tmp_path / "dht.sqlite"
    keys = [NodeId(rng.randbytes(32)) for _ in range(3)]
    async with trio.open_nursery() as nursery:
        storage = DhtStorage.open(path)
        subject, _ = await run_node(nursery, network, identities[0], "subject", storage, 4000)
        others = []
        for number, identity in enumerate(identities[1:]):
            service, _ = await run_node(nursery, network, identity, f"peer-{number}", None)
            await service.bootstrap([("subject", 4000)])
            others.append(service)
        for key in keys:
            await others[0].provide(key)
        started = trio.current_time()
        await trio.sleep(PERSIST_INTERVAL + 1.0)
        with DhtStorage.open(path) as reader:
            wall = 1e9 + trio.current_time()
            saved = reader.load_records(now=trio.current_time(), wall_time=wall)
        assert {record.key for record in saved} == set(keys)
        assert {record.provider.node_id for record in saved} == {others[0].node_id}
        # Nobody republishes: the records expire at 48 h, are swept within
        # expiry_sweep_interval, and their rows are deleted at the save after that.
        for key in keys:
            others[0].withdraw(key)
        await trio.sleep_until(started + 48 * HOUR + 10 * 60.0 + PERSIST_INTERVAL)
        assert len(subject.records) == 0
        with DhtStorage.open(path) as reader:
            assert reader.load_records(now=0.0, wall_time=-math.inf) == []
        nursery.cancel_scope.cancel()
    storage.close()
