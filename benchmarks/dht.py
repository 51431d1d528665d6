"""DHT benchmark: N Freehold nodes on TCP loopback, beside N bmuller/kademlia nodes.

Method. For each N in `FULL_PLAN.sizes` (50, 100, 200; `--quick`: 20 only), N real
Freehold nodes, the `Transport` and `DhtService` that `freehold node` runs, composed as
in simulations/swarm.py but over `TcpLinkLayer`, listen on 127.0.0.1 port 0, all in this
process's one trio loop on the real clock. Then:

1. Bootstrap: the nodes join one by one, each through a random earlier node
   (`DhtService.bootstrap`); the figure is the sum of the joins' wall times.
2. Healthy network, one operation at a time: `operations` find_node lookups, then as
   many provides, each followed by a find_providers of its key:
   - find_node: a random node looks up a random id. It is *exact* when the result is,
     as a set, the k = 20 live nodes closest to the id by brute force (the asker left
     out: nobody lists itself);
   - provide: a random node provides a fresh random key;
   - find_providers: another random node looks that key up; the provider is *found*
     when it is among the answers.
   Latencies are wall times (mean, p50, p99 by nearest rank). RPCs are the requests
   made for the operation: every DHT request (query, ADD_PROVIDER, ping) sent by a
   task working for it. A context variable carries the operation's counter into the
   tasks its lookup starts (trio and asyncio both copy the context into new tasks),
   so the count stays exact with many operations in flight on one node. New
   connections (Freehold only) are counted the same way, when the dialler's Noise
   handshake completes. The "p50 floor (handshakes)" rows multiply each operation's
   new connections by the CPU of one handshake's public-key operations at both ends
   (6 X25519, 4 base-point, 2 Ed25519 signatures and 2 verifications: about 400 us,
   timed in the same run) and take the p50: every node runs on this process's one
   thread, so no operation here can be faster than its floor, whatever the code
   around the cryptography costs. It shows how much of a target the handshakes alone
   use up where the random askers reach nodes they never spoke to.
3. Kill: a random quarter of the nodes is killed at once (below), then the same
   operations run among the live nodes, `operations_after_kill` find_nodes and as
   many provide + find_providers pairs, all in flight at once: a query to a dead node
   costs up to a 5 s timeout in both implementations, and one at a time the kademlia
   side alone would take many minutes. The healthy figures are thus uncontended and
   the after-kill ones taken under that concurrency, the same for both.

Every random choice (identities, introducers, askers, keys, victims) comes from the
seed, per N, and is drawn before the operations start, so both implementations make the
same choices by index; the timings of course do not replay.

What "killed" means. A killed node goes silent, as a hung machine or a SIGSTOPped
process does: its tasks are cancelled, but its sockets stay open, unread. Peers'
established connections stay up: the kernel acknowledges their requests and nobody
answers. A new dial completes the TCP handshake into the listen backlog (or gets no
SYN-ACK once the backlog is full) and its Noise handshake is never answered. No FIN,
no RST: closing the sockets would tell every peer at once that the node is gone, which
a crash, a power cut or a partition on the Internet does not. It works by wrapping each
node's link layer in `_SilenceableLinkLayer`: once silenced, links and listeners that
the cancelled node closes are kept open instead, and closed at the end of the run. A
handshake or dial that is half done at the instant of the kill is closed by
`TcpLinkLayer` itself (those peers do see an EOF); no operation is running then.

Artifacts of N nodes in one process, and what is done about them:

- Descriptors: both ends of every connection are here, and a join reaches most of a
  network this small, so N nodes hold up to N * (N - 1) descriptors for the 120 s that
  an idle connection is kept. Where that does not fit under the process's limit (N =
  200 needs 39,800; this machine allows 20,000, and a session cannot raise it), idle
  connections are closed after CROWDED_IDLE_TIMEOUT instead, which costs extra Noise
  handshakes; the report says so for the sizes concerned, and counts any accept that
  failed for lack of descriptors.
- Garbage collection: a full pass over the heap of N nodes took up to 1.5 s at N = 100
  (measured with gc.callbacks), a pause no single node of that heap would see. The
  collector is paused during each measured phase (after a full collection, with the
  survivors frozen), and between batches of joins during the bootstrap, outside the
  timings; the kademlia process gets the same treatment.
- CPU: every node shares one core, so a lookup's latency is the CPU time of all its
  RPCs at both ends (and of its Noise handshakes), not network round trips.

Baseline. bmuller/kademlia (PyPI `kademlia`, the optional `bench` extra; asyncio over
UDP) runs in a spawned process with its own asyncio loop, after the Freehold runs, with
the same N, k = 20, alpha = 3, operations, kill fraction and seed. Its nodes listen on
127.0.0.1 port 0 (the kernel picks the port). `set(key, value)` is the counterpart of
provide (the value is the provider's address) and `get(key)` of find_providers (found
when it returns that value); find_node is its `NodeSpiderCrawl`, the lookup `set()`
runs. Its RPCs are its protocol's `call_*` calls made for the operation; its request
timeout is rpcudp's 5 s. A killed kademlia node keeps its UDP socket open, drops every
datagram unread and stops its refresh timer. Without `kademlia` installed the Freehold
figures are printed alone, and the run says the baseline is missing.

Nothing here leaves 127.0.0.1. Every node, task and socket is closed before the run
returns; the kademlia process is killed on the way out whatever happens.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import importlib.metadata
import importlib.util
import json
import logging
import math
import multiprocessing
import os
import random
import resource
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.connection import Connection
from typing import Any, Final, Protocol, TypeVar

import nacl.bindings
import nacl.signing
import trio

from benchmarks import BenchmarkError, BenchmarkOptions
from dht.config import DhtConfig
from dht.contact import Contact
from dht.errors import DhtError
from dht.service import DhtService
from dht.transport import InlineHandler, RpcTransport
from node.dht_transport import DhtTransportAdapter
from node.transport import (
    Link,
    LinkLayer,
    LinkListener,
    PendingLink,
    TcpLinkLayer,
    Transport,
    TransportConfig,
)
from protocol.identity import Identity, NodeId
from protocol.messages import Message

__all__ = ["FULL_PLAN", "METRICS", "QUICK_PLAN", "Plan", "run_dht_benchmark"]

Result = TypeVar("Result")

LOOPBACK_HOST: Final = "127.0.0.1"
SEED: Final = 20240601
K: Final = 20
ALPHA: Final = 3
KILL_FRACTION: Final = 0.25
# Every node is on 127.0.0.1: the per-prefix Sybil limits would keep all but a few out
# of each table (as in simulations/swarm.py).
DHT_CONFIG: Final = DhtConfig(
    k=K, alpha=ALPHA, ip_prefix_limit_per_bucket=None, ip_prefix_limit_per_table=None
)
# Idle connections are closed after this where N * (N - 1) descriptors would not fit
# (module header). At 10 s, 200 nodes still reached the limit: they join faster than
# their connections go idle.
CROWDED_IDLE_TIMEOUT: Final = 5.0
# Joins between two garbage collections during the bootstrap (see the module header).
JOINS_PER_COLLECTION: Final = 25
# Descriptors kept free for everything but the nodes' connections.
DESCRIPTOR_RESERVE: Final = 500
# The kademlia process runs every size; past this it is taken for hung and killed.
BASELINE_TIMEOUT: Final = 900.0
FREEHOLD_ID_SIZE: Final = 32
KADEMLIA_ID_SIZE: Final = 20  # SHA-1 ids
# The public-key operations of one Freehold handshake, both ends (docs/PROTOCOL.md,
# "Handshake"): Noise XX's ee, es and se on each side (6 X25519), an ephemeral and a
# fresh static key pair made on each side (4 base-point multiplications), and each
# side's identity payload signed (2 Ed25519 signatures) and checked (2 verifications).
# Only the responder's se and its check of the dialler's payload (1 X25519, 1 verify)
# come after the dialler's connect returns, before it can read the first request.
HANDSHAKE_X25519: Final = 6
HANDSHAKE_X25519_BASE: Final = 4
HANDSHAKE_SIGNATURES: Final = 2
HANDSHAKE_VERIFICATIONS: Final = 2
CRYPTO_ROUNDS: Final = 300


@dataclass(frozen=True, slots=True)
class Plan:
    """How much a run measures."""

    sizes: tuple[int, ...]
    # find_nodes, and provide + find_providers pairs, one at a time before the kill.
    operations: int
    # The same after the kill, all in flight at once.
    operations_after_kill: int
    # Whether kademlia is measured after the kill too. A quick run skips it: its
    # lookups go in lock-step rounds that each wait out rpcudp's 5 s timeout when a
    # dead node is asked, so that phase alone takes about 30 s even at N = 20.
    baseline_after_kill: bool = True


FULL_PLAN: Final = Plan(sizes=(50, 100, 200), operations=100, operations_after_kill=30)
QUICK_PLAN: Final = Plan(
    sizes=(20,), operations=10, operations_after_kill=5, baseline_after_kill=False
)


# ------------------------------------------------------------------------ figures


@dataclass(slots=True)
class PhaseFigures:
    """Raw samples of one phase (healthy, or after the kill) of one implementation."""

    live_nodes: int
    bootstrap_seconds: float | None = None
    find_node_seconds: list[float] = field(default_factory=list)
    find_node_rpcs: list[int] = field(default_factory=list)
    find_node_dials: list[int] = field(default_factory=list)
    find_node_exact: list[bool] = field(default_factory=list)
    provide_seconds: list[float] = field(default_factory=list)
    provide_rpcs: list[int] = field(default_factory=list)
    provide_dials: list[int] = field(default_factory=list)
    provide_accepted: list[bool] = field(default_factory=list)
    find_providers_seconds: list[float] = field(default_factory=list)
    find_providers_rpcs: list[int] = field(default_factory=list)
    find_providers_dials: list[int] = field(default_factory=list)
    # CPU seconds of the cryptography of one Freehold handshake, both ends (measured in
    # this run: `_handshake_crypto_seconds`); None for kademlia, which has none.
    handshake_crypto_seconds: float | None = None
    find_providers_found: list[bool] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SizeFigures:
    """One implementation's figures at one N."""

    nodes: int
    healthy: PhaseFigures
    # None where the phase after the kill was skipped (the baseline in a quick run).
    killed: PhaseFigures | None


