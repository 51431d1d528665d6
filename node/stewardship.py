"""Stewardship: the holders of a segment watch it, and one of them repairs it. Sans-I/O.

Every chunk a node holds came with its group record (k, n, the ids of all n chunks),
so its holder can watch the whole segment without the file's key or manifest
(DESIGN.md#keeping-files-alive-without-their-owner). `Stewardship` decides when each
group is audited and what follows; the driver (node/steward.py) runs the audits and
repairs and reports back. Time and randomness are inputs.

The rules:

1. **Watching.** Each group we hold a chunk of is audited every `audit_interval`,
   jittered by up to `jitter` of it either way, so that a group's n holders (and a
   restarted node's groups) do not audit in step. Groups come due least healthy first.
2. **Transient is not permanent.** A block number the audit did not prove is *missing*
   from the first audit that saw it so. It counts as *lost* only once it has been
   missing for `repair_grace`, or at once if a holder was proven lying about it (a
   lie is no outage). A holder that comes back before the grace is over is simply
   live again: a partition that heals causes no repair.
3. **Repairing.** When the chunks not lost fall to `repair_threshold` or below (and at
   least k are live), one holder repairs: the live holder closest (XOR) to the group
   key, which is the first chunk id. The others wait their rank among the live holders
   times `repair_delay`, then audit again: if the first repaired, there is nothing
   left to do; if it is gone, the next in rank goes. So two stewards do not place the
   same chunk, unless the first's repair is still running when the next looks, which
   the rank delay is there to avoid.
4. **After a repair**, the group is audited again after `repair_delay` (to see it
   whole), then every `audit_interval` as before.

| event                                   | decision                                   |
|-----------------------------------------|--------------------------------------------|
| `watch(record)`                         | first audit within `audit_interval`        |
| `audited()`, not lost below threshold   | next audit in about `audit_interval`       |
| `audited()`, at threshold, rank 0       | `Repair`                                   |
| `audited()`, at threshold, rank r > 0   | audit again in r * `repair_delay`          |
| `audited()`, fewer than k live          | nothing to do: next audit as usual (lost)  |
| `repaired()`                            | audit again in `repair_delay`              |
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from protocol.chunk import GroupRecord
from protocol.identity import NodeId

__all__ = ["GroupHealth", "Repair", "StewardSettings", "Stewardship"]

DAY: Final = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class StewardSettings:
    """How holders watch and repair their segments (node/config.py's keys)."""

    audit_interval: float = DAY
    repair_threshold: int = 7
    """Repair when this many chunks of n, or fewer, are not lost (of 10 by default)."""
    repair_grace: float = DAY
    repair_delay: float = 600.0
    jitter: float = 0.25

    def __post_init__(self) -> None:
        if not self.audit_interval > 0 or not self.repair_grace >= 0:
            raise ValueError("audit_interval must be positive, repair_grace not negative")
        if not self.repair_delay > 0 or not 0 <= self.jitter < 1:
            raise ValueError("repair_delay must be positive and jitter in 0..1")


@dataclass(frozen=True, slots=True)
class Repair:
    """A decision: repair the group whose key is `group_key` now."""

    group_key: bytes


@dataclass(slots=True)
class GroupHealth:
    """What we know of one group we hold a chunk of."""

    record: GroupRecord
    block_size: int
    next_audit: float
    live: int | None = None
    """Chunks the last audit proved, or None before the first."""
    missing_since: dict[int, float] = field(default_factory=dict)
    lied_about: set[int] = field(default_factory=set)
    repairs: int = 0

    def lost(self, now: float, grace: float) -> set[int]:
        """Block numbers missing for `grace` or more, or lied about (rule 2)."""
        return {
            number for number, since in self.missing_since.items() if now - since >= grace
        } | self.lied_about


class Stewardship:
    """The watching and repair decisions of one node (module docstring)."""

    def __init__(self, own_id: NodeId, settings: StewardSettings, rng: random.Random) -> None:
        self.own_id = own_id
        self.settings = settings
        self._rng = rng
        self.groups: dict[bytes, GroupHealth] = {}

    def _jittered(self, interval: float) -> float:
        spread = self.settings.jitter * interval
        return interval + self._rng.uniform(-spread, spread)

    def watch(self, record: GroupRecord, block_size: int, now: float) -> None:
        """Start watching the group of a chunk we hold (first audit within an interval,
        at a random point, so that holders and restarts spread out)."""
        key = record.chunk_ids[0]
        if key in self.groups:
            return
        first = now + self._rng.uniform(0, self.settings.audit_interval)
        self.groups[key] = GroupHealth(record, block_size, first)

    def forget(self, group_key: bytes) -> None:
        """Stop watching (we no longer hold a chunk of it)."""
        self.groups.pop(group_key, None)

    @property
    def deadline(self) -> float:
        """When the next audit is due (infinity with nothing to watch)."""
        return min((health.next_audit for health in self.groups.values()), default=float("inf"))

    def due(self, now: float) -> list[bytes]:
        """The groups due for an audit, least healthy first (rule 1)."""
        ready = [key for key, health in self.groups.items() if health.next_audit <= now]
        return sorted(ready, key=lambda key: (self.groups[key].live or 0, key))

    def audited(
        self,
        group_key: bytes,
        *,
        proven: Iterable[int],
        lied_about: Iterable[int],
        holders: Iterable[NodeId],
        now: float,
    ) -> Repair | None:
        """An audit of the group proved the block numbers `proven` (by the live
        `holders`, us included) and found lies about `lied_about`: decide (rules 2-4)."""
        health = self.groups.get(group_key)
        if health is None:
            return None
        record = health.record
        proven_numbers = set(proven)
        for number in proven_numbers:
            health.missing_since.pop(number, None)
        for number in range(record.n):
            if number not in proven_numbers:
                health.missing_since.setdefault(number, now)
        health.lied_about = set(lied_about) - proven_numbers
        health.live = len(proven_numbers)
        standing = record.n - len(health.lost(now, self.settings.repair_grace))
        settings = self.settings
        if standing > settings.repair_threshold or health.live < record.k:
            health.next_audit = now + self._jittered(settings.audit_interval)
            return None
        target = int.from_bytes(group_key, "big")
        ranked = sorted(set(holders) | {self.own_id}, key=lambda node: int(node) ^ target)
        rank = ranked.index(self.own_id)
        if rank == 0:
            health.next_audit = now + settings.repair_delay  # in case the repair fails
            return Repair(group_key)
        health.next_audit = now + rank * settings.repair_delay
        return None

    def repaired(self, group_key: bytes, *, rebuilt: int, now: float) -> None:
        """A repair of the group rebuilt `rebuilt` chunks: look again soon (rule 4)."""
        health = self.groups.get(group_key)
        if health is None:
            return
        health.repairs += 1 if rebuilt else 0
        health.next_audit = now + self.settings.repair_delay
