"""Many real nodes (transport + DHT) on one in-memory network, in one trio loop.

The nodes are the same `Transport` and `DhtService` that `freehold node` runs; only the
link layer is the in-memory one. Run under trio's MockClock for virtual time. Every
random choice comes from the seed, so a swarm replays exactly.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from dht.config import DhtConfig
from dht.contact import Contact
from dht.service import DhtService, inline
from dht.storage import DhtStorage
from node.dht_transport import DhtTransportAdapter
from node.transport import MemoryNetwork, Transport, TransportConfig
from protocol.identity import Identity, NodeId

__all__ = ["Swarm", "SwarmNode", "open_swarm"]

# Loopback-style tests run every node "on one machine": no IP-prefix limits.
SWARM_DHT_CONFIG = DhtConfig(ip_prefix_limit_per_bucket=None, ip_prefix_limit_per_table=None)


@dataclass
class SwarmNode:
    index: int
    host: str
    identity: Identity
    transport: Transport
    dht: DhtService
    scope: trio.CancelScope
    alive: bool = True

    @property
    def node_id(self) -> NodeId:
        return self.identity.node_id

    @property
    def contact(self) -> Contact:
        assert self.transport.address is not None
        return Contact(self.node_id, self.transport.address)


@dataclass
class Swarm:
    network: MemoryNetwork
    rng: random.Random
    nodes: list[SwarmNode] = field(default_factory=list)

    def alive(self) -> list[SwarmNode]:
        return [node for node in self.nodes if node.alive]

    def silence(self, victims: Sequence[SwarmNode]) -> None:
        """Make nodes vanish as a crashed machine does: no answer, no reset, and they
        stay gone (their tasks are cancelled too)."""
        for node in victims:
            node.alive = False
            node.scope.cancel()
        gone = {node.host for node in self.nodes if not node.alive}
        self.network.partition(gone)

    def true_closest(
        self, target: NodeId, count: int, *, exclude: NodeId | None = None
    ) -> list[NodeId]:
        ids = [node.node_id for node in self.alive() if node.node_id != exclude]
        return sorted(ids, key=target.distance)[:count]


@asynccontextmanager
async def open_swarm(
    count: int,
    *,
    seed: int,
    dht_config: DhtConfig = SWARM_DHT_CONFIG,
    transport_config: TransportConfig | None = None,
    min_latency: float = 0.010,
    max_latency: float = 0.100,
    loss: float = 0.0,
    bootstrap: bool = True,
) -> AsyncIterator[Swarm]:
    """Start `count` nodes; each joins through a random earlier node."""
    rng = random.Random(seed)
    network = MemoryNetwork(seed=seed, min_latency=min_latency, max_latency=max_latency, loss=loss)
    swarm = Swarm(network, rng)
    async with trio.open_nursery() as nursery:
        for index in range(count):
            swarm.nodes.append(
                await _start_node(nursery, swarm, index, dht_config, transport_config)
            )
        if bootstrap:
            for node in swarm.nodes[1:]:
                introducer = swarm.nodes[rng.randrange(node.index)]
                await node.dht.bootstrap([introducer.contact.address])
        yield swarm
        nursery.cancel_scope.cancel()


async def start_dht_node(
    nursery: trio.Nursery,
    network: MemoryNetwork,
    identity: Identity,
    host: str,
    *,
    port: int = 0,
    dht_config: DhtConfig = SWARM_DHT_CONFIG,
    transport_config: TransportConfig | None = None,
    storage: DhtStorage | None = None,
    rng: random.Random | None = None,
    wall_clock: Callable[[], float] = time.time,
) -> tuple[Transport, DhtService, trio.CancelScope]:
    """Start one node (Transport + DhtService) on `network` in `nursery`; cancelling the
    returned scope stops it (saving its DHT state if it has storage)."""
    transport = Transport(
        identity,
        network.link_layer(identity, host),
        listen_address=(host, port),
        config=transport_config,
    )
    scope = trio.CancelScope()

    async def run_node(task_status: trio.TaskStatus[DhtService]) -> None:
        with scope:
            async with trio.open_nursery() as inner:
                await inner.start(transport.run)
                assert transport.address is not None
                dht = DhtService(
                    DhtTransportAdapter(transport),
                    listen_port=transport.address[1],
                    config=dht_config,
                    storage=storage,
                    rng=rng,
                    wall_clock=wall_clock,
                    offload=inline,  # under a MockClock: no worker threads
                )
                await inner.start(dht.run)
                task_status.started(dht)

    dht = await nursery.start(run_node)
    return transport, dht, scope


async def _start_node(
    nursery: trio.Nursery,
    swarm: Swarm,
    index: int,
    dht_config: DhtConfig,
    transport_config: TransportConfig | None,
) -> SwarmNode:
    rng = swarm.rng
    identity = Identity.generate(rng.randbytes)
    host = f"node-{index}"
    transport, dht, scope = await start_dht_node(
        nursery,
        swarm.network,
        identity,
        host,
        dht_config=dht_config,
        transport_config=transport_config,
        rng=random.Random(rng.getrandbits(64)),
    )
    return SwarmNode(index, host, identity, transport, dht, scope)
