"""Forecasts: replications of a scenario at each MAU level, summarized with 95% intervals, and comparisons.

Two intervals, because they answer two questions: the confidence interval of the mean ("ci95": where the
average month lies; it narrows as replications grow) and the prediction interval for one month ("pi95":
where the next single month lies; it does not narrow below the month-to-month spread).

Every figure is computed from a run's requests and attempts. Each MAU level is simulated on its own (a
global cache hits more at 100k users than at 1k: the 1k result is never scaled up). A run of fewer than
30 days has its costs extrapolated to the month by 30 / days; its token totals are the run's own, so that
they can be checked against a provider's usage page or a replayed trace.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from budget.domain.prices import NANOS_PER_USD, PriceCatalog
from sim.model import engine
from sim.model.caps import sum_by
from sim.model.codes import Action, CapDecision, Outcome, Served
from sim.model.policies import streaming
from sim.model.run import RunResult
from sim.model.scenario import Scenario
from sim.model.traffic import MONTH_DAYS

# Student's t 97.5% quantiles for 1..30 degrees of freedom (beyond: the normal 1.96).
_T975: tuple[float, ...] = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)
_T975 += (2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086)
_T975 += (2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)

Summary = dict[str, Any]

# Billed token kinds: the result's name for each and the attempt-log column it sums. Input counts every
# billed input token; cached input and cache writes are the parts of it the provider's prompt cache read
# and wrote (billed at their own prices).
TOKEN_COLUMNS: tuple[tuple[str, str], ...] = (
    ("input", "billed_input"),
    ("cached_input", "billed_cached"),
    ("cache_write", "billed_write"),
    ("output", "billed_output"),
)


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


def summarize(run: RunResult) -> Summary:
    """The forecast figures of one run."""
    traffic = run.traffic
    scale = MONTH_DAYS / traffic.days
    requests = traffic.requests
    total_nanos = int(run.cost_nanos.sum())
    per_user = sum_by(traffic.user, run.cost_nanos, traffic.mau)
    per_user_month = per_user * (scale / NANOS_PER_USD)
    outcome = run.attempts.column("outcome").astype(np.int64)
    action = run.attempts.column("action").astype(np.int64)
    model = run.attempts.column("model").astype(np.int64)
    made = outcome != Outcome.RATE_LIMITED
    chains = traffic.context >= 0
    ttft = run.ttft_s[~np.isnan(run.ttft_s)] * 1000.0
    summary: Summary = {
        "mau": traffic.mau,
        "requests": requests,
        "sessions": traffic.sessions,
        "cost_usd": total_nanos * scale / NANOS_PER_USD,
        "cost_per_session_usd": total_nanos / NANOS_PER_USD / max(traffic.sessions, 1),
        "cost_per_request_usd": total_nanos / NANOS_PER_USD / max(requests, 1),
        "cost_per_user_month_usd": {
            "mean": float(per_user_month.mean()),
            "p50": float(np.percentile(per_user_month, 50)),
            "p90": float(np.percentile(per_user_month, 90)),
            "p99": float(np.percentile(per_user_month, 99)),
        },
        "quality": float(run.quality.mean()) if requests else 0.0,
        "hit_rate": {
            "exact": _share(run.served == Served.EXACT, requests),
            "semantic": _share(run.served == Served.SEMANTIC, requests),
            "fragment": _share(run.fragment_hit & chains, int(np.count_nonzero(chains))),
        },
        "false_hits": int(np.count_nonzero(run.served == Served.FALSE_HIT)),
        "failed_requests": int(np.count_nonzero(run.served == Served.FAILED)),
        "calls_by_model": {
            name: int(np.count_nonzero(made & (model == i))) for i, name in enumerate(run.models)
        },
        "retries": int(np.count_nonzero(action == Action.RETRY)),
        "regenerations": int(np.count_nonzero(action == Action.REGENERATE)),
        "rate_limited": int(np.count_nonzero(~made)),
        "queued": int(np.count_nonzero((action == Action.QUEUE) | (action == Action.GIVE_UP))),
        "fallbacks": int(np.count_nonzero(run.fallback)),
        "stream_aborts": streaming.stream_aborts(run.scenario.streaming, outcome),
        "ttft_ms": {
            "p50": float(np.percentile(ttft, 50)) if ttft.size else 0.0,
            "p95": float(np.percentile(ttft, 95)) if ttft.size else 0.0,
        },
        **token_totals(run),
    }
    if run.scenario.cap is not None:
        summary["cap"] = cap_figures(run, per_user_month, scale)
    return summary


def token_totals(run: RunResult) -> Summary:
    """The billed tokens of the run's attempts (over the days simulated, not extrapolated), in total
    ("tokens") and per model ("tokens_by_model"), each as input, cached_input, cache_write and output."""
    model = run.attempts.column("model").astype(np.int64)
    columns = {name: run.attempts.column(column).astype(np.int64) for name, column in TOKEN_COLUMNS}
    return {
        "tokens": {name: int(values.sum()) for name, values in columns.items()},
        "tokens_by_model": {
            name: {kind: int(values[model == i].sum()) for kind, values in columns.items()}
            for i, name in enumerate(run.models)
        },
    }


def cap_figures(run: RunResult, per_user_month: np.ndarray, scale: float) -> Summary:
    """What the cap did: who reached the soft limit and the cap, what it saved and what it cost in quality.

    `users_at_cap` counts users who had a request degraded or denied; `users_over_cap_uncapped` those
    whose month would have passed the cap without it.
    """
    cap = run.scenario.cap
    assert cap is not None
    mau = run.traffic.mau
    figures: Summary = {
        "monthly_usd": cap.monthly_usd,
        "users_over_soft": _share(per_user_month >= cap.monthly_usd * cap.soft_threshold, mau),
        "users_at_cap": _share(per_user_month >= cap.monthly_usd, mau),
    }
    effect = run.cap
    if effect is None:
        return figures
    felt = np.zeros(mau, dtype=bool)
    felt[run.traffic.user[effect.decision != CapDecision.ALLOWED]] = True
    uncapped_user = sum_by(run.traffic.user, effect.uncapped_cost_nanos, mau)
    uncapped_total = int(effect.uncapped_cost_nanos.sum())
    saved = uncapped_total - int(run.cost_nanos.sum())
    figures.update(
        {
            "users_at_cap": _share(felt, mau),
            "users_over_cap_uncapped": _share(uncapped_user * (scale / NANOS_PER_USD) > cap.monthly_usd, mau),
            "spend_saved_usd": saved * scale / NANOS_PER_USD,
            "spend_saved_share": saved / uncapped_total if uncapped_total else 0.0,
            "requests_degraded": int(np.count_nonzero(effect.decision == CapDecision.DEGRADED)),
            "requests_denied": int(np.count_nonzero(effect.decision == CapDecision.DENIED)),
            "quality_uncapped": float(effect.uncapped_quality.mean())
            if effect.uncapped_quality.size
            else 0.0,
            "quality_lost": float(effect.uncapped_quality.mean() - run.quality.mean())
            if run.quality.size
            else 0.0,
            "users_replayed": effect.users_replayed,
        }
    )
    return figures


def _share(mask: np.ndarray, total: int) -> float:
    return float(np.count_nonzero(mask)) / total if total else 0.0


def forecast(
    scenario: Scenario,
    catalog: PriceCatalog,
    maus: Sequence[int],
    days: int,
    seed: int,
    replications: int = 1,
    on_run: Callable[[RunResult], object] | None = None,
    on_phase: Callable[[str], object] | None = None,
) -> Forecast:
    """Run every MAU level `replications` times and summarize. `on_run` sees each run (e.g. to store it);
    `on_phase` hears which run is under way and its phase ("10,000 MAU: caches")."""
    results, runs = [], []
    for mau in maus:
        level = []
        for replication in range(replications):
            heard = _prefixed(on_phase, mau, replication, replications) if on_phase else None
            run = engine.simulate(scenario, catalog, mau, days, seed, replication, on_phase=heard)
            if on_run is not None:
                on_run(run)
            if heard is not None:
                heard("figures")
            summary = summarize(run)
            level.append(summary)
            runs.append({"replication": replication, **summary})
        results.append(combine(level))
    return Forecast(scenario.name, seed, days, replications, results, runs, catalog.provenance())


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
    quantile = _T975[degrees - 1] if degrees <= len(_T975) else 1.96
    spread = float(values.std(ddof=1))
    return (
        quantile * spread / math.sqrt(replications),
        quantile * spread * math.sqrt(1 + 1 / replications),
    )


def flatten(summary: Summary, prefix: str = "") -> dict[str, float]:
    """{"a": {"b": 1}} -> {"a.b": 1.0}: the figures as one level, for intervals and tables."""
    flat: dict[str, float] = {}
    for key, value in summary.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = float(value)
    return flat


def unflatten(flat: dict[str, float], like: Summary) -> Summary:
    """Back to the nested shape of `like`, keeping counts whole where they were whole."""
    out: Summary = {}
    for key, value in like.items():
        if isinstance(value, dict):
            out[key] = unflatten(
                {k[len(key) + 1 :]: v for k, v in flat.items() if k.startswith(key + ".")}, value
            )
        elif isinstance(value, int) and not isinstance(value, bool):
            out[key] = round(flat[key], 1) if flat[key] != int(flat[key]) else int(flat[key])
        else:
            out[key] = flat[key]
    return out
