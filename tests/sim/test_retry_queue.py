"""Cost-aware retries under rate limits: the client's queue holds calls until a window has room for them."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from budget.domain.prices import PriceCatalog
from sim.model.codes import Action, Outcome
from sim.model.engine import simulate
from sim.model.forecast import flatten, summarize
from sim.model.policies.retry import RATE_WINDOW_S
from sim.model.reference import simulate_reference
from sim.model.run import RunResult
from sim.model.scenario import Scenario
from tests.sim.engines import Simulator
from tests.sim.scenarios import scenario_from

CLEAN = {"error_rate": 0.0, "timeout_rate": 0.0, "bad_completion_rate": 0.0}
FAILING = {"error_rate": 0.05, "timeout_rate": 0.02, "bad_completion_rate": 0.05}

# (burst factor, burst hours, requests a minute, tokens a minute): a long grind, a short sharp spike, a
# mild one against a token limit.
SPIKES = [(20, 24, 12, 15_000), (60, 3, 8, 15_000), (3, 24, 30, 5_000)]


def _spike(
    shape: tuple[int, int, int, int], policy: dict[str, Any], failures: dict[str, float]
) -> tuple[Scenario, PriceCatalog]:
    factor, hours, rpm, tpm = shape
    return scenario_from(
        {
            "traffic": {"bursts": [{"start_day": 1, "hours": hours, "factor": factor}]},
            "prompts": {"chains": {"share": 0.3}},
            "retry": policy,
            "providers": {"gpt-4o": {**failures, "rpm": rpm, "tpm": tpm}},
        }
    )


@pytest.mark.parametrize("shape", SPIKES)
@pytest.mark.parametrize("seed", [1, 2])
def test_cost_aware_never_makes_more_rate_limited_attempts_than_naive(
    shape: tuple[int, int, int, int], seed: int
) -> None:
    naive = summarize(simulate(*_spike(shape, {"policy": "naive"}, FAILING), 300, 3, seed=seed))
    cost_aware = summarize(
        simulate(*_spike(shape, {"policy": "cost-aware", "queue_windows": 5}, FAILING), 300, 3, seed=seed)
    )
    assert naive["rate_limited"] > 100, "the limits must bind for this test to mean anything"
    assert cost_aware["rate_limited"] <= naive["rate_limited"]


def _waits(run: RunResult) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each wait in the queue: when the call was refused, its model, when it was sent again (NaN when it
    gave up), and the outcome of that attempt."""
    log = run.attempts
    call, t, action = log.column("call"), log.column("t"), log.column("action")
    outcome, model = log.column("outcome"), log.column("model")
    by_call = np.lexsort((t, call))
    call, t, action, outcome, model = (
        call[by_call],
        t[by_call],
        action[by_call],
        outcome[by_call],
        model[by_call],
    )
    waited = np.flatnonzero((action == Action.QUEUE) | (action == Action.GIVE_UP))
    has_next = (waited + 1 < call.size) & (call[np.minimum(waited + 1, call.size - 1)] == call[waited])
    sent = np.where(has_next, t[np.minimum(waited + 1, t.size - 1)], np.nan)
    next_outcome = np.where(has_next, outcome[np.minimum(waited + 1, t.size - 1)], -1)
    assert np.array_equal(has_next, action[waited] == Action.QUEUE)  # a call that gives up is not sent
    return t[waited], model[waited], sent, next_outcome


@pytest.mark.parametrize("shape", SPIKES)
def test_the_queue_sends_calls_first_come_first_served_into_windows_with_room(
    simulator: Simulator, shape: tuple[int, int, int, int]
) -> None:
    scenario, catalog = _spike(shape, {"policy": "cost-aware", "queue_windows": 3}, FAILING)
    run = simulator(scenario, catalog, 300, 3, seed=4)
    refused, model, sent, outcome = _waits(run)
    assert refused.size > 100
    assert np.all(outcome[~np.isnan(sent)] != Outcome.RATE_LIMITED)  # never sent into a full window
    released = ~np.isnan(sent)
    windows_waited = sent[released] // RATE_WINDOW_S - refused[released] // RATE_WINDOW_S
    assert np.all(sent[released] % RATE_WINDOW_S == 0)  # at a window's start
    assert windows_waited.min() >= 1 and windows_waited.max() <= 3
    assert np.any(~released), "some calls must wait longer than the queue allows"
    for index in np.unique(model):
        mine = (model == index) & released
        in_order = sent[mine][np.lexsort((sent[mine], refused[mine]))]  # ties: either may go first
        assert np.all(np.diff(in_order) >= 0)  # refused earlier, sent no later
        # Nobody refused after a call that gave up passed it: they were sent after its last window.
        gave_up = (model == index) & ~released
        deadline = refused[gave_up] // RATE_WINDOW_S + 3
        for refused_at, last in zip(refused[gave_up], deadline, strict=True):
            later = refused[mine] > refused_at
            assert np.all(sent[mine][later] // RATE_WINDOW_S > last)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fast_path_equals_reference_under_the_queue_when_no_call_follows_up_inside_its_window(
    seed: int,
) -> None:
    """Without transient failures or bad completions no attempt is followed up inside its own window, the
    one place where the fast path's order differs from the reference's: then the two agree exactly."""
    shape = SPIKES[seed - 1]
    scenario, catalog = _spike(shape, {"policy": "cost-aware", "queue_windows": 2}, CLEAN)
    fast = simulate(scenario, catalog, 300, 3, seed=seed)
    reference = simulate_reference(scenario, catalog, 300, 3, seed=seed)
    figures = flatten(summarize(reference))
    assert figures["rate_limited"] > 100 and figures["failed_requests"] > 0
    assert np.array_equal(fast.served, reference.served)
    assert np.array_equal(fast.cost_nanos, reference.cost_nanos)
    assert np.array_equal(fast.fallback, reference.fallback)
    assert flatten(summarize(fast)) == pytest.approx(figures)
