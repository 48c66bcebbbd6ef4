"""The provider prompt cache worked a chunk of days at a time, its state carried, gives exactly the whole
run's tokens: every call's cached-input and cache-write tokens, dtypes too. Drawn traffic of the shipped
seed-story scenarios (conversation context, both models caching prompts), variants that summarize or
truncate at a small context limit, that have no context but a per-user prefix share, lifetimes that do
not divide a day, a 45-day run over two months; split at every day, at a few days, as one chunk, and at
random days."""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.io.scenarios import read_table
from sim.model.policies.prompt_cache import (
    PromptCacheState,
    advance,
    chunk_calls,
    initial_state,
    prompt_cache_tokens,
)
from sim.model.randomness import streams_for
from sim.model.scenario import Scenario
from sim.model.scenario_checks import merge, parse_scenario
from sim.model.traffic import Traffic, generate

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
DAY_S = 86_400
MAU = 400

NO_CONTEXT = {"system_tokens": 0, "history": False}
CASES: dict[str, tuple[str, dict[str, Any], int]] = {
    # name: (shipped scenario, what the variant changes, days)
    "optimized": ("seed-story/optimized.toml", {}, 30),
    "naive": ("seed-story/naive-mvp.toml", {}, 30),
    "summarize": (
        "seed-story/optimized.toml",
        {"prompts": {"context": {"max_tokens": 6000, "at_limit": "summarize", "summary_tokens": 400}}},
        30,
    ),
    "truncate-long-lifetimes": (
        "seed-story/optimized.toml",
        {
            "prompts": {"context": {"max_tokens": 5000}},
            # lifetimes that straddle midnight: bins of 7,000 s and 2 days, an hour for the other model
            "providers": {
                "gpt-4o": {"prompt_cache_ttl_s": 7000.0},
                "gpt-4o-mini": {"prompt_cache_ttl_s": 172_800.0, "prompt_cache_min_tokens": 0},
            },
        },
        30,
    ),
    "prefix-share": (
        "seed-story/optimized.toml",
        {
            "prompts": {"context": NO_CONTEXT, "prefix_share": 0.6},
            "providers": {"gpt-4o-mini": {"prompt_cache_ttl_s": 5000.0}},
        },
        30,
    ),
    "summarize-45-days": (
        "seed-story/optimized.toml",
        {"prompts": {"context": {"max_tokens": 6000, "at_limit": "summarize", "summary_tokens": 400}}},
        45,
    ),
    "prefix-share-45-days": (
        "seed-story/naive-mvp.toml",
        {"prompts": {"context": NO_CONTEXT, "prefix_share": 0.5}},
        45,
    ),
}


@dataclass(frozen=True)
class Run:
    scenario: Scenario
    traffic: Traffic
    call_model: np.ndarray
    sent: np.ndarray
    call_day: np.ndarray
    days: int


