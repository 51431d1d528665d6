"""The DHT service: carries out the routing table's and the lookups' decisions over a
transport, answers the DHT's RPCs, and runs the background jobs.

Public API: `bootstrap(addresses)`, `find_node(target)`, `provide(key)`,
`find_providers(key)`, `statistics()`; `run()` is the long-lived task (started with
`nursery.start(service.run)`), holding every background job in its nursery:

| job          | when                                   | what                              |
|--------------|----------------------------------------|-----------------------------------|
| refresh      | every bucket_refresh_interval          | a random-id lookup in each bucket |
|              |                                        | with no lookup for that long      |
| republish    | at each provision's last publish +     | ADD_PROVIDER to the k closest     |
|              | republish_interval (22 h), less the    | (republish_concurrency at a time) |
|              | key's own offset (republish_spread)    |                                   |
| expiry       | every expiry_sweep_interval            | drop expired provider records     |
| persistence  | every PERSIST_INTERVAL and at the end  | records changed since the last    |
|              |                                        | save, provisions, table; written  |
|              |                                        | in a worker thread                |
| eviction     | when the table asks (PingOldest)       | ping the oldest contact of a full |
|              |                                        | bucket; evict it if it is silent  |

Inbound RPCs (docs/PROTOCOL.md#dht) are answered inline from memory: FIND_NODE with the
k closest contacts we know, GET_PROVIDERS with our records and the k closest, and
ADD_PROVIDER by recording the authenticated sender (never anyone named in the
message) at the host its connection comes from and the port it says it listens on.
Every request with a listening port teaches us a contact.

Persistence never stalls the event loop for long: a save takes the provider records
changed since the last one (`ProviderStore.take_changes`) a batch of SAVE_BATCH at a
time with a checkpoint in between, and writes them, the provisions and the routing
table in one worker thread (`in_thread`, or `inline` under a MockClock); the loop goes
on serving meanwhile. The database connection is used by one thread at a time: the load before
the jobs start, the persistence job's saves one after another, the last save after
they stopped. A save that fails makes the next one rewrite every record.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from dht.config import DhtConfig
from dht.contact import Address, Contact, ContactCache
from dht.dial import DialPolicy
from dht.errors import DhtError, RpcFailed, StorageError
from dht.lookup import CANDIDATE_FACTOR, Lookup
from dht.providers import LocalProvisions, ProviderRecord, ProviderStore, Provision
from dht.routing import Evicted, PingOldest, RoutingTable
from dht.rtt import RttEstimator
from dht.storage import ContactRecord, DhtStorage
from dht.transport import Caller, RpcTransport
from protocol.identity import NodeId
from protocol.messages import (
    AddProvider,
    FindNode,
    GetProviders,
    Message,
    Nodes,
    ProviderAdded,
    Providers,
    WireContact,
)

__all__ = ["DhtService", "DhtStatistics", "Offload", "in_thread", "inline"]

logger = logging.getLogger(__name__)

# Eviction pings running at once; more PingOldest decisions wait for the next contact.
MAX_EVICTION_PINGS = 8
# A lookup starts from this many times k contacts of our own table (see _lookup); a
# lookup keeps at most CANDIDATE_FACTOR * k candidates, so more would be cut.
SEEDS_PER_K = 2
assert SEEDS_PER_K <= CANDIDATE_FACTOR
# How often the tables are saved while running (they are saved at shutdown too): a
# node killed loses at most this much of its changes.
PERSIST_INTERVAL = 5 * 60.0
# Provider records turned into rows between two checkpoints of a save: about 2 ms of
# the event loop each (benchmarks/providers.py).
SAVE_BATCH = 2000
# How often per bucket_refresh_interval the buckets are checked for staleness.
REFRESH_CHECKS_PER_INTERVAL = 10


Offload = Callable[[Callable[[], Any]], Awaitable[Any]]
"""How the service runs its blocking work (SQLite): `in_thread`, or `inline`."""


async def in_thread(function: Callable[[], Any]) -> Any:
    """Run `function()` in a worker thread; the event loop goes on meanwhile. Not
    abandoned on cancellation: when this returns, the thread is done with its work."""
    return await trio.to_thread.run_sync(function)


async def inline(function: Callable[[], Any]) -> Any:
    """Run `function()` on the event loop's thread. For simulations and tests under
    trio's MockClock: a worker thread's real time lets the virtual clock jump past the
    service's timers, so runs would not repeat."""
    await trio.lowlevel.checkpoint()
    return function()


