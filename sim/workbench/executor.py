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
import shutil
import socket
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from budget.domain.prices import PriceCatalog
from sim.errors import ArgumentError, ClusterError, WorkerCannotRun
from sim.io.progress import SILENT, Progress
from sim.model import engine
from sim.model.forecast import Replicated, Replication, Summary, replicate, summarize
from sim.model.scenario import Scenario
from sim.model.usage_chunk import UsageChunk
from sim.workbench.variants import Variant

if TYPE_CHECKING:
    from sim.io.usage_rows import RowLabels

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
class UsageOut:
    """Where day-engine runs' usage rows go (`--out`). A run played here writes them as it plays, to the
    sink `stream` opens for it; a run played in a pool's process stages them as Parquet batches labelled
    `labels(step)` (sim/io/usage_rows.py `parquet_batches`) in a directory of its own, which `load(run
    id, directory)` takes in here as soon as the run is done (sim/io/forecast_db.py `load_usage`)."""

    stream: UsageSinks
    labels: Callable[[Replication], RowLabels]
    load: Callable[[str, Path], object]


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
    usage: UsageOut | None = None,
) -> list[Replicated]:
    """Each of a forecast's runs (sim.model.forecast.replicate), in the plan's order: on `cluster` when
    given (raises ClusterError when it cannot run them all), else on a pool of `workers` processes (1 runs
    them here). The runs themselves come back only when `keep_runs` (they hold every request's arrays);
    otherwise only their summaries do. `progress` advances as each run finishes (here, it also notes each
    day-engine run's phase).

    With `by_day`, each run is played a day at a time (run_by_day) and only its summary comes back; each
    spills under its own temporary directory in `spill`, else in the system's temporary directory of
    whichever machine runs it (on a cluster, `spill` must exist on every worker). `usage` (with `by_day`,
    here or on the pool, not on a cluster): where each run's usage rows go (`--out`, UsageOut); a pool's
    runs stage theirs in a temporary directory in `spill` (else the system's), removed after."""
    replications = 1 + max((step.replication for step in plan), default=0)
    here = cluster is None and max(1, min(workers, len(plan))) == 1
    if usage is not None and (not by_day or cluster is not None):
        raise ArgumentError("usage", "is for day-engine runs played on this machine")
    runs = _Runs(scenario, catalog, days, seed, keep_runs, by_day, spill)
    named = [(replication_name(step, replications), step) for step in plan]
    if here:
        return runs.one_after_another(named, usage, progress)
    if usage is not None:
        return runs.pooled_with_usage(named, usage, min(workers, len(plan)), progress)
    tasks = [(name, runs.task(step)) for name, step in named]
    if cluster is not None:
        return _clustered(cluster, tasks, progress)
    return _pooled(min(workers, len(tasks)), tasks, "runs", progress)


@dataclass(frozen=True, slots=True)
class _Runs:
    """A forecast's runs of one scenario, as tasks (picklable: partials of module-level functions)."""

    scenario: Scenario
    catalog: PriceCatalog
    days: int
    seed: int
    keep_runs: bool
    by_day: bool
    spill: Path | None

    def task(
        self,
        step: Replication,
        on_phase: Callable[[str], object] | None = None,
        usage: Callable[[UsageChunk], object] | None = None,
    ) -> Callable[[], Replicated]:
        """One run: the whole engine's (`replicate`), or the day engine's (`run_by_day`, its phases heard
        by `on_phase` and its usage rows by `usage`)."""
        scenario, catalog, days, seed = self.scenario, self.catalog, self.days, self.seed
        if not self.by_day:
            return functools.partial(
                replicate, scenario, catalog, step.mau, days, seed, step.replication, self.keep_runs
            )
        return functools.partial(
            run_by_day, scenario, catalog, step.mau, days, seed, step.replication, self.spill, on_phase, usage
        )

    def one_after_another(
        self, named: Sequence[tuple[str, Replication]], usage: UsageOut | None, progress: Progress
    ) -> list[Replicated]:
        """The runs here, each day-engine run's phases noted as it plays and its rows written as made."""
        results = []
        for name, step in named:
            heard = _noting(progress, name) if self.by_day else None
            if usage is None:
                results.append(self.task(step, heard)())
            else:
                with usage.stream(step) as sink:
                    results.append(self.task(step, heard, sink)())
            progress.note(f"{name} done")
            progress.advance()
        return results

    def pooled_with_usage(
        self, named: Sequence[tuple[str, Replication]], usage: UsageOut, workers: int, progress: Progress
    ) -> list[Replicated]:
        """Day-engine runs on a pool, each staging its usage rows in a directory of a temporary one under
        `spill`, loaded here (and removed) as soon as that run is done, while the others play."""
        staging = Path(tempfile.mkdtemp(prefix="margins-usage-", dir=self.spill))
        try:
            directories = [staging / f"run-{index}" for index in range(len(named))]
            labels = [usage.labels(step) for _, step in named]
            tasks = [
                (name, functools.partial(
                    _by_day_staged, directory, labelled, self.scenario, self.catalog, step, self.days,
                    self.seed, self.spill,
                ))
                for (name, step), directory, labelled in zip(named, directories, labels, strict=True)
            ]  # fmt: skip

            def load(index: int) -> None:
                usage.load(labels[index].run_id, directories[index])
                shutil.rmtree(directories[index], ignore_errors=True)

            return _pooled(workers, tasks, "runs", progress, load)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


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


def _by_day_staged(
    directory: Path,
    labels: RowLabels,
    scenario: Scenario,
    catalog: PriceCatalog,
    step: Replication,
    days: int,
    seed: int,
    spill: Path | None,
) -> Replicated:
    """A day-engine run in a pool's process: its usage rows staged as Parquet batches in `directory`."""
    from sim.io.usage_rows import UsageStream, parquet_batches

    with UsageStream(parquet_batches(directory), labels) as sink:
        return run_by_day(scenario, catalog, step.mau, days, seed, step.replication, spill, None, sink)


def replication_name(step: Replication, replications: int) -> str:
    """How progress names a run: "10,000 MAU, replication 2" (just the level when it is run once)."""
    level = f"{step.mau:,} MAU"
    return level if replications == 1 else f"{level}, replication {step.replication + 1}"


def _pooled(
    workers: int,
    tasks: Sequence[tuple[str, Callable[[], T]]],
    what: str,
    progress: Progress,
    on_done: Callable[[int], object] | None = None,
) -> list[T]:
    """Each named task's result, in the tasks' order, from a pool of `workers` processes (each task a
    picklable callable: a module-level function's partial); `on_done` hears each task's index as it is
    done, here, while the others go on."""
    progress.note(f"{len(tasks)} {what} on {workers} processes")
    results: dict[int, T] = {}
    # spawn: no inherited state, the same on every platform.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = {pool.submit(task): index for index, (_, task) in enumerate(tasks)}
        for future in as_completed(futures):
            index = futures[future]
            results[index] = future.result()
            if on_done is not None:
                on_done(index)
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
