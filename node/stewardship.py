"""Stewardship: the holders of a segment watch it, and one of them repairs it. Sans-I/O.

Every chunk a node holds came with its group record (k, n, the ids of all n chunks),
so its holder can watch the whole segment without the file's key or manifest
(DESIGN.md#keeping-files-alive-without-their-owner). A manifest chunk (a group of one,
stored whole on several nodes) is watched the same way, its copies taking the place of
the block numbers. `Stewardship` decides when each group is audited and what follows;
the driver (node/steward.py) runs the audits and repairs and reports back. Time and
randomness are inputs.

The rules:

1. **Watching.** Each group we hold a chunk of is audited every `audit_interval`,
   jittered by up to `jitter` of it either way, so that a group's n holders (and a
   restarted node's groups) do not audit in step. Groups come due least healthy first
   (fewest live chunks beyond the k needed).
2. **Transient is not permanent.** A *slot* (a block number of a segment; a holder of
   a manifest copy, or a copy short of `copies` whose holder we never saw) the audit
   did not prove is *missing* from the first audit that saw it so. It counts as *lost*
   only once it has been missing for `repair_grace`, or at once if a holder was proven
   lying about it (a lie is no outage). A holder that comes back before the grace is
   over is simply live again: a partition that heals causes no repair. A group's
   *standing* is its slots not lost: live, or missing within grace.
3. **Repairing.** When a group's standing falls to its threshold or below (and at least
   k are live), one holder repairs: the live holder closest (XOR) to the group key,
   which is the first chunk id. The others wait their rank among the live holders
   times `repair_delay`, then audit again: if the first repaired, there is nothing
   left to do; if it is gone, the next in rank goes. So two stewards do not place the
   same chunk, unless the first's repair is still running when the next looks, which
   the rank delay is there to avoid. The threshold is `repair_threshold` for groups of
   the node's own n (`StewardSettings.n`); for a group of another size (another file's
   code, or `copies` of a manifest) it keeps the same margin, n - repair_threshold,
   and lies between k and n - 1.
   Each holder's turn comes once: one that finds the group still at its threshold
   when it looks again, its rank times `repair_delay` after it first did, repairs
   itself, so a holder ranked above it that answers audits but never repairs (busy,
   out of bandwidth, or hostile) cannot hold the repair up.
4. **After a repair**, the group is audited again after `repair_delay` (to see it
   whole), then every `audit_interval` as before. A manifest copy's holder lost for
   good is forgotten then: its copy has been replaced.
5. **One audit does for the group.** When a peer audits our chunk of a group, someone
   is watching it: our own audit is put off to about `audit_interval` from then, so
   that a group's n holders make about one audit an interval between them instead of
   n. Never past n intervals (a group's slots) after our own last audit, though: so
   even when a peer audits every holder only to keep them quiet, the n - 1 others
   still audit the group about once an interval between them.

| event                                   | decision                                   |
|-----------------------------------------|--------------------------------------------|
| `watch(record)`                         | first audit within `audit_interval`        |
| `audited()`, standing above threshold   | next audit in about `audit_interval`       |
| `audited()`, at threshold, rank 0       | `Repair`                                   |
| `audited()`, at threshold, rank r > 0   | audit again in r * `repair_delay`          |
| `audited()`, fewer than k live          | nothing to do: next audit as usual (lost)  |
| `audited()`, at threshold, r's turn come| `Repair`                                   |
| `repaired()`                            | audit again in `repair_delay`              |
| `audited_by_peer()`                     | our audit put off (at most n intervals)    |
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from protocol.chunk import GroupRecord
from protocol.identity import NodeId

__all__ = ["GroupHealth", "Repair", "Slot", "StewardSettings", "Stewardship"]

DAY: Final = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class StewardSettings:
    """How holders watch and repair their segments (node/config.py's keys)."""

    audit_interval: float = DAY
    repair_threshold: int = 6
    """Repair when this many chunks of `n`, or fewer, are not lost (rule 3)."""
    n: int = 10
    repair_grace: float = DAY
    repair_delay: float = 600.0
    jitter: float = 0.25

    def __post_init__(self) -> None:
        if not self.audit_interval > 0 or not self.repair_grace >= 0:
            raise ValueError("audit_interval must be positive, repair_grace not negative")
        if not self.repair_delay > 0 or not 0 <= self.jitter < 1:
            raise ValueError("repair_delay must be positive and jitter in 0..1")
        if not 1 <= self.repair_threshold < self.n:
            raise ValueError("repair_threshold must be in 1..n-1")

    def threshold(self, wanted: int, k: int) -> int:
        """The repair threshold of a group of `wanted` slots of which k are needed (rule
        3): the same margin below `wanted` as `repair_threshold` below `n`, in k..wanted-1
        (k - 1, never reached while repairable, if the group has nothing to spare)."""
        if wanted <= k:
            return k - 1
        return max(k, min(wanted - 1, wanted - (self.n - self.repair_threshold)))


@dataclass(frozen=True, slots=True)
class Repair:
    """A decision: repair the group whose key is `group_key` now."""

    group_key: bytes


Slot = int | NodeId
"""A block number of a segment, or the holder of a manifest copy (rule 2)."""


@dataclass(slots=True)
class GroupHealth:
    """What we know of one group we hold a chunk of."""

    record: GroupRecord
    block_size: int
    next_audit: float
    wanted: int
    """Slots the group should have: n chunks, or the copies of a manifest chunk."""
    live: int | None = None
    """Slots the last audit proved, or None before the first."""
    missing_since: dict[Slot, float] = field(default_factory=dict)
    lied_about: set[Slot] = field(default_factory=set)
    proven: set[Slot] = field(default_factory=set)
    """The slots the last audit proved."""
    repairs: int = 0
    last_audit: float = -float("inf")
    """When we last audited the group ourselves (rule 5)."""
    turn_at: float | None = None
    """When our turn to repair comes, from when we first found the group at its
    threshold (rule 3); None while it is above."""

    @property
    def copies(self) -> bool:
        """Whether this is a manifest chunk kept in copies (a group of one)."""
        return self.record.n == 1

    def lost(self, now: float, grace: float) -> set[Slot]:
        """Slots missing for `grace` or more, or lied about (rule 2)."""
        return {
            slot for slot, since in self.missing_since.items() if now - since >= grace
        } | self.lied_about

    def spare(self) -> int:
        """Live slots beyond the k needed (before the first audit: all of them)."""
        live = self.wanted if self.live is None else self.live
        return live - self.record.k


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

    def watch(self, record: GroupRecord, block_size: int, now: float, *, copies: int = 0) -> None:
        """Start watching the group of a chunk we hold (first audit within an interval,
        at a random point, so that holders and restarts spread out). A manifest chunk
        (a group of one) is kept in `copies` copies."""
        key = record.chunk_ids[0]
        if key in self.groups:
            return
        if record.n == 1 and copies < 1:
            raise ValueError("a group of one is watched as copies: say how many")
        first = now + self._rng.uniform(0, self.settings.audit_interval)
        wanted = copies if record.n == 1 else record.n
        self.groups[key] = GroupHealth(record, block_size, first, wanted, last_audit=now)

    def restore(
        self,
        group_key: bytes,
        *,
        live: int | None,
        repairs: int,
        missing_since: Mapping[Slot, float],
        lied_about: Iterable[Slot],
        proven: Iterable[Slot],
    ) -> None:
        """Give a watched group back what was known of it before a restart (times in
        our clock); slots that cannot be the group's are ignored."""
        health = self.groups.get(group_key)
        if health is None:
            return

        def fits(slot: Slot) -> bool:
            if health.copies:
                return isinstance(slot, NodeId) or 0 <= slot < health.wanted
            return isinstance(slot, int) and 0 <= slot < health.record.n

        health.live = live
        health.repairs = repairs
        health.missing_since = {slot: t for slot, t in missing_since.items() if fits(slot)}
        health.lied_about = {slot for slot in lied_about if fits(slot)}
        health.proven = {slot for slot in proven if fits(slot)}

    def forget(self, group_key: bytes) -> None:
        """Stop watching (we no longer hold a chunk of it)."""
        self.groups.pop(group_key, None)

    @property
    def deadline(self) -> float:
        """When the next audit is due (infinity with nothing to watch)."""
        return min((health.next_audit for health in self.groups.values()), default=float("inf"))

    def backlog(self) -> int:
        """Groups at or below their repair threshold, waiting for a repair (rule 3)."""
        return sum(1 for health in self.groups.values() if health.turn_at is not None)

    def due(self, now: float) -> list[bytes]:
        """The groups due for an audit, least healthy first (rule 1)."""
        ready = [key for key, health in self.groups.items() if health.next_audit <= now]
        return sorted(ready, key=lambda key: (self.groups[key].spare(), key))

    def audited_by_peer(self, group_key: bytes, now: float) -> None:
        """A peer audited our chunk of the group: put our own audit off (rule 5)."""
        health = self.groups.get(group_key)
        if health is None or health.turn_at is not None:
            return  # a group at its threshold is looked at on our own schedule
        settings = self.settings
        latest = health.last_audit + health.wanted * settings.audit_interval
        later = now + self._jittered(settings.audit_interval)
        health.next_audit = max(health.next_audit, min(later, latest))

    def audited(
        self,
        group_key: bytes,
        *,
        proven: Iterable[Slot],
        lied_about: Iterable[Slot],
        holders: Iterable[NodeId],
        now: float,
    ) -> Repair | None:
        """An audit of the group proved the slots `proven` (block numbers; for copies,
        the holders proven), by the live `holders`, us included, and found lies about
        `lied_about`: decide (rules 2-4)."""
        health = self.groups.get(group_key)
        if health is None:
            return None
        settings = self.settings
        health.last_audit = now
        proven_slots = set(proven)
        for slot in proven_slots:
            health.missing_since.pop(slot, None)
        expected: Iterable[Slot] = (
            health.proven.union(health.missing_since) if health.copies else range(health.record.n)
        )
        for slot in expected:
            if slot not in proven_slots:
                health.missing_since.setdefault(slot, now)
        if health.copies:
            # Copies we never saw a holder of are missing too, numbered 0, 1, ...
            # from when we first saw them short, lest a node that first audits during
            # a partition take the cut-off copies for lost ones.
            seen = sum(1 for slot in health.missing_since if isinstance(slot, NodeId))
            unseen = max(0, health.wanted - len(proven_slots) - seen)
            for slot in range(unseen):
                health.missing_since.setdefault(slot, now)
            for slot in [s for s in health.missing_since if isinstance(s, int) and s >= unseen]:
                del health.missing_since[slot]
        health.lied_about = set(lied_about) - proven_slots
        health.live = len(proven_slots)
        health.proven = proven_slots
        lost = health.lost(now, settings.repair_grace)
        waiting = len(health.missing_since.keys() - lost)
        standing = min(health.wanted, health.live + waiting)
        if health.copies:  # a lost holder's copy is replaced, not waited for (rule 4)
            for slot in lost:
                health.missing_since.pop(slot, None)
        threshold = settings.threshold(health.wanted, health.record.k)
        if standing > threshold or health.live < health.record.k:
            health.turn_at = None
            health.next_audit = now + self._jittered(settings.audit_interval)
            return None
        if health.turn_at is None:
            target = int.from_bytes(group_key, "big")
            ranked = sorted(set(holders) | {self.own_id}, key=lambda node: int(node) ^ target)
            health.turn_at = now + ranked.index(self.own_id) * settings.repair_delay
        if now >= health.turn_at:
            health.next_audit = now + settings.repair_delay  # in case the repair fails
            return Repair(group_key)
        health.next_audit = health.turn_at
        return None

    def repaired(self, group_key: bytes, *, rebuilt: int, now: float) -> None:
        """A repair of the group rebuilt `rebuilt` chunks: look again soon (rule 4)."""
        health = self.groups.get(group_key)
        if health is None:
            return
        health.repairs += 1 if rebuilt else 0
        health.turn_at = None
        health.next_audit = now + self.settings.repair_delay
