"""`--engine days --out`: the day engine's usage rows, written a day at a time, are the whole engine's.

The rows come in another order, so their event ids differ: the tests compare the usage tables of two real
DuckDB files as multisets of rows without `event_id` (EXCEPT ALL both ways, and equal counts), and check
that the day engine's ids are unique. With a cap, the rows are those of the capped run: denied requests'
attempts dropped, degraded ones' at the degrade model and repriced.
"""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import pytest

from budget.domain.events import USAGE_COLUMNS
from sim.io import usage_rows
from sim.io.forecast_db import ForecastWriter
from sim.io.scenarios import load_scenario
from sim.io.streaming_run import simulate_streaming
from sim.io.usage_rows import UsageStream
from sim.model import engine, forecast
from sim.model.scenario import Burst, Scenario
from sim.model.usage_chunk import UsageChunk

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
ROW_COLUMNS = ", ".join(name for name in USAGE_COLUMNS if name != "event_id")


def usage_difference(whole: Path, by_day: Path) -> tuple[int, int, int, int]:
    """Rows of each file's usage table, and rows of each missing from the other (as multisets)."""
    with duckdb.connect() as connection:
        connection.execute(f"ATTACH '{whole}' AS whole (READ_ONLY)")
        connection.execute(f"ATTACH '{by_day}' AS by_day (READ_ONLY)")

        def count(query: str) -> int:
            row = connection.execute(f"SELECT count(*) FROM ({query})").fetchone()
            assert row is not None
            return int(row[0])

        rows_of = {name: f"SELECT {ROW_COLUMNS} FROM {name}.usage" for name in ("whole", "by_day")}
        return (
            count(rows_of["whole"]),
            count(rows_of["by_day"]),
            count(f"{rows_of['whole']} EXCEPT ALL {rows_of['by_day']}"),
            count(f"{rows_of['by_day']} EXCEPT ALL {rows_of['whole']}"),
        )


def unique_ids(path: Path) -> tuple[int, int]:
    with duckdb.connect(str(path), read_only=True) as connection:
        row = connection.execute("SELECT count(*), count(DISTINCT event_id) FROM usage").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def write_both(
    scenario: Scenario,
    catalog: Any,
    mau: int,
    days: int,
    users_per_block: int,
    tmp_path: Path,
    days_per_part: int = 1,
) -> tuple[Path, Path, dict[str, Any], list[int]]:
    """The whole engine's run and the day engine's (`days_per_part` days played at a time), each written
    to its own DuckDB file; the whole run's figures, and the rows of each chunk the day engine handed
    out."""
    whole_path, by_day_path = tmp_path / "whole.duckdb", tmp_path / "by_day.duckdb"
    run = engine.simulate(scenario, catalog, mau, days, seed=7)
    writer = ForecastWriter(whole_path)
    writer.write_run(run)
    writer.close()
    writer = ForecastWriter(by_day_path)
    stream = writer.usage_stream(scenario, 7, mau, 0)
    chunks: list[int] = []

    def heard(chunk: UsageChunk, stream: UsageStream = stream) -> None:
        chunks.append(chunk.rows)
        stream(chunk)

    with stream:
        streamed = simulate_streaming(
            scenario,
            catalog,
            mau,
            days,
            seed=7,
            users_per_block=users_per_block,
            usage=heard,
            days_per_part=days_per_part,
        )
    writer.close()
    whole = forecast.summarize(run)
    assert streamed == whole
    return whole_path, by_day_path, whole, chunks


def tight_burst(scenario: Scenario) -> Scenario:
    """A burst across the first midnight against tight rate limits: queued and given-up calls carry over."""
    traffic = msgspec.structs.replace(scenario.traffic, bursts=[Burst(start_day=0.9, hours=3, factor=20)])
    providers = {
        model: msgspec.structs.replace(scenario.provider(model), rpm=30, tpm=30_000)
        for model in scenario.models
    }
    return msgspec.structs.replace(scenario, traffic=traffic, providers=providers)


