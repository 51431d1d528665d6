"""`churn`: nodes come and go all the time; do lookups still work?

Each node's session lasts an exponentially distributed time with median
`median_session_hours`. When it ends, the node crashes (silently, as a machine losing
power) and a fresh node joins through a random live one, so the network keeps its
size. `keys` live nodes each provide a random key at the start; when a provider dies, a
random live node provides a new key in its place (a dead provider's key is not
measured: its records are expected to vanish).

Every `measure_minutes` for `hours`, from random live nodes at once:

- `lookups` lookups of random ids: exact when they return the true k closest live
  nodes (brute force, the asker left out), and their virtual latency;
- one provider lookup per key whose provider is alive: found when it names the
  provider; each probe's key age is kept, since records are republished only every
  22 h while their holders churn away;
- routing-table health: the share of live contacts in live nodes' tables, and the
  tables' mean size.

The summary has one row per virtual hour (the measurements within it); the metrics
have every measurement and probe.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

import trio

from dht.errors import DhtError
from protocol.identity import NodeId
from simulations.harness import SimNetwork, SimNode, memory_high_water_mib, open_network
from simulations.scenario import Plot, ScenarioOptions, ScenarioResult
from simulations.scenarios.probes import (
    K,
    choose,
    mean,
    percent,
    percentile,
    run_probes,
)
from simulations.scenarios.sessions import Sessions

__all__ = ["run_churn"]

MEDIAN_SESSION_HOURS: Final = 1.0
HOURS: Final = 6.0
QUICK_HOURS: Final = 1.0
MEASURE_MINUTES: Final = 10.0
QUICK_MEASURE_MINUTES: Final = 20.0
LOOKUPS: Final = 20
QUICK_LOOKUPS: Final = 8
KEYS: Final = 30
QUICK_KEYS: Final = 10
# Nodes that probe (ask a lookup, provide a key) have at least this long left in their
# session, so that no probe loses its asker half-way.
ASKER_MARGIN: Final = 10 * 60.0
HOUR: Final = 3600.0


@dataclass(slots=True)
class _ProvidedKey:
    key: NodeId
    provider: SimNode
    provided_at: float


class _Keys:
    """The provided keys; a dead provider's keys are replaced by new ones."""

    def __init__(self, network: SimNetwork, sessions: Sessions) -> None:
        self.network = network
        self.sessions = sessions
        self.keys: list[_ProvidedKey] = []

    async def provide(self, provider: SimNode) -> None:
        key = NodeId(self.network.rng.randbytes(32))
        dht = provider.node.dht
        assert dht is not None
        self.keys.append(_ProvidedKey(key, provider, trio.current_time()))
        # A key nobody took is measured like any other: its lookups will fail.
        with contextlib.suppress(DhtError):
            await dht.provide(key)

    async def replace(self, victim: SimNode) -> None:
        """The victim's keys are not measured any more; new ones take their place."""
        for _ in range(sum(provided.provider is victim for provided in self.keys)):
            candidates = self.sessions.askers()
            await self.provide(candidates[self.network.rng.randrange(len(candidates))])


async def _measure(
    network: SimNetwork,
    sessions: Sessions,
    keys: _Keys,
    rng: random.Random,
    lookups: int,
    started: float,
) -> dict[str, Any]:
    now = trio.current_time()
    askers = sessions.askers()
    queries = [(asker, NodeId(rng.randbytes(32))) for asker in choose(rng, askers, lookups)]
    live_keys = [provided for provided in keys.keys if provided.provider.alive]
    provider_queries = [
        (asker, provided.key, provided.provider.node_id)
        for asker, provided in zip(choose(rng, askers, len(live_keys)), live_keys, strict=True)
    ]
    outcomes, found = await run_probes(queries, provider_queries)
    exact = sum(
        outcome.found == network.true_closest(target, K, exclude=asker.node_id)
        for (asker, target), outcome in zip(queries, outcomes, strict=True)
    )
    alive = network.alive()
    tables = [len(node.node.dht.routing) for node in alive if node.node.dht is not None]
    latencies = [outcome.latency for outcome in outcomes]
    return {
        "t_hours": (now - started) / HOUR,
        "live_nodes": len(alive),
        "deaths": sessions.deaths,
        "joins": sessions.joins,
        "lookups": len(queries),
        "exact": exact,
        "p50_latency_s": percentile(latencies, 50),
        "p99_latency_s": percentile(latencies, 99),
        "provider_probes": len(provider_queries),
        "providers_found": sum(found),
        "key_ages_hours": [(now - provided.provided_at) / HOUR for provided in live_keys],
        "key_found": found,
        "live_contact_share": network.live_contact_share(),
        "mean_table_size": mean(tables),
    }


