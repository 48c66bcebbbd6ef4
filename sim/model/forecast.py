"""Forecasts: replications of a scenario at each MAU level, summarized with 95% intervals, and comparisons.

Two intervals, because they answer two questions: the confidence interval of the mean ("ci95": where the
average month lies; it narrows as replications grow) and the prediction interval for one month ("pi95":
where the next single month lies; it does not narrow below the month-to-month spread).

Every figure is computed from a run's requests and attempts. Each MAU level is simulated on its own (a
global cache hits more at 100k users than at 1k: the 1k result is never scaled up).

A run covers months (sim/model/periods.py) and each month is a period: every per-user-month figure --
the percentiles of users' spend, users over the soft limit and at the cap -- is computed from each
user's spend within each period, and listed per period under "periods". The headline per-user-month
figures are the mean of the complete months' (`per_user_month` says so), or, when the run ends before a
month is complete, the partial month's as they are ("partial: 7 of 30 days"): a user's spend is never
multiplied up. Monthly totals (`cost_usd`, the cap's `spend_saved_usd`) are likewise the mean of the
complete months; from a partial month alone they are extrapolated to its whole length, explicitly:
`cost_usd_month_extrapolated` and `extrapolation` (the factor and its basis) say so, and `cost_usd_run`
is what the run cost. Token totals are the run's own, so that they can be checked against a provider's
usage page or a replayed trace.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from budget.domain.prices import PriceCatalog
from sim.model import engine
from sim.model.caps import sum_by
from sim.model.periods import MonthBasis, Period, period_index, run_periods
from sim.model.run import RunResult
from sim.model.run_figures import (
    PERCENTILES as PERCENTILES,
)  # re-exported: readers of forecasts import them here
from sim.model.run_figures import TOKEN_COLUMNS as TOKEN_COLUMNS
from sim.model.run_figures import USD_PER_NANO as USD_PER_NANO
from sim.model.run_figures import Summary as Summary
from sim.model.run_figures import fold_run
from sim.model.run_figures import user_figures as user_figures
from sim.model.scenario import Scenario

# Student's t 97.5% quantiles for 1..30 degrees of freedom (beyond: t975's expansion).
_T975: tuple[float, ...] = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)
_T975 += (2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086)
_T975 += (2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


@dataclass(frozen=True, slots=True)
class Forecast:
    """A scenario's results per MAU level: the mean over replications, and with two or more of them the
    95% half-widths of the confidence interval of the mean ("ci95") and of the prediction interval for one
    month ("pi95")."""

    scenario: str
    seed: int
    days: int
    replications: int
    results: list[Summary]
    runs: list[Summary]  # one summary per (MAU level, replication), for the DuckDB tables
    prices: dict[str, Any] = field(default_factory=dict)  # which prices: PriceCatalog.provenance()

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "seed": self.seed,
            "days": self.days,
            "replications": self.replications,
            "prices": self.prices,
            "results": self.results,
        }


@dataclass(frozen=True, slots=True)
class Months:
    """A run's periods, and each request's period and user's spend per period (for figures read off a
    whole run; the forecast's own fold over chunks is sim/model/run_figures.py)."""

    periods: tuple[Period, ...]
    of_request: np.ndarray  # the period of each request
    user_spend: np.ndarray  # int64 nano-dollars, one row per period, one column per user

    @classmethod
    def of(cls, run: RunResult) -> Months:
        traffic = run.traffic
        periods = run_periods(run.scenario.traffic.start, traffic.days)
        of_request = period_index(periods, traffic.t)
        return cls(periods, of_request, cls.spread(run, of_request, run.cost_nanos, len(periods)))

    @staticmethod
    def spread(run: RunResult, of_request: np.ndarray, cost: np.ndarray, count: int) -> np.ndarray:
        """Each user's total of `cost` (per request) in each period, as a (periods, users) array."""
        mau = run.traffic.mau
        return sum_by(of_request * mau + run.traffic.user, cost, count * mau).reshape(count, mau)

    @property
    def basis(self) -> list[Period]:
        """The periods the headline per-user-month figures come from (MonthBasis.basis)."""
        return MonthBasis(self.periods).basis

    def monthly_total(self, nanos_per_period: Sequence[int] | np.ndarray) -> float:
        """A monthly total in USD, as MonthBasis.monthly_total makes it."""
        return MonthBasis(self.periods).monthly_total(nanos_per_period)

    def totals(self, cost: np.ndarray) -> list[int]:
        """The sum of `cost` (per request, nano-dollars) in each period."""
        totals: list[int] = sum_by(self.of_request, cost, len(self.periods)).tolist()
        return totals


