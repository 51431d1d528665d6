"""Leases, expiry and quotas end to end: real nodes (the simulation harness) on an
in-memory network under trio's MockClock, so that days pass in moments."""

from __future__ import annotations

import dataclasses
import random

import pytest
import trio
from trio.testing import MockClock

from node.errors import RemoteError
from node.files import fetch_manifest, get_file
from node.leases import DAY
from node.owner import Owner
from protocol.capability import ReadCapability
from protocol.chunk import GroupRecord, chunk_id
from protocol.identity import Identity
from protocol.lease import Lease, make_lease
from protocol.messages import ErrorCode
from simulations.harness import SIMULATED_NODE, SimNetwork, SimNode, open_network, put
from simulations.scenarios.durability import SIMULATED_DHT, SIMULATED_TRANSPORT

# Short leases, so that a test sees several renewals and an expiry in a few weeks.
LEASED = dataclasses.replace(
    SIMULATED_NODE,
    lease_length=9 * DAY,
    lease_renew_at=3 * DAY,
    lease_max=30 * DAY,
    upload_lease=DAY,
    trash_grace=2 * DAY,
)


# The DHT's upkeep and idle connections at the pace of the durability simulation: weeks
# of virtual time would otherwise be mostly handshakes for periodic queries.
QUIET = {"dht_config": SIMULATED_DHT, "transport_config": SIMULATED_TRANSPORT}


@pytest.fixture
def clock() -> MockClock:
    return MockClock(autojump_threshold=0)


def holders_of(network: SimNetwork, identifier: bytes) -> list[SimNode]:
    return [node for node in network.alive() if node.store.has(identifier)]


async def chunk_ids(network: SimNetwork, capability: ReadCapability) -> set[bytes]:
    """Every chunk of the file: its manifest (small files here: stored whole) and its
    segments' chunks."""
    files = network.nodes[0].node.files
    assert files is not None
    manifest = await fetch_manifest(files, capability.manifest_id)
    ids = {capability.manifest_id}
    for index in range(manifest.segment_count):
        ids.update(manifest.segment_chunk_ids(index))
    return ids


async def read(node: SimNode, capability: ReadCapability) -> bytes:
    pieces: list[bytes] = []

    async def write(data: memoryview) -> None:
        pieces.append(bytes(data))

    assert node.node.files is not None
    await get_file(node.node.files, capability, write)
    return b"".join(pieces)


async def test_a_put_is_leased_and_renewed_past_its_lease(clock: MockClock) -> None:
    """Every chunk of a put is held under the owner's lease; the owner renews it with a
    third left, so the file outlives three lease lengths; `ls` lists it."""
    data = random.Random(1).randbytes(5000)
    async with open_network(12, seed=11, node_config=LEASED, **QUIET) as network:
        owner = network.nodes[0]
        capability = await put(owner, data, name="kept.bin")
        for node in network.alive():
            assert node.node.keeper is not None
            for identifier in node.store.chunk_ids():
                leases = node.node.keeper.leases_for(identifier)
                assert [lease.public_key for lease in leases] == [owner.identity.public_key]
        await trio.sleep(30 * DAY)
        assert await read(network.nodes[7], capability) == data
        listed = Owner(owner.node).files()
        assert [entry["name"] for entry in listed] == ["kept.bin"]
        assert listed[0]["capability"] == str(capability)
        assert listed[0]["lease_expires"] > owner.node.keeper.now() + 2 * DAY  # type: ignore[union-attr]
        assert not listed[0]["pending"]
        assert owner.node.leaser is not None and owner.node.leaser.renewed >= 3
        network.nursery.cancel_scope.cancel()


