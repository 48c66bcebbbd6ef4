"""Benchmark of the simulator: `uv run python -m benchmarks.engine` (not a timed test).

Runs a scenario's full MAU table (default: scenarios/seed-story/optimized.toml at 1k, 10k and 100k MAU
for 30 days) with the fast path, and the per-request SimPy reference -- one generator per request --
over the same traffic as the baseline, each in a fresh process so that its peak memory is its own.
Prints simulated requests per second, wall time and peak memory of each, and the speed-up. The fast
table runs `--repeat` times (each in a fresh process) because a shared machine's noise is as large as
the figures' differences: every run's rate is printed, the per-level table is the median run's, and the
targets are judged on the median.

`--against OTHER.toml` measures what a scenario's difference costs the fast path instead: the two
scenarios' tables run `--repeat` times each, interleaved (first, other, first, ...) so that both see the
same load, and it prints every run, both medians and their ratio, of wall time and of the processes' CPU
time (which other processes on a busy machine sway less), e.g. the seed story with its conversation
context against benchmarks/optimized-without-context.toml.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import time
from dataclasses import dataclass
from pathlib import Path

from sim.io.scenarios import load_scenario
from sim.model.engine import simulate
from sim.model.reference import simulate_reference

DEFAULT_SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "seed-story" / "optimized.toml"
TARGET_RATE, TARGET_TABLE_S, TARGET_PEAK_GB = 1_000_000, 10.0, 3.0


@dataclass(frozen=True, slots=True)
class Measure:
    """One timed run: how many requests, how long, the process's peak resident memory."""

    mode: str
    mau: int
    requests: int
    seconds: float
    peak_gb: float
    cpu_seconds: float = 0.0  # the process's CPU time: less swayed than wall time by other processes

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def _measure(mode: str, scenario_path: str, maus: list[int], days: int, seed: int) -> list[Measure]:
    """Runs in a fresh process: each MAU level in turn; peak memory is the process's high-water mark."""
    scenario, catalog = load_scenario(scenario_path)
    run = simulate if mode == "fast" else simulate_reference
    measures = []
    for mau in maus:
        start, cpu_start = time.perf_counter(), time.process_time()
        result = run(scenario, catalog, mau, days, seed)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
        measures.append(Measure(mode, mau, result.traffic.requests, seconds, peak_gb, cpu_seconds))
    return measures


def measure_in_fresh_process(
    mode: str, scenario: str, maus: list[int], days: int, seed: int
) -> list[Measure]:
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(_measure, (mode, scenario, maus, days, seed))


def table_rate(measures: list[Measure]) -> float:
    """Requests per second over a whole MAU table."""
    return sum(m.requests for m in measures) / sum(m.seconds for m in measures)


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def compare_interleaved(first: str, other: str, maus: list[int], days: int, seed: int, repeat: int) -> None:
    """Both scenarios' fast-path tables, interleaved; the medians of wall and CPU time and their ratios."""
    wall: dict[str, list[float]] = {first: [], other: []}
    cpu: dict[str, list[float]] = {first: [], other: []}
    requests = 0
    for _ in range(repeat):
        for scenario in (first, other):
            measures = measure_in_fresh_process("fast", scenario, maus, days, seed)
            requests = sum(m.requests for m in measures)
            wall[scenario].append(sum(m.seconds for m in measures))
            cpu[scenario].append(sum(m.cpu_seconds for m in measures))
            print(
                f"{Path(scenario).name:>36}: {requests:,} requests in {wall[scenario][-1]:.2f} s "
                f"= {requests / wall[scenario][-1]:,.0f} req/s (CPU {cpu[scenario][-1]:.2f} s), "
                f"peak memory {max(m.peak_gb for m in measures):.2f} GB"
            )
    name, other_name = Path(first).name, Path(other).name
    for label, times in (("wall", wall), ("CPU", cpu)):
        mine, theirs = median(times[first]), median(times[other])
        print(
            f"median {label} time of {repeat}: {name} {mine:.2f} s ({requests / mine:,.0f} req/s), "
            f"{other_name} {theirs:.2f} s ({requests / theirs:,.0f} req/s): {mine / theirs:.2f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--scenario", default=str(DEFAULT_SCENARIO))
    parser.add_argument("--mau", default="1000,10000,100000")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--reference-mau",
        default="1000,10000",
        help="MAU levels the per-request baseline runs (100000 takes minutes); empty for none",
    )
    parser.add_argument("--repeat", type=int, default=3, help="fast-path runs of the table (median taken)")
    parser.add_argument(
        "--against", help="a second scenario: time both fast paths, interleaved, instead of the reference"
    )
    args = parser.parse_args()
    maus = [int(m) for m in args.mau.split(",")]
    reference_maus = [int(m) for m in args.reference_mau.split(",") if m]

    print(f"scenario {args.scenario}, {args.days} days, seed {args.seed}")
    if args.against:
        print(f"against {args.against}")
        compare_interleaved(args.scenario, args.against, maus, args.days, args.seed, args.repeat)
        return
    runs = [
        measure_in_fresh_process("fast", args.scenario, maus, args.days, args.seed)
        for _ in range(args.repeat)
    ]
    runs.sort(key=table_rate)
    fast = runs[len(runs) // 2]
    reference = measure_in_fresh_process("reference", args.scenario, reference_maus, args.days, args.seed)
    by_mau = {m.mau: m for m in reference}
    print(f"{'MAU':>8} {'requests':>10} {'fast s':>8} {'fast req/s':>12} ", end="")
    print(f"{'ref s':>8} {'ref req/s':>10} {'speed-up':>9}")
    for m in fast:
        ref = by_mau.get(m.mau)
        ref_cells = "       -          -         -"
        if ref:
            ref_cells = f"{ref.seconds:8.2f} {ref.rate:10,.0f} {ref.seconds / m.seconds:8.1f}x"
        print(f"{m.mau:>8,} {m.requests:>10,} {m.seconds:8.2f} {m.rate:12,.0f} {ref_cells}")
    total_requests = sum(m.requests for m in fast)
    total_seconds = sum(m.seconds for m in fast)
    peak = max(m.peak_gb for m in fast)
    rate = table_rate(fast)
    print(f"full MAU table (fast path, median of {len(runs)} runs): {total_requests:,} requests in ", end="")
    print(f"{total_seconds:.2f} s = {rate:,.0f} req/s, peak memory {peak:.2f} GB")
    print(f"every run, slowest first: {', '.join(f'{table_rate(r):,.0f}' for r in runs)} req/s")
    if reference:
        ref_rate = table_rate(reference)
        ref_peak = max(m.peak_gb for m in reference)
        print(f"per-request SimPy reference: {ref_rate:,.0f} req/s, peak memory {ref_peak:.2f} GB")
    verdict = {True: "met", False: "MISSED"}
    print(
        f"targets: >= {TARGET_RATE:,} req/s: {verdict[rate >= TARGET_RATE]}; "
        f"table <= {TARGET_TABLE_S:.0f} s: {verdict[total_seconds <= TARGET_TABLE_S]}; "
        f"peak <= {TARGET_PEAK_GB:.0f} GB: {verdict[peak <= TARGET_PEAK_GB]}"
    )


if __name__ == "__main__":
    main()
