"""The node as composition root (node/node.py): what it refuses before it starts, and
that the caller's services (the control socket) stop with it, before its store closes."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest
import trio
from trio.testing import MockClock

from node.config import NodeConfig
from node.errors import ConfigError
from node.node import Node
from node.transport import MemoryNetwork
from protocol.identity import Identity

CONFIG = NodeConfig(
    data_dir=Path("/nonexistent/test-node"),
    listen=("10.0.0.1", 4410),
    storage="memory",
    workers=0,
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
