"""Query benchmark: `margins spend` "top 100 this month" over a 10M-event store, against a baseline.

The store is built directly in its on-disk layout (vectorized numpy / Arrow, not through the ledger): the
same month-partitioned usage segments, per-user rollups and journal the enforcer's flusher and compaction
write, in chunks of 1M events. The baseline is the same query over one unpartitioned Parquet file holding
every usage row (what a single append-only table gives you); both are timed in the same run, and must agree.

    uv run python -m benchmarks.spend_query [--events 10000000] [--months 12] [--dir PATH] [--append-events N]

It also times durable appends (batches fsync'd to the log, the flusher writing segments meanwhile).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from budget.domain.catalog import default_catalog
from budget.domain.events import USAGE_COLUMNS
from budget.store.manifest import MANIFEST, Manifest, read_manifest, segment_name, write_atomic
from budget.store.queries import SpendReader
from budget.store.segment_writer import write_segment
from budget.store.segments import JOURNAL_SCHEMA, USAGE_SCHEMA, merge_rollups, rollup_table

CHUNK = 1_000_000
MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-5-nano", "claude-haiku-4.5")


def _months_back(last: str, count: int) -> list[str]:
    year, month = (int(part) for part in last.split("-"))
    out = []
    for _ in range(count):
        out.append(f"{year:04d}-{month:02d}")
        year, month = (year - 1, 12) if month == 1 else (year, month - 1)
    return out[::-1]


def build_store(root: Path, events: int, months: int, last_month: str, seed: int = 7) -> Path:
    """Write a store of `events` usage events spread evenly over `months` months ending at `last_month`,
    100k users with a heavy tail; returns the path of a baseline single-file Parquet copy of the usage."""
    rng = np.random.default_rng(seed)
    catalog = default_catalog()
    month_names = _months_back(last_month, months)
    starts = np.array([datetime.fromisoformat(f"{m}-01T00:00:00+00:00").timestamp() for m in month_names])
    span = 28 * 86_400  # every month has at least 28 days: keeps each event inside its month
    prices_in = np.array([catalog[m].input for m in MODELS], dtype=np.int64)
    prices_out = np.array([catalog[m].output for m in MODELS], dtype=np.int64)
    baseline = root.parent / f"{root.name}-baseline.parquet"
    manifest = Manifest()
    rollups: dict[str, list[tuple[int, int, pa.Table]]] = {}
    writer = pq.ParquetWriter(baseline, USAGE_SCHEMA, compression="zstd")
    for first in range(0, events, CHUNK):
        n = min(CHUNK, events - first)
        seq = np.arange(first, first + n, dtype=np.int64)
        month_index = (seq * months) // events  # appended in time order, as the enforcer would
        ts_us = ((starts[month_index] + rng.uniform(0, span, n)) * 1e6).astype(np.int64)
        users = np.minimum(rng.zipf(1.3, n), 100_000) - 1  # a few heavy users, a long tail
        model = rng.integers(0, len(MODELS), n)
        tokens_in = rng.integers(50, 4000, n)
        tokens_out = rng.integers(10, 800, n)
        columns: dict[str, pa.Array] = {
            "event_id": pc.binary_join_element_wise("e", pa.array(seq).cast(pa.string()), ""),
            "user_id": pc.binary_join_element_wise("u", pa.array(users).cast(pa.string()), ""),
            "ts": pa.array(ts_us, pa.timestamp("us", tz="UTC")),
            "month": pa.array(np.array(month_names)[month_index]),
            "model": pa.array(np.array(MODELS)[model]),
            "feature": pa.array(np.array(["chat", "search", "summary"])[rng.integers(0, 3, n)]),
            "input_tokens": pa.array(tokens_in),
            "cached_input_tokens": pa.array(np.zeros(n, dtype=np.int64)),
            "cache_write_tokens": pa.array(np.zeros(n, dtype=np.int64)),
            "output_tokens": pa.array(tokens_out),
            "outcome": pa.array(np.full(n, "ok")),
            "cache_layer": pa.nulls(n, pa.string()),
            "reservation_id": pa.nulls(n, pa.string()),
            "cost_nanos": pa.array(tokens_in * prices_in[model] + tokens_out * prices_out[model]),
            "source": pa.array(np.full(n, "live")),
            "run_id": pa.array(np.full(n, "")),
        }
        usage = pa.table(
            [columns[name].cast(USAGE_SCHEMA.field(name).type) for name in USAGE_COLUMNS], USAGE_SCHEMA
        )
        writer.write_table(usage)
        name = segment_name(first, first + n - 1)
        for month in sorted(set(np.array(month_names)[np.unique(month_index)])):
            part = usage.filter(pc.equal(usage.column("month"), month))
            file = f"usage/month={month}/{name}"
            manifest.usage.append(write_segment(root, file, part, first, first + n - 1, month))
            rollups.setdefault(month, []).append((first, first + n - 1, rollup_table(part)))
        manifest.journal.append(
            write_segment(root, f"journal/{name}", _journal(usage, seq), first, first + n - 1, None)
        )
        manifest.last_seq = first + n - 1
    writer.close()
    # Per-user rollups are small, so compaction leaves one per month (runs of up to COMPACT_MAX_ROWS
    # rows); write them as it would.
    for month, parts in sorted(rollups.items()):
        summed = merge_rollups(pa.concat_tables([table for _, _, table in parts]))
        first, last = parts[0][0], parts[-1][1]
        file = f"rollup/month={month}/{segment_name(first, last)}"
        manifest.rollup.append(write_segment(root, file, summed, first, last, month))
    (root / "wal").mkdir(parents=True, exist_ok=True)
    write_atomic(root / MANIFEST, manifest.to_json())
    return baseline


def _journal(usage: pa.Table, seq: np.ndarray) -> pa.Table:
    """Journal rows for usage rows: the tagged JSON bodies built column-wise."""
    text = {
        name: usage.column(name).cast(pa.string()) for name in ("input_tokens", "output_tokens", "cost_nanos")
    }
    ts = pc.strftime(usage.column("ts"), format="%Y-%m-%dT%H:%M:%S")  # the column is UTC
    parts = [
        '{"type":"usage_recorded","event_id":"', usage.column("event_id"),
        '","user_id":"', usage.column("user_id"),
        '","ts":"', ts,
        'Z","model":"', usage.column("model"),
        '","input_tokens":', text["input_tokens"],
        ',"output_tokens":', text["output_tokens"],
        ',"cost_nanos":', text["cost_nanos"],
        ',"feature":"', usage.column("feature"),
        '","month":"', usage.column("month"),
        '","v":1}',
    ]  # fmt: skip
    body = pc.binary_join_element_wise(*parts, "")
    columns = [
        pa.array(seq),
        pa.array(np.full(len(seq), "usage_recorded")),
        usage.column("ts"),
        usage.column("user_id"),
        usage.column("month"),
        pa.nulls(len(seq), pa.string()),
        body,
    ]
    return pa.table(columns, JOURNAL_SCHEMA)


def _timed(run: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(median, best) wall milliseconds over `repeats` runs after one warm-up."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), min(times)


def run_query_benchmark(
    events: int = 10_000_000, months: int = 12, directory: Path | None = None, repeats: int = 7
) -> dict[str, float]:
    """Build the store, then time "top 100 this month" three ways; returns the figures (ms, s, rows)."""
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        root = Path(tmp) / "store"
        this_month = datetime.now(UTC).strftime("%Y-%m")
        start = time.perf_counter()
        baseline = build_store(root, events, months, this_month)
        built_s = time.perf_counter() - start

        def margins_spend() -> object:
            # What `margins spend --top 100` runs: the manifest, this month's files (each checked against
            # its size and sha256 in the manifest), the view, the query.
            with SpendReader(root, this_month) as reader:
                return reader.top_spenders(this_month, 100).rows

        def baseline_query() -> object:
            import duckdb

            with duckdb.connect(":memory:") as db:
                return db.execute(
                    "SELECT user_id, sum(cost_nanos)::BIGINT AS spent_nanos, count(*) AS events "
                    "FROM read_parquet(?) WHERE month = ? GROUP BY user_id "
                    "ORDER BY spent_nanos DESC, user_id LIMIT 100",
                    [str(baseline), this_month],
                ).fetchall()

        assert margins_spend() == baseline_query(), "the partitioned store and the baseline disagree"
        spend_p50, spend_best = _timed(margins_spend, repeats)
        base_p50, base_best = _timed(baseline_query, repeats)
        month_rows = sum(s.rows for s in read_manifest(root).usage if s.month == this_month)
        return {
            "events": float(events),
            "months": float(months),
            "rows_this_month": float(month_rows),
            "build_s": built_s,
            "top100_ms_p50": spend_p50,
            "top100_ms_best": spend_best,
            "baseline_ms_p50": base_p50,
            "baseline_ms_best": base_best,
        }


def run_append_benchmark(
    events: int = 1_000_000, batch: int = 1_000, directory: Path | None = None
) -> dict[str, float]:
    """Append `events` usage events in batches of `batch` (each batch fsync'd before append returns) with
    the background flusher on; returns append-only and sustained (until every segment is written) rates."""
    from budget.domain.events import UsageRecorded
    from budget.store.event_store import EventStore

    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    made = [
        UsageRecorded(
            event_id=f"e{i}",
            user_id=f"u{i % 10_007}",
            ts=t0,
            model="gpt-4o-mini",
            input_tokens=900,
            output_tokens=250,
            cost_nanos=285_000,
            month="2026-11",
        )
        for i in range(events)
    ]
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        store = EventStore.open(Path(tmp) / "store")
        start = time.perf_counter()
        for first in range(0, events, batch):
            store.append(made[first : first + batch])
        appended = time.perf_counter() - start
        store.close()  # flushes the rest: every event is in a segment when this returns
        total = time.perf_counter() - start
    return {
        "events": float(events),
        "batch": float(batch),
        "append_rows_s": events / appended,
        "sustained_rows_s": events / total,
    }


def main() -> None:
    """Print the figures (one documented command; see the module docstring)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--months", type=int, default=12)
    parser.add_argument("--dir", type=Path, default=None, help="where to build the store (a temp dir inside)")
    parser.add_argument("--append-events", type=int, default=1_000_000, help="0 skips the append benchmark")
    args = parser.parse_args()
    if args.append_events:
        for batch in (100, 1_000, 10_000):
            rates = run_append_benchmark(args.append_events, batch, args.dir)
            print(
                f"append {rates['events']:,.0f} events in batches of {batch:,}: "
                f"{rates['append_rows_s']:,.0f} rows/s durable (fsync per batch), "
                f"{rates['sustained_rows_s']:,.0f} rows/s including Parquet segments"
            )
    figures = run_query_benchmark(args.events, args.months, args.dir)
    print(
        f"store: {figures['events']:,.0f} usage events over {figures['months']:.0f} months "
        f"({figures['rows_this_month']:,.0f} this month), built in {figures['build_s']:.1f} s"
    )
    print(
        f'margins spend "top 100 this month": p50 {figures["top100_ms_p50"]:.1f} ms, '
        f"best {figures['top100_ms_best']:.1f} ms (target <= 200 ms)"
    )
    print(
        f"baseline, one unpartitioned Parquet file: p50 {figures['baseline_ms_p50']:.1f} ms, "
        f"best {figures['baseline_ms_best']:.1f} ms"
    )


if __name__ == "__main__":
    main()
