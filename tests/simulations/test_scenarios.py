"""Small, fast versions of every scenario of `python -m simulations`, and the invariants
they must keep: with no churn every lookup is exact, nothing dead is ever returned, a
file just put can be read back, the same seed prints the same summary.

Each scenario runs in its own `trio.run` under MockClock (`run_scenario`), so these
tests are plain functions, not trio tests. Results shared by several tests are computed
once per module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from simulations.__main__ import run_scenario
from simulations.scenario import ScenarioOptions, ScenarioResult

ROOT = Path(__file__).resolve().parents[2]


def run(name: str, nodes: int, seed: int = 1, **parameters: Any) -> ScenarioResult:
    result = run_scenario(name, ScenarioOptions(nodes, seed, parameters, quick=True))
    assert isinstance(result, ScenarioResult)
    return result


@pytest.fixture(scope="module")
def lookup() -> ScenarioResult:
    return run("lookup", 30)


@pytest.fixture(scope="module")
def churn() -> ScenarioResult:
    return run("churn", 20)


def test_lookups_without_churn_find_the_true_closest(lookup: ScenarioResult) -> None:
    """On a network that does not change, every lookup returns the true k closest."""
    (row,) = lookup.summary
    assert row["nodes"] == 30
    assert row["exact_%"] == 100.0
    assert row["rpcs"] > 0
    assert 0 < row["p50_ms"] <= row["p99_ms"]


def test_lookup_same_seed_same_summary(lookup: ScenarioResult) -> None:
    """A second run of one seed prints the same summary."""
    assert run("lookup", 30).repeatable_summary() == lookup.repeatable_summary()


def test_churn_without_departures_keeps_every_lookup_exact() -> None:
    """With sessions far longer than the run, lookups, provider lookups and routing
    tables stay perfect."""
    result = run("churn", 20, median_session_hours=1e6, hours=0.5, measure_minutes=15)
    assert [row["hour"] for row in result.summary] == [0, 1]
    for row in result.summary:
        assert row["joins"] == 0
        assert row["exact_%"] == 100.0
        assert row["provider_%"] == 100.0
        assert row["live_contacts_%"] == 100.0


def test_churn_keeps_the_network_size(churn: ScenarioResult) -> None:
    """Every node that leaves is replaced, and dead contacts show in routing tables."""
    first, *_, last = churn.summary
    assert all(row["live"] == 20 for row in churn.summary)
    assert first["exact_%"] == 100.0
    assert first["provider_%"] == 100.0
    assert last["joins"] == churn.metrics["joins"] == churn.metrics["deaths"] > 0
    assert last["live_contacts_%"] < 100.0
    assert {plot.name for plot in churn.plots} == {"success", "routing", "key-age"}


def test_churn_same_seed_same_summary(churn: ScenarioResult) -> None:
    """Churn (a task killing and adding nodes while lookups run) replays from its seed."""
    assert run("churn", 20).repeatable_summary() == churn.repeatable_summary()


def test_failure_loses_no_lookup_before_and_returns_no_dead_node() -> None:
    """Before the failure every lookup is exact; after it, the failed nodes are gone
    from every lookup's result."""
    result = run("failure", 30, fraction=0.25)
    (row,) = result.summary
    assert row["killed"] == round(0.25 * 30)
    assert row["exact_before_%"] == 100.0
    assert row["provider_before_%"] == 100.0
    (details,) = result.metrics["runs"]
    assert details["before"]["dead_in_results"] == 0
    assert all(tick["dead_in_results"] == 0 for tick in details["after"])
    assert len(details["after"]) == 5 * 60 // 30 + 1
    assert row["live_contacts_end_%"] <= 100.0


def test_files_just_put_are_readable() -> None:
    """Right after the puts every file reads back intact, and no file reads back once
    its chunks are gone from the live nodes."""
    result = run("files", 20)
    codes = {row["code"] for row in result.summary}
    assert codes == {"3-of-10", "5-of-10", "2-of-6"}
    for row in result.summary:
        assert row["files"] == 3
        assert row["readable_%"] <= row["alive_%"]
        if row["day"] == 0:
            assert row["readable_%"] == row["alive_%"] == row["expected_%"] == 100.0
    assert result.metrics["deaths"] > 0


