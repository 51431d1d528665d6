"""`durability`: files put once, their owners never seen again, a year of nodes coming
and going; does the network keep every file by itself, and at what cost in repairs?

Real nodes (simulations/harness.py) with the real stewardship (node/stewardship.py,
node/steward.py). Each of `files` files of `file_kib` KiB is put by the real upload
from a random node, in segments of `segment_kib` KiB (small, so that a year of audits
fits in the time: the rules do not depend on the size). Then, for `days`:

- **departures for good**: each node leaves for good after an exponentially
  distributed lifetime, `departures_share` of them within a year (30% by default), and
  a fresh, empty node joins in its place;
- **transient outages**: between departures, each node is switched off now and then
  (online spells with mean `online_days`, offline spells with mean `offline_hours`,
  both exponential): its process stops, its store waits for its return, and it comes
  back with the same identity, store and health record, joining again.

The churn comes from its own generator (the seed), not from the nodes': every
configuration of one run sees the same departures and outages at the same times. One
run compares repair thresholds (`thresholds`, at the default grace) and grace periods
(`graces_hours`, at the default threshold); each configuration is a network of its
own, run in a process of its own (`workers` at once).

Measured, for each configuration:

- `lost`: files with a segment of fewer than k chunks held by nodes not gone for good,
  or a manifest with no copy (gone for good: nobody can bring it back); checked every
  `census_hours` and at each departure, by brute force over the stores;
- `unreadable_%`: of the checks, the share in which some file had a segment or its
  manifest on nodes that were all offline (there, not readable until they return);
- `min_live`: the fewest chunks of one segment held by online nodes at any check;
- `read_%`: every file fetched whole by the real get from a random node at the end;
- `repair_MiB`: chunk bytes repairs fetched and stored (every node's counters);
- `oracle_MiB` and `ratio`: what a repairer that knows which chunks are gone for
  good must move: each slot whose last holder leaves for good rebuilt once, and each
  rebuild of n - threshold chunks fetches k (so a slot costs 1 + k / (n - threshold)
  chunks; a manifest copy costs one copy). Repairs of chunks on nodes that came back,
  and rebuilds of fewer chunks at a time, are what the ratio counts above 1.

Simulation settings that differ from a real node's (so that a year runs in minutes;
they leave the stewardship alone): the DHT refreshes idle buckets weekly instead of
hourly (lookups and answers keep tables fresh), provider records live 14 days and are
republished weekly, and idle connections stay open two days instead of two minutes
(a new Noise handshake per periodic query was most of the cost).
"""

from __future__ import annotations

import hashlib
import heapq
import math
import multiprocessing
import random
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Final

import trio

from dht.config import DhtConfig
from node.errors import single_error
from node.files import fetch_manifest, get_file
from node.transport import TransportConfig
from protocol.capability import ReadCapability
from simulations.harness import (
    SIMULATED_NODE,
    SimNetwork,
    SimNode,
    memory_high_water_mib,
    open_network,
    put,
)
from simulations.scenario import ScenarioOptions, ScenarioResult
from simulations.scenarios.files import UNREADABLE
from simulations.scenarios.probes import exponential, parse_list, percent

__all__ = ["run_durability"]

HOUR: Final = 3600.0
DAY: Final = 24 * HOUR
DAYS: Final = 365.0
QUICK_DAYS: Final = 12.0
FILES: Final = 12
QUICK_FILES: Final = 3
FILE_KIB: Final = 32
SEGMENT_KIB: Final = 16
DEPARTURES_SHARE: Final = 0.3
QUICK_DEPARTURES_SHARE: Final = 0.99
ONLINE_DAYS: Final = 30.0
QUICK_ONLINE_DAYS: Final = 3.0
OFFLINE_HOURS: Final = 12.0
THRESHOLDS: Final = "4,5,6,7,8"
QUICK_THRESHOLDS: Final = "5,8"
GRACES_HOURS: Final = "6,72"
QUICK_GRACES_HOURS: Final = ""
# The threshold at which grace periods are compared (the default before this table).
DEFAULT_THRESHOLD: Final = 7
DEFAULT_GRACE_HOURS: Final = 24.0
CENSUS_HOURS: Final = 6.0
# A line on stderr this often (simulated days) in a full run.
PROGRESS_DAYS: Final = 30.0
GET_TIMEOUT: Final = 15 * 60.0

SIMULATED_DHT: Final = DhtConfig(
    bucket_refresh_interval=30 * DAY,
    provider_ttl=60 * DAY,
    republish_interval=30 * DAY,
    expiry_sweep_interval=DAY,
)
SIMULATED_TRANSPORT: Final = TransportConfig(idle_timeout=2 * DAY)


