"""Text tables for forecasts and comparisons (the CLI's `--format table`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sim.model.forecast import TOKEN_COLUMNS, Forecast, Summary, flatten

Row = tuple[str, str, Callable[[float], str]]


def usd(value: float) -> str:
    if value >= 100:
        return f"${value:,.0f}"
    if value >= 1:
        return f"${value:,.2f}"
    return f"${value:.4f}"


def count(value: float) -> str:
    return f"{value:,.0f}"


def pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def score(value: float) -> str:
    return f"{value:.1f}"


def ms(value: float) -> str:
    return f"{value:,.0f} ms"


ROWS: tuple[Row, ...] = (
    ("requests", "requests", count),
    ("sessions", "sessions", count),
    ("monthly cost", "cost_usd", usd),
    ("cost / session", "cost_per_session_usd", usd),
    ("cost / user-month mean", "cost_per_user_month_usd.mean", usd),
    ("cost / user-month p50", "cost_per_user_month_usd.p50", usd),
    ("cost / user-month p90", "cost_per_user_month_usd.p90", usd),
    ("cost / user-month p99", "cost_per_user_month_usd.p99", usd),
    ("quality (0-100)", "quality", score),
    ("exact cache hit rate", "hit_rate.exact", pct),
    ("semantic cache hit rate", "hit_rate.semantic", pct),
    ("fragment cache hit rate", "hit_rate.fragment", pct),
    ("false semantic hits", "false_hits", count),
    ("retries", "retries", count),
    ("rate-limited calls", "rate_limited", count),
    ("queued requests", "queued", count),
    ("fallbacks shown", "fallbacks", count),
    ("stream aborts", "stream_aborts", count),
    ("failed requests", "failed_requests", count),
    ("time to first token p50", "ttft_ms.p50", ms),
    ("time to first token p95", "ttft_ms.p95", ms),
    ("users over soft limit", "cap.users_over_soft", pct),
    ("users at cap", "cap.users_at_cap", pct),
)


PERIOD_FIGURES: tuple[tuple[str, str], ...] = (
    ("cost", "cost_usd"),
    ("cost / user p50", "cost_per_user_usd.p50"),
    ("cost / user p90", "cost_per_user_usd.p90"),
    ("cost / user p99", "cost_per_user_usd.p99"),
)


def rows_for(result: Summary) -> list[Row]:
    """ROWS labelled for how the run made its monthly figures, then, when it covers more than one
    month, each month's own: a total extrapolated from a partial month says so, and per-user figures
    that are not one complete month's say what they are."""
    extrapolation = result.get("extrapolation")
    basis = result.get("per_user_month", "1 complete month")
    rows = [_labelled(row, extrapolation, basis) for row in ROWS]
    periods = result.get("periods", [])
    if len(periods) > 1:
        for index, period in enumerate(periods):
            name = period_name(period)
            rows += [(f"{name}: {label}", f"periods.{index}.{key}", usd) for label, key in PERIOD_FIGURES]
    return rows


def _labelled(row: Row, extrapolation: dict[str, Any] | None, basis: str) -> Row:
    label, key, fmt = row
    if key == "cost_usd" and extrapolation is not None:
        days = extrapolation["basis"].split(" ", 1)[0]
        return (f"{label} (extrapolated from {days} days)", key, fmt)
    if (key == "cost_usd" or key.startswith("cost_per_user_month_usd.")) and basis != "1 complete month":
        return (f"{label} ({basis})", key, fmt)
    return row


def period_name(period: dict[str, Any]) -> str:
    """ "2026-11", or "2026-12, 15 of 31 days" for a month the run ends inside."""
    start = str(period["start"])
    name = start[:7] if start.endswith("-01") else start
    return name if period["complete"] else f"{name}, {period['days']} of {period['month_days']} days"


TOKEN_LABELS = {
    "input": "input tokens",
    "cached_input": "  of which cached",
    "cache_write": "  of which cache writes",
    "output": "output tokens",
}


def token_rows(results: Sequence[Summary]) -> list[tuple[str, str]]:
    """(label, flat key) of the billed-token rows: the totals, then each model's that billed any."""
    rows = [(TOKEN_LABELS[kind], f"tokens.{kind}") for kind, _ in TOKEN_COLUMNS]
    models = sorted(
        {m for r in results for m, tokens in r.get("tokens_by_model", {}).items() if any(tokens.values())}
    )
    for model in models:
        rows += [
            (f"{model}: {TOKEN_LABELS[kind].strip()}", f"tokens_by_model.{model}.{kind}")
            for kind, _ in TOKEN_COLUMNS
        ]
    return rows


def _token_title(days: int) -> str:
    return f"billed tokens, {days} days"


INTERVAL_LEGEND = (
    "x ± a [± b]: x = mean over replications, a = 95% CI of the mean, "
    "b = 95% prediction interval for one month"
)


