"""The file layer: putting files on the network, getting them back, checking them.

| module          | its job                                                        |
|-----------------|----------------------------------------------------------------|
| network         | `FileNetwork`, what the layer needs from the node; `FileSettings` |
| client          | `ChunkClient`, the one client of the chunk RPCs ("is it me?" too) |
| locate          | the placement rule, and asking who holds what (HAS_CHUNKS)     |
| placement       | `put_file`: encode, place each segment's chunks, the manifest  |
| segment_fetch   | `SegmentFetch`, the sans-I/O state machine of one segment's fetch |
| retrieval       | `get_file`: the manifest, then each segment, decoded in order  |
| checking        | `check_file`: which chunks holders prove they have (audits)    |
| repair          | `repair_file`: lost chunks rebuilt, no key, and placed anew     |
| leasing         | `send_lease`, `lease_file`: a file's lease to its holders      |

docs/PROTOCOL.md#placing-a-file and #finding-and-fetching-a-file say what goes on the
wire; each module's header says what it promises.
"""

from node.files.checking import FileReport, check_file
from node.files.client import ChunkClient, Fetched
from node.files.network import FileNetwork, FileSettings
from node.files.placement import put_file
from node.files.repair import RepairReport, repair_file
from node.files.retrieval import fetch_manifest, get_file
from node.files.segment_fetch import Guesses, SegmentFetch

__all__ = [
    "ChunkClient",
    "Fetched",
    "FileNetwork",
    "FileReport",
    "FileSettings",
    "Guesses",
    "RepairReport",
    "SegmentFetch",
    "check_file",
    "fetch_manifest",
    "get_file",
    "put_file",
    "repair_file",
]
