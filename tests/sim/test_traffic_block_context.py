"""Blocks with their conversation context and the engine's draws are `traffic.generate`'s run and the
engine's draws, to the byte: every array and dtype, summary calls numbered after every turn call, for
shipped scenarios with [prompts.context] (history kept whole, truncated and summarized at a small limit),
chains, a run of several months, and block sizes from one user to more than the MAU."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.errors import ArgumentError
from sim.io.scenarios import load_scenario
from sim.model.conversation import SUMMARY_STEP
from sim.model.randomness import streams_for
from sim.model.scenario import Scenario
from sim.model.traffic import Traffic, generate
from sim.model.traffic_block_context import engine_blocks
from sim.model.traffic_blocks import ENGINE_DRAWS, TrafficBlock, blocks, engine_draws
from tests.sim.traffic_block_cases import at_a_small_limit, engine_uniforms

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
TURN_CALL_COLUMNS = ("call_request", "call_step", "call_deterministic", "input_tokens", "output_tokens")
REQUEST_COLUMNS = ("t", "user", "exact_key", "cluster", "context", "hard", "session_messages")
SUMMARY_OF = {  # a call column of generate's -> the block conversation's column for its summary calls
    "call_request": "summary_request",
    "call_step": "summary_step",
    "input_tokens": "summary_input",
    "output_tokens": "summary_output",
}


def shipped(name: str) -> Scenario:
    scenario, _catalog = load_scenario(SCENARIOS / name)
    return scenario


def assert_blocks_are_generate(
    scenario: Scenario, mau: int, days: int, seed: int, users_per_block: int
) -> Traffic:
    whole = generate(scenario, mau, days, streams_for(seed, mau, 0))
    drawn = list(engine_blocks(scenario, mau, days, streams_for(seed, mau, 0), users_per_block))
    assert_concatenation_equals(drawn, whole)
    uniforms = engine_uniforms(scenario, mau, seed, whole.requests)
    for block in drawn:
        assert block.draws.keys() == uniforms.keys()
    for name, expected in uniforms.items():
        assert_equal(np.concatenate([block.draws[name] for block in drawn]), expected, name)
    return whole


def assert_equal(got: np.ndarray, expected: np.ndarray, what: str) -> None:
    assert got.dtype == expected.dtype, what
    assert np.array_equal(got, expected), what


def assert_concatenation_equals(drawn: list[TrafficBlock], whole: Traffic) -> None:
    assert drawn, "no blocks"
    for column in REQUEST_COLUMNS:
        assert_equal(np.concatenate([getattr(b, column) for b in drawn]), getattr(whole, column), column)
    turns = sum(block.calls for block in drawn)
    for column in TURN_CALL_COLUMNS:
        assert_equal(
            np.concatenate([getattr(b, column) for b in drawn]), getattr(whole, column)[:turns], column
        )
    for block, following in itertools.pairwise(drawn):
        assert following.first_call == block.first_call + block.calls
    conversation = whole.conversation
    if conversation is None:
        assert all(block.conversation is None for block in drawn)
        assert turns == whole.call_request.size
        return
    parts = [block.conversation for block in drawn]
    assert all(part is not None for part in parts)
    for column in ("history", "epoch", "summary_epoch"):
        joined = np.concatenate([getattr(part, column) for part in parts])
        assert_equal(joined, getattr(conversation, column), column)
    assert sum(part.summaries for part in parts if part) == conversation.summaries
    assert turns + conversation.summaries == whole.call_request.size
    for column, summary_column in SUMMARY_OF.items():
        joined = np.concatenate([getattr(part, summary_column) for part in parts])
        assert_equal(joined, getattr(whole, column)[turns:], column)
    summary_calls = np.concatenate([part.summary_call for part in parts if part])
    assert_equal(summary_calls, np.arange(turns, whole.call_request.size), "summary_call")
    assert not whole.call_deterministic[turns:].any()
    assert (whole.call_step[turns:] == SUMMARY_STEP).all()


CASES: list[tuple[str, Callable[[], Scenario], int, int]] = [
    (
        "optimized, chains and the whole history, 30 days",
        lambda: shipped("seed-story/optimized.toml"),
        1500,
        30,
    ),
    (
        "naive MVP truncated at 4k tokens, 45 days",
        lambda: at_a_small_limit(shipped("seed-story/naive-mvp.toml"), "truncate"),
        1200,
        45,
    ),
    (
        "optimized summarized at 4k tokens, 45 days",
        lambda: at_a_small_limit(shipped("seed-story/optimized.toml"), "summarize"),
        1200,
        45,
    ),
    ("launch spike, no context, 45 days", lambda: shipped("launch-spike.toml"), 1000, 45),
]


@pytest.mark.parametrize("users_per_block", [1, 97, 100_000], ids=["one-user", "prime", "more-than-mau"])
@pytest.mark.parametrize(("case", "scenario", "mau", "days"), CASES, ids=[c[0] for c in CASES])
def test_blocks_with_context_and_draws_concatenate_to_generate(
    case: str, scenario: Callable[[], Scenario], mau: int, days: int, users_per_block: int
) -> None:
    whole = assert_blocks_are_generate(scenario(), mau, days, 11, users_per_block)
    conversation = whole.conversation
    if "truncated" in case:  # the limit is reached: some turn's history starts after its session's first
        per_session = whole.session_messages
        assert conversation is not None and per_session is not None
        session_first = np.repeat(np.cumsum(per_session) - per_session, per_session)
        assert (conversation.epoch != session_first).any()
    if "summarized" in case:
        assert conversation is not None and conversation.summaries > 0


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    users_per_block=st.integers(1, 700),
    days=st.integers(1, 62),
    at_limit=st.sampled_from(["truncate", "summarize"]),
)
def test_any_seed_block_size_length_and_limit(
    seed: int, users_per_block: int, days: int, at_limit: Literal["truncate", "summarize"]
) -> None:
    scenario = at_a_small_limit(shipped("seed-story/optimized.toml"), at_limit)
    assert_blocks_are_generate(scenario, 600, days, seed, users_per_block)


def test_only_the_draws_a_scenario_uses_come_with_its_blocks() -> None:
    assert engine_draws(shipped("seed-story/optimized.toml")) == ENGINE_DRAWS  # router and both caches
    assert engine_draws(shipped("seed-story/naive-mvp.toml")) == ()
    assert engine_draws(shipped("levers/semantic-cache.toml")) == ("u_true", "u_false")


def test_unknown_draws_are_refused() -> None:
    with pytest.raises(
        ArgumentError, match="draws: each one of u_router, u_exact, u_true, u_false, got u_cache"
    ):
        blocks(shipped("levers/router.toml"), 10, 1, streams_for(1, 10, 0), 5, draws=("u_router", "u_cache"))