def interval_legend(results: Sequence[Summary]) -> str | None:
    """The line that names the two intervals, when any result carries them (two or more replications)."""
    return INTERVAL_LEGEND if any("ci95" in result for result in results) else None


def figure_cell(result: Summary, key: str, fmt: Callable[[float], str]) -> str | None:
    """One figure of a result as text: "x ± a [± b]" with its intervals (INTERVAL_LEGEND), or None when
    the result lacks it."""
    flat = flatten(result)
    if key not in flat:
        return None
    text = fmt(flat[key])
    of_the_mean = result.get("ci95", {}).get(key)
    if not of_the_mean:
        return text
    for_one_month = result.get("pi95", {}).get(key)
    month = f" [± {fmt(for_one_month)}]" if for_one_month is not None else ""
    return f"{text} ± {fmt(of_the_mean)}{month}"


def _grid(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def forecast_table(forecast: Forecast) -> str:
    """One column per MAU level; with replications, each figure's two intervals as INTERVAL_LEGEND says."""
    header = ["", *(f"{r['mau']:,} MAU" for r in forecast.results)]
    rows = []
    for label, key, fmt in rows_for(forecast.results[0]):
        cells = [figure_cell(result, key, fmt) for result in forecast.results]
        if all(cell is not None for cell in cells):
            rows.append([label, *(cell or "" for cell in cells)])
    models = sorted({m for r in forecast.results for m in r["calls_by_model"]})
    for model in models:
        rows.append(
            [f"calls to {model}", *(count(r["calls_by_model"].get(model, 0)) for r in forecast.results)]
        )
    runs = f"{forecast.replications} replication(s)"
    title = f"{forecast.scenario}: seed {forecast.seed}, {forecast.days} days, {runs}"
    legend = interval_legend(forecast.results)
    if legend:
        title = f"{title}\n{legend}"
    tokens = [
        [label, *(count(flatten(r).get(key, 0.0)) for r in forecast.results)]
        for label, key in token_rows(forecast.results)
    ]
    token_header = [_token_title(forecast.days), *header[1:]]
    return f"{title}\n{_grid(header, rows)}\n\n{_grid(token_header, tokens)}"


def change(before: float, after: float, fmt: Callable[[float], str] = usd) -> str:
    """Relative change; for scores, the change in points (a quality drop is read in points)."""
    if fmt is score:
        return f"{after - before:+.1f} pts"
    if before == 0:
        return "n/a"
    return f"{100 * (after - before) / before:+.0f}%"


def comparison_table(forecasts: Sequence[Forecast]) -> str:
    """Per MAU level: the scenarios side by side, and the change from the first to each other one."""
    blocks = []
    for level, first in enumerate(forecasts[0].results):
        header = ["", *(f.scenario for f in forecasts), *(f"Δ {f.scenario}" for f in forecasts[1:])]
        rows = []
        for label, key, fmt in rows_for(first):
            cells = [figure_cell(f.results[level], key, fmt) for f in forecasts]
            if any(cell is None for cell in cells):
                continue
            base = flatten(first)[key]
            deltas = [change(base, flatten(f.results[level])[key], fmt) for f in forecasts[1:]]
            rows.append([label, *(cell or "" for cell in cells), *deltas])
        blocks.append(
            f"{first['mau']:,} MAU\n{_grid(header, rows)}\n\n{_token_grid(forecasts, level, header)}"
        )
    headline = [headline_line(forecasts[0], other) for other in forecasts[1:]]
    legend = interval_legend([r for f in forecasts for r in f.results])
    return "\n\n".join(([legend] if legend else []) + blocks + headline)


def _token_grid(forecasts: Sequence[Forecast], level: int, header: Sequence[str]) -> str:
    """The billed tokens of each scenario at one MAU level, and the change from the first."""
    results = [f.results[level] for f in forecasts]
    flat = [flatten(r) for r in results]
    rows = []
    for label, key in token_rows(results):
        values = [f.get(key, 0.0) for f in flat]
        rows.append([label, *(count(v) for v in values), *(change(values[0], v, count) for v in values[1:])])
    return _grid([_token_title(forecasts[0].days), *header[1:]], rows)


def headline_line(before: Forecast, after: Forecast) -> str:
    """ "cost per session $0.43 -> $0.07, -84%; quality 91 -> 89" at the largest MAU level."""
    a, b = before.results[-1], after.results[-1]
    cost_a, cost_b = a["cost_per_session_usd"], b["cost_per_session_usd"]
    return (
        f"{before.scenario} -> {after.scenario} at {a['mau']:,} MAU: cost per session {usd(cost_a)} -> "
        f"{usd(cost_b)}, {change(cost_a, cost_b)}; cost per user-month p90 "
        f"{usd(a['cost_per_user_month_usd']['p90'])} -> {usd(b['cost_per_user_month_usd']['p90'])}; "
        f"quality {a['quality']:.0f} -> {b['quality']:.0f}"
    )
