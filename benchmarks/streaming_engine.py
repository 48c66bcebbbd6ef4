"""The day-at-a-time engine against the whole-run engine: `python -m benchmarks.streaming_engine`.

Each measure runs in a fresh process, so that its peak resident memory (the high-water mark, imports
included) is its own: the whole-run engine (`forecast.summarize(engine.simulate(...))`) and the day engine
(`simulate_streaming`, its days and TTFTs spilled under `--dir` as `--spill DIR` does: a run of one block
and one part holds its traffic in memory instead; disk is the most under it at any phase) at each MAU of
`--mau` (default 100k and 1M) in the same run, checking that the two give the same figures; then the day
engine alone at `--huge` MAU (default 10M; 0 skips) when `--dir`'s free space allows the largest spill
scaled up, with a margin.
Prints requests, seconds, requests/s, peak GB and the day engine's time against the whole engine's, and
where each day-engine run's time went (drawing and spilling, the parts, after the last day)
(`--repeat N`: each engine N times at each level, in turns, the fastest shown). Not
a timed test; run it niced on a shared machine (the figures drift with the machine's load, the ratios
less).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "seed-story" / "optimized.toml"
# free space wanted over the scaled-up estimate of a spill (10M took 54.5 GB; 100k x 100: 57 GB)
DISK_MARGIN = 1.2
# a spill's bytes a request (10M: 54.5 GB for 400M requests), for a level whose run held it in memory
SPILL_BYTES_PER_REQUEST = 136


@dataclass(frozen=True, slots=True)
class Measure:
    """One timed run in its own process."""

    engine: str
    mau: int
    requests: int
    seconds: float
    peak_gb: float
    spilled_bytes: int
    summary: dict[str, Any]
    phases: tuple[tuple[str, float], ...] = ()  # the day engine's: each phase it reported, and its seconds

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def _measure(
    engine_name: str, scenario_path: str, mau: int, days: int, seed: int, root: str, per_part: int | None
) -> Measure:
    """Runs in a fresh process: one run of either engine (the day engine playing `per_part` days at a
    time; None: its own choice)."""
    from sim.io.scenarios import load_scenario
    from sim.io.streaming_run import simulate_streaming
    from sim.model import engine, forecast

    scenario, catalog = load_scenario(scenario_path)
    spilled = 0
    phases: tuple[tuple[str, float], ...] = ()
    start = time.perf_counter()
    if engine_name == "whole":
        summary = forecast.summarize(engine.simulate(scenario, catalog, mau, days, seed))
    else:
        directory = Path(tempfile.mkdtemp(prefix="margins-bench-days-", dir=root))
        on_disk = [0]  # bytes under the spill root at each phase (the spill is whole after "traffic")
        started: list[tuple[str, float]] = []

        def on_phase(phase: str) -> None:
            started.append((phase, time.perf_counter()))
            on_disk.append(_bytes_under(directory))

        try:
            summary = simulate_streaming(
                scenario, catalog, mau, days, seed, spill_root=directory, days_per_part=per_part,
                on_phase=on_phase,
            )  # fmt: skip
            spilled = max(on_disk)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        ends = [at for _, at in started[1:]] + [time.perf_counter()]
        phases = tuple((name, end - at) for (name, at), end in zip(started, ends, strict=True))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    return Measure(engine_name, mau, summary["requests"], seconds, peak, spilled, summary, phases)


def _phase_line(measure: Measure) -> str:
    """Where a day-engine run's time went: drawing and spilling the traffic (with the first part's
    opening), the parts of days, and what follows the last day (its requests and retries, the cap, the
    figures' percentiles)."""
    drawing = sum(seconds for name, seconds in measure.phases if name == "traffic")
    parts = [seconds for name, seconds in measure.phases if name.startswith("day")]
    after = sum(
        seconds for name, seconds in measure.phases if name != "traffic" and not name.startswith("day")
    )
    spread = f" ({min(parts):.1f}-{max(parts):.1f} s each)" if len(parts) > 1 else ""
    counted = f"{len(parts)} part{'s' if len(parts) != 1 else ''}"
    return (
        f"       phases: traffic drawn and spilled {drawing:.1f} s; {counted} {sum(parts):.1f} s{spread}; "
        f"after the last day {after:.1f} s"
    )


def _bytes_under(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())


def _in_child(*args: Any) -> Measure:
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(_measure, args)


def _row(measure: Measure, baseline: Measure | None) -> str:
    ratio = f"{measure.seconds / baseline.seconds:5.2f}x" if baseline else "     -"
    spilled = f"{measure.spilled_bytes / 1e9:7.2f}" if measure.spilled_bytes else "      -"
    return (
        f"{measure.engine:>6} {measure.mau:>11,} {measure.requests:>12,} {measure.seconds:>9.1f} "
        f"{measure.rate:>12,.0f} {measure.peak_gb:>8.2f} {spilled} {ratio}"
    )


def _fastest_of_both(args: argparse.Namespace, mau: int, per_part: int | None) -> tuple[Measure, Measure]:
    """Each engine's fastest of `args.repeat` runs, taken in turns (so a burst of load on the machine
    falls on both)."""
    wholes, by_days = [], []
    for _ in range(args.repeat):
        wholes.append(_in_child("whole", args.scenario, mau, args.days, args.seed, args.dir, None))
        by_days.append(_in_child("days", args.scenario, mau, args.days, args.seed, args.dir, per_part))
    return min(wholes, key=lambda m: m.seconds), min(by_days, key=lambda m: m.seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default=str(DEFAULT_SCENARIO))
    parser.add_argument("--mau", default="100000,1000000", help="levels run by both engines")
    parser.add_argument("--huge", type=int, default=10_000_000, help="level run by the day engine alone")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the days are spilled")
    parser.add_argument(
        "--days-per-part",
        type=int,
        help="days the day engine plays at a time (default: its own choice, as many as keep a part under "
        "streaming_run.REQUESTS_PER_PART requests; 1: a day at a time, as at 10M MAU)",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs of each engine at each --mau level (the fastest shown)"
    )
    args = parser.parse_args()
    per_part = args.days_per_part
    print(
        f"scenario {args.scenario}, {args.days} days, days per part: "
        f"{per_part or 'as the engine chooses'}, load average {os.getloadavg()[0]:.1f}"
    )
    print("engine         MAU     requests   seconds   requests/s  peak GB  disk GB  vs whole")
    largest: Measure | None = None
    for mau in (int(level) for level in args.mau.split(",")):
        whole, days = _fastest_of_both(args, mau, per_part)
        print(_row(whole, None), flush=True)
        print(_row(days, whole), flush=True)
        print(_phase_line(days), flush=True)
        if days.summary != whole.summary:
            raise SystemExit(f"the engines disagree at {mau:,} MAU: a bug, not a benchmark figure")
        largest = days
    if args.huge and largest is not None:
        spill = max(largest.spilled_bytes, largest.requests * SPILL_BYTES_PER_REQUEST)
        wanted = spill * args.huge / largest.mau * DISK_MARGIN
        free = shutil.disk_usage(args.dir).free
        if free < wanted:
            print(
                f"skipped {args.huge:,} MAU: {args.dir} has {free / 1e9:.0f} GB free, "
                f"wants {wanted / 1e9:.0f}"
            )
            return
        huge = _in_child("days", args.scenario, args.huge, args.days, args.seed, args.dir, per_part)
        print(_row(huge, None), flush=True)
        print(_phase_line(huge), flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
