"""Traffic drawn a block of users at a time is traffic.draw's, to the byte: every array, every dtype, for
shipped scenarios (chains, a burst, a run of several months, a per-user exact cache), block sizes from one
user to more than the MAU, and pre-passes cut into many chunks."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.io.scenarios import load_scenario
from sim.model import traffic_blocks
from sim.model.randomness import streams_for
from sim.model.scenario import Scenario
from sim.model.traffic import Traffic, draw
from sim.model.traffic_blocks import TrafficBlock, blocks, traffic_totals
from tests.sim.scenarios import scenario_from

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
COLUMNS = (
    "t",
    "user",
    "exact_key",
    "cluster",
    "context",
    "hard",
    "call_request",
    "call_step",
    "call_deterministic",
    "input_tokens",
    "output_tokens",
    "session_messages",
)


def shipped(name: str) -> Scenario:
    scenario, _catalog = load_scenario(SCENARIOS / name)
    return scenario


def per_user_exact_cache(scenario: Scenario) -> Scenario:
    exact = msgspec.structs.replace(scenario.cache.exact, enabled=True, scope="user")
    return msgspec.structs.replace(scenario, cache=msgspec.structs.replace(scenario.cache, exact=exact))


def assert_blocks_are_the_draw(
    scenario: Scenario, mau: int, days: int, seed: int, users_per_block: int
) -> None:
    whole = draw(scenario, mau, days, streams_for(seed, mau, 0))
    drawn = list(blocks(scenario, mau, days, streams_for(seed, mau, 0), users_per_block))
    assert_concatenation_equals(drawn, whole)


def assert_concatenation_equals(drawn: list[TrafficBlock], whole: Traffic) -> None:
    assert drawn, "no blocks"
    for column in COLUMNS:
        joined = np.concatenate([getattr(block, column) for block in drawn])
        expected = getattr(whole, column)
        assert joined.dtype == expected.dtype, column
        assert np.array_equal(joined, expected), column
    assert sum(b.session_messages.size for b in drawn) == whole.sessions
    for block, following in itertools.pairwise(drawn):
        assert following.first_request == block.first_request + block.requests
        assert following.first_call == block.first_call + block.calls
        assert following.first_session == block.first_session + block.session_messages.size


@pytest.fixture(params=[None, 1000], ids=["one-chunk", "chunked-pre-passes"])
def pre_pass_chunk(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pre-passes as they run at this MAU, and cut into chunks of 1,000 numbers (as a big run cuts
    them into chunks of a million)."""
    if request.param is not None:
        monkeypatch.setattr(traffic_blocks, "PRE_PASS_CHUNK", request.param)


CASES: list[tuple[str, Callable[[], Scenario], int, int]] = [
    ("optimized, chains and context, 30 days", lambda: shipped("seed-story/optimized.toml"), 1500, 30),
    ("launch spike, a 20x burst, 45 days", lambda: shipped("launch-spike.toml"), 1200, 45),
    (
        "naive MVP with a per-user exact cache, 70 days",
        lambda: per_user_exact_cache(shipped("seed-story/naive-mvp.toml")),
        800,
        70,
    ),
    ("router lever, 1 day", lambda: shipped("levers/router.toml"), 2000, 1),
]


@pytest.mark.parametrize("users_per_block", [1, 97, 100_000], ids=["one-user", "prime", "more-than-mau"])
@pytest.mark.parametrize(("case", "scenario", "mau", "days"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.usefixtures("pre_pass_chunk")
def test_blocks_concatenate_to_the_whole_draw(
    case: str, scenario: Callable[[], Scenario], mau: int, days: int, users_per_block: int
) -> None:
    assert_blocks_are_the_draw(scenario(), mau, days, 11, users_per_block)


def test_a_token_count_that_needs_int64_somewhere_types_every_block() -> None:
    """lognormal_tokens types a whole draw by its largest count: blocks whose own counts fit int32 still
    come as int64 when another block's do not (a mean of 10M tokens, sigma 3: a few counts above 2**31)."""
    scenario, _ = scenario_from(
        {
            "prompts": {
                "input_tokens": {"mean": 10_000_000, "sigma": 3},
                "output_tokens": {"mean": 200, "sigma": 0},
            }
        }
    )
    whole = draw(scenario, 300, 30, streams_for(3, 300, 0))
    assert whole.input_tokens.dtype == np.int64 and whole.output_tokens.dtype == np.int32
    drawn = list(blocks(scenario, 300, 30, streams_for(3, 300, 0), 7))
    assert any(block.input_tokens.max(initial=0) < 2**31 for block in drawn)
    assert_concatenation_equals(drawn, whole)


def test_one_message_sessions_and_no_extra_sessions_draw_nothing_and_still_match() -> None:
    """Poisson draws of a zero rate take no numbers from the stream: the cursors must agree."""
    scenario, _ = scenario_from({"traffic": {"sessions_per_user_month": 1, "messages_per_session": 1}})
    assert_blocks_are_the_draw(scenario, 500, 40, 5, 13)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), users_per_block=st.integers(1, 700), days=st.integers(1, 62))
