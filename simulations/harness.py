"""The simulation harness: many real `Node`s on one in-memory network, in virtual time.

Each simulated node is the `node.node.Node` that `freehold node` runs (transport, DHT,
chunk service, put and get), configured with `storage = "memory"` (no disk) and
`workers = 0` (coding inline: worker threads would let trio's MockClock jump past
timeouts and make runs unrepeatable). Only its link layer differs: a
`MemoryLinkLayer` on one seeded `MemoryNetwork` (latency per pair of hosts, loss,
partitions). Nothing in node/, dht/ or protocol/ knows it is simulated.

Reproducibility. Every random choice (identities, latencies, loss, which node joins
through which, the DHT's own choices, file keys) comes from the seed. What else could
vary is trio's scheduler, which reverses each batch of runnable tasks at random:
`seed_scheduler(seed)` seeds that generator (trio's `_r`, the one it registers with
Hypothesis for the same purpose). Sets and dicts keyed by bytes iterate in an order
that depends on PYTHONHASHSEED; `python -m simulations` re-runs itself with
PYTHONHASHSEED=0 so that two runs of one seed print the same summary. Run
`open_network` under `trio.testing.MockClock(autojump_threshold=0)`.

Hosts are `10.<i // 256>.<i % 256>.1`: one /24 per node, so the DHT's per-prefix
limits behave as on the Internet.
"""

from __future__ import annotations

import gc
import io
import math
import random
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import trio

from dht.config import DhtConfig
from dht.contact import Contact
from dht.errors import DhtError
from node.config import NodeConfig
from node.health import HealthBook
from node.leases import LeaseBook
from node.library import Library
from node.node import Node
from node.store import ChunkStore, MemoryChunkStore, StoreConfig
from node.transport import MemoryNetwork, TransportConfig
from node.transport.memory import Intercept
from protocol.capability import ReadCapability
from protocol.identity import Identity, NodeId

__all__ = [
    "PORT",
    "SimNetwork",
    "SimNode",
    "memory_high_water_mib",
    "open_network",
    "seed_scheduler",
]

PORT: Final = 4410
# Node settings of the simulations: the real defaults, minus the disk.
# Nodes joining at once, as a share of those already in (open_network).
JOIN_WAVE: Final = 0.1
SIMULATED_NODE: Final = NodeConfig(
    data_dir=Path("/nonexistent/simulated"),
    listen=("0.0.0.0", PORT),
    storage="memory",
    workers=0,
    id_difficulty=0,  # the simulated network's: ids as cheap as in tests
)


async def put(simulated: SimNode, data: bytes, *, name: str = "") -> ReadCapability:
    """Put `data` as the node's owner does (`freehold put`): placed, leased at the
    nodes that took it, and kept in the node's list for renewal."""
    from node.owner import Owner

    return await Owner(simulated.node).put(io.BytesIO(data), size=len(data), name=name)


def seed_scheduler(seed: int) -> None:
    """Make trio's choice of task order (which batches it reverses) follow `seed`."""
    from trio._core import _run

    _run._r.seed(seed)


# gc.set_threshold while a scenario runs: allocations between two young collections
# (Python's default is 700), young collections per middle one and middle ones per full
# one (both 10 by default).
COLLECTION_THRESHOLDS: Final = (100_000, 50, 1000)


@contextmanager
def collecting_rarely() -> Iterator[None]:
    """Run the cyclic garbage collector rarely, then restore its thresholds.

    A thousand nodes make a heap of millions of long-lived objects (routing tables,
    connections, tasks), and with the default thresholds the collector kept walking
    them: the 300-node lookup scenario ran in 56 s instead of 76 s with these, with the
    same peak memory and the same summary. Nothing in the nodes relies on when garbage
    is collected, so the results do not change.
    """
    saved = gc.get_threshold()
    gc.set_threshold(*COLLECTION_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*saved)


