"""What a scenario takes and gives back, and how its results are written out.

A scenario is `async def run(options: ScenarioOptions) -> ScenarioResult`, run by
`python -m simulations` under trio's MockClock. Its result carries:

- `summary`: the rows of the table printed on stdout (every row has the same keys);
- `metrics`: everything measured, JSON-serialisable, written to `<out>/<name>.json`;
- `plots`: curves drawn to `<out>/<name>-<plot>.png` with matplotlib (the `sim` extra).

Every result records its seed, the wall time and the peak memory of the run. Two runs
with one seed give the same summary but for the wall-time and memory columns
(`MACHINE_COLUMNS`; simulations/harness.py says how).
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "MACHINE_COLUMNS",
    "Plot",
    "ScenarioOptions",
    "ScenarioResult",
    "format_table",
    "write_json",
    "write_plots",
]


# Summary columns that measure this machine (wall time, memory), not the simulation:
# they vary between runs of one seed.
MACHINE_COLUMNS = frozenset({"join_wall_s", "wall_s", "peak_mib"})


@dataclass(frozen=True)
class ScenarioOptions:
    nodes: int
    seed: int
    # Scenario-specific knobs (e.g. {"median_session_hours": 2.0}), with defaults in
    # each scenario.
    parameters: Mapping[str, Any] = field(default_factory=dict)
    # A smaller, faster run (the tests' version).
    quick: bool = False

    def get(self, name: str, default: Any) -> Any:
        return self.parameters.get(name, default)


@dataclass
class Plot:
    """One figure: named curves of (x, y) points."""

    name: str
    title: str
    x_label: str
    y_label: str
    curves: dict[str, tuple[list[float], list[float]]]


@dataclass
class ScenarioResult:
    name: str
    seed: int
    nodes: int
    summary: list[dict[str, Any]]
    metrics: dict[str, Any]
    plots: list[Plot] = field(default_factory=list)
    wall_seconds: float = 0.0
    peak_memory_mib: float = 0.0

    def summary_text(self) -> str:
        """The table as printed, with the seed, wall times and memory."""
        return f"{self.name}: seed {self.seed}, {self.nodes} nodes\n" + format_table(self.summary)

    def repeatable_summary(self) -> str:
        """The table without the columns of `MACHINE_COLUMNS`: what two runs of one
        seed print the same."""
        rows = [
            {key: value for key, value in row.items() if key not in MACHINE_COLUMNS}
            for row in self.summary
        ]
        return f"{self.name}: seed {self.seed}, {self.nodes} nodes\n" + format_table(rows)


Scenario = Callable[[ScenarioOptions], Awaitable[ScenarioResult]]


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-2):
            return f"{value:.3g}"
        return f"{value:.2f}"
    return str(value)


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return "(no rows)\n"
    columns = list(rows[0])
    cells = [[_cell(row.get(column, "")) for column in columns] for row in rows]
    widths = [
        max(len(column), *(len(line[index]) for line in cells))
        for index, column in enumerate(columns)
    ]
    lines = ["  ".join(column.rjust(width) for column, width in zip(columns, widths, strict=True))]
    for line in cells:
        lines.append("  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)))
    return "\n".join(lines) + "\n"


def write_json(result: ScenarioResult, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{result.name}.json"
    document = {
        "scenario": result.name,
        "seed": result.seed,
        "nodes": result.nodes,
        "wall_seconds": result.wall_seconds,
        "peak_memory_mib": result.peak_memory_mib,
        "summary": result.summary,
        "metrics": result.metrics,
        "plots": [asdict(plot) for plot in result.plots],
    }
    text = json.dumps(_without_nan(document), indent=1, sort_keys=True, allow_nan=False)
    path.write_text(text + "\n")
    return path


def _without_nan(value: Any) -> Any:
    """`value` with every NaN (a measurement with no samples) as None: JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _without_nan(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_without_nan(item) for item in value]
    return value


def write_plots(result: ScenarioResult, directory: Path) -> list[Path]:
    """One PNG per plot; raises ImportError (with the fix) without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plots need matplotlib: pip install -e '.[sim]'") from None
    matplotlib.use("Agg")
    from matplotlib import pyplot

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for plot in result.plots:
        figure, axes = pyplot.subplots(figsize=(7, 4.2))
        for label, (xs, ys) in plot.curves.items():
            axes.plot(xs, ys, marker="o" if len(xs) < 30 else None, label=label)
        axes.set_title(f"{plot.title} (seed {result.seed})")
        axes.set_xlabel(plot.x_label)
        axes.set_ylabel(plot.y_label)
        axes.grid(True, alpha=0.3)
        if len(plot.curves) > 1:
            axes.legend()
        figure.tight_layout()
        path = directory / f"{result.name}-{plot.name}.png"
        figure.savefig(path, dpi=100)
        pyplot.close(figure)
        written.append(path)
    return written
