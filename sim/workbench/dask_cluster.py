"""A sweep's points on a Dask cluster (the `cluster` extra): connect to the scheduler, check that every
worker runs this very margins, submit the points, collect them in order, and turn whatever goes wrong
into one ClusterError naming the cluster's URL.

Dask ships each point as a pickle -- its scenario and price catalog by value (about 14 KB), the code by
reference -- so every worker, and the scheduler (it unpickles the points), needs margins installed: the
same version, the same code and the same numpy (whose random streams may change between versions). That
is checked before the first point is sent, and again by each point where it runs (a worker may join
later). A worker that dies mid-sweep is the scheduler's business:
it reschedules the point on another worker. A point that takes down several workers, a cluster left
with no workers, or a scheduler that goes away ends the sweep: the caller gets an error, never a partial
table.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import logging
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

from distributed import Client, Future, wait
from distributed.client import FuturesCancelledError
from distributed.scheduler import KilledWorker

import budget
import sim
from sim.errors import ClusterError, WorkerCannotRun, WorkerMismatch
from sim.io.progress import Progress

T = TypeVar("T")
# How often the sweep looks at the cluster's health while no point finishes.
POLL_S = 1.0
DISTRIBUTION = "margins"
SCHEDULER = "the scheduler"


class Cluster(Protocol):
    """What this module needs to know of a cluster (sim.workbench.executor.Cluster is one)."""

    @property
    def url(self) -> str: ...  # as the user wrote it, named in every message
    @property
    def address(self) -> str: ...  # as Dask dials it
    @property
    def connect_timeout_s(self) -> float: ...
    @property
    def no_workers_grace_s(self) -> float: ...


def run_all(cluster: Cluster, tasks: Sequence[tuple[str, Callable[[], T]]], progress: Progress) -> list[T]:
    """Run each named task on `cluster` and return the results in the tasks' order; `progress` advances
    as each finishes. Raises ClusterError when they cannot all run."""
    with _quiet_dask(), _connected(cluster) as client:
        expected = worker_identity()
        workers = _check_workers(cluster, client, expected)
        progress.note(f"{len(tasks)} points on {cluster.url} ({workers} workers)")
        futures = [client.submit(_checked, expected, task, pure=False) for _, task in tasks]
        return _collect(cluster, client, futures, [name for name, _ in tasks], progress)


@functools.cache
def worker_identity() -> str:
    """What must match between the client and a worker for the same point to give the same figures:
    margins' version, a hash of its code (sim and budget), and numpy's version."""
    digest = hashlib.sha256()
    for package in (sim, budget):
        root = Path(package.__file__ or "").parent
        for path in sorted(root.rglob("*.py")):
            digest.update(str(path.relative_to(root.parent)).encode())
            digest.update(path.read_bytes())
    return (
        f"margins {_version()} (code {digest.hexdigest()[:12]}), numpy {importlib.metadata.version('numpy')}"
    )


def mismatches(
    expected_version: str, expected: str, versions: dict[str, object], identities: dict[str, object]
) -> list[str]:
    """Each worker that cannot run these points, and why: without margins, another version, other code
    or another numpy. `versions` maps a worker to the margins version it has installed (or the error
    asking for it raised); `identities` maps the workers that have it to their `worker_identity`."""
    problems = []
    for worker, version in sorted(versions.items()):
        if isinstance(version, importlib.metadata.PackageNotFoundError):
            problems.append(f"{worker} has no margins installed")
        elif isinstance(version, BaseException):
            problems.append(f"{worker} cannot say which margins it has ({type(version).__name__}: {version})")
        elif version != expected_version:
            problems.append(f"{worker} has margins {version}, this is {expected_version}")
        elif isinstance(identity := identities.get(worker), BaseException):
            problems.append(f"{worker} cannot load margins ({type(identity).__name__}: {identity})")
        elif identity != expected:
            problems.append(f"{worker} runs {identity}, this runs {expected}")
    return problems


def _version() -> str:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:  # a checkout on sys.path, not installed
        return "(not installed)"


def _checked(expected: str, task: Callable[[], T]) -> T:
    """Run `task` on a worker that is what the client expects (a worker may join after the first check)."""
    if (found := worker_identity()) != expected:
        raise WorkerMismatch(f"a worker runs {found}, this runs {expected}")
    return task()


@contextlib.contextmanager
def _quiet_dask() -> Iterator[None]:
    """Dask logs every reconnect attempt and lost worker, tracebacks included, to stderr, and warns when
    the client's and the scheduler's packages differ; the sweep reports one line instead. (Its loggers set
    their own levels, so each is switched off, not just the parent.)"""
    names = [name for name in logging.root.manager.loggerDict if name.split(".")[0] == "distributed"]
    loggers = [logging.getLogger(name) for name in ["distributed", *names]]
    before = [logger.disabled for logger in loggers]
    for logger in loggers:
        logger.disabled = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, disabled in zip(loggers, before, strict=True):
            logger.disabled = disabled


@contextlib.contextmanager
def _connected(cluster: Cluster) -> Iterator[Client]:
    try:
        client = Client(cluster.address, timeout=cluster.connect_timeout_s, set_as_default=False)
    except (OSError, TimeoutError) as error:
        raise ClusterError(cluster.url, f"cannot reach the scheduler at {cluster.address}: {error}") from None
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            client.close(timeout=cluster.connect_timeout_s)


def _check_workers(cluster: Cluster, client: Client, expected: str) -> int:
    """The number of workers, once the scheduler (which unpickles the points too) and each worker are known
    to run this margins; else ClusterError naming those that do not."""
    try:
        client.wait_for_workers(1, timeout=cluster.no_workers_grace_s)
        versions = client.run(importlib.metadata.version, DISTRIBUTION, on_error="return")
        ready = [worker for worker, version in versions.items() if version == _version()]
        identities = client.run(worker_identity, workers=ready, on_error="return") if ready else {}
        versions[SCHEDULER] = _on_scheduler(client, importlib.metadata.version, DISTRIBUTION)
        if versions[SCHEDULER] == _version():
            identities[SCHEDULER] = _on_scheduler(client, worker_identity)
    except TimeoutError:
        raise ClusterError(cluster.url, f"no worker joined within {cluster.no_workers_grace_s:g} s") from None
    except OSError as error:
        raise ClusterError(cluster.url, f"lost the scheduler while checking its workers: {error}") from None
    workers = len(versions) - 1
    if problems := mismatches(_version(), expected, dict(versions), dict(identities)):
        bad_workers = sum(not problem.startswith(SCHEDULER) for problem in problems)
        who = [SCHEDULER] if bad_workers < len(problems) else []
        who += [f"{bad_workers} of {workers} worker(s)"] if bad_workers else []
        raise ClusterError(
            cluster.url, f"{' and '.join(who)} cannot run these points: " + "; ".join(problems)
        )
    return workers


def _on_scheduler(client: Client, function: Callable[..., str], *args: str) -> object:
    """What `function` returns on the scheduler, or the exception it raised there."""
    try:
        return client.run_on_scheduler(function, *args)
    except (OSError, TimeoutError):
        raise
    except Exception as error:
        return error


def _collect(
    cluster: Cluster, client: Client, futures: list[Future[T]], names: list[str], progress: Progress
) -> list[T]:
    position = {future.key: index for index, future in enumerate(futures)}
    results: dict[int, T] = {}
    pending = set(futures)
    health = _Health(cluster, client)
    while pending:
        try:
            with client.as_current():
                done, pending = wait(list(pending), timeout=POLL_S, return_when="FIRST_COMPLETED")
        except TimeoutError:
            health.check()
            continue
        except FuturesCancelledError:
            raise ClusterError(cluster.url, "lost the scheduler: the points were cancelled") from None
        for future in done:
            index = position[future.key]
            results[index] = _result(cluster, future, names[index])
            progress.note(f"{names[index]} done")
            progress.advance()
    return [results[index] for index in range(len(futures))]


def _result(cluster: Cluster, future: Future[T], name: str) -> T:
    try:
        result: T = future.result()
    except KilledWorker as error:
        raise ClusterError(
            cluster.url, f"point {name} was running on each worker that died: {error}"
        ) from None
    except WorkerCannotRun as error:  # WorkerMismatch among them
        raise ClusterError(cluster.url, str(error)) from None
    except ModuleNotFoundError as error:
        if error.name and error.name.split(".")[0] in ("sim", "budget"):
            raise ClusterError(cluster.url, f"a worker has no margins installed ({error})") from None
        raise
    except (OSError, FuturesCancelledError) as error:
        raise ClusterError(cluster.url, f"lost the scheduler: {error}") from None
    except RuntimeError as error:
        # The scheduler unpickles each point; with other code it cannot (checked first, but it may change).
        if "deserialization" not in str(error):
            raise
        reason = str(error).splitlines()[0]
        raise ClusterError(cluster.url, f"the scheduler cannot load point {name}: {reason}") from None
    return result


class _Health:
    """Whether the cluster can still finish: a scheduler that answers, with at least one worker (or none
    for less than the grace period)."""

    def __init__(self, cluster: Cluster, client: Client) -> None:
        self._cluster, self._client = cluster, client
        self._alone_since: float | None = None

    def check(self) -> None:
        url = self._cluster.url
        if self._client.status not in ("running", "connecting"):
            raise ClusterError(url, f"lost the scheduler (client {self._client.status})")
        try:
            workers = self._client.nthreads()
        except (OSError, TimeoutError) as error:
            raise ClusterError(url, f"lost the scheduler: {error}") from None
        if workers:
            self._alone_since = None
            return
        now = time.monotonic()
        self._alone_since = self._alone_since or now
        if now - self._alone_since > self._cluster.no_workers_grace_s:
            raise ClusterError(
                url, f"no workers left for {self._cluster.no_workers_grace_s:g} s; the sweep stopped"
            )
