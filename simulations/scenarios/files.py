"""`files`: users put files, then nodes churn for good; what can still be read after
a day, and after a week? (No repair yet: the durability issue adds it.)

For each k-of-n code of `codes` ("3-10,5-10,2-6"), an uploader joins with that code
(segments of `segment_kib` KiB, happy = about 0.7 n) and puts `files` random files of
`file_kib` KiB. Then every node, uploaders included, lives for an exponentially
distributed time with median `median_lifetime_days` and is replaced by a fresh, empty
node when it dies. Right after the puts and at each of `check_days`, every file is
fetched whole from a random live node and compared with what was put: readable if it
comes back intact within `GET_TIMEOUT` (virtual seconds).

Next to that measurement, two references:

- `alive_%`: the files whose manifest and k chunks of every segment are still on live
  nodes (brute force over the nodes' stores): what a perfect lookup could read;
- `expected_%`: the expectation for the actual placement (which nodes took the
  manifest and each chunk) if every node is alive after t with probability
  2^(-t / median), independently (`TRIALS` random draws per file, from the seed).
  Holders are shared between the segments of a file, so this is not the product over
  segments of binomial tails.

`readable_%` below `alive_%` means data that is there but was not found.
`original_alive_%` is the share of the nodes there at the puts still alive: the one
draw of node survival that every file of the run shares (the files' holders overlap),
so `alive_%` can stray far from `expected_%` in one run.
"""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Final

import trio

from dht.errors import DhtError
from node.errors import NodeError, single_error
from node.files import fetch_manifest, get_file
from protocol.capability import ReadCapability
from protocol.errors import ProtocolError
from simulations.harness import SimNetwork, SimNode, memory_high_water_mib, open_network, put
from simulations.scenario import Plot, ScenarioOptions, ScenarioResult
from simulations.scenarios.probes import choose, mean, parse_list, percent
from simulations.scenarios.sessions import Sessions

__all__ = ["run_files"]

CODES: Final = "3-10,5-10,2-6"
FILES: Final = 10
QUICK_FILES: Final = 3
FILE_KIB: Final = 64
QUICK_FILE_KIB: Final = 32
SEGMENT_KIB: Final = 16
MEDIAN_LIFETIME_DAYS: Final = 7.0
QUICK_MEDIAN_LIFETIME_DAYS: Final = 0.125
CHECK_DAYS: Final = "1,7"
QUICK_CHECK_DAYS: Final = "0.05,0.125"
# Of n, the share of distinct nodes an upload needs (NodeConfig's default is 7 of 10).
HAPPY_SHARE: Final = 0.7
# Random draws of node survival per file for `expected_%`.
TRIALS: Final = 400
# A get still running after this long (virtual seconds) counts as unreadable.
GET_TIMEOUT: Final = 15 * 60.0
# What a get of a file the network lost raises.
UNREADABLE: Final = (NodeError, ProtocolError, DhtError)
# A node that fetches has at least this long left to live.
ASKER_MARGIN: Final = 2 * GET_TIMEOUT
DAY: Final = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class _Code:
    k: int
    n: int

    @property
    def name(self) -> str:
        return f"{self.k}-of-{self.n}"


@dataclass(frozen=True, slots=True)
class _Placement:
    manifest: frozenset[int]
    segments: list[list[frozenset[int]]]

    def readable(self, k: int) -> bool:
        """The manifest and k distinct chunks of every segment are held."""
        return bool(self.manifest) and all(
            sum(bool(holders) for holders in segment) >= k for segment in self.segments
        )


@dataclass(slots=True)
class _File:
    code: _Code
    capability: ReadCapability
    digest: bytes
    manifest_id: bytes
    segments: list[tuple[bytes, ...]]  # each segment's n chunk ids
    # Who held what at the first check: the nodes (by index) holding the manifest, and
    # each segment's chunks.
    placement: _Placement | None = None


def _parse_code(text: str) -> _Code:
    k, dash, n = text.partition("-")
    if not dash or not k.isdigit() or not n.isdigit() or not 1 <= int(k) <= int(n):
        raise ValueError(f"a code is K-N with 1 <= K <= N, e.g. 3-10; got {text!r}")
    return _Code(int(k), int(n))


