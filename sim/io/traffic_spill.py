"""Drawn traffic spilled to a directory by simulated day, and read back one day at a time.

The blocks of `sim.model.traffic_blocks` hold a month of some users; a simulator that steps one day at
a time wants one day of every user. So each block's requests (and their calls) are written bucketed by
the day they start in -- day d holds the requests with d * 86400 <= t < (d + 1) * 86400, the end of a
session past the run's last day in its own day -- one file set per (day, block), and a day is read back
by concatenating its pieces of every block in block order: the whole run's requests of that day in
global request order (a block's requests keep their order within a day; blocks follow each other).

A block may carry more than `traffic.draw`'s arrays (sim/model/traffic_block_context.py `engine_blocks`):
the engine's per-request draws (u_router, u_exact, u_true, u_false: those the scenario uses, 8 bytes a
request each) and its conversation -- per request its history and epoch, and its summary calls. Those
are spilled too: draws and history/epoch as request columns, summary calls as a table of their own
(`summary_calls`: the call columns and summary_epoch), because a summary call's id follows every turn
call of the run: a day's calls read back are every block's turn calls of the day, then every block's
summary calls of the day -- the whole run's calls of that day in global call order.

Two formats, measured by benchmarks/traffic_blocks.py: `npy` (one .npy per column: no encoding, the
arrays' own bytes and dtypes) and `parquet` (one file per (day, block) and table, uncompressed, through
pyarrow).

`hold` keeps what `spill` would write in memory instead, for a run played in one part (read back at once).

A spill may bucket by part of `days_per_part` days instead (part p: the days p*k .. p*k+k-1, its folder
named by its first day), for a reader that plays several days at once; read back, a part is in global
order as a day is.

Layout: DIR/day-DDDD/block-BBBBBB.TABLE.COLUMN.npy, or DIR/day-DDDD/block-BBBBBB.TABLE.parquet, TABLE one
of requests, calls, summary_calls. Every block of a spill has the same columns.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from sim.errors import ArgumentError, InputError
from sim.model.periods import SECONDS_PER_DAY
from sim.model.traffic_blocks import ENGINE_DRAWS, BlockConversation, DayTraffic, TrafficBlock

SpillFormat = Literal["npy", "parquet"]
FORMATS: tuple[SpillFormat, ...] = ("npy", "parquet")
# Per request, and per call (a call's day is its request's). `request` and `call` are the global ids.
REQUEST_COLUMNS = ("request", "t", "user", "exact_key", "cluster", "context", "hard")
CONVERSATION_COLUMNS = ("history", "epoch")  # per request, with conversation context
CALL_COLUMNS = ("call", "call_request", "call_step", "call_deterministic", "input_tokens", "output_tokens")
SUMMARY_COLUMNS = (*CALL_COLUMNS, "summary_epoch")
# Each table's columns in the order they are written and read back; a spill holds some of them.
TABLES = {
    "requests": (*REQUEST_COLUMNS, *ENGINE_DRAWS, *CONVERSATION_COLUMNS),
    "calls": CALL_COLUMNS,
    "summary_calls": SUMMARY_COLUMNS,
}


@dataclass(frozen=True, slots=True)
class SpillSummary:
    """What a spill wrote: blocks, the days that hold requests (a part's first day, when bucketed by
    parts of several days), requests, calls, bytes on disk, and the last day any request starts in
    (-1: none)."""

    blocks: int
    days: tuple[int, ...]
    requests: int
    calls: int
    bytes: int
    last_day: int = -1


def spill(
    blocks: Iterable[TrafficBlock],
    directory: str | Path,
    spill_format: SpillFormat = "npy",
    days_per_part: int = 1,
) -> SpillSummary:
    """Write every block's requests and calls bucketed by day (by part of `days_per_part` days) under
    `directory` (created; it must hold no earlier spill). One block is in memory at a time: the caller's
    iterable draws them."""
    _check_format(spill_format)
    _check_part(days_per_part)
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    if any(root.glob("day-*")):
        raise InputError(str(root), "already holds a spill; give an empty directory")
    tally, size = _Tally(), 0
    days: set[int] = set()
    for index, block in enumerate(blocks):
        tally.add(block)
        for day, tables in _by_day(block, days_per_part):
            folder = root / f"day-{day:04d}"
            folder.mkdir(exist_ok=True)
            size += _write(folder, f"block-{index:06d}", tables, spill_format)
            days.add(day)
    return tally.summary(days, size)


def hold(
    blocks: Iterable[TrafficBlock], days_per_part: int = 1
) -> tuple[SpillSummary, dict[int, DayTraffic]]:
    """What `spill` would write, kept in memory: each day's (part's) traffic as `read_day` gives it back,
    by its first day. For a run played in one part, which would read back at once all it wrote (so it
    saves the writing and the reading, and holds no more than the reading would)."""
    _check_part(days_per_part)
    tally = _Tally()
    pieces: dict[int, dict[str, dict[str, list[np.ndarray]]]] = {}
    for block in blocks:
        tally.add(block)
        for day, tables in _by_day(block, days_per_part):
            day_pieces = pieces.setdefault(day, {table: {} for table in TABLES})
            for table, columns in tables.items():
                for column, values in columns.items():
                    day_pieces[table].setdefault(column, []).append(values)
    return tally.summary(set(pieces), 0), {day: _day_traffic(day, held) for day, held in pieces.items()}


@dataclass(slots=True)
class _Tally:
    """What a spill counts as its blocks go by."""

    blocks: int = 0
    requests: int = 0
    calls: int = 0
    last_day: int = -1

    def add(self, block: TrafficBlock) -> None:
        summaries = block.conversation.summaries if block.conversation is not None else 0
        self.blocks, self.requests = self.blocks + 1, self.requests + block.requests
        self.calls += block.calls + summaries
        if block.requests:
            self.last_day = max(self.last_day, int(block.t.max() // SECONDS_PER_DAY))

    def summary(self, days: set[int], size: int) -> SpillSummary:
        return SpillSummary(self.blocks, tuple(sorted(days)), self.requests, self.calls, size, self.last_day)


def read_day(directory: str | Path, day: int, spill_format: SpillFormat = "npy") -> DayTraffic:
    """Day `day`'s requests and calls of every block, concatenated in block order (global order) -- the
    part that starts on `day` when the spill was bucketed by parts of several days."""
    _check_format(spill_format)
    folder = Path(directory) / f"day-{day:04d}"
    if not folder.is_dir():
        raise InputError(str(folder), f"no spilled requests for day {day}")
    pieces: dict[str, dict[str, list[np.ndarray]]] = {table: {} for table in TABLES}
    for stem in sorted({path.name.split(".")[0] for path in folder.iterdir()}):
        for table in TABLES:
            for column, values in _read(folder, stem, table, spill_format).items():
                pieces[table].setdefault(column, []).append(values)
    return _day_traffic(day, pieces)


def _day_traffic(day: int, pieces: dict[str, dict[str, list[np.ndarray]]]) -> DayTraffic:
    """A day's traffic from its pieces (table -> column -> each block's piece, in block order)."""
    joined = {
        table: {column: _joined(parts) for column, parts in columns.items()}
        for table, columns in pieces.items()
    }
    requests, calls, summary_calls = joined["requests"], joined["calls"], joined["summary_calls"]
    if not summary_calls:
        return DayTraffic(day=day, requests=requests, calls=calls)
    calls = {column: np.concatenate([calls[column], summary_calls[column]]) for column in CALL_COLUMNS}
    summaries = {column: summary_calls[column] for column in ("call", "summary_epoch")}
    return DayTraffic(day=day, requests=requests, calls=calls, summaries=summaries)


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    """The pieces of a column, one after another (a lone piece as it is: no copy)."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _by_day(
    block: TrafficBlock, days_per_part: int = 1
) -> Iterator[tuple[int, dict[str, dict[str, np.ndarray]]]]:
    """The block's requests, calls and summary calls of each day (part of `days_per_part` days, named by
    its first day) it touches, in their order (a stable sort by day)."""
    request_day = (block.t // (SECONDS_PER_DAY * days_per_part)).astype(np.int64) * days_per_part
    if not request_day.size:
        return
    tables = {"requests": _request_columns(block), "calls": _call_columns(block)}
    if block.conversation is not None:
        tables["summary_calls"] = _summary_columns(block.conversation)
    if bool((request_day == request_day[0]).all()):  # one part (as long as the run): as they are
        yield int(request_day[0]), tables
        return
    table_days = {"requests": request_day, "calls": request_day[block.call_request - block.first_request]}
    if block.conversation is not None:
        table_days["summary_calls"] = request_day[block.conversation.summary_request - block.first_request]
    orders = {table: _by_day_order(days) for table, days in table_days.items()}
    # One gather per column into day order; each day is then a slice (a view) of it.
    gathered = {
        table: {name: values[orders[table][0]] for name, values in columns.items()}
        for table, columns in tables.items()
    }
    for day in orders["requests"][1]:
        yield (
            day,
            {
                table: {
                    name: values[slice(*orders[table][1].get(day, (0, 0)))]
                    for name, values in columns.items()
                }
                for table, columns in gathered.items()
            },
        )


def _request_columns(block: TrafficBlock) -> dict[str, np.ndarray]:
    columns = {
        "request": np.arange(block.first_request, block.first_request + block.requests, dtype=np.int64),
        "t": block.t,
        "user": block.user,
        "exact_key": block.exact_key,
        "cluster": block.cluster,
        "context": block.context,
        "hard": block.hard,
    }
    columns |= {name: block.draws[name] for name in ENGINE_DRAWS if name in block.draws}
    if block.conversation is not None:
        columns |= {"history": block.conversation.history, "epoch": block.conversation.epoch}
    return columns


def _call_columns(block: TrafficBlock) -> dict[str, np.ndarray]:
    return {
        "call": np.arange(block.first_call, block.first_call + block.calls, dtype=np.int64),
        "call_request": block.call_request,
        "call_step": block.call_step,
        "call_deterministic": block.call_deterministic,
        "input_tokens": block.input_tokens,
        "output_tokens": block.output_tokens,
    }


def _summary_columns(conversation: BlockConversation) -> dict[str, np.ndarray]:
    return {
        "call": conversation.summary_call,
        "call_request": conversation.summary_request,
        "call_step": conversation.summary_step,
        "call_deterministic": np.zeros(conversation.summaries, dtype=bool),
        "input_tokens": conversation.summary_input,
        "output_tokens": conversation.summary_output,
        "summary_epoch": conversation.summary_epoch,
    }


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
                path = folder / f"{stem}.{table}.{column}.npy"
                np.save(path, values, allow_pickle=False)
                written += path.stat().st_size
        else:
            path = folder / f"{stem}.{table}.parquet"
            import pyarrow as pa  # only for this format (0.7 s to load; npy, the default, never does)
            import pyarrow.parquet as pq

            pq.write_table(pa.table(columns), path, compression="none")
            written += path.stat().st_size
    return written


def _read(folder: Path, stem: str, table: str, spill_format: SpillFormat) -> dict[str, np.ndarray]:
    """One (day, block)'s columns of `table`, in TABLES order; none if the spill has no such table."""
    if spill_format == "npy":
        paths = {column: folder / f"{stem}.{table}.{column}.npy" for column in TABLES[table]}
        return {column: np.load(path, allow_pickle=False) for column, path in paths.items() if path.exists()}
    path = folder / f"{stem}.{table}.parquet"
    if not path.exists():
        return {}
    import pyarrow.parquet as pq  # only for this format

    read = pq.read_table(path)
    return {column: read.column(column).to_numpy() for column in TABLES[table] if column in read.column_names}


def _check_part(days_per_part: int) -> None:
    if days_per_part < 1:
        raise ArgumentError("days_per_part", f"at least 1, got {days_per_part}")


def _check_format(spill_format: str) -> None:
    if spill_format not in FORMATS:
        raise ArgumentError("spill_format", f"one of {', '.join(FORMATS)}, got {spill_format!r}")