@pytest.mark.parametrize(
    ("name", "mau", "days", "users_per_block", "rows_per_batch", "days_per_part"),
    [
        ("seed-story/optimized.toml", 400, 4, 97, None, 1),  # exact, semantic and fragment cache rows
        ("levers/router.toml", 300, 3, 100_000, 777, 1),  # batches end inside chunks, chunks inside batches
        ("launch-spike-cost-aware.toml", 400, 3, 97, None, 1),  # with `tight_burst`
        ("launch-spike-cost-aware.toml", 400, 4, 97, None, 2),  # two days played at a time
    ],
)
def test_the_day_engines_usage_rows_are_the_whole_engines(
    name: str,
    mau: int,
    days: int,
    users_per_block: int,
    rows_per_batch: int | None,
    days_per_part: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if rows_per_batch is not None:
        monkeypatch.setattr(usage_rows, "ROWS_PER_BATCH", rows_per_batch)
    scenario, catalog = load_scenario(SCENARIOS / name)
    if name.startswith("launch-spike"):
        scenario = tight_burst(scenario)
    whole_path, by_day_path, figures, chunks = write_both(
        scenario, catalog, mau, days, users_per_block, tmp_path, days_per_part
    )
    if name.startswith("seed-story"):
        assert all(figures["hit_rate"][layer] > 0 for layer in ("exact", "semantic", "fragment"))
    if name.startswith("launch-spike"):
        assert figures["queued"] > 0 and figures["rate_limited"] > 0
    rows, rows_by_day, missing, extra = usage_difference(whole_path, by_day_path)
    assert rows > 1_000 and (rows_by_day, missing, extra) == (rows, 0, 0)
    assert unique_ids(by_day_path) == (rows, rows)
    # a part's rows at a time (its ticks', or a tick's after the last day), never the run's at once
    assert len(chunks) >= days // days_per_part and sum(chunks) == rows and max(chunks) < rows


@pytest.mark.parametrize(
    ("name", "users_per_block"), [("naive-cap-degrade", 97), ("naive-cap-block", 100_000)]
)
def test_a_capped_day_engine_writes_the_capped_whole_runs_rows(
    name: str, users_per_block: int, tmp_path: Path
) -> None:
    scenario, catalog = load_scenario(SCENARIOS / "caps" / f"{name}.toml")
    whole_path, by_day_path, figures, chunks = write_both(
        scenario, catalog, 400, 30, users_per_block, tmp_path
    )
    assert figures["cap"]["requests_denied"] > 0
    assert (figures["cap"]["requests_degraded"] > 0) == (name == "naive-cap-degrade")
    rows, rows_by_day, missing, extra = usage_difference(whole_path, by_day_path)
    assert rows > 1_000 and (rows_by_day, missing, extra) == (rows, 0, 0)
    assert unique_ids(by_day_path) == (rows, rows)
    assert len(chunks) == -(-400 // users_per_block)  # a block of users at a time, after the cap
    if name == "naive-cap-degrade":  # degraded requests' attempts are at the degrade model
        assert scenario.cap is not None
        with duckdb.connect(str(by_day_path), read_only=True) as connection:
            row = connection.execute(
                "SELECT count(*) FROM usage WHERE model = ?", [scenario.cap.degrade_model]
            ).fetchone()
        assert row is not None and row[0] > 0


@pytest.mark.parametrize("workers", [1, 2])  # 2: each process stages its run's rows, loaded here
def test_simulate_engine_days_out_writes_the_whole_engines_tables(tmp_path: Path, workers: int) -> None:
    scenario = SCENARIOS / "seed-story" / "optimized.toml"
    common = [sys.executable, "-m", "sim.cli", "simulate", str(scenario), "--days", "3"]
    common += ["--mau", "200,300", "--replications", "2"]  # four runs, each under its own run id
    run = functools.partial(subprocess.run, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    whole = run([*common, "--out", str(tmp_path / "whole.duckdb")])
    spill = tmp_path / "spill"
    spill.mkdir()
    days = ["--engine", "days", "--workers", str(workers), "--spill", str(spill)]
    by_day = run([*common, *days, "--out", str(tmp_path / "by_day.duckdb")])
    assert whole.returncode == 0 and by_day.returncode == 0, whole.stderr + by_day.stderr
    assert list(spill.iterdir()) == []  # the runs' spills and staged rows are removed after
    rows, rows_by_day, missing, extra = usage_difference(
        tmp_path / "whole.duckdb", tmp_path / "by_day.duckdb"
    )
    assert rows > 1_000 and (rows_by_day, missing, extra) == (rows, 0, 0)
    assert unique_ids(tmp_path / "by_day.duckdb") == (rows, rows)
    with duckdb.connect(str(tmp_path / "by_day.duckdb"), read_only=True) as connection:
        runs = connection.execute("SELECT count(DISTINCT run_id) FROM usage").fetchone()
    assert runs == (4,)
    tables = {
        "forecast_runs": "run_id, scenario, seed, mau, replication, days, CAST(figures AS VARCHAR)",
        "forecast_periods": "*",
        "forecast_tokens": "*",
    }
    for table, columns in tables.items():
        read = {}
        for engine_name in ("whole", "by_day"):
            with duckdb.connect(str(tmp_path / f"{engine_name}.duckdb"), read_only=True) as connection:
                read[engine_name] = connection.execute(
                    f"SELECT {columns} FROM {table} ORDER BY ALL"
                ).fetchall()
        assert read["whole"] and read["by_day"] == read["whole"], table
