"""Runs of 1 to 366 days: months as periods, per-user figures per month, explicit extrapolation."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from budget.domain.prices import NANOS_PER_USD
from sim.cli.common import DAYS
from sim.io.forecast_db import usage_frame
from sim.model import engine, periods
from sim.model.codes import CapDecision
from sim.model.forecast import Months, forecast, summarize
from sim.model.run import RunResult
from sim.workbench.render import forecast_table
from tests.sim.scenarios import ALL_LEVERS, scenario_from

ROOT = Path(__file__).resolve().parents[2]
SEED_STORY = [
    str(ROOT / "scenarios/seed-story/naive-mvp.toml"),
    str(ROOT / "scenarios/seed-story/optimized.toml"),
]
CAPPED = str(ROOT / "scenarios/caps/optimized-cap-degrade.toml")
# `margins compare` of the three at 200 MAU, 30 days, as written before runs were cut into months
# (prices' provenance removed: it names the day it ran).
GOLDEN = ROOT / "tests/data/seed_story_30_days_200_mau.json"
DAY_S = 86400.0
NOVEMBER_S = 30 * DAY_S  # the shipped scenarios start on 2026-11-01


def margins(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sim.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_a_run_is_cut_into_the_calendar_months_it_covers() -> None:
    year = periods.periods_of(dt.date(2026, 11, 1), 366)
    assert [p.month_days for p in year[:4]] == [30, 31, 31, 28]
    assert [p.complete for p in year] == [True] * 12 + [False]
    assert (year[-1].start, year[-1].days) == (dt.date(2027, 11, 1), 1)
    [one] = periods.periods_of(dt.date(2026, 11, 1), 30)
    assert one.complete and one.label() == "2026-11"
    [short] = periods.periods_of(dt.date(2026, 11, 1), 7)
    assert not short.complete and short.label() == "2026-11 (partial: 7 of 30 days)"
    assert periods.add_months(dt.date(2026, 1, 31), 1) == dt.date(2026, 2, 28)


@given(
    start=st.dates(dt.date(2020, 1, 1), dt.date(2035, 12, 31)),
    days=st.integers(periods.MIN_DAYS, periods.MAX_DAYS),
)
def test_periods_follow_each_other_and_cover_the_run_exactly(start: dt.date, days: int) -> None:
    found = periods.periods_of(start, days)
    assert sum(p.days for p in found) == days
    assert all(p.complete for p in found[:-1])
    for before, after in itertools.pairwise(found):
        assert after.first_day == before.first_day + before.days
        assert after.start == before.start + dt.timedelta(days=before.month_days)
    assert found[0].start == start


def test_the_cli_takes_the_days_periods_allow() -> None:
    assert (DAYS.min, DAYS.max) == (periods.MIN_DAYS, periods.MAX_DAYS)


def without_new_keys(value: Any) -> Any:
    """The figures a 30-day run reported before months were periods: the keys added since removed."""
    added = {"cost_usd_run", "per_user_month", "periods", "spend_saved_usd_run", "prices"}
    if isinstance(value, dict):
        return {k: without_new_keys(v) for k, v in value.items() if k not in added}
    if isinstance(value, list):
        return [without_new_keys(v) for v in value]
    return value


def test_the_default_thirty_day_month_reports_what_it_did_before() -> None:
    result = margins("compare", *SEED_STORY, CAPPED, "--mau", "200", "--format", "json")
    assert result.returncode == 0, result.stderr
    now = json.loads(result.stdout)
    assert without_new_keys(now) == json.loads(GOLDEN.read_text())
    first = now["scenarios"][0]["results"][0]
    assert first["per_user_month"] == "1 complete month" and "extrapolation" not in first
    assert first["cost_usd_run"] == first["cost_usd"]


def run_of(table: dict[str, Any], mau: int, days: int, seed: int = 1) -> RunResult:
    scenario, catalog = scenario_from(table)
    return engine.simulate(scenario, catalog, mau, days, seed)


def user_figures_from_log(run: RunResult) -> dict[str, float]:
    """Mean and percentiles of users' spend, from the run's usage rows (what --out stores)."""
    log = usage_frame(run, "r")
    spend = np.zeros(run.traffic.mau, dtype=np.int64)
    np.add.at(spend, log["user"].to_numpy(), log["cost_nanos"].to_numpy())
    usd = spend / NANOS_PER_USD
    return {"mean": usd.mean(), **{f"p{q}": np.percentile(usd, q) for q in (50, 90, 99)}}


@pytest.mark.parametrize("days", [1, 7])
def test_a_short_run_reports_its_partial_month_as_it_is(days: int) -> None:
    run = run_of(ALL_LEVERS, 400, days)
    summary = summarize(run)
    expected = user_figures_from_log(run)
    reported = summary["cost_per_user_month_usd"]
    assert reported == pytest.approx(expected, rel=1e-12)
    scaled = {key: value * 30 / days for key, value in expected.items()}
    assert all(reported[key] < scaled[key] for key in ("mean", "p90", "p99"))
    assert summary["per_user_month"] == f"partial: {days} of 30 days"
    [period] = summary["periods"]
    assert (period["days"], period["month_days"], period["complete"]) == (days, 30, False)
    assert period["cost_per_user_usd"] == reported
    # The month's total is extrapolated, and says so.
    run_usd = int(run.cost_nanos.sum()) / NANOS_PER_USD
    assert summary["cost_usd_run"] == pytest.approx(run_usd)
    assert summary["extrapolation"]["factor"] == pytest.approx(30 / days)
    assert summary["extrapolation"]["basis"] == f"{days} of 30 days of the month from 2026-11-01"
    assert summary["cost_usd"] == summary["cost_usd_month_extrapolated"] == pytest.approx(run_usd * 30 / days)


def test_a_short_run_table_says_what_is_extrapolated() -> None:
    result = margins("simulate", SEED_STORY[1], "--mau", "100", "--days", "7")
    assert result.returncode == 0, result.stderr
    assert "monthly cost (extrapolated from 7 days)" in result.stdout
    assert "cost / user-month p90 (partial: 7 of 30 days)" in result.stdout


CAPPED_TABLE: dict[str, Any] = {
    "traffic": {"sessions_per_user_month": 12, "dispersion": 0.5},
    "prompts": {"chains": {"share": 0.3, "steps": 3, "deterministic_steps": 2}},
    "cap": {"monthly_usd": 0.4, "action": "block"},
}


def test_sixty_days_are_two_months_each_with_its_own_figures_and_cap() -> None:
    run = run_of(CAPPED_TABLE, 150, 60)
    summary = summarize(run)
    november, december = summary["periods"]
    assert (november["start"], november["days"], november["complete"]) == ("2026-11-01", 30, True)
    assert (december["start"], december["days"], december["month_days"]) == ("2026-12-01", 30, 31)
    # Each month's percentiles come from that month's requests alone (a request counts where it starts).
    in_november = run.traffic.t < NOVEMBER_S
    for period, month in ((november, in_november), (december, ~in_november)):
        spend = np.zeros(run.traffic.mau, dtype=np.int64)
        np.add.at(spend, run.traffic.user[month], run.cost_nanos[month])
        assert period["cost_per_user_usd"]["p90"] == pytest.approx(np.percentile(spend / NANOS_PER_USD, 90))
        assert period["cost_usd"] == pytest.approx(spend.sum() / NANOS_PER_USD)
        # The cap holds within each month.
        assert spend.max() <= 0.4 * NANOS_PER_USD
    assert november["cost_per_user_usd"] != december["cost_per_user_usd"]
    # The headline is November's, the one complete month; nothing was extrapolated.
    assert summary["cost_per_user_month_usd"] == november["cost_per_user_usd"]
    assert summary["per_user_month"] == "1 complete month" and "extrapolation" not in summary
    # The cap resets at the month's start: someone stopped in November spends again in December.
    assert run.cap is not None
    denied = run.cap.decision == CapDecision.DENIED
    stopped = set(run.traffic.user[denied & in_november].tolist())
    paid_in_december = set(run.traffic.user[~in_november & ~denied & (run.cost_nanos > 0)].tolist())
    assert stopped & paid_in_december
    total = np.zeros(run.traffic.mau, dtype=np.int64)
    np.add.at(total, run.traffic.user, run.cost_nanos)
    assert total.max() > 0.4 * NANOS_PER_USD  # over the two months, more than one cap's worth


def test_a_year_runs_at_small_mau_and_reports_twelve_months_and_a_day() -> None:
    began = time.perf_counter()
    run = run_of(ALL_LEVERS, 60, 366)
    summary = summarize(run)
    assert time.perf_counter() - began < 120
    listed = summary["periods"]
    assert len(listed) == 13 and [p["complete"] for p in listed] == [True] * 12 + [False]
    assert listed[-1]["start"] == "2027-11-01" and listed[-1]["days"] == 1
    assert summary["per_user_month"] == "mean of 12 complete months"
    p90s = [p["cost_per_user_usd"]["p90"] for p in listed[:12]]
    assert summary["cost_per_user_month_usd"]["p90"] == pytest.approx(np.mean(p90s))
    costs = [p["cost_usd"] for p in listed[:12]]
    assert summary["cost_usd"] == pytest.approx(np.mean(costs))
    # Each month has its own traffic: every complete month has requests.
    assert all(p["requests"] > 0 for p in listed[:12])


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(days=st.integers(1, 75), seed=st.integers(0, 10_000), capped=st.booleans())
def test_money_is_neither_lost_nor_created_by_the_periods(days: int, seed: int, capped: bool) -> None:
    table = CAPPED_TABLE if capped else {k: v for k, v in CAPPED_TABLE.items() if k != "cap"}
    run = run_of(table, 40, days, seed)
    months = Months.of(run)
    total = int(run.cost_nanos.sum())
    assert sum(months.totals(run.cost_nanos)) == total
    assert int(months.user_spend.sum()) == total
    summary = summarize(run)
    assert sum(p["days"] for p in summary["periods"]) == days
    assert sum(p["requests"] for p in summary["periods"]) == run.traffic.requests


@pytest.mark.parametrize("days", ["0", "367"])
def test_days_out_of_range_is_one_line_naming_the_flag(days: str) -> None:
    result = margins("simulate", SEED_STORY[0], "--mau", "10", "--days", days)
    assert result.returncode == 2
    assert "--days" in result.stderr and "1<=x<=366" in result.stderr
    assert "Traceback" not in result.stderr


def test_days_out_of_range_in_a_scenario_file_names_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "long.toml"
    path.write_text("[traffic]\ndays = 400\n")
    result = margins("simulate", str(path), "--mau", "10")
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"margins: {path}: traffic.days:") and "366" in line


def test_a_table_lists_each_month_of_a_longer_run() -> None:
    scenario, catalog = scenario_from(ALL_LEVERS)
    table = forecast_table(forecast(scenario, catalog, [50], 45, 1))
    assert "2026-11: cost / user p90" in table
    assert "2026-12, 15 of 31 days: cost / user p90" in table
    assert "extrapolated" not in table
