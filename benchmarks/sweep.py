"""Sweep benchmark: the same grid run serially (one process), on the local process pool (one worker per
core) and on a Dask cluster, interleaved round by round.

    uv run python -m benchmarks.sweep [--mau 10000] [--days 30] [--workers N] [--rounds 3]
                                      [--executor dask://HOST:PORT] [--overhead-points 12]

Without --executor it starts a cluster on this machine's loopback (a scheduler and --workers worker
processes) and times that too. Prints each wall time, how many of this machine's cores the local runs kept
busy (CPU seconds over wall seconds; a cluster's workers are not this process's children, so not for it),
the machine's load before each run, the medians, and whether every run gave the same table (they must: a
point's figures depend only on its scenario and the seed). Then the cost of a point itself: a grid of tiny
points (100 MAU, one day), where nearly all the time is getting the point to a worker and back. A
benchmark, not a test: timings vary by machine and by what else runs on it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from sim.io.scenarios import load_scenario
from sim.workbench.executor import Cluster, default_workers, parse_cluster
from sim.workbench.sweep import Sweep, run_sweep
from sim.workbench.sweep_render import sweep_table
from sim.workbench.variants import Variant, grid, parse_vary

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "scenarios" / "seed-story" / "optimized.toml"
GRID = ("cache.semantic.threshold=0.80,0.85,0.90,0.95", "router.cheap_share=0.6,0.7,0.75")
TINY_MAU, TINY_DAYS = 100, 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--mau", type=int, default=10000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--executor", help="dask://HOST:PORT of a running cluster (default: start one here)")
    parser.add_argument("--overhead-points", type=int, default=12)
    args = parser.parse_args()
    base, _ = load_scenario(SCENARIO)
    variants = grid(base, [parse_vary(spec) for spec in GRID], str(SCENARIO))
    print(
        f"grid: {len(variants)} points of {SCENARIO.relative_to(ROOT)} ({' x '.join(GRID)}), "
        f"{args.mau:,} MAU, {args.days} days; load average {_load()}"
    )
    with _cluster(args.executor, args.workers) as cluster:
        ways: dict[str, Callable[[list[Variant], int, int], Sweep]] = {
            "serial": lambda v, mau, days: run_sweep(base.name, v, mau, days, 1, 1),
            f"pool of {args.workers}": lambda v, mau, days: run_sweep(
                base.name, v, mau, days, 1, args.workers
            ),
            f"cluster ({cluster.url})": lambda v, mau, days: run_sweep(
                base.name, v, mau, days, 1, cluster=cluster
            ),
        }
        walls = _rounds(ways, variants, args.mau, args.days, args.rounds)
        tiny = grid(base, [parse_vary(_tiny_vary(args.overhead_points))], str(SCENARIO))
        print(f"\nper point: {len(tiny)} tiny points ({TINY_MAU} MAU, {TINY_DAYS} day), load {_load()}")
        tiny_walls = _rounds(ways, tiny, TINY_MAU, TINY_DAYS, args.rounds)
    serial = statistics.median(walls["serial"])
    print(f"\nmedians of {args.rounds} ({len(variants)} points at {args.mau:,} MAU; per tiny point):")
    for label, runs in walls.items():
        wall = statistics.median(runs)
        per_point = statistics.median(tiny_walls[label]) / len(tiny)
        print(
            f"{label:>34}: {wall:6.2f} s, {serial / wall:.2f}x serial; "
            f"{per_point * 1000:6.1f} ms a tiny point"
        )


def _rounds(
    ways: dict[str, Callable[[list[Variant], int, int], Sweep]],
    variants: list[Variant],
    mau: int,
    days: int,
    rounds: int,
) -> dict[str, list[float]]:
    walls: dict[str, list[float]] = {label: [] for label in ways}
    tables = set()
    for round_number in range(1, rounds + 1):
        for label, run in ways.items():
            load = os.getloadavg()[0]
            cpu = _cpu_seconds()
            start = time.perf_counter()
            result = run(variants, mau, days)
            wall = time.perf_counter() - start
            busy = (
                ""
                if label.startswith("cluster")
                else f", {(_cpu_seconds() - cpu) / wall:.2f} cores busy here"
            )
            walls[label].append(wall)
            tables.add(sweep_table(result))
            print(
                f"round {round_number} {label:>34}: {wall:6.2f} s ({len(variants) / wall:.2f} points/s)"
                f"{busy}; load before {load:.2f}"
            )
    print(f"  same table every run: {'yes' if len(tables) == 1 else 'NO'}")
    return walls


@contextlib.contextmanager
def _cluster(url: str | None, workers: int) -> Iterator[Cluster]:
    if url is not None:
        yield parse_cluster(url)
        return
    from tests.sim.local_cluster import LocalCluster

    start = time.perf_counter()
    with LocalCluster(workers) as local:
        print(
            f"started {local.url}: a scheduler and {workers} workers in {time.perf_counter() - start:.1f} s"
        )
        yield parse_cluster(local.url)


def _tiny_vary(points: int) -> str:
    return "cache.semantic.threshold=" + ",".join(
        f"{0.5 + 0.49 * i / max(points - 1, 1):.4f}" for i in range(points)
    )


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the pool's workers, once joined)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


if __name__ == "__main__":
    main()
