"""Sweeps: run every variant of a grid on the same seed (the same traffic) and find the frontier.

Each point is an independent run, so the grid goes to a process pool (spawn context: no inherited
state, the same on every platform) across the machine's cores; `workers=1` runs in this process. A
point's figures depend only on its scenario and the seed, never on which worker ran it or when, so a
sweep is reproducible: same seed, same table.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

from budget.domain.prices import PriceCatalog
from sim.io.progress import SILENT, Progress
from sim.model import engine
from sim.model.forecast import Summary, summarize
from sim.model.scenario import Scenario
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


def run_point(
    scenario: Scenario,
    catalog: PriceCatalog,
    mau: int,
    days: int,
    seed: int,
    on_phase: Callable[[str], object] | None = None,
) -> Summary:
    """Simulate one variant and summarize it (the unit of work a pool worker does)."""
    return summarize(engine.simulate(scenario, catalog, mau, days, seed, on_phase=on_phase))


def default_workers() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def run_sweep(
    scenario_name: str,
    variants: Sequence[Variant],
    mau: int,
    days: int,
    seed: int,
    workers: int | None = None,
    progress: Progress = SILENT,
) -> Sweep:
    """Run every variant at `mau` users for `days` days on `seed`; `progress` advances a point at a time."""
    summaries = run_points(variants, mau, days, seed, workers, progress)
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
        SweepPoint(variant.settings, _point_name(variant), summary, flag)
        for variant, summary, flag in zip(variants, summaries, on_frontier, strict=True)
    ]
    order = sorted(range(len(points)), key=lambda i: costs[i])
    return Sweep(scenario_name, seed, mau, days, keys, [points[i] for i in order])


def run_points(
    variants: Sequence[Variant],
    mau: int,
    days: int,
    seed: int,
    workers: int | None = None,
    progress: Progress = SILENT,
) -> list[Summary]:
    """Each variant's summary, in the variants' order, run on a pool of `workers` (default: the cores).

    `progress` advances as each point finishes and notes the point (in this process, also its phase).
    """
    workers = max(1, min(workers or default_workers(), len(variants)))
    results: list[Summary | None] = [None] * len(variants)
    if workers == 1:
        for index, variant in enumerate(variants):
            heard = _noting(progress, _point_name(variant))
            results[index] = run_point(variant.scenario, variant.catalog, mau, days, seed, heard)
            progress.advance()
    else:
        progress.note(f"{len(variants)} points on {workers} processes")
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = {
                pool.submit(run_point, v.scenario, v.catalog, mau, days, seed): index
                for index, v in enumerate(variants)
            }
            for future in as_completed(futures):
                index = futures[future]
                results[index] = future.result()
                progress.note(f"{_point_name(variants[index])} done")
                progress.advance()
    return [summary for summary in results if summary is not None]


def _point_name(variant: Variant) -> str:
    return variant.label() or "(base)"


def _noting(progress: Progress, point: str) -> Callable[[str], None]:
    return lambda phase: progress.note(f"{point}: {phase}")


def setting_columns(sweep: Sweep) -> list[str]:
    """Column titles for the varied keys (short where unambiguous)."""
    return short_names(list(sweep.keys))