def _percentile(samples: Sequence[float], percent: float) -> float:
    """Nearest-rank percentile (the smallest sample with `percent`% at or below it)."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return ordered[rank - 1]


def _mean(samples: Sequence[float]) -> float:
    return sum(samples) / len(samples)


def _share(outcomes: Sequence[bool]) -> float:
    return 100 * sum(outcomes) / len(outcomes)


def _in_ms(seconds: Sequence[float]) -> list[float]:
    return [1000 * value for value in seconds]


# ---------------------------------------------------------------- the measurement


class _Swarm(Protocol):
    """What the measurement needs of N nodes of either implementation, by index."""

    id_size: int

    def live(self) -> list[int]: ...

    def node_id(self, index: int) -> bytes: ...

    async def join(self, index: int, introducer: int) -> None: ...

    async def find_node(self, asker: int, target: bytes) -> list[bytes]: ...

    async def provide(self, provider: int, key: bytes) -> bool:
        """True if at least one node said it took the record."""
        ...

    async def find_providers(self, asker: int, key: bytes, provider: int) -> bool:
        """True if `provider` was found."""
        ...

    async def kill(self, victims: Sequence[int]) -> None: ...


# Runs the jobs concurrently and returns when all are done (trio nursery, asyncio group).
RunAll = Callable[[Sequence[Callable[[], Awaitable[None]]]], Awaitable[None]]


def _true_closest(target: bytes, ids: Sequence[bytes], count: int) -> set[bytes]:
    number = int.from_bytes(target, "big")
    return set(sorted(ids, key=lambda node_id: int.from_bytes(node_id, "big") ^ number)[:count])


@contextmanager
def _collector_paused() -> Iterator[None]:
    """A full garbage collection, then none inside the block (see the module header)."""
    gc.collect()
    # Frozen objects are skipped by later collections, so each one only sees what was
    # made since the last: with N nodes' heap in one process a full pass takes seconds.
    gc.freeze()
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


async def _bootstrap(swarm: _Swarm, size: int, rng: random.Random) -> float:
    """The time all the joins took, the collections between batches of joins left out."""
    seconds = 0.0
    for first in range(1, size, JOINS_PER_COLLECTION):
        with _collector_paused():
            for index in range(first, min(size, first + JOINS_PER_COLLECTION)):
                started = time.perf_counter()
                await swarm.join(index, rng.randrange(index))
                seconds += time.perf_counter() - started
    return seconds


class _RpcCounter:
    """The RPCs one operation sent, and the connections it opened (Freehold only)."""

    __slots__ = ("count", "dials")

    def __init__(self) -> None:
        self.count = 0
        self.dials = 0


# The counter of the operation that the current task works for. Both trio and asyncio
# copy the context into the tasks a task starts, so the queries a lookup runs in tasks
# of its own count towards the operation that started the lookup, even with many
# operations of the same node in flight at once.
_operation_rpcs: ContextVar[_RpcCounter | None] = ContextVar("operation_rpcs", default=None)


def _count_rpc() -> None:
    """Count one RPC towards the operation running in this task, if any."""
    counter = _operation_rpcs.get()
    if counter is not None:
        counter.count += 1


def _count_dial() -> None:
    """Count one connection opened (handshake done) for the operation in this task."""
    counter = _operation_rpcs.get()
    if counter is not None:
        counter.dials += 1


async def _timed(operation: Awaitable[Result]) -> tuple[Result, float, int, int]:
    """The operation's result, its wall time in seconds, the RPCs it sent and the
    connections it opened."""
    counter = _RpcCounter()
    token = _operation_rpcs.set(counter)
    try:
        started = time.perf_counter()
        result = await operation
        elapsed = time.perf_counter() - started
    finally:
        _operation_rpcs.reset(token)
    return result, elapsed, counter.count, counter.dials


async def _find_node(
    swarm: _Swarm, figures: PhaseFigures, asker: int, target: bytes, live_ids: Sequence[bytes]
) -> None:
    found, seconds, rpcs, dials = await _timed(swarm.find_node(asker, target))
    figures.find_node_seconds.append(seconds)
    figures.find_node_rpcs.append(rpcs)
    figures.find_node_dials.append(dials)
    own_id = swarm.node_id(asker)
    truth = _true_closest(target, [node_id for node_id in live_ids if node_id != own_id], K)
    figures.find_node_exact.append(len(found) == len(truth) and set(found) == truth)


async def _provide_then_find(
    swarm: _Swarm, figures: PhaseFigures, provider: int, asker: int, key: bytes
) -> None:
    accepted, seconds, rpcs, dials = await _timed(swarm.provide(provider, key))
    figures.provide_seconds.append(seconds)
    figures.provide_rpcs.append(rpcs)
    figures.provide_dials.append(dials)
    figures.provide_accepted.append(accepted)
    found, seconds, rpcs, dials = await _timed(swarm.find_providers(asker, key, provider))
    figures.find_providers_seconds.append(seconds)
    figures.find_providers_rpcs.append(rpcs)
    figures.find_providers_dials.append(dials)
    figures.find_providers_found.append(found)


async def _measure_phase(
    swarm: _Swarm, rng: random.Random, operations: int, run_all: RunAll | None
) -> PhaseFigures:
    """`operations` find_node lookups, and as many provides each followed by a
    find_providers of its key from another node, among the live nodes: one at a time
    if `run_all` is None, else all at once. Every choice is drawn before the first
    operation starts, so it does not depend on timing."""
    live = swarm.live()
    figures = PhaseFigures(live_nodes=len(live))
    live_ids = [swarm.node_id(index) for index in live]
    jobs: list[Callable[[], Awaitable[None]]] = []
    for _ in range(operations):
        target = rng.randbytes(swarm.id_size)
        jobs.append(partial(_find_node, swarm, figures, rng.choice(live), target, live_ids))
    for _ in range(operations):
        provider = rng.choice(live)
        asker = rng.choice([index for index in live if index != provider])
        key = rng.randbytes(swarm.id_size)
        jobs.append(partial(_provide_then_find, swarm, figures, provider, asker, key))
    if run_all is not None:
        await run_all(jobs)
        return figures
    for job in jobs:
        await job()
    return figures


async def _measure_size(
    swarm: _Swarm, size: int, plan: Plan, seed: int, run_all: RunAll, *, after_kill: bool = True
) -> SizeFigures:
    """Bootstrap, measure, kill a quarter, measure again. The rng is seeded per size,
    so both implementations make the same choices (by index) at each N."""
    rng = random.Random(f"{seed}:{size}")
    try:
        bootstrap_seconds = await _bootstrap(swarm, size, rng)
        with _collector_paused():
            healthy = await _measure_phase(swarm, rng, plan.operations, None)
        healthy.bootstrap_seconds = bootstrap_seconds
        victims = rng.sample(range(size), round(size * KILL_FRACTION))
        await swarm.kill(victims)
        if not after_kill:
            return SizeFigures(size, healthy, None)
        with _collector_paused():
            killed = await _measure_phase(swarm, rng, plan.operations_after_kill, run_all)
        return SizeFigures(size, healthy, killed)
    finally:
        gc.unfreeze()


# ------------------------------------------------------------- silencing Freehold


class _SilenceableLinkLayer(LinkLayer):
    """A link layer that, once silenced, keeps open what its node closes.

    Delegates everything to the wrapped layer. After `silence()`, closing a link, a
    pending link or the listener hands it to `kept` instead: the sockets stay open and
    unread, so peers get no FIN and no RST. `close_kept()` closes them for good.
    """

    def __init__(self, inner: LinkLayer) -> None:
        self.inner = inner
        self.silenced = False
        self.kept: list[Link | PendingLink | LinkListener] = []

    def silence(self) -> None:
        self.silenced = True

    async def close(self, closable: Link | PendingLink | LinkListener) -> None:
        if self.silenced:
            self.kept.append(closable)
            await trio.lowlevel.checkpoint()
        else:
            await closable.aclose()

    async def close_kept(self) -> None:
        kept, self.kept = self.kept, []
        for closable in kept:
            await closable.aclose()

    async def open_listener(
        self, address: tuple[str, int], config: TransportConfig
    ) -> LinkListener:
        return _SilenceableListener(self, await self.inner.open_listener(address, config))

    async def connect(
        self, address: tuple[str, int], expected_node_id: NodeId | None, config: TransportConfig
    ) -> Link:
        link = await self.inner.connect(address, expected_node_id, config)
        _count_dial()  # in the task of the operation that needed the connection
        return _SilenceableLink(self, link)


class _SilenceableLink(Link):
    def __init__(self, layer: _SilenceableLinkLayer, inner: Link) -> None:
        self._layer = layer
        self._inner = inner
        self.remote_node_id = inner.remote_node_id
        self.remote_address = inner.remote_address

    async def send_frame(self, frame: bytes, *, deadline: float = math.inf) -> None:
        await self._inner.send_frame(frame, deadline=deadline)

    async def receive_frame(self) -> bytes | bytearray:
        return await self._inner.receive_frame()

    async def run(self) -> None:
        await self._inner.run()

    async def aclose(self) -> None:
        await self._layer.close(self._inner)


class _SilenceablePendingLink(PendingLink):
    def __init__(self, layer: _SilenceableLinkLayer, inner: PendingLink) -> None:
        self._layer = layer
        self._inner = inner
        self.remote_address = inner.remote_address

    async def handshake(self) -> Link:
        return _SilenceableLink(self._layer, await self._inner.handshake())

    async def aclose(self) -> None:
        await self._layer.close(self._inner)


class _SilenceableListener(LinkListener):
    def __init__(self, layer: _SilenceableLinkLayer, inner: LinkListener) -> None:
        self._layer = layer
        self._inner = inner
        self.address = inner.address

    async def accept(self) -> PendingLink:
        return _SilenceablePendingLink(self._layer, await self._inner.accept())

    async def aclose(self) -> None:
        await self._layer.close(self._inner)


# ------------------------------------------------------------------ Freehold nodes


class _CountingRpcTransport:
    """The DHT's transport (dht.transport.RpcTransport), counting each outbound RPC
    towards the operation it is made for."""

    def __init__(self, inner: RpcTransport) -> None:
        self._inner = inner

    @property
    def node_id(self) -> NodeId:
        return self._inner.node_id

    async def call(self, contact: Contact, message: Message, *, timeout: float) -> Message:
        _count_rpc()
        return await self._inner.call(contact, message, timeout=timeout)

    async def ping(self, contact: Contact, *, timeout: float) -> float:
        _count_rpc()
        return await self._inner.ping(contact, timeout=timeout)

    async def identify(self, address: tuple[str, int], *, timeout: float) -> NodeId:
        _count_rpc()
        return await self._inner.identify(address, timeout=timeout)

    def serve(self, message_type: type[Message], handler: InlineHandler) -> None:
        self._inner.serve(message_type, handler)


@dataclass
class _FreeholdNode:
    identity: Identity
    link_layer: _SilenceableLinkLayer
    transport: Transport
    dht: DhtService
    scope: trio.CancelScope
    stopped: trio.Event
    alive: bool = True

    @property
    def address(self) -> tuple[str, int]:
        address = self.transport.address
        if address is None:
            raise BenchmarkError("a Freehold node has no listening address")
        return address


@dataclass
class _FreeholdSwarm:
    """N Freehold nodes of one trio loop (the `_Swarm` interface)."""

    nodes: list[_FreeholdNode] = field(default_factory=list)
    id_size: int = FREEHOLD_ID_SIZE
    descriptors_before_kill: int | None = None
    # Links, pending links and listeners the killed nodes left open (and unread).
    kept_sockets: int = 0

    def live(self) -> list[int]:
        return [index for index, node in enumerate(self.nodes) if node.alive]

    def node_id(self, index: int) -> bytes:
        return self.nodes[index].identity.node_id.value

    async def join(self, index: int, introducer: int) -> None:
        try:
            await self.nodes[index].dht.bootstrap([self.nodes[introducer].address])
        except DhtError as exc:
            raise BenchmarkError(
                f"node {index} could not join through {introducer}: {exc}"
            ) from None

    async def find_node(self, asker: int, target: bytes) -> list[bytes]:
        contacts = await self.nodes[asker].dht.find_node(NodeId(target))
        return [contact.node_id.value for contact in contacts]

    async def provide(self, provider: int, key: bytes) -> bool:
        try:
            return await self.nodes[provider].dht.provide(NodeId(key)) > 0
        except DhtError:
            return False

    async def find_providers(self, asker: int, key: bytes, provider: int) -> bool:
        contacts = await self.nodes[asker].dht.find_providers(NodeId(key))
        wanted = self.nodes[provider].identity.node_id
        return any(contact.node_id == wanted for contact in contacts)

    async def kill(self, victims: Sequence[int]) -> None:
        self.descriptors_before_kill = _open_descriptors()
        for index in victims:
            node = self.nodes[index]
            node.alive = False
            node.link_layer.silence()
            node.scope.cancel()
        for index in victims:
            await self.nodes[index].stopped.wait()
        self.kept_sockets = sum(len(node.link_layer.kept) for node in self.nodes)


async def _start_freehold_node(
    nursery: trio.Nursery, rng: random.Random, transport_config: TransportConfig
) -> _FreeholdNode:
    identity = Identity.generate(rng.randbytes)
    link_layer = _SilenceableLinkLayer(TcpLinkLayer(identity))
    transport = Transport(
        identity, link_layer, listen_address=(LOOPBACK_HOST, 0), config=transport_config
    )
    scope = trio.CancelScope()
    stopped = trio.Event()
    dht_rng = random.Random(rng.getrandbits(64))

    async def run_node(task_status: trio.TaskStatus[DhtService]) -> None:
        try:
            with scope:
                async with trio.open_nursery() as inner:
                    await inner.start(transport.run)
                    if transport.address is None:
                        raise BenchmarkError("a Freehold node did not listen")
                    dht = DhtService(
                        _CountingRpcTransport(DhtTransportAdapter(transport)),
                        listen_port=transport.address[1],
                        config=DHT_CONFIG,
                        rng=dht_rng,
                    )
                    await inner.start(dht.run)
                    task_status.started(dht)
        finally:
            stopped.set()

    dht = await nursery.start(run_node)
    return _FreeholdNode(identity, link_layer, transport, dht, scope, stopped)


@asynccontextmanager
async def _open_freehold_swarm(
    size: int, seed: int, transport_config: TransportConfig
) -> AsyncIterator[_FreeholdSwarm]:
    """`size` nodes listening on 127.0.0.1, not yet joined; all closed on exit."""
    rng = random.Random(f"{seed}:{size}:identities")
    swarm = _FreeholdSwarm()
    try:
        async with trio.open_nursery() as nursery:
            for _ in range(size):
                swarm.nodes.append(await _start_freehold_node(nursery, rng, transport_config))
            yield swarm
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            for node in swarm.nodes:
                await node.link_layer.close_kept()


async def _run_all_trio(jobs: Sequence[Callable[[], Awaitable[None]]]) -> None:
    async with trio.open_nursery() as nursery:
        for job in jobs:
            nursery.start_soon(job)


@dataclass(frozen=True, slots=True)
class FreeholdSize:
    """One size's Freehold figures and what the report says about how they were made."""

    figures: SizeFigures
    idle_timeout: float
    # Open in this process at the end of the healthy phase (None off Linux).
    descriptors_before_kill: int | None
    # Sockets that the killed nodes held open (and unread) until the end.
    kept_sockets: int
    # Inbound connections dropped because the process was out of descriptors.
    accepts_failed: int