def test_any_seed_block_size_and_length(seed: int, users_per_block: int, days: int) -> None:
    assert_blocks_are_the_draw(shipped("seed-story/optimized.toml"), 600, days, seed, users_per_block)


def test_totals_are_the_draws_and_the_streams_are_left_alone() -> None:
    scenario = shipped("launch-spike.toml")
    streams = streams_for(2, 900, 0)
    before = {name: getattr(streams, name).bit_generator.state for name in ("users", "sessions", "prompts")}
    totals = traffic_totals(scenario, 900, 45, streams)
    assert sum(b.requests for b in blocks(scenario, 900, 45, streams, 50)) == totals.requests
    after = {name: getattr(streams, name).bit_generator.state for name in before}
    assert after == before
    whole = draw(scenario, 900, 45, streams_for(2, 900, 0))
    assert (totals.sessions, totals.requests, totals.calls) == (
        whole.sessions,
        whole.requests,
        whole.call_request.size,
    )


def test_a_block_size_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="users_per_block: must be at least 1, got 0"):
        blocks(shipped("levers/router.toml"), 10, 1, streams_for(1, 10, 0), 0)


# What the cursors rest on: each numpy method used, drawn in consecutive pieces from one generator, gives
# one draw's numbers; a float64 uniform (alone or in `choice`) takes one PCG64 output. A method draws for
# the items of `items` (a range of the whole draw's), so a rate per item follows its item.
PIECES = [1, 3, 2, 7, 1000, 1, 5, 4001]  # odd sizes: a float32 draw leaves half an output buffered
RATES = np.linspace(0.0, 25.0, sum(PIECES))  # below and above 10: both of numpy's Poisson algorithms
HOURS = np.random.default_rng(0).random(720)
METHODS: dict[str, Callable[[np.random.Generator, np.ndarray], np.ndarray]] = {
    "random": lambda rng, items: rng.random(items.size),
    "exponential": lambda rng, items: rng.exponential(30.0, size=items.size),
    "poisson": lambda rng, items: rng.poisson(4.0, size=items.size),
    "poisson, a rate per item": lambda rng, items: rng.poisson(RATES[items]),
    "gamma": lambda rng, items: rng.gamma(0.7, 10.0, size=items.size),
    "standard_normal float32": lambda rng, items: rng.standard_normal(items.size, dtype=np.float32),
    "choice with probabilities": lambda rng, items: rng.choice(720, size=items.size, p=HOURS / HOURS.sum()),
}


@pytest.mark.parametrize("method", list(METHODS), ids=list(METHODS))
def test_numbers_drawn_in_pieces_are_one_draws(method: str) -> None:
    draw_of = METHODS[method]
    rng = np.random.default_rng(99)
    bounds = np.cumsum([0, *PIECES])
    joined = np.concatenate([draw_of(rng, np.arange(a, b)) for a, b in itertools.pairwise(bounds)])
    whole = draw_of(np.random.default_rng(99), np.arange(bounds[-1]))
    assert joined.dtype == whole.dtype
    assert np.array_equal(joined, whole)


@pytest.mark.parametrize("method", ["random", "choice with probabilities"])
def test_a_uniform_takes_one_output_so_advance_skips_them(method: str) -> None:
    rng = np.random.default_rng(7)
    METHODS[method](rng, np.arange(12345))
    bits = np.random.PCG64(7)  # what default_rng(7) wraps
    bits.advance(12345)
    assert np.array_equal(rng.random(10), np.random.Generator(bits).random(10))
