"""A forecast's usage rows in the `usage` table's columns (budget.domain.events.USAGE_COLUMNS), made from
the engine's usage chunks (sim/model/usage_chunk.py): compact codes and numbers first (`compact_frame`),
labelled with the run's id, start, models and name a batch at a time (`table_rows`: strings only for the
rows in hand). `UsageStream` batches a day engine's rows as it makes them for a writer -- a DuckDB file
(sim/io/forecast_db.py) or, for a run played in another process, Parquet files the forecast's own
process loads after (`parquet_batches`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import polars as pl

from sim.model.codes import LAYER_OF_SERVED, CacheLayer, Outcome, Served
from sim.model.usage_chunk import UsageChunk

ROWS_PER_BATCH = 500_000  # Arrow batches into DuckDB: fast, and the strings of one batch at a time
# A compact row's outcome code: an attempt's Outcome, or one past them for an answer a cache layer served.
_CACHE_HIT = len(Outcome)
_USAGE_OUTCOMES = {**{int(o): o.usage_outcome for o in Outcome}, _CACHE_HIT: "cache_hit"}
_USAGE_LAYERS = {int(layer): layer.usage_layer for layer in CacheLayer}


@dataclass(frozen=True, slots=True)
class RowLabels:
    """What a run's usage rows say beside their codes: its id, its start (ISO), its models, its name."""

    run_id: str
    start: str
    models: tuple[str, ...]
    name: str


def table_rows(compact: pl.DataFrame, labels: RowLabels, offset: int) -> pl.DataFrame:
    """Compact rows in the usage table's columns; event ids number them from `offset` in their order."""
    start = dt.datetime.fromisoformat(labels.start).replace(tzinfo=dt.UTC)
    ts = pl.lit(start) + pl.duration(microseconds=pl.col("micros"))
    run_id = labels.run_id
    return compact.select(
        (pl.lit(f"{run_id}-") + (pl.int_range(pl.len()) + offset).cast(pl.Utf8)).alias("event_id"),
        (pl.lit("u") + pl.col("user").cast(pl.Utf8)).alias("user_id"),
        ts.alias("ts"),
        ts.dt.strftime("%Y-%m").alias("month"),
        pl.col("model_code")
        .replace_strict(dict(enumerate(labels.models)), return_dtype=pl.Utf8)
        .alias("model"),
        pl.lit("chat").alias("feature"),
        "input_tokens",
        "cached_input_tokens",
        "cache_write_tokens",
        "output_tokens",
        pl.col("outcome_code").replace_strict(_USAGE_OUTCOMES, return_dtype=pl.Utf8).alias("outcome"),
        pl.col("layer_code").replace_strict(_USAGE_LAYERS, return_dtype=pl.Utf8).alias("cache_layer"),
        pl.lit(None, dtype=pl.Utf8).alias("reservation_id"),
        "cost_nanos",
        pl.lit(f"sim:{labels.name}").alias("source"),
        pl.lit(run_id).alias("run_id"),
    )


def compact_frame(chunk: UsageChunk) -> pl.DataFrame:
    """Some usage rows as compact codes and numbers: attempts, then cache answers, then fragment hits."""
    attempts = chunk.attempts
    zeros = np.zeros(chunk.answered_user.size + chunk.fragment_user.size, dtype=np.int64)
    served_layer = np.full(max(Served) + 1, CacheLayer.NONE, dtype=np.int64)  # CacheLayer by Served
    for served, layer in LAYER_OF_SERVED.items():
        served_layer[served] = layer

    def attempt_column(name: str) -> np.ndarray:
        return np.concatenate([attempts[name].astype(np.int64), zeros])

    return pl.DataFrame(
        {
            "user": np.concatenate([chunk.attempt_user, chunk.answered_user, chunk.fragment_user]),
            "micros": (np.concatenate([attempts["t"], chunk.answered_t, chunk.fragment_t]) * 1e6).astype(
                np.int64
            ),
            "model_code": np.concatenate(
                [
                    attempts["model"].astype(np.int64),
                    chunk.answered_model.astype(np.int64),
                    chunk.fragment_model.astype(np.int64),
                ]
            ),
            "input_tokens": attempt_column("billed_input"),
            "output_tokens": attempt_column("billed_output"),
            "cached_input_tokens": attempt_column("billed_cached"),
            "cache_write_tokens": attempt_column("billed_write"),
            "outcome_code": np.concatenate(
                [attempts["outcome"].astype(np.int64), np.full(zeros.size, _CACHE_HIT, dtype=np.int64)]
            ),
            "layer_code": np.concatenate(
                [
                    np.full(chunk.attempt_user.size, CacheLayer.NONE, dtype=np.int64),
                    served_layer[chunk.answered_served],
                    np.full(chunk.fragment_user.size, CacheLayer.FRAGMENT, dtype=np.int64),
                ]
            ),
            "cost_nanos": attempt_column("cost_nanos"),
        }
    )


class UsageStream:
    """Writes a run's usage rows as they come (`UsageChunk`s, a day's at a time), in batches of
    ROWS_PER_BATCH handed to `write` in the usage table's columns: each insert into DuckDB has a fixed
    cost (a day's small chunks written one by one took three times as long), so compact rows wait until a
    batch is full -- at most a batch and a chunk held. Event ids number the rows in the order written. Use
    it as a context manager, or `close` it: the last batch is written then."""

    def __init__(self, write: Callable[[pl.DataFrame], object], labels: RowLabels) -> None:
        self.write, self.labels = write, labels
        self.written = 0
        self.waiting: list[pl.DataFrame] = []
        self.waiting_rows = 0

    def __call__(self, chunk: UsageChunk) -> None:
        """Take the chunk's rows; write every batch that is full."""
        if chunk.models != self.labels.models:  # a cap's degrade model joins the run's models
            self._write(self.waiting_rows)
            self.labels = replace(self.labels, models=chunk.models)
        compact = compact_frame(chunk)
        if compact.height:
            self.waiting.append(compact)
            self.waiting_rows += compact.height
        self._write(self.waiting_rows - self.waiting_rows % ROWS_PER_BATCH)

    def close(self) -> None:
        """Write the rows still waiting."""
        self._write(self.waiting_rows)

    def __enter__(self) -> UsageStream:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is None:  # a run that failed writes no more of its rows
            self.close()

    def _write(self, rows: int) -> None:
        """Write the first `rows` waiting rows, a batch at a time."""
        if not rows:
            return
        waiting = pl.concat(self.waiting, rechunk=False)
        for offset in range(0, rows, ROWS_PER_BATCH):
            batch = waiting.slice(offset, min(ROWS_PER_BATCH, rows - offset))
            self.write(table_rows(batch, self.labels, self.written))
            self.written += batch.height
        rest = waiting.slice(rows)
        self.waiting, self.waiting_rows = ([rest] if rest.height else []), rest.height


def parquet_batches(directory: Path) -> Callable[[pl.DataFrame], None]:
    """A UsageStream writer that puts each batch in its own Parquet file in `directory` (created), named
    in the order written: `batch-000000.parquet`, ..."""
    directory.mkdir(parents=True, exist_ok=True)
    written = [0]

    def write(rows: pl.DataFrame) -> None:
        rows.write_parquet(directory / f"batch-{written[0]:06d}.parquet")
        written[0] += 1

    return write
