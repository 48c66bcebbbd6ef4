"""Sweeps: run every variant of a grid on the same seed (the same traffic) and find the frontier.

Each point is an independent run, so the grid goes where sim.workbench.executor sends it: a process
pool across the machine's cores (`workers=1` runs in this process) or a Dask cluster. A point's figures
depend only on its scenario and the seed, never on which worker ran it or when, so a sweep is
reproducible: same seed, same table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sim.io.progress import SILENT, Progress
from sim.model.forecast import Summary
from sim.workbench.executor import Cluster, point_name, run_points
from sim.workbench.frontier import pareto_frontier
from sim.workbench.variants import Scalar, Variant, short_names


@dataclass(frozen=True, slots=True)
class SweepPoint:
    """One variant's settings and figures, and whether it is on the cost-quality frontier."""

    settings: tuple[tuple[str, Scalar], ...]
    label: str
    summary: Summary
    on_frontier: bool

    @property
    def cost(self) -> float:
        """Mean cost per user-month (USD): the axis the frontier and the table sort on."""
        return float(self.summary["cost_per_user_month_usd"]["mean"])

    @property
    def p90(self) -> float:
        """The 90th-percentile user's month (USD): what goal seek holds under a limit."""
        return float(self.summary["cost_per_user_month_usd"]["p90"])

    @property
    def quality(self) -> float:
        return float(self.summary["quality"])

    def to_json(self) -> dict[str, Any]:
        return {
            "settings": dict(self.settings),
            "label": self.label,
            "on_frontier": self.on_frontier,
            "cost_per_user_month_usd": self.summary["cost_per_user_month_usd"],
            "quality": self.quality,
            "figures": self.summary,
        }


@dataclass(frozen=True, slots=True)
class Sweep:
    """A whole sweep: its points sorted by mean cost per user-month (cheapest first)."""

    scenario: str
    seed: int
    mau: int
    days: int
    keys: tuple[str, ...]
    points: list[SweepPoint]

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "seed": self.seed,
            "mau": self.mau,
            "days": self.days,
            "varied": list(self.keys),
            "points": [point.to_json() for point in self.points],
        }

    @property
    def frontier(self) -> list[SweepPoint]:
        """The frontier points, cheapest first."""
        return [point for point in self.points if point.on_frontier]


def run_sweep(
    scenario_name: str,
    variants: Sequence[Variant],
    mau: int,
    days: int,
    seed: int,
    workers: int | None = None,
    progress: Progress = SILENT,
    cluster: Cluster | None = None,
) -> Sweep:
    """Run every variant at `mau` users for `days` days on `seed` -- on `cluster` when given, else on
    `workers` local processes; `progress` advances a point at a time."""
    summaries = run_points(variants, mau, days, seed, workers, progress, cluster)
    return assemble(scenario_name, variants, summaries, mau, days, seed)


def assemble(
    scenario_name: str,
    variants: Sequence[Variant],
    summaries: Sequence[Summary],
    mau: int,
    days: int,
    seed: int,
) -> Sweep:
    """Mark the frontier and sort by cost (stable: equal costs keep grid order)."""
    keys = tuple(key for key, _ in variants[0].settings) if variants else ()
    costs = [float(s["cost_per_user_month_usd"]["mean"]) for s in summaries]
    on_frontier = pareto_frontier(costs, [float(s["quality"]) for s in summaries])
    points = [
        SweepPoint(variant.settings, point_name(variant), summary, flag)
        for variant, summary, flag in zip(variants, summaries, on_frontier, strict=True)
    ]
    order = sorted(range(len(points)), key=lambda i: costs[i])
    return Sweep(scenario_name, seed, mau, days, keys, [points[i] for i in order])


def setting_columns(sweep: Sweep) -> list[str]:
    """Column titles for the varied keys (short where unambiguous)."""
    return short_names(list(sweep.keys))
