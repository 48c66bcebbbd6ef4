"""Benchmark of the attempt clock fed a day at a time: `python -m benchmarks.attempt_clock`.

Draws one run of a scenario (default: the seed story's optimized, 30 days) at `--mau`, keeps the inputs
`simulate` hands its attempt clock and its per-request fold, then times (a) the whole-run clock and
`_per_request` as the engine runs them, and (b) the resumable clock fed the calls of each day's requests
before it plays that day, with the request fold handed each day's attempts. Checks that (b) gave (a)'s
attempt log and per-request arrays, and prints seconds and the largest carried state (bytes) after a day.
Not a timed test; run it niced on a shared machine.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from sim.io.scenarios import load_scenario
from sim.model import engine
from sim.model.attempt_clock import TICK_S, AttemptClock
from sim.model.attempts import AttemptLog
from sim.model.request_fold import RequestFold

DEFAULT_SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "seed-story" / "optimized.toml"
FIGURES = ("served", "ttft", "fallback", "cost", "bad_served")


def engine_inputs(scenario_path: Path, mau: int, days: int, seed: int) -> dict[str, Any]:
    """Run `simulate` once with its clock and fold wrapped to keep what they were given and gave."""
    scenario, catalog = load_scenario(scenario_path)
    seen: dict[str, Any] = {}
    clock, fold = engine._attempt_clock, engine._per_request

    def timed_clock(*args: Any) -> tuple[AttemptLog, int]:
        started = time.perf_counter()
        seen["clock_args"], result = args, clock(*args)
        seen["clock_s"], seen["log"] = time.perf_counter() - started, result[0]
        return result

    def timed_fold(*args: Any) -> tuple[np.ndarray, ...]:
        started = time.perf_counter()
        seen["fold_args"], result = args, fold(*args)
        seen["fold_s"], seen["per_request"] = time.perf_counter() - started, result
        return result

    engine._attempt_clock, engine._per_request = timed_clock, timed_fold  # type: ignore[assignment]
    try:
        engine.simulate(scenario, catalog, mau, days, seed)
    finally:
        engine._attempt_clock, engine._per_request = clock, fold
    return seen


def day_fed(seen: dict[str, Any]) -> tuple[float, float, int, AttemptLog, dict[str, np.ndarray]]:
    """The clock fed a day of requests at a time and the fold handed each day's attempts: clock seconds,
    fold seconds, the largest carried state after a day (bytes), the joined log, the per-request arrays."""
    scenario, table, sheet, key, calls, starts, days, _phase = seen["clock_args"]
    traffic, _log, exact, semantic = seen["fold_args"]
    request_day = (traffic.t // TICK_S).astype(np.int64)
    call_day = request_day[traffic.call_request[calls]]
    request_order = np.argsort(request_day, kind="stable")
    request_bounds = np.searchsorted(request_day[request_order], np.arange(int(request_day.max()) + 2))
    call_order = np.argsort(call_day, kind="stable")
    call_bounds = np.searchsorted(call_day[call_order], np.arange(int(request_day.max()) + 2))
    clock, fold = AttemptClock(scenario, table, sheet, key, days), RequestFold()
    out = {
        name: np.zeros(traffic.requests, dtype=array.dtype)
        for name, array in zip(FIGURES, seen["per_request"], strict=True)
    }
    whole = AttemptLog()
    clock_s = fold_s = 0.0
    largest = 0

    def take(log: AttemptLog) -> None:
        nonlocal fold_s
        started = time.perf_counter()
        finished = fold.fold(log)
        for name in FIGURES:
            out[name][finished.request] = getattr(finished.outcomes, name)
        fold_s += time.perf_counter() - started
        for name, parts in log.parts.items():
            whole.parts.setdefault(name, []).extend(parts)

    for day in range(request_bounds.size - 1):
        requests = request_order[request_bounds[day] : request_bounds[day + 1]]
        mine = np.sort(call_order[call_bounds[day] : call_bounds[day + 1]])
        started = time.perf_counter()
        fold.open(
            requests,
            traffic.t[requests],
            exact[requests],
            semantic.true_hit[requests],
            semantic.false_hit[requests],
            calls[mine],
            traffic.call_request[calls[mine]],
        )
        fold_s += time.perf_counter() - started
        started = time.perf_counter()
        clock.add(calls[mine], starts[mine])
        log = clock.run_tick()
        clock_s += time.perf_counter() - started
        take(log)
        largest = max(largest, clock.nbytes + fold.nbytes)
    while clock.busy:
        started = time.perf_counter()
        log = clock.run_tick()
        clock_s += time.perf_counter() - started
        take(log)
    return clock_s, fold_s, largest, whole, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", type=Path, default=DEFAULT_SCENARIO)
    parser.add_argument("--mau", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    seen = engine_inputs(args.scenario, args.mau, args.days, args.seed)
    clock_s, fold_s, largest, log, out = day_fed(seen)
    same_log = all(
        np.array_equal(log.column(name), seen["log"].column(name), equal_nan=True)
        for name in seen["log"].parts
    )
    same_requests = all(
        np.array_equal(out[name], theirs, equal_nan=True)
        for name, theirs in zip(FIGURES, seen["per_request"], strict=True)
    )
    scenario, table, sheet, key, calls, _starts, days, _phase = seen["clock_args"]
    windows = AttemptClock(scenario, table, sheet, key, days).nbytes
    attempts = log.column("call").size
    print(f"{args.scenario.name}, {args.mau} MAU, {args.days} days: {calls.size} calls, {attempts} attempts")
    print(f"whole clock {seen['clock_s']:.2f} s, _per_request {seen['fold_s']:.2f} s")
    print(f"day-fed clock {clock_s:.2f} s, request fold {fold_s:.2f} s")
    print(f"largest carried state after a day: {largest} bytes ({windows} of them rate windows)")
    print(f"identical: attempt log {same_log}, per-request arrays {same_requests}")


if __name__ == "__main__":
    main()
