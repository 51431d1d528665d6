"""`eclipse`: Sybil nodes answer lookups with each other only; do honest lookups still
find the honest nodes they should?

For each `fraction` ("0.1,0.2,0.3"), N nodes join one by one, each through a random
node already in (`introducers=any`, the default); with `introducers=m` (a number),
through m distinct random nodes already in at once, as a node given m bootstrap
addresses does (any of them may be a Sybil); with `introducers=honest`, an honest node
through a random honest one. A random `fraction` of the nodes are Sybils. The Sybils
collude: they know each other, and from the moment each has joined it answers
FIND_NODE and GET_PROVIDERS with the k Sybils closest to the target (never a provider,
never an honest node), and accepts ADD_PROVIDER but keeps no record. Their own lookups
and every other service work as usual. The Sybils' answers are installed from here
(`Transport.add_handler` replaces the DHT's handlers): the node code has no notion of
misbehaving.

Then, from random honest nodes at once: `lookups` lookups of random ids, and a provider
lookup for each of `keys` keys provided by random honest nodes. A lookup is
`honest_found` when its result holds every honest node among the true k closest live
nodes (the asker left out); `recall` is the share of those it holds, and
`sybil_share` the share of Sybils in its result; it is `eclipsed` when it found none
of them. `table_sybils` is the mean share of Sybils in honest routing tables, and
`rpcs_per_lookup` the mean number of queries of the lookups honest nodes made while the
probes ran. The Sybils of each fraction are the first of one random order of the nodes,
so a larger fraction adds Sybils to those of a smaller one.

Each fraction is run once per number of disjoint lookup paths in `paths` (by default
`DhtConfig().disjoint_paths`; `--set paths=1,4` adds plain Kademlia as a baseline), on
the same nodes and Sybils.
"""

from __future__ import annotations

import math
import random
import time
from typing import Any, Final

import trio

from dht.config import DhtConfig
from dht.contact import Contact
from node.transport import Peer
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
from simulations.harness import SimNetwork, SimNode, memory_high_water_mib, open_network
from simulations.scenario import Plot, ScenarioOptions, ScenarioResult
from simulations.scenarios.probes import (
    K,
    choose,
    mean,
    parse_list,
    percent,
    percentile,
    run_probes,
)

__all__ = ["run_eclipse"]

FRACTION: Final = "0.1,0.2,0.3"
QUICK_FRACTION: Final = "0,0.3"
LOOKUPS: Final = 100
QUICK_LOOKUPS: Final = 20
KEYS: Final = 30
# Whom an honest node joins through: "any" node already in (a Sybil as likely as not,
# by their share), a number m of them at once (several bootstrap addresses, each
# possibly a Sybil), or only "honest" ones (bootstrap addresses the node can trust).
INTRODUCERS: Final = ("any", "honest", "a number")
QUICK_KEYS: Final = 10
# The ttl a Sybil claims for a record it drops (what an honest node would keep).
CLAIMED_TTL: Final = int(DhtConfig().provider_ttl)


class _Sybils:
    """The colluding Sybils, and the answers they give."""

    def __init__(self) -> None:
        self.contacts: list[Contact] = []
        self.ids: set[NodeId] = set()

    def closest(self, target: NodeId, *, exclude: set[NodeId]) -> tuple[WireContact, ...]:
        """The k Sybils closest to `target`, as wire contacts."""
        ranked = sorted(
            (contact for contact in self.contacts if contact.node_id not in exclude),
            key=lambda contact: target.distance(contact.node_id),
        )
        return tuple(contact.to_wire() for contact in ranked[:K])

    def corrupt(self, sybil: SimNode) -> None:
        """Make `sybil` one of them: it answers lookups with Sybils only."""
        transport = sybil.node.transport
        assert transport is not None
        self.contacts.append(sybil.contact)
        self.ids.add(sybil.node_id)
        own = sybil.node_id

        def handle_find_node(peer: Peer, message: Message) -> Message:
            assert isinstance(message, FindNode)
            return Nodes(self.closest(NodeId(message.target), exclude={own, peer.node_id}))

        def handle_get_providers(peer: Peer, message: Message) -> Message:
            assert isinstance(message, GetProviders)
            return Providers((), self.closest(NodeId(message.key), exclude={own, peer.node_id}))

        def handle_add_provider(peer: Peer, message: Message) -> Message:
            assert isinstance(message, AddProvider)
            return ProviderAdded(ttl=CLAIMED_TTL)

        transport.add_handler(FindNode, handle_find_node)
        transport.add_handler(GetProviders, handle_get_providers)
        transport.add_handler(AddProvider, handle_add_provider)