def _placement(network: SimNetwork, file: _File) -> _Placement:
    """Which live nodes hold the manifest and each chunk (brute force over stores)."""
    stores = [
        (node.index, node.node.chunks.store)
        for node in network.alive()
        if node.node.chunks is not None
    ]

    def holders(chunk: bytes) -> frozenset[int]:
        return frozenset(index for index, store in stores if store.has(chunk))

    return _Placement(
        holders(file.manifest_id),
        [[holders(chunk) for chunk in segment] for segment in file.segments],
    )


def _expected(file: _File, k: int, alive: float) -> float:
    """P(readable) if each node of the first placement is alive with `alive`."""
    placement = file.placement
    assert placement is not None
    chunks = [holders for segment in placement.segments for holders in segment]
    nodes = sorted(placement.manifest.union(*chunks))
    rng = random.Random(int.from_bytes(file.manifest_id[:8], "big"))
    readable = 0
    for _ in range(TRIALS):
        living = {node for node in nodes if rng.random() < alive}
        readable += bool(placement.manifest & living) and all(
            sum(bool(holders & living) for holders in segment) >= k
            for segment in placement.segments
        )
    return readable / TRIALS


async def _put_all(
    network: SimNetwork,
    codes: list[_Code],
    count: int,
    size: int,
    segment_size: int,
    rng: random.Random,
) -> tuple[list[_File], dict[str, int]]:
    files: list[_File] = []
    failed: dict[str, int] = {}
    for code in codes:
        config = replace(
            network.node_config,
            k=code.k,
            n=code.n,
            happy=max(code.k, min(code.n, round(HAPPY_SHARE * code.n))),
            segment_size=segment_size,
        )
        uploader = await network.add_node(node_config=config)
        failed[code.name] = 0
        for number in range(count):
            data = rng.randbytes(size)
            try:
                assert uploader.node.files is not None
                capability = await put(uploader, data, name=f"{code.name}-{number}")
            except (NodeError, ProtocolError, DhtError):
                failed[code.name] += 1
                continue
            assert uploader.node.files is not None
            manifest = await fetch_manifest(uploader.node.files, capability.manifest_id)
            files.append(
                _File(
                    code,
                    capability,
                    hashlib.sha256(data).digest(),
                    capability.manifest_id,
                    [manifest.segment_chunk_ids(index) for index in range(manifest.segment_count)],
                )
            )
    return files, failed


async def _fetch_all(files: list[_File], getters: list[SimNode]) -> list[tuple[bool, str, float]]:
    """Get every file at once, each from its getter: (readable, why not, seconds)."""
    results: list[tuple[bool, str, float]] = [(False, "not run", 0.0)] * len(files)

    async def fetch(position: int, file: _File, getter: SimNode) -> None:
        began = trio.current_time()
        pieces: list[bytes] = []

        async def write(data: memoryview) -> None:
            pieces.append(bytes(data))

        outcome = (False, "timed out")
        with trio.move_on_after(GET_TIMEOUT):
            try:
                assert getter.node.files is not None
                await get_file(getter.node.files, file.capability, write)
            except Exception as exc:
                # get() can raise its gathering tasks' errors in a group.
                error = single_error(exc, UNREADABLE)
                if not isinstance(error, UNREADABLE):
                    raise
                outcome = (False, type(error).__name__)
            else:
                intact = hashlib.sha256(b"".join(pieces)).digest() == file.digest
                outcome = (intact, "" if intact else "wrong bytes")
        results[position] = (*outcome, trio.current_time() - began)

    async with trio.open_nursery() as nursery:
        for position, (file, getter) in enumerate(zip(files, getters, strict=True)):
            nursery.start_soon(fetch, position, file, getter)
    return results


