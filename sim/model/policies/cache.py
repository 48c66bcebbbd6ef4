"""Cache layers as pure, vectorized functions of the access stream.

Model (the per-request reference in sim/model/reference.py implements the same rules one request at a time):
- A lookup that misses stores its answer at once (single-flight: identical requests arriving while the
  answer is being made wait for it), and the entry lives `ttl_s` from that write; a hit does not extend it.
- Capacity is an exact LRU of `capacity` entries (sim/model/policies/lru.py): a key is found only if
  fewer than `capacity` other distinct keys were touched since its own previous touch -- one-off prompts
  take a slot each, and an expired entry keeps its slot until it is rewritten or pushed out. Diurnal
  peaks and bursts count as they come: residency is decided access by access, not from average rates.
- A semantic lookup whose cluster holds a valid entry finds it with probability `true_hit`; otherwise it
  may still match something wrong with probability `false_hit` -- a wrong answer is served and nothing is
  stored. An exact cache is the special case true_hit = 1, false_hit = 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.model.policies import lru
from sim.model.policies.access_order import by_key_then_time


@dataclass(frozen=True, slots=True)
class LayerHits:
    """For each access: served a correct cached answer, or served a wrong one."""

    true_hit: np.ndarray
    false_hit: np.ndarray


def lookup(
    keys: np.ndarray,
    times: np.ndarray,
    ttl_s: float,
    capacity: int,
    true_hit: float,
    false_hit: float,
    u_true: np.ndarray,
    u_false: np.ndarray,
) -> LayerHits:
    """Which accesses hit, in an LRU cache of `capacity` entries whose entries live `ttl_s` from their write.

    Accesses are in stream order (the order ties in time are served in); `keys` are -1 for a one-off.
    A whole run at once; sim/model/policies/cache_chunks.py serves it a chunk of time at a time.
    """
    return serve(keys, times, ttl_s, capacity, true_hit, false_hit, u_true, u_false, exact_touches=False)[0]


@dataclass(frozen=True, slots=True)
class Served:
    """How a layer's keyed accesses went, in (key, served) order: what a chunked run carries on from."""

    order: np.ndarray  # the keyed accesses (indices into the stream), by key, then as served
    first: np.ndarray  # each key's first access
    writes: np.ndarray  # the accesses that stored an answer
    touches: np.ndarray  # the accesses that touched the LRU (all but drawn false hits finding nothing)


def serve(
    keys: np.ndarray,
    times: np.ndarray,
    ttl_s: float,
    capacity: int,
    true_hit: float,
    false_hit: float,
    u_true: np.ndarray,
    u_false: np.ndarray,
    exact_touches: bool,
) -> tuple[LayerHits, Served]:
    """`lookup`, and how its keyed accesses went. `exact_touches`: work out exactly which drawn false hits
    touch the LRU even where no outcome depends on it (costlier; a chunked run needs it)."""
    n = keys.size
    might_false = u_false < false_hit
    result_true = np.zeros(n, dtype=bool)
    result_false = might_false.copy()
    keyed = np.flatnonzero(keys >= 0)
    if keyed.size == 0:
        nothing = np.zeros(0, dtype=bool)
        return LayerHits(result_true, result_false), Served(keyed, nothing, nothing, nothing)
    by_key, key_sorted = by_key_then_time(keys[keyed], times[keyed])
    order = keyed[by_key]
    t = times[order]
    first = np.r_[True, key_sorted[1:] != key_sorted[:-1]]
    group = np.cumsum(first) - 1  # each access's key, numbered in sorted order
    starts = np.flatnonzero(first)  # where each key's accesses start
    # Gathering draws in key order is costly (random access): skipped when they decide nothing, as in
    # an exact cache (a valid entry is always found, no false hits).
    any_false = bool(might_false.any())
    false_sorted = might_false[order] if any_false else np.zeros(order.size, dtype=bool)
    missed = np.zeros(order.size, dtype=bool)  # finds nothing although a valid entry is there
    if true_hit <= float(u_true.max(initial=0.0)):
        missed = u_true[order] >= true_hit
    # never stored or pushed out
    absent = lru.evicted(times, order, first, might_false, capacity, ttl_s, exact_touches)
    # A write happens at an access that finds no valid entry (A) or that fails to find the one there (C).
    can_write = ~false_sorted
    must_write = can_write & (absent | missed)
    writes = _write_chain(t, group, starts, ttl_s, can_write, must_write)
    last_write = np.maximum.accumulate(np.where(writes, np.arange(order.size), -1))
    written_before = last_write >= starts[group]
    has_entry = written_before & ~writes
    age = t - t[np.maximum(last_write, 0)]
    eligible = has_entry & (age < ttl_s) & ~absent
    hit = eligible & ~missed
    result_true[order] = hit
    if any_false:
        result_false[order] = ~hit & ~writes & false_sorted
    # A drawn false hit touches only a key that is there: stored before and not pushed out since.
    touches = ~false_sorted | (written_before & ~absent)
    return LayerHits(result_true, result_false), Served(order, first, writes, touches)


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


def _next_true(mask: np.ndarray) -> np.ndarray:
    """For each index, the smallest index >= it where mask is True (len(mask) if none)."""
    n = mask.size
    candidates = np.where(mask, np.arange(n), n)
    return np.minimum.accumulate(candidates[::-1])[::-1]