@functools.cache
def run(case: str) -> Run:
    """Drawn traffic of a case, each request routed to a model at random and a share of calls answered
    by a response cache (not sent)."""
    path, override, days = CASES[case]
    table = merge(read_table(SCENARIOS / path), override)
    scenario, _catalog = parse_scenario(table, f"{case}.toml")
    traffic = generate(scenario, MAU, days, streams_for(7, MAU, 0))
    rng = np.random.default_rng(11)
    request_model = rng.integers(0, len(scenario.models), size=traffic.requests).astype(np.int8)
    call_model = request_model[traffic.call_request]
    sent = rng.random(traffic.call_request.size) < 0.8
    call_day = (traffic.t // DAY_S).astype(np.int64)[traffic.call_request]
    return Run(scenario, traffic, call_model, sent, call_day, days)


def chunked(case: Run, boundaries: list[int]) -> tuple[np.ndarray, np.ndarray, list[PromptCacheState]]:
    """The run's tokens worked chunk by chunk: days [0, b1), [b1, b2), ..., [bk, end)."""
    edges = [0, *boundaries, int(case.call_day.max(initial=0)) + 1]
    pieces: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    states = [initial_state(case.scenario)]
    for start, stop in itertools.pairwise(edges):
        ids = np.flatnonzero((case.call_day >= start) & (case.call_day < stop))
        chunk = chunk_calls(case.scenario, case.traffic, case.call_model, case.sent, ids)
        cached, write, state = advance(case.scenario, states[-1], chunk)
        pieces.append((ids, cached, write))
        states.append(state)
    calls = case.traffic.call_request.size
    cached = np.zeros(calls, dtype=pieces[0][1].dtype)
    write = np.zeros(calls, dtype=pieces[0][2].dtype)
    for ids, chunk_cached, chunk_write in pieces:
        assert chunk_cached.dtype == cached.dtype and chunk_write.dtype == write.dtype
        cached[ids], write[ids] = chunk_cached, chunk_write
    return cached, write, states


def assert_same(case: Run, boundaries: list[int]) -> None:
    whole = prompt_cache_tokens(case.scenario, case.traffic, case.call_model, case.sent)
    cached, write, _states = chunked(case, boundaries)
    for got, want in ((cached, whole[0]), (write, whole[1])):
        assert got.dtype == want.dtype
        assert np.array_equal(got, want)


@pytest.mark.parametrize("case", list(CASES))
def test_chunks_by_day_give_the_whole_runs_tokens(case: str) -> None:
    current = run(case)
    cached, write = prompt_cache_tokens(current.scenario, current.traffic, current.call_model, current.sent)
    # The case exercises the cache: reads and writes happen, and chunks carry warmth across midnight.
    assert np.count_nonzero(cached) > 100 and np.count_nonzero(write) > 100
    for boundaries in ([], list(range(1, current.days)), [1, 2, 15, current.days - 1], [31]):
        assert_same(current, boundaries)


def test_the_cut_at_midnight_matters() -> None:
    """The state carries what the previous days sent: a day worked from a fresh state reads less (a
    lifetime of two days: the system prompt sent the day before is warm)."""
    current = run("truncate-long-lifetimes")
    whole, _ = prompt_cache_tokens(current.scenario, current.traffic, current.call_model, current.sent)
    _, _, states = chunked(current, list(range(1, current.days)))
    fresh, _, _ = chunked(current, [])
    assert np.array_equal(fresh, whole)
    days_read = 0
    for day in range(1, current.days):
        ids = np.flatnonzero(current.call_day == day)
        chunk = chunk_calls(current.scenario, current.traffic, current.call_model, current.sent, ids)
        carried, _, _ = advance(current.scenario, states[day], chunk)
        cold, _, _ = advance(current.scenario, initial_state(current.scenario), chunk)
        assert np.array_equal(carried, whole[ids])
        assert np.all(cold <= carried)
        days_read += int(np.any(cold < carried))
    assert days_read == current.days - 1


def test_the_carried_state_holds_the_epochs_warm_at_the_chunks_end() -> None:
    """Per model, exactly the epochs whose latest turn call is within the lifetime of the day's latest
    call sent with a conversation, with that call's time: a few live sessions, not the run's."""
    current = run("summarize")
    _, _, states = chunked(current, list(range(1, current.days)))
    whole = chunk_calls(current.scenario, current.traffic, current.call_model, current.sent)
    assert whole.context is not None
    first_summary = whole.model.size - whole.context.summaries
    sent = [seen for seen in whole.context.models if seen is not None]
    for day, state in enumerate(states[1:]):
        # the latest call of the day sent with a conversation, to any model
        horizon = max(float(seen.t[current.call_day[seen.calls] == day].max()) for seen in sent)
        for index, (model, carried) in enumerate(zip(current.scenario.models, state.models, strict=True)):
            seen = whole.context.models[index]
            assert carried is not None and seen is not None
            ttl = current.scenario.provider(model).prompt_cache_ttl_s
            turns = (seen.calls < first_summary) & (current.call_day[seen.calls] <= day)
            epoch, t = seen.epoch[turns], seen.t[turns]
            last = np.flatnonzero(np.r_[epoch[1:] != epoch[:-1], True])
            live = last[horizon - t[last] <= ttl]
            assert np.array_equal(carried.epoch, epoch[live])
            assert np.array_equal(carried.epoch_t, t[live])
            assert carried.epoch.size < current.traffic.sessions // 10


def test_advance_leaves_the_state_it_was_given() -> None:
    for case in ("summarize", "prefix-share"):
        current = run(case)
        _, _, states = chunked(current, [10])
        ids = np.flatnonzero(current.call_day >= 10)
        chunk = chunk_calls(current.scenario, current.traffic, current.call_model, current.sent, ids)
        first = advance(current.scenario, states[1], chunk)
        second = advance(current.scenario, states[1], chunk)
        assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])


@settings(max_examples=20, deadline=None)
@given(
    case=st.sampled_from(["summarize", "truncate-long-lifetimes", "prefix-share", "summarize-45-days"]),
    cuts=st.sets(st.integers(1, 44), max_size=12),
)
def test_chunks_at_random_days_give_the_whole_runs_tokens(case: str, cuts: set[int]) -> None:
    current = run(case)
    assert_same(current, sorted(c for c in cuts if c < current.days))