def test_eclipse_without_sybils_finds_everyone() -> None:
    """With no Sybils every honest lookup finds all of the true k closest, over one path
    or four; with them, Sybils show up in results, and never more of them than exist;
    four disjoint paths cost more queries per lookup than one where there is more than
    one window of nodes to ask (not among Sybils that cut most of the network off)."""
    result = run("eclipse", 30, fraction="0,0.3", paths="1,4")
    rows = {(row["paths"], row["fraction"]): row for row in result.summary}
    assert sorted(rows) == [(1, 0.0), (1, 0.3), (4, 0.0), (4, 0.3)]
    for paths in (1, 4):
        clean, attacked = rows[paths, 0.0], rows[paths, 0.3]
        assert clean["sybils"] == 0
        assert clean["honest_found_%"] == clean["recall_%"] == clean["provider_%"] == 100.0
        assert clean["sybil_share_%"] == 0.0
        assert attacked["sybils"] == 9
        assert 0.0 < attacked["sybil_share_%"] <= 100.0
        assert attacked["recall_%"] <= 100.0
    assert 0 < rows[1, 0.0]["rpcs_per_lookup"] < rows[4, 0.0]["rpcs_per_lookup"]
    assert 0 < rows[1, 0.3]["rpcs_per_lookup"] <= rows[4, 0.3]["rpcs_per_lookup"]


def test_durability_keeps_every_file_through_departures_and_outages() -> None:
    """Twelve days of churn (five departures for good, 150 outages): both thresholds
    keep every file, read back whole at the end; both configurations saw the same
    churn; the higher threshold repairs, the lower never reaches its own, and repair
    traffic is compared with the oracle's."""
    low, high = run("durability", 30).summary
    assert (low["threshold"], high["threshold"]) == (5, 8)
    for row in (low, high):
        assert row["files"] == 3
        assert row["lost"] == 0
        assert row["read_%"] == 100.0
        assert row["departures"] >= 3
        assert row["outages"] > 50
        assert row["min_live"] >= 3
        assert row["oracle_MiB"] > 0
    assert (low["departures"], low["outages"]) == (high["departures"], high["outages"])
    assert high["rebuilt"] > 0 and high["repair_MiB"] > 0
    assert high["ratio"] > 0
    assert low["repair_MiB"] <= high["repair_MiB"]


def test_abuse_quotas_keep_honest_puts_going_and_expiry_frees_the_space() -> None:
    """An attacker with four identities in one /24 puts large files for four days. With
    quotas every honest put succeeds and the attacker keeps at most its prefix's share of
    any node; without them (the baseline, same run) honest puts fail. Once the attacker
    is gone its space comes back within its lease plus the grace."""
    on, off = run("abuse", 12).summary
    assert (on["quotas"], off["quotas"]) == ("on", "off")
    assert on["honest_ok_%"] == 100.0
    assert on["attacker_max_%"] <= 25.0 + 2.0  # the share, and a chunk's rounding
    assert off["honest_ok_%"] < 100.0
    assert off["attacker_MiB"] > 2 * on["attacker_MiB"]
    for row in (on, off):
        assert row["freed_after_days"] <= row["expected_days"] + 1


def test_command_line_writes_json_and_plots(tmp_path: Path) -> None:
    """`python -m simulations lookup --out DIR` prints the seed and the table and writes
    the JSON of every metric and a PNG per plot."""
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONHASHSEED"}
    command = ["lookup", "--nodes", "30", "--quick", "--seed", "7", "--out", str(tmp_path)]
    completed = subprocess.run(
        [sys.executable, "-m", "simulations", *command],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "seed 7" in completed.stdout
    assert "exact_%" in completed.stdout
    document = json.loads((tmp_path / "lookup.json").read_text())
    assert document["scenario"] == "lookup"
    assert document["seed"] == 7
    assert document["summary"][0]["exact_%"] == 100.0
    for name in ("scaling", "latency"):
        png = tmp_path / f"lookup-{name}.png"
        assert png.read_bytes().startswith(b"\x89PNG")
