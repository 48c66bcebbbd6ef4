"""A real Dask cluster on this machine's loopback: a scheduler and workers as separate processes of this
environment (so they run this margins), on free ports, stopped with everything they started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from distributed import Client

from tests.budget.broker import free_port

ROOT = Path(__file__).resolve().parents[2]
# Start-up here is a few seconds a process; a loaded 2-core machine takes far longer.
START_TIMEOUT_S = 120.0
STOP_GRACE_S = 3.0  # a test cluster's processes hold nothing worth waiting for


class LocalCluster:
    """`with LocalCluster(workers=2) as cluster:` -- `cluster.url` is its dask:// URL."""

    def __init__(self, workers: int = 2) -> None:
        self.port = free_port()
        self.url = f"dask://127.0.0.1:{self.port}"
        self.address = f"tcp://127.0.0.1:{self.port}"
        self._workers = workers
        self.scheduler: subprocess.Popen[bytes] | None = None
        self.worker_processes: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> LocalCluster:
        try:
            self.scheduler = _start(
                "distributed.cli.dask_scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--no-dashboard",
            )
            for _ in range(self._workers):
                self.add_worker()
            self.wait_for_workers(self._workers)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

    def add_worker(self) -> None:
        """One more worker process (no nanny: a killed worker stays dead)."""
        self.worker_processes.append(
            _start(
                "distributed.cli.dask_worker",
                self.address,
                "--host",
                "127.0.0.1",
                "--nthreads",
                "1",
                "--no-nanny",
                "--no-dashboard",
            )
        )

    def client(self) -> Client:
        return Client(self.address, timeout=START_TIMEOUT_S, set_as_default=False)

    def wait_for_workers(self, count: int) -> None:
        with self.client() as client:
            client.wait_for_workers(count, timeout=START_TIMEOUT_S)

    def stop(self) -> None:
        """Stop the workers, then the scheduler; each is killed if it has not left within STOP_GRACE_S
        (distributed's workers say "End worker" on SIGTERM and then often linger: the suite paid 30 s per
        cluster for that)."""
        for process in [*self.worker_processes, self.scheduler]:
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in [*self.worker_processes, self.scheduler]:
            if process is None:
                continue
            try:
                process.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _start(module: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=os.environ.copy(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_until_busy(cluster: LocalCluster, timeout_s: float = START_TIMEOUT_S) -> str:
    """The address of a worker that is running a task, once one is."""
    deadline = time.monotonic() + timeout_s
    with cluster.client() as client:
        while time.monotonic() < deadline:
            busy = [worker for worker, tasks in client.processing().items() if tasks]
            if busy:
                return str(busy[0])
            time.sleep(0.05)
    raise TimeoutError(f"no worker of {cluster.url} started a task within {timeout_s:g} s")


def pid_of(cluster: LocalCluster, worker: str) -> int:
    """The process id of the worker at `worker` (its address)."""
    with cluster.client() as client:
        return int(client.run(os.getpid, workers=[worker])[worker])


def _executed(dask_worker: Any) -> int:
    return int(dask_worker.state.executed_count)


def tasks_run(cluster: LocalCluster) -> int:
    """How many tasks the cluster's workers have run so far."""
    with cluster.client() as client:
        return sum(client.run(_executed).values())
