"""Churn: each node lives for an exponentially distributed time, then crashes, and a
fresh node joins in its place, so that the network keeps its size.

`Sessions.run(until)` is the one task that kills nodes. It draws from the network's
rng only, so a run replays from its seed. Nodes chosen to act (ask a lookup, provide a
key, fetch a file) come from `askers()`: they have joined and stay alive for at least
the margin, so that no probe loses its asker half-way.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Awaitable, Callable

import trio

from simulations.harness import SimNetwork, SimNode
from simulations.scenarios.probes import exponential

__all__ = ["Sessions"]


class Sessions:
    """When each node leaves, and the task that kills and replaces nodes."""

    def __init__(self, network: SimNetwork, median: float, *, margin: float) -> None:
        """`median`: of session lengths, in seconds; `margin`: how long an asker must
        still live."""
        self.network = network
        self.median = median
        self.margin = margin
        self.ends_at: dict[int, float] = {}
        self._queue: list[tuple[float, int]] = []
        self.deaths = 0
        self.joins = 0

    def begin(self, node: SimNode) -> None:
        """Start `node`'s session now."""
        ends_at = trio.current_time() + exponential(self.network.rng, self.median)
        self.ends_at[node.index] = ends_at
        heapq.heappush(self._queue, (ends_at, node.index))

    def askers(self) -> list[SimNode]:
        """Live nodes that have joined and whose session lasts `margin` more."""
        until = trio.current_time() + self.margin
        return [
            node for node in self.network.alive() if self.ends_at.get(node.index, -math.inf) > until
        ]

    async def run(
        self, until: float, *, after_death: Callable[[SimNode], Awaitable[None]] | None = None
    ) -> None:
        """Kill each node as its session ends and let a fresh node join in its place,
        for sessions ending up to `until`; then `after_death(victim)`, if given."""
        network = self.network
        while self._queue and self._queue[0][0] <= until:
            ends_at, index = heapq.heappop(self._queue)
            await trio.sleep_until(ends_at)
            victim = network.nodes[index]
            network.kill([victim])
            self.deaths += 1
            self.begin(await network.add_node())
            self.joins += 1
            if after_death is not None:
                await after_death(victim)
