"""`margins forecast-error`: forecast vs actual spend overall, per model and per user decile."""

from __future__ import annotations

from pathlib import Path

import duckdb
import msgspec
import numpy as np
import pytest
from click.testing import CliRunner

from budget.domain.prices import NANOS_PER_USD
from budget.store.event_store import EventStore
from sim.cli import main
from sim.io.forecast_db import ForecastWriter
from sim.model.engine import simulate
from sim.model.forecast import forecast
from tests.sim.scenarios import scenario_from
from tests.sim.usage import usage_events

TABLE = {"router": {"model": "gpt-4o-mini"}, "traffic": {"days": 30}}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray]:
    """A two-replication forecast at 200 MAU, and a store holding another month of the same traffic."""
    root = tmp_path_factory.mktemp("forecast-error")
    scenario, catalog = scenario_from(TABLE, "chat")
    writer = ForecastWriter(root / "f.duckdb")
    try:
        writer.write_forecast(forecast(scenario, catalog, [200], 30, 1, 2, on_run=writer.write_run))
    finally:
        writer.close()
    actual = simulate(scenario, catalog, 200, 30, seed=9)
    events = [msgspec.structs.replace(e, month="2026-11") for e in usage_events(actual)]
    with EventStore.open(root / "store", flush_interval=None, offload=False) as store:
        store.append(events)
        store.flush()
    per_user = np.bincount(actual.traffic.user, weights=actual.cost_nanos) / NANOS_PER_USD
    return root / "f.duckdb", root / "store", per_user


def test_the_comparison_is_a_table_and_views(files: tuple[Path, Path, np.ndarray]) -> None:
    forecast_path, store, per_user = files
    result = CliRunner().invoke(
        main,
        ["forecast-error", "--forecast", str(forecast_path), "--store", str(store), "--month", "2026-11"],
    )
    assert result.exit_code == 0, result.stderr
    assert "decile 10 (per user)" in result.stdout and "model gpt-4o-mini" in result.stdout
    with duckdb.connect(str(forecast_path), read_only=True) as db:
        overall = db.execute("SELECT * FROM forecast_error_overall").fetchone()
        assert overall is not None
        f_usd, a_usd, error, f_users, a_users = overall
        runs = db.execute("SELECT days, figures->>'cost_usd' FROM forecast_runs").fetchall()
        deciles = db.execute("SELECT * FROM forecast_error_by_decile").fetchall()
    assert a_usd == pytest.approx(per_user.sum()) and a_users == 200 and f_users == 200
    assert f_usd == pytest.approx(np.mean([float(cost) for _, cost in runs]))  # the forecast's own figure
    assert error == pytest.approx((f_usd - a_usd) / a_usd)
    top = np.array_split(np.sort(per_user), 10)[-1].mean()
    assert deciles[-1][0] == 10 and deciles[-1][2] == pytest.approx(top)


def test_errors_are_one_line(files: tuple[Path, Path, np.ndarray], tmp_path: Path) -> None:
    forecast_path, store, _ = files
    for args in (
        ("--forecast", str(forecast_path), "--store", str(store), "--month", "2026-10"),
        ("--forecast", str(tmp_path / "none.duckdb"), "--store", str(store), "--month", "2026-11"),
        ("--forecast", str(forecast_path), "--store", str(store), "--month", "2026-11", "--run", "x"),
    ):
        result = CliRunner().invoke(main, ["forecast-error", *args])
        assert result.exit_code == 2 and result.stderr.count("\n") == 1, (args, result.stderr)


def overall_error(forecast_path: Path, store: Path) -> tuple[float, ...]:
    args = ["forecast-error", "--forecast", str(forecast_path), "--store", str(store), "--month", "2026-11"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.stderr
    with duckdb.connect(str(forecast_path), read_only=True) as db:
        row = db.execute("SELECT * FROM forecast_error_overall").fetchone()
    assert row is not None
    return tuple(row)


def test_a_run_of_two_months_is_compared_month_by_month(
    files: tuple[Path, Path, np.ndarray], tmp_path: Path
) -> None:
    _, store, per_user = files
    scenario, catalog = scenario_from(TABLE, "chat")
    path = tmp_path / "two-months.duckdb"
    writer = ForecastWriter(path)
    try:
        writer.write_forecast(forecast(scenario, catalog, [200], 61, 1, on_run=writer.write_run))
    finally:
        writer.close()
    f_usd, a_usd, _, f_users, _ = overall_error(path, store)
    with duckdb.connect(str(path), read_only=True) as db:
        months = db.execute("SELECT period, factor FROM forecast_error_months ORDER BY period").fetchall()
        costs = [c for (c,) in db.execute("SELECT cost_usd FROM forecast_periods ORDER BY period").fetchall()]
    assert months == [(0, 1.0), (1, 1.0)]  # November and December, both complete, neither scaled
    # The mean of the two months (a request's month is where it starts; an event's, its timestamp).
    assert f_usd == pytest.approx(np.mean(costs), rel=1e-3)
    assert f_users <= 200 and a_usd == pytest.approx(per_user.sum())


def test_a_file_without_periods_counts_each_run_as_one_month(
    files: tuple[Path, Path, np.ndarray], tmp_path: Path
) -> None:
    forecast_path, store, _ = files
    with_periods = overall_error(forecast_path, store)
    old = tmp_path / "old.duckdb"
    old.write_bytes(forecast_path.read_bytes())
    with duckdb.connect(str(old)) as db:
        db.execute("DROP TABLE forecast_periods")
    assert overall_error(old, store) == pytest.approx(with_periods)