async def _build(
    network: SimNetwork,
    nodes: int,
    sybil_indices: set[int],
    sybils: _Sybils,
    *,
    honest_introducers: bool,
    introducer_count: int,
) -> None:
    """After the first node, the others join one by one, each through
    `introducer_count` random nodes already in (with `honest_introducers`, an honest
    node joins through an honest one once there is one); each Sybil turns as soon as
    it has joined."""
    if 0 in sybil_indices:
        sybils.corrupt(network.nodes[0])
    for index in range(1, nodes):
        joined = await network.add_node(join=False)
        honest = [node for node in network.alive() if node.node_id not in sybils.ids]
        honest = [node for node in honest if node is not joined]
        introducers = honest if honest_introducers and honest else None
        await network.join(joined, introducers, count=introducer_count)
        if index in sybil_indices:
            sybils.corrupt(joined)


async def _one_fraction(
    options: ScenarioOptions,
    fraction: float,
    position: int,
    *,
    paths: int,
    introducers: str,
    lookups: int,
    keys: int,
) -> dict[str, Any]:
    wall = time.perf_counter()
    # One order of the nodes for every fraction: the Sybils of a smaller fraction are
    # among those of a larger one, so that the fractions compare like with like.
    order = random.Random(options.seed).sample(range(options.nodes), options.nodes)
    sybil_indices = set(order[: round(fraction * options.nodes)])
    rng = random.Random(options.seed * 7919 + position)
    sybils = _Sybils()
    dht_config = DhtConfig(disjoint_paths=paths)
    async with open_network(1, seed=options.seed, dht_config=dht_config) as network:
        await _build(
            network,
            options.nodes,
            sybil_indices,
            sybils,
            honest_introducers=introducers == "honest",
            introducer_count=_introducer_count(introducers),
        )
        join_wall = time.perf_counter() - wall
        honest = [node for node in network.alive() if node.node_id not in sybils.ids]
        table_shares = [
            sum(contact.node_id in sybils.ids for contact in dht.routing.contacts())
            / max(1, len(dht.routing))
            for dht in (node.node.dht for node in honest)
            if dht is not None
        ]
        providers = rng.sample(honest, min(keys, len(honest)))
        provided = [(NodeId(rng.randbytes(32)), provider) for provider in providers]
        async with trio.open_nursery() as nursery:
            for key, provider in provided:
                assert provider.node.dht is not None
                nursery.start_soon(provider.node.dht.provide, key)
        queries = [(asker, NodeId(rng.randbytes(32))) for asker in choose(rng, honest, lookups)]
        provider_queries = [
            (asker, key, provider.node_id)
            for asker, (key, provider) in zip(
                choose(rng, honest, len(provided)), provided, strict=True
            )
        ]
        before = [_lookup_counters(node) for node in honest]
        outcomes, found = await run_probes(queries, provider_queries)
        after = [_lookup_counters(node) for node in honest]
        lookups_made = sum(done[0] - was[0] for was, done in zip(before, after, strict=True))
        queries_sent = sum(done[1] - was[1] for was, done in zip(before, after, strict=True))
        all_found = 0
        recalls: list[float] = []
        sybil_shares: list[float] = []
        for (asker, target), outcome in zip(queries, outcomes, strict=True):
            truth = network.true_closest(target, K, exclude=asker.node_id)
            wanted = {node_id for node_id in truth if node_id not in sybils.ids}
            result = outcome.found or []
            got = wanted.intersection(result)
            all_found += got == wanted
            recalls.append(len(got) / len(wanted) if wanted else 1.0)
            sybil_shares.append(
                sum(node_id in sybils.ids for node_id in result) / len(result) if result else 0.0
            )
    latencies = [outcome.latency for outcome in outcomes]
    return {
        "paths": paths,
        "fraction": fraction,
        "sybils": len(sybil_indices),
        "lookups": len(queries),
        "honest_found_%": percent(all_found, len(queries)),
        "recall_%": 100 * mean(recalls),
        "eclipsed_%": percent(sum(recall == 0 for recall in recalls), len(recalls)),
        "table_sybils_%": 100 * mean(table_shares),
        "sybil_share_%": 100 * mean(sybil_shares),
        "provider_%": percent(sum(found), len(found)),
        "p50_ms": 1000 * percentile(latencies, 50),
        "rpcs_per_lookup": queries_sent / lookups_made if lookups_made else math.nan,
        "recalls": recalls,
        "latencies_s": latencies,
        "provider_found": found,
        "join_wall_s": join_wall,
        "wall_s": time.perf_counter() - wall,
    }


