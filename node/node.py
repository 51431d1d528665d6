"""The node: the composition root that `freehold node` runs.

One trio loop; each service is a task of the node's nursery, started in order with
`nursery.start` (transport, DHT, chunk service, joining, control socket) and stopped
together on cancellation (SIGINT, SIGTERM or `freehold stop`). What a node is made of
comes from `NodeConfig`, and the parts a test or a simulation swaps (link layer, chunk
store, DHT database) are constructor parameters: nothing below knows whether it runs on
TCP or in memory.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import nacl.utils
import trio

from dht.config import DhtConfig
from dht.contact import Contact
from dht.errors import DhtError
from dht.service import DhtService
from dht.storage import DhtStorage
from node.chunks import ChunkService, in_thread, inline
from node.config import NodeConfig
from node.control import ControlChannel, ControlServer, check_socket_path, regular_file
from node.dht_transport import DhtTransportAdapter
from node.errors import NodeError
from node.files import FileNetwork, check_file, get_file, put_file
from node.isal import best_parity
from node.keyfile import load_or_create_identity
from node.store import ChunkStore, MemoryChunkStore, StoreConfig, open_chunk_store
from node.transport import LinkLayer, TcpLinkLayer, Transport
from node.writeback import StreamingWriter
from protocol.capability import ReadCapability, VerifyCapability, parse_capability
from protocol.identity import Identity, RandomBytes
from protocol.manifest import EncodingParams, FileInfo

__all__ = ["ADDRESS_FILE", "Node", "is_loopback"]

# Where a node with a control socket writes the HOST:PORT it listens on, once serving
# (node/testnet.py reads it to learn ports the kernel chose).
ADDRESS_FILE: Final = "node.address"

logger = logging.getLogger(__name__)

JOIN_RETRY_INITIAL: Final = 1.0
JOIN_RETRY_MAX: Final = 60.0


def _received_file(fd: int, mode: str) -> Any:
    """The file object of a descriptor the CLI sent (unbuffered: the node's writes land
    in the file as they are made); NodeError, closing it, unless it is a regular file."""
    if not regular_file(fd):
        os.close(fd)
        raise NodeError("the node reads and writes only regular files by descriptor")
    return open(fd, mode, buffering=0)


@contextmanager
def _user_file_errors(doing: str) -> Iterator[None]:
    """An OSError of the file the CLI handed over (a full disk, a quota, a bad sector)
    becomes NodeError: the CLI's one line, not a node bug with a traceback."""
    try:
        yield
    except OSError as exc:
        raise NodeError(f"cannot {doing}: {exc.strerror or exc}") from None


def _write_all(writer: StreamingWriter, data: memoryview) -> None:
    """Write all of `data` to the CLI's output file."""
    with _user_file_errors("write the output"):
        writer.write(data)


class _UserFile:
    """The file the CLI handed over for a put, as the encoder reads it."""

    def __init__(self, file: Any) -> None:
        self._file = file

    def readinto(self, buffer: Any) -> int | None:
        with _user_file_errors("read the file"):
            got: int | None = self._file.readinto(buffer)
        return got

    def read(self, size: int = -1) -> bytes:
        with _user_file_errors("read the file"):
            data: bytes = self._file.read(size)
        return data


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