def summarize(run: RunResult) -> Summary:
    """The forecast figures of one run: the whole run folded as one chunk (sim/model/run_figures.py)."""
    return fold_run(run).summary()


@dataclass(frozen=True, slots=True)
class Replication:
    """One run of a forecast: a MAU level and which replication of it (the rest is the forecast's)."""

    mau: int
    replication: int


# What a run sends back from wherever it ran: its summary, and the run itself when asked for (`on_run`
# stores it; otherwise its arrays stay where they were made).
Replicated = tuple[Summary, RunResult | None]
# Runs each Replication of a forecast -- on a process pool or a cluster -- and returns what `replicate`
# returns for each, in the plan's order; the bool says whether the runs themselves must come back.
Execute = Callable[[Sequence[Replication], bool], Sequence[Replicated]]


def replicate(
    scenario: Scenario,
    catalog: PriceCatalog,
    mau: int,
    days: int,
    seed: int,
    replication: int,
    keep_run: bool,
) -> Replicated:
    """Simulate one run and summarize it, keeping the run when `keep_run` (the unit of work a worker does;
    its figures depend only on its arguments, never on where it runs)."""
    run = engine.simulate(scenario, catalog, mau, days, seed, replication)
    return summarize(run), run if keep_run else None


def forecast(
    scenario: Scenario,
    catalog: PriceCatalog,
    maus: Sequence[int],
    days: int,
    seed: int,
    replications: int = 1,
    on_run: Callable[[RunResult], object] | None = None,
    on_phase: Callable[[str], object] | None = None,
    execute: Execute | None = None,
) -> Forecast:
    """Run every MAU level `replications` times and summarize. `on_run` sees each run (e.g. to store it);
    `on_phase` hears which run is under way and its phase ("10,000 MAU: caches").

    With `execute`, the runs go there all at once (a process pool, a cluster) and come back summarized:
    `on_run` then sees each run afterwards, in the same order as here, and `on_phase` hears nothing. The
    forecast is the same to the byte either way.
    """
    plan = [Replication(mau, replication) for mau in maus for replication in range(replications)]
    if execute is None:
        done: Sequence[Replicated] = [
            _run_here(scenario, catalog, step, days, seed, replications, on_run, on_phase) for step in plan
        ]
    else:
        done = execute(plan, on_run is not None)
        if on_run is not None:
            for _, run in done:
                assert run is not None, "execute was asked to send the runs back"
                on_run(run)
    runs = [
        {"replication": step.replication, **summary} for step, (summary, _) in zip(plan, done, strict=True)
    ]
    # The plan is level by level, `replications` runs each.
    summaries = [summary for summary, _ in done]
    results = [
        combine(summaries[level * replications : (level + 1) * replications]) for level in range(len(maus))
    ]
    return Forecast(scenario.name, seed, days, replications, results, runs, catalog.provenance())


def _run_here(
    scenario: Scenario,
    catalog: PriceCatalog,
    step: Replication,
    days: int,
    seed: int,
    replications: int,
    on_run: Callable[[RunResult], object] | None,
    on_phase: Callable[[str], object] | None,
) -> Replicated:
    """One run in this process: handed to `on_run` as soon as it is made, then summarized (and dropped)."""
    heard = _prefixed(on_phase, step.mau, step.replication, replications) if on_phase else None
    run = engine.simulate(scenario, catalog, step.mau, days, seed, step.replication, on_phase=heard)
    if on_run is not None:
        on_run(run)
    if heard is not None:
        heard("figures")
    return summarize(run), None


