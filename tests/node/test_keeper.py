"""The lease keeper (node/keeper.py): the garbage collector under SIGKILL, and a wall
clock that jumps."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from trio.testing import MockClock

from node.chunks import inline
from node.errors import OverQuota, StoreFull
from node.keeper import LeaseKeeper
from node.leases import DAY, LEASES_FILE, LeaseBook, LeaseSettings
from node.quota import QuotaSettings, chunk_cost
from node.store import DiskChunkStore, MemoryChunkStore, StoreConfig
from protocol.chunk import GroupRecord, chunk_id
from protocol.identity import Identity
from protocol.lease import make_lease

ROOT = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("gc_child.py")
START = 1_800_000_000.0
OWNER = Identity(bytes([1]) * 32)
ALICE = Identity(bytes([2]) * 32)
LEASED, UNLEASED = 6, 12


@pytest.mark.parametrize("phase", ["before", "after", "told"])
@pytest.mark.parametrize("die_at", [1, 7])
def test_sigkill_during_collection_loses_no_leased_chunk(
    tmp_path: Path, phase: str, die_at: int
) -> None:
    """A collector killed in any phase of a deletion leaves every leased chunk whole;
    after a restart the book and the store agree, and the next sweep finishes the job."""
    process = subprocess.run(
        [sys.executable, str(CHILD), str(tmp_path), str(LEASED), str(UNLEASED), str(die_at), phase],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert process.returncode == -signal.SIGKILL, process.stderr.decode()
    leased = [bytes.fromhex(line) for line in process.stdout.decode().split()]
    assert len(leased) == LEASED

    async def restart() -> None:
        with DiskChunkStore.open(tmp_path, StoreConfig(capacity=10**9)) as store:
            book = LeaseBook(tmp_path / LEASES_FILE, OWNER.node_id, LeaseSettings(trash_grace=0))
            held_before = set(store.chunk_ids())
            assert set(leased) <= held_before
            # Deletions before the kill are done; the one it interrupted may or may not be.
            assert len(held_before) in (LEASED + UNLEASED - die_at, LEASED + UNLEASED - die_at + 1)
            keeper = LeaseKeeper(
                book,
                store,
                transport=None,
                offload=inline,
                wall_clock=lambda: START + 2 * DAY,
            )
            await keeper.reconcile()
            assert book.known() == held_before
            await keeper.sweep(0.0)
            assert set(store.chunk_ids()) == set(leased) == book.known()
            for identifier in leased:
                assert chunk_id(store.get(identifier)) == identifier
            book.close()

    trio.run(restart)


def keeper_with(
    chunks: int, wall: list[float], settings: LeaseSettings
) -> tuple[LeaseKeeper, MemoryChunkStore, list[bytes]]:
    """A keeper over a store of `chunks` leased chunks; `wall[0]` is the wall clock."""
    store = MemoryChunkStore(StoreConfig(capacity=10**9, in_memory=True))
    book = LeaseBook(None, OWNER.node_id, settings)
    lease = make_lease(ALICE, bytes(32), int(START), int(START + 90 * DAY))
    ids = []
    for number in range(chunks):
        data = number.to_bytes(4, "big") * 100
        identifier = chunk_id(data)
        store.put(identifier, data, GroupRecord.single(identifier))
        book.add_upload(identifier, chunk_cost(len(data), 1), ALICE.node_id, "10.0.0.0/24", START)
        ids.append(identifier)
    book.add_lease(lease, ids, ALICE.node_id, "10.0.0.0/24", START, used=0, capacity=10**9)
    keeper = LeaseKeeper(book, store, transport=None, offload=inline, wall_clock=lambda: wall[0])
    return keeper, store, ids


async def test_a_wall_clock_that_jumps_while_running_deletes_nothing(
    autojump_clock: MockClock,
) -> None:
    """The wall clock stepped a year ahead while the node runs: the lease clock goes on
    at the loop's pace, and weeks of sweeps trash and delete nothing leased."""
    wall = [START]
    keeper, store, ids = keeper_with(5, wall, LeaseSettings(trash_grace=DAY))
    async with trio.open_nursery() as nursery:
        await nursery.start(keeper.run)
        await trio.sleep(DAY)
        wall[0] = START + 365 * DAY
        await trio.sleep(14 * DAY)
        assert keeper.now() == pytest.approx(START + 15 * DAY, abs=1)
        assert keeper.book.summary(keeper.now()).trash_chunks == 0
        assert sorted(store.chunk_ids()) == sorted(ids)
        nursery.cancel_scope.cancel()


async def test_a_clock_wrong_at_start_trashes_but_waits_the_grace(
    autojump_clock: MockClock,
) -> None:
    """A node started with its clock a year ahead sees every lease over: the chunks go
    to the trash, but nothing is deleted before `trash_grace` of running time, and a
    lease that comes meanwhile brings them back."""
    wall = [START + 365 * DAY]
    keeper, store, ids = keeper_with(4, wall, LeaseSettings(trash_grace=3 * DAY))
    async with trio.open_nursery() as nursery:
        await nursery.start(keeper.run)
        await trio.sleep(2 * DAY)
        assert keeper.book.summary(keeper.now()).trash_chunks == 4
        assert sorted(store.chunk_ids()) == sorted(ids)
        now = int(keeper.now())
        renewal = make_lease(ALICE, bytes(32), now, now + int(90 * DAY))
        assert (
            await keeper.add_lease(renewal, tuple(ids), ALICE.node_id, "10.0.0.0/24") == [True] * 4
        )
        await trio.sleep(5 * DAY)
        assert sorted(store.chunk_ids()) == sorted(ids)
        assert keeper.book.summary(keeper.now()).trash_chunks == 0
        nursery.cancel_scope.cancel()


