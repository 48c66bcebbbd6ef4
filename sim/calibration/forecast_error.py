"""Forecast error: a forecast's spend (a `simulate --out` DuckDB file) against a month of actual spend (the
enforcer's store), overall, per model and per user decile.

The comparison is written into the forecast file as tables and views, so it stays queryable:
- `forecast_error_runs`: the forecast runs compared (their replications are averaged);
- `actual_spend`: the store's spend in the month per (user, model), from its flushed usage segments;
- views `forecast_error_overall`, `forecast_error_by_model`, `forecast_error_by_decile`.
Forecast users are simulated, so users are compared by decile of monthly spend (decile 10 spends most):
the mean spend per user in each decile, forecast against actual. Error = (forecast - actual) / actual.

A forecast month is one complete month of a run (the file's `forecast_periods`): a run of several months
gives several, and they are averaged like replications (`forecast_error_months` lists them). A run with
no complete month has its partial month extrapolated to the whole month -- each user's spend times
month_days / days, which overstates the spread of the deciles (simulate a whole month to compare them).
A usage event counts in the month its timestamp falls in; the last month also takes the events of
sessions that ran past the run's end. A file written before runs had periods counts each run as one
30-day month, scaled by 30 / days, as it was then.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from budget.domain.prices import NANOS_PER_USD
from sim.errors import ForecastErrorError
from sim.io.forecast_db import PERIOD_COLUMNS


@dataclass(frozen=True, slots=True)
class ErrorReport:
    """The three comparisons as rows of plain values (the views' contents)."""

    runs: list[str]
    overall: list[tuple[Any, ...]]
    by_model: list[tuple[Any, ...]]
    by_decile: list[tuple[Any, ...]]


PERIOD_TABLE = ", ".join(f"{name} {kind}" for name, kind in PERIOD_COLUMNS.items())
_VIEWS = {
    "forecast_error_months": """
        WITH listed AS (
                 SELECT run_id, period, epoch_us(CAST(start AS TIMESTAMP)) AS start_us, days, month_days,
                        complete
                 FROM forecast_periods
                 UNION ALL
                 SELECT run_id, 0, NULL, days, 30, days >= 30 FROM forecast_runs
                 WHERE run_id NOT IN (SELECT run_id FROM forecast_periods)),
             runs AS (SELECT run_id, count(*) FILTER (WHERE complete) AS complete_months,
                             max(period) AS last_period
                      FROM listed GROUP BY run_id)
        SELECT l.run_id, l.period, l.start_us,
               CASE WHEN l.period = r.last_period THEN NULL
                    ELSE l.start_us + CAST(l.days AS BIGINT) * 86400000000 END AS end_us,
               CASE WHEN r.complete_months > 0 THEN 1.0 ELSE l.month_days / l.days END AS factor
        FROM listed l JOIN runs r USING (run_id)
        WHERE l.run_id IN (SELECT run_id FROM forecast_error_runs)
          AND (l.complete OR r.complete_months = 0)""",
    "forecast_spend": f"""
        SELECT u.run_id, m.period, u.user_id, u.model,
               sum(u.cost_nanos) * m.factor / (SELECT count(*) FROM forecast_error_months)
                   / {NANOS_PER_USD} AS usd
        FROM usage u JOIN forecast_error_months m
          ON u.run_id = m.run_id
         AND (m.start_us IS NULL OR epoch_us(u.ts) >= m.start_us)
         AND (m.end_us IS NULL OR epoch_us(u.ts) < m.end_us)
        GROUP BY u.run_id, m.period, u.user_id, u.model, m.factor""",
    "forecast_error_overall": """
        WITH f AS (SELECT sum(usd) AS usd,
                          count(DISTINCT (run_id, period, user_id))
                              / (SELECT count(*) FROM forecast_error_months) AS users
                   FROM forecast_spend),
             a AS (SELECT sum(usd) AS usd, count(DISTINCT user_id) AS users FROM actual_spend)
        SELECT f.usd AS forecast_usd, a.usd AS actual_usd, (f.usd - a.usd) / a.usd AS error,
               f.users AS forecast_users, a.users AS actual_users
        FROM f, a""",
    "forecast_error_by_model": """
        WITH f AS (SELECT model, sum(usd) AS usd FROM forecast_spend GROUP BY model),
             a AS (SELECT model, sum(usd) AS usd FROM actual_spend GROUP BY model)
        SELECT coalesce(f.model, a.model) AS model, coalesce(f.usd, 0) AS forecast_usd,
               coalesce(a.usd, 0) AS actual_usd,
               CASE WHEN a.usd > 0 THEN (coalesce(f.usd, 0) - a.usd) / a.usd END AS error
        FROM f FULL OUTER JOIN a ON f.model = a.model ORDER BY model""",
    "forecast_error_by_decile": """
        WITH fu AS (SELECT run_id, period, user_id,
                           sum(usd) * (SELECT count(*) FROM forecast_error_months) AS usd
                    FROM forecast_spend GROUP BY run_id, period, user_id),
             au AS (SELECT user_id, sum(usd) AS usd FROM actual_spend GROUP BY user_id),
             f AS (SELECT ntile(10) OVER (ORDER BY usd) AS decile, usd FROM fu),
             a AS (SELECT ntile(10) OVER (ORDER BY usd) AS decile, usd FROM au),
             fd AS (SELECT decile, avg(usd) AS usd FROM f GROUP BY decile),
             ad AS (SELECT decile, avg(usd) AS usd FROM a GROUP BY decile)
        SELECT coalesce(fd.decile, ad.decile) AS decile, fd.usd AS forecast_usd_per_user,
               ad.usd AS actual_usd_per_user,
               CASE WHEN ad.usd > 0 THEN (fd.usd - ad.usd) / ad.usd END AS error
        FROM fd FULL OUTER JOIN ad ON fd.decile = ad.decile ORDER BY decile""",
}


def compare(
    forecast_path: str | Path, store_path: str | Path, month: str, run: str | None = None
) -> ErrorReport:
    """Compare the forecast file's runs (or the one named) with the store's `month`; writes the tables and
    views into the forecast file and returns their rows."""
    from budget.errors import BudgetError
    from budget.store.queries import SpendReader

    where = str(forecast_path)
    if not Path(forecast_path).is_file():
        raise ForecastErrorError(where, "no such forecast file (write one with `margins simulate --out`)")
    try:
        reader = SpendReader(store_path, month)
        actual = reader.sql(
            "SELECT user_id, model, sum(cost_nanos) FROM usage WHERE month = ? GROUP BY user_id, model",
            [month],
            views=("usage",),
        ).rows
    except (BudgetError, OSError) as error:
        raise ForecastErrorError(str(store_path), f"cannot read the store: {error}") from None
    if not actual:
        raise ForecastErrorError(str(store_path), f"no usage in month {month}")
    try:
        with duckdb.connect(where) as db:
            runs = _runs(db, where, run)
            db.execute("CREATE OR REPLACE TABLE forecast_error_runs (run_id VARCHAR)")
            # A file written before runs had periods has no such table: its runs count as one month each.
            db.execute(f"CREATE TABLE IF NOT EXISTS forecast_periods ({PERIOD_TABLE})")
            db.executemany("INSERT INTO forecast_error_runs VALUES (?)", [[r] for r in runs])
            db.execute(
                "CREATE OR REPLACE TABLE actual_spend "
                "(month VARCHAR, user_id VARCHAR, model VARCHAR, usd DOUBLE)"
            )
            db.executemany(
                "INSERT INTO actual_spend VALUES (?, ?, ?, ?)",
                [[month, user, model, nanos / NANOS_PER_USD] for user, model, nanos in actual],
            )
            for name, sql in _VIEWS.items():
                db.execute(f"CREATE OR REPLACE VIEW {name} AS {sql}")
            return ErrorReport(
                runs=runs,
                overall=db.execute("SELECT * FROM forecast_error_overall").fetchall(),
                by_model=db.execute("SELECT * FROM forecast_error_by_model").fetchall(),
                by_decile=db.execute("SELECT * FROM forecast_error_by_decile").fetchall(),
            )
    except duckdb.Error as error:
        raise ForecastErrorError(where, f"not a forecast file: {str(error).splitlines()[0]}") from None


def _runs(db: duckdb.DuckDBPyConnection, where: str, run: str | None) -> list[str]:
    """The named run, or every run when they share one scenario and MAU level (replications)."""
    rows = db.execute("SELECT run_id, scenario, mau FROM forecast_runs ORDER BY run_id").fetchall()
    if run is not None:
        if run not in {r[0] for r in rows}:
            raise ForecastErrorError(where, f"no run {run!r}; runs: {', '.join(r[0] for r in rows)}")
        return [run]
    if not rows:
        raise ForecastErrorError(where, "no forecast runs in the file")
    if len({(r[1], r[2]) for r in rows}) > 1:
        raise ForecastErrorError(
            where, f"several scenarios or MAU levels; pick one with --run: {', '.join(r[0] for r in rows)}"
        )
    return [r[0] for r in rows]


def render(report: ErrorReport, month: str) -> str:
    """The comparison as a text table."""

    def usd(value: float | None) -> str:
        return "-" if value is None else f"${value:,.2f}" if abs(value) >= 1 else f"${value:.4f}"

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:+.1f}%"

    lines = [f"forecast ({', '.join(report.runs)}) vs actual spend in {month}", ""]
    lines.append(f"{'':<22}{'forecast':>14}{'actual':>14}{'error':>10}")
    for f_usd, a_usd, error, f_users, a_users in report.overall:
        lines.append(f"{'total':<22}{usd(f_usd):>14}{usd(a_usd):>14}{pct(error):>10}")
        lines.append(f"{'users':<22}{f_users:>14,.0f}{a_users:>14,}")
    for model, f_usd, a_usd, error in report.by_model:
        lines.append(f"{'model ' + str(model):<22}{usd(f_usd):>14}{usd(a_usd):>14}{pct(error):>10}")
    for decile, f_usd, a_usd, error in report.by_decile:
        lines.append(f"{f'decile {decile} (per user)':<22}{usd(f_usd):>14}{usd(a_usd):>14}{pct(error):>10}")
    return "\n".join(lines)
