"""Cache layers as pure, vectorized functions of the access stream.

Model (the per-request reference in sim/model/reference.py implements the same rules one request at a time):
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
    per_key, one_offs = _accesses_per_key(keys)
    counts, keys_with_count = np.unique(per_key, return_counts=True)
    rates = counts / duration_s
    one_off_rate = one_offs / duration_s

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


def _accesses_per_key(keys: np.ndarray) -> tuple[np.ndarray, int]:
    """Accesses of each key that has any (in key order), and the number of one-off accesses (key < 0).

    A key space no larger than a few times the accesses (a catalog) is counted with one bincount
    instead of the sort np.unique makes.
    """
    keyed = keys[keys >= 0]
    one_offs = keys.size - keyed.size
    if int(keyed.max(initial=0)) < 4 * keyed.size + 2**16:
        per_key = np.bincount(keyed)
        return per_key[per_key > 0], one_offs
    _, per_key = np.unique(keyed, return_counts=True)
    return per_key, one_offs


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
    by_key, key_sorted = _by_key_then_time(keys[keyed], times[keyed])
    order = keyed[by_key]
    t = times[order]
    first = np.r_[True, key_sorted[1:] != key_sorted[:-1]]
    group = np.cumsum(first) - 1  # each access's key, numbered in sorted order
    starts = np.flatnonzero(first)  # where each key's accesses start
    gap = np.r_[NEVER, np.diff(t)]
    gap[first] = NEVER
    # Gathering draws in key order is costly (random access): skipped when they decide nothing, as in
    # an exact cache (a valid entry is always found, no false hits).
    any_false = bool(might_false.any())
    false_sorted = might_false[order] if any_false else np.zeros(order.size, dtype=bool)
    missed = np.zeros(order.size, dtype=bool)  # finds nothing although a valid entry is there
    if true_hit <= float(u_true.max(initial=0.0)):
        missed = u_true[order] >= true_hit
    # A write happens at an access that finds no valid entry (A) or that fails to find the one there (C).
    can_write = ~false_sorted
    must_write = can_write & ((gap >= keep_s) | missed)
    writes = _write_chain(t, group, starts, ttl_s, can_write, must_write)
    last_write = np.maximum.accumulate(np.where(writes, np.arange(order.size), -1))
    has_entry = (last_write >= starts[group]) & ~writes
    age = t - t[np.maximum(last_write, 0)]
    eligible = has_entry & (age < ttl_s) & (gap < keep_s)
    hit = eligible & ~missed
    result_true[order] = hit
    if any_false:
        result_false[order] = ~hit & ~writes & false_sorted
    return LayerHits(result_true, result_false)


def _write_chain(
    t: np.ndarray,
    group: np.ndarray,
    starts: np.ndarray,
    ttl_s: float,
    can_write: np.ndarray,
    must_write: np.ndarray,
) -> np.ndarray:
    """Mark the accesses that write, in (key, time) order (`group`: each access's key, numbered;
    `starts`: where each key's accesses begin).

    A key's first write is its first access that can write. After a write at w, the next write is the
    earlier of: the next access that must write (its lookup failed whatever the entry), and the first
    access at or after w + ttl that can write (the entry expired). So every must-write access after the
    first write is a write, and only the expiry successors need following: one numpy step per run of
    expiries between two must-writes, over all keys at once. Successors are looked up for the writes
    only (a small share of the accesses, each one once).
    """
    n = t.size
    ends = np.append(starts[1:], n)  # one past each key's last access
    next_can = np.append(_next_true(can_write), n)  # one past the end: "no such access"
    next_must = np.append(_next_true(must_write), n)
    span = float(t.max() - t.min()) + ttl_s + 1.0
    position = group * span + (t - t.min())  # keeps keys apart in one sorted array
    opening = next_can[starts]
    opening = opening[opening < ends]
    writes = must_write.copy()
    writes[opening] = True
    frontier = np.flatnonzero(writes)
    while frontier.size:
        # The write that would follow each one by expiry (n: none in its key) ...
        by_expiry = next_can[np.searchsorted(position, position[frontier] + ttl_s, side="left")]
        by_expiry = np.where(by_expiry < ends[group[frontier]], by_expiry, n)
        # ... is one unless the next must-write comes first.
        frontier = by_expiry[by_expiry < next_must[frontier + 1]]
        writes[frontier] = True
    return writes


MIN_TIME_BITS = 20  # below this (very many distinct keys), ties would be common: argsort instead


def _by_key_then_time(keys: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort order by key, then time, then position (an exact, stable order), and the keys in that order
    (or their ranks: equal keys stay equal, which is all the caller asks of them).

    One int64 per access packs key, quantized time and position; a plain sort of those (several times
    faster than an argsort) gives the order in its low bits. Accesses of a key that fall in the same time
    step are put in exact time order afterwards (there are few).
    """
    if keys.size and int(keys.max()) >= 2**31:
        keys = np.unique(keys, return_inverse=True)[1]
    key_bits = max(int(keys.max(initial=0)).bit_length(), 1)
    index_bits = max(int(keys.size - 1).bit_length(), 1)
    time_bits = 63 - key_bits - index_bits
    if time_bits < MIN_TIME_BITS:
        return _argsort_by_key_then_time(keys, times, key_bits)
    packed = np.sort(_pack_key_time(keys, times, time_bits, index_bits))
    order = packed & ((1 << index_bits) - 1)
    _order_ties_by_time(packed >> index_bits, order, times)
    return order, packed >> (time_bits + index_bits)


def _argsort_by_key_then_time(
    keys: np.ndarray, times: np.ndarray, key_bits: int
) -> tuple[np.ndarray, np.ndarray]:
    """The same order by an argsort of packed key and time; an exact lexsort when two of them tie."""
    packed = _pack_key_time(keys, times, 63 - key_bits, 0)
    order = np.argsort(packed)
    ordered = packed[order]
    if np.any(ordered[1:] == ordered[:-1]):
        order = np.lexsort((np.arange(keys.size), times, keys))
    return order, keys[order]


def _pack_key_time(keys: np.ndarray, times: np.ndarray, time_bits: int, index_bits: int) -> np.ndarray:
    """One int64 per access that sorts by key, then time, then position.

    The key takes the high bits, the position (when index_bits > 0) the low ones, and the time the
    `time_bits` between, quantized as finely as they allow.
    """
    start = float(times.min(initial=0.0))
    quantum = (float(times.max(initial=0.0)) - start + 1.0) / 2.0 ** (time_bits - 1)
    packed: np.ndarray = ((times - start) / quantum).astype(np.int64)
    packed <<= index_bits
    packed |= keys.astype(np.int64) << (time_bits + index_bits)
    if index_bits:
        packed |= np.arange(keys.size, dtype=np.int64)
    return packed


def _order_ties_by_time(step: np.ndarray, order: np.ndarray, times: np.ndarray) -> None:
    """Within each run of equal `step` (key and time step, in sorted order), sort `order` in place by
    exact time, then position."""
    tie = step[1:] == step[:-1]
    if not tie.any():
        return
    tied = np.flatnonzero(np.r_[tie, False] | np.r_[False, tie])
    run = np.cumsum(~np.r_[False, tie][tied])  # a new run wherever an access does not tie the last
    members = order[tied]
    order[tied] = members[np.lexsort((members, times[members], run))]


def _next_true(mask: np.ndarray) -> np.ndarray:
    """For each index, the smallest index >= it where mask is True (len(mask) if none)."""
    n = mask.size
    candidates = np.where(mask, np.arange(n), n)
    return np.minimum.accumulate(candidates[::-1])[::-1]
