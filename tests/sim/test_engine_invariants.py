"""What holds for any correct simulator, checked on the fast engine and on the per-request reference alike
(the `simulator` fixture) -- also where the two only agree statistically (rate limits that bind): money is
conserved, no call ends twice, a cache answers only what it saw within its lifetime, and what a user waits
for fits how the request was served."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from budget.domain.prices import PriceCatalog
from sim.io.forecast_db import usage_frame
from sim.model.codes import Action, Served
from sim.model.engine import EXACT_HIT_S, SEMANTIC_HIT_S
from sim.model.forecast import flatten, summarize
from sim.model.run import RunResult
from sim.model.scenario import Scenario
from sim.model.traffic import MONTH_DAYS
from tests.sim.engines import Simulator
from tests.sim.scenarios import ALL_LEVERS, scenario_from

FAILURES = {"error_rate": 0.05, "timeout_rate": 0.02, "bad_completion_rate": 0.05}
CACHED_PROMPTS = {**FAILURES, "prompt_cache": True, "prompt_cache_ttl_s": 120.0}
SMALL_CACHES = {
    "exact": {"enabled": True, "capacity": 40, "ttl_s": 3600.0},
    "semantic": {"enabled": True, "threshold": 0.85, "capacity": 40, "ttl_s": 3600.0},
    "fragment": {"enabled": True, "capacity": 8, "ttl_s": 1800.0},
}
SCENARIOS: dict[str, dict[str, Any]] = {
    "all-levers": {**ALL_LEVERS, "providers": {"gpt-4o": FAILURES, "gpt-4o-mini": FAILURES}},
    "small-caches": {
        **ALL_LEVERS,
        "cache": SMALL_CACHES,
        "retry": {"policy": "naive"},
        "providers": {"gpt-4o": {**FAILURES, "error_bills": "full"}, "gpt-4o-mini": FAILURES},
    },
    # Where the engines part ways: the fast path orders a rate window by rounds, the reference in time.
    "rate-limited": {
        "traffic": {"bursts": [{"start_day": 1, "hours": 12, "factor": 20}]},
        "prompts": {"chains": {"share": 0.3}},
        "cache": {"exact": {"enabled": True}},
        "retry": {"policy": "cost-aware", "queue_windows": 2},
        "providers": {"gpt-4o": {**FAILURES, "rpm": 12, "tpm": 15000}},
    },
    "conversation": {
        **ALL_LEVERS,
        "prompts": {
            **ALL_LEVERS["prompts"],
            "context": {
                "system_tokens": 1200,
                "history": True,
                "max_tokens": 6000,
                "at_limit": "summarize",
                "summary_tokens": 400,
            },
        },
        "retry": {"policy": "sdk-default"},
        "providers": {"gpt-4o": CACHED_PROMPTS, "gpt-4o-mini": {**CACHED_PROMPTS, "error_bills": "input"}},
    },
}
MAU, DAYS, SEED = 200, 3, 7


@pytest.fixture(params=sorted(SCENARIOS), scope="module")
def scenario(request: pytest.FixtureRequest) -> tuple[Scenario, PriceCatalog]:
    return scenario_from(SCENARIOS[request.param], request.param)


@pytest.fixture(scope="module")
def run(simulator: Simulator, scenario: tuple[Scenario, PriceCatalog]) -> RunResult:
    return simulator(*scenario, MAU, DAYS, seed=SEED)


def attempt_requests(run: RunResult) -> np.ndarray:
    return run.traffic.call_request[run.attempts.column("call").astype(np.intp)]


def test_the_scenarios_exercise_what_they_are_named_for(run: RunResult) -> None:
    figures = flatten(summarize(run))
    assert figures["requests"] > 500 and figures["retries"] + figures["regenerations"] > 0
    name = run.scenario.name
    if name == "rate-limited":
        assert figures["rate_limited"] > 100 and figures["queued"] > 0
    elif name == "conversation":
        assert run.traffic.conversation is not None and run.traffic.conversation.summaries > 0
    else:
        assert figures["hit_rate.exact"] > 0 and figures["hit_rate.semantic"] > 0
        assert figures["hit_rate.fragment"] > 0 and figures["false_hits"] > 0


def test_a_requests_cost_is_the_sum_of_its_attempts_and_every_total_agrees(run: RunResult) -> None:
    by_request = np.zeros(run.traffic.requests, dtype=np.int64)
    np.add.at(by_request, attempt_requests(run), run.attempts.column("cost_nanos").astype(np.int64))
    assert np.array_equal(run.cost_nanos, by_request)
    total = int(run.cost_nanos.sum())
    assert total > 0
    scale = MONTH_DAYS / run.traffic.days
    assert summarize(run)["cost_usd"] == pytest.approx(total * scale / 1e9, rel=1e-12)
    assert int(usage_frame(run, "r")["cost_nanos"].sum()) == total  # what the forecast DB stores


def test_each_attempt_costs_its_billed_tokens_at_its_models_prices(
    run: RunResult, scenario: tuple[Scenario, PriceCatalog]
) -> None:
    _, catalog = scenario
    log = run.attempts
    prices = np.array(
        [
            [catalog[m].input, catalog[m].output, catalog[m].cached_input, catalog[m].cache_write]
            for m in run.models
        ],
        dtype=np.int64,
    )[log.column("model").astype(np.intp)]
    billed_in, billed_out, cached, written = (
        log.column(name).astype(np.int64)
        for name in ("billed_input", "billed_output", "billed_cached", "billed_write")
    )
    assert np.all((cached >= 0) & (written >= 0) & (cached + written <= billed_in))
    expected = (
        (billed_in - cached - written) * prices[:, 0]
        + billed_out * prices[:, 1]
        + cached * prices[:, 2]
        + written * prices[:, 3]
    )
    assert np.array_equal(log.column("cost_nanos").astype(np.int64), expected)


def test_every_call_ends_once_with_its_last_attempt(run: RunResult) -> None:
    log = run.attempts
    call, t, action = log.column("call"), log.column("t"), log.column("action")
    order = np.lexsort((t, call))
    call, t, action = call[order], t[order], action[order]
    last = np.append(call[1:] != call[:-1], True)
    ends = np.isin(action, [Action.DONE, Action.FAILED, Action.GIVE_UP])
    assert np.array_equal(ends, last)  # one end per call, and nothing after it
    same_call = call[1:] == call[:-1]
    assert np.all(np.diff(t)[same_call] > 0)  # a call's attempts follow one another


def test_no_model_is_called_for_an_answer_a_cache_gave(run: RunResult) -> None:
    traffic = run.traffic
    calls = run.attempts.column("call").astype(np.intp)
    summaries = traffic.conversation.summaries if traffic.conversation is not None else 0
    # A history summary is made whatever answers the turn: the next turns carry it (the last calls).
    own = calls[calls < traffic.call_request.size - summaries]
    cached = np.isin(run.served, [Served.EXACT, Served.SEMANTIC, Served.FALSE_HIT])
    assert not cached[traffic.call_request[own]].any()
    skipped = traffic.call_deterministic[own] & run.fragment_hit[traffic.call_request[own]]
    assert not skipped.any()  # a cached fragment is not asked for again


def _seen_within(keys: np.ndarray, t: np.ndarray, hits: np.ndarray, ttl_s: float) -> bool:
    """Was every hit's key written by another request at most `ttl_s` before it?"""
    for i in np.flatnonzero(hits).tolist():
        earlier = (keys == keys[i]) & (t <= t[i]) & (t[i] - t < ttl_s)
        earlier[i] = False
        if keys[i] < 0 or not earlier.any():
            return False
    return True


