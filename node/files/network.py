"""What the file layer needs from the node: its collaborators and the owner's settings.

The node builds one `FileNetwork` (node/node.py) and passes it to `put_file`,
`get_file` and `check_file`; tests and simulations build their own from the same
parts. Nothing in the file layer reaches for anything else of the node.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import nacl.utils

from dht.service import DhtService
from node.chunks import Offload, in_thread
from node.errors import ConfigError
from node.files.client import ChunkClient
from node.liars import Liars
from protocol.aead import TAG_SIZE
from protocol.chunk import MAX_CHUNK_SIZE
from protocol.encoding import Parity, zfec_parity
from protocol.identity import RandomBytes
from protocol.manifest import EncodingParams
from protocol.manifest_index import MANIFEST_PART_SIZE

__all__ = ["FileNetwork", "FileSettings", "RepairCounters"]


@dataclass(frozen=True, slots=True, kw_only=True)
class FileSettings:
    """How this node's owner puts files: the code, how many distinct nodes must take
    shares of an upload (`happy`, checked against n by `NodeConfig`) for it to count as
    placed, and the size of a large manifest's parts."""

    params: EncodingParams
    happy: int
    manifest_part_size: int = MANIFEST_PART_SIZE
    """A manifest over this many bytes is stored in parts of this size, named by a
    manifest index (protocol/manifest_index.py)."""

    def __post_init__(self) -> None:
        params = self.params
        chunk = -(-(params.segment_size + TAG_SIZE) // params.k)
        if chunk > MAX_CHUNK_SIZE:
            raise ConfigError(
                f"segment_size {params.segment_size} with k = {params.k} makes chunks of "
                f"{chunk} bytes, over the {MAX_CHUNK_SIZE} a chunk may have: use a smaller "
                "segment size or a larger k"
            )
        if not 1 <= self.manifest_part_size <= MAX_CHUNK_SIZE:
            raise ConfigError(
                f"manifest_part_size = {self.manifest_part_size} is outside 1..{MAX_CHUNK_SIZE}"
            )


@dataclass(slots=True)
class RepairCounters:
    """What repairs did on this node since it started (`freehold status`)."""

    segments_checked: int = 0
    audits_failed: int = 0
    """Audits of a held segment that could not be made (no lookup, no answers)."""
    chunks_proven: int = 0
    chunks_unproven: int = 0
    """Chunks of audited segments that no holder proved (missing, or lied about)."""
    segments_repaired: int = 0
    chunks_rebuilt: int = 0
    bytes_moved: int = 0
    """Chunk bytes fetched and stored by repairs."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FileNetwork:
    """The file layer's collaborators."""

    client: ChunkClient
    """Every chunk request, this node's own store included."""
    dht: DhtService
    """Lookups and provider records."""
    settings: FileSettings
    codec: Offload = in_thread
    """Where encoding, decoding and hashing run: `in_thread`, or `inline` (simulations:
    a worker thread's real time would let trio's MockClock jump past every timeout)."""
    random_bytes: RandomBytes = nacl.utils.random
    """File keys and nonce prefixes."""
    parity: Parity = zfec_parity
    """The parity blocks: node/isal.py's `best_parity()` in a node."""
    liars: Liars = field(default_factory=Liars)
    """Peers caught lying: avoided for fetches and placements (node/liars.py)."""
    repairs: RepairCounters = field(default_factory=RepairCounters)
    """What repairs moved, for `status`."""
