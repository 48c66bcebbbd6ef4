"""Write forecasts into DuckDB: the run's UsageRecorded events and its summary tables.

The `usage` table has exactly the enforcer's columns (budget.events.USAGE_COLUMNS), so one query answers
"what did we spend" (source = 'live') and "what would we have spent" (source = 'sim:<scenario>').
Millions of events go in as Arrow batches, never row by row: a whole run's at once (`write_run`), or a
day engine's as it makes them (`usage_stream`: the same rows, numbered `RUNID-N` in the order written, so
the row set equals the whole engine's but not the event ids), or a day engine's run in another process
from the Parquet batches it staged (`load_usage`). The rows' shape is sim/io/usage_rows.py's.
`forecast_tokens` holds each run's billed tokens per model (the `tokens_by_model` figures), one row per
run and model.
"""

from __future__ import annotations

import datetime as dt
import json
from functools import partial
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from budget.domain.events import USAGE_COLUMNS
from sim.io.usage_rows import ROWS_PER_BATCH, RowLabels, UsageStream, compact_frame, table_rows
from sim.model import usage_chunk
from sim.model.forecast import Forecast, flatten
from sim.model.run import RunResult
from sim.model.scenario import Scenario

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
        labels = run_labels(scenario, seed, mau, replication)
        self.connection.execute("DELETE FROM usage WHERE run_id = ?", [labels.run_id])
        return UsageStream(partial(_insert_usage, self.connection), labels)

    def load_usage(self, run_id: str, directory: Path) -> None:
        """Replace run `run_id`'s usage rows with those a UsageStream staged as Parquet in `directory`
        (sim/io/usage_rows.py `parquet_batches`, in a process of its own)."""
        self.connection.execute("DELETE FROM usage WHERE run_id = ?", [run_id])
        # One batch at a time, in the order written, through the same Arrow insert as usage_stream's.
        for path in sorted(directory.glob("batch-*.parquet")):
            _insert_usage(self.connection, pl.read_parquet(path))

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


def _insert_usage(connection: duckdb.DuckDBPyConnection, rows: pl.DataFrame) -> None:
    """Append rows in the usage table's columns, as one Arrow batch."""
    connection.register("usage_batch", rows.to_arrow())
    connection.execute(f"INSERT INTO usage SELECT {', '.join(USAGE_COLUMNS)} FROM usage_batch")
    connection.unregister("usage_batch")


def run_key(scenario: str, seed: int, mau: int, replication: int) -> str:
    """The id that ties a run's usage rows to its figures; rewriting the same run replaces it."""
    return f"{scenario}-s{seed}-m{mau}-r{replication}"


def run_labels(scenario: Scenario, seed: int, mau: int, replication: int) -> RowLabels:
    """What a day-engine run's usage rows are labelled with (its models join as its chunks name them)."""
    return RowLabels(
        run_key(scenario.name, seed, mau, replication), scenario.traffic.start, (), scenario.name
    )


def usage_frame(run: RunResult, run_id: str) -> pl.DataFrame:
    """The run as compact UsageRecorded rows: codes and numbers (see usage_rows for the table's form).

    One row per provider attempt, one per answer served from a cache layer.
    """
    return compact_frame(usage_chunk.of_run(run))


def usage_rows(
    run: RunResult, run_id: str, compact: pl.DataFrame, offset: int, name: str | None = None
) -> pl.DataFrame:
    """A slice of the compact rows in the usage table's columns (strings are made per slice: memory);
    `source` is 'sim:' and `name` (default: the scenario's)."""
    name = run.scenario.name if name is None else name
    return table_rows(compact, RowLabels(run_id, run.scenario.traffic.start, run.models, name), offset)
