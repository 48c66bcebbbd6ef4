"""What the command modules share: one-line failures, output files, MAU levels and forecast options."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

if TYPE_CHECKING:
    from budget.domain.prices import PriceCatalog
    from sim.io.forecast_db import ForecastWriter
    from sim.io.progress import Progress
    from sim.io.usage_rows import UsageStream
    from sim.model.forecast import Forecast, Replicated, Replication
    from sim.model.run import RunResult
    from sim.model.scenario import Scenario
    from sim.workbench.executor import Cluster, UsageOut

T = TypeVar("T")


def fail(message: str) -> NoReturn:
    """One clear line on stderr and exit code 2: bad input is never a traceback. (Not while a progress bar
    is drawn: leave its block first, so the line does not land on the bar's.)"""
    click.echo(f"margins: {message}", err=True)
    sys.exit(2)


def stop(message: str) -> NoReturn:
    """One clear line on stderr and exit code 1: the input was fine but the run could not finish (a
    cluster that cannot be reached or went away). Like `fail`, never while a progress bar is drawn."""
    click.echo(f"margins: {message}", err=True)
    sys.exit(1)


def write_or_fail(path: Path, write: Callable[[], T], errors: tuple[type[Exception], ...] = (OSError,)) -> T:
    """Run `write`, which writes `path`, and return what it returns; a failure is one line naming the path
    and exit 2, not a traceback."""
    try:
        return write()
    except errors as error:
        fail(cannot_write(path, error))


def cannot_write(path: Path, error: Exception) -> str:
    """The one line saying that `path` could not be written, and why."""
    reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    return f"{path}: (file): cannot be written: {reason}"


def cache_dir_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """`--cache-dir`: where the commands that embed text keep their embeddings."""
    return click.option(
        "--cache-dir",
        type=click.Path(file_okay=False, path_type=Path),
        help="Where embeddings are cached (default: $XDG_CACHE_HOME/margins/embeddings, else "
        "~/.cache/margins/embeddings); delete it to clear the cache",
    )(command)


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


# Every command that simulates takes --days from this one range: sim.model.periods' MIN_DAYS..MAX_DAYS,
# written out so that reading the options does not import numpy (a test holds the two equal).
DAYS = click.IntRange(1, 366)
DAYS_HELP = (
    "Days to simulate, 1 to 366: whole or partial months from the scenario's start (default: the scenario's)"
)


def forecast_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options `simulate` and `compare` share."""
    options = [
        click.option(
            "--mau", callback=parse_mau, help="MAU levels, e.g. 1000,10000,100000 (default: the scenario's)"
        ),
        click.option("--days", type=DAYS, help=DAYS_HELP),
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


def run_forecasts(
    paths: list[str],
    mau: list[int] | None,
    days: int | None,
    seed: int,
    replications: int,
    out: Path | None,
    show_progress: bool = False,
    workers: int | None = None,
    cluster: Cluster | None = None,
    engine: str = "whole",
    spill: Path | None = None,
) -> list[Forecast]:
    """Forecast each scenario file, writing every run into `out` (DuckDB) when given; with `engine` "days",
    each run is played a day at a time (sim/io/streaming_run.py), spilled under `spill`, not whole.

    Every file is loaded (and checked) before the first run. With `show_progress`, a bar on stderr
    counts the runs -- scenarios x MAU levels x replications -- and names the run and its phase. The runs
    go to `cluster` when given, to a pool of `workers` processes when more than one (a scenario's runs at
    a time), else run here one after another -- whichever the engine; the result is the same to the byte.
    """
    from sim.errors import ClusterError, SimError
    from sim.io.progress import progress_bar
    from sim.io.scenarios import load_scenario

    try:
        loaded = [load_scenario(path) for path in paths]
    except SimError as error:
        fail(str(error))
    runs = sum(len(mau or scenario.traffic.mau) for scenario, _ in loaded) * replications
    writer: ForecastWriter | None = None
    if out is not None:
        # DuckDB and polars load only for a run that writes them (about 0.4 s of start-up)
        from sim.io.forecast_db import ForecastWriter

        writer = ForecastWriter(out)
    try:
        with progress_bar("compare" if len(paths) > 1 else "simulate", "run", show_progress, runs) as bar:
            return [
                _forecast(
                    scenario,
                    catalog,
                    mau,
                    days,
                    seed,
                    replications,
                    writer,
                    bar,
                    len(paths) > 1,
                    workers,
                    cluster,
                    spill if engine == "days" else None,
                    engine == "days",
                )
                for scenario, catalog in loaded
            ]
    except ClusterError as error:
        stop(str(error))
    finally:
        if writer is not None:
            writer.close()


def _forecast(
    scenario: Scenario,
    catalog: PriceCatalog,
    mau: list[int] | None,
    days: int | None,
    seed: int,
    replications: int,
    writer: ForecastWriter | None,
    bar: Progress,
    name_it: bool,
    workers: int | None,
    cluster: Cluster | None,
    spill: Path | None,
    by_day: bool,
) -> Forecast:
    """One scenario's forecast; the bar advances a run at a time and notes the phase (prefixed with the
    scenario's name when `name_it`)."""
    from sim.model.forecast import Execute, forecast

    prefix = f"{scenario.name}, " if name_it else ""

    def note(phase: str) -> None:
        bar.note(prefix + phase)

    usage = _usage_out(writer, scenario, seed) if writer is not None and by_day else None
    execute: Execute | None = None
    if by_day or cluster is not None or (workers or 1) > 1:
        from sim.workbench.executor import run_replications

        def execute(plan: Sequence[Replication], keep_runs: bool) -> list[Replicated]:
            return run_replications(
                scenario,
                catalog,
                days_run,
                seed,
                plan,
                keep_runs,
                workers or 1,
                cluster,
                _Prefixed(bar, prefix),
                by_day,
                spill,
                usage,
            )

    def ran(run: RunResult) -> None:
        if writer is not None:
            note(f"{run.traffic.mau:,} MAU: writing its events")
            writer.write_run(run)
        if execute is None:  # elsewhere, the bar advanced as each run came back
            bar.advance()

    days_run = days or scenario.traffic.days
    result = forecast(
        scenario,
        catalog,
        mau or scenario.traffic.mau,
        days_run,
        seed,
        replications,
        # Runs made elsewhere come back whole only to be written: otherwise only their summaries do. The
        # day engine has no whole run to hand back: it wrote its rows as it played.
        on_run=ran if (writer is not None and not by_day) or execute is None else None,
        on_phase=note,
        execute=execute,
    )
    if writer is not None:
        writer.write_forecast(result)
    return result


def _usage_out(writer: ForecastWriter, scenario: Scenario, seed: int) -> UsageOut:
    """Where the day engine's runs put their usage rows: written as each plays here, or staged by a pool's
    processes and loaded here as each is done."""
    from sim.io.forecast_db import run_labels
    from sim.workbench.executor import UsageOut

    def stream(step: Replication) -> UsageStream:
        return writer.usage_stream(scenario, seed, step.mau, step.replication)

    return UsageOut(
        stream, lambda step: run_labels(scenario, seed, step.mau, step.replication), writer.load_usage
    )


class _Prefixed:
    """A progress bar whose notes name the scenario (for `compare`), for the runs sent elsewhere (and the
    day engine's, here too)."""

    def __init__(self, bar: Progress, prefix: str) -> None:
        self._bar, self._prefix = bar, prefix

    def expect(self, total: int) -> None:
        self._bar.expect(total)

    def advance(self, units: int = 1) -> None:
        self._bar.advance(units)

    def note(self, text: str) -> None:
        self._bar.note(self._prefix + text)

    def say(self, line: str) -> None:
        self._bar.say(line)
