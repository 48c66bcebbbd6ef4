"""The workbench's commands: `margins sweep` and `margins goal-seek` (registered by sim/cli/__init__.py).

Bad input -- a bad --vary, an unknown scenario key, a value the scenario rejects -- is one line on
stderr and exit code 2, through sim.cli.fail. Goal seek finding nothing is an answer, not an error:
it says so and exits 0.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from sim.cli.common import DAYS, DAYS_HELP, cannot_write, fail, parse_mau, stop, write_or_fail
from sim.cli.placement import executor_option, only_one_place
from sim.errors import ClusterError, SimError
from sim.io.progress import progress_bar, wanted

if TYPE_CHECKING:
    from sim.workbench.executor import Cluster
    from sim.workbench.sweep import Sweep


def _one_level(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    levels = parse_mau(ctx, param, value)
    if levels is None:
        return None
    if len(levels) != 1:
        raise click.BadParameter(f"a sweep runs at one MAU level, got {value!r}")
    return levels[0]


def sweep_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options `sweep` and `goal-seek` share."""
    options: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
        click.option(
            "--vary",
            "varies",
            multiple=True,
            metavar="KEY=V1,V2,...",
            help="A dotted scenario key and its values, e.g. cache.semantic.threshold=0.85,0.9 (repeatable)",
        ),
        click.option("--mau", callback=_one_level, help="The MAU level (default: the scenario's first)"),
        click.option("--days", type=DAYS, help=DAYS_HELP),
        click.option("--seed", type=int, default=1, show_default=True, help="Same seed, same traffic"),
        click.option("--workers", type=click.IntRange(1, 256), help="Processes (default: one per core)"),
        executor_option,
        click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="DuckDB file"),
        click.option(
            "--plot", type=click.Path(dir_okay=False, path_type=Path), help="PNG of the cost-quality frontier"
        ),
        click.option(
            "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
        ),
        click.option(
            "--progress/--no-progress",
            default=True,
            show_default=True,
            help="Progress bar on stderr (only when it is a terminal, never with --format json)",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _sweep(
    path: str,
    varies: tuple[str, ...],
    mau: int | None,
    days: int | None,
    seed: int,
    workers: int | None,
    cluster: Cluster | None,
    out: Path | None,
    plot: Path | None,
    show_progress: bool,
) -> Sweep:
    from sim.io.scenarios import load_scenario
    from sim.workbench.sweep import run_sweep
    from sim.workbench.variants import grid, parse_vary

    try:
        base, _ = load_scenario(path)
        variants = grid(base, [parse_vary(spec) for spec in varies], path)
    except SimError as error:
        fail(str(error))
    level = mau or base.traffic.mau[0]
    only_one_place(workers, cluster)
    try:
        with progress_bar("sweep", "point", show_progress, len(variants)) as bar:
            result = run_sweep(
                base.name, variants, level, days or base.traffic.days, seed, workers, bar, cluster
            )
    except ClusterError as error:
        stop(str(error))
    if out is not None:
        import duckdb

        from sim.workbench.sweep_store import write_sweep

        write_or_fail(out, lambda: write_sweep(out, result), (OSError, duckdb.Error))
    if plot is not None:
        from sim.io.figures import save
        from sim.workbench.plots import frontier_figure

        write_or_fail(plot, lambda: save(frontier_figure(result), plot))
    return result


@click.command()
@click.argument("scenario", type=click.Path(dir_okay=False))
@sweep_options
def sweep(
    scenario: str,
    varies: tuple[str, ...],
    mau: int | None,
    days: int | None,
    seed: int,
    workers: int | None,
    cluster: Cluster | None,
    out: Path | None,
    plot: Path | None,
    fmt: str,
    progress: bool,
) -> None:
    """Run every combination of the --vary values on the same traffic, cheapest first, frontier marked."""
    from sim.workbench.sweep_render import sweep_table

    if not varies:
        fail("sweep needs at least one --vary KEY=V1,V2,...")
    result = _sweep(scenario, varies, mau, days, seed, workers, cluster, out, plot, wanted(fmt, progress))
    if fmt == "json":
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        click.echo(sweep_table(result))


@click.command("goal-seek")
@click.argument("scenario", type=click.Path(dir_okay=False))
@click.option(
    "--max-per-user-month",
    "limit",
    type=click.FloatRange(min=0.0),
    required=True,
    help="Most the p90 user may cost in a month (USD)",
)
@click.option("--min-quality", type=click.FloatRange(0.0, 100.0), help="Least acceptable quality (0-100)")
@sweep_options
def goal_seek_command(
    scenario: str,
    limit: float,
    min_quality: float | None,
    varies: tuple[str, ...],
    mau: int | None,
    days: int | None,
    seed: int,
    workers: int | None,
    cluster: Cluster | None,
    out: Path | None,
    plot: Path | None,
    fmt: str,
    progress: bool,
) -> None:
    """Which configurations keep the p90 user-month under a limit (and quality above a floor), best first."""
    from sim.workbench.goal_seek import goal_seek
    from sim.workbench.sweep_render import goal_seek_table

    result = _sweep(scenario, varies, mau, days, seed, workers, cluster, out, plot, wanted(fmt, progress))
    answer = goal_seek(result, limit, min_quality)
    if fmt == "json":
        click.echo(json.dumps(answer.to_json(), indent=2))
    else:
        click.echo(goal_seek_table(result, answer))


@click.command()
@click.argument("scenario", type=click.Path(dir_okay=False))
@click.option(
    "--baseline", type=click.Path(dir_okay=False), help="A scenario to compare against (e.g. the naive MVP)"
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("report.html"),
    show_default=True,
    help="The HTML page; its PNG figures are written beside it",
)
@click.option(
    "--mau", callback=parse_mau, help="MAU levels, e.g. 1000,10000,100000 (default: the scenario's)"
)
@click.option("--days", type=DAYS, help=DAYS_HELP)
@click.option("--seed", type=int, default=1, show_default=True, help="Same seed, same traffic")
@click.option(
    "--workers", type=click.IntRange(1, 256), help="Processes for the lever runs (default: the cores)"
)
@executor_option
@click.option(
    "--replications",
    type=click.IntRange(1, 100),
    default=1,
    show_default=True,
    help="Runs per MAU level for the MAU table; two or more give its 95% intervals",
)
def report(
    scenario: str,
    baseline: str | None,
    out: Path,
    mau: list[int] | None,
    days: int | None,
    seed: int,
    workers: int | None,
    cluster: Cluster | None,
    replications: int,
) -> None:
    """Write the unit-economics report of SCENARIO: one self-contained HTML page with its figures."""
    from sim.workbench.report import gather, write_report

    only_one_place(workers, cluster)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        fail(f"{out}: cannot create its folder: {error.strerror or error}")
    try:
        with progress_bar("report", "run", wanted()) as bar:
            data = gather(scenario, baseline, mau, days, seed, workers, bar, replications, cluster)
            bar.note(f"drawing the figures, writing {out}")
            written = write_report(out, data)
    except ClusterError as error:
        stop(str(error))
    except SimError as error:
        fail(str(error))
    except OSError as error:
        fail(cannot_write(out, error))
    for path in written:
        click.echo(str(path))
