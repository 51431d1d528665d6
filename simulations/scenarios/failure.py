"""`failure`: a fraction of the nodes fails at once; how badly do lookups suffer, and
how long until they work again?

For each `fraction` (one value, or several as "0.1,0.25,0.5"), the same network of N
nodes is built from the seed; `keys` nodes that will survive each provide a random key;
one measurement is taken; then `fraction` of the nodes crash at once (silently, for
good). Every `interval_seconds` for `minutes` after that, from random survivors at once:
`lookups` lookups of random ids (exact when they return the true k closest live nodes,
the asker left out; and their virtual latency), a provider lookup per key (found when
it names the provider), and the share of live contacts in the survivors' tables.

Recovery: the first measurement (seconds after the failure) at which at least
`RECOVERED_PERCENT` of lookups are exact again; `>T` when that did not happen within
the run of T seconds.
"""

from __future__ import annotations

import random
import time
from typing import Any, Final

import trio

from protocol.identity import NodeId
from simulations.harness import SimNetwork, SimNode, memory_high_water_mib, open_network
from simulations.scenario import Plot, ScenarioOptions, ScenarioResult
from simulations.scenarios.probes import (
    K,
    choose,
    parse_list,
    percent,
    percentile,
    run_probes,
)

__all__ = ["run_failure"]

FRACTION: Final = "0.25"
MINUTES: Final = 30.0
QUICK_MINUTES: Final = 5.0
INTERVAL_SECONDS: Final = 30.0
LOOKUPS: Final = 20
QUICK_LOOKUPS: Final = 10
KEYS: Final = 20
QUICK_KEYS: Final = 10
RECOVERED_PERCENT: Final = 99.0


async def _measure(
    network: SimNetwork,
    askers: list[SimNode],
    keys: list[tuple[NodeId, SimNode]],
    rng: random.Random,
    lookups: int,
    failed_at: float,
) -> dict[str, Any]:
    now = trio.current_time()
    queries = [(asker, NodeId(rng.randbytes(32))) for asker in choose(rng, askers, lookups)]
    provider_queries = [
        (asker, key, provider.node_id)
        for asker, (key, provider) in zip(choose(rng, askers, len(keys)), keys, strict=True)
    ]
    outcomes, found = await run_probes(queries, provider_queries)
    exact = sum(
        outcome.found == network.true_closest(target, K, exclude=asker.node_id)
        for (asker, target), outcome in zip(queries, outcomes, strict=True)
    )
    latencies = [outcome.latency for outcome in outcomes]
    dead = {node.node_id for node in network.nodes if not node.alive}
    return {
        "t_seconds": now - failed_at,
        "lookups": len(queries),
        "exact_%": percent(exact, len(queries)),
        "p50_latency_s": percentile(latencies, 50),
        "p99_latency_s": percentile(latencies, 99),
        "provider_%": percent(sum(found), len(found)),
        "live_contact_share": network.live_contact_share(),
        # Results hold only contacts that answered: never a dead node.
        "dead_in_results": sum(
            node_id in dead for outcome in outcomes for node_id in outcome.found or []
        ),
    }


async def _one_fraction(
    options: ScenarioOptions,
    fraction: float,
    position: int,
    *,
    minutes: float,
    interval: float,
    lookups: int,
    keys: int,
) -> dict[str, Any]:
    wall = time.perf_counter()
    rng = random.Random(options.seed * 7919 + position)
    async with open_network(options.nodes, seed=options.seed) as network:
        join_wall = time.perf_counter() - wall
        nodes = network.alive()
        victims = network.rng.sample(nodes, round(fraction * len(nodes)))
        doomed = {victim.index for victim in victims}
        survivors = [node for node in nodes if node.index not in doomed]
        if not survivors:
            raise ValueError(f"fraction {fraction} leaves no node alive")
        providers = rng.sample(survivors, min(keys, len(survivors)))
        provided = [(NodeId(rng.randbytes(32)), provider) for provider in providers]
        async with trio.open_nursery() as nursery:
            for key, provider in provided:
                assert provider.node.dht is not None
                nursery.start_soon(provider.node.dht.provide, key)
        before = await _measure(
            network, survivors, provided, rng, lookups, failed_at=trio.current_time()
        )
        failed_at = trio.current_time()
        network.kill(victims)
        after = []
        at = failed_at
        while at <= failed_at + minutes * 60 + 1e-9:
            await trio.sleep_until(at)
            after.append(await _measure(network, survivors, provided, rng, lookups, failed_at))
            at += interval
    recovered = next(
        (tick["t_seconds"] for tick in after if tick["exact_%"] >= RECOVERED_PERCENT), None
    )
    return {
        "fraction": fraction,
        "killed": len(victims),
        "before": before,
        "after": after,
        "recovered_s": recovered,
        "join_wall_s": join_wall,
        "wall_s": time.perf_counter() - wall,
    }


