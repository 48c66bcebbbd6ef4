"""Arrow tables of the event store's Parquet segments (layout and commit protocol:
budget/store/manifest.py)."""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, assert_never

import msgspec
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from budget.domain.events import (
    EVENT_TYPES,
    USAGE_COLUMNS,
    DeadLettered,
    Event,
    LimitCrossed,
    ReservationDenied,
    ReservationExpired,
    ReservationGranted,
    ReservationRenewed,
    UsageRecorded,
    UserConfigured,
    event_tag_of,
)
from budget.store.integrity import damaged, file_digest, read_table
from budget.store.manifest import JOURNAL_COLUMNS, ROLLUP_COLUMNS, Segment, replace_durably

SOURCE_LIVE = "live"
REPLAY_BATCH = 50_000  # journal bodies decoded at once: fast, and bounded in memory

_ARROW_TYPES: dict[str, pa.DataType] = {
    "VARCHAR": pa.string(),
    "BIGINT": pa.int64(),
    "TIMESTAMPTZ": pa.timestamp("us", tz="UTC"),
}
USAGE_SCHEMA = pa.schema([(name, _ARROW_TYPES[kind]) for name, kind in USAGE_COLUMNS.items()])
ROLLUP_SCHEMA = pa.schema([(name, _ARROW_TYPES[kind]) for name, kind in ROLLUP_COLUMNS.items()])
JOURNAL_SCHEMA = pa.schema([(name, _ARROW_TYPES[kind]) for name, kind in JOURNAL_COLUMNS.items()])


def write_table(path: Path, table: pa.Table) -> tuple[str, int]:
    """Write an immutable Parquet segment durably (temp name, fsync, rename, fsync directory); returns
    its sha256 and size for the manifest (hashed from the file as written, before it gets its name)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd", row_group_size=1 << 20)
    digest = file_digest(tmp)
    replace_durably(tmp, path)
    return digest


def event_month(event: Event) -> str | None:
    """The month an event belongs to in the journal: its user's month; the UTC month of a dead letter or
    of a usage that came without one (see FILED_BY_TS); none for a user's configuration or a renewal."""
    match event:
        case UsageRecorded():
            return utc_month(event.ts) if event.month is None else event.month
        case DeadLettered():
            return utc_month(event.ts)
        case ReservationGranted() | ReservationDenied() | ReservationExpired() | LimitCrossed():
            return event.month
        case UserConfigured() | ReservationRenewed():
            return None
        case _:
            assert_never(event)


# The event types whose journal month can come from their timestamp (event_month, batch_tables).
FILED_BY_TS = (UsageRecorded, DeadLettered)


def reason_of(event: Event) -> str | None:
    """Why an event's request was refused, for the journal's `reason` column (queryable without JSON)."""
    match event:
        case DeadLettered() | ReservationDenied():
            return event.reason
        case (
            UsageRecorded()
            | ReservationGranted()
            | ReservationRenewed()
            | ReservationExpired()
            | UserConfigured()
            | LimitCrossed()
        ):
            return None
        case _:
            assert_never(event)


def utc_month(ts: datetime) -> str:
    """The UTC month of an aware timestamp: where an event without a month of its own is filed."""
    utc = ts.astimezone(UTC)
    return f"{utc.year:04d}-{utc.month:02d}"


def journal_table(events: Sequence[Event], bodies: Sequence[bytes], first_seq: int) -> pa.Table:
    """The journal rows of a batch, one per event in append order, built from the event objects (the
    reference that `batch_tables` must agree with)."""
    columns = {
        "seq": pa.array(range(first_seq, first_seq + len(events)), pa.int64()),
        "type": pa.array([_TAGS[type(e)] for e in events], pa.string()),
        "ts": pa.array([e.ts for e in events], _ARROW_TYPES["TIMESTAMPTZ"]),
        "user_id": pa.array([getattr(e, "user_id", None) for e in events], pa.string()),
        "month": pa.array([event_month(e) for e in events], pa.string()),
        "reason": pa.array([reason_of(e) for e in events], pa.string()),
        "body": _string_column(bodies),
    }
    return pa.table(columns, schema=JOURNAL_SCHEMA)


