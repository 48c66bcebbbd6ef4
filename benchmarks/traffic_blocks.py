"""Benchmark of traffic drawn in user blocks and spilled by day: `python -m benchmarks.traffic_blocks`.

Measures, each in a fresh process so that its peak resident memory (the process's high-water mark, imports
included) is its own: (a) today's `traffic.generate` of the whole run, and (b)
`traffic_block_context.engine_blocks` (the same traffic with its conversation context, and the engine's
draws the scenario uses; pre-passes included) spilled by day to a directory under `--dir` (its peak
taken there), then one day read back (the peak then includes that day's arrays) -- at each MAU of
`--mau` (default 100k and 1M), in the same run; then (b) alone at `--huge` MAU (default 10M) if the
directory's free space allows what the largest (b) wrote, scaled up, with a margin (else it says why it
skips). Prints requests, seconds, requests/s, peak GB and bytes spilled (with npy, also the bytes of the
engine's draw columns and of the conversation's columns and summary calls). Every spill is deleted after
its measure. Not a timed test; run it niced on a shared machine.
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

DEFAULT_SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "seed-story" / "optimized.toml"
DISK_MARGIN = 1.3  # free space wanted over the scaled-up estimate of a spill


@dataclass(frozen=True, slots=True)
class Measure:
    """One timed run in its own process."""

    mode: str
    mau: int
    requests: int
    seconds: float
    peak_gb: float
    imports_gb: float  # the process's peak before the run: interpreter, numpy, the scenario
    spilled_bytes: int = 0
    spill_peak_gb: float = 0.0  # the peak before the day was read back: what drawing and spilling took
    read_day_s: float = 0.0
    day_requests: int = 0
    draw_bytes: int = 0  # npy: the engine's draw columns (u_*)
    conversation_bytes: int = 0  # npy: history, epoch and the summary calls

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _measure(
    mode: str, scenario_path: str, mau: int, days: int, seed: int, options: dict[str, object]
) -> Measure:
    """Runs in a fresh process: one generate (`generate`) or one blocks+spill (`blocks-npy`,
    `blocks-parquet`)."""
    from sim.io.scenarios import load_scenario
    from sim.io.traffic_spill import read_day, spill
    from sim.model.randomness import streams_for
    from sim.model.traffic import generate
    from sim.model.traffic_block_context import engine_blocks

    scenario, _catalog = load_scenario(scenario_path)
    imports_gb = _peak_gb()
    streams = streams_for(seed, mau, 0)
    start = time.perf_counter()
    if mode == "generate":
        traffic = generate(scenario, mau, days, streams)
        seconds = time.perf_counter() - start
        return Measure(mode, mau, traffic.requests, seconds, _peak_gb(), imports_gb)
    spill_format = mode.removeprefix("blocks-")
    directory = Path(tempfile.mkdtemp(prefix="traffic-spill-", dir=str(options["dir"])))
    try:
        users = int(str(options["users_per_block"]))
        summary = spill(engine_blocks(scenario, mau, days, streams, users), directory, spill_format)  # type: ignore[arg-type]
        draw_bytes = _bytes(directory, "*.requests.u_*.npy")
        conversation_bytes = sum(
            _bytes(directory, pattern)
            for pattern in ("*.requests.history.npy", "*.requests.epoch.npy", "*.summary_calls.*.npy")
        )
        seconds = time.perf_counter() - start
        spill_peak_gb = _peak_gb()
        day = summary.days[len(summary.days) // 2]
        read_start = time.perf_counter()
        one_day = read_day(directory, day, spill_format)  # type: ignore[arg-type]
        read_s = time.perf_counter() - read_start
        return Measure(
            mode,
            mau,
            summary.requests,
            seconds,
            _peak_gb(),
            imports_gb,
            spilled_bytes=summary.bytes,
            spill_peak_gb=spill_peak_gb,
            read_day_s=read_s,
            day_requests=int(one_day.requests["t"].size),
            draw_bytes=draw_bytes,
            conversation_bytes=conversation_bytes,
        )
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _bytes(directory: Path, pattern: str) -> int:
    return sum(path.stat().st_size for path in directory.glob(f"day-*/{pattern}"))


def measure_in_fresh_process(
    mode: str, scenario: str, mau: int, days: int, seed: int, options: dict[str, object]
) -> Measure:
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(_measure, (mode, scenario, mau, days, seed, options))


def show(m: Measure) -> str:
    line = (
        f"{m.mode:>14} {m.mau:>11,} MAU: {m.requests:>12,} requests in {m.seconds:8.1f} s "
        f"({m.rate / 1e3:7.0f}k req/s), peak {m.peak_gb:5.2f} GB (imports {m.imports_gb:.2f} GB)"
    )
    if m.spilled_bytes:
        line += (
            f", spilled {m.spilled_bytes / 1e9:.2f} GB ({m.spilled_bytes / m.requests:.0f} B/request) "
            f"at a peak of {m.spill_peak_gb:.2f} GB; one day read back: {m.day_requests:,} requests "
            f"in {m.read_day_s:.2f} s"
        )
    if m.draw_bytes or m.conversation_bytes:
        line += (
            f"; of it the engine's draws {m.draw_bytes / 1e9:.2f} GB "
            f"({m.draw_bytes / m.requests:.1f} B/request), "
            f"the conversation {m.conversation_bytes / 1e9:.2f} GB"
        )
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--scenario", default=str(DEFAULT_SCENARIO))
    parser.add_argument("--mau", default="100000,1000000", help="MAU levels of (a) and (b), comma-separated")
    parser.add_argument("--huge", type=int, default=10_000_000, help="(b) alone at this MAU; 0: skip")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--users-per-block", type=int, default=50_000)
    parser.add_argument("--formats", default="npy", help="spill formats of (b): npy, parquet or both")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the spills go (deleted after)")
    args = parser.parse_args()
    options: dict[str, object] = {"dir": args.dir, "users_per_block": args.users_per_block}
    formats = [f.strip() for f in args.formats.split(",")]
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    largest: Measure | None = None
    for mau in (int(m) for m in args.mau.split(",")):
        for mode in ["generate", *(f"blocks-{f}" for f in formats)]:
            measured = measure_in_fresh_process(mode, args.scenario, mau, args.days, args.seed, options)
            print(show(measured), flush=True)
            if measured.spilled_bytes and (largest is None or measured.mau > largest.mau):
                largest = measured
    if args.huge:
        free = shutil.disk_usage(args.dir).free
        needed = largest.spilled_bytes * args.huge / largest.mau * DISK_MARGIN if largest else float("inf")
        if needed > free:
            print(
                f"skipping (b) at {args.huge:,} MAU: needs ~{needed / 1e9:.0f} GB in {args.dir}, "
                f"{free / 1e9:.0f} GB free"
            )
        else:
            measured = measure_in_fresh_process(
                f"blocks-{formats[0]}", args.scenario, args.huge, args.days, args.seed, options
            )
            print(show(measured), flush=True)
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)


if __name__ == "__main__":
    main()