class Node:
    """A Freehold node: storage for the network, and put/get for its owner."""

    def __init__(
        self,
        config: NodeConfig,
        *,
        identity: Identity | None = None,
        link_layer: LinkLayer | None = None,
        store: ChunkStore | None = None,
        dht_storage: DhtStorage | None = None,
        control: bool = True,
        rng: random.Random | None = None,
        random_bytes: RandomBytes = nacl.utils.random,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """`identity`, `link_layer`, `store` and `dht_storage` replace what `config`
        would make; `rng` (the DHT's choices), `random_bytes` (file keys) and
        `wall_clock` (record lifetimes) are the simulations' hooks for repeatable runs
        in virtual time."""
        self.config = config
        self._rng = rng
        self._random_bytes = random_bytes
        self._wall_clock = wall_clock
        self._identity = identity
        self._link_layer = link_layer
        self._store = store
        self._dht_storage = dht_storage
        self._control = control
        self._cancel_scope = trio.CancelScope()
        self.transport: Transport | None = None
        self.dht: DhtService | None = None
        self.chunks: ChunkService | None = None
        self.files: FileNetwork | None = None
        self.joined = trio.Event()

    # -- lifecycle --------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled or stopped; started() once listening and serving."""
        config = self.config
        in_memory = config.storage == "memory"
        if self._control and config.storage == "disk":
            check_socket_path(config.control_path)  # before anything is made or logged
        identity = self._identity
        if identity is None:
            if in_memory:
                raise NodeError("a node with storage = memory needs its identity given")
            config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            identity = load_or_create_identity(config.key_path)
        store: ChunkStore
        store_config = StoreConfig(capacity=config.capacity, in_memory=in_memory)
        if self._store is not None:
            store = self._store
        elif in_memory:
            store = MemoryChunkStore(store_config)
        else:
            store = await trio.to_thread.run_sync(open_chunk_store, config.data_dir, store_config)
        dht_storage = self._dht_storage
        if dht_storage is None and not in_memory:
            dht_storage = DhtStorage.open(config.data_dir / "dht.sqlite3")
        executor = (
            ThreadPoolExecutor(config.workers, thread_name_prefix="freehold-codec")
            if config.workers
            else None
        )
        try:
            with self._cancel_scope:
                await self._serve(identity, store, dht_storage, executor, task_status)
        finally:
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)
            if self._store is None:
                store.close()
            if self._dht_storage is None and dht_storage is not None:
                dht_storage.close()

    async def _serve(
        self,
        identity: Identity,
        store: ChunkStore,
        dht_storage: DhtStorage | None,
        executor: ThreadPoolExecutor | None,
        task_status: trio.TaskStatus[None],
    ) -> None:
        config = self.config
        link_layer = self._link_layer or TcpLinkLayer(identity)
        transport = Transport(identity, link_layer, listen_address=config.listen)
        async with trio.open_nursery() as nursery:
            try:
                await nursery.start(transport.run)
            except* OSError as group:  # an unknown host, an address in use or not ours
                host, port = config.listen
                reason = "; ".join(
                    str(getattr(exc, "strerror", None) or exc) for exc in group.exceptions
                )
                raise NodeError(f"cannot listen on {host}:{port}: {reason}") from None
            address = transport.address
            assert address is not None
            dht_config = DhtConfig()
            if is_loopback(address[0]):
                # Every peer of a loopback node shares 127.0.0.0/24: the per-prefix
                # Sybil limits would keep all but a few out of its table.
                dht_config = DhtConfig(
                    ip_prefix_limit_per_bucket=None, ip_prefix_limit_per_table=None
                )
            dht = DhtService(
                DhtTransportAdapter(transport),
                listen_port=address[1],
                config=dht_config,
                storage=dht_storage,
                rng=self._rng,
                wall_clock=self._wall_clock,
            )
            offload = in_thread if executor is not None else inline
            chunks = ChunkService(store, transport, dht.provide, offload=offload)
            await nursery.start(dht.run)
            await nursery.start(chunks.run)
            own = Contact(identity.node_id, address) if config.capacity > 0 else None
            self.transport, self.dht, self.chunks = transport, dht, chunks
            self.files = FileNetwork(
                transport,
                dht,
                chunks,
                own,
                executor,
                EncodingParams(config.k, config.n, config.segment_size),
                config.happy,
                offload,
                self._random_bytes,
                best_parity(),
            )
            if config.bootstrap:
                nursery.start_soon(self._join)
            else:
                self.joined.set()
            if self._control and self.config.storage == "disk":
                control = ControlServer(config.control_path, self._handlers())
                await nursery.start(control.run)
                _write_atomically(config.data_dir / ADDRESS_FILE, f"{address[0]}:{address[1]}\n")
            logger.info(
                "node %s listening on %s:%d, data in %s",
                identity.node_id.hex()[:16],
                *address,
                config.data_dir,
            )
            task_status.started()

    def stop(self) -> None:
        self._cancel_scope.cancel()

    async def _join(self) -> None:
        """Bootstrap through the configured addresses, retrying with backoff until one
        answers (a testnet's nodes start in any order)."""
        assert self.dht is not None
        delay = JOIN_RETRY_INITIAL
        while True:
            try:
                contacts = await self.dht.bootstrap(self.config.bootstrap)
            except DhtError as exc:
                logger.warning("joining failed (%s); trying again in %.0f s", exc, delay)
                await trio.sleep(delay)
                delay = min(delay * 2, JOIN_RETRY_MAX)
                continue
            logger.info("joined the network: %d contacts", contacts)
            self.joined.set()
            return

    # -- the owner's operations -------------------------------------------------------

    def _network(self) -> FileNetwork:
        if self.files is None:
            raise NodeError("the node is not running")
        return self.files

    async def put(
        self, source: Any, *, size: int, name: str = "", progress: Any = None
    ) -> ReadCapability:
        return await put_file(self._network(), source, size=size, name=name, progress=progress)

    async def get(
        self, capability: ReadCapability, write: Any, *, progress: Any = None
    ) -> FileInfo:
        return await get_file(self._network(), capability, write, progress=progress)

    def status(self) -> dict[str, Any]:
        transport, dht, chunks = self.transport, self.dht, self.chunks
        if transport is None or dht is None or chunks is None:
            raise NodeError("the node is not running")
        statistics = chunks.store.statistics()
        address = transport.address
        return {
            "node_id": transport.node_id.hex(),
            "listen": f"{address[0]}:{address[1]}" if address else None,
            "data_dir": str(self.config.data_dir),
            "contacts": len(dht.routing),
            "connections": len(transport.connected_peers()),
            "chunks": statistics.chunks,
            "used_bytes": statistics.used_bytes,
            "capacity": statistics.capacity,
            "free_bytes": statistics.free_bytes,
            "chunks_served": chunks.served,
            "chunks_stored": chunks.stored,
            "announcements_pending": chunks.announcements_pending,
        }

    def peers(self) -> list[dict[str, Any]]:
        transport, dht = self.transport, self.dht
        if transport is None or dht is None:
            raise NodeError("the node is not running")
        connected = {peer.node_id for peer in transport.connected_peers()}
        return [
            {
                "node_id": contact.node_id.hex(),
                "address": f"{contact.address[0]}:{contact.address[1]}",
                "connected": contact.node_id in connected,
            }
            for contact in dht.routing.contacts()
        ]

    # -- the control socket -----------------------------------------------------------

    def _handlers(self) -> Mapping[str, Any]:
        return {
            "put": self._control_put,
            "get": self._control_get,
            "check": self._control_check,
            "status": self._control_status,
            "peers": self._control_peers,
            "stop": self._control_stop,
        }

    async def _control_put(
        self, channel: ControlChannel, arguments: dict[str, Any]
    ) -> Mapping[str, Any]:
        size = arguments.get("size")
        name = arguments.get("name", "")
        if not isinstance(size, int) or size < 0 or not isinstance(name, str):
            raise NodeError("put needs a size (bytes) and a name")
        started = trio.current_time()

        async def progress(done: int, total: int) -> None:
            await channel.progress(done, total)

        if arguments.get("fd") is True:
            with _received_file(await channel.receive_fd(), "rb") as source:
                size = os.fstat(source.fileno()).st_size
                capability = await self.put(
                    _UserFile(source), size=size, name=name, progress=progress
                )
        else:
            stream = channel.receive_stream()
            token = trio.lowlevel.current_trio_token()

            def blocks() -> Iterator[bytes]:
                while True:
                    try:
                        yield trio.from_thread.run(_next_or_none, stream, trio_token=token)
                    except _EndOfStream:
                        return

            capability = await self.put(blocks(), size=size, name=name, progress=progress)
        return {
            "capability": str(capability),
            "size": size,
            "seconds": trio.current_time() - started,
        }

    async def _control_get(
        self, channel: ControlChannel, arguments: dict[str, Any]
    ) -> Mapping[str, Any]:
        capability = _read_capability(arguments.get("capability"))
        started = trio.current_time()

        async def progress(done: int, total: int) -> None:
            await channel.progress(done, total)

        if arguments.get("fd") is True:
            with _received_file(await channel.receive_fd(), "wb") as output:
                writer = StreamingWriter(output)

                async def write_file(data: memoryview) -> None:
                    await trio.to_thread.run_sync(_write_all, writer, data)

                info = await self.get(capability, write_file, progress=progress)
        else:
            info = await self.get(capability, channel.send_data, progress=progress)
        return {"name": info.name, "size": info.size, "seconds": trio.current_time() - started}

    async def _control_check(
        self, channel: ControlChannel, arguments: dict[str, Any]
    ) -> Mapping[str, Any]:
        text = arguments.get("capability")
        if not isinstance(text, str):
            raise NodeError("check needs a capability")
        capability = parse_capability(text)
        report = await check_file(self._network(), capability)
        return {
            "k": report.k,
            "n": report.n,
            "manifest_holders": report.manifest_holders,
            "live_chunks": list(report.live_chunks),
            "readable": report.readable,
            "healthy": report.healthy,
        }

    async def _control_status(
        self, channel: ControlChannel, arguments: dict[str, Any]
    ) -> Mapping[str, Any]:
        return self.status()

    async def _control_peers(
        self, channel: ControlChannel, arguments: dict[str, Any]
    ) -> Mapping[str, Any]:
        return {"peers": self.peers()}

    async def _control_stop(
        self, channel: ControlChannel, arguments: dict[str, Any]
    ) -> Mapping[str, Any]:
        # The answer goes out first; then the whole node stops (this task with it).
        await channel.send({"result": {"stopping": True}})
        self.stop()
        await trio.lowlevel.checkpoint()
        return {"stopping": True}


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


class _EndOfStream(Exception):
    pass


async def _next_or_none(stream: AsyncIterator[bytes]) -> bytes:
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        raise _EndOfStream from None


def _read_capability(text: object) -> ReadCapability:
    if not isinstance(text, str):
        raise NodeError("get needs a capability")
    capability = parse_capability(text)
    if isinstance(capability, VerifyCapability):
        raise NodeError(
            "this is a verify capability: it can check and repair the file but not read "
            "it; get needs the read capability (with the #key part)"
        )
    return capability
