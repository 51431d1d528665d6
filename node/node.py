"""The node: the composition root that `freehold node` runs.

`Node` makes the parts and runs them, and does nothing else: one trio loop; each service
is a task of the node's nursery, started in order with `nursery.start` (transport, DHT,
chunk service, joining) and stopped together on cancellation (SIGINT, SIGTERM or
`freehold stop`). What a node is made of comes from `NodeConfig`, and the parts a test
or a simulation swaps (link layer, chunk store, DHT database) are constructor
parameters: nothing below knows whether it runs on TCP or in memory. What the owner
does with a running node is node/owner.py's; the control socket that serves it, wired
beside the node by `freehold node`, is node/commands.py's.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import shutil
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Final

import nacl.utils
import trio

from dht.config import DhtConfig
from dht.contact import Contact
from dht.dial import DialPolicy
from dht.errors import DhtError
from dht.service import DhtService
from dht.storage import DhtStorage
from node.chunks import ChunkService, in_thread, in_threads, inline
from node.config import NodeConfig, capacity_warning, is_loopback
from node.dht_transport import DhtTransportAdapter
from node.errors import NodeError
from node.files import ChunkClient, FileNetwork, FileSettings
from node.health import HEALTH_FILE, HealthBook
from node.isal import best_parity
from node.keeper import LeaseKeeper
from node.keyfile import load_or_create_identity
from node.leases import LEASES_FILE, LeaseBook
from node.liars import Liars
from node.library import LIBRARY_FILE, Library
from node.renewal import Leaser
from node.steward import StewardService
from node.stewardship import StewardSettings, Stewardship
from node.store import ChunkStore, MemoryChunkStore, StoreConfig, open_chunk_store
from node.transport import LinkLayer, TcpLinkLayer, Transport, TransportConfig
from protocol.identity import Identity, RandomBytes, meets_difficulty
from protocol.manifest import EncodingParams

__all__ = ["Activity", "Node", "Service", "is_loopback"]

logger = logging.getLogger(__name__)

Service = Callable[..., Awaitable[None]]
"""A service of the caller's, run as `await nursery.start(service, node)`: it calls
`task_status.started()` once serving, and runs until cancelled."""

LIARS_FILE: Final = "peers.sqlite3"
"""Where a node on disk keeps the peers it caught lying (node/liars.py)."""

JOIN_RETRY_INITIAL: Final = 1.0
JOIN_RETRY_MAX: Final = 60.0


def _probe_listen(address: tuple[str, int]) -> None:
    """Raise NodeError, as the transport would, if `address` cannot be listened on."""
    host, port = address
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[
            0
        ]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(sockaddr)
    except OSError as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise NodeError(f"cannot listen on {host}:{port}: {reason}") from None


@dataclass(slots=True)
class Activity:
    """What the owner asked of the node since it started (status and metrics)."""

    puts: int = 0
    puts_failed: int = 0
    put_bytes: int = 0
    gets: int = 0
    gets_failed: int = 0
    get_bytes: int = 0
    checks: int = 0
    repairs: int = 0


class _TableHosts:
    """The hosts of the contacts in a DHT's routing table, gathered at most once a
    second (the transport asks at every inbound connection, floods included)."""

    def __init__(self, dht: DhtService) -> None:
        self._dht = dht
        self._hosts: frozenset[str] = frozenset()
        self._gathered = -math.inf

    def __contains__(self, host: str) -> bool:
        now = trio.current_time()
        if now - self._gathered >= 1.0:
            self._hosts = frozenset(c.address[0] for c in self._dht.routing.contacts())
            self._gathered = now
        return host in self._hosts


class Node:
    """A Freehold node: its transport, DHT, chunk service and file layer, running."""

    def __init__(
        self,
        config: NodeConfig,
        *,
        identity: Identity | None = None,
        link_layer: LinkLayer | None = None,
        store: ChunkStore | None = None,
        dht_storage: DhtStorage | None = None,
        health: HealthBook | None = None,
        leases: LeaseBook | None = None,
        library: Library | None = None,
        dht_config: DhtConfig | None = None,
        transport_config: TransportConfig | None = None,
        rng: random.Random | None = None,
        random_bytes: RandomBytes = nacl.utils.random,
        wall_clock: Callable[[], float] = time.time,
        services: Sequence[Service] = (),
    ) -> None:
        """`identity`, `link_layer`, `store`, `dht_storage`, `health`, `leases` and
        `library` replace what `config` would make (a simulated node that restarts
        keeps them);
        `dht_config` and `transport_config` replace the defaults (a simulation of a year
        lengthens the DHT's upkeep intervals and keeps idle connections open); `rng`
        (the DHT's choices), `random_bytes` (file keys) and `wall_clock` (record
        lifetimes) are the simulations' hooks for repeatable runs in virtual time.
        `services` are the caller's (the control socket of `freehold node`): each is
        started last, in the node's nursery, as `await nursery.start(service, node)`,
        and stopped with the node, before it closes its store."""
        self.config = config
        self._services = tuple(services)
        self._rng = rng
        self._random_bytes = random_bytes
        self._wall_clock = wall_clock
        self._identity = identity
        self._link_layer = link_layer
        self._store = store
        self._dht_storage = dht_storage
        self._health = health
        self._leases = leases
        self._library = library
        self._dht_config = dht_config
        self._transport_config = transport_config
        self._cancel_scope = trio.CancelScope()
        self.transport: Transport | None = None
        self.dht: DhtService | None = None
        self.chunks: ChunkService | None = None
        self.files: FileNetwork | None = None
        self.steward: StewardService | None = None
        self.keeper: LeaseKeeper | None = None
        self.leaser: Leaser | None = None
        self.activity = Activity()
        self.metrics_address: tuple[str, int] | None = None
        self.web_address: tuple[str, int] | None = None
        self.identity: Identity | None = identity
        self.joined = trio.Event()

    # -- lifecycle --------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled or stopped; started() once listening and serving."""
        config = self.config
        in_memory = config.storage == "memory"
        # What the owner's uploads will be, checked before anything is made or opened.
        self._settings = FileSettings(
            params=EncodingParams(config.k, config.n, config.segment_size),
            happy=config.happy,
        )
        identity = self._identity
        if identity is None:
            if in_memory:
                raise NodeError("a node with storage = memory needs its identity given")
            if self._link_layer is None:
                # Before a first start spends seconds on its identity's proof of work.
                await trio.to_thread.run_sync(_probe_listen, config.listen)
            config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            identity = await trio.to_thread.run_sync(
                partial(
                    load_or_create_identity,
                    config.key_path,
                    difficulty=config.network_difficulty,
                )
            )
        if not meets_difficulty(identity.node_id, config.network_difficulty):
            raise NodeError(
                f"this node's id {identity.node_id.short()}… does not meet the network's "
                f"proof of work ({config.network_difficulty} bits): peers would refuse it"
            )
        store: ChunkStore
        store_config = StoreConfig(capacity=config.capacity, in_memory=in_memory)
        if self._store is not None:
            store = self._store
        elif in_memory:
            store = MemoryChunkStore(store_config)
        else:
            store = await trio.to_thread.run_sync(open_chunk_store, config.data_dir, store_config)
            free = (await trio.to_thread.run_sync(shutil.disk_usage, config.data_dir)).free
            warning = capacity_warning(config.capacity, store.used_bytes, free, config.data_dir)
            if warning is not None:
                logger.warning("%s", warning)
        dht_storage = self._dht_storage
        if dht_storage is None and not in_memory:
            dht_storage = DhtStorage.open(config.data_dir / "dht.sqlite3")
        liars = Liars(None if in_memory else config.data_dir / LIARS_FILE, clock=self._wall_clock)
        health = self._health or HealthBook(None if in_memory else config.data_dir / HEALTH_FILE)
        leases = self._leases or LeaseBook(
            None if in_memory else config.data_dir / LEASES_FILE,
            identity.node_id,
            config.lease_settings(),
            config.quota_settings(),
        )
        library = self._library or Library(None if in_memory else config.data_dir / LIBRARY_FILE)
        self.identity = identity
        try:
            with self._cancel_scope:
                await self._serve(
                    identity, store, dht_storage, liars, health, leases, library, task_status
                )
        finally:
            if self._library is None:
                library.close()
            if self._leases is None:
                leases.close()
            if self._health is None:
                health.close()
            liars.close()
            if self._store is None:
                store.close()
            if self._dht_storage is None and dht_storage is not None:
                dht_storage.close()

    async def _serve(
        self,
        identity: Identity,
        store: ChunkStore,
        dht_storage: DhtStorage | None,
        liars: Liars,
        health: HealthBook,
        leases: LeaseBook,
        library: Library,
        task_status: trio.TaskStatus[None],
    ) -> None:
        config = self.config
        link_layer = self._link_layer or TcpLinkLayer(identity)
        transport_config = self._transport_config
        if transport_config is None and is_loopback(config.listen[0]):
            # Every peer of a loopback node shares 127.0.0.0/24: the per-prefix limits
            # would hold a testnet of more than a few nodes to one prefix's slots.
            transport_config = TransportConfig().on_loopback()
        # The proof of work is the network's, so the node's setting rules.
        transport_config = dataclasses.replace(
            transport_config or TransportConfig(), id_difficulty=config.network_difficulty
        )
        transport = Transport(
            identity, link_layer, listen_address=config.listen, config=transport_config
        )
        async with trio.open_nursery() as nursery:
            try:
                await nursery.start(transport.run)
            except* OSError as group:  # an unknown host, an address in use or not ours
                host, port = config.listen
                reason = "; ".join(
                    str(getattr(exc, "strerror", None) or exc) for exc in group.exceptions
                )
                raise NodeError(f"cannot listen on {host}:{port}: {reason}") from None
            address = transport.address
            assert address is not None
            dht_config = self._dht_config or DhtConfig()
            if self._dht_config is None and is_loopback(address[0]):
                # Every peer of a loopback node shares 127.0.0.0/24: the per-prefix
                # Sybil limits would keep all but a few out of its table, and the
                # per-prefix quota of provider records would hold the whole testnet to
                # one prefix's share (the node-wide budget still holds).
                dht_config = DhtConfig(
                    ip_prefix_limit_per_bucket=None,
                    ip_prefix_limit_per_table=None,
                    max_records_per_prefix=None,
                )
            dht = DhtService(
                DhtTransportAdapter(transport),
                listen_port=address[1],
                config=dht_config,
                storage=dht_storage,
                rng=self._rng,
                wall_clock=self._wall_clock,
                # Peers' answers name addresses to dial: only public ones, and loopback
                # or private ones if this node lives on such a network (dht/dial.py).
                dial_policy=DialPolicy.for_node(
                    [address[0], config.listen[0], *(host for host, _ in config.bootstrap)],
                    id_difficulty=config.network_difficulty,
                ),
                offload=in_thread if config.workers else inline,
            )
            # Hosts of contacts in the routing table may use the transport's reserved
            # slots: a flood of newcomers cannot lock out the peers we know.
            transport.known_host = _TableHosts(dht).__contains__
            # workers = 0: everything inline (simulations, under a mock clock); else the
            # disk in worker threads, and coding in at most `workers` of them.
            offload = in_thread if config.workers else inline
            codec = in_threads(config.workers) if config.workers else inline
            chunks = ChunkService(store, transport, dht.provide, provisions=dht, offload=offload)
            keeper = LeaseKeeper(
                leases,
                store,
                transport=transport,
                offload=offload,
                wall_clock=self._wall_clock,
                withdraw=dht.withdraw,
            )
            chunks.keeper = keeper
            self.keeper = keeper
            await nursery.start(dht.run)
            await nursery.start(keeper.run)
            await nursery.start(chunks.run)
            own = Contact(identity.node_id, address) if config.capacity > 0 else None
            self.transport, self.dht, self.chunks = transport, dht, chunks
            self.files = FileNetwork(
                client=ChunkClient(
                    transport=transport,
                    local=chunks if own is not None else None,
                    own=own,
                    offload=offload,
                ),
                dht=dht,
                settings=self._settings,
                codec=codec,
                random_bytes=self._random_bytes,
                liars=liars,
                parity=best_parity(),
            )
            self.steward = StewardService(
                self.files,
                store,
                Stewardship(
                    identity.node_id,
                    StewardSettings(
                        audit_interval=config.audit_interval,
                        repair_threshold=config.repair_at,
                        n=config.n,
                        repair_grace=config.repair_grace,
                        repair_delay=config.repair_delay,
                    ),
                    random.Random(self._rng.random() if self._rng is not None else None),
                ),
                bandwidth=config.repair_bandwidth,
                offload=offload,
                book=health,
                wall_clock=self._wall_clock,
                keeper=keeper,
            )
            chunks.on_stored = self.steward.hold
            chunks.on_audited = self.steward.audited_by_peer
            await nursery.start(self.steward.run)
            self.leaser = Leaser(self.files, identity, library, config.lease_settings(), keeper.now)
            await nursery.start(self.leaser.run)
            if config.bootstrap:
                nursery.start_soon(self._join)
            else:
                self.joined.set()
            if config.web_listen is not None and config.storage == "disk":
                await self._start_web(nursery, config.web_listen)
            if config.metrics_listen is not None:
                from node.metrics import serve_metrics

                host, port = config.metrics_listen
                try:
                    self.metrics_address = await nursery.start(serve_metrics, self, host, port)
                except OSError as exc:
                    reason = getattr(exc, "strerror", None) or str(exc)
                    raise NodeError(f"cannot serve metrics on {host}:{port}: {reason}") from None
                logger.info("metrics at http://%s:%d/metrics", *self.metrics_address)
            for service in self._services:
                await nursery.start(service, self)
            logger.info(
                "node %s listening on %s:%d, data in %s",
                identity.node_id.hex()[:16],
                *address,
                config.data_dir,
            )
            task_status.started()

    def stop(self) -> None:
        self._cancel_scope.cancel()

    async def _start_web(self, nursery: trio.Nursery, listen: tuple[str, int]) -> None:
        """Serve the web page (node/web/); a port in use costs the page, not the node."""
        from node.web import SECRET_FILE, WEB_ADDRESS_FILE, load_or_create_secret, serve_web

        secret = load_or_create_secret(self.config.data_dir / SECRET_FILE)
        host, port = listen
        try:
            self.web_address = await nursery.start(serve_web, self, host, port, secret)
        except* OSError as group:  # Hypercorn's nurseries wrap it
            reason = "; ".join(
                str(getattr(exc, "strerror", None) or exc) for exc in group.exceptions
            )
            logger.warning("no web page: cannot listen on %s:%d: %s", host, port, reason)
        if self.web_address is None:
            return
        web_host, web_port = self.web_address
        shown = f"[{web_host}]" if ":" in web_host else web_host
        (self.config.data_dir / WEB_ADDRESS_FILE).write_text(f"{shown}:{web_port}\n")
        logger.info("web page at http://%s:%d/ (`freehold web` prints its link)", shown, web_port)

    async def _join(self) -> None:
        """Bootstrap through the configured addresses, retrying with backoff until one
        answers (a testnet's nodes start in any order)."""
        assert self.dht is not None
        delay = JOIN_RETRY_INITIAL
        while True:
            try:
                contacts = await self.dht.bootstrap(self.config.bootstrap)
            except DhtError as exc:
                logger.warning("joining failed (%s); trying again in %.0f s", exc, delay)
                await trio.sleep(delay)
                delay = min(delay * 2, JOIN_RETRY_MAX)
                continue
            logger.info("joined the network: %d contacts", contacts)
            self.joined.set()
            return