class _DescriptorShortage(logging.Filter):
    """Counts, and keeps out of the output, the TCP listeners' warnings that accept()
    failed for lack of descriptors: each listener repeats it every 0.1 s while the
    shortage lasts. The report gives the count instead."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        arguments = record.args if isinstance(record.args, tuple) else ()
        if any(
            isinstance(argument, OSError) and argument.errno in (errno.EMFILE, errno.ENFILE)
            for argument in arguments
        ):
            self.count += 1
            return False
        return True


def _handshake_crypto_seconds() -> float:
    """CPU seconds of one handshake's public-key operations, both ends: each operation
    timed on its own (best of 5 runs of CRYPTO_ROUNDS, as timeit does), then summed."""
    secret = bytes(range(32))
    public = nacl.bindings.crypto_scalarmult_base(bytes(range(1, 33)))
    signer = nacl.signing.SigningKey(bytes(range(2, 34)))
    message = b"freehold-noise-static-key:" + public
    signed = signer.sign(message)
    verifier = signer.verify_key

    def best(operation: Callable[[], object]) -> float:
        runs = []
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(CRYPTO_ROUNDS):
                operation()
            runs.append((time.perf_counter() - started) / CRYPTO_ROUNDS)
        return min(runs)

    return (
        HANDSHAKE_X25519 * best(lambda: nacl.bindings.crypto_scalarmult(secret, public))
        + HANDSHAKE_X25519_BASE * best(lambda: nacl.bindings.crypto_scalarmult_base(secret))
        + HANDSHAKE_SIGNATURES * best(lambda: signer.sign(message))
        + HANDSHAKE_VERIFICATIONS * best(lambda: verifier.verify(signed))
    )


def _raise_descriptor_limit() -> int:
    """Raise this process's soft limit on open descriptors to its hard limit; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