@dataclass(frozen=True, slots=True)
class _Settings:
    """The scenario's parameters, read once from the options (defaults above)."""

    days: float
    files: int
    file_kib: int
    segment_kib: int
    departures_share: float
    online_days: float
    offline_hours: float
    census_hours: float

    @classmethod
    def of(cls, options: ScenarioOptions) -> _Settings:
        quick = options.quick
        return cls(
            days=float(options.get("days", QUICK_DAYS if quick else DAYS)),
            files=int(options.get("files", QUICK_FILES if quick else FILES)),
            file_kib=int(options.get("file_kib", FILE_KIB)),
            segment_kib=int(options.get("segment_kib", SEGMENT_KIB)),
            departures_share=float(
                options.get(
                    "departures_share", QUICK_DEPARTURES_SHARE if quick else DEPARTURES_SHARE
                )
            ),
            online_days=float(
                options.get("online_days", QUICK_ONLINE_DAYS if quick else ONLINE_DAYS)
            ),
            offline_hours=float(options.get("offline_hours", OFFLINE_HOURS)),
            census_hours=float(options.get("census_hours", CENSUS_HOURS)),
        )


@dataclass(frozen=True, slots=True)
class _Config:
    threshold: int
    grace_hours: float


@dataclass(slots=True)
class _File:
    capability: ReadCapability
    digest: bytes
    k: int
    n: int
    manifest_id: bytes
    segments: list[tuple[bytes, ...]]


@dataclass(slots=True)
class _Tally:
    """What the checks saw."""

    checks: int = 0
    unreadable_checks: int = 0
    min_live: int | None = None
    min_held: int | None = None
    lost: set[bytes] = field(default_factory=set)
    oracle_bytes: float = 0.0
    departures: int = 0
    outages: int = 0
    long_outages: int = 0


def _configs(options: ScenarioOptions) -> list[_Config]:
    quick = options.quick
    if "threshold" in options.parameters:  # one configuration (a worker's)
        return [_Config(int(options.get("threshold", 0)), float(options.get("grace_hours", 0)))]
    thresholds = parse_list(
        str(options.get("thresholds", QUICK_THRESHOLDS if quick else THRESHOLDS)), int
    )
    graces_text = str(options.get("graces_hours", QUICK_GRACES_HOURS if quick else GRACES_HOURS))
    graces = parse_list(graces_text, float) if graces_text else []
    default_grace = float(options.get("grace_hours", DEFAULT_GRACE_HOURS))
    default_threshold = int(options.get("default_threshold", DEFAULT_THRESHOLD))
    configs = [_Config(threshold, default_grace) for threshold in thresholds]
    configs += [_Config(default_threshold, grace) for grace in graces if grace != default_grace]
    return configs


class _Churn:
    """Departures for good and outages, drawn from a generator of their own."""

    def __init__(self, network: SimNetwork, rng: random.Random, settings: _Settings) -> None:
        share = settings.departures_share
        self.network = network
        self.rng = rng
        # 1 - exp(-year / mean) = share: `share` of the nodes leave within a year.
        self.mean_lifetime = 365 * DAY / -math.log(1 - share) if share > 0 else math.inf
        self.mean_online = DAY * settings.online_days
        self.mean_offline = HOUR * settings.offline_hours
        self.until = settings.days * DAY
        self._events: list[tuple[float, int, str, int]] = []
        self._sequence = 0

    def _push(self, at: float, kind: str, index: int) -> None:
        if at < self.until:
            heapq.heappush(self._events, (at, self._sequence, kind, index))
            self._sequence += 1

    def begin(self, index: int, now: float) -> None:
        """A node's life: when it leaves for good, and its first outage."""
        self._push(now + exponential(self.rng, self.mean_lifetime * math.log(2)), "leave", index)
        self._push(now + exponential(self.rng, self.mean_online * math.log(2)), "off", index)

    async def run(
        self, started: float, on_departure: Callable[[SimNode], None], tally: _Tally
    ) -> None:
        network = self.network
        while self._events:
            at, _, kind, index = heapq.heappop(self._events)
            await trio.sleep_until(started + at)
            node = network.nodes[index]
            if not node.alive:
                continue
            if kind == "leave":
                on_departure(node)
                network.kill([node])
                tally.departures += 1
                newcomer = await network.add_node()
                self.begin(newcomer.index, at)
            elif kind == "off" and node.online:
                network.take_offline(node)
                tally.outages += 1
                spell = exponential(self.rng, self.mean_offline * math.log(2))
                tally.long_outages += spell > 24 * HOUR
                self._push(at + spell, "on", index)
            elif kind == "on" and not node.online:
                await network.bring_back(node)
                self._push(at + exponential(self.rng, self.mean_online * math.log(2)), "off", index)


