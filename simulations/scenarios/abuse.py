"""`abuse`: one attacker with many identities inside one /24 tries to fill the network.

Honest nodes, each in a /24 of its own, donate a small disk; a few of them put a file a
day. The attacker runs `attackers` nodes inside one /24 (fresh identities, donating
nothing) that each put a large file a day, and renew their leases, for `attack_days`;
then it goes away, and its leases run out. The scenario runs twice in the same run:
with the quotas a node has by default (node/quota.py), and with them off (every key and
prefix may take the whole donated space), which is the baseline.

It prints, per run:

- `honest_ok_%`: the honest puts that succeeded while under attack (goal: all);
- `attacker_MiB` and `attacker_max_%`: what the attacker's prefix kept at the end of
  the attack, over all nodes, and its largest share of any one node's donated
  capacity (goal: at most the prefix's share, 25%, plus one chunk);
- `attacker_puts_ok`: the attacker's puts that succeeded;
- `freed_after_days`: days from the attacker's departure until no honest node keeps
  any of its bytes (goal: within what was left of its leases, plus the trash's grace
  and one sweep);
- `expected_days`: that bound: the lease length plus the grace.

Knobs (`--set`): honest, attackers, uploaders, capacity_mib, honest_kib, attack_kib,
segment_kib, attack_days, lease_days, grace_days.
"""

from __future__ import annotations

import dataclasses
import random
import sys
import time
from dataclasses import dataclass
from typing import Any, Final

import trio

from dht.errors import DhtError
from node.errors import NodeError
from protocol.errors import ProtocolError
from simulations.harness import SIMULATED_NODE, SimNetwork, SimNode, open_network, put
from simulations.scenario import ScenarioOptions, ScenarioResult
from simulations.scenarios.durability import SIMULATED_DHT, SIMULATED_TRANSPORT
from simulations.scenarios.probes import percent

__all__ = ["run_abuse"]

HOUR: Final = 3600.0
DAY: Final = 24 * HOUR
MIB: Final = 1024 * 1024
ATTACK_PREFIX: Final = "12.0.0"
HOLD_DAYS_AFTER: Final = 60.0  # the longest the scenario waits for the space to return


@dataclass(frozen=True, slots=True)
class _Settings:
    honest: int
    attackers: int
    uploaders: int
    capacity_mib: float
    honest_kib: int
    attack_kib: int
    segment_kib: int
    attack_days: int
    lease_days: float
    grace_days: float

    @classmethod
    def of(cls, options: ScenarioOptions) -> _Settings:
        quick = options.quick
        return cls(
            honest=int(options.nodes),
            attackers=int(options.get("attackers", 4 if quick else 10)),
            uploaders=int(options.get("uploaders", 2 if quick else 5)),
            capacity_mib=float(options.get("capacity_mib", 2 if quick else 4)),
            honest_kib=int(options.get("honest_kib", 128)),
            attack_kib=int(options.get("attack_kib", 512)),
            segment_kib=int(options.get("segment_kib", 64)),
            attack_days=int(options.get("attack_days", 4 if quick else 20)),
            lease_days=float(options.get("lease_days", 5 if quick else 30)),
            grace_days=float(options.get("grace_days", 1 if quick else 7)),
        )


def _attacker_bytes(network: SimNetwork, honest: list[SimNode]) -> tuple[int, float]:
    """What the attacker's prefix is charged on honest nodes: in all, and its largest
    share of one node's donated capacity."""
    total, worst = 0, 0.0
    prefix = f"{ATTACK_PREFIX}.0/24"
    for node in honest:
        if not (node.alive and node.online):
            continue
        charged = node.leases.charges()[1].get(prefix, 0)
        total += charged
        capacity = node.store.statistics().capacity
        owner = node.leases.summary(0).owner_bytes
        settings = node.node.config.quota_settings()
        donated = max(1, capacity - max(owner, int(settings.owner_reserve * capacity)))
        worst = max(worst, charged / donated)
    return total, worst


def _attacker_held(honest: list[SimNode], attacker_chunks: set[bytes]) -> int:
    """Chunks of the attacker's files still on honest nodes (trash included)."""
    return sum(
        1
        for node in honest
        if node.alive and node.online
        for chunk_id in attacker_chunks
        if node.store.has(chunk_id)
    )