def _transport_config(size: int, descriptor_limit: int) -> TransportConfig:
    """The default, or connections closed sooner where a full mesh would not fit."""
    if size * (size - 1) + DESCRIPTOR_RESERVE <= descriptor_limit:
        return TransportConfig()
    return TransportConfig(idle_timeout=CROWDED_IDLE_TIMEOUT)


def _open_descriptors() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


async def _measure_freehold(plan: Plan, seed: int) -> list[FreeholdSize]:
    descriptor_limit = _raise_descriptor_limit()
    tcp_logger = logging.getLogger(TcpLinkLayer.__module__)
    crypto = _handshake_crypto_seconds()
    results = []
    for size in plan.sizes:
        config = _transport_config(size, descriptor_limit)
        shortage = _DescriptorShortage()
        tcp_logger.addFilter(shortage)
        try:
            async with _open_freehold_swarm(size, seed, config) as swarm:
                figures = await _measure_size(swarm, size, plan, seed, _run_all_trio)
        finally:
            tcp_logger.removeFilter(shortage)
        for phase in (figures.healthy, figures.killed):
            if phase is not None:
                phase.handshake_crypto_seconds = crypto
        results.append(
            FreeholdSize(
                figures,
                config.idle_timeout,
                swarm.descriptors_before_kill,
                swarm.kept_sockets,
                shortage.count,
            )
        )
    return results


