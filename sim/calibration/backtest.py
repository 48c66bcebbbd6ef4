"""Back-tests: fit on the usage before a cut-off T, forecast the horizon after it, and compare with what
happened -- beside the naive forecast "the same as the last period".

The forecast of the horizon [T, T + D]:
- requests: the trend of the requests before T projected over D, or the last period's level when that
  forecast the training part's own later stretches better (sim/calibration/trend.py, forecast_volume);
- cost and tokens per request: the scenario `margins fit` writes from the usage before T, simulated
  `replications` times (its model mix, failures and caches price each request as they were priced);
  the forecast is the projected requests times the mean per request;
- per model and per user decile: the cost forecast split by the simulation's shares (point forecasts).
The prediction interval of each total (cost, requests, tokens) adds variances on the log scale: the
requests' (the larger of the chosen method's model spread -- trend uncertainty and bin-to-bin variation --
and its error at the earlier cut-offs, trend.py), and for cost and tokens the bin-to-bin variation of
the figure per request before T (over ceil(H) independent bins) and the simulation's spread per request
across its R replications, scaled from the simulated volume to the horizon's (a sample of N requests
varies as 1 / N) plus the mean's own error (1 / R).

The actual: the usage in [T, T + D] -- the events' own cost, or for a trace its tokens at the model's
prices (what `margins replay` bills it). The naive forecast: the usage in the last D before T (or all of
it, when less than D came before T) scaled to D.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from budget.domain.prices import NANOS_PER_USD
from sim.calibration.backtest_usage import Usage, describe_duration, describe_time
from sim.calibration.fit import Observed, fit_scenario, observed_from_events, observed_from_trace
from sim.calibration.trend import Trend, VolumeForecast, bin_totals, choose_bin, fit_trend, forecast_volume
from sim.errors import BacktestError
from sim.model.engine import simulate
from sim.model.run import RunResult
from sim.model.scenario_checks import parse_scenario

DECILES = 10


@dataclass(frozen=True, slots=True)
class Figure:
    """One compared figure: the actual, the forecast with its interval (None: a point forecast), the naive."""

    name: str
    actual: float
    forecast: float
    low: float | None
    high: float | None
    naive: float

    @property
    def inside(self) -> bool | None:
        if self.low is None or self.high is None:
            return None
        return self.low <= self.actual <= self.high

    @property
    def error(self) -> float | None:
        """(forecast - actual) / actual; None when nothing actually happened."""
        return (self.forecast - self.actual) / self.actual if self.actual else None

    @property
    def naive_error(self) -> float | None:
        return (self.naive - self.actual) / self.actual if self.actual else None


@dataclass(frozen=True, slots=True)
class Backtest:
    """A back-test's figures and what the forecast rested on."""

    start: float
    until: float
    horizon_s: float
    absolute: bool
    trend: Trend
    volume: VolumeForecast
    level: float
    replications: int
    training_requests: int
    figures: tuple[Figure, ...]
    notes: tuple[str, ...] = ()


def check_window(usage: Usage, until: float, horizon_s: float | None) -> float:
    """The horizon in seconds, once T and T + D are known to lie inside the data; else BacktestError."""
    start, end = float(usage.t.min()), float(usage.t.max())

    def shown(at: float) -> str:
        return describe_time(usage.absolute, at, start)

    if not start < until < end:
        raise BacktestError(
            "--train-until",
            f"{shown(until)} is outside the data, which runs from {shown(start)} to {shown(end)}",
        )
    if not np.any(usage.message & (usage.t < until)):
        raise BacktestError("--train-until", f"no requests before {shown(until)}: nothing to fit")
    horizon = end - until if horizon_s is None else horizon_s
    if until + horizon > end + 1e-6:
        raise BacktestError(
            "--horizon",
            f"{describe_duration(horizon)} from {shown(until)} runs past the data's end ({shown(end)}); "
            f"at most {describe_duration(end - until)}",
        )
    return horizon