async def _run_one(options: ScenarioOptions, quotas: bool) -> dict[str, Any]:
    settings = _Settings.of(options)
    wall = time.perf_counter()
    config = dataclasses.replace(
        SIMULATED_NODE,
        capacity=int(settings.capacity_mib * MIB),
        segment_size=settings.segment_kib * 1024,
        lease_length=settings.lease_days * DAY,
        lease_renew_at=settings.lease_days * DAY / 3,
        lease_max=max(365 * DAY, settings.lease_days * DAY),
        trash_grace=settings.grace_days * DAY,
        key_share=None if quotas else 1.0,
        prefix_share=None if quotas else 1.0,
    )
    rng = random.Random(options.seed ^ 0xAB05E)
    async with open_network(
        settings.honest,
        seed=options.seed,
        node_config=config,
        dht_config=SIMULATED_DHT,
        transport_config=SIMULATED_TRANSPORT,
    ) as network:
        honest = list(network.nodes)
        attacker_config = dataclasses.replace(config, capacity=0)
        attackers = []
        for number in range(settings.attackers):
            node = await network.start_node(
                node_config=attacker_config, host=f"{ATTACK_PREFIX}.{number + 1}"
            )
            await network.join(node)
            attackers.append(node)
        uploaders = honest[: settings.uploaders]
        honest_ok = honest_tried = attack_ok = attack_tried = 0
        attacker_chunks: set[bytes] = set()
        started = trio.current_time()

        async def attack(node: SimNode, day: int) -> None:
            nonlocal attack_ok, attack_tried
            attack_tried += 1
            data = rng.randbytes(settings.attack_kib * 1024)
            attack_ok += await _put_ok(node, data, f"junk-{day}")

        for day in range(settings.attack_days):
            async with trio.open_nursery() as nursery:
                for node in attackers:
                    nursery.start_soon(attack, node, day)
            for node in uploaders:
                honest_tried += 1
                data = rng.randbytes(settings.honest_kib * 1024)
                honest_ok += await _put_ok(node, data, f"day-{day}")
            await trio.sleep_until(started + (day + 1) * DAY)
        attacker_total, attacker_max = _attacker_bytes(network, honest)
        for node in attackers:
            for entry in node.library.files():
                files = node.node.files
                assert files is not None
                attacker_chunks.update(await _chunks_of(network, entry.manifest_id))
        network.kill(attackers)  # gone: nobody renews its leases
        left = trio.current_time()
        freed_after = float("nan")
        waited = 0.0
        while waited <= HOLD_DAYS_AFTER:
            await trio.sleep(DAY)
            waited = (trio.current_time() - left) / DAY
            if _attacker_held(honest, attacker_chunks) == 0:
                freed_after = waited
                break
        if not options.quick:
            print(
                f"  quotas {'on' if quotas else 'off'}: {time.perf_counter() - wall:.0f} s",
                file=sys.stderr,
                flush=True,
            )
        network.nursery.cancel_scope.cancel()
    return {
        "quotas": "on" if quotas else "off",
        "honest_ok_%": percent(honest_ok, honest_tried),
        "honest_puts": honest_tried,
        "attacker_puts_ok": attack_ok,
        "attacker_puts": attack_tried,
        "attacker_MiB": attacker_total / MIB,
        "attacker_max_%": 100.0 * attacker_max,
        "freed_after_days": freed_after,
        "expected_days": settings.lease_days + settings.grace_days,
        "wall_s": time.perf_counter() - wall,
    }


async def _put_ok(node: SimNode, data: bytes, name: str) -> bool:
    """Whether a put as the node's owner does it succeeded."""
    failures = (NodeError, ProtocolError, DhtError)
    try:
        await put(node, data, name=name)
    except failures:
        return False
    except ExceptionGroup as group:  # segments placed side by side failed together
        if all(isinstance(leaf, failures) for leaf in _leaves(group)):
            return False
        raise
    return True


def _leaves(group: BaseException) -> list[BaseException]:
    if isinstance(group, BaseExceptionGroup):
        return [leaf for inner in group.exceptions for leaf in _leaves(inner)]
    return [group]


async def _chunks_of(network: SimNetwork, manifest_id: bytes) -> set[bytes]:
    """Every chunk of a file (its manifest, stored whole here, and its segments)."""
    from node.files import fetch_manifest

    for node in network.alive():
        if node.node.files is not None:
            try:
                manifest = await fetch_manifest(node.node.files, manifest_id)
            except NodeError:
                return {manifest_id}
            ids = {manifest_id}
            for index in range(manifest.segment_count):
                ids.update(manifest.segment_chunk_ids(index))
            return ids
    return {manifest_id}


async def run_abuse(options: ScenarioOptions) -> ScenarioResult:
    wall = time.perf_counter()
    rows = [await _run_one(options, quotas) for quotas in (True, False)]
    return ScenarioResult(
        "abuse",
        options.seed,
        options.nodes,
        rows,
        {"parameters": dataclasses.asdict(_Settings.of(options)), "runs": rows},
        wall_seconds=time.perf_counter() - wall,
    )