_TAGS = {kind: event_tag_of(kind) for kind in EVENT_TYPES}


def _string_column(values: Sequence[bytes]) -> pa.Array:
    """UTF-8 byte strings -> an Arrow string column built from one buffer (no per-item conversion)."""
    offsets = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, values), dtype=np.int64, count=len(values)), out=offsets[1:])
    data = pa.py_buffer(b"".join(values))
    array = pa.LargeStringArray.from_buffers(len(values), pa.py_buffer(offsets.tobytes()), data)
    return array.cast(pa.string())


def usage_table(usages: Sequence[UsageRecorded]) -> pa.Table:
    """Usage rows with exactly USAGE_COLUMNS (live rows carry source "live" and run_id ""), built from the
    event objects (the reference that `batch_tables` must agree with)."""
    n = len(usages)
    columns: dict[str, pa.Array] = {}
    for name, kind in USAGE_COLUMNS.items():
        if name == "source":
            values: list[Any] = [SOURCE_LIVE] * n
        elif name == "run_id":
            values = [""] * n
        elif name == "month":
            values = [u.month or utc_month(u.ts) for u in usages]
        else:
            values = [getattr(u, name) for u in usages]
        columns[name] = pa.array(values, _ARROW_TYPES[kind])
    return pa.table(columns, schema=USAGE_SCHEMA)


# Every field the journal or the usage table needs, as it appears in the events' tagged JSON.
_PARSE_SCHEMA: dict[str, Any] = {
    "type": pl.String,
    "ts": pl.String,
    "user_id": pl.String,
    "month": pl.String,
    "reason": pl.String,
    **{
        name: pl.Int64 if kind == "BIGINT" else pl.String
        for name, kind in USAGE_COLUMNS.items()
        if name not in ("ts", "user_id", "month", "source", "run_id")
    },
}


def batch_tables(bodies: Sequence[bytes], first_seq: int) -> tuple[pa.Table, dict[str, pa.Table]]:
    """The journal table and the usage table of each month of a batch, parsed from the events' JSON in
    one columnar pass (polars, off the GIL): far faster than walking the event objects."""
    frame = pl.read_ndjson(io.BytesIO(b"\n".join(bodies)), schema=_PARSE_SCHEMA)
    ts = pl.col("ts").str.replace(r"Z$", "+00:00")
    frame = frame.with_columns(ts.str.to_datetime(_TS_FORMAT, time_unit="us", time_zone="UTC").alias("ts"))
    filed_by_ts = pl.col("type").is_in([_TAGS[kind] for kind in FILED_BY_TS])
    frame = frame.with_columns(
        pl.coalesce(pl.col("month"), pl.when(filed_by_ts).then(pl.col("ts").dt.strftime("%Y-%m"))).alias(
            "month"
        )
    )
    journal = pa.table(
        {
            "seq": pa.array(np.arange(first_seq, first_seq + len(bodies), dtype=np.int64)),
            "type": frame["type"].to_arrow(),
            "ts": frame["ts"].to_arrow(),
            "user_id": frame["user_id"].to_arrow(),
            "month": frame["month"].to_arrow(),
            "reason": frame["reason"].to_arrow(),
            "body": _string_column(bodies),
        }
    ).cast(JOURNAL_SCHEMA)
    usage = frame.filter(pl.col("type") == _TAGS[UsageRecorded]).with_columns(
        pl.lit(SOURCE_LIVE).alias("source"), pl.lit("").alias("run_id")
    )
    by_month: dict[str, pa.Table] = {}
    for (month,), part in usage.select(list(USAGE_COLUMNS)).partition_by("month", as_dict=True).items():
        by_month[str(month)] = part.to_arrow().cast(USAGE_SCHEMA)
    return journal, by_month


_TS_FORMAT = "%Y-%m-%dT%H:%M:%S%.f%:z"

_event_list_decoder: msgspec.json.Decoder[list[Event]] = msgspec.json.Decoder(list[Event])


