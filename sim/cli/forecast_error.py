"""`margins forecast-error`: a forecast against the month's actual spend, as a table and DuckDB views."""

from __future__ import annotations

import click

from sim.cli.common import fail


@click.command("forecast-error")
@click.option(
    "--forecast", "forecast_path", required=True, help="A DuckDB file from `margins simulate --out`"
)
@click.option("--store", required=True, help="The enforcer's event store")
@click.option("--month", required=True, help="The month of actual spend, YYYY-MM")
@click.option("--run", help="The forecast run to compare (default: every run, when they are replications)")
def forecast_error(forecast_path: str, store: str, month: str, run: str | None) -> None:
    """Compare forecast spend with actual spend overall, per model and per user decile; the comparison is
    also written into the forecast file (views forecast_error_overall, _by_model, _by_decile)."""
    from sim.calibration.forecast_error import compare, render
    from sim.errors import SimError

    try:
        report = compare(forecast_path, store, month, run)
    except SimError as error:
        fail(str(error))
    click.echo(render(report, month))
