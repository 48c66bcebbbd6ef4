"""`--engine whole|days` and `--spill DIR` for `simulate` and `compare`: which engine runs a forecast.

`whole` (the default) holds a run's month in memory: the fastest up to a few million MAU. `days` draws the
traffic a block of users at a time, spills it to disk by day and plays it a day at a time -- a few days at
once while they hold at most 3M requests (sim/io/streaming_run.py): memory bounded by that plus what
carries over, for 10M MAU; the figures are the same to the byte. With `--out` it writes each run's usage
rows as it makes them, a part at a time (with a cap, a block of users at a time after the last day): the
whole engine's rows, numbered in the order written. With `--workers N` each process stages its run's rows
as Parquet under `--spill` (else the system's temporary directory) and this one loads them as each run is
done; not with `--executor` (the rows are written on this machine).

Its runs go where the whole engine's do (sim/workbench/executor.py `run_replications`): here one after
another, on `--workers N` processes, or on a Dask cluster (`--executor`). Each run spills under its own
temporary directory in `--spill` (else the system's temporary directory of the machine that runs it; on a
cluster, a `--spill` path must exist on every worker), and each process holds a part's working set: N
workers need N times a run's peak (the README's "Scaling out the simulator": about 1.6 GB at 100k MAU,
2.4 GB at 1M).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from sim.cli.common import fail


def engine_choice(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add `--engine` and `--spill` to a forecasting command."""
    command = click.option(
        "--spill",
        type=click.Path(file_okay=False, path_type=Path),
        help="With --engine days: the directory each run's days are spilled under (default: the system's "
        "temporary directory; a 10M-MAU month takes about 50 GB a run; with --executor, the same path on "
        "every worker, which must exist there)",
    )(command)
    return click.option(
        "--engine",
        type=click.Choice(["whole", "days"]),
        default="whole",
        show_default=True,
        help="whole: a run's month in memory (fastest); days: a day at a time (a few while they hold at "
        "most 3M requests), memory bounded by that, the same figures and --out rows (for millions of MAU; "
        "with --workers N, each of the N processes holds its part: about 2.4 GB at 1M MAU)",
    )(command)


def check_engine(engine: str, spill: Path | None, out: Path | None, on_cluster: bool) -> None:
    """Check the flags that go with the chosen engine: a mistake is one line and exit 2. (Each day-engine
    run spills under a fresh temporary directory in `spill`, or in the system's when None -- on whichever
    machine runs it: `spill` must be a directory here unless the runs go `on_cluster`, whose workers
    check it where they are.)"""
    if engine == "whole":
        if spill is not None:
            fail("--spill is for --engine days: the whole-run engine spills nothing")
        return
    if out is not None and on_cluster:
        fail("--engine days --out writes its rows on this machine: drop --executor (--workers N is fine)")
    if spill is not None and not on_cluster and not spill.is_dir():
        fail(f"--spill {spill}: no such directory")