def decode_bodies(bodies: Sequence[str]) -> list[Event]:
    """Decode many journal bodies at once (one JSON array: far faster than one call per event)."""
    if not bodies:
        return []
    return _event_list_decoder.decode(("[" + ",".join(bodies) + "]").encode())


def journal_bodies(root: Path, segment: Segment, data: bytes, after_seq: int = -1) -> Iterator[list[str]]:
    """A journal segment's bodies after `after_seq` in seq order, REPLAY_BATCH at a time, from its
    verified bytes. Decoded a batch at a time: as one Arrow table and one list, a compacted segment of
    10M events took ~9 GB to replay. A file whose rows are not seqs first..last is a StoreError."""
    try:
        file = pq.ParquetFile(pa.BufferReader(data))
        rows = file.metadata.num_rows
        batches = file.iter_batches(batch_size=REPLAY_BATCH, columns=["seq", "body"])
    except (pa.ArrowException, OSError, ValueError) as error:
        raise damaged(root, f"{segment.file} is damaged: {str(error).splitlines()[0]}") from error
    if rows != segment.rows:
        raise damaged(root, f"{segment.file} does not hold seqs {segment.first}..{segment.last}")
    first = segment.first  # of the next batch
    while True:
        try:
            batch = next(batches, None)
        except (pa.ArrowException, OSError, ValueError) as error:
            raise damaged(root, f"{segment.file} is damaged: {str(error).splitlines()[0]}") from error
        if batch is None:
            # Arrow's allocator keeps what the batches freed for reuse; a replay happens once, so hand it back
            # (with 100,000 events after a snapshot, RSS at ready stayed ~100 MB higher without this).
            pa.default_memory_pool().release_unused()
            return
        seqs = batch.column(0)
        if len(seqs) and seqs[0].as_py() != first:
            raise damaged(root, f"{segment.file} does not hold seqs {segment.first}..{segment.last}")
        skip = max(0, after_seq + 1 - first)
        first += len(seqs)
        if skip < len(seqs):
            yield batch.column(1).slice(skip).to_pylist()


def decode_segment(root: Path, segment: Segment, bodies: Sequence[str]) -> list[Event]:
    """decode_bodies, a body that is no event being a StoreError naming the segment."""
    try:
        return decode_bodies(bodies)
    except msgspec.DecodeError as error:
        raise damaged(root, f"{segment.file} holds a body that is not an event: {error}") from error


def rollup_table(usage: pa.Table) -> pa.Table:
    """Usage rows summed per (user, month)."""
    grouped = usage.group_by(["user_id", "month"], use_threads=False).aggregate(
        [
            ("cost_nanos", "sum"),
            ("cost_nanos", "count"),
            ("input_tokens", "sum"),
            ("output_tokens", "sum"),
        ]
    )
    names = [
        "user_id",
        "month",
        "cost_nanos_sum",
        "cost_nanos_count",
        "input_tokens_sum",
        "output_tokens_sum",
    ]
    return pa.table(
        [grouped.column(n).cast(f.type) for n, f in zip(names, ROLLUP_SCHEMA, strict=True)], ROLLUP_SCHEMA
    )


def merge_rollups(table: pa.Table) -> pa.Table:
    """Concatenated rollups summed again per (user, month)."""
    grouped = table.group_by(["user_id", "month"], use_threads=False).aggregate(
        [(name, "sum") for name in ("spent_nanos", "events", "input_tokens", "output_tokens")]
    )
    names = ["user_id", "month", "spent_nanos_sum", "events_sum", "input_tokens_sum", "output_tokens_sum"]
    return pa.table(
        [grouped.column(n).cast(f.type) for n, f in zip(names, ROLLUP_SCHEMA, strict=True)], ROLLUP_SCHEMA
    )


def merge_tables(root: Path, segments: Sequence[Segment], schema: pa.Schema) -> pa.Table:
    """Concatenate segments in seq order (for compaction), each checked first: a damaged file must not
    be merged into a new one with a fresh checksum."""
    ordered = sorted(segments, key=lambda s: s.first)
    return pa.concat_tables([read_table(root, s, schema=schema) for s in ordered])