def memory_high_water_mib() -> float:
    """This process's peak resident memory so far, in MiB (Linux; 0 elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@dataclass
class SimNode:
    index: int
    host: str
    identity: Identity
    node: Node
    scope: trio.CancelScope
    started_at: float
    store: ChunkStore
    health: HealthBook
    seed: int
    leases: LeaseBook
    library: Library
    alive: bool = True
    """False once gone for good (`kill`)."""
    online: bool = True
    """False while stopped for a while (`take_offline`), its store kept for its return."""

    @property
    def node_id(self) -> NodeId:
        return self.identity.node_id

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, PORT)

    @property
    def contact(self) -> Contact:
        return Contact(self.node_id, self.address)


@dataclass(frozen=True)
class _Parts:
    """What a simulated node keeps across its restarts."""

    identity: Identity
    host: str
    store: ChunkStore
    health: HealthBook
    leases: LeaseBook
    library: Library
    seed: int


@dataclass
class SimNetwork:
    """The simulated nodes and the network they share."""

    network: MemoryNetwork
    rng: random.Random
    nursery: trio.Nursery
    node_config: NodeConfig
    dht_config: DhtConfig | None = None
    transport_config: TransportConfig | None = None
    nodes: list[SimNode] = field(default_factory=list)
    wall_started: float = field(default_factory=time.perf_counter)

    def alive(self) -> list[SimNode]:
        """The nodes running now: not gone for good, not offline for a while."""
        return [node for node in self.nodes if node.alive and node.online]

    async def add_node(
        self, *, join: bool = True, node_config: NodeConfig | None = None
    ) -> SimNode:
        """Start one more node; with `join`, it bootstraps through a random live node.
        `node_config` replaces the network's for this node (an uploader with its own
        k-of-n, say)."""
        simulated = await self.start_node(node_config=node_config)
        if join:
            await self.join(simulated)
        return simulated

    async def start_node(
        self, *, node_config: NodeConfig | None = None, host: str | None = None
    ) -> SimNode:
        """Start one more node, not yet joined: at `host`, or by default at a /24 of
        its own (10.x.y.1)."""
        index = len(self.nodes)
        identity = Identity.generate(self.rng.randbytes)
        if host is None:
            host = f"10.{index // 256 % 256}.{index % 256}.1"
            if index >= 65536:
                host = f"11.{index // 65536}.{index // 256 % 256}.{index % 256}"
        config = replace(node_config or self.node_config, listen=(host, PORT))
        store = MemoryChunkStore(StoreConfig(capacity=config.capacity, in_memory=True))
        # Databases in memory, so that the health and the leases survive restarts.
        health = HealthBook(Path(":memory:"))
        leases = LeaseBook(None, identity.node_id, config.lease_settings(), config.quota_settings())
        library = Library(None)
        seed = self.rng.getrandbits(64)
        parts = _Parts(identity, host, store, health, leases, library, seed)
        node = Node(config, **self._node_parts(parts))
        simulated = SimNode(
            index,
            host,
            identity,
            node,
            trio.CancelScope(),
            0.0,
            store,
            health,
            seed,
            leases,
            library,
        )
        await self._run(simulated)
        self.nodes.append(simulated)
        return simulated

    def _node_parts(self, simulated: SimNode | _Parts) -> dict[str, Any]:
        """What a simulated node is made of besides its config."""
        seed = simulated.seed
        return {
            "identity": simulated.identity,
            "link_layer": self.network.link_layer(
                simulated.identity,
                simulated.host,
                random_bytes=random.Random(seed ^ 0xC0FFEE).randbytes,
            ),
            "store": simulated.store,
            "health": simulated.health,
            "leases": simulated.leases,
            "library": simulated.library,
            "dht_config": self.dht_config,
            "transport_config": self.transport_config,
            "rng": random.Random(seed),
            "random_bytes": random.Random(seed ^ 0x5EED).randbytes,
            "wall_clock": trio.current_time,
        }

    async def _run(self, simulated: SimNode) -> None:
        node = simulated.node
        scope = trio.CancelScope()

        async def run(task_status: trio.TaskStatus[None]) -> None:
            with scope:
                await node.run(task_status=task_status)

        await self.nursery.start(run)
        simulated.scope = scope
        simulated.started_at = trio.current_time()

    def take_offline(self, simulated: SimNode) -> None:
        """Stop a node for a while, as a machine switched off: its tasks stop, what is
        sent to it is lost, and its store and health record wait for `bring_back`."""
        simulated.online = False
        simulated.scope.cancel()
        self._partition()

    async def bring_back(self, simulated: SimNode) -> bool:
        """Start an offline node again, as its owner does: the same identity, store
        and health record, a fresh process (its DHT tables were in memory, so it joins
        again through a live node). Whether it joined."""
        assert simulated.alive and not simulated.online
        simulated.seed = self.rng.getrandbits(64)
        simulated.node = Node(simulated.node.config, **self._node_parts(simulated))
        simulated.online = True
        self._partition()
        await self._run(simulated)
        return await self.join(simulated)

    def _partition(self) -> None:
        """Cut off every node that is gone or offline."""
        self.network.partition(
            [node.host for node in self.nodes if not (node.alive and node.online)]
        )

    async def join(
        self,
        simulated: SimNode,
        introducers: Sequence[SimNode] | None = None,
        *,
        count: int = 1,
    ) -> bool:
        """Bootstrap `simulated` through `count` distinct random ones of `introducers`
        (default: the other live nodes) at once, as a node given several bootstrap
        addresses does: DhtService.bootstrap asks each who it is and starts its
        self-lookup from every one that answered. If none answers it tries up to twice
        more, with others (a lossy network can lose all its answers). Whether it joined."""
        pool = [
            node
            for node in (introducers if introducers is not None else self.alive())
            if node is not simulated and node.alive and node.online
        ]
        dht = simulated.node.dht
        assert dht is not None
        for _ in range(3):
            if not pool:
                return False
            if count == 1:  # one draw, as before: runs with one introducer reproduce
                chosen = [pool[self.rng.randrange(len(pool))]]
            else:
                chosen = self.rng.sample(pool, min(count, len(pool)))
            try:
                await dht.bootstrap([introducer.address for introducer in chosen])
            except DhtError:
                continue
            return True
        return False

    def kill(self, victims: Sequence[SimNode]) -> None:
        """Make nodes vanish as crashed machines do: their tasks stop, and whatever is
        sent to them is lost (no reset, no answer), for good."""
        for simulated in victims:
            simulated.alive = False
            simulated.scope.cancel()
        self._partition()

    def true_closest(
        self, target: NodeId, count: int, *, exclude: NodeId | None = None
    ) -> list[NodeId]:
        """The `count` live node ids closest to `target` (brute force)."""
        ids = [node.node_id for node in self.alive() if node.node_id != exclude]
        return sorted(ids, key=target.distance)[:count]

    def live_contact_share(self) -> float:
        """Of all contacts in live nodes' routing tables, the share that are alive."""
        live = {node.node_id for node in self.alive()}
        total = good = 0
        for simulated in self.alive():
            dht = simulated.node.dht
            if dht is None:
                continue
            for contact in dht.routing.contacts():
                total += 1
                good += contact.node_id in live
        return good / total if total else math.nan

    def wall_seconds(self) -> float:
        return time.perf_counter() - self.wall_started


