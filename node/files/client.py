"""The one client of the chunk RPCs: STORE_CHUNK, FETCH_CHUNK, HAS_CHUNKS, AUDIT_CHUNKS,
and ADD_LEASE.

docs/PROTOCOL.md#chunk-messages. Every request of the file layer to a holder goes
through `ChunkClient`, and so does the short cut for the one holder that is this node:
a contact that is us is served by our own store, with the same checks a peer's request
gets, and never by the network.

What it promises:

- Each method returns the answer the protocol defines or raises a `NodeError`: a
  `TransportError` for a holder that could not be reached, timed out, answered ERROR
  (`RemoteError`, with its code) or answered with the wrong message.
- `fetch` never trusts the bytes: it returns them with their BLAKE3-256 digest, taken
  off the event loop, for the caller to compare with the id it asked for (our own
  store checks its bytes itself, so a local chunk's digest is its id).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

from dht.contact import Contact
from node.chunks import ChunkService, Offload, in_thread
from node.errors import ChunkNotFound, TransportError
from node.transport import Transport
from protocol.audit import stripe
from protocol.chunk import GroupRecord, chunk_id
from protocol.lease import Lease
from protocol.messages import (
    AddLease,
    AuditChunks,
    ChunkData,
    ChunksAudited,
    ChunksHeld,
    ChunkStored,
    FetchChunk,
    HasChunks,
    LeaseAdded,
    StoreChunk,
)

__all__ = ["CHUNK_TIMEOUT", "QUERY_TIMEOUT", "Audited", "ChunkClient", "Fetched"]

CHUNK_TIMEOUT: Final = 30.0
"""Seconds to wait for a STORE_CHUNK's or a FETCH_CHUNK's answer (a chunk each way)."""
QUERY_TIMEOUT: Final = 5.0
"""Seconds to wait for a HAS_CHUNKS answer."""


class Audited(NamedTuple):
    """A holder's answers to an audit, and whether they are our own (checked) chunks."""

    answers: list[bytes | None]
    trusted: bool


class Fetched(NamedTuple):
    """A chunk's bytes as a holder sent them, and their BLAKE3-256 digest."""

    data: bytes
    digest: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ChunkClient:
    """Stores, fetches and asks about chunks on any node, this one included."""

    transport: Transport
    local: ChunkService | None = None
    """This node's chunk service, or None when it takes no chunks (no capacity)."""
    own: Contact | None = None
    """This node as a contact, when `local` is given."""
    offload: Offload = in_thread
    """How blocking work (our store, hashing) runs: `in_thread`, or `inline`."""

    def __post_init__(self) -> None:
        if (self.local is None) != (self.own is None):
            raise ValueError("ChunkClient needs both or neither of `local` and `own`")

    def is_self(self, contact: Contact) -> bool:
        """Whether `contact` is this node."""
        return self.own is not None and contact.node_id == self.own.node_id

    def _local(self) -> ChunkService:
        assert self.local is not None  # is_self() is true only with `local`
        return self.local

    async def store(self, contact: Contact, data: bytes, group: GroupRecord) -> None:
        """Store one chunk on `contact`; raises NodeError (transport or refusal) if not."""
        if self.is_self(contact):
            await self._local().store_local(data, group)
            return
        answer = await self.transport.request(
            contact.address,
            StoreChunk(group, data),
            node_id=contact.node_id,
            timeout=CHUNK_TIMEOUT,
        )
        if not isinstance(answer, ChunkStored):
            raise TransportError(f"{contact.node_id.short()} answered {type(answer).__name__}")

    async def fetch(self, contact: Contact, wanted: bytes) -> Fetched:
        """Chunk `wanted` as `contact` sent it, with the digest of what it sent."""
        if self.is_self(contact):
            data = await self.offload(self._local().store.get, wanted)  # checked by the store
            return Fetched(data, wanted)
        answer = await self.transport.request(
            contact.address, FetchChunk(wanted), node_id=contact.node_id, timeout=CHUNK_TIMEOUT
        )
        if not isinstance(answer, ChunkData):
            raise TransportError(f"{contact.node_id.short()} answered {type(answer).__name__}")
        # Hashed off the event loop (in a worker thread, where blake3 runs without the GIL).
        return Fetched(answer.data, await self.offload(chunk_id, answer.data))

    async def audit(
        self, contact: Contact, ids: Sequence[bytes], offsets: Sequence[int], length: int
    ) -> Audited:
        """`contact`'s answers to an audit of `ids` (protocol/audit.py): one entry per id,
        the bytes at `offsets` or None. Our own chunks are read whole and checked
        against their ids first, so their answers are `trusted`: the anchor."""
        if self.is_self(contact):
            store = self._local().store

            def read_own() -> list[bytes | None]:
                answers: list[bytes | None] = []
                for identifier in ids:
                    try:
                        answers.append(stripe(store.get(identifier), offsets, length))
                    except ChunkNotFound:
                        answers.append(None)
                return answers

            return Audited(await self.offload(read_own), trusted=True)
        answer = await self.transport.request(
            contact.address,
            AuditChunks(tuple(ids), tuple(offsets), length),
            node_id=contact.node_id,
            timeout=QUERY_TIMEOUT,
        )
        if not isinstance(answer, ChunksAudited) or len(answer.answers) != len(ids):
            raise TransportError(f"{contact.node_id.short()} answered AUDIT_CHUNKS wrongly")
        return Audited(list(answer.answers), trusted=False)

    async def held(self, contact: Contact, ids: Sequence[bytes]) -> list[bool]:
        """Which of `ids` `contact` says it holds, one flag each."""
        if self.is_self(contact):
            store = self._local().store
            return await self.offload(lambda: [store.has(each) for each in ids])  # type: ignore[no-any-return]
        answer = await self.transport.request(
            contact.address, HasChunks(tuple(ids)), node_id=contact.node_id, timeout=QUERY_TIMEOUT
        )
        if not isinstance(answer, ChunksHeld) or len(answer.held) != len(ids):
            raise TransportError(f"{contact.node_id.short()} answered HAS_CHUNKS wrongly")
        return list(answer.held)

    async def add_lease(self, contact: Contact, lease: Lease, ids: Sequence[bytes]) -> list[bool]:
        """Ask `contact` to keep `ids` under `lease` (at most MAX_LEASE_CHUNKS); which of
        them it holds, and so now keeps."""
        if self.is_self(contact):
            keeper = self._local().keeper
            if keeper is None:
                return [False] * len(ids)
            return await keeper.add_lease(lease, tuple(ids), None, None)
        answer = await self.transport.request(
            contact.address,
            AddLease(lease, tuple(ids)),
            node_id=contact.node_id,
            timeout=QUERY_TIMEOUT,
        )
        if not isinstance(answer, LeaseAdded) or len(answer.held) != len(ids):
            raise TransportError(f"{contact.node_id.short()} answered ADD_LEASE wrongly")
        return list(answer.held)
