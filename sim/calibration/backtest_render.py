"""A back-test as a table for the terminal, and as JSON."""

from __future__ import annotations

from typing import Any

from sim.calibration.backtest import Backtest, Figure
from sim.calibration.backtest_usage import describe_duration, describe_time


def render(result: Backtest, source: str) -> str:
    """The back-test's header (what was fitted and forecast, the trend) and its figures."""
    trend = result.trend

    def at(moment: float) -> str:
        return describe_time(result.absolute, moment, result.start)

    period = _growth_period(trend.bin_s)
    lines = [
        f"backtest of {source}",
        f"fitted on {at(result.start)} .. {at(result.until)} ({result.training_requests:,} requests, "
        f"{trend.bins} bins of {describe_duration(trend.bin_s)}); forecast {at(result.until)} .. "
        f"{at(result.until + result.horizon_s)} ({describe_duration(result.horizon_s)})",
        f"trend: {trend.growth(period):+.1%} a {_PERIOD_NAMES[period]} (+- {trend.growth_se(period):.1%}); "
        f"variation around it: {trend.dispersion:.3f} (sd of log requests a bin), lag-1 autocorrelation "
        f"{trend.autocorrelation:.2f}",
        _volume_line(result),
        f"{result.level:.0%} interval: the requests' spread, the variation per request and the "
        f"simulation's over {result.replications} replications; naive = the last "
        f"{describe_duration(result.horizon_s)} before the cut-off, scaled to the horizon",
        *(f"# {note}" for note in result.notes),
        "",
    ]
    header = (
        "figure",
        "actual",
        "forecast",
        f"{result.level:.0%} interval",
        "inside",
        "error",
        "naive",
        "naive error",
    )
    rows = [header] + [_row(figure) for figure in result.figures]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [
            cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def to_json(result: Backtest, source: str) -> dict[str, Any]:
    """The back-test as one JSON object."""
    trend = result.trend
    return {
        "source": source,
        "start": describe_time(result.absolute, result.start, result.start),
        "train_until": describe_time(result.absolute, result.until, result.start),
        "horizon_s": result.horizon_s,
        "training_requests": result.training_requests,
        "level": result.level,
        "replications": result.replications,
        "trend": {
            "bin_s": trend.bin_s,
            "bins": trend.bins,
            "growth_per_week": trend.growth_per_week,
            "growth_per_week_se": trend.growth_per_week_se,
            "dispersion": trend.dispersion,
            "autocorrelation": trend.autocorrelation,
        },
        "volume": {
            "method": result.volume.method,
            "checks": result.volume.checks,
            "trend_error": result.volume.trend_error,
            "level_error": result.volume.level_error,
            "log_sd": result.volume.log_sd,
        },
        "figures": [
            {
                "name": f.name,
                "actual": f.actual,
                "forecast": f.forecast,
                "low": f.low,
                "high": f.high,
                "inside": f.inside,
                "error": f.error,
                "naive": f.naive,
                "naive_error": f.naive_error,
            }
            for f in result.figures
        ],
        "notes": list(result.notes),
    }


_PERIOD_NAMES = {7 * 86400.0: "week", 3600.0: "hour", 60.0: "minute"}


def _volume_line(result: Backtest) -> str:
    volume = result.volume
    if volume.trend_error is None or volume.level_error is None:
        return (
            f"requests: by the trend ({volume.checks} earlier cut-offs: too few to compare it with the "
            "last period)"
        )
    return (
        f"requests: by the {volume.method}; at {volume.checks} earlier cut-offs the trend missed by "
        f"{volume.trend_error:.3f} and the last period by {volume.level_error:.3f} (rms log error)"
    )


def _growth_period(bin_s: float) -> float:
    """The period growth is told over: a week for bins of hours or days, else an hour or a minute (a
    week's growth from a trend over an hour would be a meaningless extrapolation)."""
    if bin_s >= 3600.0:
        return 7 * 86400.0
    return 3600.0 if bin_s >= 60.0 else 60.0


def _row(figure: Figure) -> tuple[str, ...]:
    dollars = "USD" in figure.name
    interval = (
        "-"
        if figure.low is None or figure.high is None
        else f"{_number(figure.low, dollars)} .. {_number(figure.high, dollars)}"
    )
    inside = {None: "-", True: "yes", False: "NO"}[figure.inside]
    return (
        figure.name,
        _number(figure.actual, dollars),
        _number(figure.forecast, dollars),
        interval,
        inside,
        _percent(figure.error),
        _number(figure.naive, dollars),
        _percent(figure.naive_error),
    )


def _number(value: float, dollars: bool) -> str:
    if dollars:
        return f"${value:,.2f}" if abs(value) >= 100 else f"${value:,.4f}"
    return f"{value:,.0f}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1%}"