@asynccontextmanager
async def open_network(
    count: int,
    *,
    seed: int,
    min_latency: float = 0.010,
    max_latency: float = 0.200,
    loss: float = 0.0,
    secure: bool = True,
    node_config: NodeConfig = SIMULATED_NODE,
    dht_config: DhtConfig | None = None,
    transport_config: TransportConfig | None = None,
    join_wave: float = JOIN_WAVE,
    intercept: Intercept | None = None,
) -> AsyncIterator[SimNetwork]:
    """Start `count` nodes and join them, all stopped on exit.

    Nodes join in waves, as they do on a network that is being announced: each wave
    adds up to `join_wave` times the nodes already in (at least one), all joining at
    once, each through a random node of the earlier waves. With `secure` (the default)
    every connection runs the real Noise handshake and encrypts its frames. `intercept`
    sees every message sent (node/transport/memory.py): a benchmark counts bytes.
    `dht_config` and `transport_config` replace the nodes' defaults."""
    rng = random.Random(seed)
    network = MemoryNetwork(
        seed=seed,
        min_latency=min_latency,
        max_latency=max_latency,
        loss=loss,
        secure=secure,
        intercept=intercept,
    )
    async with trio.open_nursery() as nursery:
        simulation = SimNetwork(network, rng, nursery, node_config, dht_config, transport_config)
        first = await simulation.start_node()
        joined = [first]
        while len(joined) < count:
            wave = min(count - len(joined), max(1, int(len(joined) * join_wave)))
            newcomers = [await simulation.start_node() for _ in range(wave)]
            introducers = list(joined)
            async with trio.open_nursery() as joining:
                for newcomer in newcomers:
                    joining.start_soon(simulation.join, newcomer, introducers)
            joined += newcomers
        yield simulation
        nursery.cancel_scope.cancel()
