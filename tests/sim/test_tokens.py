"""Billed tokens in the results: totals and per model, summed from the run's attempts, in every output."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import duckdb
from click.testing import CliRunner

from sim.cli import main
from sim.io.forecast_db import ForecastWriter
from sim.model.engine import simulate
from sim.model.forecast import forecast, summarize
from sim.model.run import RunResult
from sim.workbench.render import comparison_table, forecast_table
from tests.sim.scenarios import ALL_LEVERS, scenario_from

ROOT = Path(__file__).resolve().parents[2]
FAILURES = {"error_rate": 0.05, "timeout_rate": 0.02, "bad_completion_rate": 0.05}
CACHED = {**FAILURES, "prompt_cache": True, "prompt_cache_min_tokens": 256, "error_bills": "input"}
TABLE = {
    **ALL_LEVERS,
    "prompts": {**ALL_LEVERS["prompts"], "prefix_share": 0.6},
    "providers": {"gpt-4o": CACHED, "gpt-4o-mini": CACHED},
}
KINDS = {"input": "billed_input", "cached_input": "billed_cached", "cache_write": "billed_write"}
KINDS["output"] = "billed_output"


def attempt_log_sums(run: RunResult) -> dict[str, Counter[str]]:
    """Each model's billed tokens, added up one attempt at a time from the log's rows."""
    log, models = run.attempts, run.models
    sums: dict[str, Counter[str]] = {}
    model_column = log.column("model").tolist()
    columns = {kind: log.column(column).tolist() for kind, column in KINDS.items()}
    for row, code in enumerate(model_column):
        tokens = sums.setdefault(models[int(code)], Counter())
        for kind, values in columns.items():
            tokens[kind] += int(values[row])
    return sums


def test_token_totals_equal_a_row_by_row_sum_of_the_attempt_log() -> None:
    scenario, catalog = scenario_from(TABLE)
    run = simulate(scenario, catalog, 300, 4, seed=5)
    summary = summarize(run)
    expected = attempt_log_sums(run)
    assert set(expected) == {"gpt-4o", "gpt-4o-mini"}
    for model, tokens in expected.items():
        assert summary["tokens_by_model"][model] == {kind: tokens[kind] for kind in KINDS}, model
        assert all(tokens[kind] > 0 for kind in KINDS), model  # every kind is exercised
    assert summary["tokens"] == {kind: sum(t[kind] for t in expected.values()) for kind in KINDS}


def test_tables_show_the_token_totals_and_each_model() -> None:
    scenario, catalog = scenario_from(TABLE, "levers")
    result = forecast(scenario, catalog, [200], 3, seed=2)
    tokens = result.results[0]["tokens"]
    table = forecast_table(result)
    rows = table.splitlines()
    assert any(row.startswith("input tokens") and row.endswith(f"{tokens['input']:,}") for row in rows)
    for line in ("input tokens", "of which cached", "of which cache writes", "output tokens"):
        assert line in table
    mini = result.results[0]["tokens_by_model"]["gpt-4o-mini"]["output"]
    assert any(row.startswith("gpt-4o-mini: output tokens") and row.endswith(f"{mini:,}") for row in rows)
    plain, _ = scenario_from({}, "plain")
    compared = comparison_table([forecast(plain, catalog, [200], 3, seed=2), result])
    row = next(r for r in compared.splitlines() if r.startswith("output tokens"))
    assert row.split()[-2] == f"{tokens['output']:,}"


def test_the_forecast_database_holds_each_runs_tokens_per_model(tmp_path: Path) -> None:
    scenario, catalog = scenario_from(TABLE, "levers")
    path = tmp_path / "f.duckdb"
    writer = ForecastWriter(path)
    result = forecast(scenario, catalog, [150, 250], 3, seed=4, on_run=writer.write_run)
    writer.write_forecast(result)
    writer.write_forecast(result)  # rewriting a run replaces its rows
    writer.close()
    with duckdb.connect(str(path), read_only=True) as db:
        stored = db.execute(
            "SELECT t.run_id, t.model, t.input_tokens, t.cached_input_tokens, t.cache_write_tokens, "
            "t.output_tokens FROM forecast_tokens t ORDER BY ALL"
        ).fetchall()
        usage = db.execute(
            "SELECT run_id, model, sum(input_tokens), sum(cached_input_tokens), sum(cache_write_tokens), "
            "sum(output_tokens) FROM usage GROUP BY ALL ORDER BY ALL"
        ).fetchall()
    assert len(stored) == 4  # two runs, two models
    assert [tuple(row) for row in stored] == [tuple(row) for row in usage]


def test_simulate_json_carries_the_tokens() -> None:
    result = CliRunner().invoke(
        main,
        [
            "simulate",
            str(ROOT / "scenarios/seed-story/optimized.toml"),
            "--mau",
            "100",
            "--days",
            "2",
            "--format",
            "json",
        ],
    )
    assert result.exit_code == 0, result.stderr
    level = json.loads(result.stdout)["results"][0]
    assert set(level["tokens"]) == set(KINDS)
    assert level["tokens"]["input"] == sum(t["input"] for t in level["tokens_by_model"].values()) > 0
