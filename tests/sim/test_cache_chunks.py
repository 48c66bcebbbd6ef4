"""A cache layer served a chunk of time at a time (sim/model/policies/cache_chunks.py) gets exactly the hits
of one whole lookup: on random access streams split at random times, and on a shipped scenario's traffic
split by simulated day as the streaming engine's day loop will split it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.errors import ArgumentError
from sim.io.scenarios import load_scenario
from sim.model import traffic as traffic_module
from sim.model.day_caches import DayRequests, LayerStates, day_cache_layers
from sim.model.engine import cache_layers, semantic_rates
from sim.model.policies.cache import LayerHits, lookup
from sim.model.policies.cache_chunks import CacheState, _behind_history, lookup_chunk
from sim.model.randomness import streams_for
from sim.model.scenario import Scenario

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
DAY_S = 86400.0


def chunked(
    keys: np.ndarray,
    times: np.ndarray,
    bounds: list[float],
    ttl: float,
    capacity: int,
    p_true: float,
    p_false: float,
    u_true: np.ndarray,
    u_false: np.ndarray,
) -> tuple[LayerHits, list[CacheState]]:
    """The layer served in chunks T_k <= t < T_{k+1} (bounds: the inner T_k), each in stream order."""
    true_hit = np.zeros(keys.size, dtype=bool)
    false_hit = np.zeros(keys.size, dtype=bool)
    state, states = CacheState.empty(), []
    for low, high in zip([-np.inf, *bounds], [*bounds, np.inf], strict=True):
        rows = np.flatnonzero((times >= low) & (times < high))
        hits, state = lookup_chunk(
            keys[rows], times[rows], ttl, capacity, p_true, p_false, u_true[rows], u_false[rows], state
        )
        true_hit[rows], false_hit[rows] = hits.true_hit, hits.false_hit
        states.append(state)
    return LayerHits(true_hit, false_hit), states


def assert_same_hits(got: LayerHits, expected: LayerHits) -> None:
    for a, b in ((got.true_hit, expected.true_hit), (got.false_hit, expected.false_hit)):
        assert a.dtype == b.dtype
        assert np.array_equal(a, b)


@settings(max_examples=25, deadline=None)
@given(
    data=st.lists(st.tuples(st.integers(-1, 12), st.integers(0, 400)), min_size=1, max_size=400),
    bounds=st.lists(st.integers(0, 401), max_size=8).map(sorted),
    capacity=st.sampled_from([1, 2, 3, 5, 8, 20, 10**9]),
    ttl=st.sampled_from([3.0, 40.0, 150.0, 1e6]),
    p_true=st.sampled_from([1.0, 0.7, 0.0]),
    p_false=st.sampled_from([0.0, 0.3]),
    seed=st.integers(0, 2**32 - 1),
)
def test_chunks_split_at_random_times_get_the_whole_runs_hits(
    data, bounds, capacity, ttl, p_true, p_false, seed
):
    keys = np.array([k for k, _ in data], dtype=np.int64)  # -1: one-off prompts
    times = np.array([t for _, t in data], dtype=np.float64)  # unsorted, tied within and around bounds
    rng = np.random.default_rng(seed)
    u_true, u_false = rng.random(keys.size), rng.random(keys.size)
    whole = lookup(keys, times, ttl, capacity, p_true, p_false, u_true, u_false)
    for cut in ([], [float(b) for b in bounds]):  # one chunk, then the drawn split points
        got, states = chunked(keys, times, cut, ttl, capacity, p_true, p_false, u_true, u_false)
        assert_same_hits(got, whole)
        assert all(state.slots <= capacity for state in states)


@settings(max_examples=25, deadline=None)
@given(
    keys=st.lists(st.integers(-1, 200), min_size=50, max_size=600),
    chunks=st.integers(1, 12),
    capacity=st.sampled_from([4, 16, 64, 10**9]),
    p_false=st.sampled_from([0.0, 0.05, 0.5]),
    seed=st.integers(0, 2**32 - 1),
)
def test_busy_streams_that_push_entries_out_chunk_exactly(keys, chunks, capacity, p_false, seed):
    """Many distinct keys within a TTL (capacity binds, drawn false hits on expired entries): the cases
    where which accesses touch the LRU decides later hits."""
    rng = np.random.default_rng(seed)
    key = np.array(keys, dtype=np.int64)
    times = np.round(rng.random(key.size) * 1000.0, 1)
    u_true, u_false = rng.random(key.size), rng.random(key.size)
    whole = lookup(key, times, 60.0, capacity, 0.8, p_false, u_true, u_false)
    bounds = sorted(rng.choice(times, size=chunks - 1).tolist())  # a chunk may begin at a tie
    got, _ = chunked(key, times, bounds, 60.0, capacity, 0.8, p_false, u_true, u_false)
    assert_same_hits(got, whole)


# Streams where a careless carry goes wrong (hypothesis seldom draws them): a drawn false hit (u_false 0)
# on a key whose entry expired, which touches the key only if it still holds its slot -- and that touch
# decides whether a fresh entry is pushed out before it is asked for again.
SLOT_CASES = {
    # 1 expires but holds its slot; the false hit at 101 touches it, so 9 and then 2 are pushed out.
    "an expired entry kept": ([1, 9, 2, 1, 3, 4, 2], [0, 50, 100, 101, 102, 103, 104], [55.0], 3, 10.0),
    # 1 is pushed out by 20, 30, 40, so the false hit at 159 touches nothing and 20 is still there at
    # 159.5 (the first chunk alone is sparse enough for lru.evicted's shortcut, which would say it does).
    "a pushed-out key not touched": (
        [1, 20, 30, 40, 1, 20],
        [0, 100, 110, 120, 159, 159.5],
        [159.2],
        3,
        60.0,
    ),
}


@pytest.mark.parametrize("case", SLOT_CASES.values(), ids=list(SLOT_CASES))
def test_a_false_hit_touches_an_expired_entry_only_while_it_holds_its_slot(case) -> None:
    keys, times, bounds, capacity, ttl = case
    key, t = np.array(keys, dtype=np.int64), np.array(times, dtype=np.float64)
    u_true, u_false = np.zeros(key.size), np.full(key.size, 0.9)
    u_false[np.flatnonzero(key == 1)[1]] = 0.0  # the second access to key 1 draws a false hit
    whole = lookup(key, t, ttl, capacity, 1.0, 0.5, u_true, u_false)
    got, _ = chunked(key, t, bounds, ttl, capacity, 1.0, 0.5, u_true, u_false)
    assert_same_hits(got, whole)


def test_without_false_hits_an_unbounded_cache_carries_only_what_one_ttl_touched() -> None:
    rng = np.random.default_rng(5)
    n, ttl = 20_000, 50.0
    keys = rng.integers(-1, 5_000, n)
    times = np.sort(rng.random(n) * 10_000.0)
    bounds = [2_500.0, 5_000.0, 7_500.0]
    ones = np.ones(n)
    got, states = chunked(keys, times, bounds, ttl, 10**9, 1.0, 0.0, np.zeros(n), ones)
    assert_same_hits(got, lookup(keys, times, ttl, 10**9, 1.0, 0.0, np.zeros(n), ones))
    for bound, state in zip([*bounds, np.inf], states, strict=True):
        served = times[times < bound]
        alive = state.served_until - state.written[state.key >= 0] < ttl
        assert alive[0]  # the deepest slot kept is a live entry ...
        assert state.slots <= np.count_nonzero(served > served[-1] - ttl)  # ... touched within a TTL


def test_a_chunk_must_come_after_the_one_before() -> None:
    keys, times = np.array([1, 2, 1]), np.array([10.0, 20.0, 30.0])
    state = lookup_chunk(keys, times, 100.0, 10, 1.0, 0.0, np.zeros(3), np.ones(3), CacheState.empty())[1]
    with pytest.raises(ArgumentError, match=r"after the previous chunk's last access at 30\.0"):
        lookup_chunk(keys, times + 20.0, 100.0, 10, 1.0, 0.0, np.zeros(3), np.ones(3), state)


def test_an_empty_chunk_changes_nothing() -> None:
    state = lookup_chunk(
        np.array([3]), np.array([1.0]), 9.0, 2, 1.0, 0.0, np.zeros(1), np.ones(1), CacheState.empty()
    )[1]
    hits, after = lookup_chunk(
        np.zeros(0, np.int64), np.zeros(0), 9.0, 2, 1.0, 0.0, np.zeros(0), np.zeros(0), state
    )
    assert hits.true_hit.size == 0 and after is state


def cache_layers_by_day(scenario: Scenario, traffic: Any, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """engine.cache_layers as the day loop runs it (sim/model/day_caches.py): each simulated day's requests
    in request-id order, the three layers' states carried from day to day (the same draws: three uniforms
    per request)."""
    n = traffic.requests
    u_exact, u_true, u_false = rng.random((3, n))
    p_true, p_false = semantic_rates(scenario)
    exact, true_hit, false_hit, fragment = (np.zeros(n, dtype=bool) for _ in range(4))
    states = LayerStates.empty()
    day = (traffic.t // DAY_S).astype(np.int64)
    for d in range(int(day.max()) + 1):
        requests = np.flatnonzero(day == d)
        columns = DayRequests(
            traffic.t[requests], traffic.exact_key[requests], traffic.cluster[requests],
            traffic.context[requests], u_exact[requests], u_true[requests], u_false[requests],
        )  # fmt: skip
        hits = day_cache_layers(scenario, columns, p_true, p_false, states)
        exact[requests], semantic, fragment[requests], states = hits
        true_hit[requests], false_hit[requests] = semantic.true_hit, semantic.false_hit
    return exact, true_hit, false_hit, fragment


def _with_capacity(scenario: Scenario, capacity: int) -> Scenario:
    c = scenario.cache
    caches = msgspec.structs.replace(
        c,
        exact=msgspec.structs.replace(c.exact, capacity=capacity),
        semantic=msgspec.structs.replace(c.semantic, capacity=capacity),
        fragment=msgspec.structs.replace(c.fragment, capacity=capacity),
    )
    return msgspec.structs.replace(scenario, cache=caches)


@pytest.mark.parametrize("capacity", [None, 40, 400], ids=["shipped", "40", "400"])
def test_a_shipped_scenarios_layers_chunked_by_day_equal_the_whole_run(capacity: int | None) -> None:
    scenario = load_scenario(SCENARIOS / "seed-story" / "optimized.toml")[0]
    assert (
        scenario.cache.exact.enabled and scenario.cache.semantic.enabled and scenario.cache.fragment.enabled
    )
    if capacity is not None:
        scenario = _with_capacity(scenario, capacity)
    mau, days, seed = 1500, 10, 3
    traffic = traffic_module.generate(scenario, mau, days, streams_for(seed, mau, 0))
    exact, semantic, fragment = cache_layers(scenario, traffic, streams_for(seed, mau, 0).cache)
    by_day = cache_layers_by_day(scenario, traffic, streams_for(seed, mau, 0).cache)
    whole = (exact, semantic.true_hit, semantic.false_hit, fragment)
    for got, expected in zip(by_day, whole, strict=True):
        assert got.dtype == expected.dtype
        assert np.array_equal(got, expected)
    assert exact.any() and semantic.true_hit.any() and fragment.any()  # every layer has hits to compare


def test_the_history_comes_in_time_order() -> None:
    """The engine's sorts by time take a history in time order as it is (access_order.by_time): writes
    fall among the touches at their times, ahead of touches tied with them."""
    state = CacheState(
        key=np.array([4, -1, 7, 2, 9], dtype=np.int64),
        written=np.array([5.0, np.nan, 1.0, 30.0, 12.0]),
        touched=np.array([10.0, 12.0, 12.0, 30.0, 40.0]),
        served_until=40.0,
    )
    chunk = (np.array([3], dtype=np.int64), np.array([41.0]), np.array([0.5]), np.array([0.25]))
    (keys, times, u_true, u_false), h = _behind_history(state, ttl_s=20.0, true_hit=0.8, chunk=chunk)
    assert h == 8
    assert times.tolist() == [1.0, 5.0, 10.0, 12.0, 12.0, 12.0, 30.0, 40.0, 41.0]
    assert keys.tolist() == [7, 4, 4, 9, -1, 7, 2, 9, 3]
    assert u_true.tolist() == [0.0] * 8 + [0.5]
    # 4 is found again (fresh), 7 was written 11 s before its touch (fresh too), 9 expired: a drawn false hit
    assert u_false.tolist() == [np.inf] * 7 + [-np.inf, 0.25]
