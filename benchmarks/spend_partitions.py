"""Benchmark: `margins spend --by user` over a partitioned root against one store holding the same events.

The same usage events (one month, 100k users, a heavy tail of users within each partition, the events
split evenly over the partitions) are appended through the real
EventStore twice: all into one store, and each into the store of its user's partition
(`ROOT/partition=<p>/`, `partition_of` as the cluster maps users), flushed every 50k events and compacted
at the end as a running enforcer's store would be. Then the whole command, `margins spend --store S
--month M --by user`, runs as a fresh process against each, interleaved; both must print the same table.

    uv run python -m benchmarks.spend_partitions [--events 1000000] [--partitions 4] [--repeats 3] [--dir D]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from budget.domain.events import Event, UsageRecorded
from budget.jetstream.partitions import partition_of
from budget.store.event_store import EventStore

MONTH = "2026-11"
MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-5-nano")
FLUSH_EVERY = 50_000
BATCH = 10_000


def make_events(count: int, partitions: int, seed: int = 7) -> list[Event]:
    """`count` usage events in MONTH over 100k users, `count / partitions` in each partition (event i in
    partition i mod N), each partition's users drawn from a heavy tail over the users `partition_of` puts
    there."""
    rng = np.random.default_rng(seed)
    members: list[list[str]] = [[] for _ in range(partitions)]
    for n in range(100_000):
        members[partition_of(f"u{n}", partitions)].append(f"u{n}")
    ranks = rng.zipf(1.3, count) - 1
    models = rng.integers(0, len(MODELS), count)
    costs = rng.integers(1_000, 5_000_000, count)
    start = datetime.fromisoformat(f"{MONTH}-01T00:00:00+00:00").astimezone(UTC)
    step = 28 * 86_400 / count
    out: list[Event] = []
    for i in range(count):
        users = members[i % partitions]
        out.append(
            UsageRecorded(
                event_id=f"e{i}",
                user_id=users[min(int(ranks[i]), len(users) - 1)],
                ts=start + timedelta(seconds=i * step),
                model=MODELS[models[i]],
                input_tokens=100,
                output_tokens=10,
                cost_nanos=int(costs[i]),
                feature="chat",
                month=MONTH,
            )
        )
    return out


def write_store(root: Path, events: Sequence[Event]) -> None:
    """Append `events` through the EventStore, flushing every FLUSH_EVERY, then compact."""
    with EventStore.open(root, flush_interval=None, offload=False) as store:
        for first in range(0, len(events), BATCH):
            store.append(list(events[first : first + BATCH]))
            if (first + BATCH) % FLUSH_EVERY == 0:
                store.flush()
        store.flush()
        store.compact()


def split(events: Sequence[Event], partitions: int) -> list[list[Event]]:
    """Each event in its user's partition, in order."""
    out: list[list[Event]] = [[] for _ in range(partitions)]
    for event in events:
        assert isinstance(event, UsageRecorded)
        out[partition_of(event.user_id, partitions)].append(event)
    return out


def timed_command(store: Path) -> tuple[float, str]:
    """Wall seconds of `margins spend --store STORE --month MONTH --by user` in a fresh process; stdout."""
    margins = Path(sys.executable).with_name("margins")
    start = time.perf_counter()
    done = subprocess.run(
        [str(margins), "spend", "--store", str(store), "--month", MONTH, "--by", "user"],
        capture_output=True,
        text=True,
        check=True,
    )
    return time.perf_counter() - start, done.stdout


def run(events: int, partitions: int, repeats: int, directory: str | None) -> dict[str, object]:
    """Build both layouts, then time the command on each, interleaved; returns the figures."""
    made = make_events(events, partitions)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        single, root = Path(tmp) / "single", Path(tmp) / "parted"
        start = time.perf_counter()
        write_store(single, made)
        single_s = time.perf_counter() - start
        start = time.perf_counter()
        parts = split(made, partitions)
        for p, part in enumerate(parts):
            write_store(root / f"partition={p}", part)
        parted_s = time.perf_counter() - start
        del made
        load_before = os.getloadavg()
        single_times, parted_times = [], []
        _, single_out = timed_command(single)  # warm the page cache for both
        _, parted_out = timed_command(root)
        assert single_out == parted_out, "the partitioned root and the single store disagree"
        for _ in range(repeats):
            single_times.append(timed_command(single)[0])
            parted_times.append(timed_command(root)[0])
        return {
            "events": events,
            "partitions": [len(p) for p in parts],
            "build_single_s": round(single_s, 1),
            "build_partitions_s": round(parted_s, 1),
            "single_s": [round(t, 3) for t in single_times],
            "partitioned_s": [round(t, 3) for t in parted_times],
            "single_median_s": round(statistics.median(single_times), 3),
            "partitioned_median_s": round(statistics.median(parted_times), 3),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=None, help="Where to build the stores (default: the temp dir).")
    args = parser.parse_args(argv)
    for name, value in run(args.events, args.partitions, args.repeats, args.dir).items():
        print(f"{name}: {value}")


if __name__ == "__main__":
    main()
