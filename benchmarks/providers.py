"""Provider records benchmark: a record's memory, the cost of adding one, and how long
saving them stalls the event loop, each beside the layout and the save they replace.

Method, in one run on this machine. `records` records (200,000, the issue's figure;
`--quick`: 20,000), each for a key of its own, from 1,000 providers spread over 250
/24s, are added to a `ProviderStore` with its limits lifted (the budget is what is
measured, not what it refuses), the way the service adds them: a fresh NodeId and
Contact per announcement. The baseline is `_OldProviderStore` below, the store's add
path and data layout before the budget (a dict of dicts of frozen records, a set of
keys per provider and a heap of (time, key, provider) tuples), copied from commit
4b7a20c.

1. Bytes per record: tracemalloc's traced memory after the adds, less before, over the
   number of records. It counts the keys and Contacts the store keeps alive.
2. Adding: wall time per add, without tracemalloc.
3. The event loop's stall while saving to a fresh SQLite file (WAL, as a node has it):
   a task ticks every millisecond on trio's loop; the stall is the longest gap between
   two ticks, less that millisecond. The baseline is the old save: every record
   deleted and written again, on the loop (`DhtStorage.save_records`). The service's
   save (`DhtService.save`) is measured twice: the first save, when every record is
   new (the worst case: every row is written), and a save after 1% of the records were
   refreshed (a node's usual five minutes).

Target (the issue's): no stall of seconds; the old save stalled 2.1 s for 200,000.
What is left of a stall in the first save is mostly CPython's full garbage
collections: with 200,000 records the process holds about a million objects, a
collection of the oldest generation walks them all (about 90 ms here), and the rows a
save allocates trigger one now and then, whatever thread allocates them.
"""

from __future__ import annotations

import heapq
import json
import random
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import trio

from benchmarks import BenchmarkOptions
from dht.config import DhtConfig
from dht.contact import Contact
from dht.providers import ProviderStore
from dht.service import DhtService
from dht.storage import DhtStorage
from dht.transport import Caller
from protocol.identity import NodeId
from protocol.messages import Message

__all__ = ["run_providers_benchmark"]

RECORDS: Final = 200_000
QUICK_RECORDS: Final = 20_000
PROVIDERS: Final = 1000
TICK: Final = 0.001
SEED: Final = 18
WALL: Final = 1.7e9

CONFIG: Final = DhtConfig(
    max_records=10**8, max_records_per_prefix=None, max_records_per_peer=10**8
)


@dataclass(frozen=True, slots=True)
class _OldRecord:
    key: NodeId
    provider: Contact
    expires_at: float


class _OldProviderStore:
    """The add path and layout of dht/providers.py at commit 4b7a20c (its limits
    lifted, as the new store's are here)."""

    def __init__(self, ttl: float) -> None:
        self._ttl = ttl
        self._by_key: dict[NodeId, dict[NodeId, _OldRecord]] = {}
        self._keys_by_provider: dict[NodeId, set[NodeId]] = {}
        self._expiry_heap: list[tuple[float, NodeId, NodeId]] = []
        self._records = 0

    def add(self, key: NodeId, provider: Contact, now: float) -> float:
        expires_at = now + self._ttl
        providers = self._by_key.get(key)
        existing = None if providers is None else providers.get(provider.node_id)
        if providers is not None and existing is not None:
            expires_at = max(expires_at, existing.expires_at)
            providers[provider.node_id] = _OldRecord(key, provider, expires_at)
            return expires_at
        provider_id = provider.node_id
        self._by_key.setdefault(key, {})[provider_id] = _OldRecord(key, provider, expires_at)
        self._keys_by_provider.setdefault(provider_id, set()).add(key)
        heapq.heappush(self._expiry_heap, (expires_at, key, provider_id))
        self._records += 1
        return expires_at


class _Idle:
    """An RpcTransport that nobody calls: the service here only saves."""

    node_id = NodeId(bytes(32))

    async def call(self, contact: Contact, message: Message, *, timeout: float) -> Message:
        raise AssertionError("not called")

    async def ping(self, contact: Contact, *, timeout: float) -> float:
        raise AssertionError("not called")

    async def identify(self, address: tuple[str, int], *, timeout: float) -> NodeId:
        raise AssertionError("not called")

    def serve(
        self, message_type: type[Message], handler: Callable[[Caller, Message], Message]
    ) -> None:
        pass


def _announcements(count: int, seed: int) -> list[tuple[bytes, bytes, str]]:
    rng = random.Random(seed)
    providers = [
        (rng.randbytes(32), f"10.{number % 250}.{number % 7}.{number // 250 + 1}")
        for number in range(PROVIDERS)
    ]
    return [(rng.randbytes(32), *providers[number % PROVIDERS]) for number in range(count)]


