"""What the command modules share: one-line failures, output files, MAU levels and forecast options."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

if TYPE_CHECKING:
    from sim.io.forecast_db import ForecastWriter
    from sim.model.forecast import Forecast

T = TypeVar("T")


def fail(message: str) -> NoReturn:
    """One clear line on stderr and exit code 2: bad input is never a traceback."""
    click.echo(f"margins: {message}", err=True)
    sys.exit(2)


def write_or_fail(path: Path, write: Callable[[], T], errors: tuple[type[Exception], ...] = (OSError,)) -> T:
    """Run `write`, which writes `path`, and return what it returns; a failure is one line naming the path
    and exit 2, not a traceback."""
    try:
        return write()
    except errors as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        fail(f"{path}: (file): cannot be written: {reason}")


def parse_mau(_ctx: click.Context, _param: click.Parameter, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        levels = [int(part.replace("_", "")) for part in value.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"expected whole numbers separated by commas, got {value!r}") from None
    if not levels or any(level < 1 for level in levels):
        raise click.BadParameter(f"expected MAU levels >= 1, got {value!r}")
    return levels


def forecast_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options `simulate` and `compare` share."""
    options = [
        click.option(
            "--mau", callback=parse_mau, help="MAU levels, e.g. 1000,10000,100000 (default: the scenario's)"
        ),
        click.option(
            "--days",
            type=click.IntRange(1, 30),
            help="Days to simulate, at most the 30-day month (default: the scenario's)",
        ),
        click.option(
            "--seed", type=int, default=1, show_default=True, help="Same seed, same traffic, same numbers"
        ),
        click.option("--replications", type=click.IntRange(1, 100), default=1, show_default=True),
        click.option(
            "--out",
            type=click.Path(dir_okay=False, path_type=Path),
            help="DuckDB file for events and figures",
        ),
        click.option(
            "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def run_forecast(
    path: str,
    mau: list[int] | None,
    days: int | None,
    seed: int,
    replications: int,
    writer: ForecastWriter | None,
) -> Forecast:
    from sim.errors import SimError
    from sim.io.scenarios import load_scenario
    from sim.model.forecast import forecast

    try:
        scenario, catalog = load_scenario(path)
    except SimError as error:
        fail(str(error))
    result = forecast(
        scenario,
        catalog,
        mau or scenario.traffic.mau,
        days or scenario.traffic.days,
        seed,
        replications,
        on_run=writer.write_run if writer is not None else None,
    )
    if writer is not None:
        writer.write_forecast(result)
    return result


def run_forecasts(
    paths: list[str], mau: list[int] | None, days: int | None, seed: int, replications: int, out: Path | None
) -> list[Forecast]:
    """Forecast each scenario file, writing every run into `out` (DuckDB) when given."""
    writer: ForecastWriter | None = None
    if out is not None:
        # DuckDB and polars load only for a run that writes them (about 0.4 s of start-up)
        from sim.io.forecast_db import ForecastWriter

        writer = ForecastWriter(out)
    try:
        return [run_forecast(path, mau, days, seed, replications, writer) for path in paths]
    finally:
        if writer is not None:
            writer.close()
