"""The attempt clock fed a day of requests at a time is the whole-run clock, to the byte, and the request
fold handed a tick's attempts at a time gives `_per_request`'s arrays: for shipped scenarios with rate
limits that bite under cost-aware queueing, with chains and history summaries, and over several months;
chunks of one day, of the whole run, and at random day boundaries."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.errors import ArgumentError
from sim.io.scenarios import load_scenario
from sim.model import engine
from sim.model.attempt_clock import TICK_S, AttemptClock
from sim.model.attempts import AttemptLog
from sim.model.codes import Action
from sim.model.policies import cache
from sim.model.request_fold import RequestFold
from sim.model.scenario import Burst, Scenario
from sim.model.traffic import Traffic

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
LOG_COLUMNS = (
    "call",
    "t",
    "model",
    "outcome",
    "action",
    "billed_input",
    "billed_output",
    "billed_cached",
    "billed_write",
    "cost_nanos",
    "visible_at",
    "finished_at",
)


@dataclass
class Run:
    """What `simulate` handed its attempt clock and its per-request fold, and what they gave back."""

    clock_args: tuple[Any, ...]
    log: AttemptLog
    rounds: int
    traffic: Traffic
    exact: np.ndarray
    semantic: cache.LayerHits
    per_request: tuple[np.ndarray, ...]


def recorded_run(
    scenario: Scenario, catalog: Any, mau: int, days: int, monkeypatch: pytest.MonkeyPatch
) -> Run:
    """Run `simulate`, keeping the engine's own inputs to its clock and its fold (no second copy of how
    `simulate` builds them)."""
    seen: dict[str, Any] = {}
    clock, fold = engine._attempt_clock, engine._per_request

    def recording_clock(*args: Any) -> tuple[AttemptLog, int]:
        seen["clock_args"] = args
        seen["log"], seen["rounds"] = clock(*args)
        return seen["log"], seen["rounds"]

    def recording_fold(*args: Any) -> tuple[np.ndarray, ...]:
        seen["fold_args"] = args
        per_request = fold(*args)
        seen["per_request"] = per_request
        return per_request

    with monkeypatch.context() as patch:
        patch.setattr(engine, "_attempt_clock", recording_clock)
        patch.setattr(engine, "_per_request", recording_fold)
        engine.simulate(scenario, catalog, mau, days, seed=5)
    traffic, _log, exact, semantic = seen["fold_args"]
    return Run(seen["clock_args"], seen["log"], seen["rounds"], traffic, exact, semantic, seen["per_request"])


def shipped(name: str, bursts: list[Burst] | None = None, **provider_limits: int) -> tuple[Scenario, Any]:
    scenario, catalog = load_scenario(SCENARIOS / name)
    if bursts is not None:
        traffic = msgspec.structs.replace(scenario.traffic, bursts=bursts)
        scenario = msgspec.structs.replace(scenario, traffic=traffic)
    if provider_limits:  # tighter limits, so that a small MAU meets them
        providers = {
            model: msgspec.structs.replace(scenario.provider(model), **provider_limits)
            for model in scenario.models
        }
        scenario = msgspec.structs.replace(scenario, providers=providers)
    return scenario, catalog


def chunked(
    run: Run, splits: Sequence[int], feed_day: np.ndarray | None = None
) -> tuple[AttemptLog, int, dict[str, np.ndarray], int]:
    """Feed the clock the calls of each chunk of request days [a, b), play ticks up to b, fold the
    attempts; then play and fold until nothing is left. Returns the joined log, the rounds, the fold's
    per-request arrays, and the largest carried state seen (bytes).

    `feed_day` (per call, no later than its start's tick) feeds calls on other days than their
    request's: several adds then hold first attempts of the same tick."""
    scenario, table, sheet, key, calls, starts, days, _phase = run.clock_args
    traffic = run.traffic
    clock = AttemptClock(scenario, table, sheet, key, days)
    fold = RequestFold()
    request_day = (traffic.t // TICK_S).astype(np.int64)
    request_call_day = request_day[traffic.call_request[calls]]
    call_day = request_call_day if feed_day is None else feed_day
    last_day = int(request_day.max(initial=0))
    n = traffic.requests
    out = {
        "served": np.full(n, -99, dtype=np.int64),
        "ttft": np.full(n, 99.0),
        "fallback": np.zeros(n, dtype=bool),
        "cost": np.zeros(n, dtype=np.int64),
        "bad_served": np.zeros(n, dtype=bool),
    }
    seen = np.zeros(n, dtype=np.int64)
    whole = AttemptLog()
    largest = 0

    def take(log: AttemptLog) -> None:
        for name, parts in log.parts.items():
            whole.parts.setdefault(name, []).extend(parts)
        finished = fold.fold(log)
        seen[finished.request] += 1
        for name in out:
            out[name][finished.request] = getattr(finished.outcomes, name)

    bounds = [0, *sorted(set(splits)), last_day + 1]
    for low, high in itertools.pairwise(bounds):
        if high <= low:
            continue
        requests = np.flatnonzero((request_day >= low) & (request_day < high))
        mine = (call_day >= low) & (call_day < high)
        clock.add(calls[mine], starts[mine])
        known = calls[(request_call_day >= low) & (request_call_day < high)]
        fold.open(
            requests,
            traffic.t[requests],
            run.exact[requests],
            run.semantic.true_hit[requests],
            run.semantic.false_hit[requests],
            known,
            traffic.call_request[known],
        )
        take(clock.run_until(high))
        largest = max(largest, clock.nbytes + fold.nbytes)
    while clock.busy:
        take(clock.run_tick())
    take(AttemptLog())
    assert np.all(seen == 1), "every request is handed out once"
    assert fold.open_requests == 0
    return whole, clock.rounds, out, largest


def assert_same(run: Run, splits: Sequence[int], feed_day: np.ndarray | None = None) -> None:
    log, rounds, out, _largest = chunked(run, splits, feed_day)
    for name in LOG_COLUMNS:
        mine, theirs = log.column(name), run.log.column(name)
        assert mine.dtype == theirs.dtype, name
        assert np.array_equal(mine, theirs, equal_nan=True), name
    assert rounds == run.rounds
    for name, theirs in zip(
        ("served", "ttft", "fallback", "cost", "bad_served"), run.per_request, strict=True
    ):
        assert out[name].dtype == theirs.dtype, name
        assert np.array_equal(out[name], theirs, equal_nan=True), name


CASES = {
    # Its 20x burst, moved to 3 hours across the first midnight (a month of it takes minutes), against
    # limits 500 users meet; cost-aware retries queue the refused calls, some past midnight.
    "burst": (("launch-spike-cost-aware.toml", {"rpm": 30, "tpm": 30_000}), 500, 4),
    # chains of three steps (two deterministic), history resent, every cache, the router.
    "chains": (("seed-story/optimized.toml", {}), 1000, 10),
    # a run of a month and a half: sessions and retries across many day boundaries.
    "months": (("seed-story/naive-mvp.toml", {}), 400, 45),
}


@pytest.fixture(scope="module")
def runs() -> dict[str, Run]:
    patch = pytest.MonkeyPatch()
    made = {}
    for case, ((name, limits), mau, days) in CASES.items():
        bursts = [Burst(start_day=0.9, hours=3, factor=20)] if case == "burst" else None
        scenario, catalog = shipped(name, bursts, **limits)
        made[case] = recorded_run(scenario, catalog, mau, days, patch)
    return made


def test_the_burst_case_queues_and_gives_up(runs: dict[str, Run]) -> None:
    action = runs["burst"].log.column("action")
    assert np.count_nonzero(action == Action.QUEUE) > 100  # else the limits would not bite
    assert np.count_nonzero(action == Action.GIVE_UP) > 0
    run = runs["burst"]
    request_day = run.traffic.t[run.traffic.call_request[run.log.column("call")]] // TICK_S
    assert np.any(run.log.column("t") // TICK_S > request_day), "attempts the day after their request"


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("split", ["one chunk", "every day", "every third day"])
def test_day_fed_clock_is_the_whole_run(runs: dict[str, Run], case: str, split: str) -> None:
    run = runs[case]
    last = int(run.traffic.t.max() // TICK_S)
    splits = {"one chunk": [], "every day": range(1, last + 1), "every third day": range(3, last + 1, 3)}
    assert_same(run, list(splits[split]))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_day_boundaries(runs: dict[str, Run], data: st.DataObject) -> None:
    case = data.draw(st.sampled_from(list(CASES)))
    run = runs[case]
    last = int(run.traffic.t.max() // TICK_S)
    splits = data.draw(st.lists(st.integers(1, last), max_size=8))
    assert_same(run, splits)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_calls_fed_early_in_several_adds(runs: dict[str, Run], data: st.DataObject) -> None:
    """Calls fed any day up to their start's (as a call pushed past midnight is): arrivals of one tick
    come from several adds and are merged back into call-id order."""
    case = data.draw(st.sampled_from(list(CASES)))
    run = runs[case]
    starts = run.clock_args[5]
    seed = data.draw(st.integers(0, 2**32 - 1))
    start_tick = (starts // TICK_S).astype(np.int64)
    feed_day = np.random.default_rng(seed).integers(0, start_tick + 1)
    last = int(run.traffic.t.max() // TICK_S)
    splits = data.draw(st.lists(st.integers(1, last), max_size=8))
    assert_same(run, splits, feed_day)


@pytest.mark.parametrize("case", list(CASES))
def test_carried_state_is_a_day_at_most(runs: dict[str, Run], case: str) -> None:
    """Fed a day at a time, what the clock and the fold carry past a day -- rate windows aside -- is less
    than what that day's busiest day's calls would take as pending attempts and open requests."""
    run = runs[case]
    scenario, table, sheet, key, calls, _starts, days, _phase = run.clock_args
    last = int(run.traffic.t.max() // TICK_S)
    *_, largest = chunked(run, list(range(1, last + 1)))
    windows = AttemptClock(scenario, table, sheet, key, days).nbytes  # nothing added: the windows alone
    call_day = run.traffic.t[run.traffic.call_request[calls]] // TICK_S
    busiest = int(np.bincount(call_day.astype(np.int64)).max())
    assert largest - windows < busiest * (54 + 16 + 54) / 10


def test_a_call_due_before_the_clock_is_refused(runs: dict[str, Run]) -> None:
    scenario, table, sheet, key, calls, _starts, days, _phase = runs["chains"].clock_args
    clock = AttemptClock(scenario, table, sheet, key, days)
    clock.run_tick()
    with pytest.raises(ArgumentError, match="before the clock's tick 1"):
        clock.add(calls[:1], np.zeros(1))
    with pytest.raises(ArgumentError, match="ascending"):
        clock.add(calls[:2][::-1], np.full(2, TICK_S * 2))
