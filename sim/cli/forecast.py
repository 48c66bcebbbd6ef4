"""`margins simulate` and `margins compare`: forecast scenario files at their MAU levels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from sim.cli.common import fail, forecast_options, run_forecasts
from sim.cli.engine_choice import check_engine, engine_choice
from sim.cli.placement import only_one_place, replication_places
from sim.io.progress import wanted

if TYPE_CHECKING:
    from sim.workbench.executor import Cluster


@click.command()
@click.argument("scenario", type=click.Path(dir_okay=False))
@forecast_options
@replication_places
@engine_choice
def simulate(
    scenario: str,
    mau: list[int] | None,
    days: int | None,
    seed: int,
    replications: int,
    out: Path | None,
    fmt: str,
    workers: int | None,
    cluster: Cluster | None,
    engine: str,
    spill: Path | None,
) -> None:
    """Forecast spend and quality of SCENARIO (a TOML file) at each MAU level."""
    from sim.workbench import render

    only_one_place(workers, cluster)
    check_engine(engine, spill, out, cluster is not None)
    [result] = run_forecasts(
        [scenario], mau, days, seed, replications, out, wanted(fmt), workers, cluster, engine, spill
    )
    if fmt == "json":
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        click.echo(render.forecast_table(result))


@click.command()
@click.argument("scenarios", nargs=-1, required=True, type=click.Path(dir_okay=False))
@forecast_options
@replication_places
@engine_choice
def compare(
    scenarios: tuple[str, ...],
    mau: list[int] | None,
    days: int | None,
    seed: int,
    replications: int,
    out: Path | None,
    fmt: str,
    workers: int | None,
    cluster: Cluster | None,
    engine: str,
    spill: Path | None,
) -> None:
    """Run SCENARIOS on the same seed (the same traffic) and show them side by side with deltas."""
    from sim.workbench import render

    if len(scenarios) < 2:
        fail("compare needs at least two scenario files")
    only_one_place(workers, cluster)
    check_engine(engine, spill, out, cluster is not None)
    results = run_forecasts(
        list(scenarios), mau, days, seed, replications, out, wanted(fmt), workers, cluster, engine, spill
    )
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