def _holdings(network: SimNetwork) -> dict[bytes, list[SimNode]]:
    """Each chunk id, and the nodes not gone for good that hold it."""
    held: dict[bytes, list[SimNode]] = {}
    for node in network.nodes:
        if node.alive:
            for chunk_id in node.store.chunk_ids():
                held.setdefault(chunk_id, []).append(node)
    return held


def _check(network: SimNetwork, files: list[_File], tally: _Tally) -> None:
    """One census: the fewest chunks held and online, files lost, files unreadable."""
    held = _holdings(network)
    tally.checks += 1
    unreadable = False
    for file in files:
        copies = held.get(file.manifest_id, [])
        gone = not copies
        unreadable |= not any(node.online for node in copies)
        for ids in file.segments:
            holding = [held.get(chunk_id, []) for chunk_id in dict.fromkeys(ids)]
            kept = sum(bool(nodes) for nodes in holding)
            live = sum(any(node.online for node in nodes) for nodes in holding)
            tally.min_held = kept if tally.min_held is None else min(tally.min_held, kept)
            tally.min_live = live if tally.min_live is None else min(tally.min_live, live)
            gone |= kept < file.k
            unreadable |= live < file.k
        if gone:
            tally.lost.add(file.manifest_id)
    tally.unreadable_checks += unreadable


def _only(holders: list[SimNode] | None, node: SimNode) -> bool:
    return holders is not None and len(holders) == 1 and holders[0] is node


def _oracle_cost(
    network: SimNetwork, files: list[_File], leaving: SimNode, threshold: int
) -> float:
    """What an oracle must rebuild because `leaving` leaves for good: every slot whose
    last holder it is (module docstring), in chunk bytes."""
    held = _holdings(network)
    mine = set(leaving.store.chunk_ids())
    cost = 0.0
    for file in files:
        if file.manifest_id in mine and _only(held.get(file.manifest_id), leaving):
            cost += leaving.store.info(file.manifest_id).size
        for ids in file.segments:
            for chunk_id in dict.fromkeys(ids):
                if chunk_id in mine and _only(held.get(chunk_id), leaving):
                    size = leaving.store.info(chunk_id).size
                    cost += size * (1 + file.k / (file.n - threshold))
    return cost


async def _put_all(network: SimNetwork, count: int, size: int, rng: random.Random) -> list[_File]:
    files = []
    for number in range(count):
        data = rng.randbytes(size)
        uploaders = network.alive()
        uploader = uploaders[rng.randrange(len(uploaders))]
        assert uploader.node.files is not None
        capability = await put(uploader, data, name=f"file-{number}")
        manifest = await fetch_manifest(uploader.node.files, capability.manifest_id)
        files.append(
            _File(
                capability,
                hashlib.sha256(data).digest(),
                manifest.params.k,
                manifest.params.n,
                capability.manifest_id,
                [manifest.segment_chunk_ids(index) for index in range(manifest.segment_count)],
            )
        )
    return files


async def _read_all(network: SimNetwork, files: list[_File], rng: random.Random) -> int:
    """Get every file from a random online node: how many came back intact."""
    intact = 0

    async def read(file: _File, getter: SimNode) -> None:
        nonlocal intact
        pieces: list[bytes] = []

        async def write(data: memoryview) -> None:
            pieces.append(bytes(data))

        with trio.move_on_after(GET_TIMEOUT):
            try:
                assert getter.node.files is not None
                await get_file(getter.node.files, file.capability, write)
            except Exception as exc:
                if not isinstance(single_error(exc, UNREADABLE), UNREADABLE):
                    raise
                return
            intact += hashlib.sha256(b"".join(pieces)).digest() == file.digest

    online = network.alive()
    async with trio.open_nursery() as nursery:
        for file in files:
            nursery.start_soon(read, file, online[rng.randrange(len(online))])
    return intact