async def _check(
    network: SimNetwork,
    sessions: Sessions,
    files: list[_File],
    original: list[SimNode],
    rng: random.Random,
    *,
    day: float,
    median_days: float,
) -> list[dict[str, Any]]:
    """One checkpoint: every file fetched, the census, the expectation; a row per code.
    `original`: the nodes there at the puts."""
    census = [_placement(network, file) for file in files]
    for file, placement in zip(files, census, strict=True):
        if file.placement is None:
            file.placement = placement
    getters = choose(rng, sessions.askers(), len(files))
    results = await _fetch_all(files, getters)
    alive = 0.5 ** (day / median_days)
    rows = []
    for code in dict.fromkeys(file.code for file in files):
        mine = [position for position, file in enumerate(files) if file.code == code]
        readable = sum(results[position][0] for position in mine)
        present = sum(census[position].readable(code.k) for position in mine)
        expected = [_expected(files[position], code.k, alive) for position in mine]
        failures: dict[str, int] = {}
        for position in mine:
            if not results[position][0]:
                reason = results[position][1]
                failures[reason] = failures.get(reason, 0) + 1
        rows.append(
            {
                "code": code.name,
                "day": day,
                "files": len(mine),
                "readable_%": percent(readable, len(mine)),
                "alive_%": percent(present, len(mine)),
                "expected_%": 100 * mean(expected),
                "original_alive_%": percent(sum(node.alive for node in original), len(original)),
                "replaced": sessions.deaths,
                "get_s": mean([results[position][2] for position in mine]),
                "failures": failures,
            }
        )
    return rows


async def run_files(options: ScenarioOptions) -> ScenarioResult:
    quick = options.quick
    codes = parse_list(options.get("codes", CODES), _parse_code)
    count = int(options.get("files", QUICK_FILES if quick else FILES))
    size = 1024 * int(options.get("file_kib", QUICK_FILE_KIB if quick else FILE_KIB))
    segment_size = 1024 * int(options.get("segment_kib", SEGMENT_KIB))
    median_days = float(
        options.get(
            "median_lifetime_days", QUICK_MEDIAN_LIFETIME_DAYS if quick else MEDIAN_LIFETIME_DAYS
        )
    )
    days = sorted(
        parse_list(options.get("check_days", QUICK_CHECK_DAYS if quick else CHECK_DAYS), float)
    )
    wall = time.perf_counter()
    rng = random.Random(options.seed ^ 0xF11E5)
    async with open_network(options.nodes, seed=options.seed) as network:
        join_wall = time.perf_counter() - wall
        files, put_failures = await _put_all(network, codes, count, size, segment_size, rng)
        sessions = Sessions(network, median_days * DAY, margin=ASKER_MARGIN)
        for node in network.alive():
            sessions.begin(node)
        started = trio.current_time()
        check = partial(
            _check, network, sessions, files, network.alive(), rng, median_days=median_days
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sessions.run, started + days[-1] * DAY)
            rows = await check(day=0.0)
            for day in days:
                await trio.sleep_until(started + day * DAY)
                rows.extend(await check(day=day))
    summary = [{key: value for key, value in row.items() if key != "failures"} for row in rows]
    plots = [
        Plot(
            "readable",
            f"Files readable without repair (median node lifetime {median_days:g} days)",
            "virtual days",
            "% of files",
            {
                f"{code.name} {label}": (
                    [row["day"] for row in rows if row["code"] == code.name],
                    [row[column] for row in rows if row["code"] == code.name],
                )
                for code in codes
                for label, column in (("read", "readable_%"), ("expected", "expected_%"))
            },
        )
    ]
    metrics = {
        "parameters": {
            "codes": [code.name for code in codes],
            "files": count,
            "file_bytes": size,
            "segment_bytes": segment_size,
            "median_lifetime_days": median_days,
            "check_days": days,
            "happy_share": HAPPY_SHARE,
            "expected_trials": TRIALS,
            "get_timeout_s": GET_TIMEOUT,
        },
        "put_failures": put_failures,
        "checks": rows,
        "files": [
            {
                "code": file.code.name,
                "segments": len(file.segments),
                "manifest_holders": len(file.placement.manifest) if file.placement else 0,
                "chunk_holders": [
                    [len(holders) for holders in segment]
                    for segment in (file.placement.segments if file.placement else [])
                ],
            }
            for file in files
        ],
        "deaths": sessions.deaths,
        "join_wall_s": join_wall,
    }
    return ScenarioResult(
        "files",
        options.seed,
        options.nodes,
        summary,
        metrics,
        plots,
        time.perf_counter() - wall,
        memory_high_water_mib(),
    )
