"""Caps in the forecast, applied with the enforcer's own ledger."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from budget.domain.prices import NANOS_PER_USD
from sim.errors import ScenarioError
from sim.io.forecast_db import usage_frame
from sim.model import caps, engine
from sim.model.codes import CapDecision, Served
from sim.model.forecast import summarize
from sim.model.periods import period_index, run_periods
from sim.model.run import RunResult
from tests.sim.engines import Simulator
from tests.sim.scenarios import ALL_LEVERS, scenario_from

NAIVE: dict[str, Any] = {
    "traffic": {"sessions_per_user_month": 12, "dispersion": 0.5},
    "prompts": {"chains": {"share": 0.3, "steps": 3, "deterministic_steps": 2}},
    "providers": {"gpt-4o": {"error_rate": 0.05, "timeout_rate": 0.02}},
}


def with_cap(table: dict[str, Any], **cap: Any) -> dict[str, Any]:
    return {**table, "cap": cap}


def month_spend_usd(run: RunResult, cost_nanos: np.ndarray | None = None) -> np.ndarray:
    """Each user's spend in each month of the run (USD, one row per month): what the cap limits."""
    periods = run_periods(run.scenario.traffic.start, run.traffic.days)
    month = period_index(periods, run.traffic.t)
    spend = np.zeros((len(periods), run.traffic.mau), dtype=np.int64)
    np.add.at(spend, (month, run.traffic.user), run.cost_nanos if cost_nanos is None else cost_nanos)
    return spend / NANOS_PER_USD


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cap_usd=st.sampled_from([0.02, 0.05, 0.1, 0.3, 1.0]),
    action=st.sampled_from(["block", "degrade"]),
    levers=st.sampled_from(["naive", "all"]),
    policy=st.sampled_from(["naive", "sdk-default", "cost-aware"]),
    days=st.integers(3, 7),
    seed=st.integers(0, 1000),
)
def test_no_user_month_passes_the_cap_when_every_call_is_authorized(
    simulator: Simulator, cap_usd: float, action: str, levers: str, policy: str, days: int, seed: int
) -> None:
    table = dict(NAIVE if levers == "naive" else ALL_LEVERS)
    table["retry"] = {"policy": policy}
    scenario, catalog = scenario_from(
        with_cap(table, monthly_usd=cap_usd, action=action, degrade_model="gpt-4o-mini")
    )
    run = simulator(scenario, catalog, 150, days, seed)
    assert run.cap is not None
    assert month_spend_usd(run).max() <= cap_usd + 1e-12
    # Without the cap the heavy users do pass it (otherwise this test would prove nothing) ...
    if cap_usd <= 0.05:
        assert month_spend_usd(run, run.cap.uncapped_cost_nanos).max() > cap_usd
    # ... and the stored events add up to the capped spend: denied calls are gone, degraded ones repriced.
    assert int(usage_frame(run, "r")["cost_nanos"].sum()) == int(run.cost_nanos.sum())


def uncapped_and_capped(table: dict[str, Any], **cap: Any) -> tuple[RunResult, RunResult]:
    plain, catalog = scenario_from(table)
    capped, _ = scenario_from(with_cap(table, **cap))
    run = engine.simulate(plain, catalog, 300, 5, 3)
    return run, dataclasses.replace(run, scenario=capped)


# 5-day runs, capped at the whole monthly cap: these are the caps 0.3, 1 and 3 a month once were pro rata.
@pytest.mark.parametrize("cap_usd", [0.05, 0.17, 0.5])
@pytest.mark.parametrize("action", ["block", "degrade"])
def test_the_shortcuts_are_exact_every_request_through_the_ledger_gives_the_same_run(
    action: str, cap_usd: float
) -> None:
    _, base = uncapped_and_capped(NAIVE, monthly_usd=cap_usd, action=action, degrade_model="gpt-4o-mini")
    _, catalog = scenario_from(NAIVE)
    fast = caps.apply_cap(base, catalog)
    full = caps.apply_cap(base, catalog, replay_all=True)
    assert fast.cap is not None and full.cap is not None
    assert fast.cap.users_replayed < full.cap.users_replayed  # the shortcut skipped someone
    assert np.array_equal(fast.cap.decision, full.cap.decision)
    assert np.array_equal(fast.cost_nanos, full.cost_nanos)
    assert np.array_equal(fast.quality, full.quality)
    assert np.count_nonzero(fast.cap.decision) > 0  # and the cap did bite


