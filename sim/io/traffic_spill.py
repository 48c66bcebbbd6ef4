"""Drawn traffic spilled to a directory by simulated day, and read back one day at a time.

The blocks of `sim.model.traffic_blocks` hold a month of some users; a simulator that steps one day at
a time wants one day of every user. So each block's requests (and their calls) are written bucketed by
the day they start in -- day d holds the requests with d * 86400 <= t < (d + 1) * 86400, the end of a
session past the run's last day in its own day -- one file set per (day, block), and a day is read back
by concatenating its pieces of every block in block order: the whole run's requests of that day in
global request order (a block's requests keep their order within a day; blocks follow each other).

Two formats, measured by benchmarks/traffic_blocks.py: `npy` (one .npy per column: no encoding, the
arrays' own bytes and dtypes) and `parquet` (one file per (day, block) for requests and one for calls,
uncompressed, through pyarrow).

Layout: DIR/day-DDDD/block-BBBBBB.COLUMN.npy, or DIR/day-DDDD/block-BBBBBB.{requests,calls}.parquet.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sim.errors import ArgumentError, InputError
from sim.model.periods import SECONDS_PER_DAY
from sim.model.traffic_blocks import TrafficBlock

SpillFormat = Literal["npy", "parquet"]
FORMATS: tuple[SpillFormat, ...] = ("npy", "parquet")
# Per request, and per call (a call's day is its request's). `request` and `call` are the global ids.
REQUEST_COLUMNS = ("request", "t", "user", "exact_key", "cluster", "context", "hard")
CALL_COLUMNS = ("call", "call_request", "call_step", "call_deterministic", "input_tokens", "output_tokens")
TABLES = {"requests": REQUEST_COLUMNS, "calls": CALL_COLUMNS}


@dataclass(frozen=True, slots=True)
class DayTraffic:
    """One simulated day's requests and calls of the whole run, in global order: column -> array."""

    day: int
    requests: dict[str, np.ndarray]
    calls: dict[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class SpillSummary:
    """What a spill wrote: blocks, the days that hold requests, requests, calls, bytes on disk."""

    blocks: int
    days: tuple[int, ...]
    requests: int
    calls: int
    bytes: int


def spill(
    blocks: Iterable[TrafficBlock], directory: str | Path, spill_format: SpillFormat = "npy"
) -> SpillSummary:
    """Write every block's requests and calls bucketed by day under `directory` (created; it must hold no
    earlier spill). One block is in memory at a time: the caller's iterable draws them."""
    _check_format(spill_format)
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    if any(root.glob("day-*")):
        raise InputError(str(root), "already holds a spill; give an empty directory")
    count = requests = calls = size = 0
    days: set[int] = set()
    for index, block in enumerate(blocks):
        for day, tables in _by_day(block):
            folder = root / f"day-{day:04d}"
            folder.mkdir(exist_ok=True)
            size += _write(folder, f"block-{index:06d}", tables, spill_format)
            days.add(day)
        count, requests, calls = count + 1, requests + block.requests, calls + block.calls
    return SpillSummary(count, tuple(sorted(days)), requests, calls, size)


def read_day(directory: str | Path, day: int, spill_format: SpillFormat = "npy") -> DayTraffic:
    """Day `day`'s requests and calls of every block, concatenated in block order (global order)."""
    _check_format(spill_format)
    folder = Path(directory) / f"day-{day:04d}"
    if not folder.is_dir():
        raise InputError(str(folder), f"no spilled requests for day {day}")
    pieces: dict[str, dict[str, list[np.ndarray]]] = {
        table: {column: [] for column in columns} for table, columns in TABLES.items()
    }
    for stem in sorted({path.name.split(".")[0] for path in folder.iterdir()}):
        for table, columns in TABLES.items():
            for column, values in _read(folder, stem, table, columns, spill_format).items():
                pieces[table][column].append(values)
    joined = {
        table: {column: np.concatenate(parts) for column, parts in columns.items()}
        for table, columns in pieces.items()
    }
    return DayTraffic(day=day, requests=joined["requests"], calls=joined["calls"])


def _by_day(block: TrafficBlock) -> Iterator[tuple[int, dict[str, dict[str, np.ndarray]]]]:
    """The block's requests and calls of each day it touches, in their order (a stable sort by day)."""
    request_day = (block.t // SECONDS_PER_DAY).astype(np.int64)
    call_day = request_day[block.call_request - block.first_request]
    requests = {
        "request": np.arange(block.first_request, block.first_request + block.requests, dtype=np.int64),
        "t": block.t,
        "user": block.user,
        "exact_key": block.exact_key,
        "cluster": block.cluster,
        "context": block.context,
        "hard": block.hard,
    }
    calls = {
        "call": np.arange(block.first_call, block.first_call + block.calls, dtype=np.int64),
        "call_request": block.call_request,
        "call_step": block.call_step,
        "call_deterministic": block.call_deterministic,
        "input_tokens": block.input_tokens,
        "output_tokens": block.output_tokens,
    }
    request_order, request_bounds = _by_day_order(request_day)
    call_order, call_bounds = _by_day_order(call_day)
    # One gather per column into day order; each day is then a slice (a view) of it.
    requests = {name: values[request_order] for name, values in requests.items()}
    calls = {name: values[call_order] for name, values in calls.items()}
    for day, (begin, end) in request_bounds.items():
        call_begin, call_end = call_bounds[day]
        yield (
            day,
            {
                "requests": {name: values[begin:end] for name, values in requests.items()},
                "calls": {name: values[call_begin:call_end] for name, values in calls.items()},
            },
        )


def _by_day_order(day: np.ndarray) -> tuple[np.ndarray, dict[int, tuple[int, int]]]:
    """The positions in day order (ascending within a day), and where each present day's run is in it.
    Days fit int16 (a run is at most 366 days), whose stable sort numpy does as a radix sort."""
    day16 = day.astype(np.int16)
    order = np.argsort(day16, kind="stable")
    counts = np.bincount(day16)
    ends = np.cumsum(counts)
    return order, {int(d): (int(ends[d] - counts[d]), int(ends[d])) for d in np.flatnonzero(counts)}


def _write(
    folder: Path, stem: str, tables: dict[str, dict[str, np.ndarray]], spill_format: SpillFormat
) -> int:
    """Write one (day, block); returns the bytes written."""
    written = 0
    for table, columns in tables.items():
        if spill_format == "npy":
            for column, values in columns.items():
                path = folder / f"{stem}.{column}.npy"
                np.save(path, values, allow_pickle=False)
                written += path.stat().st_size
        else:
            path = folder / f"{stem}.{table}.parquet"
            pq.write_table(pa.table(columns), path, compression="none")
            written += path.stat().st_size
    return written


def _read(
    folder: Path, stem: str, table: str, columns: tuple[str, ...], spill_format: SpillFormat
) -> dict[str, np.ndarray]:
    if spill_format == "npy":
        return {column: np.load(folder / f"{stem}.{column}.npy", allow_pickle=False) for column in columns}
    read = pq.read_table(folder / f"{stem}.{table}.parquet")
    return {column: read.column(column).to_numpy() for column in columns}


def _check_format(spill_format: str) -> None:
    if spill_format not in FORMATS:
        raise ArgumentError("spill_format", f"one of {', '.join(FORMATS)}, got {spill_format!r}")