def _prefixed(
    on_phase: Callable[[str], object], mau: int, replication: int, replications: int
) -> Callable[[str], object]:
    """`on_phase` with each phase prefixed by the run it belongs to."""
    run = (
        f"{mau:,} MAU"
        if replications == 1
        else f"{mau:,} MAU, replication {replication + 1} of {replications}"
    )
    return lambda phase: on_phase(f"{run}: {phase}")


def combine(summaries: Sequence[Summary]) -> Summary:
    """Mean of each figure over replications; with two or more, the 95% half-widths of each figure's
    confidence interval of the mean under "ci95" and prediction interval for one month under "pi95"."""
    flat = [flatten(s) for s in summaries]
    keys = list(flat[0])
    means: dict[str, float] = {}
    of_the_mean: dict[str, float] = {}
    for_one_month: dict[str, float] = {}
    for key in keys:
        values = np.array([f.get(key, 0.0) for f in flat], dtype=np.float64)
        means[key] = float(values.mean())
        if len(values) > 1:
            of_the_mean[key], for_one_month[key] = half_widths(values)
    combined = unflatten(means, summaries[0])
    if of_the_mean:
        combined["ci95"] = of_the_mean
        combined["pi95"] = for_one_month
    return combined


def half_widths(values: np.ndarray[Any, np.dtype[np.float64]]) -> tuple[float, float]:
    """The 95% half-widths from R >= 2 replications with sample standard deviation s, t = t_{0.975,R-1}:
    the confidence interval of the mean, t * s / sqrt(R), and the prediction interval for one more
    month, t * s * sqrt(1 + 1/R) (the mean's uncertainty plus one month's own spread). Their ratio is
    sqrt(R + 1)."""
    replications = len(values)
    degrees = replications - 1
    quantile = t975(degrees)
    spread = float(values.std(ddof=1))
    return (
        quantile * spread / math.sqrt(replications),
        quantile * spread * math.sqrt(1 + 1 / replications),
    )


def t975(degrees: int) -> float:
    """Student's t 97.5% quantile: from the table up to 30 degrees of freedom, above it by the
    Cornish-Fisher expansion around the normal quantile (error below 1e-4 there; the normal 1.96 alone
    would make a 40-replication interval 3% too narrow)."""
    if degrees <= len(_T975):
        return _T975[degrees - 1]
    z, v = 1.959963984540054, float(degrees)
    return (
        z
        + (z**3 + z) / (4 * v)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3)
    )


def flatten(summary: Summary, prefix: str = "") -> dict[str, float]:
    """{"a": {"b": 1}, "c": [{"d": 2}]} -> {"a.b": 1.0, "c.0.d": 2.0}: the figures as one level, for
    intervals and tables. Labels (text, true/false) describe the figures and are left out."""
    flat: dict[str, float] = {}
    for key, value in summary.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                flat.update(flatten(item, f"{prefix}{key}.{index}."))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = float(value)
    return flat


def unflatten(flat: dict[str, float], like: Summary) -> Summary:
    """Back to the nested shape of `like`, keeping counts whole where they were whole and its labels."""
    out: Summary = {}
    for key, value in like.items():
        if isinstance(value, dict):
            out[key] = unflatten(_under(flat, key), value)
        elif isinstance(value, list):
            out[key] = [unflatten(_under(flat, f"{key}.{i}"), item) for i, item in enumerate(value)]
        elif isinstance(value, bool) or not isinstance(value, int | float):
            out[key] = value
        elif isinstance(value, int):
            out[key] = round(flat[key], 1) if flat[key] != int(flat[key]) else int(flat[key])
        else:
            out[key] = flat[key]
    return out


def _under(flat: dict[str, float], prefix: str) -> dict[str, float]:
    return {k[len(prefix) + 1 :]: v for k, v in flat.items() if k.startswith(prefix + ".")}