def test_a_cap_nobody_reaches_changes_nothing() -> None:
    run, base = uncapped_and_capped(NAIVE, monthly_usd=1000.0)
    _, catalog = scenario_from(NAIVE)
    capped = caps.apply_cap(base, catalog)
    assert np.array_equal(capped.cost_nanos, run.cost_nanos)
    assert np.array_equal(capped.quality, run.quality)
    figures = summarize(capped)["cap"]
    assert figures["requests_denied"] == figures["requests_degraded"] == 0
    assert figures["spend_saved_usd"] == 0 and figures["quality_lost"] == 0
    assert figures["users_replayed"] == 0


def test_blocking_denies_costs_nothing_scores_denied_and_is_reported(simulator: Simulator) -> None:
    table = {**NAIVE, "quality": {"denied": 5.0}}
    scenario, catalog = scenario_from(with_cap(table, monthly_usd=1.0))
    run = simulator(scenario, catalog, 300, 5, 3)
    assert run.cap is not None
    denied = run.cap.decision == CapDecision.DENIED
    assert denied.any()
    assert (run.cost_nanos[denied] == 0).all() and (run.quality[denied] == 5.0).all()
    assert (run.served[denied] == Served.DENIED).all() and np.isnan(run.ttft_s[denied]).all()
    figures = summarize(run)["cap"]
    assert figures["requests_denied"] == int(denied.sum())
    assert figures["spend_saved_usd"] > 0 and figures["quality_lost"] > 0
    # Users can feel the cap below the soft limit: a worst case that does not fit is denied.
    assert 0 < figures["users_at_cap"] <= 1 and 0 < figures["users_over_soft"] <= 1


def test_degrading_moves_requests_to_the_cheaper_model(simulator: Simulator) -> None:
    scenario, catalog = scenario_from(
        with_cap(NAIVE, monthly_usd=0.1, action="degrade", degrade_model="gpt-4o-mini")
    )
    run = simulator(scenario, catalog, 300, 5, 3)
    assert run.cap is not None
    degraded = run.cap.decision == CapDecision.DEGRADED
    assert degraded.any()
    assert run.models == ("gpt-4o", "gpt-4o-mini")
    assert (run.request_model[degraded] == 1).all()
    assert (run.cost_nanos[degraded] < run.cap.uncapped_cost_nanos[degraded]).all()
    assert summarize(run)["calls_by_model"]["gpt-4o-mini"] > 0


def test_a_requests_worst_case_covers_what_it_bills(simulator: Simulator) -> None:
    scenario, catalog = scenario_from(with_cap({**NAIVE, "retry": {"policy": "naive"}}, monthly_usd=1.0))
    run = simulator(scenario, catalog, 300, 5, 3)
    assert run.cap is not None
    requests = caps.CapRequests.of_run(run, catalog)
    assert (run.cap.uncapped_cost_nanos <= requests.worst_nanos).all()


@pytest.mark.parametrize(
    ("cap", "field"),
    [
        ({"monthly_usd": 1.0, "action": "degrade"}, "cap.degrade_model"),
        ({"monthly_usd": 1.0, "degrade_model": "gpt-9"}, "cap.degrade_model"),
        ({"monthly_usd": 1.0, "action": "warn"}, "cap.action"),
        ({"monthly_usd": 0}, "cap.monthly_usd"),
    ],
)
def test_bad_caps_are_scenario_errors(cap: dict[str, Any], field: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        scenario_from({"cap": cap})
    assert caught.value.field == field
