"""What a durable outbox costs `BudgetClient.report`, beside the in-memory one, interleaved in one run:

    uv run python -m benchmarks.client_outbox [--reports 2000] [--concurrency 1,100] [--repeat 5]

`report` returns once its report is in the outbox; with `outbox=PATH` that is an SQLite commit (WAL,
synchronous=FULL: one fsync of the WAL), shared by the reports that arrive during it. This times
`Outbox.add` -- the whole difference between the two -- one report at a time (latency: p50, p99) and with
`concurrency` reports in flight (throughput), memory and file alternating, beside the floor (the same commit
on the calling thread, no event loop), and prints the medians of the repeats with the load average. No
broker: publishing is the same for both and happens in the background.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from budget.outbox import Outbox

PAYLOAD = (
    b'{"event_id":"x","user_id":"alice","model":"gpt-4o-mini","input_tokens":900,"output_tokens":250}' * 3
)


async def _run(path: Path | None, reports: int, concurrency: int) -> tuple[list[float], float]:
    """(latencies in ms, reports per second) of `reports` adds, `concurrency` at a time."""
    outbox = await Outbox.open(path)
    latencies: list[float] = []

    async def one(i: int) -> None:
        start = time.perf_counter()
        await outbox.add(f"e{i}", "margins/usage/alice", PAYLOAD)
        latencies.append((time.perf_counter() - start) * 1000)

    start = time.perf_counter()
    for first in range(0, reports, concurrency):
        await asyncio.gather(*(one(i) for i in range(first, min(reports, first + concurrency))))
    elapsed = time.perf_counter() - start
    await outbox.close()
    return latencies, reports / elapsed


def _raw_commits(path: Path, reports: int) -> tuple[list[float], float]:
    """The floor: the same insert and commit (WAL, synchronous=FULL) on the calling thread, one at a time."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE reports (event_id TEXT PRIMARY KEY, topic TEXT NOT NULL, payload BLOB NOT NULL)")
    latencies = []
    start = time.perf_counter()
    for i in range(reports):
        began = time.perf_counter()
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO reports VALUES (?, ?, ?)", (f"e{i}", "margins/usage/alice", PAYLOAD))
        db.execute("COMMIT")
        latencies.append((time.perf_counter() - began) * 1000)
    elapsed = time.perf_counter() - start
    db.close()
    return latencies, reports / elapsed


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    """Print the figures; see the module docstring."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reports", type=int, default=2000)
    parser.add_argument("--concurrency", default="1,100")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"load average {_loadavg()}")
    with tempfile.TemporaryDirectory(prefix="margins-outbox-") as tmp:
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            kinds = ("memory", "file", "raw sqlite") if concurrency == 1 else ("memory", "file")
            figures: dict[str, list[tuple[float, float, float]]] = {kind: [] for kind in kinds}
            for round_ in range(args.repeat):
                for kind in kinds:
                    path = Path(tmp) / f"{kind}-{concurrency}-{round_}.db"
                    if kind == "raw sqlite":
                        latencies, rate = _raw_commits(path, args.reports)
                    else:
                        latencies, rate = asyncio.run(
                            _run(path if kind == "file" else None, args.reports, concurrency)
                        )
                    ordered = sorted(latencies)
                    figures[kind].append(
                        (ordered[len(ordered) // 2], ordered[int(0.99 * (len(ordered) - 1))], rate)
                    )
            for kind, runs in figures.items():
                p50 = statistics.median(r[0] for r in runs)
                p99 = statistics.median(r[1] for r in runs)
                rate = statistics.median(r[2] for r in runs)
                print(
                    f"{kind:>10}, {concurrency:>3} at a time: add p50 {p50:.3f} ms, p99 {p99:.3f} ms, "
                    f"{rate:,.0f} reports/s (median of {args.repeat})"
                )
    print(f"load average {_loadavg()}")


if __name__ == "__main__":
    main()