def backtest(
    usage: Usage,
    until: float,
    horizon_s: float | None = None,
    model: str | None = None,
    replications: int = 10,
    seed: int = 1,
    level: float = 0.9,
) -> Backtest:
    """Fit before `until`, forecast [until, until + horizon] (default: to the data's end), compare."""
    horizon = check_window(usage, until, horizon_s)
    start = float(usage.t.min())
    bin_s = choose_bin(until - start)
    bins = int((until - start) // bin_s)
    before = usage.t < until
    counts = bin_totals(usage.t[before & usage.message], None, until, bin_s, bins)
    trend = fit_trend(counts, bin_s)
    volume = forecast_volume(trend, counts, horizon)
    table, notes = fit_scenario(_training(usage, until), model, "(the part before T)")
    runs = _simulate(table, replications, seed)
    t_value = trend.t_quantile(level)
    ones = usage.message.astype(np.float64)
    figures = [
        _figure(
            "requests",
            _actual(usage, until, horizon, ones),
            volume.total,
            volume.log_sd,
            t_value,
            _naive(usage, until, horizon, ones),
        )
    ]
    per_request = {"cost (USD)": runs.cost_usd, "input tokens": runs.input, "output tokens": runs.output}
    weights = {
        "cost (USD)": usage.cost_nanos / NANOS_PER_USD,
        "input tokens": usage.input_tokens.astype(np.float64),
        "output tokens": usage.output_tokens.astype(np.float64),
    }
    ahead = max(math.ceil(trend.horizon_bins(horizon) - 1e-9), 1)
    for name, per_run in per_request.items():
        ratio = per_run / runs.requests
        totals = bin_totals(usage.t[before], weights[name][before], until, bin_s, bins)
        variance = (
            volume.log_sd**2
            + _per_request_variance(totals, counts) / ahead
            + _simulation_variance(ratio, float(runs.requests.mean()), volume.total)
        )
        figures.append(
            _figure(
                name,
                _actual(usage, until, horizon, weights[name]),
                volume.total * float(ratio.mean()),
                math.sqrt(variance),
                t_value,
                _naive(usage, until, horizon, weights[name]),
            )
        )
    cost = figures[1].forecast
    figures += _by_model(usage, until, horizon, runs, cost)
    figures += _by_decile(usage, until, horizon, runs, cost)
    return Backtest(
        start=start,
        until=until,
        horizon_s=horizon,
        absolute=usage.absolute,
        trend=trend,
        volume=volume,
        level=level,
        replications=replications,
        training_requests=int(np.count_nonzero(before & usage.message)),
        figures=tuple(figures),
        notes=tuple(notes),
    )


def _figure(name: str, actual: float, forecast: float, log_sd: float, t_value: float, naive: float) -> Figure:
    half = t_value * log_sd
    return Figure(name, actual, forecast, forecast * math.exp(-half), forecast * math.exp(half), naive)


def _per_request_variance(totals: np.ndarray, counts: np.ndarray) -> float:
    """Variance of the log of a figure per request from bin to bin (bins with requests): what moves a
    horizon's cost beside its volume (longer prompts one day, shorter the next)."""
    busy = (counts > 0) & (totals > 0)
    if np.count_nonzero(busy) < 3:
        return 0.0
    return float(np.log(totals[busy] / counts[busy]).var(ddof=1))


def _simulation_variance(
    per_request: np.ndarray, simulated_requests: float, horizon_requests: float
) -> float:
    """Variance of the log of a per-request figure across replications, scaled to the horizon's volume,
    plus the error of their mean."""
    if per_request.size < 2 or np.any(per_request <= 0):
        return 0.0
    variance = float(np.log(per_request).var(ddof=1))
    return variance * simulated_requests / max(horizon_requests, 1.0) + variance / per_request.size


def _training(usage: Usage, until: float) -> Observed:
    """The usage before T as `margins fit` observes it."""
    if usage.trace is not None:
        rows = usage.trace
        keep = rows.t < until
        blocks = (
            tuple(b for b, k in zip(rows.prefix_blocks, keep, strict=True) if k) if rows.prefix_blocks else ()
        )
        cut = replace(
            rows,
            t=rows.t[keep],
            user=rows.user[keep],
            input_tokens=rows.input_tokens[keep],
            output_tokens=rows.output_tokens[keep],
            exact_key=rows.exact_key[keep],
            prefix_blocks=blocks,
        )
        return observed_from_trace(cut)
    return observed_from_events([e for e in usage.events if e.ts.timestamp() < until], "(the part before T)")


def _in_horizon(usage: Usage, until: float, horizon: float) -> np.ndarray:
    mask: np.ndarray = (usage.t >= until) & (usage.t <= until + horizon)
    return mask


def _naive_window(usage: Usage, until: float, horizon: float) -> tuple[np.ndarray, float]:
    """The last `horizon` before T (all before T when less came before it), and its scale to the horizon."""
    length = min(horizon, until - float(usage.t.min()))
    mask: np.ndarray = (usage.t >= until - length) & (usage.t < until)
    return mask, horizon / length


def _actual(usage: Usage, until: float, horizon: float, weights: np.ndarray) -> float:
    return float(weights[_in_horizon(usage, until, horizon)].sum())


def _naive(usage: Usage, until: float, horizon: float, weights: np.ndarray) -> float:
    mask, scale = _naive_window(usage, until, horizon)
    return float(weights[mask].sum()) * scale


@dataclass(frozen=True, slots=True)
class Simulated:
    """Per replication: requests, cost, billed tokens, cost per model and the user deciles' cost shares."""

    requests: np.ndarray
    cost_usd: np.ndarray
    input: np.ndarray
    output: np.ndarray
    model_share: dict[str, float]
    decile_share: np.ndarray | None


def _simulate(table: dict[str, object], replications: int, seed: int) -> Simulated:
    scenario, catalog = parse_scenario({"name": "fitted", **table}, "(fitted before T)")
    mau = scenario.traffic.mau[0]
    runs = [simulate(scenario, catalog, mau, scenario.traffic.days, seed, r) for r in range(replications)]
    by_model: dict[str, float] = {}
    for run in runs:
        model = run.attempts.column("model").astype(np.int64)
        cost = run.attempts.column("cost_nanos").astype(np.float64)
        for index, name in enumerate(run.models):
            by_model[name] = by_model.get(name, 0.0) + float(cost[model == index].sum())
    total = sum(by_model.values()) or 1.0
    return Simulated(
        requests=np.array([max(run.traffic.requests, 1) for run in runs], dtype=np.float64),
        cost_usd=np.array([run.cost_nanos.sum() / NANOS_PER_USD for run in runs]),
        input=np.array([float(run.attempts.column("billed_input").sum()) for run in runs]),
        output=np.array([float(run.attempts.column("billed_output").sum()) for run in runs]),
        model_share={name: value / total for name, value in by_model.items()},
        decile_share=np.mean([_decile_shares(_per_user(run)) for run in runs], axis=0)
        if mau >= DECILES
        else None,
    )


def _per_user(run: RunResult) -> np.ndarray:
    spent: np.ndarray = np.bincount(run.traffic.user, weights=run.cost_nanos, minlength=run.traffic.mau)
    return spent[spent > 0]


def _decile_shares(per_user: np.ndarray) -> np.ndarray:
    """Each spend decile's share of the total (decile 10 spends most); zeros when nobody spent."""
    totals = np.array([part.sum() for part in np.array_split(np.sort(per_user), DECILES)], dtype=np.float64)
    whole = totals.sum()
    shares: np.ndarray = totals / whole if whole else totals
    return shares


def _by_model(usage: Usage, until: float, horizon: float, runs: Simulated, cost: float) -> list[Figure]:
    dollars = usage.cost_nanos / NANOS_PER_USD
    names = sorted(set(usage.models) | set(runs.model_share))
    if len(names) < 2:
        return []
    figures = []
    for name in names:
        mine = usage.model == (usage.models.index(name) if name in usage.models else -1)
        figures.append(
            Figure(
                f"model {name} (USD)",
                _actual(usage, until, horizon, dollars * mine),
                cost * runs.model_share.get(name, 0.0),
                None,
                None,
                _naive(usage, until, horizon, dollars * mine),
            )
        )
    return figures


def _by_decile(usage: Usage, until: float, horizon: float, runs: Simulated, cost: float) -> list[Figure]:
    if runs.decile_share is None or usage.users < DECILES:
        return []
    dollars = usage.cost_nanos / NANOS_PER_USD
    actual = _decile_totals(
        usage.user[_in_horizon(usage, until, horizon)], dollars[_in_horizon(usage, until, horizon)]
    )
    mask, scale = _naive_window(usage, until, horizon)
    naive = _decile_totals(usage.user[mask], dollars[mask]) * scale
    return [
        Figure(
            f"decile {d + 1} of users (USD)",
            float(actual[d]),
            cost * float(runs.decile_share[d]),
            None,
            None,
            float(naive[d]),
        )
        for d in range(DECILES)
    ]


def _decile_totals(user: np.ndarray, dollars: np.ndarray) -> np.ndarray:
    """What each spend decile of the users present spent in total (decile 10 spends most)."""
    if user.size == 0:
        return np.zeros(DECILES)
    _, index = np.unique(user, return_inverse=True)
    per_user = np.bincount(index, weights=dollars)
    return np.array([part.sum() for part in np.array_split(np.sort(per_user), DECILES)], dtype=np.float64)
