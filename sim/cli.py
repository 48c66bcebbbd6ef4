"""The `margins` command line: one group, the forecasting commands, and the budget side's commands.

Commands from other modules are imported only when run (LazyGroup): `margins spend` should not pay for
importing the simulator, nor `margins simulate` for the enforcer.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from budget.cli import LAZY_COMMANDS as BUDGET_COMMANDS

if TYPE_CHECKING:
    from sim.forecast import Forecast
    from sim.output import ForecastWriter

T = TypeVar("T")

# command name -> "module:attribute" of its click command
LAZY_COMMANDS = {
    **BUDGET_COMMANDS,
    "sweep": "sim.workbench_cli:sweep",
    "goal-seek": "sim.workbench_cli:goal_seek_command",
    "report": "sim.workbench_cli:report",
    "replay": "sim.replay_cli:replay",
    "fit": "sim.fit_cli:fit",
    "forecast-error": "sim.forecast_error_cli:forecast_error",
    "eval": "sim.router_eval_cli:eval_group",
    "calibrate": "sim.calibrate_cli:calibrate_group",
}


class LazyGroup(click.Group):
    """A click group whose commands from LAZY_COMMANDS are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LAZY_COMMANDS:
            module, _, attribute = LAZY_COMMANDS[cmd_name].partition(":")
            command = getattr(importlib.import_module(module), attribute)
            assert isinstance(command, click.Command)
            return command
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """margins: forecast and enforce what LLM features cost."""


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
    from sim.forecast import forecast
    from sim.scenario import load_scenario

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
    from sim.output import ForecastWriter

    writer = ForecastWriter(out) if out else None
    try:
        return [run_forecast(path, mau, days, seed, replications, writer) for path in paths]
    finally:
        if writer is not None:
            writer.close()


@main.command()
@click.argument("scenario", type=click.Path(dir_okay=False))
@forecast_options
def simulate(
    scenario: str,
    mau: list[int] | None,
    days: int | None,
    seed: int,
    replications: int,
    out: Path | None,
    fmt: str,
) -> None:
    """Forecast spend and quality of SCENARIO (a TOML file) at each MAU level."""
    from sim import render

    [result] = run_forecasts([scenario], mau, days, seed, replications, out)
    if fmt == "json":
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        click.echo(render.forecast_table(result))


@main.command()
@click.argument("scenarios", nargs=-1, required=True, type=click.Path(dir_okay=False))
@forecast_options
def compare(
    scenarios: tuple[str, ...],
    mau: list[int] | None,
    days: int | None,
    seed: int,
    replications: int,
    out: Path | None,
    fmt: str,
) -> None:
    """Run SCENARIOS on the same seed (the same traffic) and show them side by side with deltas."""
    from sim import render

    if len(scenarios) < 2:
        fail("compare needs at least two scenario files")
    results = run_forecasts(list(scenarios), mau, days, seed, replications, out)
    levels = {tuple(r["mau"] for r in f.results) for f in results}
    if len(levels) > 1:
        fail("the scenarios have different MAU levels; pass --mau to compare them on the same ones")
    if fmt == "json":
        click.echo(
            json.dumps(
                {
                    "seed": seed,
                    "scenarios": [f.to_json() for f in results],
                    "headline": [render.headline_line(results[0], f) for f in results[1:]],
                },
                indent=2,
            )
        )
    else:
        click.echo(render.comparison_table(results))


if __name__ == "__main__":
    main()
