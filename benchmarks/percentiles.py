"""The day engine's TTFT percentiles over spilled values: every rank narrowed in the same passes
(`order_statistics.linear_percentiles`, as the engine runs it) against one rank at a time (the selection
before: `order_statistics` asked for each rank on its own), in the same run.

    uv run python -m benchmarks.percentiles [--values 40000000] [--files 30] [--repeat 3]

The values are TTFT-like (lognormal around 0.6 s), spilled as the day engine spills them
(sim/io/value_spill.py `SpilledValues`, one .npy file a day) under a temporary directory. Prints each way's
seconds (the fastest of `--repeat`, taken in turns) and how many times it read the files; both must give
the same figures. Not a timed test.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from sim.io.value_spill import SpilledValues
from sim.model.order_statistics import _lerp, _neighbours, linear_percentiles, order_statistics
from sim.model.run_figures import TTFT_PERCENTILES


def one_rank_at_a_time(
    chunks: Callable[[], Iterable[np.ndarray]], count: int, qs: tuple[int, ...]
) -> list[float]:
    """The percentiles as the selection found them before: each neighbouring rank selected on its own."""
    wanted = [_neighbours(count, q / 100) for q in qs]
    found = {
        rank: order_statistics(chunks, count, [rank])[rank]
        for lower, upper, _ in wanted
        for rank in (lower, upper)
    }
    return [_lerp(found[lower], found[upper], gamma) for lower, upper, gamma in wanted]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=int, default=40_000_000)
    parser.add_argument("--files", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory(prefix="margins-bench-ttft-") as directory:
        store = SpilledValues(Path(directory))
        for size in np.diff(np.linspace(0, args.values, args.files + 1).astype(np.int64)):
            store.add(rng.lognormal(-0.5, 0.6, int(size)))
        reads = [0]

        def chunks() -> Iterable[np.ndarray]:
            reads[0] += 1
            return store.chunks()

        ways = {"together": linear_percentiles, "one at a time": one_rank_at_a_time}
        best: dict[str, float] = {}
        passes: dict[str, int] = {}
        figures: dict[str, list[float]] = {}
        for _ in range(args.repeat):
            for name, way in ways.items():
                reads[0] = 0
                start = time.perf_counter()
                figures[name] = way(chunks, args.values, TTFT_PERCENTILES)
                best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)
                passes[name] = reads[0]
    if figures["together"] != figures["one at a time"]:
        raise SystemExit(f"the two ways disagree: {figures}")
    print(f"{args.values:,} spilled TTFTs in {args.files} files, p{TTFT_PERCENTILES}: {figures['together']}")
    for name in ways:
        print(f"{name:>14}: {best[name]:6.2f} s, {passes[name]} passes over the files")
    print(f"one at a time / together: {best['one at a time'] / best['together']:.2f}x")


if __name__ == "__main__":
    main()