class _NoTransport:
    def add_handler(self, *arguments: object) -> None:
        pass


async def test_a_store_racing_the_collector_is_refused_or_kept(
    autojump_clock: MockClock,
) -> None:
    """A STORE_CHUNK of a chunk the collector is deleting is answered BUSY (never
    acknowledged, then deleted); a chunk whose store is in progress is not deleted."""
    from node.chunks import ChunkService
    from node.errors import RequestRejected
    from node.transport.handler import Peer
    from protocol.messages import ErrorCode, StoreChunk

    deleting = trio.Event()

    async def slow(function: object, *arguments: object) -> object:
        if getattr(function, "__name__", "") == "delete":
            deleting.set()
            await trio.sleep(1)
        await trio.lowlevel.checkpoint()
        return function(*arguments)  # type: ignore[operator]

    store = MemoryChunkStore(StoreConfig(capacity=10**9, in_memory=True))
    book = LeaseBook(None, OWNER.node_id, LeaseSettings(trash_grace=0))
    keeper = LeaseKeeper(book, store, transport=None, offload=slow, wall_clock=lambda: START)

    async def provide(key: object) -> int:
        return 0

    service = ChunkService(store, _NoTransport(), provide, offload=slow)  # type: ignore[arg-type]
    service.keeper = keeper
    data = b"abandoned" * 10
    group = GroupRecord.single(chunk_id(data))
    mallory = Peer(ALICE.node_id, ("203.0.113.5", 1))
    await service.handle_store_chunk(mallory, StoreChunk(group, data))
    await trio.sleep(2 * DAY)  # the upload lease is over
    async with trio.open_nursery() as nursery:
        nursery.start_soon(keeper.sweep, 3600.0)
        await deleting.wait()
        with pytest.raises(RequestRejected) as refused:
            await service.handle_store_chunk(mallory, StoreChunk(group, data))
        assert refused.value.code == ErrorCode.BUSY
    assert not store.has(group.chunk_id) and group.chunk_id not in book.known()
    # Stored anew, its upload lease over again, but a store of it under way: kept.
    await service.handle_store_chunk(mallory, StoreChunk(group, data))
    await trio.sleep(2 * DAY)
    pending = keeper.begin_store(ALICE.node_id, "203.0.113.5", len(data), 1, group.chunk_id)
    assert await keeper.sweep(3600.0) == 0
    keeper.end_store(pending, stored=True)
    assert store.has(group.chunk_id) and book.kept(group.chunk_id, keeper.now())


async def test_storing_again_is_no_free_renewal(autojump_clock: MockClock) -> None:
    """A chunk whose upload lease ran out, stored again, is a new upload: admitted under
    the quotas like any, not renewed for free."""
    store = MemoryChunkStore(StoreConfig(capacity=10**9, in_memory=True))
    book = LeaseBook(None, OWNER.node_id, LeaseSettings(), QuotaSettings(key_share=0.0))
    keeper = LeaseKeeper(book, store, transport=None, offload=inline, wall_clock=lambda: START)
    data = b"x" * 1000
    identifier = chunk_id(data)
    store.put(identifier, data, GroupRecord.single(identifier))
    book.add_upload(identifier, chunk_cost(len(data), 1), ALICE.node_id, None, START)
    # While its upload lease runs, a store again changes nothing and costs nothing.
    keeper.end_store(
        keeper.begin_store(ALICE.node_id, "203.0.113.5", len(data), 1, identifier), stored=True
    )
    await trio.sleep(2 * DAY)
    with pytest.raises(OverQuota):
        keeper.begin_store(ALICE.node_id, "203.0.113.5", len(data), 1, identifier)


async def test_others_never_crowd_out_the_owner(autojump_clock: MockClock) -> None:
    """Peers, even with every share open to them, fill a node only up to its owner's
    reserve: the owner's own chunks still fit after them."""
    capacity = 100 * chunk_cost(32, 1)  # each chunk below costs this much
    store = MemoryChunkStore(StoreConfig(capacity=capacity, in_memory=True))
    quota = QuotaSettings(key_share=1.0, prefix_share=1.0, owner_reserve=0.2)
    book = LeaseBook(None, OWNER.node_id, LeaseSettings(), quota)
    keeper = LeaseKeeper(book, store, transport=None, offload=inline, wall_clock=lambda: START)
    refused = None
    for number in range(100):
        data = number.to_bytes(4, "big") * 8
        identifier = chunk_id(data)
        try:
            pending = keeper.begin_store(ALICE.node_id, "203.0.113.5", len(data), 1, identifier)
        except StoreFull as exc:
            refused = number
            assert "owner's reserve" in str(exc)
            break
        store.put(identifier, data, GroupRecord.single(identifier))
        keeper.end_store(pending, stored=True)
    assert refused == 80
    for number in range(20):
        data = b"own" + number.to_bytes(4, "big")
        identifier = chunk_id(data)
        pending = keeper.begin_store(OWNER.node_id, None, len(data), 1, identifier)
        store.put(identifier, data, GroupRecord.single(identifier))
        keeper.end_store(pending, stored=True)
    assert store.statistics().free_bytes == 0
