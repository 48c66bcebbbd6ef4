"""`margins fit`: a held-back synthetic month whose true parameters are known is forecast from a fitted
scenario within 5% of its total cost and 15% of its per-user p90; the store and a usage file fit alike."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from budget.domain.events import UsageRecorded
from budget.store.event_store import EventStore
from sim.cli import main
from sim.io.scenarios import load_scenario
from sim.model.engine import simulate
from sim.model.forecast import summarize
from tests.sim.scenarios import scenario_from
from tests.sim.usage import DATA, MONTH_START, fit_cli, usage_events, write_jsonl

TRUE = {"router": {"model": "gpt-4o-mini"}, "cache": {"exact": {"enabled": True}}}


def test_a_fitted_scenario_forecasts_a_held_back_month(tmp_path: Path) -> None:
    scenario, catalog = scenario_from(TRUE, "true")
    mau = 4000
    observed = simulate(scenario, catalog, mau, 30, seed=1)
    held_back = summarize(simulate(scenario, catalog, mau, 30, seed=2))
    code, out, err = fit_cli("--trace", str(write_jsonl(tmp_path / "month.jsonl", usage_events(observed))))
    assert code == 0, err
    fitted_path = tmp_path / "fitted.toml"
    fitted_path.write_text(out)  # as printed: no hand edits
    fitted, fitted_catalog = load_scenario(fitted_path)
    assert fitted.traffic.mau == [mau] and fitted.router.model == "gpt-4o-mini"
    assert fitted.cache.exact.enabled and fitted.cache.exact.scope == "global"
    provider, true_provider = fitted.provider("gpt-4o-mini"), scenario.provider("gpt-4o-mini")
    assert abs(provider.error_rate / true_provider.error_rate - 1) < 0.2
    assert provider.timeout_bills == "full" and provider.rpm > 10**8  # observed billing; no invented limit
    forecast = summarize(simulate(fitted, fitted_catalog, mau, 30, seed=3))
    assert abs(forecast["cost_usd"] / held_back["cost_usd"] - 1) < 0.05
    p90, true_p90 = (s["cost_per_user_month_usd"]["p90"] for s in (forecast, held_back))
    assert abs(p90 / true_p90 - 1) < 0.15
    assert abs(forecast["hit_rate"]["exact"] - held_back["hit_rate"]["exact"]) < 0.01
    assert abs(forecast["failed_requests"] - held_back["failed_requests"]) <= max(
        10, 0.3 * held_back["failed_requests"]
    )


def test_the_store_and_a_usage_file_fit_alike_and_only_the_month_counts(tmp_path: Path) -> None:
    scenario, catalog = scenario_from({**TRUE, "traffic": {"days": 30}})
    events = usage_events(simulate(scenario, catalog, 40, 30, seed=4))
    october = UsageRecorded(
        event_id="old",
        user_id="u-october",
        ts=MONTH_START - dt.timedelta(days=3),
        model="gpt-4o",
        input_tokens=10**6,
        output_tokens=10**5,
        cost_nanos=1,
    )
    with EventStore.open(tmp_path / "store", flush_interval=None, offload=False) as store:
        store.append([*events, october])
        store.flush()
    code, from_store, err = fit_cli("--store", str(tmp_path / "store"), "--month", "2026-11")
    assert code == 0, err
    code, from_file, err = fit_cli("--trace", str(write_jsonl(tmp_path / "m.jsonl", events)))
    assert code == 0, err
    assert from_store.splitlines()[1:] == from_file.splitlines()[1:]  # the first line names the source
    assert "mau = [40]" in from_store


def test_a_mooncake_trace_fits_a_scenario_that_loads(tmp_path: Path) -> None:
    code, out, err = fit_cli("--trace", str(DATA / "mooncake_synthetic_sample.jsonl"))
    assert code == 0, err
    path = tmp_path / "fitted.toml"
    path.write_text(out)
    fitted, _ = load_scenario(path)
    assert fitted.prompts.repeat_share > 0 and fitted.traffic.mau == [1]


def test_fit_errors_are_one_line(tmp_path: Path) -> None:
    with EventStore.open(tmp_path / "empty", flush_interval=None, offload=False):
        pass
    for args in (
        ("--store", str(tmp_path / "empty"), "--month", "2026-11"),
        ("--store", str(tmp_path / "empty"), "--month", "November"),
        (),
        ("--trace", str(tmp_path / "missing.csv")),
    ):
        code, _, err = fit_cli(*args)
        assert code == 2 and err.count("\n") == 1 and err.startswith("margins: "), (args, err)


def cli_json(*args: str) -> dict[str, Any]:
    result = CliRunner().invoke(main, [*args, "--format", "json"])
    assert result.exit_code == 0, result.stderr
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


@pytest.mark.parametrize(
    "sample",
    [
        "azure_code_sample.csv",
        "azure_conv_sample.csv",
        "mooncake_conversation_sample.jsonl",
        "mooncake_synthetic_sample.jsonl",
    ],
)
def test_fit_then_simulate_prices_each_trace_sample_as_its_replay(tmp_path: Path, sample: str) -> None:
    """As the README documents it: `fit --trace F > fitted.toml`, then `simulate fitted.toml`, no edits."""
    code, out, err = fit_cli("--trace", str(DATA / sample))
    assert code == 0, err
    (tmp_path / "fitted.toml").write_text(out)
    truth = cli_json("replay", str(DATA / sample))["results"][0]
    # 40 replications: one 300-request month drawn from a heavy-tailed token law moves by ~10%
    forecast = cli_json("simulate", str(tmp_path / "fitted.toml"), "--replications", "40")["results"][0]
    assert abs(forecast["cost_usd"] / truth["cost_usd"] - 1) < 0.05
    assert forecast["failed_requests"] == 0 and forecast["retries"] == 0 and forecast["rate_limited"] == 0
    assert set(forecast["calls_by_model"]) == {"gpt-4o-mini"}


def test_a_model_mix_fits_as_a_router_with_the_observed_shares(tmp_path: Path) -> None:
    mix = {"router": {"enabled": True, "hard_to_expensive": 0.8, "easy_to_expensive": 0.2}}
    scenario, catalog = scenario_from({**mix, "traffic": {"days": 30}}, "mix")
    run = simulate(scenario, catalog, 300, 30, seed=5)
    truth = summarize(simulate(scenario, catalog, 300, 30, seed=6))
    code, out, err = fit_cli("--trace", str(write_jsonl(tmp_path / "mix.jsonl", usage_events(run))))
    assert code == 0, err
    (tmp_path / "fitted.toml").write_text(out)
    fitted, fitted_catalog = load_scenario(tmp_path / "fitted.toml")
    assert fitted.router.enabled and fitted.models == ("gpt-4o-mini", "gpt-4o")
    calls = summarize(run)["calls_by_model"]
    assert abs(fitted.prompts.hard_share - calls["gpt-4o"] / sum(calls.values())) < 0.01
    forecast = summarize(simulate(fitted, fitted_catalog, 300, 30, seed=7))
    # per request: 300 heavy-tailed users move a month's request count by 10% from one draw to the next
    assert abs(forecast["cost_per_request_usd"] / truth["cost_per_request_usd"] - 1) < 0.05
