"""What the scenarios measure alike: batches of lookups and provider lookups run at once
from chosen nodes, exponential lifetimes, and parameters given as lists.

A probe never raises for the network's failures: a lookup that fails or takes longer
than `PROBE_TIMEOUT` (virtual seconds) is reported as found nothing. Results come back
in the order of the queries, whatever order the lookups finish in, so that a run
replays from its seed.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import trio

from dht.errors import DhtError
from protocol.identity import NodeId
from simulations.harness import SimNode

__all__ = [
    "PROBE_TIMEOUT",
    "K",
    "LookupOutcome",
    "choose",
    "exponential",
    "mean",
    "parse_list",
    "percent",
    "percentile",
    "run_lookups",
    "run_probes",
    "run_provider_lookups",
]

# The DHT's k (DhtConfig().k): a lookup's answer is the k closest nodes.
K: Final = 20
# A probing lookup still running after this long (virtual seconds) counts as failed; a
# healthy lookup takes well under a second, one through dead contacts some tens.
PROBE_TIMEOUT: Final = 120.0

Item = TypeVar("Item")


@dataclass(frozen=True, slots=True)
class LookupOutcome:
    """One FIND_NODE probe: the ids it returned, closest first (None if it failed or
    timed out), and how long it took in virtual seconds."""

    found: list[NodeId] | None
    latency: float


async def run_lookups(queries: Sequence[tuple[SimNode, NodeId]]) -> list[LookupOutcome]:
    """Look up each (asker, target) at once; the outcomes in query order."""
    outcomes: list[LookupOutcome | None] = [None] * len(queries)

    async def one(position: int, asker: SimNode, target: NodeId) -> None:
        dht = asker.node.dht
        assert dht is not None
        began = trio.current_time()
        found: list[NodeId] | None = None
        with trio.move_on_after(PROBE_TIMEOUT):
            with contextlib.suppress(DhtError):
                found = [contact.node_id for contact in await dht.find_node(target)]
        outcomes[position] = LookupOutcome(found, trio.current_time() - began)

    async with trio.open_nursery() as nursery:
        for position, (asker, target) in enumerate(queries):
            nursery.start_soon(one, position, asker, target)
    return [outcome for outcome in outcomes if outcome is not None]


async def run_provider_lookups(queries: Sequence[tuple[SimNode, NodeId, NodeId]]) -> list[bool]:
    """For each (asker, key, provider), at once: did FIND_PROVIDERS name the provider?"""
    found = [False] * len(queries)

    async def one(position: int, asker: SimNode, key: NodeId, provider: NodeId) -> None:
        dht = asker.node.dht
        assert dht is not None
        with trio.move_on_after(PROBE_TIMEOUT):
            try:
                providers = await dht.find_providers(key)
            except DhtError:
                return
            found[position] = any(contact.node_id == provider for contact in providers)

    async with trio.open_nursery() as nursery:
        for position, (asker, key, provider) in enumerate(queries):
            nursery.start_soon(one, position, asker, key, provider)
    return found


async def run_probes(
    lookups: Sequence[tuple[SimNode, NodeId]],
    provider_lookups: Sequence[tuple[SimNode, NodeId, NodeId]],
) -> tuple[list[LookupOutcome], list[bool]]:
    """`run_lookups` and `run_provider_lookups`, all at once."""
    outcomes: list[LookupOutcome] = []
    found: list[bool] = []

    async def lookups_batch() -> None:
        outcomes.extend(await run_lookups(lookups))

    async def providers_batch() -> None:
        found.extend(await run_provider_lookups(provider_lookups))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(lookups_batch)
        nursery.start_soon(providers_batch)
    return outcomes, found


def exponential(rng: random.Random, median: float) -> float:
    """A draw from the exponential distribution with this median (memoryless
    lifetimes: the median is ln 2 times the mean)."""
    return rng.expovariate(math.log(2) / median)


def choose(rng: random.Random, candidates: Sequence[Item], count: int) -> list[Item]:
    """`count` draws from `candidates`, with replacement."""
    return [candidates[rng.randrange(len(candidates))] for _ in range(count)]


def parse_list(value: Any, convert: Callable[[str], Item]) -> list[Item]:
    """A parameter that may list several values: `0.25` or `"0.1,0.25,0.5"`."""
    return [convert(part.strip()) for part in str(value).split(",") if part.strip()]


def percent(part: float, whole: float) -> float:
    return 100.0 * part / whole if whole else math.nan


def mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values) if values else math.nan


def percentile(values: Sequence[float], at: float) -> float:
    """The nearest-rank percentile (NaN for no values)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(at / 100 * len(ordered)) - 1))]
