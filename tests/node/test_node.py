"""The node as composition root (node/node.py): what it refuses before it starts, and
that the caller's services (the control socket) stop with it, before its store closes."""

from __future__ import annotations

import logging
import random
from dataclasses import replace
from pathlib import Path

import pytest
import trio
from trio.testing import MockClock

from dht.config import DhtConfig
from node.config import NodeConfig, capacity_warning
from node.errors import ConfigError, NodeError
from node.node import Node
from node.transport import MemoryNetwork
from protocol.identity import Identity

CONFIG = NodeConfig(
    data_dir=Path("/nonexistent/test-node"),
    listen=("10.0.0.1", 4410),
    storage="memory",
    workers=0,
    id_difficulty=0,
)


@pytest.fixture
def clock() -> MockClock:
    return MockClock(autojump_threshold=0)


async def test_services_stop_before_the_node_closes_its_store(clock: MockClock) -> None:
    """A service still busy when the node is stopped (a command in the middle of a store
    call) finishes before `Node.run` returns, and so before the store it owns closes:
    services run in the node's nursery."""
    identity = Identity.generate(random.Random(1).randbytes)
    network = MemoryNetwork(seed=1)
    events: list[str] = []

    async def service(node: Node, task_status: trio.TaskStatus[None]) -> None:
        assert node.chunks is not None and node.files is not None  # started last
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(1)  # a store call in a worker thread, say
                assert node.chunks is not None
                node.chunks.store.has(bytes(32))
                events.append("service done")

    node = Node(
        CONFIG,
        identity=identity,
        link_layer=network.link_layer(identity, "10.0.0.1"),
        services=[service],
    )

    async def run(task_status: trio.TaskStatus[None]) -> None:
        await node.run(task_status=task_status)
        events.append("node.run returned")

    async with trio.open_nursery() as nursery:
        await nursery.start(run)
        node.stop()
    assert events == ["service done", "node.run returned"]


async def test_a_code_whose_chunks_cannot_be_sent_is_refused_before_anything_starts(
    clock: MockClock,
) -> None:
    """segment_size 64 MiB with k = 3 makes chunks over the wire's limit: the node
    refuses to start, saying so, before it listens or touches a store."""
    identity = Identity.generate(random.Random(2).randbytes)
    network = MemoryNetwork(seed=2)
    node = Node(
        replace(CONFIG, segment_size=64 * 1024 * 1024),
        identity=identity,
        link_layer=network.link_layer(identity, "10.0.0.1"),
    )
    with pytest.raises(ConfigError, match="segment_size 67108864 with k = 3"):
        await node.run()
    assert node.transport is None


async def test_the_owner_lists_the_peers_caught_lying(clock: MockClock) -> None:
    """`Owner.liars()` (what `freehold peers` shows) lists a caught peer, avoided."""
    from node.owner import Owner
    from protocol.identity import NodeId

    identity = Identity.generate(random.Random(3).randbytes)
    network = MemoryNetwork(seed=3)
    node = Node(CONFIG, identity=identity, link_layer=network.link_layer(identity, "10.0.0.1"))
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        assert node.files is not None
        liar = NodeId(bytes([9]) * 32)
        node.files.liars.caught(liar, "failed an audit of segment 0 of a file")
        (entry,) = Owner(node).liars()
        assert entry["node_id"] == liar.hex() and entry["avoided"] and entry["times"] == 1
        node.stop()


