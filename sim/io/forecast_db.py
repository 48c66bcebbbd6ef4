"""Write forecasts into DuckDB: the run's UsageRecorded events and its summary tables.

The `usage` table has exactly the enforcer's columns (budget.events.USAGE_COLUMNS), so one query answers
"what did we spend" (source = 'live') and "what would we have spent" (source = 'sim:<scenario>').
Millions of events go in as Arrow batches, never row by row: a whole run's at once (`write_run`), or a
day engine's as it makes them (`usage_stream`: the same rows, numbered `RUNID-N` in the order written, so
the row set equals the whole engine's but not the event ids). `forecast_tokens` holds each run's billed
tokens per model (the `tokens_by_model` figures), one row per run and model.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import polars as pl

from budget.domain.events import USAGE_COLUMNS
from sim.model import usage_chunk
from sim.model.codes import LAYER_OF_SERVED, CacheLayer, Outcome, Served
from sim.model.forecast import Forecast, flatten
from sim.model.run import RunResult
from sim.model.scenario import Scenario
from sim.model.usage_chunk import UsageChunk

ROWS_PER_BATCH = 500_000  # Arrow batches into DuckDB: fast, and the strings of one batch at a time
# A compact row's outcome code: an attempt's Outcome, or one past them for an answer a cache layer served.
_CACHE_HIT = len(Outcome)
_USAGE_OUTCOMES = {**{int(o): o.usage_outcome for o in Outcome}, _CACHE_HIT: "cache_hit"}
_USAGE_LAYERS = {int(layer): layer.usage_layer for layer in CacheLayer}
RUN_COLUMNS = ("run_id", "scenario", "seed", "mau", "replication", "days", "written_at", "figures")
TOKEN_TABLE_COLUMNS = {
    "run_id": "VARCHAR",
    "model": "VARCHAR",
    "input_tokens": "BIGINT",
    "cached_input_tokens": "BIGINT",
    "cache_write_tokens": "BIGINT",
    "output_tokens": "BIGINT",
}
# Each run's months (sim/model/periods.py) and their own figures: per-user figures are that month's
# spend, never scaled; `complete` is false for a month the run ends inside.
PERIOD_COLUMNS = {
    "run_id": "VARCHAR",
    "period": "BIGINT",
    "start": "DATE",
    "days": "BIGINT",
    "month_days": "BIGINT",
    "complete": "BOOLEAN",
    "requests": "BIGINT",
    "cost_usd": "DOUBLE",
    "cost_per_user_mean_usd": "DOUBLE",
    "cost_per_user_p50_usd": "DOUBLE",
    "cost_per_user_p90_usd": "DOUBLE",
    "cost_per_user_p99_usd": "DOUBLE",
}
# Which prices priced a run (budget.domain.prices.PriceCatalog.provenance): the catalog and its version,
# the day its data was published, the day whose prices applied, the models a [prices] table overrode.
PRICE_COLUMNS = {
    "price_catalog": "VARCHAR",
    "prices_as_of": "DATE",
    "priced_on": "DATE",
    "prices_overridden": "VARCHAR[]",
}


class ForecastWriter:
    """Appends runs to a DuckDB file (created with its tables when new)."""

    def __init__(self, path: str | Path) -> None:
        self.connection = duckdb.connect(str(path))
        columns = ", ".join(f"{name} {kind}" for name, kind in USAGE_COLUMNS.items())
        self.connection.execute(f"CREATE TABLE IF NOT EXISTS usage ({columns})")
        self.connection.execute(
            "CREATE TABLE IF NOT EXISTS forecast_runs (run_id VARCHAR, scenario VARCHAR, seed BIGINT, "
            "mau BIGINT, replication BIGINT, days BIGINT, written_at TIMESTAMPTZ, figures JSON)"
        )
        tokens = ", ".join(f"{name} {kind}" for name, kind in TOKEN_TABLE_COLUMNS.items())
        self.connection.execute(f"CREATE TABLE IF NOT EXISTS forecast_tokens ({tokens})")
        periods = ", ".join(f"{name} {kind}" for name, kind in PERIOD_COLUMNS.items())
        self.connection.execute(f"CREATE TABLE IF NOT EXISTS forecast_periods ({periods})")
        # Which prices priced the run; added to a file written before they were recorded (NULL there).
        for column, kind in PRICE_COLUMNS.items():
            self.connection.execute(f"ALTER TABLE forecast_runs ADD COLUMN IF NOT EXISTS {column} {kind}")

    def write_run(self, run: RunResult, name: str | None = None) -> str:
        """Store one run's usage events; returns its run id. `name` (default: the scenario's) is the
        name its forecast is written under, so that the run's rows and figures share one run id."""
        name = run.scenario.name if name is None else name
        run_id = run_key(name, run.seed, run.traffic.mau, run.replication)
        self.connection.execute("DELETE FROM usage WHERE run_id = ?", [run_id])
        compact = usage_frame(run, run_id)
        for offset in range(0, compact.height, ROWS_PER_BATCH):
            _insert_usage(
                self.connection, usage_rows(run, run_id, compact.slice(offset, ROWS_PER_BATCH), offset, name)
            )
        return run_id

    def usage_stream(self, scenario: Scenario, seed: int, mau: int, replication: int) -> UsageStream:
        """A sink for one run's usage rows, written a chunk at a time as the day engine hands them out
        (the run's earlier rows are removed first). Its rows are those `write_run` writes for the run,
        in another order: the event ids number them in the order written."""
        run_id = run_key(scenario.name, seed, mau, replication)
        self.connection.execute("DELETE FROM usage WHERE run_id = ?", [run_id])
        return UsageStream(self.connection, RowLabels(run_id, scenario.traffic.start, (), scenario.name))

    def write_forecast(self, forecast: Forecast) -> None:
        """One row per (MAU level, replication) with every figure as JSON, plus the flat `forecasts` view."""
        now = dt.datetime.now(dt.UTC)
        prices = forecast.prices
        provenance = [
            prices.get("catalog"),
            prices.get("as_of"),
            prices.get("priced_on"),
            list(prices.get("overridden", [])),
        ]
        columns = ", ".join((*RUN_COLUMNS, *PRICE_COLUMNS))
        marks = ", ".join("?" * (len(RUN_COLUMNS) + len(PRICE_COLUMNS)))
        for summary in forecast.runs:
            run_id = run_key(forecast.scenario, forecast.seed, summary["mau"], summary["replication"])
            self.connection.execute("DELETE FROM forecast_runs WHERE run_id = ?", [run_id])
            self.connection.execute(
                f"INSERT INTO forecast_runs ({columns}) VALUES ({marks})",
                [
                    run_id,
                    forecast.scenario,
                    forecast.seed,
                    summary["mau"],
                    summary["replication"],
                    forecast.days,
                    now,
                    json.dumps(flatten(summary)),
                    *provenance,
                ],
            )
            self._write_tokens(run_id, summary)
            self._write_periods(run_id, summary)
        self.connection.execute(
            "CREATE OR REPLACE VIEW forecasts AS SELECT run_id, scenario, seed, mau, replication, days, "
            "CAST(figures->>'cost_usd' AS DOUBLE) AS cost_usd, "
            "CAST(figures->>'cost_per_session_usd' AS DOUBLE) AS cost_per_session_usd, "
            "CAST(figures->>'cost_per_user_month_usd.p90' AS DOUBLE) AS cost_per_user_month_p90_usd, "
            "CAST(figures->>'quality' AS DOUBLE) AS quality, figures FROM forecast_runs"
        )

    def _write_tokens(self, run_id: str, summary: dict[str, Any]) -> None:
        self.connection.execute("DELETE FROM forecast_tokens WHERE run_id = ?", [run_id])
        rows = [
            [run_id, model, tokens["input"], tokens["cached_input"], tokens["cache_write"], tokens["output"]]
            for model, tokens in summary.get("tokens_by_model", {}).items()
        ]
        if rows:
            marks = ", ".join("?" * len(TOKEN_TABLE_COLUMNS))
            self.connection.executemany(
                f"INSERT INTO forecast_tokens ({', '.join(TOKEN_TABLE_COLUMNS)}) VALUES ({marks})", rows
            )

    def _write_periods(self, run_id: str, summary: dict[str, Any]) -> None:
        self.connection.execute("DELETE FROM forecast_periods WHERE run_id = ?", [run_id])
        rows = [
            [
                run_id,
                index,
                period["start"],
                period["days"],
                period["month_days"],
                period["complete"],
                period["requests"],
                period["cost_usd"],
                *(period["cost_per_user_usd"][key] for key in ("mean", "p50", "p90", "p99")),
            ]
            for index, period in enumerate(summary.get("periods", []))
        ]
        if rows:
            marks = ", ".join("?" * len(PERIOD_COLUMNS))
            self.connection.executemany(
                f"INSERT INTO forecast_periods ({', '.join(PERIOD_COLUMNS)}) VALUES ({marks})", rows
            )

    def close(self) -> None:
        self.connection.close()