async def _run_one(options: ScenarioOptions, config: _Config) -> dict[str, Any]:
    """One configuration: its row of the table."""
    settings = _Settings.of(options)
    days = settings.days
    census = HOUR * settings.census_hours
    node_config = replace(
        SIMULATED_NODE,
        segment_size=1024 * settings.segment_kib,
        repair_threshold=config.threshold,
        repair_grace=config.grace_hours * HOUR,
        # Leases outlast the run: the uploaders are random nodes that churn takes
        # away, and this scenario measures repair, not owners who leave
        # (`python -m simulations abuse` runs leases out).
        lease_length=(days + 30) * DAY,
        lease_renew_at=(days + 30) * DAY / 3,
        lease_max=(days + 30) * DAY,
        sweep_interval=DAY,  # nothing expires in this run: a sweep a day is plenty
    )
    wall = time.perf_counter()
    async with open_network(
        options.nodes,
        seed=options.seed,
        node_config=node_config,
        dht_config=SIMULATED_DHT,
        transport_config=SIMULATED_TRANSPORT,
    ) as network:
        files = await _put_all(
            network, settings.files, 1024 * settings.file_kib, random.Random(options.seed ^ 0xF11E)
        )
        tally = _Tally()
        churn = _Churn(network, random.Random(options.seed ^ 0xC4A2), settings)
        started = trio.current_time()
        for node in network.nodes:
            churn.begin(node.index, 0.0)

        def departing(node: SimNode) -> None:
            tally.oracle_bytes += _oracle_cost(network, files, node, config.threshold)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(churn.run, started, departing, tally)
            at = started
            reported = 0.0
            while at < started + days * DAY:
                at = min(at + census, started + days * DAY)
                await trio.sleep_until(at)
                _check(network, files, tally)
                day = (at - started) / DAY
                if not options.quick and day - reported >= PROGRESS_DAYS:
                    reported = day
                    print(
                        f"  threshold {config.threshold}, grace {config.grace_hours:g} h: "
                        f"day {day:.0f} of {days:g}, {len(tally.lost)} lost, "
                        f"{time.perf_counter() - wall:.0f} s",
                        file=sys.stderr,
                        flush=True,
                    )
            nursery.cancel_scope.cancel()
        intact = await _read_all(network, files, random.Random(options.seed ^ 0x6E7))
        counters = [node.node.files.repairs for node in network.nodes if node.node.files]
        repaired = sum(counter.bytes_moved for counter in counters)
    mib = 1024 * 1024
    return {
        "threshold": config.threshold,
        "grace_h": config.grace_hours,
        "files": len(files),
        "lost": len(tally.lost),
        "read_%": percent(intact, len(files)),
        "unreadable_%": percent(tally.unreadable_checks, tally.checks),
        "min_live": tally.min_live if tally.min_live is not None else -1,
        "min_held": tally.min_held if tally.min_held is not None else -1,
        "repairs": sum(counter.segments_repaired for counter in counters),
        "rebuilt": sum(counter.chunks_rebuilt for counter in counters),
        "repair_MiB": repaired / mib,
        "oracle_MiB": tally.oracle_bytes / mib,
        "ratio": repaired / tally.oracle_bytes if tally.oracle_bytes else math.nan,
        "departures": tally.departures,
        "outages": tally.outages,
        "outages_over_24h": tally.long_outages,
        "wall_s": time.perf_counter() - wall,
    }


def _one_in_a_process(nodes: int, seed: int, parameters: dict[str, Any], quick: bool) -> Any:
    from simulations.__main__ import run_scenario

    result = run_scenario("durability", ScenarioOptions(nodes, seed, parameters, quick))
    return result.summary[0], result.peak_memory_mib


async def run_durability(options: ScenarioOptions) -> ScenarioResult:
    wall = time.perf_counter()
    configs = _configs(options)
    if len(configs) == 1:
        rows = [await _run_one(options, configs[0])]
        peak = memory_high_water_mib()
    else:
        workers = max(1, min(len(configs), int(options.get("workers", 2))))
        context = multiprocessing.get_context("spawn")

        def run_all() -> list[Any]:
            with ProcessPoolExecutor(workers, mp_context=context) as pool:
                jobs = [
                    pool.submit(
                        _one_in_a_process,
                        options.nodes,
                        options.seed,
                        {
                            **options.parameters,
                            "threshold": config.threshold,
                            "grace_hours": config.grace_hours,
                        },
                        options.quick,
                    )
                    for config in configs
                ]
                return [job.result() for job in jobs]

        outcomes = await trio.to_thread.run_sync(run_all)
        rows = [row for row, _ in outcomes]
        peak = max(memory for _, memory in outcomes)
    metrics = {
        "parameters": asdict(_Settings.of(options)),
        "configurations": rows,
    }
    return ScenarioResult(
        "durability",
        options.seed,
        options.nodes,
        rows,
        metrics,
        [],
        time.perf_counter() - wall,
        peak,
    )