def test_peers_prints_the_liars(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`freehold peers` marks a liar in the routing table and lists every liar."""
    from node import cli_client

    liar = "ab" * 32
    answer = {
        "peers": [
            {"node_id": liar, "address": "10.0.0.2:4410", "connected": True},
            {"node_id": "cd" * 32, "address": "10.0.0.3:4410", "connected": False},
        ],
        "liars": [
            {"node_id": liar, "reason": "failed an audit", "times": 2, "avoided": True},
        ],
    }
    monkeypatch.setattr(cli_client, "_command", lambda data_dir, name, **_: answer)
    assert cli_client.peers(None, Path("/nonexistent")) == 0  # type: ignore[arg-type]
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"* {liar} 10.0.0.2:4410  (caught lying: avoided)"
    assert lines[1] == f"  {'cd' * 32} 10.0.0.3:4410"
    assert lines[2:] == ["caught lying:", f"  {liar} 2x, avoided: failed an audit"]


async def test_a_capacity_beyond_the_free_disk_is_warned_about_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A node on disk promising a petabyte says at start that the disk cannot give it;
    one promising a megabyte says nothing."""
    for capacity, warned in ((1024**5, True), (1024**2, False)):
        caplog.clear()
        identity = Identity.generate(random.Random(capacity).randbytes)
        network = MemoryNetwork(seed=3)
        data_dir = tmp_path / str(capacity)
        node = Node(
            replace(CONFIG, data_dir=data_dir, storage="disk", capacity=capacity),
            identity=identity,
            link_layer=network.link_layer(identity, "10.0.0.1"),
        )
        with caplog.at_level(logging.WARNING, logger="node.node"):
            async with trio.open_nursery() as nursery:
                await nursery.start(node.run)
                node.stop()
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("is more than the disk can give" in w for w in warnings) is warned, warnings
        if warned:
            assert "1024.0 TiB" in warnings[0] and str(data_dir) in warnings[0]


def test_the_capacity_warning_counts_the_chunks_held_as_available() -> None:
    """Chunks already held count with the free space: a full store on a full disk is
    within its capacity."""
    where = Path("/data")
    assert capacity_warning(100, used=60, free=40, where=where) is None
    message = capacity_warning(101, used=60, free=40, where=where)
    assert message is not None and "60 B of chunks held and 40 B free in /data" in message


async def test_an_identity_without_the_networks_work_is_refused_at_start(
    clock: MockClock,
) -> None:
    """A node given an identity whose id misses the network's proof of work would be
    refused by every peer: it says so and does not start (issue 18, row 1)."""
    from protocol.identity import meets_difficulty

    rng = random.Random(4)
    identity = next(
        candidate
        for candidate in (Identity(rng.randbytes(32)) for _ in range(100))
        if not meets_difficulty(candidate.node_id, 8)
    )
    network = MemoryNetwork(seed=4)
    node = Node(
        replace(CONFIG, id_difficulty=8),
        identity=identity,
        link_layer=network.link_layer(identity, "10.0.0.1"),
    )
    with pytest.raises(NodeError, match="proof of work"):
        await node.run()


async def test_the_hosts_of_routing_table_contacts_may_use_the_reserved_slots(
    clock: MockClock,
) -> None:
    """The node tells its transport which hosts are those of its routing table's
    contacts (they may use the reserved slots); a stranger's host is not one."""
    from simulations.harness import SIMULATED_NODE, open_network

    async with open_network(4, seed=6, node_config=SIMULATED_NODE) as network:
        first = network.nodes[0].node
        assert first.transport is not None and first.dht is not None
        await trio.sleep(1.5)  # what the transport knows is at most a second old
        hosts = {contact.address[0] for contact in first.dht.routing.contacts()}
        assert hosts
        assert all(first.transport.known_host(host) for host in hosts)
        assert not first.transport.known_host("203.0.113.77")
        network.nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("host", "quota"),
    [("127.0.0.1", None), ("10.0.0.1", DhtConfig().max_records_per_prefix)],
)
async def test_a_loopback_node_lifts_the_per_prefix_record_quota(
    clock: MockClock, host: str, quota: int | None
) -> None:
    """A node on loopback, whose peers all share 127.0.0.0/24, lifts the per-prefix quota
    of provider records (as it lifts the routing table's prefix limits) and keeps the
    node-wide budget; a node elsewhere keeps both."""
    identity = Identity.generate(random.Random(2).randbytes)
    network = MemoryNetwork(seed=2)
    node = Node(
        replace(CONFIG, listen=(host, 4410)),
        identity=identity,
        link_layer=network.link_layer(identity, host),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        assert node.dht is not None
        assert node.dht.config.max_records_per_prefix == quota
        assert node.dht.config.max_records == DhtConfig().max_records
        node.stop()
