"""The vectorized cache layers against LRU caches written independently: a plain sequential model of the
same rules, and cachetools' LRUCache over real-shaped traffic (Zipf popularity, the diurnal profile)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, MutableMapping
from typing import Any

import numpy as np
import pytest
from cachetools import LRUCache
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.model import traffic as traffic_module
from sim.model.engine import cache_layers, semantic_rates
from sim.model.policies.cache import lookup
from sim.model.policies.lru import WaveletMatrix
from sim.model.randomness import streams_for
from tests.sim.scenarios import scenario_from


class OrderedLru(OrderedDict[Hashable, float]):
    """The smallest LRU: a lookup of a present key refreshes it, a write past capacity drops the oldest."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity

    def get(self, key: Hashable, default: Any = None) -> Any:
        if key not in self:
            return default
        self.move_to_end(key)
        return self[key]

    def __setitem__(self, key: Hashable, value: float) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.capacity:
            self.popitem(last=False)


def sequential(cache: MutableMapping[Hashable, float], keys, times, ttl, p_true, p_false, u_true, u_false):
    """One access at a time, in time order (ties in stream order), against `cache` (key -> write time):
    a found, fresh entry is a hit when the true-hit draw says so; otherwise a drawn false hit serves a
    wrong answer and stores nothing; otherwise the answer is written (single-flight)."""
    true_hit = np.zeros(len(keys), dtype=bool)
    false_hit = np.zeros(len(keys), dtype=bool)
    for i in np.argsort(times, kind="stable"):
        key = int(keys[i]) if keys[i] >= 0 else ("once", int(i))
        written = cache.get(key)
        if written is not None and times[i] - written < ttl and u_true[i] < p_true:
            true_hit[i] = True
        elif u_false[i] < p_false:
            false_hit[i] = True
        else:
            cache[key] = float(times[i])
    return true_hit, false_hit


@settings(max_examples=400, deadline=None)
@given(
    data=st.lists(st.tuples(st.integers(-1, 8), st.integers(0, 300)), min_size=1, max_size=90),
    capacity=st.integers(1, 10),
    ttl=st.sampled_from([5.0, 40.0, 1e6]),
    p_true=st.sampled_from([1.0, 0.7, 0.0]),
    p_false=st.sampled_from([0.0, 0.3]),
    seed=st.integers(0, 2**32 - 1),
)
def test_lookup_matches_a_sequential_lru(data, capacity, ttl, p_true, p_false, seed):
    keys = np.array([k for k, _ in data], dtype=np.int64)
    times = np.array([t for _, t in data], dtype=np.float64)  # unsorted, with ties
    rng = np.random.default_rng(seed)
    u_true, u_false = rng.random(keys.size), rng.random(keys.size)
    fast = lookup(keys, times, ttl, capacity, p_true, p_false, u_true, u_false)
    expected = sequential(OrderedLru(capacity), keys, times, ttl, p_true, p_false, u_true, u_false)
    assert np.array_equal(fast.true_hit, expected[0])
    assert np.array_equal(fast.false_hit, expected[1])


def test_an_exact_cache_hits_repeats_within_the_ttl_only() -> None:
    keys = np.array([7, 7, 7, 7])
    times = np.array([0.0, 10.0, 100.0, 105.0])
    hits = lookup(keys, times, 50.0, 10, 1.0, 0.0, np.zeros(4), np.ones(4))
    # 0 writes; 10 hits; 100 is past the TTL of the write at 0, so it misses and writes; 105 hits.
    assert hits.true_hit.tolist() == [False, True, False, True]


def test_a_full_cache_drops_the_least_recently_used_key() -> None:
    keys = np.array([1, 2, 1, 3, 2, 1])
    times = np.arange(6.0)
    hits = lookup(keys, times, 1e6, 2, 1.0, 0.0, np.zeros(6), np.ones(6))
    # Two entries: 3 pushes out 2 (1 was used since), so 2 misses and pushes out 1, which misses too.
    assert hits.true_hit.tolist() == [False, False, True, False, False, False]