def _introducer_count(introducers: str) -> int:
    """How many nodes a node joins through: a number, or 1 for "any" and "honest"."""
    if introducers in ("any", "honest"):
        return 1
    try:
        count = int(introducers)
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(f"introducers must be one of {', '.join(INTRODUCERS)} (at least 1)")
    return count


def _lookup_counters(node: SimNode) -> tuple[int, int]:
    """(lookups made, queries they sent) by `node` so far."""
    dht = node.node.dht
    assert dht is not None
    statistics = dht.statistics()
    return statistics.lookups, statistics.lookup_queries


async def run_eclipse(options: ScenarioOptions) -> ScenarioResult:
    quick = options.quick
    fractions = parse_list(options.get("fraction", QUICK_FRACTION if quick else FRACTION), float)
    path_counts = parse_list(options.get("paths", DhtConfig().disjoint_paths), int)
    introducers = str(options.get("introducers", "any"))
    _introducer_count(introducers)  # fails early on a bad value
    lookups = int(options.get("lookups", QUICK_LOOKUPS if quick else LOOKUPS))
    keys = int(options.get("keys", QUICK_KEYS if quick else KEYS))
    started = time.perf_counter()
    runs = [
        await _one_fraction(
            options,
            fraction,
            position,
            paths=paths,
            introducers=introducers,
            lookups=lookups,
            keys=keys,
        )
        for paths in path_counts
        for position, fraction in enumerate(fractions)
    ]
    columns = (
        "paths",
        "fraction",
        "sybils",
        "lookups",
        "honest_found_%",
        "recall_%",
        "eclipsed_%",
        "sybil_share_%",
        "table_sybils_%",
        "provider_%",
        "rpcs_per_lookup",
        "p50_ms",
    )
    rows = [{column: run[column] for column in columns} for run in runs]
    shown = [run for run in runs if run["paths"] == path_counts[-1]]
    xs = [run["fraction"] for run in shown]
    plots = [
        Plot(
            "success",
            "Honest lookups among colluding Sybils",
            "fraction of Sybil nodes",
            "%",
            {
                "all honest k closest found": (xs, [run["honest_found_%"] for run in shown]),
                "honest k closest found (recall)": (xs, [run["recall_%"] for run in shown]),
                "provider found": (xs, [run["provider_%"] for run in shown]),
                "Sybils in results": (xs, [run["sybil_share_%"] for run in shown]),
            },
        )
    ]
    metrics = {
        "parameters": {
            "fractions": fractions,
            "paths": path_counts,
            "introducers": introducers,
            "lookups": lookups,
            "keys": keys,
        },
        "k": K,
        "runs": runs,
    }
    return ScenarioResult(
        "eclipse",
        options.seed,
        options.nodes,
        rows,
        metrics,
        plots,
        time.perf_counter() - started,
        memory_high_water_mib(),
    )