def _row(run: dict[str, Any], minutes: float) -> dict[str, Any]:
    before, after = run["before"], run["after"]
    first, last = after[0], after[-1]
    recovered = run["recovered_s"]
    return {
        "fraction": run["fraction"],
        "killed": run["killed"],
        "exact_before_%": before["exact_%"],
        "exact_first_%": first["exact_%"],
        "exact_min_%": min(tick["exact_%"] for tick in after),
        "exact_end_%": last["exact_%"],
        "recovered_s": f">{minutes * 60:.0f}" if recovered is None else f"{recovered:.0f}",
        "provider_before_%": before["provider_%"],
        "provider_first_%": first["provider_%"],
        "provider_end_%": last["provider_%"],
        "p50_first_ms": 1000 * first["p50_latency_s"],
        "p50_end_ms": 1000 * last["p50_latency_s"],
        "live_contacts_end_%": 100 * last["live_contact_share"],
    }


async def run_failure(options: ScenarioOptions) -> ScenarioResult:
    quick = options.quick
    fractions = parse_list(options.get("fraction", FRACTION), float)
    minutes = float(options.get("minutes", QUICK_MINUTES if quick else MINUTES))
    interval = float(options.get("interval_seconds", INTERVAL_SECONDS))
    lookups = int(options.get("lookups", QUICK_LOOKUPS if quick else LOOKUPS))
    keys = int(options.get("keys", QUICK_KEYS if quick else KEYS))
    started = time.perf_counter()
    runs = [
        await _one_fraction(
            options,
            fraction,
            position,
            minutes=minutes,
            interval=interval,
            lookups=lookups,
            keys=keys,
        )
        for position, fraction in enumerate(fractions)
    ]

    def curve(key: str, scale: float = 1.0) -> dict[str, tuple[list[float], list[float]]]:
        return {
            f"{run['fraction']:g} failed": (
                [tick["t_seconds"] / 60 for tick in run["after"]],
                [scale * tick[key] for tick in run["after"]],
            )
            for run in runs
        }

    plots = [
        Plot(
            "lookups",
            "Exact lookups after a failure",
            "minutes after the failure",
            "% returning the true k closest",
            curve("exact_%"),
        ),
        Plot(
            "providers",
            "Provider lookups after a failure",
            "minutes after the failure",
            "% naming the provider",
            curve("provider_%"),
        ),
        Plot(
            "latency",
            "Lookup latency after a failure (p50, virtual time)",
            "minutes after the failure",
            "milliseconds",
            curve("p50_latency_s", 1000.0),
        ),
        Plot(
            "routing",
            "Live contacts in routing tables after a failure",
            "minutes after the failure",
            "% of contacts alive",
            curve("live_contact_share", 100.0),
        ),
    ]
    metrics = {
        "parameters": {
            "fractions": fractions,
            "minutes": minutes,
            "interval_seconds": interval,
            "lookups": lookups,
            "keys": keys,
            "recovered_percent": RECOVERED_PERCENT,
        },
        "k": K,
        "runs": runs,
    }
    return ScenarioResult(
        "failure",
        options.seed,
        options.nodes,
        [_row(run, minutes) for run in runs],
        metrics,
        plots,
        time.perf_counter() - started,
        memory_high_water_mib(),
    )
