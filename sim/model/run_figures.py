"""A run's forecast figures folded chunk by chunk: what `forecast.summarize` reports, from a run handed over
a piece at a time (a streaming engine's days) as from a whole run in one piece.

A chunk of requests is any set of requests with their per-request results (`RequestChunk`), in any
grouping and order; a chunk of attempts is any rows of the attempt log (`AttemptChunk`). Requests and
attempts are folded separately, so the two need not be cut alike. The figures do not depend on how the
run was cut: sums and counts are exact integers; the mean qualities are exact sums (counts per distinct
score -- a score is one of a few eval values) divided once; the TTFT percentiles are exact order statistics
(sim/model/order_statistics.py) interpolated as np.percentile does.

Carried state, and what it grows with:
- per period and user: spend (int64), and with a cap's effect the uncapped spend (int64) and whether the
  cap was felt (bool): 17 bytes x periods x MAU (a 10M-MAU month: 170 MB);
- per distinct quality score, a count (a few entries); per model, calls and four token totals;
- every served request's TTFT (8 bytes each) in a `ValueStore`: in memory by default (`MemoryValues`), or
  a store that spills them to files (its memory then is one chunk plus what the percentile selection
  gathers, at most 32 MiB);
- a few dozen integer counters.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Protocol

import numpy as np

from budget.domain.prices import NANOS_PER_USD
from sim.model.codes import Action, CapDecision, Outcome, Served
from sim.model.order_statistics import linear_percentiles
from sim.model.periods import MonthBasis, Period, period_index, run_periods
from sim.model.run import RunResult
from sim.model.scenario import Scenario

Summary = dict[str, Any]
# A chunk of the attempt log: column name -> the rows' values (the columns below, any rows).
AttemptChunk = Mapping[str, np.ndarray]

# Dollars per nano-dollar, as one factor: per-user figures are nano-dollar totals times it.
USD_PER_NANO = 1.0 / NANOS_PER_USD
PERCENTILES = (50, 90, 99)
TTFT_PERCENTILES = (50, 95)
# Billed token kinds: the result's name for each and the attempt-log column it sums. Input counts every
# billed input token; cached input and cache writes are the parts of it the provider's prompt cache read
# and wrote (billed at their own prices).
TOKEN_COLUMNS: tuple[tuple[str, str], ...] = (
    ("input", "billed_input"),
    ("cached_input", "billed_cached"),
    ("cache_write", "billed_write"),
    ("output", "billed_output"),
)
ATTEMPT_COLUMNS = ("outcome", "action", "model", *(column for _, column in TOKEN_COLUMNS))


@dataclass(frozen=True, slots=True)
class RequestChunk:
    """Some requests of a run and their results, one value per request in each array. With the cap's
    effect: each request's cap decision and its cost and quality without the cap."""

    t: np.ndarray  # seconds since the run's start
    user: np.ndarray
    context: np.ndarray  # the chain's context, -1 for a single-call message
    served: np.ndarray
    fragment_hit: np.ndarray
    cost_nanos: np.ndarray
    quality: np.ndarray
    ttft_s: np.ndarray  # NaN when it failed
    fallback: np.ndarray
    decision: np.ndarray | None = None
    uncapped_cost_nanos: np.ndarray | None = None
    uncapped_quality: np.ndarray | None = None

    @classmethod
    def of_run(cls, run: RunResult, rows: slice | np.ndarray = slice(None)) -> RequestChunk:
        """The requests `rows` (a slice, indices or a mask) of a whole run."""
        traffic, effect = run.traffic, run.cap
        return cls(
            traffic.t[rows],
            traffic.user[rows],
            traffic.context[rows],
            run.served[rows],
            run.fragment_hit[rows],
            run.cost_nanos[rows],
            run.quality[rows],
            run.ttft_s[rows],
            run.fallback[rows],
            None if effect is None else effect.decision[rows],
            None if effect is None else effect.uncapped_cost_nanos[rows],
            None if effect is None else effect.uncapped_quality[rows],
        )


def attempt_rows(run: RunResult, rows: slice | np.ndarray = slice(None)) -> AttemptChunk:
    """The attempt-log rows `rows` of a whole run, as a chunk (absent columns: empty)."""
    return {name: run.attempts.column(name)[rows] for name in ATTEMPT_COLUMNS}


class ValueStore(Protocol):
    """Where the TTFTs wait for the percentiles: added a chunk at a time, read back as often as asked."""

    def add(self, values: np.ndarray) -> None: ...

    def chunks(self) -> Iterable[np.ndarray]: ...