def _hour_rows(ticks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One summary row for the first measurement, then one per hour after it."""
    groups: dict[int, list[dict[str, Any]]] = {}
    for tick in ticks:
        groups.setdefault(math.ceil(round(tick["t_hours"], 6)), []).append(tick)
    rows = []
    for hour, group in sorted(groups.items()):
        lookups = sum(tick["lookups"] for tick in group)
        probes = sum(tick["provider_probes"] for tick in group)
        ages = [age for tick in group for age in tick["key_ages_hours"]]
        last = group[-1]
        rows.append(
            {
                "hour": hour,
                "live": last["live_nodes"],
                "joins": last["joins"],
                "exact_%": percent(sum(tick["exact"] for tick in group), lookups),
                "p50_ms": 1000 * mean([tick["p50_latency_s"] for tick in group]),
                "provider_%": percent(sum(tick["providers_found"] for tick in group), probes),
                "key_age_h": mean(ages),
                "live_contacts_%": 100 * mean([tick["live_contact_share"] for tick in group]),
                "table": mean([tick["mean_table_size"] for tick in group]),
            }
        )
    return rows


def _success_by_age(ticks: list[dict[str, Any]]) -> dict[int, tuple[int, int]]:
    """Provider probes by key age in whole hours: (found, probes)."""
    by_age: dict[int, tuple[int, int]] = {}
    for tick in ticks:
        for age, found in zip(tick["key_ages_hours"], tick["key_found"], strict=True):
            hits, total = by_age.get(int(age), (0, 0))
            by_age[int(age)] = (hits + found, total + 1)
    return dict(sorted(by_age.items()))


async def run_churn(options: ScenarioOptions) -> ScenarioResult:
    quick = options.quick
    median_hours = float(options.get("median_session_hours", MEDIAN_SESSION_HOURS))
    hours = float(options.get("hours", QUICK_HOURS if quick else HOURS))
    interval = 60 * float(
        options.get("measure_minutes", QUICK_MEASURE_MINUTES if quick else MEASURE_MINUTES)
    )
    lookups = int(options.get("lookups", QUICK_LOOKUPS if quick else LOOKUPS))
    keys = int(options.get("keys", QUICK_KEYS if quick else KEYS))
    wall = time.perf_counter()
    rng = random.Random(options.seed ^ 0xC4A5)
    async with open_network(options.nodes, seed=options.seed) as network:
        join_wall = time.perf_counter() - wall
        sessions = Sessions(network, median_hours * HOUR, margin=ASKER_MARGIN)
        provided = _Keys(network, sessions)
        providers = network.rng.sample(network.alive(), min(keys, options.nodes))
        async with trio.open_nursery() as nursery:
            for provider in providers:
                nursery.start_soon(provided.provide, provider)
        started = trio.current_time()
        for node in network.alive():
            sessions.begin(node)
        end = started + hours * HOUR
        ticks: list[dict[str, Any]] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(sessions.run, end, after_death=provided.replace))
            at = started
            while at <= end + 1e-9:
                await trio.sleep_until(at)
                ticks.append(await _measure(network, sessions, provided, rng, lookups, started))
                at += interval
    rows = _hour_rows(ticks)
    by_age = _success_by_age(ticks)
    times = [tick["t_hours"] for tick in ticks]
    plots = [
        Plot(
            "success",
            f"Lookups under churn (median session {median_hours:g} h)",
            "virtual hours",
            "% of lookups",
            {
                "exact k closest": (
                    times,
                    [percent(tick["exact"], tick["lookups"]) for tick in ticks],
                ),
                "provider found": (
                    times,
                    [percent(tick["providers_found"], tick["provider_probes"]) for tick in ticks],
                ),
            },
        ),
        Plot(
            "routing",
            "Routing tables under churn",
            "virtual hours",
            "% of contacts alive",
            {"live contacts": (times, [100 * tick["live_contact_share"] for tick in ticks])},
        ),
        Plot(
            "key-age",
            "Provider lookups by key age (records republished every 22 h)",
            "key age, whole hours",
            "% found",
            {
                "provider found": (
                    [float(age) for age in by_age],
                    [percent(hits, total) for hits, total in by_age.values()],
                )
            },
        ),
    ]
    metrics = {
        "parameters": {
            "median_session_hours": median_hours,
            "hours": hours,
            "measure_minutes": interval / 60,
            "lookups": lookups,
            "keys": keys,
        },
        "k": K,
        "deaths": sessions.deaths,
        "joins": sessions.joins,
        "join_wall_s": join_wall,
        "measurements": ticks,
        "provider_success_by_age_hours": {
            str(age): {"found": hits, "probes": total} for age, (hits, total) in by_age.items()
        },
    }
    return ScenarioResult(
        "churn",
        options.seed,
        options.nodes,
        rows,
        metrics,
        plots,
        time.perf_counter() - wall,
        memory_high_water_mib(),
    )