# ------------------------------------------------------------ the kademlia baseline


def kademlia_version() -> str | None:
    """The installed kademlia's version, or None if it cannot be imported."""
    if importlib.util.find_spec("kademlia") is None:
        return None
    try:
        import kademlia.network  # noqa: F401
    except ImportError:
        return None
    return importlib.metadata.version("kademlia")


class _KademliaSwarm:
    """N kademlia servers of one asyncio loop (the `_Swarm` interface)."""

    id_size = KADEMLIA_ID_SIZE

    def __init__(self, servers: list[Any], addresses: list[tuple[str, int]]) -> None:
        self._servers = servers
        self._addresses = addresses
        self._dead: set[int] = set()

    def live(self) -> list[int]:
        return [index for index in range(len(self._servers)) if index not in self._dead]

    def node_id(self, index: int) -> bytes:
        return bytes(self._servers[index].node.id)

    async def join(self, index: int, introducer: int) -> None:
        await self._servers[index].bootstrap([self._addresses[introducer]])

    async def find_node(self, asker: int, target: bytes) -> list[bytes]:
        from kademlia.crawling import NodeSpiderCrawl
        from kademlia.node import Node

        server = self._servers[asker]
        node = Node(target)
        nearest = server.protocol.router.find_neighbors(node)
        crawl = NodeSpiderCrawl(server.protocol, node, nearest, server.ksize, server.alpha)
        return [bytes(found.id) for found in await crawl.find()]

    async def provide(self, provider: int, key: bytes) -> bool:
        return bool(await self._servers[provider].set(key, self._value_of(provider)))

    async def find_providers(self, asker: int, key: bytes, provider: int) -> bool:
        return bool(await self._servers[asker].get(key) == self._value_of(provider))

    async def kill(self, victims: Sequence[int]) -> None:
        for index in victims:
            self._dead.add(index)
            server = self._servers[index]
            # Silent with its socket open: every datagram is dropped unread.
            server.protocol.datagram_received = _drop_datagram
            if server.refresh_loop is not None:
                server.refresh_loop.cancel()
        await asyncio.sleep(0)

    def _value_of(self, provider: int) -> str:
        host, port = self._addresses[provider]
        return f"{host}:{port}"

    def close(self) -> None:
        for server in self._servers:
            server.stop()


