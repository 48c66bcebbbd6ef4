"""The vectorized cache layer against a plain sequential model of the same rules."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.model.policies.cache import NEVER, characteristic_time, lookup


def sequential_model(keys, times, ttl, keep, p_true, p_false, u_true, u_false):  # type: ignore[no-untyped-def]
    """One access at a time: write on a miss, TTL from the write, evicted after `keep` without use."""
    true_hit = np.zeros(len(keys), dtype=bool)
    false_hit = np.zeros(len(keys), dtype=bool)
    written: dict[int, float] = {}
    last_seen: dict[int, float] = {}
    for i, key in enumerate(keys):
        wrong = u_false[i] < p_false
        if key < 0:
            false_hit[i] = wrong
            continue
        gap = times[i] - last_seen[key] if key in last_seen else np.inf
        last_seen[key] = times[i]
        live = key in written and times[i] - written[key] < ttl and gap < keep
        if live and u_true[i] < p_true:
            true_hit[i] = True
        elif wrong:
            false_hit[i] = True
        else:
            written[key] = times[i]
    return true_hit, false_hit


@settings(max_examples=300, deadline=None)
@given(
    data=st.lists(st.tuples(st.integers(-1, 6), st.floats(0, 500)), min_size=1, max_size=80),
    ttl=st.sampled_from([5.0, 40.0, 1e6]),
    keep=st.sampled_from([NEVER, 3.0, 30.0]),
    p_true=st.sampled_from([1.0, 0.7, 0.0]),
    p_false=st.sampled_from([0.0, 0.3]),
    seed=st.integers(0, 2**32 - 1),
)
def test_lookup_matches_the_sequential_model(data, ttl, keep, p_true, p_false, seed):  # type: ignore[no-untyped-def]
    data.sort(key=lambda pair: pair[1])
    keys = np.array([k for k, _ in data], dtype=np.int64)
    times = np.array([t for _, t in data])
    rng = np.random.default_rng(seed)
    u_true, u_false = rng.random(keys.size), rng.random(keys.size)
    fast = lookup(keys, times, ttl, keep, p_true, p_false, u_true, u_false)
    true_hit, false_hit = sequential_model(keys, times, ttl, keep, p_true, p_false, u_true, u_false)
    assert np.array_equal(fast.true_hit, true_hit)
    assert np.array_equal(fast.false_hit, false_hit)


def test_an_exact_cache_hits_repeats_within_the_ttl_only() -> None:
    keys = np.array([7, 7, 7, 7])
    times = np.array([0.0, 10.0, 100.0, 105.0])
    hits = lookup(keys, times, 50.0, NEVER, 1.0, 0.0, np.zeros(4), np.ones(4))
    # 0 writes; 10 hits; 100 is past the TTL of the write at 0, so it misses and writes; 105 hits.
    assert hits.true_hit.tolist() == [False, True, False, True]


def test_characteristic_time_is_never_when_the_cache_holds_everything() -> None:
    keys = np.repeat(np.arange(100), 5)
    assert characteristic_time(keys, 1000.0, capacity=1000, ttl_s=3600.0) == NEVER


def test_characteristic_time_shrinks_with_capacity() -> None:
    rng = np.random.default_rng(1)
    keys = np.where(rng.random(50_000) < 0.5, rng.zipf(1.3, 50_000) % 5000, -1)
    times = [characteristic_time(keys, 86400.0, capacity, 86400.0) for capacity in (200, 800, 3000)]
    assert times[0] < times[1] < times[2]
