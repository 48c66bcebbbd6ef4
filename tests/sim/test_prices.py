"""Prices in the forecast: tiers by prompt size per call, one day's prices, and saying which prices.

`margins prices` as a user runs it: real processes.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import numpy as np
import pytest

from budget.domain.catalog import default_catalog
from budget.domain.price_overrides import with_overrides
from sim.errors import ScenarioError
from sim.model.engine import simulate
from sim.model.reference import simulate_reference
from tests.sim.scenarios import ALL_LEVERS, scenario_from

ROOT = Path(__file__).resolve().parents[2]
NAIVE = str(ROOT / "scenarios/seed-story/naive-mvp.toml")
FAILURES = {"error_rate": 0.05, "timeout_rate": 0.02, "bad_completion_rate": 0.05}
# Dearer on every token of a call whose prompt passes 1,500 tokens: most calls of a test run fall on
# either side.
TIERED = {
    "input": "2.50",
    "cached_input": "1.25",
    "output": "10.00",
    "tiers": [
        {"above": 1500, "input": "5.00", "cached_input": "2.50", "cache_write": "5.00", "output": "15.00"}
    ],
}


def margins(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sim.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_each_call_pays_the_tier_of_its_own_prompt() -> None:
    table = {
        "prompts": {"input_tokens": {"mean": 1500, "sigma": 0.4}, "chains": {"share": 0.0}},
        "providers": {"gpt-4o": {"error_rate": 0, "timeout_rate": 0, "bad_completion_rate": 0}},
        "prices": {"gpt-4o": TIERED},
    }
    scenario, catalog = scenario_from(table)
    run = simulate(scenario, catalog, 200, 3, seed=4)
    traffic = run.traffic
    assert np.array_equal(traffic.call_request, np.arange(traffic.requests))  # one call per request
    tokens_in, tokens_out = traffic.input_tokens, traffic.output_tokens
    long_prompt = tokens_in > 1500
    assert 0.2 < long_prompt.mean() < 0.8, "both tiers must occur for this test to mean anything"
    expected = np.where(
        long_prompt, tokens_in * 5_000 + tokens_out * 15_000, tokens_in * 2_500 + tokens_out * 10_000
    )
    assert np.array_equal(run.cost_nanos, expected)


@pytest.mark.parametrize("prompt_cache", [False, True])
def test_fast_path_equals_reference_with_a_tiered_model(prompt_cache: bool) -> None:
    provider = {**FAILURES, "prompt_cache": prompt_cache, "prompt_cache_min_tokens": 256}
    table = {
        **ALL_LEVERS,
        "prompts": {
            **ALL_LEVERS["prompts"],
            "prefix_share": 0.6,
            "input_tokens": {"mean": 1500, "sigma": 0.5},
        },
        "providers": {"gpt-4o": provider, "gpt-4o-mini": provider},
        "prices": {"gpt-4o": TIERED},
    }
    scenario, catalog = scenario_from(table)
    fast = simulate(scenario, catalog, 300, 5, seed=3)
    reference = simulate_reference(scenario, catalog, 300, 5, seed=3)
    assert np.array_equal(fast.cost_nanos, reference.cost_nanos)
    flat, flat_catalog = scenario_from({**table, "prices": {"gpt-4o": {**TIERED, "tiers": []}}})
    assert fast.cost_nanos.sum() > simulate(flat, flat_catalog, 300, 5, seed=3).cost_nanos.sum()


def test_a_capped_forecast_refuses_a_tiered_model_rather_than_mispricing_it() -> None:
    with pytest.raises(
        ScenarioError, match=r"cap: model 'gpt-4o' is priced by prompt size \(dearer above 1,500"
    ):
        scenario_from({"cap": {"monthly_usd": 1.0}, "prices": {"gpt-4o": TIERED}})


def test_a_forecast_prices_its_month_at_one_days_prices() -> None:
    """The catalog a scenario runs against has no history: the ledger of a capped forecast charges what
    the forecast charges, whatever day its events carry."""
    _, catalog = scenario_from({"router": {"model": "o3"}})
    assert catalog.history == {}
    assert catalog.cost_nanos("o3", 1000, 0, at=datetime(2025, 1, 1, tzinfo=UTC)) == 1000 * 2_000


def test_simulate_json_and_the_forecast_file_say_which_prices(tmp_path: Path) -> None:
    out = tmp_path / "run.duckdb"
    result = margins("simulate", NAIVE, "--mau", "100", "--days", "1", "--format", "json", "--out", str(out))
    assert result.returncode == 0, result.stderr
    prices = json.loads(result.stdout)["prices"]
    assert prices == default_catalog().provenance()
    assert prices["catalog"].startswith("genai-prices ") and prices["as_of"] == "2026-11-10"
    with duckdb.connect(str(out), read_only=True) as db:
        row = db.execute(
            "SELECT price_catalog, CAST(prices_as_of AS VARCHAR), CAST(priced_on AS VARCHAR), "
            "prices_overridden FROM forecast_runs"
        ).fetchone()
    assert row == (prices["catalog"], prices["as_of"], prices["priced_on"], [])


def test_a_forecast_file_written_before_prices_were_recorded_takes_new_runs(tmp_path: Path) -> None:
    out = tmp_path / "old.duckdb"
    with duckdb.connect(str(out)) as db:
        db.execute(
            "CREATE TABLE forecast_runs (run_id VARCHAR, scenario VARCHAR, seed BIGINT, mau BIGINT, "
            "replication BIGINT, days BIGINT, written_at TIMESTAMPTZ, figures JSON)"
        )
    result = margins("simulate", NAIVE, "--mau", "100", "--days", "1", "--out", str(out))
    assert result.returncode == 0, result.stderr
    with duckdb.connect(str(out), read_only=True) as db:
        assert db.execute(
            "SELECT count(*) FROM forecast_runs WHERE price_catalog LIKE 'genai-prices %'"
        ).fetchone() == (1,)


def test_the_report_page_says_which_prices(tmp_path: Path) -> None:
    from sim.workbench.report import prices_line

    line = prices_line(with_overrides(default_catalog(), {"gpt-4o": {"input": "2"}}, "prices").provenance())
    assert re.fullmatch(
        r"Prices: genai-prices [\d.]+, data published 2026-11-10, as in force on \d{4}-\d\d-\d\d; the "
        r"scenario's \[prices\] set gpt-4o\.",
        line,
    )


# -- margins prices ---------------------------------------------------------------------------------


def test_prices_shows_what_each_model_is_charged_by_tier() -> None:
    result = margins("prices", "gpt-4o-mini", "claude-sonnet-4.5", "gpt-4o-2024-08-06")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert re.fullmatch(
        r"Prices in USD per 1M tokens from genai-prices [\d.]+ \(data published 2026-11-10\), in force on "
        r"\d{4}-\d\d-\d\d\.",
        lines[0],
    )
    rows = [line.split() for line in lines[2:]]
    assert rows[0] == ["gpt-4o-mini", "any", "0.15", "0.075", "0.15", "0.60"]
    assert rows[1] == [
        "claude-sonnet-4.5",
        "claude-sonnet-4-5",
        "<=",
        "200,000",
        "3.00",
        "0.30",
        "3.75",
        "15.00",
    ]
    assert rows[2] == [">", "200,000", "6.00", "0.60", "7.50", "22.50"]
    assert rows[3] == ["gpt-4o-2024-08-06", "gpt-4o", "any", "2.50", "1.25", "2.50", "10.00"]


def test_prices_json_carries_tiers_and_history() -> None:
    result = margins("prices", "o3", "--format", "json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["unit"] == "USD per 1M tokens" and report["as_of"] == "2026-11-10"
    [o3] = report["models"]
    assert o3["tiers"] == [
        {"above": 0, "input": "2.00", "cached_input": "0.50", "cache_write": "2.00", "output": "8.00"}
    ]
    assert [(change["since"], change["tiers"][0]["input"]) for change in o3["history"]] == [
        (None, "10.00"),
        ("2025-06-10", "2.00"),
    ]


def test_prices_applies_a_configs_and_a_scenarios_overrides(tmp_path: Path) -> None:
    config = tmp_path / "caps.toml"
    config.write_text(
        '[prices.gpt-4o]\ninput = "2.00"\n\n[prices.my-finetune]\ninput = "0.30"\noutput = "1.20"\n'
    )
    result = margins("prices", "gpt-4o", "my-finetune", "--config", str(config), "--format", "json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["overridden"] == ["gpt-4o", "my-finetune"]
    assert [(m["model"], m["tiers"][0]["input"], m["overridden"]) for m in report["models"]] == [
        ("gpt-4o", "2.00", True),
        ("my-finetune", "0.30", True),
    ]
    scenario = tmp_path / "mine.toml"
    scenario.write_text(f'extends = "{NAIVE}"\n\n[prices.gpt-4o]\noutput = "9.00"\n')
    result = margins("prices", "gpt-4o", "--scenario", str(scenario))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[2].split() == [
        "gpt-4o",
        "any",
        "2.50",
        "1.25",
        "2.50",
        "9.00",
        "override",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["gpt-4x"], "margins: unknown model 'gpt-4x'; closest in the price catalog: gpt-4, gpt-4o"),
        (
            ["gemini-1.5-flash"],
            "margins: model 'gemini-1.5-flash' cannot be priced: the catalog's cached input",
        ),
        (["gpt-4o", "--config", "missing.toml"], "margins: missing.toml: (file): cannot read"),
    ],
)
def test_prices_of_an_unknown_model_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = margins("prices", *args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1