CAPACITIES = [100, 300, 1000, 2000, 10_000, None]  # None: more than there are keys
MAU = 12_000


def _prompts_with_caches(capacity: int) -> Any:
    """The seed story's prompts with exact and semantic caches of `capacity` entries."""
    table = {
        "prompts": {"catalog_size": 20_000, "zipf_exponent": 1.05, "repeat_share": 0.25},
        "cache": {
            "exact": {"enabled": True, "capacity": capacity},
            "semantic": {"enabled": True, "threshold": 0.85, "capacity": capacity},
        },
    }
    return scenario_from(table)[0]


@pytest.fixture(scope="module")
def zipf_traffic() -> Any:
    """Five days of the seed story's prompts at 12,000 users (~16k a day): Zipf repeats and paraphrases,
    one-off prompts, sessions spread by the default diurnal profile."""
    return traffic_module.generate(_prompts_with_caches(1), MAU, 5, streams_for(7, MAU, 0))


def _cachetools_layers(scenario: Any, traffic: Any, capacity: int) -> tuple[np.ndarray, ...]:
    """Exact hits, then the semantic layer's true and false hits among exact misses, from cachetools."""
    n = traffic.requests
    draws = streams_for(7, MAU, 0).cache.random((3, n))  # the draws cache_layers makes
    exact, _ = sequential(
        LRUCache(capacity),
        traffic.exact_key,
        traffic.t,
        scenario.cache.exact.ttl_s,
        1.0,
        0.0,
        draws[0],
        np.ones(n),
    )
    rows = np.flatnonzero(~exact)
    p_true, p_false = semantic_rates(scenario)
    true_hit, false_hit = sequential(
        LRUCache(capacity),
        traffic.cluster[rows],
        traffic.t[rows],
        scenario.cache.semantic.ttl_s,
        p_true,
        p_false,
        draws[1][rows],
        draws[2][rows],
    )
    return exact, rows, true_hit, false_hit


@pytest.mark.parametrize("capacity", CAPACITIES, ids=[str(c or "unbounded") for c in CAPACITIES])
def test_hit_rates_match_cachetools_lru_on_zipf_traffic_with_a_diurnal_peak(
    zipf_traffic: Any, capacity: int | None
) -> None:
    size = capacity or zipf_traffic.requests + 1
    scenario = _prompts_with_caches(size)
    exact, semantic, _ = cache_layers(scenario, zipf_traffic, streams_for(7, MAU, 0).cache)
    expected_exact, rows, true_hit, false_hit = _cachetools_layers(scenario, zipf_traffic, size)
    assert abs(exact.mean() - expected_exact.mean()) < 0.005  # the aim; in fact every access agrees
    assert np.array_equal(exact, expected_exact)
    assert np.array_equal(semantic.true_hit[rows], true_hit)
    assert np.array_equal(semantic.false_hit[rows], false_hit)


def test_capacity_binds_on_that_traffic_from_the_smallest_to_the_largest(zipf_traffic: Any) -> None:
    """Else the comparison above would not test capacity at all."""
    small, large, unbounded = (
        _cachetools_layers(_prompts_with_caches(size), zipf_traffic, size)[0].mean()
        for size in (100, 10_000, zipf_traffic.requests + 1)
    )
    assert small < 0.5 * unbounded
    assert large < unbounded


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.integers(0, 70), min_size=1, max_size=60),
    queries=st.lists(st.tuples(st.integers(0, 60), st.integers(0, 60), st.integers(0, 80)), max_size=20),
)
def test_wavelet_counts_values_below_a_bound_in_a_range(values, queries):
    array = np.array(values, dtype=np.int64)
    lo = np.array([min(a, b, len(values)) for a, b, _ in queries], dtype=np.int64)
    hi = np.array([min(max(a, b), len(values)) for a, b, _ in queries], dtype=np.int64)
    bound = np.array([c for _, _, c in queries], dtype=np.int64)
    counts = WaveletMatrix(array).count_below(lo, hi, bound)
    assert counts.tolist() == [int((array[a:b] < c).sum()) for a, b, c in zip(lo, hi, bound, strict=True)]