def _drop_datagram(data: bytes, address: tuple[str, int]) -> None:
    """A killed kademlia node's datagram handler."""


def _kademlia_server_class() -> Any:
    """kademlia's Server whose protocol counts the RPCs it sends (imported lazily)."""
    from kademlia.network import Server
    from kademlia.protocol import KademliaProtocol

    class CountingProtocol(KademliaProtocol):  # type: ignore[misc]
        async def call_find_node(self, *arguments: Any) -> Any:
            _count_rpc()
            return await super().call_find_node(*arguments)

        async def call_find_value(self, *arguments: Any) -> Any:
            _count_rpc()
            return await super().call_find_value(*arguments)

        async def call_ping(self, *arguments: Any) -> Any:
            _count_rpc()
            return await super().call_ping(*arguments)

        async def call_store(self, *arguments: Any) -> Any:
            _count_rpc()
            return await super().call_store(*arguments)

    class CountingServer(Server):  # type: ignore[misc]
        protocol_class = CountingProtocol

    return CountingServer


async def _run_all_asyncio(jobs: Sequence[Callable[[], Awaitable[None]]]) -> None:
    async with asyncio.TaskGroup() as group:
        for job in jobs:
            group.create_task(_awaited(job))


async def _awaited(job: Callable[[], Awaitable[None]]) -> None:
    await job()


async def _measure_kademlia(plan: Plan, seed: int) -> list[SizeFigures]:
    server_class = _kademlia_server_class()
    results = []
    for size in plan.sizes:
        rng = random.Random(f"{seed}:{size}:identities")
        servers: list[Any] = []
        addresses: list[tuple[str, int]] = []
        swarm = _KademliaSwarm(servers, addresses)
        try:
            for _ in range(size):
                server = server_class(ksize=K, alpha=ALPHA, node_id=rng.randbytes(KADEMLIA_ID_SIZE))
                servers.append(server)
                await server.listen(0, interface=LOOPBACK_HOST)
                host, port = server.transport.get_extra_info("sockname")[:2]
                addresses.append((str(host), int(port)))
            results.append(
                await _measure_size(
                    swarm, size, plan, seed, _run_all_asyncio, after_kill=plan.baseline_after_kill
                )
            )
        finally:
            swarm.close()
            await asyncio.sleep(0)
    return results


