"""Cache layers as pure, vectorized functions of the access stream.

Model (the per-request reference in sim/reference.py implements the same rules one request at a time):
- A lookup that misses stores its answer at once (single-flight: identical requests arriving while the
  answer is being made wait for it), and the entry lives `ttl_s` from that write; a hit does not extend it.
- Capacity is LRU. The fast path uses Che's approximation: an LRU cache of C entries keeps an entry for a
  characteristic time T_C after its last use, where T_C solves sum_k (1 - exp(-rate_k T_C)) = C over the
  keys' access rates (one-off keys occupy a slot for T_C each). It is exact when capacity does not bind
  and within a few percent of a true LRU when it does (Che et al. 2002; Fricker et al. 2012).
- A semantic lookup whose cluster holds a valid entry finds it with probability `true_hit`; otherwise it
  may still match something wrong with probability `false_hit` -- a wrong answer is served and nothing is
  stored. An exact cache is the special case true_hit = 1, false_hit = 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NEVER = np.inf


@dataclass(frozen=True, slots=True)
class LayerHits:
    """For each access: served a correct cached answer, or served a wrong one."""

    true_hit: np.ndarray
    false_hit: np.ndarray


def characteristic_time(keys: np.ndarray, duration_s: float, capacity: int, ttl_s: float) -> float:
    """Che's T_C for an LRU of `capacity` entries; NEVER when the cache never fills within the TTL.

    `keys` holds one entry per access (-1 for a key seen once). Entries older than the TTL are gone
    anyway, so occupancy is measured over min(T, TTL).
    """
    duration_s = max(duration_s, 1.0)
    keyed = keys[keys >= 0]
    _, per_key = np.unique(keyed, return_counts=True)
    counts, keys_with_count = np.unique(per_key, return_counts=True)
    rates = counts / duration_s
    one_off_rate = np.count_nonzero(keys < 0) / duration_s

    def occupancy(horizon: float) -> float:
        return float(np.sum(keys_with_count * -np.expm1(-rates * horizon)) + one_off_rate * horizon)

    if occupancy(ttl_s) <= capacity:
        return NEVER
    low, high = 0.0, ttl_s
    for _ in range(60):
        middle = (low + high) / 2
        if occupancy(middle) > capacity:
            high = middle
        else:
            low = middle
    return low


def lookup(
    keys: np.ndarray,
    times: np.ndarray,
    ttl_s: float,
    keep_s: float,
    true_hit: float,
    false_hit: float,
    u_true: np.ndarray,
    u_false: np.ndarray,
) -> LayerHits:
    """Which accesses (in time order) hit. `keep_s` is how long an unused entry survives eviction."""
    n = keys.size
    might_false = u_false < false_hit
    result_true = np.zeros(n, dtype=bool)
    result_false = might_false.copy()
    keyed = np.flatnonzero(keys >= 0)
    if keyed.size == 0:
        return LayerHits(result_true, result_false)
    order = keyed[_by_key_then_time(keys[keyed], times[keyed])]
    key_sorted, t = keys[order], times[order]
    first = np.r_[True, key_sorted[1:] != key_sorted[:-1]]
    group_start = np.maximum.accumulate(np.where(first, np.arange(order.size), 0))
    group_end = np.r_[np.flatnonzero(first)[1:], order.size][np.cumsum(first) - 1]
    gap = np.r_[NEVER, np.diff(t)]
    gap[first] = NEVER
    no_false = ~might_false[order]
    # A write happens at an access that finds no valid entry (A) or that fails to find the one there (C).
    can_write = no_false
    must_write = no_false & ((gap >= keep_s) | (u_true[order] >= true_hit))
    writes = _write_chain(t, first, group_end, ttl_s, can_write, must_write)
    last_write = np.maximum.accumulate(np.where(writes, np.arange(order.size), -1))
    has_entry = (last_write >= group_start) & ~writes
    age = t - t[np.maximum(last_write, 0)]
    eligible = has_entry & (age < ttl_s) & (gap < keep_s)
    hit = eligible & (u_true[order] < true_hit)
    result_true[order] = hit
    result_false[order] = ~hit & ~writes & might_false[order]
    return LayerHits(result_true, result_false)


def _write_chain(
    t: np.ndarray,
    first: np.ndarray,
    group_end: np.ndarray,
    ttl_s: float,
    can_write: np.ndarray,
    must_write: np.ndarray,
) -> np.ndarray:
    """Mark the accesses that write, in (key, time) order.

    A key's first write is its first access that can write. After a write at w, the next write is the
    earlier of: the next access that must write (its lookup failed whatever the entry), and the first
    access at or after w + ttl that can write (the entry expired). So every must-write access after the
    first write is a write, and only the expiry successors need following: one numpy step per run of
    expiries between two must-writes, over all keys at once.
    """
    n = t.size
    index = np.arange(n)
    next_can = np.append(_next_true(can_write), n)  # one past the end: "no such access"
    next_must = np.append(_next_true(must_write), n)
    span = float(t.max() - t.min()) + ttl_s + 1.0
    position = (np.cumsum(first) - 1) * span + (t - t.min())  # keeps keys apart in one sorted array
    # For every access at once: the write that would follow it by expiry, and the next must-write.
    by_expiry = next_can[np.searchsorted(position, position + ttl_s, side="left")]
    by_expiry = np.where(by_expiry < group_end, by_expiry, n)
    next_must_after = next_must[index + 1]
    starts = index[first]
    opening = next_can[starts]
    opening = opening[opening < group_end[starts]]
    writes = must_write.copy()
    writes[opening] = True
    frontier = np.flatnonzero(writes)
    while frontier.size:
        successor = by_expiry[frontier]
        frontier = successor[successor < next_must_after[frontier]]
        writes[frontier] = True
    return writes


def _by_key_then_time(keys: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Sort order by key, then time, then position (an exact, stable order).

    Usually one argsort of a packed int64 does it (three times faster than a lexsort); when two accesses
    of a key fall in the same packed time step, the exact lexsort decides.
    """
    packed = _pack_key_time(keys, times)
    order = np.argsort(packed)
    ordered = packed[order]
    if np.any(ordered[1:] == ordered[:-1]):
        order = np.lexsort((np.arange(keys.size), times, keys))
    return order


def _pack_key_time(keys: np.ndarray, times: np.ndarray) -> np.ndarray:
    """One int64 per access that sorts by key, then time.

    The key takes as many high bits as it needs (keys are ranked first if they would need more than
    31) and the time the rest, quantized as finely as they allow (about 0.1 ms for a month when keys need
    31 bits; far finer for a catalog-sized key space).
    """
    if keys.size and int(keys.max()) >= 2**31:
        keys = np.unique(keys, return_inverse=True)[1]
    key_bits = max(int(keys.max(initial=0)).bit_length(), 1)
    time_bits = 63 - key_bits
    start = float(times.min(initial=0.0))
    quantum = (float(times.max(initial=0.0)) - start + 1.0) / 2.0 ** (time_bits - 1)
    ticks = ((times - start) / quantum).astype(np.int64)
    packed: np.ndarray = (keys.astype(np.int64) << time_bits) | ticks
    return packed


def _next_true(mask: np.ndarray) -> np.ndarray:
    """For each index, the smallest index >= it where mask is True (len(mask) if none)."""
    n = mask.size
    candidates = np.where(mask, np.arange(n), n)
    return np.minimum.accumulate(candidates[::-1])[::-1]
