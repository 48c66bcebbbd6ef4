"""`margins backtest`: fit on the usage before a cut-off, forecast the part after it, compare."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import click

from sim.cli.common import fail

if TYPE_CHECKING:
    from sim.calibration.backtest_usage import Usage


@click.command()
@click.option("--trace", type=click.Path(dir_okay=False), help="A trace file (azure, mooncake, usage-jsonl)")
@click.option("--trace-format", help="azure | mooncake | usage-jsonl (default: told from the file)")
@click.option(
    "--store", type=click.Path(file_okay=False), help="The enforcer's event store instead of a trace"
)
@click.option(
    "--train-until",
    "train_until",
    required=True,
    help="The cut-off T: an offset from the first request (21d, 40m) or, with real timestamps, a date-time",
)
@click.option("--horizon", help="How long after T to forecast (7d, 20m; default: to the data's end)")
@click.option("--model", help="Price every call at this model (a trace's default: gpt-4o-mini)")
@click.option("--replications", type=click.IntRange(2, 100), default=10, show_default=True)
@click.option(
    "--level", type=click.FloatRange(0.5, 0.999), default=0.9, show_default=True, help="Interval level"
)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def backtest(
    trace: str | None,
    trace_format: str | None,
    store: str | None,
    train_until: str,
    horizon: str | None,
    model: str | None,
    replications: int,
    level: float,
    seed: int,
    fmt: str,
) -> None:
    """Fit on the usage before --train-until, forecast the horizon after it, and print forecast vs actual
    (cost, requests, tokens, per model, per user decile) with a prediction interval, beside the naive
    "same as the last period" forecast."""
    from sim.calibration import backtest as bt
    from sim.calibration.backtest_render import render, to_json
    from sim.calibration.backtest_usage import parse_cutoff, parse_duration
    from sim.errors import SimError

    if (store is None) == (trace is None):
        fail("backtest needs one source: --trace FILE or --store PATH")
    try:
        if trace is not None:
            usage = _trace_usage(trace, trace_format, model)
            source = trace
        else:
            assert store is not None
            usage = _store_usage(store, train_until, horizon)
            source = f"the store {store}"
        until = parse_cutoff(train_until, usage)
        horizon_s = None if horizon is None else parse_duration(horizon, "--horizon")
        result = bt.backtest(usage, until, horizon_s, model, replications, seed, level)
    except SimError as error:
        fail(str(error))
    if fmt == "json":
        click.echo(json.dumps(to_json(result, source), indent=2))
    else:
        click.echo(render(result, source))


def _trace_usage(trace: str, trace_format: str | None, model: str | None) -> Usage:
    from sim.calibration.backtest_usage import usage_from_events, usage_from_trace
    from sim.io.traces import detect_format, parse_trace, read_trace_text, usage_events

    text = read_trace_text(trace)
    chosen = trace_format or detect_format(trace, text)
    if chosen == "usage-jsonl" and model is None:
        return usage_from_events(usage_events(trace, text), trace)
    return usage_from_trace(parse_trace(trace, text, chosen), model)


def _store_usage(store: str, train_until: str, horizon: str | None) -> Usage:
    """The store's usage in the months around T (a store's T must be a date: its usage spans months)."""
    from sim.calibration.backtest_usage import parse_duration, usage_from_events
    from sim.calibration.fit import read_store_usage

    try:
        cut = datetime.fromisoformat(train_until.strip())
    except ValueError:
        fail(
            f"--train-until: with --store, expected a date-time such as 2026-11-21T00:00, got {train_until!r}"
        )
    cut = cut if cut.tzinfo else cut.replace(tzinfo=UTC)
    after = timedelta(seconds=parse_duration(horizon, "--horizon")) if horizon else timedelta(days=62)
    months = _months(cut - timedelta(days=62), cut + after)
    return usage_from_events([e for m in months for e in read_store_usage(store, m)], store)


def _months(first: datetime, last: datetime) -> list[str]:
    months, year, month = [], first.year, first.month
    while (year, month) <= (last.year, last.month):
        months.append(f"{year:04d}-{month:02d}")
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return months
