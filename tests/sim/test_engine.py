"""The fast path: reproducible, faithful to the per-request reference, and right to the nano-dollar.

Tests that take `simulator` state what any correct simulator does, and run on the fast engine and on the
reference alike; the others compare the two, exactly where they must agree, closely where they may not."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.model.codes import Served
from sim.model.engine import simulate
from sim.model.forecast import flatten, summarize
from sim.model.reference import simulate_reference
from tests.sim.engines import Simulator
from tests.sim.scenarios import ALL_LEVERS, scenario_from

FAILURES = {"error_rate": 0.05, "timeout_rate": 0.02, "bad_completion_rate": 0.05}


def test_same_seed_same_numbers(all_levers: Any, simulator: Simulator) -> None:
    scenario, catalog = all_levers
    first = summarize(simulator(scenario, catalog, 500, 5, seed=11))
    again = summarize(simulator(scenario, catalog, 500, 5, seed=11))
    other = summarize(simulator(scenario, catalog, 500, 5, seed=12))
    assert first == again
    assert first["cost_usd"] != other["cost_usd"]


@pytest.mark.parametrize("policy", ["naive", "sdk-default", "cost-aware"])
@pytest.mark.parametrize("streaming", [False, True])
def test_fast_path_equals_reference_when_limits_do_not_bind(policy: str, streaming: bool) -> None:
    table = {
        **ALL_LEVERS,
        "retry": {"policy": policy},
        "streaming": {"enabled": streaming},
        "providers": {"gpt-4o": FAILURES, "gpt-4o-mini": FAILURES},
    }
    scenario, catalog = scenario_from(table)
    fast = simulate(scenario, catalog, 300, 7, seed=3)
    reference = simulate_reference(scenario, catalog, 300, 7, seed=3)
    assert np.array_equal(fast.cost_nanos, reference.cost_nanos)
    assert np.array_equal(fast.served, reference.served)
    assert np.array_equal(fast.fragment_hit, reference.fragment_hit)
    fast_figures, reference_figures = flatten(summarize(fast)), flatten(summarize(reference))
    for key, value in fast_figures.items():
        assert value == pytest.approx(reference_figures[key], rel=1e-9, abs=1e-6), key


def test_fast_path_equals_reference_when_cache_capacity_binds() -> None:
    small = {
        "exact": {"enabled": True, "capacity": 60},
        "semantic": {"enabled": True, "threshold": 0.85, "capacity": 60},
        "fragment": {"enabled": True, "capacity": 12},
    }
    table = {**ALL_LEVERS, "cache": small, "providers": {"gpt-4o": FAILURES, "gpt-4o-mini": FAILURES}}
    scenario, catalog = scenario_from(table)
    fast = simulate(scenario, catalog, 300, 7, seed=3)
    reference = simulate_reference(scenario, catalog, 300, 7, seed=3)
    assert np.array_equal(fast.served, reference.served)
    assert np.array_equal(fast.fragment_hit, reference.fragment_hit)
    assert np.array_equal(fast.cost_nanos, reference.cost_nanos)
    roomy = flatten(
        summarize(simulate(*scenario_from({**table, "cache": ALL_LEVERS["cache"]}), 300, 7, seed=3))
    )
    binding = flatten(summarize(fast))
    for layer in ("exact", "semantic", "fragment"):  # else this would not test capacity
        assert binding[f"hit_rate.{layer}"] < roomy[f"hit_rate.{layer}"], layer


def test_fast_path_stays_close_to_reference_when_rate_limits_bind() -> None:
    table = {
        "traffic": {"bursts": [{"start_day": 1, "hours": 24, "factor": 20}]},
        "prompts": {"chains": {"share": 0.3}},
        "retry": {"policy": "cost-aware", "queue_windows": 5},
        "providers": {"gpt-4o": {**FAILURES, "rpm": 12, "tpm": 15000}},
    }
    scenario, catalog = scenario_from(table)
    fast = flatten(summarize(simulate(scenario, catalog, 300, 3, seed=5)))
    reference = flatten(summarize(simulate_reference(scenario, catalog, 300, 3, seed=5)))
    assert reference["rate_limited"] > 1000, "the limits must bind for this test to mean anything"
    for key in ("cost_usd", "quality", "rate_limited", "queued", "fallbacks", "failed_requests"):
        assert fast[key] == pytest.approx(reference[key], rel=0.02), key


def test_cost_arithmetic_matches_a_hand_computed_case(simulator: Simulator) -> None:
    # One user, one session, one message, fixed tokens, no failures: 1000 in and 200 out on gpt-4o.
    table = {
        "traffic": {"sessions_per_user_month": 1, "messages_per_session": 1},
        "prompts": {
            "input_tokens": {"mean": 1000, "sigma": 0},
            "output_tokens": {"mean": 200, "sigma": 0},
        },
        "providers": {"gpt-4o": {"error_rate": 0, "timeout_rate": 0, "bad_completion_rate": 0}},
    }
    scenario, catalog = scenario_from(table)
    run = simulator(scenario, catalog, 1, 30, seed=1)
    # gpt-4o: $2.50 / 1M input = 2,500 nano-dollars a token; $10.00 / 1M output = 10,000.
    assert run.traffic.requests == 1
    assert run.cost_nanos.tolist() == [1000 * 2500 + 200 * 10_000]
    assert summarize(run)["cost_usd"] == pytest.approx(0.0045)


def test_a_timeout_without_streaming_bills_the_whole_completion_and_waits_the_timeout(
    simulator: Simulator,
) -> None:
    table = {
        "traffic": {"sessions_per_user_month": 1, "messages_per_session": 1},
        "prompts": {"input_tokens": {"mean": 100, "sigma": 0}, "output_tokens": {"mean": 50, "sigma": 0}},
        "retry": {"policy": "naive", "max_retries": 2},
        "providers": {"gpt-4o": {"error_rate": 0, "timeout_rate": 1, "timeout_s": 30, "ttft_sigma": 0}},
    }
    scenario, catalog = scenario_from(table)
    run = simulator(scenario, catalog, 1, 30, seed=1)
    # Three attempts (the first and two retries), each billed in full, then the request fails.
    assert run.cost_nanos.tolist() == [3 * (100 * 2500 + 50 * 10_000)]
    assert run.attempts.column("finished_at")[0] - run.attempts.column("t")[0] == pytest.approx(30.0)


def test_a_global_cache_hits_more_with_more_users() -> None:
    scenario, catalog = scenario_from({"cache": {"exact": {"enabled": True}}})
    small = simulate(scenario, catalog, 200, 7, seed=2)
    large = simulate(scenario, catalog, 5000, 7, seed=2)
    rate = [float(np.mean(run.served == Served.EXACT)) for run in (small, large)]
    assert rate[1] > rate[0] * 1.5


spend_params = st.fixed_dictionaries(
    {
        "repeat": st.floats(0, 0.6),
        "paraphrase": st.floats(0, 0.4),
        "error": st.floats(0, 0.2),
        "timeout": st.floats(0, 0.1),
        "bad": st.floats(0, 0.2),
        "bills": st.sampled_from(["nothing", "input", "full"]),
        "seed": st.integers(0, 1000),
    }
)


def _table(params: dict[str, Any], **extra: Any) -> dict[str, Any]:
    provider = {
        "error_rate": params["error"],
        "timeout_rate": params["timeout"],
        "bad_completion_rate": params["bad"],
        "error_bills": params["bills"],
    }
    return {
        "prompts": {
            "repeat_share": params["repeat"],
            "paraphrase_share": params["paraphrase"],
            "chains": {"share": 0.3},
        },
        "providers": {"gpt-4o": provider, "gpt-4o-mini": provider},
        **extra,
    }


def _cost(simulator: Simulator, table: dict[str, Any], seed: int) -> int:
    scenario, catalog = scenario_from(table)
    return int(simulator(scenario, catalog, 150, 3, seed=seed).cost_nanos.sum())


@settings(max_examples=25, deadline=None)
@given(params=spend_params, layer=st.sampled_from(["exact", "semantic", "fragment"]))
def test_a_cache_never_raises_spend(simulator: Simulator, params: dict[str, Any], layer: str) -> None:
    without = _cost(simulator, _table(params), params["seed"])
    with_cache = _cost(simulator, _table(params, cache={layer: {"enabled": True}}), params["seed"])
    assert with_cache <= without


@settings(max_examples=25, deadline=None)
@given(params=spend_params, hard_to_expensive=st.floats(0, 1), easy_to_expensive=st.floats(0, 1))
def test_a_router_to_a_cheaper_model_never_raises_spend(
    simulator: Simulator, params: dict[str, Any], hard_to_expensive: float, easy_to_expensive: float
) -> None:
    router = {
        "enabled": True,
        "cheap_model": "gpt-4o-mini",
        "expensive_model": "gpt-4o",
        "hard_to_expensive": hard_to_expensive,
        "easy_to_expensive": easy_to_expensive,
    }
    with_router = _cost(simulator, _table(params, router=router), params["seed"])
    assert with_router <= _cost(simulator, _table(params), params["seed"])


@settings(max_examples=25, deadline=None)
@given(params=spend_params, retries=st.integers(1, 5), timeout_bills=st.sampled_from(["input", "full"]))
def test_naive_retry_never_spends_less_than_cost_aware(
    simulator: Simulator, params: dict[str, Any], retries: int, timeout_bills: str
) -> None:
    table = _table(params)
    for provider in table["providers"].values():
        provider["timeout_bills"] = timeout_bills
    naive = _cost(simulator, {**table, "retry": {"policy": "naive", "max_retries": retries}}, params["seed"])
    cost_aware = _cost(simulator, {**table, "retry": {"policy": "cost-aware"}}, params["seed"])
    assert naive >= cost_aware


@pytest.mark.parametrize("streaming", [False, True])
def test_fast_path_equals_reference_with_provider_prompt_caching(streaming: bool) -> None:
    cached = {**FAILURES, "prompt_cache": True, "prompt_cache_ttl_s": 120.0, "prompt_cache_min_tokens": 256}
    table = {
        **ALL_LEVERS,
        "prompts": {**ALL_LEVERS["prompts"], "prefix_share": 0.6},
        "streaming": {"enabled": streaming},
        "providers": {"gpt-4o": cached, "gpt-4o-mini": {**cached, "error_bills": "input"}},
    }
    scenario, catalog = scenario_from(table)
    fast = simulate(scenario, catalog, 300, 5, seed=3)
    reference = simulate_reference(scenario, catalog, 300, 5, seed=3)
    assert np.array_equal(fast.cost_nanos, reference.cost_nanos)
    for column in ("billed_cached", "billed_write"):
        assert fast.attempts.column(column).sum() == reference.attempts.column(column).sum() > 0
    uncached, _ = scenario_from({**table, "providers": {"gpt-4o": FAILURES, "gpt-4o-mini": FAILURES}})
    assert fast.cost_nanos.sum() < simulate(uncached, catalog, 300, 5, seed=3).cost_nanos.sum()


def test_a_run_without_a_single_request_reports_zeros(all_levers: Any, simulator: Simulator) -> None:
    scenario, catalog = all_levers
    # One user with one session in a 30-day month: a 1-day run sees nothing, most seeds.
    seed = next(s for s in range(100) if simulate(scenario, catalog, 1, 1, seed=s).traffic.requests == 0)
    figures = summarize(simulator(scenario, catalog, 1, 1, seed=seed))
    assert figures["requests"] == 0 and figures["cost_usd"] == 0
    assert figures["cost_per_user_month_usd"]["p99"] == 0


CONTEXTS = {
    "truncate": {"system_tokens": 1200, "history": True, "max_tokens": 6000},
    "summarize": {
        "system_tokens": 1200,
        "history": True,
        "max_tokens": 6000,
        "at_limit": "summarize",
        "summary_tokens": 400,
    },
    "system-only": {"system_tokens": 1500, "history": False},
}


@pytest.mark.parametrize("context", sorted(CONTEXTS))
@pytest.mark.parametrize("policy", ["sdk-default", "cost-aware"])
def test_fast_path_equals_reference_with_conversation_context(context: str, policy: str) -> None:
    cached = {**FAILURES, "prompt_cache": True, "prompt_cache_ttl_s": 120.0}
    table = {
        **ALL_LEVERS,
        "prompts": {**ALL_LEVERS["prompts"], "context": CONTEXTS[context]},
        "retry": {"policy": policy},
        "providers": {"gpt-4o": cached, "gpt-4o-mini": {**cached, "error_bills": "input"}},
    }
    scenario, catalog = scenario_from(table)
    fast = simulate(scenario, catalog, 300, 5, seed=3)
    reference = simulate_reference(scenario, catalog, 300, 5, seed=3)
    conversation = fast.traffic.conversation
    assert conversation is not None
    if context == "summarize":
        assert conversation.summaries > 20, "summaries must happen for this test to mean anything"
    if context == "truncate":
        sizes = fast.traffic.session_messages
        assert sizes is not None
        first_turn = np.repeat(np.cumsum(sizes) - sizes, sizes)
        assert np.count_nonzero(conversation.epoch > first_turn) > 20, "the limit must bind"
    assert np.array_equal(fast.traffic.input_tokens, reference.traffic.input_tokens)
    assert np.array_equal(fast.cost_nanos, reference.cost_nanos)
    assert np.array_equal(fast.served, reference.served)
    for column in ("billed_cached", "billed_write"):
        assert fast.attempts.column(column).sum() == reference.attempts.column(column).sum() > 0
    fast_figures, reference_figures = flatten(summarize(fast)), flatten(summarize(reference))
    for key, value in fast_figures.items():
        assert value == pytest.approx(reference_figures[key], rel=1e-9, abs=1e-6), key
