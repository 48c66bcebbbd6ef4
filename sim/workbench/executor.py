"""Where a sweep's points and a forecast's replications run: in this process, on a process pool across
this machine's cores (`--workers N`), or on a Dask cluster (`--executor dask://HOST:PORT`, the `cluster`
extra).

A point's figures depend only on its scenario, its price catalog, the MAU level, the days and the seed
(a replication's also on its replication number) -- never on which process or machine ran it, or when --
so every place gives the same table to the byte, and results come back in the order they were asked for
whatever order they finish in.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import re
import socket
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from budget.domain.prices import PriceCatalog
from sim.errors import ArgumentError, ClusterError, WorkerCannotRun
from sim.io.progress import SILENT, Progress
from sim.model import engine
from sim.model.forecast import Replicated, Replication, Summary, replicate, summarize
from sim.model.scenario import Scenario
from sim.model.usage_chunk import UsageChunk
from sim.workbench.variants import Variant

DASK_SCHEME = "dask://"
DEFAULT_DASK_PORT = 8786
# How long to wait for the scheduler to answer; a refused port is retried until then.
CONNECT_TIMEOUT_S = 10.0
# How long a cluster may have no workers at all before the sweep gives up (Dask itself would wait forever).
NO_WORKERS_GRACE_S = 30.0
T = TypeVar("T")
# Per run (its Replication): a context manager giving the sink its usage rows go to (sim/io/forecast_db.py
# `ForecastWriter.usage_stream`), which writes the last of them on leaving.
UsageSinks = Callable[[Replication], AbstractContextManager[Callable[[UsageChunk], object]]]
_HOST_PORT = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(?::(?P<port>\d{1,5}))?$")


@dataclass(frozen=True, slots=True)
class Cluster:
    """A Dask cluster's scheduler: `url` as the user wrote it (named in every message), `address` as
    Dask dials it."""

    url: str
    address: str
    connect_timeout_s: float = CONNECT_TIMEOUT_S
    no_workers_grace_s: float = NO_WORKERS_GRACE_S


def parse_cluster(url: str) -> Cluster:
    """`dask://HOST[:PORT]` (port 8786 by default) as a Cluster; anything else raises ArgumentError."""
    if not url.startswith(DASK_SCHEME):
        scheme = url.split("://", 1)[0] + "://" if "://" in url else url
        raise ArgumentError(
            "--executor", f"{scheme!r} is not a cluster this margins runs on; expected dask://HOST:PORT"
        )
    match = _HOST_PORT.match(url.removeprefix(DASK_SCHEME).rstrip("/"))
    if match is None:
        raise ArgumentError("--executor", f"{url!r} is not dask://HOST:PORT")
    port = int(match["port"] or DEFAULT_DASK_PORT)
    if not 0 < port < 65536:
        raise ArgumentError("--executor", f"{url!r}: port {port} is outside 1-65535")
    return Cluster(url, f"tcp://{match['host']}:{port}")


def run_point(
    scenario: Scenario,
    catalog: PriceCatalog,
    mau: int,
    days: int,
    seed: int,
    on_phase: Callable[[str], object] | None = None,
) -> Summary:
    """Simulate one variant and summarize it (the unit of work a worker does)."""
    return summarize(engine.simulate(scenario, catalog, mau, days, seed, on_phase=on_phase))


def default_workers() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def run_points(
    variants: Sequence[Variant],
    mau: int,
    days: int,
    seed: int,
    workers: int | None = None,
    progress: Progress = SILENT,
    cluster: Cluster | None = None,
) -> list[Summary]:
    """Each variant's summary, in the variants' order: on `cluster` when given (raises ClusterError when
    it cannot run them all), else on a pool of `workers` processes (default: the cores; 1 runs here).

    `progress` advances as each point finishes and notes the point (in this process, also its phase).
    """
    if cluster is not None:
        return _on_cluster(cluster, variants, mau, days, seed, progress)
    workers = max(1, min(workers or default_workers(), len(variants)))
    if workers == 1:
        return _in_process(variants, mau, days, seed, progress)
    return _on_pool(workers, variants, mau, days, seed, progress)


def point_name(variant: Variant) -> str:
    """How progress and messages name a point: its settings, or "(base)"."""
    return variant.label() or "(base)"


def _in_process(
    variants: Sequence[Variant], mau: int, days: int, seed: int, progress: Progress
) -> list[Summary]:
    results = []
    for variant in variants:
        heard = _noting(progress, point_name(variant))
        results.append(run_point(variant.scenario, variant.catalog, mau, days, seed, heard))
        progress.advance()
    return results


def _on_pool(
    workers: int, variants: Sequence[Variant], mau: int, days: int, seed: int, progress: Progress
) -> list[Summary]:
    tasks = [
        (point_name(v), functools.partial(run_point, v.scenario, v.catalog, mau, days, seed))
        for v in variants
    ]
    return _pooled(workers, tasks, "points", progress)


def _on_cluster(
    cluster: Cluster, variants: Sequence[Variant], mau: int, days: int, seed: int, progress: Progress
) -> list[Summary]:
    tasks = [
        (point_name(v), functools.partial(run_point, v.scenario, v.catalog, mau, days, seed))
        for v in variants
    ]
    return _clustered(cluster, tasks, progress)


def run_replications(
    scenario: Scenario,
    catalog: PriceCatalog,
    days: int,
    seed: int,
    plan: Sequence[Replication],
    keep_runs: bool,
    workers: int = 1,
    cluster: Cluster | None = None,
    progress: Progress = SILENT,
    by_day: bool = False,
    spill: Path | None = None,
    usage: UsageSinks | None = None,
) -> list[Replicated]:
    """Each of a forecast's runs (sim.model.forecast.replicate), in the plan's order: on `cluster` when
    given (raises ClusterError when it cannot run them all), else on a pool of `workers` processes (1 runs
    them here). The runs themselves come back only when `keep_runs` (they hold every request's arrays);
    otherwise only their summaries do. `progress` advances as each run finishes (here, it also notes each
    day-engine run's phase).

    With `by_day`, each run is played a day at a time (run_by_day) and only its summary comes back; each
    spills under its own temporary directory in `spill`, else in the system's temporary directory of
    whichever machine runs it (on a cluster, `spill` must exist on every worker). `usage` (with `by_day`,
    the runs played here only): opens each run's usage sink (`--out`), which hears its rows as it plays."""
    replications = 1 + max((step.replication for step in plan), default=0)
    here = cluster is None and max(1, min(workers, len(plan))) == 1
    if usage is not None and not (by_day and here):
        raise ArgumentError("usage", "is for day-engine runs played here, one after another")

    def task(step: Replication, name: str) -> Callable[[], Replicated]:
        if not by_day:
            return functools.partial(
                replicate, scenario, catalog, step.mau, days, seed, step.replication, keep_runs
            )
        heard = _noting(progress, name) if here else None  # a phase heard elsewhere cannot reach the bar
        if usage is not None:
            return functools.partial(
                _by_day_with_usage, usage, scenario, catalog, step, days, seed, spill, heard
            )
        return functools.partial(
            run_by_day, scenario, catalog, step.mau, days, seed, step.replication, spill, heard
        )

    named = [(replication_name(step, replications), step) for step in plan]
    tasks = [(name, task(step, name)) for name, step in named]
    if cluster is not None:
        return _clustered(cluster, tasks, progress)
    if not here:
        return _pooled(min(workers, len(tasks)), tasks, "runs", progress)
    results = []
    for name, run in tasks:
        results.append(run())
        progress.note(f"{name} done")
        progress.advance()
    return results


def run_by_day(
    scenario: Scenario,
    catalog: PriceCatalog,
    mau: int,
    days: int,
    seed: int,
    replication: int,
    spill: Path | None,
    on_phase: Callable[[str], object] | None = None,
    usage: Callable[[UsageChunk], object] | None = None,
) -> Replicated:
    """One run played a day at a time (sim/io/streaming_run.py), spilled under a temporary directory in
    `spill` (the system's temporary directory where this runs when None), removed after: its summary, and
    no run (the day engine never holds one). Raises WorkerCannotRun when `spill` is not a directory here
    (the command line checks it on this machine; a cluster's worker is another). `usage` hears the run's
    usage rows as it plays (sim/io/streaming_run.py)."""
    if spill is not None and not spill.is_dir():
        raise WorkerCannotRun(f"--spill {spill} is not a directory on {socket.gethostname()}")
    # Imported here: the day engine spills with pyarrow, which a whole-engine run never loads.
    from sim.io.streaming_run import simulate_streaming

    summary = simulate_streaming(
        scenario, catalog, mau, days, seed, replication, spill_root=spill, on_phase=on_phase, usage=usage
    )
    return summary, None


def _by_day_with_usage(
    usage: UsageSinks,
    scenario: Scenario,
    catalog: PriceCatalog,
    step: Replication,
    days: int,
    seed: int,
    spill: Path | None,
    on_phase: Callable[[str], object] | None,
) -> Replicated:
    """A day-engine run whose usage rows go to the sink `usage` opens for it (closed after the run)."""
    with usage(step) as sink:
        return run_by_day(scenario, catalog, step.mau, days, seed, step.replication, spill, on_phase, sink)


def replication_name(step: Replication, replications: int) -> str:
    """How progress names a run: "10,000 MAU, replication 2" (just the level when it is run once)."""
    level = f"{step.mau:,} MAU"
    return level if replications == 1 else f"{level}, replication {step.replication + 1}"


def _pooled(
    workers: int, tasks: Sequence[tuple[str, Callable[[], T]]], what: str, progress: Progress
) -> list[T]:
    """Each named task's result, in the tasks' order, from a pool of `workers` processes (each task a
    picklable callable: a module-level function's partial)."""
    progress.note(f"{len(tasks)} {what} on {workers} processes")
    results: dict[int, T] = {}
    # spawn: no inherited state, the same on every platform.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = {pool.submit(task): index for index, (_, task) in enumerate(tasks)}
        for future in as_completed(futures):
            index = futures[future]
            results[index] = future.result()
            progress.note(f"{tasks[index][0]} done")
            progress.advance()
    return [results[index] for index in range(len(tasks))]


def _clustered(cluster: Cluster, tasks: Sequence[tuple[str, Callable[[], T]]], progress: Progress) -> list[T]:
    try:
        from sim.workbench import dask_cluster
    except ImportError as error:
        raise ClusterError(
            cluster.url, f"needs the cluster extra (pip install 'margins[cluster]'): {error}"
        ) from None
    return dask_cluster.run_all(cluster, tasks, progress)


def _noting(progress: Progress, point: str) -> Callable[[str], None]:
    return lambda phase: progress.note(f"{point}: {phase}")