@dataclass(slots=True)
class DhtStatistics:
    """Counters since start and current sizes (trio's `statistics()` convention)."""

    contacts: int = 0
    records: int = 0
    provisions: int = 0
    lookups: int = 0
    lookup_queries: int = 0
    lookup_failures: int = 0
    # Sum over lookups of each one's hops (LookupStatistics.hops): with `lookups`, the
    # mean number of hops.
    lookup_hops: int = 0
    requests_served: int = 0
    provides: int = 0
    republished: int = 0
    bucket_refreshes: int = 0
    evictions: int = 0


class DhtService:
    """One node's DHT over an RpcTransport."""

    def __init__(
        self,
        transport: RpcTransport,
        *,
        listen_port: int,
        config: DhtConfig | None = None,
        storage: DhtStorage | None = None,
        rng: random.Random | None = None,
        wall_clock: Callable[[], float] = time.time,
        dial_policy: DialPolicy | None = None,
        offload: Offload = in_thread,
    ) -> None:
        """`dial_policy` says which addresses named in peers' answers are dialled
        (dht/dial.py); None dials any (tests of the DHT alone). `offload` runs the
        database's work (`inline` under a MockClock)."""
        self.config = config or DhtConfig()
        self.dial_policy = dial_policy
        self.refused_addresses = 0
        self.node_id = transport.node_id
        self._transport = transport
        # 0 means we do not listen: peers then keep us out of their tables.
        self._listen_port = listen_port
        self._storage = storage
        self._offload = offload
        self._rng = rng or random.Random()
        self._wall_clock = wall_clock
        self.routing = RoutingTable(self.node_id, self.config)
        self.rtt = RttEstimator(self.config)
        self._contacts = ContactCache()
        self.records = ProviderStore(self.config)
        self.provisions = LocalProvisions()
        self._statistics = DhtStatistics()
        self._nursery: trio.Nursery | None = None
        self._eviction_pings = 0
        self._republish_timer: trio.CancelScope | None = None
        transport.serve(FindNode, self.handle_find_node)
        transport.serve(GetProviders, self.handle_get_providers)
        transport.serve(AddProvider, self.handle_add_provider)

    # -- lifecycle --------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load saved state, then run the background jobs until cancelled."""
        await self._load()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._refresh_loop)
                nursery.start_soon(self._republish_loop)
                nursery.start_soon(self._expiry_loop)
                if self._storage is not None:
                    nursery.start_soon(self._persist_loop)
                task_status.started()
        finally:
            self._nursery = None
            self._save()  # synchronous: cancellation cannot cut it short

    def statistics(self) -> DhtStatistics:
        self._statistics.contacts = len(self.routing)
        self._statistics.records = len(self.records)
        self._statistics.provisions = len(self.provisions)
        return self._statistics

    # -- public API -------------------------------------------------------------------

    async def bootstrap(self, addresses: Iterable[Address]) -> int:
        """Join through the nodes at `addresses`: learn who they are, look ourselves up
        (Kademlia §2.3), then, with `config.refresh_on_join`, refresh every bucket.
        Returns the number of contacts known; raises DhtError if none answered."""
        answered = 0

        async def meet(address: Address) -> None:
            nonlocal answered
            try:
                node_id = await self._transport.identify(
                    address, timeout=self.config.max_query_timeout
                )
            except RpcFailed as exc:
                logger.info("bootstrap node %s:%s did not answer: %s", *address, exc)
                return
            if node_id != self.node_id:
                self._seen(Contact(node_id, address))
                answered += 1

        async with trio.open_nursery() as nursery:
            for address in addresses:
                nursery.start_soon(meet, address)
        if not answered:
            raise DhtError("no bootstrap node answered")
        await self.find_node(self.node_id)
        if self.config.refresh_on_join:
            await self._refresh_buckets(force=True)
        # Keys that could not be announced alone (before we knew anyone) can be now.
        self._wake_republisher(trio.current_time())
        return len(self.routing)

    async def find_node(self, target: NodeId) -> list[Contact]:
        """The k contacts closest to `target` that answered, closest first."""
        lookup = await self._lookup(target, want_providers=False)
        return lookup.result()

    async def provide(self, key: NodeId) -> int:
        """Announce that we provide `key` to the k nodes closest to it, and keep
        republishing it. Returns how many nodes took the record."""
        self.provisions.provide(key)
        stored = await self._publish(key)
        self._statistics.provides += 1
        return stored

    def provide_later(self, key: NodeId) -> None:
        """Start providing `key` without announcing it here: the republisher announces
        it soon (a new key is due at once), with the others due."""
        self.provisions.provide(key)
        self._wake_republisher(trio.current_time())

    def provides(self, key: NodeId) -> bool:
        """Whether we provide `key` (announced, or due to be)."""
        return key in self.provisions

    def withdraw(self, key: NodeId) -> None:
        """Stop republishing `key`; its records elsewhere lapse within provider_ttl."""
        self.provisions.withdraw(key)

    async def find_providers(self, key: NodeId) -> list[Contact]:
        """Every provider of `key` known to the k nodes closest to it (and to us)."""
        lookup = await self._lookup(key, want_providers=True)
        found: dict[NodeId, Contact] = {}
        for contact in (*lookup.providers(), *self._local_providers(key)):
            found.setdefault(contact.node_id, contact)
        return list(found.values())

    # -- inbound RPCs (inline: they answer from memory and never block) ---------------

    def handle_find_node(self, caller: Caller, message: Message) -> Message:
        assert isinstance(message, FindNode)
        self._statistics.requests_served += 1
        self._learn(caller, message.sender_port)
        closest = self.routing.closest(
            NodeId(message.target), self.config.k, exclude={caller.node_id}, answering=True
        )
        return Nodes(tuple(contact.to_wire() for contact in closest))

    def handle_get_providers(self, caller: Caller, message: Message) -> Message:
        assert isinstance(message, GetProviders)
        self._statistics.requests_served += 1
        self._learn(caller, message.sender_port)
        key = NodeId(message.key)
        providers = self._local_providers(key)
        closer = self.routing.closest(key, self.config.k, exclude={caller.node_id}, answering=True)
        return Providers(
            tuple(contact.to_wire() for contact in providers),
            tuple(contact.to_wire() for contact in closer),
        )

    def handle_add_provider(self, caller: Caller, message: Message) -> Message:
        assert isinstance(message, AddProvider)
        self._statistics.requests_served += 1
        self._learn(caller, message.sender_port)
        # The record names the authenticated sender, at the host its connection comes
        # from: nobody can announce someone else. RecordRejected (quota, full key)
        # becomes an ERROR answer.
        provider = Contact(caller.node_id, (caller.address[0], message.sender_port))
        now = trio.current_time()
        expires_at = self.records.add(NodeId(message.key), provider, now)
        return ProviderAdded(ttl=max(0, math.floor(expires_at - now)))

    # -- lookups ----------------------------------------------------------------------

    async def _lookup(self, target: NodeId, *, want_providers: bool) -> Lookup:
        now = trio.current_time()
        self.routing.touch_bucket(target, now)
        lookup = Lookup(
            target,
            # 2k seeds, not k: the lookup queries the k closest first either way, and
            # the next ones are there when some of those fail. After a mass failure
            # every answer still names the dead (no one has evicted them yet), so in
            # a network we know whole the live nodes just beyond the first k would
            # be named by no one: 5 of 30 lookups were exact after 25% died at N = 50.
            self.routing.closest(target, SEEDS_PER_K * self.config.k),
            config=self.config,
            own_id=self.node_id,
            want_providers=want_providers,
            rtt=self.rtt,
        )
        wakeup = trio.lowlevel.ParkingLot()
        # Queries not yet past their adaptive deadline; past it they are reported slow
        # (their slot is refilled) but stay open until max_query_timeout.
        fresh: dict[NodeId, float] = {}
        async with trio.open_nursery() as local:
            # Queries run in the service's nursery when it is running, so that the ones
            # still open when the lookup ends run to their answer or give-up: their
            # outcome still teaches the routing table (a dead contact's failures get it
            # evicted). Without the service running they end with the lookup.
            queries = self._nursery or local
            while True:
                now = trio.current_time()
                for node_id, deadline in list(fresh.items()):
                    if deadline <= now:
                        del fresh[node_id]
                        lookup.slow(lookup.contact(node_id), now)
                for query in lookup.next_queries(now):
                    fresh[query.contact.node_id] = query.deadline
                    give_up = max(query.deadline, now + self.config.max_query_timeout)
                    queries.start_soon(self._query, lookup, query.contact, give_up, wakeup, fresh)
                if lookup.is_done or lookup.waiting == 0:
                    break
                with trio.move_on_at(min(fresh.values(), default=math.inf)):
                    await wakeup.park()
            local.cancel_scope.cancel()
        statistics = lookup.statistics()
        self._statistics.lookups += 1
        self._statistics.lookup_queries += statistics.queries_sent
        self._statistics.lookup_failures += statistics.failed
        self._statistics.lookup_hops += statistics.hops
        return lookup

    async def _query(
        self,
        lookup: Lookup,
        contact: Contact,
        deadline: float,
        wakeup: trio.lowlevel.ParkingLot,
        fresh: dict[NodeId, float],
    ) -> None:
        target = lookup.target.value
        request: Message
        if lookup.want_providers:
            request = GetProviders(target, self._listen_port)
        else:
            request = FindNode(target, self._listen_port)
        started = trio.current_time()
        try:
            answer = await self._transport.call(
                contact, request, timeout=max(0.0, deadline - started)
            )
            contacts, providers = self._parse_answer(lookup, answer)
        except RpcFailed:
            now = trio.current_time()
            if not lookup.is_done:
                lookup.failed(contact, now)
            self.rtt.observe_timeout(contact.node_id)
            self._failed(contact)
        else:
            now = trio.current_time()
            self.rtt.observe(contact.node_id, now - started)
            if not lookup.is_done:
                lookup.answered(contact, contacts, now, providers=providers)
            self._seen(contact)
        finally:
            fresh.pop(contact.node_id, None)
            wakeup.unpark_all()

    def _parse_answer(self, lookup: Lookup, answer: Message) -> tuple[list[Contact], list[Contact]]:
        if lookup.want_providers and isinstance(answer, Providers):
            return self._dialable(answer.closer), self._dialable(answer.providers)
        if not lookup.want_providers and isinstance(answer, Nodes):
            return self._dialable(answer.contacts), []
        raise RpcFailed(f"answered {type(answer).__name__} to a lookup")

    def _dialable(self, wires: Sequence[WireContact]) -> list[Contact]:
        """The contacts of an answer this node will dial (dht/dial.py): at most k, and
        none at an address the dial policy refuses."""
        policy = self.dial_policy
        allowed = [
            wire for wire in wires if policy is None or policy.allows(wire.host, wire.node_id)
        ]
        self.refused_addresses += len(wires) - len(allowed)
        return [self._contacts.from_wire(wire) for wire in allowed[: self.config.k]]

    # -- publishing -------------------------------------------------------------------

    async def _publish(self, key: NodeId) -> int:
        if self._listen_port == 0:
            raise DhtError("a node that does not listen cannot provide")
        closest = await self.find_node(key)
        stored = 0

        async def store(contact: Contact) -> None:
            nonlocal stored
            try:
                answer = await self._transport.call(
                    contact,
                    AddProvider(key.value, self._listen_port),
                    timeout=self.rtt.timeout_for(contact.node_id),
                )
            except RpcFailed as exc:
                logger.debug("%r did not take %s: %s", contact, key.short(), exc)
                self._failed(contact)
                return
            if isinstance(answer, ProviderAdded):
                stored += 1

        async with trio.open_nursery() as nursery:
            for contact in closest:
                nursery.start_soon(store, contact)
        if stored:
            # Recorded a little early, by the key's own offset: keys published together
            # drift apart and their republishing spreads over the interval.
            published = trio.current_time() - self.config.republish_offset(key.value)
            self.provisions.published(key, published)
            self._wake_republisher(published + self.config.republish_interval)
        return stored

    def _local_providers(self, key: NodeId) -> list[Contact]:
        return self.records.get(key, trio.current_time(), self.config.max_providers_per_key)

    # -- the routing table ------------------------------------------------------------

    def _learn(self, caller: Caller, sender_port: int) -> None:
        if sender_port:
            self._seen(Contact(caller.node_id, (caller.address[0], sender_port)))

    def _seen(self, contact: Contact) -> None:
        decision = self.routing.seen(contact, trio.current_time())
        if isinstance(decision, PingOldest):
            nursery = self._nursery
            if nursery is not None and self._eviction_pings < MAX_EVICTION_PINGS:
                self._eviction_pings += 1
                nursery.start_soon(self._ping_oldest, decision.oldest)

    def _failed(self, contact: Contact) -> None:
        if isinstance(self.routing.failed(contact.node_id), Evicted):
            self._statistics.evictions += 1

    async def _ping_oldest(self, oldest: Contact) -> None:
        try:
            rtt = await self._transport.ping(oldest, timeout=self.rtt.timeout_for(oldest.node_id))
        except RpcFailed:
            if self.routing.ping_failed(oldest) is not None:
                self._statistics.evictions += 1
        else:
            self.rtt.observe(oldest.node_id, rtt)
            self.routing.ping_answered(oldest, trio.current_time())
        finally:
            self._eviction_pings -= 1

    # -- background jobs --------------------------------------------------------------

    async def _refresh_loop(self) -> None:
        # Checked several times per interval: a bucket goes stale an interval after its
        # last lookup, whenever that was, and is refreshed within a tenth of one after.
        while True:
            await trio.sleep(self.config.bucket_refresh_interval / REFRESH_CHECKS_PER_INTERVAL)
            await self._refresh_buckets(force=False)

    async def _refresh_buckets(self, *, force: bool) -> None:
        now = trio.current_time()
        interval = 0.0 if force else self.config.bucket_refresh_interval
        stale = self.routing.stale_buckets(now, interval)
        targets = [
            self.routing.random_id_in_bucket(bucket.index, self._random_below) for bucket in stale
        ]
        async with trio.open_nursery() as nursery:
            for target in targets:
                self._statistics.bucket_refreshes += 1
                nursery.start_soon(self.find_node, target)

    def _random_below(self, limit: int) -> int:
        return self._rng.randrange(limit)

    def _wake_republisher(self, when: float) -> None:
        timer = self._republish_timer
        if timer is not None and when < timer.deadline:
            timer.deadline = when

    def _next_republish(self) -> float:
        due = [
            provision.last_published + self.config.republish_interval
            for provision in self.provisions.records()
            if provision.last_published is not None
        ]
        if any(provision.last_published is None for provision in self.provisions.records()):
            return trio.current_time()
        return min(due, default=math.inf)

    async def _republish_loop(self) -> None:
        retry_at = -math.inf
        while True:
            deadline = max(self._next_republish(), retry_at)
            with trio.CancelScope(deadline=deadline) as timer:
                self._republish_timer = timer  # `_wake_republisher` brings it forward
                await trio.sleep_forever()
            self._republish_timer = None
            due = self.provisions.due_for_republish(
                trio.current_time(), self.config.republish_interval
            )
            # At most `republish_concurrency` lookups at once: a burst of keys due
            # together goes out as a stream.
            limit = trio.Semaphore(self.config.republish_concurrency)
            async with trio.open_nursery() as nursery:
                for key in due:
                    await limit.acquire()
                    nursery.start_soon(self._republish, key, limit)
            retry_at = -math.inf
            now = trio.current_time()
            still_due = set(due) & set(
                self.provisions.due_for_republish(now, self.config.republish_interval)
            )
            if still_due:
                # Nobody took them: try again after a while rather than spin (unless
                # something wakes us first: a join, or a key to provide). Keys provided
                # while this round ran are not failures: they go next, at once.
                retry_at = now + self.config.bucket_refresh_interval

    async def _republish(self, key: NodeId, limit: trio.Semaphore) -> None:
        try:
            if await self._publish(key):
                self._statistics.republished += 1
        except DhtError as exc:
            logger.warning("republishing %s failed: %s", key.short(), exc)
        finally:
            limit.release()

    async def _expiry_loop(self) -> None:
        while True:
            await trio.sleep(self.config.expiry_sweep_interval)
            self.records.expire(trio.current_time())

    async def _persist_loop(self) -> None:
        while True:
            await trio.sleep(PERSIST_INTERVAL)
            await self.save()

    # -- persistence ------------------------------------------------------------------

    async def save(self) -> None:
        """Save what changed since the last save, the rows written in a worker thread.
        Not to be called while another save runs (the persistence job's are in turn)."""
        storage = self._storage
        if storage is None:
            return
        changes = self.records.take_changes()
        records: list[ProviderRecord] = []
        try:
            while batch := changes.take_records(SAVE_BATCH):
                records.extend(batch)
                await trio.lowlevel.checkpoint()
        except BaseException:
            self.records.save_failed()  # cancelled halfway: the next save rewrites all
            raise
        write = self._writer(storage, records, changes.removed, full=changes.full)
        try:
            await self._offload(write)  # the connection is free again once it returns
        except StorageError as exc:
            self.records.save_failed()
            logger.error("could not save the DHT state: %s", exc)

    def _save(self) -> None:
        """The last save, after the jobs stopped: on this thread, as it cannot wait."""
        storage = self._storage
        if storage is None:
            return
        changes = self.records.take_changes()
        records: list[ProviderRecord] = []
        while batch := changes.take_records(SAVE_BATCH):
            records.extend(batch)
        try:
            self._writer(storage, records, changes.removed, full=changes.full)()
        except StorageError as exc:
            self.records.save_failed()
            logger.error("could not save the DHT state: %s", exc)

    def _writer(
        self,
        storage: DhtStorage,
        records: list[ProviderRecord],
        removed: list[tuple[NodeId, NodeId]],
        *,
        full: bool,
    ) -> Callable[[], None]:
        """A function writing the given record changes and the whole of the provisions
        and the routing table as they are now, safe to run in another thread (it
        touches none of the service's state)."""
        now = trio.current_time()
        wall_time = self._wall_clock()
        provisions = self.provisions.records()
        contacts = [
            ContactRecord(Contact(NodeId(node_id), (host, port)), last_seen)
            for node_id, host, port, last_seen in self.routing.to_records()
        ]

        def write() -> None:
            storage.save_record_changes(records, removed, full=full, now=now, wall_time=wall_time)
            storage.save_provisions(provisions, now=now, wall_time=wall_time)
            storage.save_contacts(contacts, now=now, wall_time=wall_time)

        return write

    async def _load(self) -> None:
        storage = self._storage
        if storage is None:
            return
        now = trio.current_time()
        wall_time = self._wall_clock()

        def load() -> tuple[list[ProviderRecord], list[Provision], list[ContactRecord]]:
            return (
                storage.load_records(now=now, wall_time=wall_time),
                storage.load_provisions(now=now, wall_time=wall_time),
                storage.load_contacts(now=now, wall_time=wall_time),
            )

        try:
            records, provisions, contacts = await self._offload(load)
        except StorageError as exc:
            logger.error("could not load the DHT state, starting empty: %s", exc)
            return
        self.records.restore(records, now)
        self.provisions.restore(provisions, now)
        for record in contacts:
            self.routing.seen(record.contact, min(record.last_seen, now))