@dataclass(slots=True)
class MemoryValues:
    """A ValueStore in memory: 8 bytes per value."""

    parts: list[np.ndarray] = field(default_factory=list)

    def add(self, values: np.ndarray) -> None:
        if values.size:
            self.parts.append(values)

    def chunks(self) -> Iterator[np.ndarray]:
        return iter(self.parts)


@dataclass(slots=True)
class ScoreSum:
    """An exact sum of scores: how many times each distinct score occurred (few distinct scores)."""

    counts: dict[float, int] = field(default_factory=dict)
    count: int = 0

    def add(self, scores: np.ndarray) -> None:
        values, counts = np.unique(scores, return_counts=True)
        for value, times in zip(values.tolist(), counts.tolist(), strict=True):
            self.counts[value] = self.counts.get(value, 0) + times
        self.count += int(scores.size)

    def mean(self) -> float:
        """The mean, rounded once from the exact sum (np.mean may differ from it by an ulp)."""
        total = sum((Fraction(value) * times for value, times in self.counts.items()), Fraction(0))
        return float(total / self.count) if self.count else 0.0


class RunFigures:
    """The forecast figures of one run, folded from chunks of its requests and attempts; `summary()` gives
    what `forecast.summarize` gives for the whole run (it is how summarize computes it)."""

    def __init__(
        self,
        scenario: Scenario,
        models: tuple[str, ...],
        mau: int,
        days: int,
        sessions: int,
        capped: bool,
        ttft_store: ValueStore | None = None,
    ) -> None:
        """`capped`: the chunks carry the cap's effect (decision, uncapped cost and quality)."""
        self.scenario, self.models, self.mau, self.sessions, self.capped = (
            scenario,
            models,
            mau,
            sessions,
            capped,
        )
        self.periods: tuple[Period, ...] = run_periods(scenario.traffic.start, days)
        shape = (len(self.periods), mau)
        self.user_spend = np.zeros(shape, dtype=np.int64)
        self.uncapped_spend = np.zeros(shape if capped else (0, 0), dtype=np.int64)
        self.felt = np.zeros(shape if capped else (0, 0), dtype=bool)
        self.period_requests = np.zeros(len(self.periods), dtype=np.int64)
        self.quality, self.uncapped_quality = ScoreSum(), ScoreSum()
        self.ttft = ttft_store if ttft_store is not None else MemoryValues()
        self.requests = self.ttft_count = self.chains = self.fragment_hits = self.fallbacks = 0
        self.served = dict.fromkeys((Served.EXACT, Served.SEMANTIC, Served.FALSE_HIT, Served.FAILED), 0)
        self.degraded = self.denied = self.users_replayed = 0
        self.calls = np.zeros(len(models), dtype=np.int64)
        self.tokens = {name: 0 for name, _ in TOKEN_COLUMNS}
        self.tokens_by_model = {name: np.zeros(len(models), dtype=np.int64) for name, _ in TOKEN_COLUMNS}
        self.retries = self.regenerations = self.rate_limited = self.queued = self.aborted = 0

    @classmethod
    def of_run(cls, run: RunResult, ttft_store: ValueStore | None = None) -> RunFigures:
        """An empty fold for `run`'s figures (nothing added yet)."""
        traffic = run.traffic
        return cls(
            run.scenario,
            run.models,
            traffic.mau,
            traffic.days,
            traffic.sessions,
            run.cap is not None,
            ttft_store,
        )

    def add_requests(self, chunk: RequestChunk) -> None:
        """Fold some requests in (each request once, over all chunks)."""
        period = period_index(self.periods, chunk.t)
        cell = period * self.mau + chunk.user
        np.add.at(self.user_spend.reshape(-1), cell, chunk.cost_nanos.astype(np.int64))
        self.period_requests += np.bincount(period, minlength=len(self.periods))
        self.requests += int(chunk.t.size)
        self.quality.add(chunk.quality)
        for kind in self.served:
            self.served[kind] += int(np.count_nonzero(chunk.served == kind))
        chains = chunk.context >= 0
        self.chains += int(np.count_nonzero(chains))
        self.fragment_hits += int(np.count_nonzero(chunk.fragment_hit & chains))
        self.fallbacks += int(np.count_nonzero(chunk.fallback))
        ttft = chunk.ttft_s[~np.isnan(chunk.ttft_s)] * 1000.0
        self.ttft.add(ttft)
        self.ttft_count += int(ttft.size)
        if self.capped:
            self._add_cap(chunk, cell)

    def _add_cap(self, chunk: RequestChunk, cell: np.ndarray) -> None:
        decision, uncapped_cost, uncapped_quality = (
            chunk.decision,
            chunk.uncapped_cost_nanos,
            chunk.uncapped_quality,
        )
        if decision is None or uncapped_cost is None or uncapped_quality is None:
            raise ValueError("a capped run's request chunk carries no cap decision, uncapped cost or quality")
        self.felt.reshape(-1)[cell[decision != CapDecision.ALLOWED]] = True
        np.add.at(self.uncapped_spend.reshape(-1), cell, uncapped_cost.astype(np.int64))
        self.uncapped_quality.add(uncapped_quality)
        self.degraded += int(np.count_nonzero(decision == CapDecision.DEGRADED))
        self.denied += int(np.count_nonzero(decision == CapDecision.DENIED))

    def add_users_replayed(self, users: int) -> None:
        """Count user-months the cap's ledger replayed (the cap's own tally, per period or all at once)."""
        self.users_replayed += users

    def add_model(self, name: str) -> None:
        """Count attempts of one more model from now on (a cap's degrade model, once a request of a
        streamed run is degraded to it: the whole run's model list gains it then)."""
        self.models = (*self.models, name)
        self.calls = np.append(self.calls, 0)
        self.tokens_by_model = {kind: np.append(values, 0) for kind, values in self.tokens_by_model.items()}

    def add_attempts(self, chunk: AttemptChunk) -> None:
        """Fold some rows of the attempt log in (each row once, over all chunks)."""
        outcome = _column(chunk, "outcome")
        action = _column(chunk, "action")
        model = _column(chunk, "model")
        made = outcome != Outcome.RATE_LIMITED
        self.calls += np.bincount(model[made], minlength=len(self.models))[: len(self.models)]
        self.retries += int(np.count_nonzero(action == Action.RETRY))
        self.regenerations += int(np.count_nonzero(action == Action.REGENERATE))
        self.rate_limited += int(np.count_nonzero(~made))
        self.queued += int(np.count_nonzero((action == Action.QUEUE) | (action == Action.GIVE_UP)))
        self.aborted += int(np.count_nonzero((outcome == Outcome.BAD) | (outcome == Outcome.TIMEOUT)))
        for name, column in TOKEN_COLUMNS:
            values = _column(chunk, column)
            if not values.size:
                continue
            self.tokens[name] += int(values.sum())
            by_model = self.tokens_by_model[name]
            for index in range(len(self.models)):
                by_model[index] += values[model == index].sum()

    def summary(self) -> Summary:
        """The figures of everything folded in so far (as forecast.summarize reports them)."""
        months = MonthBasis(self.periods)
        period_costs = [int(row.sum()) for row in self.user_spend]
        total_nanos = sum(period_costs)
        requests = self.requests
        per_period_users = [user_figures(row) for row in self.user_spend]
        summary: Summary = {
            "mau": self.mau,
            "requests": requests,
            "sessions": self.sessions,
            "cost_usd": months.monthly_total(period_costs),
            "cost_per_session_usd": total_nanos / NANOS_PER_USD / max(self.sessions, 1),
            "cost_per_request_usd": total_nanos / NANOS_PER_USD / max(requests, 1),
            "cost_per_user_month_usd": {
                key: months.headline([figures[key] for figures in per_period_users])
                for key in per_period_users[0]
            },
            "quality": self.quality.mean() if requests else 0.0,
            "hit_rate": {
                "exact": _share(self.served[Served.EXACT], requests),
                "semantic": _share(self.served[Served.SEMANTIC], requests),
                "fragment": _share(self.fragment_hits, self.chains),
            },
            "false_hits": self.served[Served.FALSE_HIT],
            "failed_requests": self.served[Served.FAILED],
            "calls_by_model": {name: int(self.calls[i]) for i, name in enumerate(self.models)},
            "retries": self.retries,
            "regenerations": self.regenerations,
            "rate_limited": self.rate_limited,
            "queued": self.queued,
            "fallbacks": self.fallbacks,
            "stream_aborts": self.aborted if self.scenario.streaming.enabled else 0,
            "ttft_ms": self._ttft(),
            "tokens": dict(self.tokens),
            "tokens_by_model": {
                name: {kind: int(values[i]) for kind, values in self.tokens_by_model.items()}
                for i, name in enumerate(self.models)
            },
            **self._period_figures(months, total_nanos, period_costs, per_period_users),
        }
        if self.scenario.cap is not None:
            summary["cap"] = self._cap_figures(months)
            for period, figures in zip(summary["periods"], summary["cap"].pop("periods"), strict=True):
                period["cap"] = figures
        return summary

    def _ttft(self) -> dict[str, float]:
        if not self.ttft_count:
            return {f"p{q}": 0.0 for q in TTFT_PERCENTILES}
        found = linear_percentiles(self.ttft.chunks, self.ttft_count, TTFT_PERCENTILES)
        return {f"p{q}": value for q, value in zip(TTFT_PERCENTILES, found, strict=True)}

    def _period_figures(
        self,
        months: MonthBasis,
        total_nanos: int,
        period_costs: list[int],
        per_period_users: list[dict[str, float]],
    ) -> Summary:
        """What the run cost, how the monthly figures were made from its periods, and each period's own."""
        figures: Summary = {"cost_usd_run": total_nanos / NANOS_PER_USD}
        extrapolation = months.extrapolation()
        if extrapolation is not None:
            figures["cost_usd_month_extrapolated"] = months.monthly_total(period_costs)
            figures["extrapolation"] = extrapolation
        figures["per_user_month"] = months.per_user_month_label()
        figures["periods"] = [
            {
                **period.to_json(),
                "requests": int(self.period_requests[period.index]),
                "cost_usd": cost / NANOS_PER_USD,
                "cost_per_user_usd": users,
            }
            for period, cost, users in zip(self.periods, period_costs, per_period_users, strict=True)
        ]
        return figures

    def _cap_figures(self, months: MonthBasis) -> Summary:
        """What the cap did: who reached the soft limit and the cap, what it saved and what it cost in
        quality.

        Each month is capped on its own (sim/model/caps.py): the shares of users are per period ("periods",
        which summary() moves into each period's figures) and their headline is the mean over the complete
        months, like the per-user-month costs. `users_at_cap` counts users who had a request degraded or
        denied; `users_over_cap_uncapped` those whose month would have passed the cap without it.
        """
        cap = self.scenario.cap
        assert cap is not None
        mau = self.mau
        per_period: list[Summary] = [
            {
                "users_over_soft": _share(
                    np.count_nonzero(row * USD_PER_NANO >= cap.monthly_usd * cap.soft_threshold), mau
                ),
                "users_at_cap": _share(np.count_nonzero(row * USD_PER_NANO >= cap.monthly_usd), mau),
            }
            for row in self.user_spend
        ]
        if self.capped:
            for shares, felt_row, uncapped_row in zip(
                per_period, self.felt, self.uncapped_spend, strict=True
            ):
                shares["users_at_cap"] = _share(np.count_nonzero(felt_row), mau)
                shares["users_over_cap_uncapped"] = _share(
                    np.count_nonzero(uncapped_row * USD_PER_NANO > cap.monthly_usd), mau
                )
        figures: Summary = {"monthly_usd": cap.monthly_usd}
        for key in per_period[0]:
            figures[key] = months.headline([period[key] for period in per_period])
        if not self.capped:
            return {**figures, "periods": per_period}
        uncapped_per_period = [int(row.sum()) for row in self.uncapped_spend]
        spent_per_period = [int(row.sum()) for row in self.user_spend]
        uncapped_total = sum(uncapped_per_period)
        saved = uncapped_total - sum(spent_per_period)
        saved_per_period = [
            before - after for before, after in zip(uncapped_per_period, spent_per_period, strict=True)
        ]
        figures.update(
            {
                "spend_saved_usd": months.monthly_total(saved_per_period),
                "spend_saved_share": saved / uncapped_total if uncapped_total else 0.0,
                "requests_degraded": self.degraded,
                "requests_denied": self.denied,
                "quality_uncapped": self.uncapped_quality.mean(),
                "quality_lost": self.uncapped_quality.mean() - self.quality.mean() if self.requests else 0.0,
                "users_replayed": self.users_replayed,
                "spend_saved_usd_run": saved / NANOS_PER_USD,
            }
        )
        return {**figures, "periods": per_period}


def user_figures(spend_nanos: np.ndarray) -> dict[str, float]:
    """Mean and percentiles of users' spend in one period (USD, not scaled)."""
    usd = spend_nanos * USD_PER_NANO
    return {
        "mean": float(usd.mean()),
        **{f"p{q}": float(np.percentile(usd, q)) for q in PERCENTILES},
    }


def fold_run(run: RunResult, ttft_store: ValueStore | None = None) -> RunFigures:
    """A whole run folded as one chunk of requests and one of attempts."""
    figures = RunFigures.of_run(run, ttft_store)
    figures.add_requests(RequestChunk.of_run(run))
    figures.add_attempts(attempt_rows(run))
    if run.cap is not None:
        figures.add_users_replayed(run.cap.users_replayed)
    return figures


def _column(chunk: AttemptChunk, name: str) -> np.ndarray:
    values = chunk.get(name)
    return np.zeros(0, dtype=np.int64) if values is None else values.astype(np.int64)


def _share(count: int | np.integer[Any], total: int) -> float:
    return float(count) / total if total else 0.0
