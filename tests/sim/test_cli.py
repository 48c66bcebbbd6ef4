"""`margins simulate` and `margins compare` as a user runs them: real processes, real DuckDB files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

ROOT = Path(__file__).resolve().parents[2]
NAIVE = str(ROOT / "scenarios/seed-story/naive-mvp.toml")
OPTIMIZED = str(ROOT / "scenarios/seed-story/optimized.toml")
SHIPPED = sorted((ROOT / "scenarios").rglob("*.toml"))


def margins(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sim.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_simulate_json_has_the_documented_figures() -> None:
    result = margins(
        "simulate", OPTIMIZED, "--mau", "300,600", "--days", "3", "--replications", "2", "--format", "json"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["scenario"] == "optimized" and report["seed"] == 1
    assert [r["mau"] for r in report["results"]] == [300, 600]
    level = report["results"][0]
    for key in (
        "requests",
        "sessions",
        "cost_usd",
        "cost_per_session_usd",
        "quality",
        "calls_by_model",
        "retries",
        "rate_limited",
        "queued",
        "fallbacks",
        "stream_aborts",
    ):
        assert key in level, key
    assert set(level["cost_per_user_month_usd"]) == {"mean", "p50", "p90", "p99"}
    assert set(level["hit_rate"]) == {"exact", "semantic", "fragment"}
    assert set(level["ttft_ms"]) == {"p50", "p95"}
    assert "cost_usd" in level["ci95"]  # two replications give an interval


def test_compare_runs_both_on_the_same_traffic_and_reports_the_change(tmp_path: Path) -> None:
    out = tmp_path / "seed.duckdb"
    result = margins("compare", NAIVE, OPTIMIZED, "--mau", "500", "--days", "7", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "naive-mvp -> optimized at 500 MAU: cost per session" in result.stdout
    with duckdb.connect(str(out), read_only=True) as db:
        requests = db.execute(
            "SELECT scenario, CAST(figures->>'requests' AS DOUBLE), CAST(figures->>'cost_usd' AS DOUBLE) "
            "FROM forecast_runs ORDER BY scenario"
        ).fetchall()
        spent = dict(db.execute("SELECT source, sum(cost_nanos) FROM usage GROUP BY source").fetchall())
    assert requests[0][1] == requests[1][1]  # same traffic
    for scenario, _, cost_usd in requests:
        # The stored events add up to the forecast (7 days extrapolated to 30).
        assert spent[f"sim:{scenario}"] / 1e9 * 30 / 7 == pytest.approx(cost_usd, rel=1e-9)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_scenario_runs(path: Path) -> None:
    result = margins("simulate", str(path), "--mau", "200", "--days", "14", "--format", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["results"][0]["requests"] > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["simulate", "missing.toml"], "missing.toml: (file): no such file"),
        (["simulate", NAIVE, "--mau", "ten"], "expected whole numbers"),
        (["compare", NAIVE], "at least two"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(args: list[str], message: str) -> None:
    result = margins(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_scenario_file_exits_2_naming_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "typo.toml"
    path.write_text("[cache.exact]\nenabld = true\n")
    result = margins("simulate", str(path))
    assert result.returncode == 2
    assert result.stderr.strip().startswith(f"margins: {path}: cache.exact.enabld: unknown key")
    assert "Traceback" not in result.stderr