def _serve_kademlia(plan: Plan, seed: int, pipe: Connection) -> None:
    """The baseline process: measure every size and send back the figures (or why not)."""
    # kademlia logs every unanswered RPC at WARNING or above: hundreds of lines after
    # the kill, which say nothing the figures do not.
    for name in ("kademlia", "rpcudp"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    random.seed(seed)
    try:
        pipe.send(("figures", asyncio.run(_measure_kademlia(plan, seed))))
    except Exception as exc:
        pipe.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        pipe.close()


def _measure_baseline(plan: Plan, seed: int) -> tuple[list[SizeFigures] | None, str]:
    """The kademlia figures, or None and the reason there are none."""
    version = kademlia_version()
    if version is None:
        return None, "kademlia is not installed (pip install -e '.[bench]')"
    context = multiprocessing.get_context("spawn")
    parent_end, child_end = context.Pipe(duplex=False)
    process = context.Process(target=_serve_kademlia, args=(plan, seed, child_end), daemon=True)
    process.start()
    child_end.close()
    try:
        if not parent_end.poll(BASELINE_TIMEOUT):
            return None, f"the kademlia process gave no answer in {BASELINE_TIMEOUT:g} s"
        try:
            kind, payload = parent_end.recv()
        except (EOFError, OSError):
            process.join(1.0)
            return None, f"the kademlia process died (exit code {process.exitcode})"
        if kind != "figures":
            return None, f"the kademlia run failed: {payload}"
        return payload, f"kademlia {version}"
    finally:
        process.kill()
        process.join()
        parent_end.close()


# ------------------------------------------------------------------------- report


@dataclass(frozen=True, slots=True)
class Target:
    """A goal from the issue: ours at most/at least `value`, or at most `value` times
    kademlia's figure."""

    kind: str  # "at_most", "at_least" or "ratio_at_most"
    value: float
    text: str

    def met(self, ours: float, theirs: float | None) -> bool | None:
        if self.kind == "at_most":
            return ours <= self.value
        if self.kind == "at_least":
            return ours >= self.value
        if theirs is None:
            return None
        return ours <= self.value * theirs


@dataclass(frozen=True, slots=True)
class Metric:
    """One row of the report; `name` is its key in the JSON lines."""

    name: str
    label: str
    unit: str
    figure: Callable[[PhaseFigures], float | None]
    healthy_target: Target | None = None
    killed_target: Target | None = None


def _dials(figures: PhaseFigures, dials: Sequence[int]) -> float | None:
    """Connections opened per operation (mean); Freehold only (kademlia has none)."""
    return None if figures.handshake_crypto_seconds is None else _mean(dials)


def _crypto_floor(figures: PhaseFigures, dials: Sequence[int]) -> float | None:
    """p50 over the operations of (connections it opened x one handshake's public-key
    CPU), in ms. All nodes share this process's one thread, so an operation cannot take
    less; its p50 cannot be below this p50 (each latency is at least its own floor)."""
    crypto = figures.handshake_crypto_seconds
    if crypto is None or not dials:
        return None
    return _percentile([count * crypto * 1000 for count in dials], 50)


EXACT: Final = Target("at_least", 100.0, "100 %")
METRICS: Final = (
    Metric("bootstrap_s", "bootstrap, all joins one by one", "s", lambda f: f.bootstrap_seconds),
    Metric(
        "find_node_exact_pct",
        "find_node = true 20 closest",
        "%",
        lambda f: _share(f.find_node_exact),
        healthy_target=EXACT,
        killed_target=EXACT,
    ),
    Metric(
        "find_node_p50_ms",
        "find_node p50",
        "ms",
        lambda f: _percentile(_in_ms(f.find_node_seconds), 50),
    ),
    Metric("find_node_rpcs", "find_node RPCs (mean)", "rpc", lambda f: _mean(f.find_node_rpcs)),
    Metric(
        "find_node_new_connections",
        "find_node new connections",
        "conn",
        lambda f: _dials(f, f.find_node_dials),
    ),
    Metric("provide_mean_ms", "provide mean", "ms", lambda f: _mean(_in_ms(f.provide_seconds))),
    Metric(
        "provide_p50_ms",
        "provide p50",
        "ms",
        lambda f: _percentile(_in_ms(f.provide_seconds), 50),
        healthy_target=Target("ratio_at_most", 1.0, "<= kademlia"),
    ),
    Metric(
        "provide_p99_ms",
        "provide p99",
        "ms",
        lambda f: _percentile(_in_ms(f.provide_seconds), 99),
        killed_target=Target("ratio_at_most", 0.1, "<= kademlia/10"),
    ),
    Metric("provide_rpcs", "provide RPCs (mean)", "rpc", lambda f: _mean(f.provide_rpcs)),
    Metric(
        "provide_new_connections",
        "provide new connections",
        "conn",
        lambda f: _dials(f, f.provide_dials),
    ),
    Metric(
        "provide_crypto_floor_p50_ms",
        "provide p50 floor (handshakes)",
        "ms",
        lambda f: _crypto_floor(f, f.provide_dials),
    ),
    Metric(
        "provide_accepted_pct",
        "provide taken by >= 1 node",
        "%",
        lambda f: _share(f.provide_accepted),
    ),
    Metric(
        "find_providers_mean_ms",
        "find_providers mean",
        "ms",
        lambda f: _mean(_in_ms(f.find_providers_seconds)),
    ),
    Metric(
        "find_providers_p50_ms",
        "find_providers p50",
        "ms",
        lambda f: _percentile(_in_ms(f.find_providers_seconds), 50),
        healthy_target=Target("at_most", 5.0, "<= 5 ms"),
    ),
    Metric(
        "find_providers_p99_ms",
        "find_providers p99",
        "ms",
        lambda f: _percentile(_in_ms(f.find_providers_seconds), 99),
        killed_target=Target("ratio_at_most", 0.1, "<= kademlia/10"),
    ),
    Metric(
        "find_providers_rpcs",
        "find_providers RPCs (mean)",
        "rpc",
        lambda f: _mean(f.find_providers_rpcs),
    ),
    Metric(
        "find_providers_new_connections",
        "find_providers new connections",
        "conn",
        lambda f: _dials(f, f.find_providers_dials),
    ),
    Metric(
        "find_providers_crypto_floor_p50_ms",
        "find_providers p50 floor (hs)",
        "ms",
        lambda f: _crypto_floor(f, f.find_providers_dials),
    ),
    Metric(
        "find_providers_found_pct",
        "find_providers found provider",
        "%",
        lambda f: _share(f.find_providers_found),
    ),
)
PHASES: Final = ("healthy", "killed")


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _phase(figures: SizeFigures | None, phase: str) -> PhaseFigures | None:
    if figures is None:
        return None
    return figures.healthy if phase == "healthy" else figures.killed


def _cell(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _size_note(ours: FreeholdSize, descriptor_limit: int) -> str:
    killed = ours.figures.killed
    alive = "" if killed is None else f"{killed.live_nodes} alive after the kill; "
    if ours.idle_timeout == TransportConfig().idle_timeout:
        connections = "default transport config"
    else:
        connections = (
            f"connections closed after {ours.idle_timeout:g} s idle, not "
            f"{TransportConfig().idle_timeout:g} s, to fit {descriptor_limit} descriptors"
        )
    descriptors = (
        ""
        if ours.descriptors_before_kill is None
        else f", {ours.descriptors_before_kill} descriptors open before the kill"
    )
    shortage = (
        ""
        if not ours.accepts_failed
        else f"; OUT OF DESCRIPTORS: {ours.accepts_failed} accepts failed, figures degraded"
    )
    return (
        f"N = {ours.figures.nodes}: {alive}Freehold: {connections}{descriptors}; "
        f"the killed nodes held {ours.kept_sockets} sockets open{shortage}"
    )


def _report(
    plan: Plan,
    options: BenchmarkOptions,
    freehold: list[FreeholdSize],
    baseline: list[SizeFigures] | None,
    baseline_text: str,
) -> None:
    descriptor_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    run = "quick run, rough figures" if options.quick else "full run"
    print(
        f"dht: Freehold nodes over TCP loopback {LOOPBACK_HOST}, all in one trio loop on the "
        f"real clock ({run}; seed {SEED})"
    )
    if baseline is None:
        print(f"baseline MISSING: {baseline_text}; Freehold figures only")
    else:
        print(f"baseline: {baseline_text} (asyncio, UDP, {LOOPBACK_HOST}) in its own process")
        print(
            "  its get() answers from the asker's own store when it holds the value (any "
            "node does at N <= 21) and stops at the first value; find_providers always "
            "asks the k closest"
        )
    print(
        f"healthy: {plan.operations} find_node, then {plan.operations} provides each followed "
        "by a find_providers from another node, one at a time"
    )
    print(
        f"killed: {KILL_FRACTION:.0%} of the nodes silenced at once (tasks cancelled, sockets "
        f"left open and unread), then {plan.operations_after_kill} of each, all in flight"
        + ("" if plan.baseline_after_kill else "; kademlia not measured after the kill")
    )
    print(
        "exact: the result is the 20 live nodes closest to the target; RPCs: requests made "
        "for the operation; ratio: freehold / kademlia"
    )
    crypto = next(
        (
            phase.handshake_crypto_seconds
            for ours in freehold
            for phase in (ours.figures.healthy, ours.figures.killed)
            if phase is not None and phase.handshake_crypto_seconds is not None
        ),
        None,
    )
    if crypto is not None:
        print(
            "new connections: Noise handshakes the operation waited for; floor (handshakes): "
            "p50 of new connections x one handshake's public-key CPU, both ends "
            f"({crypto * 1e6:.0f} us, measured in this run), which every node shares on "
            "this one thread: no latency here can be lower"
        )
    if options.profile:
        print("(--profile is not supported by this benchmark; ignored)")
    records: list[dict[str, Any]] = []
    header = (
        f"{'metric':<32} {'unit':<4} {'freehold':>10} {'kademlia':>10} {'ratio':>8} "
        f"{'target':>15}  result"
    )
    for position, ours in enumerate(freehold):
        theirs = baseline[position] if baseline is not None else None
        print()
        print(_size_note(ours, descriptor_limit))
        print(header)
        print("-" * len(header))
        for phase in PHASES:
            our_phase = _phase(ours.figures, phase)
            if our_phase is None:
                continue
            their_phase = _phase(theirs, phase)
            print(f"  {phase}")
            for metric in METRICS:
                ours_value = metric.figure(our_phase)
                if ours_value is None:
                    continue
                theirs_value = None if their_phase is None else metric.figure(their_phase)
                ratio = ours_value / theirs_value if theirs_value else None
                target = metric.healthy_target if phase == "healthy" else metric.killed_target
                met = None if target is None else target.met(ours_value, theirs_value)
                verdict = ""
                if target is not None:
                    verdict = "no baseline" if met is None else ("pass" if met else "miss")
                print(
                    f"  {metric.label:<30} {metric.unit:<4} {ours_value:>10.2f} "
                    f"{_cell(theirs_value, 2):>10} {_cell(ratio, 3):>8} "
                    f"{'' if target is None else target.text:>15}  {verdict}"
                )
                records.append(
                    {
                        "benchmark": "dht",
                        "nodes": ours.figures.nodes,
                        "phase": phase,
                        "metric": metric.name,
                        "unit": metric.unit,
                        "freehold": _rounded(ours_value),
                        "kademlia": _rounded(theirs_value),
                        "ratio": _rounded(ratio),
                        "target": None if target is None else target.text,
                        "met": met,
                        "quick": options.quick,
                    }
                )
    print()
    print(
        json.dumps(
            {
                "benchmark": "dht",
                "seed": SEED,
                "sizes": list(plan.sizes),
                "baseline": baseline_text if baseline is not None else None,
                "baseline_missing": baseline_text if baseline is None else None,
                "idle_timeouts_s": [ours.idle_timeout for ours in freehold],
                "descriptors_before_kill": [ours.descriptors_before_kill for ours in freehold],
                "accepts_failed": [ours.accepts_failed for ours in freehold],
                "quick": options.quick,
            }
        )
    )
    for record in records:
        print(json.dumps(record))


def run_dht_benchmark(options: BenchmarkOptions) -> None:
    """Measure Freehold, then the kademlia baseline, and print the table and JSON lines."""
    plan = QUICK_PLAN if options.quick else FULL_PLAN
    freehold = trio.run(_measure_freehold, plan, SEED)
    baseline, baseline_text = _measure_baseline(plan, SEED)
    _report(plan, options, freehold, baseline, baseline_text)
