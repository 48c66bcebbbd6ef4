"""`margins backtest`: on a trace with a known trend the fit recovers the trend and its interval covers
what came after the cut-off; bad input is one line and exit 2."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from budget.store.event_store import EventStore
from sim.calibration.trend import bin_totals, fit_trend
from sim.cli import main
from sim.model.engine import simulate
from tests.sim.scenarios import scenario_from
from tests.sim.usage import usage_events

GROWTH_PER_WEEK = 0.10
START = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def growing_trace(path: Path, days: int = 28, per_day: float = 200.0, seed: int = 3) -> Path:
    """An Azure-format trace whose daily requests grow 10% a week (Poisson days, uniform within a day)."""
    rng = np.random.default_rng(seed)
    rate = per_day * (1 + GROWTH_PER_WEEK) ** (np.arange(days) / 7)
    day = np.repeat(np.arange(days), rng.poisson(rate))
    seconds = np.sort(day * 86400.0 + rng.random(day.size) * 86400.0)
    inputs = np.maximum(1, rng.lognormal(np.log(800) - 0.18, 0.6, seconds.size)).astype(int)
    outputs = np.maximum(1, rng.lognormal(np.log(200) - 0.125, 0.5, seconds.size)).astype(int)
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for at, i, o in zip(seconds, inputs, outputs, strict=True):
        stamp = START + dt.timedelta(seconds=float(at))
        lines.append(f"{stamp:%Y-%m-%d %H:%M:%S}.{stamp.microsecond:06d}0,{i},{o}")
    path.write_text("\n".join(lines) + "\n")
    return path


def backtest_cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["backtest", *args])
    return result.exit_code, result.stdout, result.stderr


def test_the_trend_of_exact_exponential_counts_is_recovered() -> None:
    counts = np.round(1000 * 1.02 ** np.arange(30))
    trend = fit_trend(counts, 86400.0)
    assert trend.growth_per_week == pytest.approx(1.02**7 - 1, abs=1e-3)
    assert trend.project(2 * 86400.0) == pytest.approx(1000 * (1.02**30 + 1.02**31), rel=0.01)


def test_bins_end_at_the_cut_off() -> None:
    t = np.array([0.5, 1.5, 1.7, 2.2, 9.0])
    assert bin_totals(t, None, until=3.0, bin_s=1.0, bins=3).tolist() == [1.0, 2.0, 1.0]


def test_a_known_trend_is_recovered_and_its_interval_covers_the_next_week(tmp_path: Path) -> None:
    trace = growing_trace(tmp_path / "growing.csv")
    code, out, err = backtest_cli("--trace", str(trace), "--train-until", "21d", "--format", "json")
    assert code == 0, err
    result: dict[str, Any] = json.loads(out)
    trend = result["trend"]
    assert trend["bin_s"] == 86400.0 and trend["bins"] == 21
    assert abs(trend["growth_per_week"] - GROWTH_PER_WEEK) < 2 * trend["growth_per_week_se"] + 0.01
    figures = {figure["name"]: figure for figure in result["figures"]}
    for name in ("requests", "cost (USD)", "input tokens", "output tokens"):
        figure = figures[name]
        assert figure["inside"], figure
        # the last week before the cut-off is 10% short of the next one: the trend should do better
        assert abs(figure["error"]) < abs(figure["naive_error"]), figure
    assert result["horizon_s"] == pytest.approx(7 * 86400.0, abs=86400.0)


def test_the_table_names_the_trend_and_every_figure(tmp_path: Path) -> None:
    trace = growing_trace(tmp_path / "growing.csv", days=10, per_day=50.0)
    code, out, err = backtest_cli("--trace", str(trace), "--train-until", "8d", "--horizon", "1d")
    assert code == 0, err
    assert "a week" in out and "90% interval" in out
    for name in ("requests", "cost (USD)", "input tokens", "output tokens"):
        assert any(line.startswith(name) for line in out.splitlines()), name


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    trace = str(growing_trace(tmp_path / "growing.csv", days=10, per_day=50.0))
    failed_first = tmp_path / "failed-first.jsonl"
    events = [
        {
            "event_id": f"e{i}",
            "user_id": "u1",
            "ts": (START + dt.timedelta(hours=i)).isoformat(),
            "model": "gpt-4o-mini",
            "input_tokens": 10,
            "output_tokens": 0,
            "cost_nanos": 0,
            "outcome": "error" if i < 24 else "ok",
        }
        for i in range(72)
    ]
    failed_first.write_text("\n".join(json.dumps(e) for e in events) + "\n")
    cases = {
        "after the end": ("--trace", trace, "--train-until", "40d"),
        "horizon past the end": ("--trace", trace, "--train-until", "8d", "--horizon", "5d"),
        "nothing before it": ("--trace", str(failed_first), "--train-until", "2026-11-02T00:00"),
        "too little before it": ("--trace", trace, "--train-until", "1s"),
        "a date on a trace": ("--trace", trace, "--train-until", "2026-11-05"),
        "not a time": ("--trace", trace, "--train-until", "soon"),
        "not a duration": ("--trace", trace, "--train-until", "8d", "--horizon", "-1d"),
        "an unknown model": ("--trace", trace, "--train-until", "8d", "--model", "gpt-9"),
        "no source": ("--train-until", "8d"),
        "missing file": ("--trace", str(tmp_path / "none.csv"), "--train-until", "8d"),
    }
    for case, args in cases.items():
        code, _, err = backtest_cli(*args)
        assert code == 2 and err.count("\n") == 1 and err.startswith("margins: "), (case, err)


def test_a_store_is_back_tested_by_date_with_user_deciles(tmp_path: Path) -> None:
    scenario, catalog = scenario_from({"router": {"model": "gpt-4o-mini"}, "traffic": {"days": 30}})
    events = usage_events(simulate(scenario, catalog, 60, 30, seed=4))
    with EventStore.open(tmp_path / "store", flush_interval=None, offload=False) as store:
        store.append(events)
        store.flush()
    args = ("--store", str(tmp_path / "store"), "--train-until", "2026-11-21", "--horizon", "7d")
    code, out, err = backtest_cli(*args, "--format", "json")
    assert code == 0, err
    figures = {figure["name"]: figure for figure in json.loads(out)["figures"]}
    cut = START + dt.timedelta(days=20)
    actual = sum(e.cost_nanos for e in events if cut <= e.ts <= cut + dt.timedelta(days=7)) / 1e9
    assert figures["cost (USD)"]["actual"] == pytest.approx(actual)
    deciles = [figures[f"decile {d} of users (USD)"] for d in range(1, 11)]
    assert sum(d["actual"] for d in deciles) == pytest.approx(actual)
    assert deciles[-1]["forecast"] > deciles[0]["forecast"]
    code, _, err = backtest_cli("--store", str(tmp_path / "store"), "--train-until", "20d")
    assert code == 2 and "with --store" in err