async def test_forgotten_files_and_unfinished_uploads_go_but_leased_data_stays(
    clock: MockClock,
) -> None:
    """A file its owner forgets is deleted after the trash's grace, unless another key
    leases it; chunks stored with no lease (an upload cut short) go after a day and the
    grace; nothing is deleted before."""
    rng = random.Random(2)
    async with open_network(12, seed=12, node_config=LEASED, **QUIET) as network:
        owner, other = network.nodes[0], network.nodes[4]
        dropped = await put(owner, rng.randbytes(4000), name="dropped")
        shared = await put(owner, rng.randbytes(4000), name="shared")
        await Owner(other.node).keep(shared.verify_capability())
        # An upload cut short: a chunk stored, no lease ever sent.
        orphan = rng.randbytes(3000)
        orphan_id = chunk_id(orphan)
        holder = network.nodes[9]
        assert owner.node.files is not None
        await owner.node.files.client.store(holder.contact, orphan, GroupRecord.single(orphan_id))
        dropped_ids = await chunk_ids(network, dropped) - await chunk_ids(network, shared)
        released = await Owner(owner.node).forget(dropped)
        assert released.known and released.released == len(dropped_ids)
        await Owner(owner.node).forget(shared)
        assert [entry["name"] for entry in Owner(owner.node).files()] == []

        await trio.sleep(DAY + 2 * 3600)  # released and unleased: in the trash, not gone
        assert holder.store.has(orphan_id)
        assert all(holders_of(network, identifier) for identifier in dropped_ids)
        trash = sum(node.node.keeper.book.summary(0).trash_chunks for node in network.alive())  # type: ignore[union-attr]
        assert trash >= len(dropped_ids) + 1

        await trio.sleep(2 * DAY + 2 * 3600)  # the grace is over
        assert not holder.store.has(orphan_id)
        assert not any(holders_of(network, identifier) for identifier in dropped_ids)
        assert await read(network.nodes[7], shared)  # still leased by `other`
        network.nursery.cancel_scope.cancel()


async def test_bad_leases_are_refused_over_the_wire(clock: MockClock) -> None:
    """ADD_LEASE with a forged, foreign-signed, expired or future lease is answered
    REFUSED and changes nothing; a good one is taken for the chunks held."""
    async with open_network(12, seed=13, node_config=LEASED, **QUIET) as network:
        owner = network.nodes[0]
        capability = await put(owner, random.Random(3).randbytes(3000))
        holder = holders_of(network, capability.manifest_id)[0]
        client = network.nodes[5].node.files
        assert client is not None and holder.node.keeper is not None
        mallory = Identity(bytes([66]) * 32)
        await trio.sleep(DAY)  # the simulated wall clock starts at 0
        now = int(holder.node.keeper.now())
        good = make_lease(mallory, capability.manifest_id, now, now + int(5 * DAY))
        bad = {
            "forged": Lease(
                good.manifest_id, good.public_key, now, now + int(6 * DAY), good.signature
            ),
            "foreign": Lease(
                good.manifest_id, owner.identity.public_key, now, now + int(5 * DAY), good.signature
            ),
            "expired": make_lease(mallory, capability.manifest_id, 0, now - 3600),
            "future": make_lease(
                mallory, capability.manifest_id, now + int(DAY), now + int(5 * DAY)
            ),
        }
        for name, lease in bad.items():
            with pytest.raises(RemoteError) as refused:
                await client.client.add_lease(holder.contact, lease, [capability.manifest_id])
            assert refused.value.code == ErrorCode.REFUSED, name
        leases = holder.node.keeper.leases_for(capability.manifest_id)
        assert [lease.public_key for lease in leases] == [owner.identity.public_key]
        held = await client.client.add_lease(
            holder.contact, good, [capability.manifest_id, bytes(32)]
        )
        assert held == [True, False]
        on = holder.node.keeper.book.leases_on(capability.manifest_id, holder.node.keeper.now())
        # Node 5 named the chunk under Mallory's lease: node 5 pays for it, not Mallory.
        assert {(lease.public_key, payer) for lease, payer in on} == {
            (owner.identity.public_key, owner.node_id.value),
            (mallory.public_key, network.nodes[5].node_id.value),
        }
        network.nursery.cancel_scope.cancel()


