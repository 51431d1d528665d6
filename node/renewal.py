"""The owner's side of leases: sign, send, renew and give up the leases of its files.

`Leaser` is what the owner's commands (node/owner.py) and the renewal loop share:

- after a put, `leased_after_put` signs a lease of `length` for the new file and sends
  it to the nodes the placement names (node/files/leasing.py), and records the file
  in the library (node/library.py);
- `keep` leases a file known by its capability (the verify one is enough): a lease of
  our own, charged to us, kept and renewed like a file we put;
- `forget` sends a release signed by our key to the file's holders and drops the file
  from the library; other keys' leases on it are untouched;
- `run` wakes every `check_interval` and renews the files whose lease has `renew_at`
  or less left, and retries, every `retry` seconds, a file whose last round missed
  some chunks.

A lease is issued at the lease clock's second (node/keeper.py) and never at or before
the one it replaces: holders keep only the newest record per key and file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import trio

from node.errors import NodeError
from node.files import FileNetwork
from node.files.leasing import LeaseRound, lease_file, send_lease
from node.files.placement import Placement
from node.leases import LeaseSettings
from node.library import Library, OwnFile
from protocol.capability import ReadCapability, VerifyCapability
from protocol.identity import Identity
from protocol.lease import make_lease

__all__ = ["Leaser", "Released"]

logger = logging.getLogger(__name__)

RETRY: Final = 3600.0
"""Seconds before a file whose lease round missed chunks is tried again."""


@dataclass(frozen=True, slots=True)
class Released:
    """What `forget` did."""

    known: bool
    """Whether the file was in the library."""
    chunks: int
    released: int
    """Chunks whose holders took the release."""
    reachable: bool
    """Whether the manifest could be fetched (else nothing was sent: the lease will
    simply run out)."""


class Leaser:
    """Leases for the owner's files (module docstring)."""

    def __init__(
        self,
        net: FileNetwork,
        identity: Identity,
        library: Library,
        settings: LeaseSettings,
        now: Callable[[], float],
    ) -> None:
        self.net = net
        self.identity = identity
        self.library = library
        self.settings = settings
        self.now = now
        self.renewed = 0
        # The last `issued` signed per file since start, forgotten files included: a
        # keep right after a forget must not sign in the same second as the release.
        self._issued: dict[bytes, int] = {}

    def _next_issue(self, manifest_id: bytes, entry: OwnFile | None) -> int:
        issued = int(self.now())
        if entry is not None:
            issued = max(issued, entry.lease_issued + 1)
        issued = max(issued, self._issued.get(manifest_id, -1) + 1)
        self._issued[manifest_id] = issued
        return issued

    async def leased_after_put(
        self, capability: ReadCapability, placement: Placement, *, name: str, size: int
    ) -> LeaseRound:
        """Lease a file just put, at the nodes that took its chunks, and record it."""
        manifest_id = capability.manifest_id
        issued = self._next_issue(manifest_id, self.library.get(manifest_id))
        expires = int(issued + self.settings.length)
        lease = make_lease(self.identity, manifest_id, issued, expires)
        result = await send_lease(self.net, lease, placement.stored_on)
        self.library.add(
            OwnFile(
                manifest_id,
                str(capability),
                name,
                size,
                self.now(),
                issued,
                expires,
                not result.complete,
                self.now(),
            )
        )
        return result

    async def keep(
        self, capability: ReadCapability | VerifyCapability, *, name: str = ""
    ) -> LeaseRound:
        """Lease a file of anyone's, charged to us, and keep renewing it."""
        manifest_id = capability.manifest_id
        known = self.library.get(manifest_id)
        if known is None:
            now = self.now()
            self.library.add(
                OwnFile(manifest_id, str(capability), name, None, now, 0, 0, True, now)
            )
        return await self.renew(manifest_id)

    async def renew(self, manifest_id: bytes) -> LeaseRound:
        """Send a fresh lease of `length` for a file of the library to its holders."""
        entry = self.library.get(manifest_id)
        if entry is None:
            raise NodeError("that file is not in this node's list")
        issued = self._next_issue(manifest_id, entry)
        expires = int(issued + self.settings.length)
        lease = make_lease(self.identity, manifest_id, issued, expires)
        try:
            result = await lease_file(self.net, manifest_id, lease)
        except NodeError:
            self.library.tried(manifest_id, self.now())
            raise
        if result.covered:
            self.library.leased(
                manifest_id, issued, expires, pending=not result.complete, now=self.now()
            )
        else:
            self.library.tried(manifest_id, self.now())
        self.renewed += 1
        return result

    async def forget(self, capability: ReadCapability | VerifyCapability) -> Released:
        """Give up our lease of a file and drop it from the library."""
        manifest_id = capability.manifest_id
        entry = self.library.get(manifest_id)
        issued = self._next_issue(manifest_id, entry)
        release = make_lease(self.identity, manifest_id, issued, issued)
        try:
            result = await lease_file(self.net, manifest_id, release)
        except NodeError as exc:
            logger.info("releasing %s reached no holder: %s", manifest_id.hex()[:16], exc)
            self.library.remove(manifest_id)
            return Released(entry is not None, 0, 0, False)
        self.library.remove(manifest_id)
        return Released(entry is not None, result.chunks, len(result.covered), True)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Renew what is due, every `check_interval`, until cancelled."""
        task_status.started()
        interval = min(self.settings.sweep_interval, self.settings.renew_at / 4)
        while True:
            for entry in self.library.due(self.now(), self.settings.renew_at, RETRY):
                try:
                    result = await self.renew(entry.manifest_id)
                except NodeError as exc:
                    logger.warning(
                        "renewing the lease of %s failed: %s",
                        entry.name or entry.manifest_id.hex()[:16],
                        exc,
                    )
                    continue
                if not result.complete:
                    logger.info(
                        "lease of %s reached %d of %d chunks; trying again in %.0f s",
                        entry.name or entry.manifest_id.hex()[:16],
                        len(result.covered),
                        result.chunks,
                        RETRY,
                    )
            await trio.sleep(interval)