def _fill(store: Any, announcements: list[tuple[bytes, bytes, str]]) -> float:
    """Add every announcement as the service does (a NodeId and a Contact each, at a
    clock that moves on); return the seconds it took."""
    started = time.perf_counter()
    for number, (key, provider_id, host) in enumerate(announcements):
        store.add(NodeId(key), Contact(NodeId(provider_id), (host, 4410)), number * 0.001)
    return time.perf_counter() - started


def _bytes_per_record(
    make: Callable[[], Any], announcements: list[tuple[bytes, bytes, str]]
) -> float:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        store = make()
        _fill(store, announcements)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del store
    return (after - before) / len(announcements)


async def _stall_while(job: Callable[[], Any]) -> tuple[float, float]:
    """Run `job` (sync or async) on this loop beside a 1 ms ticker; return the longest
    gap between ticks less the tick, and the job's wall time."""
    longest = 0.0
    done = False

    async def tick() -> None:
        nonlocal longest
        last = time.perf_counter()
        while not done:
            await trio.sleep(TICK)
            now = time.perf_counter()
            longest = max(longest, now - last - TICK)
            last = now

    async with trio.open_nursery() as nursery:
        nursery.start_soon(tick)
        await trio.sleep(10 * TICK)
        started = time.perf_counter()
        result = job()
        if hasattr(result, "__await__"):
            await result
        took = time.perf_counter() - started
        await trio.sleep(10 * TICK)
        done = True
    return max(0.0, longest), took


async def _saves(
    announcements: list[tuple[bytes, bytes, str]], directory: Path
) -> dict[str, tuple[float, float]]:
    results: dict[str, tuple[float, float]] = {}
    with (
        DhtStorage.open(directory / "old.sqlite3") as old,
        DhtStorage.open(directory / "new.sqlite3") as storage,
    ):
        service = DhtService(
            _Idle(), listen_port=4410, config=CONFIG, storage=storage, wall_clock=lambda: WALL
        )
        _fill(service.records, announcements)
        records = service.records.records()
        results["old"] = await _stall_while(
            lambda: old.save_records(records, now=trio.current_time(), wall_time=WALL)
        )
        results["first"] = await _stall_while(service.save)
        rng = random.Random(SEED + 1)
        later = trio.current_time() + 1.0
        for key, provider_id, host in rng.sample(announcements, len(announcements) // 100):
            service.records.add(NodeId(key), Contact(NodeId(provider_id), (host, 4410)), later)
        results["one_percent"] = await _stall_while(service.save)
    return results


def run_providers_benchmark(options: BenchmarkOptions) -> None:
    count = QUICK_RECORDS if options.quick else RECORDS
    announcements = _announcements(count, SEED)
    print(f"providers benchmark: {count:,} records, one key each, {PROVIDERS} providers")
    new_bytes = _bytes_per_record(lambda: ProviderStore(CONFIG), announcements)
    old_bytes = _bytes_per_record(lambda: _OldProviderStore(CONFIG.provider_ttl), announcements)
    new_add = _fill(ProviderStore(CONFIG), announcements) / count
    old_add = _fill(_OldProviderStore(CONFIG.provider_ttl), announcements) / count
    with tempfile.TemporaryDirectory(prefix="freehold-providers-") as directory:
        saves = trio.run(_saves, announcements, Path(directory))
    old_stall, old_took = saves["old"]
    print(f"{'figure':34}{'now':>12}{'before':>12}{'ratio':>8}")
    rows: list[dict[str, Any]] = []

    def row(name: str, metric: str, now: float, before: float, unit: str, scale: float) -> None:
        ratio = now / before if before > 0 else float("nan")
        print(
            f"{name:34}{now * scale:>10,.1f}{unit:>2}{before * scale:>10,.1f}{unit:>2}{ratio:>8.3f}"
        )
        rows.append(
            {"metric": metric, "records": count, "value": now, "baseline": before, "ratio": ratio}
        )

    row("memory per record", "bytes_per_record", new_bytes, old_bytes, " B", 1)
    row("add one record", "add_seconds", new_add, old_add, "us", 1e6)
    for name, label in (
        ("first", "first save, all new"),
        ("one_percent", "save after 1% refreshed"),
    ):
        stall, took = saves[name]
        row(f"loop stall, {label}", f"stall_{name}", stall, old_stall, "ms", 1e3)
        row("  its wall time", f"save_seconds_{name}", took, old_took, "ms", 1e3)
    print("(before: the old layout and the old save of every record on the loop, same run)")
    for item in rows:
        print(json.dumps(item))
