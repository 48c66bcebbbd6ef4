"""`margins replay`: a trace through the cost levers, with the same figures as `simulate`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from sim.cli.common import fail
from sim.io.progress import progress_bar, wanted

if TYPE_CHECKING:
    from sim.model.forecast import Forecast
    from sim.model.run import RunResult


@click.command()
@click.argument("trace", type=click.Path(dir_okay=False))
@click.option(
    "--trace-format",
    # sim.io.traces.FORMATS, spelled out so that --help need not import the trace readers (numpy)
    help="The trace's format: azure | mooncake | usage-jsonl (default: told from the file's first line)",
)
@click.option(
    "--policies",
    type=click.Path(dir_okay=False),
    help="A scenario TOML whose levers (caches, router, providers, retries, streaming) to replay through; "
    "only what it states changes the pass-through (no failures or rate limits it does not write)",
)
@click.option("--model", help="The one model of the pass-through (default gpt-4o-mini; not with --policies)")
@click.option(
    "--seed", type=int, default=1, show_default=True, help="Seed of the injected failures and draws"
)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="DuckDB file: append the replay's usage events, figures and tokens (as `simulate --out` does)",
)
def replay(
    trace: str,
    trace_format: str | None,
    policies: str | None,
    model: str | None,
    seed: int,
    fmt: str,
    out: Path | None,
) -> None:
    """Replay TRACE (real arrival times and token counts) and print the same figures as `simulate`.

    Without --policies every lever is off and nothing fails: the trace's own cost at --model's prices.
    With --policies only what the file states changes that pass-through.
    """
    from sim.calibration.replay import (
        DEFAULT_MODEL,
        passthrough_scenario,
        policies_scenario,
        prompt_cache_figures,
    )
    from sim.calibration.replay import replay as run_replay
    from sim.errors import SimError
    from sim.io.scenarios import read_table
    from sim.io.traces import read_trace
    from sim.workbench import render

    if policies is not None and model is not None:
        fail("--model is for the pass-through; with --policies the file's [router] names the models")
    try:
        with progress_bar("replay", "run", wanted(fmt), total=1) as bar:
            bar.note(f"reading {Path(trace).name}")
            rows = read_trace(trace, trace_format)
            if policies is not None:
                scenario, catalog = policies_scenario(read_table(policies), policies)
            else:
                scenario, catalog = passthrough_scenario(model or DEFAULT_MODEL)
            run, result = run_replay(rows, scenario, catalog, seed, on_phase=bar.note)
            if out is not None:
                bar.note("writing its events")
                _store(out, run, result)
            bar.advance()
    except SimError as error:
        fail(str(error))
    if fmt == "json":
        report = result.to_json()
        report["trace"] = {
            "path": trace,
            "format": rows.format,
            "span_s": float(rows.t.max()),
            "exact_repeats": rows.exact_repeats,
        }
        report["prompt_cache"] = prompt_cache_figures(run)
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(render.forecast_table(result))


def _store(out: Path, run: RunResult, result: Forecast) -> None:
    """The replay's events and figures into DuckDB, under the replay's name (scenario on trace)."""
    # DuckDB and polars load only for a replay that writes them
    from sim.io.forecast_db import ForecastWriter

    writer = ForecastWriter(out)
    try:
        writer.write_run(run, result.scenario)
        writer.write_forecast(result)
    finally:
        writer.close()