async def test_a_node_over_quota_is_passed_over_and_the_owner_is_not(clock: MockClock) -> None:
    """A holder that gives no key any share answers OVER_QUOTA; the uploader places the
    chunks elsewhere and the put succeeds; the holder's own put still works."""
    stingy = dataclasses.replace(LEASED, key_share=0.0, prefix_share=0.0)
    async with open_network(11, seed=14, node_config=LEASED, **QUIET) as network:
        miser = await network.add_node(node_config=stingy)
        owner = network.nodes[0]
        assert owner.node.files is not None
        data = random.Random(4).randbytes(3000)
        with pytest.raises(RemoteError) as refused:
            await owner.node.files.client.store(
                miser.contact, data, GroupRecord.single(chunk_id(data))
            )
        assert refused.value.code == ErrorCode.OVER_QUOTA
        capability = await put(owner, random.Random(5).randbytes(20_000))
        assert not any(miser.store.has(i) for i in await chunk_ids(network, capability))
        assert await read(network.nodes[3], capability)
        mine = await put(miser, random.Random(6).randbytes(20_000))
        assert await read(network.nodes[3], mine)
        network.nursery.cancel_scope.cancel()


# Stewards that audit every 6 hours and count a silent holder lost after one.
REPAIRING = dataclasses.replace(
    LEASED, repair_grace=3600.0, audit_interval=6 * 3600.0, repair_delay=600.0
)


def kill_half(network: SimNetwork, owner: SimNode, segment: set[bytes]) -> None:
    """Five of the segment's ten holders (not the owner) gone for good: 5 left, under
    the repair threshold of 6."""
    holders = [
        node
        for node in network.alive()
        if node is not owner and any(node.store.has(i) for i in segment)
    ]
    network.kill(holders[:5])


def rebuilt(network: SimNetwork) -> int:
    return sum(node.node.files.repairs.chunks_rebuilt for node in network.alive())  # type: ignore[union-attr]


async def test_repair_carries_the_leases_to_new_holders(clock: MockClock) -> None:
    """When holders are gone for good, the chunks rebuilt on new nodes are kept under
    the file's lease there, not just their upload's."""
    async with open_network(16, seed=15, node_config=REPAIRING, **QUIET) as network:
        owner = network.nodes[0]
        capability = await put(owner, random.Random(7).randbytes(5000))
        ids = await chunk_ids(network, capability)
        segment = ids - {capability.manifest_id}
        kill_half(network, owner, segment)
        await trio.sleep(2 * DAY)
        assert rebuilt(network) >= 4  # back to at least 9 of 10
        for node in network.alive():
            assert node.node.keeper is not None
            for identifier in ids:
                if node.store.has(identifier):
                    on = node.node.keeper.book.leases_on(identifier, node.node.keeper.now())
                    assert [lease.public_key for lease, _ in on] == [owner.identity.public_key], (
                        node.index
                    )
        network.nursery.cancel_scope.cancel()


async def test_expired_data_is_not_repaired(clock: MockClock) -> None:
    """A file whose only lease was released is in the holders' trash: when half its
    holders go, nobody rebuilds it (the same loss is repaired while it is leased:
    test_repair_carries_the_leases_to_new_holders)."""
    async with open_network(16, seed=15, node_config=REPAIRING, **QUIET) as network:
        owner = network.nodes[0]
        capability = await put(owner, random.Random(7).randbytes(5000))
        segment = await chunk_ids(network, capability) - {capability.manifest_id}
        await Owner(owner.node).forget(capability)
        await trio.sleep(2 * 3600)  # a sweep: in the trash
        kill_half(network, owner, segment)
        await trio.sleep(1.5 * DAY)
        assert rebuilt(network) == 0
        network.nursery.cancel_scope.cancel()
