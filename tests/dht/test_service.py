"""DhtService on its own: state saved to SQLite comes back after a restart; a join
through several bootstrap addresses starts from all of them."""

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


async def test_bootstrap_through_several_addresses_starts_from_every_one_that_answered(
    clock: MockClock,
) -> None:
    """A node given several bootstrap addresses asks each who it is, and its
    self-lookup starts from every one that answered, not just the first: joining
    through one node of each of two groups that have never heard of each other, it
    learns both groups whole; an address where nobody answers costs nothing. (The
    defence against joining through a Sybil alone: one honest address in the list
    is enough to hear of the honest nodes.) Through one address, one group."""
    rng = random.Random(6)
    network = MemoryNetwork(seed=6, min_latency=0.01, max_latency=0.05)
    async with trio.open_nursery() as nursery:
        groups: list[list[DhtService]] = []
        for group in ("a", "b"):
            members = []
            for number in range(4):
                identity = Identity.generate(rng.randbytes)
                host = f"{group}-{number}"
                service, _ = await run_node(nursery, network, identity, host, None, 4000)
                if members:
                    await service.bootstrap([(f"{group}-0", 4000)])
                members.append(service)
            groups.append(members)
        group_ids = [{service.node_id for service in members} for members in groups]
        # Neither group has heard of the other.
        for members, others in ((groups[0], group_ids[1]), (groups[1], group_ids[0])):
            for service in members:
                assert not others & {contact.node_id for contact in service.routing.contacts()}

        # Through one address, a node hears of that address's group only.
        single, _ = await run_node(
            nursery, network, Identity.generate(rng.randbytes), "single", None, 4000
        )
        await single.bootstrap([("b-0", 4000)])
        contacts = {contact.node_id for contact in single.routing.contacts()}
        assert group_ids[1] <= contacts
        assert not group_ids[0] & contacts
        group_ids[1].add(single.node_id)

        newcomer, _ = await run_node(
            nursery, network, Identity.generate(rng.randbytes), "newcomer", None, 4000
        )
        known = await newcomer.bootstrap([("a-0", 4000), ("nobody", 4000), ("b-0", 4000)])
        contacts = {contact.node_id for contact in newcomer.routing.contacts()}
        assert contacts == group_ids[0] | group_ids[1]
        assert known == 9
        # Both introducers were asked in the self-lookup, and learnt of the newcomer.
        for members in groups:
            assert newcomer.node_id in {c.node_id for c in members[0].routing.contacts()}
        nursery.cancel_scope.cancel()
