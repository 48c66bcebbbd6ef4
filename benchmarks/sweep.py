"""Sweep benchmark: the same grid run serially (one process) and on a process pool (one worker per core).

    uv run python -m benchmarks.sweep [--mau 10000] [--days 30] [--workers N]

Prints each wall time, how many cores were busy (CPU seconds over wall seconds), the machine's load
before each run (other work on the machine takes cores from the pool), the speed-up, and whether both
runs gave the same table (they must: a point's figures depend only on its scenario and the seed). A
benchmark, not a test: timings vary by machine and by what else runs on it.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

from sim.io.scenarios import load_scenario
from sim.workbench.executor import default_workers
from sim.workbench.sweep import run_sweep
from sim.workbench.sweep_render import sweep_table
from sim.workbench.variants import grid, parse_vary

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "scenarios" / "seed-story" / "optimized.toml"
GRID = ("cache.semantic.threshold=0.80,0.85,0.90,0.95", "router.cheap_share=0.6,0.7,0.75")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--mau", type=int, default=10000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--workers", type=int, default=default_workers())
    args = parser.parse_args()
    base, _ = load_scenario(SCENARIO)
    variants = grid(base, [parse_vary(spec) for spec in GRID], str(SCENARIO))
    print(
        f"grid: {len(variants)} points of {SCENARIO.relative_to(ROOT)} ({' x '.join(GRID)}), "
        f"{args.mau:,} MAU, {args.days} days"
    )
    timings = {}
    tables = {}
    for label, workers in (("serial", 1), (f"pool of {args.workers}", args.workers)):
        load = os.getloadavg()[0]
        cpu = _cpu_seconds()
        start = time.perf_counter()
        result = run_sweep(base.name, variants, args.mau, args.days, 1, workers)
        timings[label] = time.perf_counter() - start
        busy = (_cpu_seconds() - cpu) / timings[label]
        tables[label] = sweep_table(result)
        print(
            f"{label:>12}: {timings[label]:6.2f} s wall ({len(variants) / timings[label]:.2f} points/s), "
            f"{busy:.2f} cores busy; machine load before: {load:.2f}"
        )
    serial, parallel = timings.values()
    print(f"    speed-up: {serial / parallel:.2f}x on {args.workers} worker(s)")
    print(f"  same table: {'yes' if len(set(tables.values())) == 1 else 'NO'}")


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the pool's workers, once joined)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


if __name__ == "__main__":
    main()
