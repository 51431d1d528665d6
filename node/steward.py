"""The steward service: runs a node's `Stewardship` (node/stewardship.py, whose header has
the rules) over the network.

It watches the group of every chunk the node holds: those in the store when it starts
and each one stored since (`hold`). When a group comes due it audits the group's
holders (node/files/checking.audit_group: our own chunk is the trusted anchor), reports
to the plan, and carries out the repairs the plan decides
(node/files/repair.repair_group), one at a time, least healthy first. A manifest chunk
(a group of one) is audited against our own copy (audit_whole) and topped up to the
node's n copies (keep_whole). Repairs go no faster
than `repair_bandwidth` bytes a second on average (a token bucket of the chunk bytes a
repair fetches and stores). Every failure is logged and the group looked at again
later: nothing a peer does stops the service.

Leases (node/keeper.py): a group whose chunk no lease keeps any more (in the trash) is
neither audited nor repaired, since nobody wants the data; a repair carries the leases
of our chunk to the nodes that take the rebuilt chunks or the new copies, so that they
keep them under the same leases (and charge the same keys).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict

import trio

from dht.contact import Contact
from node.chunks import Offload
from node.errors import NodeError
from node.files.checking import Group, audit_group, audit_whole
from node.files.network import FileNetwork, RepairCounters
from node.files.repair import keep_whole, repair_group
from node.health import HealthBook
from node.keeper import LeaseKeeper
from node.stewardship import Repair, Stewardship
from node.store import ChunkStore
from protocol.chunk import GroupRecord
from protocol.errors import ProtocolError
from protocol.lease import Lease

__all__ = ["StewardService"]

logger = logging.getLogger(__name__)


class StewardService:
    """Watches and repairs the groups of the chunks this node holds."""

    def __init__(
        self,
        files: FileNetwork,
        store: ChunkStore,
        plan: Stewardship,
        *,
        bandwidth: float,
        offload: Offload,
        book: HealthBook | None = None,
        wall_clock: Callable[[], float] | None = None,
        keeper: LeaseKeeper | None = None,
    ) -> None:
        self.files = files
        self.plan = plan
        self._book = book or HealthBook()
        self._wall_clock = wall_clock
        self._keeper = keeper
        self._store = store
        self._offload = offload
        self._bandwidth = bandwidth
        self._tokens = 0.0
        self._filled_at = -math.inf
        self._wake = trio.Event()
        self._group_of: dict[bytes, bytes] = {}
        # Who proved each chunk of a group, or held a copy of a manifest chunk, at our
        # last audit: audited first next time, with no lookup.
        self._last_holders: dict[bytes, dict[bytes, list[Contact]]] = {}
        self._last_copies: dict[bytes, list[Contact]] = {}

    def hold(self, record: GroupRecord, size: int) -> None:
        """A chunk of `record`'s group was stored here: watch its group."""
        copies = self.files.settings.params.n
        self.plan.watch(record, size, trio.current_time(), copies=copies)
        self._group_of[record.chunk_id] = record.chunk_ids[0]
        self._wake.set()

    def audited_by_peer(self, chunk_ids: Sequence[bytes]) -> None:
        """A peer audited chunks we hold: their groups are being watched (plan rule 5)."""
        now = trio.current_time()
        for chunk_id in chunk_ids:
            group_key = self._group_of.get(chunk_id)
            if group_key is not None:
                self.plan.audited_by_peer(group_key, now)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Watch what the store holds, then audit and repair as groups come due."""
        task_status.started()
        for record, size in await self._offload(self._held_groups):
            self.hold(record, size)
        self._restore()
        try:
            while True:
                self._wake = trio.Event()
                with trio.move_on_at(self.plan.deadline):
                    await self._wake.wait()
                for group_key in self.plan.due(trio.current_time()):
                    await self._look_after(group_key)
                    self._save(group_key)
        finally:
            self._save_totals()

    def _to_wall(self) -> float:
        """What to add to a time of the event loop's clock to make it wall-clock."""
        wall = self._wall_clock() if self._wall_clock is not None else trio.current_time()
        return wall - trio.current_time()

    def _restore(self) -> None:
        """Give the plan back what the health book knew before we stopped."""
        self._book.restore(self.plan, to_wall=self._to_wall())
        counters = self.files.repairs
        for name, value in self._book.totals().items():
            if name in RepairCounters.__dataclass_fields__:
                setattr(counters, name, getattr(counters, name) + value)

    def _save(self, group_key: bytes) -> None:
        health = self.plan.groups.get(group_key)
        if health is None:
            self._book.forget(group_key)
        elif health.live is not None:
            self._book.save(group_key, health, to_wall=self._to_wall())

    def _save_totals(self) -> None:
        self._book.save_totals(asdict(self.files.repairs))

    def _held_groups(self) -> list[tuple[GroupRecord, int]]:
        """Each held chunk's group record and size (blocking: the store's index)."""
        held = []
        for chunk_id in self._store.chunk_ids():
            try:
                info = self._store.info(chunk_id)
            except NodeError:
                continue  # deleted meanwhile
            held.append((info.group, info.size))
        return held

    async def _look_after(self, group_key: bytes) -> None:
        health = self.plan.groups.get(group_key)
        if health is None:
            return
        if not await self._offload(self._store.has, health.record.chunk_id):
            self._forget(group_key)  # our chunk is gone (deleted): not ours to watch
            return
        if self._keeper is not None and not self._keeper.leased(health.record.chunk_id):
            # Nobody leases it any more: expired data is neither audited nor repaired.
            health.next_audit = trio.current_time() + self.plan.settings.audit_interval
            return
        if health.copies:
            await self._look_after_copies(group_key, health.wanted)
            return
        group = Group.of_record(health.record, health.block_size)
        try:
            # Beyond the threshold plus one, more proof decides nothing (plan rule 3).
            report = await audit_group(
                self.files,
                group,
                self._last_holders.get(group_key),
                enough=self._decisive(health.wanted, group.k),
            )
        except (NodeError, ProtocolError) as exc:
            logger.info("auditing group %s failed: %s", group_key.hex()[:16], exc)
            self.files.repairs.audits_failed += 1
            self._retry_later(group_key)
            return
        ids = group.chunk_ids
        proven = [number for number, identifier in enumerate(ids) if identifier in report.holders]
        holders = {contact.node_id for found in report.holders.values() for contact in found}
        self._last_holders[group_key] = {
            identifier: list(found) for identifier, found in report.holders.items()
        }
        decision = self.plan.audited(
            group_key,
            proven=proven,
            lied_about=report.lied_about,
            holders=holders,
            now=trio.current_time(),
        )
        self.files.repairs.segments_checked += 1
        self.files.repairs.chunks_proven += len(proven)
        self.files.repairs.chunks_unproven += len(ids) - len(proven)
        if not isinstance(decision, Repair):
            return
        await self._spend((group.k + report.missing) * group.block_size)
        try:
            result = await repair_group(
                self.files, group, report, leases=self._leases(health.record.chunk_id)
            )
        except (NodeError, ProtocolError) as exc:
            logger.info("repairing group %s failed: %s", group_key.hex()[:16], exc)
            return
        counters = self.files.repairs
        if result.rebuilt:
            counters.segments_repaired += 1
            counters.chunks_rebuilt += result.rebuilt
            counters.bytes_moved += (group.k + result.rebuilt) * group.block_size
            logger.info(
                "repaired group %s: %d of %d chunks rebuilt",
                group_key.hex()[:16],
                result.rebuilt,
                group.n,
            )
        self.plan.repaired(group_key, rebuilt=result.rebuilt, now=trio.current_time())
        self._save_totals()

    async def _look_after_copies(self, identifier: bytes, copies: int) -> None:
        """Audit the copies of a manifest chunk against ours; top them up if the plan says."""
        try:
            data = await self._offload(self._store.get, identifier)
        except NodeError as exc:  # damaged, and dropped by the store
            logger.info(
                "our copy of manifest chunk %s is unreadable: %s", identifier.hex()[:16], exc
            )
            self._forget(identifier)
            return
        try:
            proven, lying = await audit_whole(
                self.files,
                identifier,
                data,
                known=self._last_copies.get(identifier, ()),
                enough=self._decisive(copies, 1),
            )
        except (NodeError, ProtocolError) as exc:
            logger.info("auditing manifest chunk %s failed: %s", identifier.hex()[:16], exc)
            self.files.repairs.audits_failed += 1
            self._retry_later(identifier)
            return
        self._last_copies[identifier] = proven
        holders = {contact.node_id for contact in proven} | {self.plan.own_id}
        decision = self.plan.audited(
            identifier,
            proven=holders,
            lied_about={contact.node_id for contact in lying},
            holders=holders,
            now=trio.current_time(),
        )
        self.files.repairs.segments_checked += 1
        self.files.repairs.chunks_proven += len(proven)
        self.files.repairs.chunks_unproven += len(lying)
        if not isinstance(decision, Repair):
            return
        await self._spend((copies - len(holders)) * len(data))
        try:
            added = await keep_whole(
                self.files, identifier, data, copies, leases=self._leases(identifier)
            )
        except (NodeError, ProtocolError) as exc:
            logger.info("copying manifest chunk %s failed: %s", identifier.hex()[:16], exc)
            return
        counters = self.files.repairs
        if added:
            counters.segments_repaired += 1
            counters.chunks_rebuilt += added
            counters.bytes_moved += added * len(data)
            logger.info("manifest chunk %s: %d copies added", identifier.hex()[:16], added)
        self.plan.repaired(identifier, rebuilt=added, now=trio.current_time())
        self._save_totals()

    def _leases(self, chunk_id: bytes) -> list[Lease]:
        """The leases a repair carries to new holders: those of our own chunk."""
        return self._keeper.leases_for(chunk_id) if self._keeper is not None else []

    def _forget(self, group_key: bytes) -> None:
        """Stop watching a group, and drop what we kept about it."""
        health = self.plan.groups.get(group_key)
        if health is not None:
            self._group_of.pop(health.record.chunk_id, None)
        self.plan.forget(group_key)
        self._last_holders.pop(group_key, None)
        self._last_copies.pop(group_key, None)

    def _decisive(self, wanted: int, k: int) -> int:
        """Live slots beyond which an audit need not look further: one above the
        group's repair threshold (a slot it does not prove only starts its grace)."""
        return self.plan.settings.threshold(wanted, k) + 1

    def _retry_later(self, group_key: bytes) -> None:
        health = self.plan.groups.get(group_key)
        if health is not None:
            health.next_audit = trio.current_time() + self.plan.settings.repair_delay

    async def _spend(self, amount: float) -> None:
        """Wait until the token bucket holds `amount` bytes of repair traffic, then take
        them: on average no more than `bandwidth` bytes a second."""
        now = trio.current_time()
        ceiling = max(amount, self._bandwidth)
        elapsed = now - self._filled_at if math.isfinite(self._filled_at) else math.inf
        self._tokens = min(ceiling, self._tokens + elapsed * self._bandwidth)
        self._filled_at = now
        if self._tokens < amount:
            await trio.sleep((amount - self._tokens) / self._bandwidth)
            self._tokens = amount
            self._filled_at = trio.current_time()
        self._tokens -= amount