class UsageStream:
    """Writes a run's usage rows as they come (`UsageChunk`s, a day's at a time), in batches of
    ROWS_PER_BATCH: each insert into DuckDB has a fixed cost (a day's small chunks written one by one took
    three times as long), so compact rows wait until a batch is full -- at most a batch and a chunk held.
    Event ids number the rows in the order written. Use it as a context manager, or `close` it: the last
    batch is written then."""

    def __init__(self, connection: duckdb.DuckDBPyConnection, labels: RowLabels) -> None:
        self.connection, self.labels = connection, labels
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
            _insert_usage(self.connection, table_rows(batch, self.labels, self.written))
            self.written += batch.height
        rest = waiting.slice(rows)
        self.waiting, self.waiting_rows = ([rest] if rest.height else []), rest.height


def _insert_usage(connection: duckdb.DuckDBPyConnection, rows: pl.DataFrame) -> None:
    """Append rows in the usage table's columns, as one Arrow batch."""
    connection.register("usage_batch", rows.to_arrow())
    connection.execute(f"INSERT INTO usage SELECT {', '.join(USAGE_COLUMNS)} FROM usage_batch")
    connection.unregister("usage_batch")


def run_key(scenario: str, seed: int, mau: int, replication: int) -> str:
    """The id that ties a run's usage rows to its figures; rewriting the same run replaces it."""
    return f"{scenario}-s{seed}-m{mau}-r{replication}"


def usage_frame(run: RunResult, run_id: str) -> pl.DataFrame:
    """The run as compact UsageRecorded rows: codes and numbers (see usage_rows for the table's form).

    One row per provider attempt, one per answer served from a cache layer.
    """
    return compact_frame(usage_chunk.of_run(run))


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


def usage_rows(
    run: RunResult, run_id: str, compact: pl.DataFrame, offset: int, name: str | None = None
) -> pl.DataFrame:
    """A slice of the compact rows in the usage table's columns (strings are made per slice: memory);
    `source` is 'sim:' and `name` (default: the scenario's)."""
    name = run.scenario.name if name is None else name
    return table_rows(compact, RowLabels(run_id, run.scenario.traffic.start, run.models, name), offset)


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
