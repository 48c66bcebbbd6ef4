"""Where the money goes: what each lever saves (the same scenario with that lever off, same seed) and
what each model costs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import msgspec
import numpy as np

from sim.io.progress import SILENT, Progress
from sim.model.caps import sum_by
from sim.model.forecast import USD_PER_NANO, Months, Summary
from sim.model.run import RunResult
from sim.model.scenario import Scenario
from sim.workbench.executor import Cluster, run_points
from sim.workbench.variants import Scalar, variant_of


@dataclass(frozen=True, slots=True)
class Lever:
    """A cost lever: whether a scenario uses it, and the settings that turn it off."""

    name: str
    is_on: Callable[[Scenario], bool]
    off: Callable[[Scenario], tuple[tuple[str, Scalar], ...]]


LEVERS: tuple[Lever, ...] = (
    Lever("exact cache", lambda s: s.cache.exact.enabled, lambda s: (("cache.exact.enabled", False),)),
    Lever(
        "semantic cache", lambda s: s.cache.semantic.enabled, lambda s: (("cache.semantic.enabled", False),)
    ),
    Lever(
        "fragment cache", lambda s: s.cache.fragment.enabled, lambda s: (("cache.fragment.enabled", False),)
    ),
    Lever(
        "router",
        lambda s: s.router.enabled,
        lambda s: (("router.enabled", False), ("router.model", s.router.expensive_model)),
    ),
    Lever(
        "cost-aware retry",
        lambda s: s.retry.policy == "cost-aware",
        lambda s: (("retry.policy", "sdk-default"),),
    ),
    Lever("streaming", lambda s: s.streaming.enabled, lambda s: (("streaming.enabled", False),)),
)


@dataclass(frozen=True, slots=True)
class LeverEffect:
    """A lever's effect: the scenario's figures against the same scenario with only that lever off."""

    lever: str
    without: Summary
    with_lever: Summary

    @property
    def saved_usd(self) -> float:
        """Monthly spend the lever saves (USD; negative when it costs more)."""
        return float(self.without["cost_usd"] - self.with_lever["cost_usd"])

    @property
    def saved_share(self) -> float:
        before = float(self.without["cost_usd"])
        return self.saved_usd / before if before else 0.0

    @property
    def quality_change(self) -> float:
        return float(self.with_lever["quality"] - self.without["quality"])


def levers_used(scenario: Scenario) -> list[Lever]:
    """The cost levers `scenario` turns on."""
    return [lever for lever in LEVERS if lever.is_on(scenario)]


def lever_effects(
    scenario: Scenario,
    summary: Summary,
    mau: int,
    days: int,
    seed: int,
    workers: int | None = None,
    progress: Progress = SILENT,
    cluster: Cluster | None = None,
) -> list[LeverEffect]:
    """For each lever the scenario uses: its figures with that lever off, run in parallel on `seed` --
    on `cluster` when given, else on `workers` local processes (`progress` advances a lever at a time)."""
    used = levers_used(scenario)
    table = msgspec.to_builtins(scenario)
    variants = [
        variant_of(table, lever.off(scenario), f"{scenario.name} without {lever.name}") for lever in used
    ]
    summaries = run_points(variants, mau, days, seed, workers, progress, cluster)
    return [LeverEffect(lever.name, off, summary) for lever, off in zip(used, summaries, strict=True)]


def cost_by_model(run: RunResult) -> dict[str, float]:
    """Monthly spend (USD) per model, from the run's billed attempts: the mean over the run's complete
    months, or extrapolated from a partial one (as the forecast's monthly cost)."""
    months = Months.of(run)
    model = run.attempts.column("model").astype(np.int64)
    cost = run.attempts.column("cost_nanos").astype(np.int64)
    period = months.of_request[run.traffic.call_request[run.attempts.column("call").astype(np.int64)]]
    return {
        name: months.monthly_total(sum_by(period[model == index], cost[model == index], len(months.periods)))
        for index, name in enumerate(run.models)
    }


def user_month_costs(run: RunResult) -> np.ndarray:
    """The spend of each user in each month the per-user-month figures come from (USD, never scaled):
    one value per user and complete month, or per user in the partial month of a shorter run."""
    months = Months.of(run)
    rows = [p.index for p in months.basis]
    costs: np.ndarray = months.user_spend[rows].ravel() * USD_PER_NANO
    return costs


def top_share(costs: np.ndarray, top: float = 0.01) -> float:
    """Share of all spend that the top `top` of users account for."""
    total = float(costs.sum())
    if total <= 0 or costs.size == 0:
        return 0.0
    count = max(1, round(costs.size * top))
    return float(np.sort(costs)[-count:].sum()) / total