def test_a_cache_answers_only_what_it_saw_within_its_lifetime(run: RunResult) -> None:
    traffic, cache = run.traffic, run.scenario.cache
    exact, semantic = run.served == Served.EXACT, run.served == Served.SEMANTIC
    assert _seen_within(traffic.exact_key, traffic.t, exact, cache.exact.ttl_s)
    assert _seen_within(traffic.cluster, traffic.t, semantic, cache.semantic.ttl_s)
    assert _seen_within(traffic.context, traffic.t, run.fragment_hit, cache.fragment.ttl_s)
    rates = summarize(run)["hit_rate"]
    assert all(0 <= rate <= 1 for rate in rates.values())


def test_what_a_user_waits_for_fits_how_the_request_was_served(run: RunResult) -> None:
    served, ttft = run.served, run.ttft_s
    assert set(np.unique(served).tolist()) <= set(Served)
    assert np.array_equal(np.isnan(ttft), served == Served.FAILED)
    assert np.all(ttft[served == Served.MODEL] > 0)
    assert np.all(ttft[served == Served.EXACT] == EXACT_HIT_S)
    assert np.all(ttft[(served == Served.SEMANTIC) | (served == Served.FALSE_HIT)] == SEMANTIC_HIT_S)
    assert np.all((run.quality >= 0) & (run.quality <= 100))
    # Only a queued call shows the user the fallback.
    queued = np.isin(run.attempts.column("action"), [Action.QUEUE, Action.GIVE_UP])
    assert np.array_equal(np.flatnonzero(run.fallback), np.unique(attempt_requests(run)[queued]))
