"""Exact LRU residency of a cache layer's accesses, vectorized: which accesses find their key gone.

An LRU cache of C entries holds the C keys touched most recently, so a key is still there at an access
exactly when fewer than C other distinct keys were touched since the key's own previous touch (its
reuse distance is below C). Expired entries are no exception: they keep their slot until they are
rewritten or pushed out, as in a plain LRU whose entries carry their write time.

A touch is a lookup that finds the key (a hit refreshes its recency) or a write. Every access touches
except a drawn false hit of the semantic layer whose key is not there: it serves another answer and
stores nothing. Whether it touches depends on residency, which depends on earlier touches; the rule is
solved by fixed-point iteration (each pass settles at least the earliest access still wrong; in practice
two or three passes settle all).

Reuse distances are counted offline. The distinct keys touched strictly between touch p and access i are
the touches in between less those whose key is touched again before i (touch-to-next-touch intervals
nested in (p, i)). Cheap bounds settle most accesses -- fewer touches in between than C: resident; C or
more one-off prompts in between: gone -- and a wavelet matrix over each touch's next-touch position
counts the nested intervals of the rest, all at once (one numpy pass per bit of the stream's length).
"""

from __future__ import annotations

import numpy as np

from sim.model.policies.access_order import by_time

# The capacity check bins time this finely: a window of one TTL spans at most this many bins plus one.
_BINS_PER_TTL = 16
_MAX_BINS = 1 << 20


def evicted(
    times: np.ndarray,
    order: np.ndarray,
    first: np.ndarray,
    tentative: np.ndarray,
    capacity: int,
    ttl_s: float,
    exact_touches: bool = False,
) -> np.ndarray:
    """For each keyed access, in `order`: is its key absent from the cache (never stored, or pushed out)?

    `times`: every access of the layer (keyed or not), in stream order; ties in time are served in that
    order. `order`: the keyed accesses (indices into `times`) sorted by key, then as served; `first`
    marks, in that order, each key's first access. `tentative` (per access of `times`): a drawn false hit,
    which touches the cache only if its key is there.

    Exact wherever residency can change an outcome: accesses within the TTL of their key's previous touch,
    and tentative ones. Elsewhere the entry has expired anyway, and it may be reported resident.
    `exact_touches`: exact for every tentative access even where its outcome does not depend on it (which
    of them touch decides the LRU order a chunked run carries on from: cache_chunks.lookup_chunk). A
    tentative access reported present must also find a write of its key before it to be present.
    """
    distinct = int(np.count_nonzero(first)) + times.size - order.size  # keys, and one-off accesses
    if distinct <= capacity:
        return first.copy()  # nothing is ever pushed out
    # A stale tentative access may be reported present here, which changes no outcome but does change
    # the LRU order: not when the caller carries that order on.
    if not (exact_touches and tentative.any()) and _most_in_a_ttl(times, ttl_s) <= capacity + 1:
        # From a fresh entry's last touch to its next access, fewer than `capacity` other keys are
        # touched: nothing that matters is ever pushed out.
        return first.copy()
    stream = _KeyedStream(times, order, first, tentative)
    tentative_sorted = tentative[order]
    resident = ~first & ~stream.surely_gone(capacity)  # the first guess
    while True:
        found = stream.resident(~tentative_sorted | resident, tentative_sorted, capacity, ttl_s)
        if np.array_equal(found[tentative_sorted], resident[tentative_sorted]):
            return ~found
        resident = found


def _most_in_a_ttl(times: np.ndarray, ttl_s: float) -> int:
    """An upper bound on the accesses in any window (t - ttl, t]: binned counts, summed over a TTL's bins."""
    if times.size == 0:
        return 0
    start, span = float(times.min()), float(times.max() - times.min())
    if not np.isfinite(ttl_s) or ttl_s >= span:
        return int(times.size)
    width = max(ttl_s / _BINS_PER_TTL, span / _MAX_BINS)
    counts = np.bincount(((times - start) / width).astype(np.int64))
    per_window = int(np.ceil(ttl_s / width)) + 1  # the bins a window of one TTL can reach into
    running = np.concatenate(([0], np.cumsum(counts)))
    if running.size <= per_window:
        return int(times.size)
    return int((running[per_window:] - running[:-per_window]).max())


class _KeyedStream:
    """A layer's keyed accesses in (key, served) order, each with its place among them in serving order
    and the one-off touches served before it (each a distinct key)."""

    def __init__(
        self, times: np.ndarray, order: np.ndarray, first: np.ndarray, tentative: np.ndarray
    ) -> None:
        served = by_time(times)  # the accesses (stream indices) in serving order
        # Each access's kind, read in serving order in one gather: 1 keyed, 0 a one-off that touches, 2 a
        # one-off that does not (a drawn false hit).
        kind = np.where(tentative, np.uint8(2), np.uint8(0))
        kind[order] = 1
        kind = kind[served]
        keyed_ranks = np.flatnonzero(kind == 1)  # the keyed accesses' places in serving order
        place_of = np.empty(times.size, dtype=np.int64)  # by stream index, for keyed accesses
        place_of[served[keyed_ranks]] = np.arange(keyed_ranks.size)
        self.place = place_of[order]  # among the keyed accesses, in serving order
        self.singles_before = _prefix_count(kind == 0)[keyed_ranks][self.place]
        self.time = times[order]
        self.first = first
        n = first.size
        self.group_start = np.maximum.accumulate(np.where(first, np.arange(n), 0))
        group_last = np.r_[np.flatnonzero(first)[1:] - 1, n - 1]
        self.group_last = group_last[np.cumsum(first) - 1]
        self.indexed: tuple[np.ndarray, _Intervals] | None = None  # an earlier pass's intervals

    def surely_gone(self, capacity: int) -> np.ndarray:
        """Keyed accesses whose key is gone whatever touches: `capacity` one-off prompts since its previous
        access (its previous touch is no later)."""
        singles = self.singles_before - np.r_[0, self.singles_before[:-1]]
        gone: np.ndarray = ~self.first & (singles >= capacity)
        return gone

    def resident(self, touch: np.ndarray, tentative: np.ndarray, capacity: int, ttl_s: float) -> np.ndarray:
        """Is each keyed access's key there when it comes, given which keyed accesses touch (`touch`)?"""
        n = touch.size
        last_touch = np.maximum.accumulate(np.where(touch, np.arange(n), -1))
        previous = np.r_[-1, last_touch[:-1]]  # the key's previous touch, when it is the same key's
        has_previous = previous >= self.group_start
        prior = np.where(has_previous, previous, 0)
        low, high = self.place[prior] + 1, self.place  # the keyed places strictly in between
        touched = np.zeros(n, dtype=bool)
        touched[self.place[touch]] = True
        singles = self.singles_before - self.singles_before[prior]  # one-off keys in between
        between = _prefix_count(touched)
        between = between[high] - between[np.minimum(low, high)] + singles
        resident: np.ndarray = has_previous & (singles < capacity)
        # Residency matters within the TTL of the previous touch (an entry is fresh at most that long)
        # and for tentative accesses (they touch or not); fewer touches than `capacity` push nothing out.
        fresh = self.time - self.time[prior] < ttl_s
        asked = np.flatnonzero(resident & (between >= capacity) & (fresh | tentative))
        if asked.size:
            nested = self._nested(touch, low[asked], high[asked])
            resident[asked] = between[asked] - nested < capacity
        return resident

    def _nested(self, touch: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
        """For each range of keyed places [low, high): its touches whose key is touched again before
        `high` (their touch-to-next-touch interval nests inside).

        The intervals are indexed once, for an earlier pass's touches; a later pass counts against that
        index and corrects for the intervals its own touches changed (a few). Only intervals shorter
        than the longest range can nest in one: the index keeps those.
        """
        n = touch.size
        next_touch = np.minimum.accumulate(np.where(touch, np.arange(n), n)[::-1])[::-1]
        following = np.r_[next_touch[1:], n]  # the next touch after each access, of any key ...
        paired = touch & (following <= self.group_last)  # ... when it is the same key's
        next_place = np.full(n, -1, dtype=np.int64)  # by place: where that key is touched next
        next_place[self.place[paired]] = self.place[following[paired]]
        longest = int((high - low).max())
        if self.indexed is None or self.indexed[1].longest < longest:
            self.indexed = (next_place, _Intervals(next_place, longest=longest))
        indexed_next, index = self.indexed
        count = index.nested(low, high)
        changed = np.flatnonzero(next_place != indexed_next)
        if changed.size:
            count += _Intervals(next_place, changed).nested(low, high)
            count -= _Intervals(indexed_next, changed).nested(low, high)
        return count


class _Intervals:
    """Touch-to-next-touch intervals by start place (`next_place[start]`, -1: none) -- those starting at
    `places` if given, those shorter than `longest` if given -- counted when nested in ranges of places."""

    def __init__(self, next_place: np.ndarray, places: np.ndarray | None = None, longest: int = -1) -> None:
        if places is None:
            places = np.flatnonzero(next_place >= 0)
        self.start = places[next_place[places] >= 0]
        end = next_place[self.start]
        if longest >= 0:
            short = end - self.start < longest
            self.start, end = self.start[short], end[short]
        self.longest = longest
        self.counts = WaveletMatrix(end)

    def nested(self, low: np.ndarray, high: np.ndarray) -> np.ndarray:
        """For each range [low, high): the intervals that start in it and end before `high`."""
        lo = np.searchsorted(self.start, low, side="left")
        hi = np.searchsorted(self.start, high, side="left")
        return self.counts.count_below(lo, hi, high)


def _prefix_count(mask: np.ndarray) -> np.ndarray:
    """counts[k] = how many of mask[:k] are True (one longer than mask)."""
    counts = np.zeros(mask.size + 1, dtype=np.int64)
    np.cumsum(mask, out=counts[1:])
    return counts


class WaveletMatrix:
    """Non-negative integers indexed for "how many of values[lo:hi] are below a bound" in one pass per bit.

    Built one bit at a time, most significant first: at each level the values whose bit is 0 move
    (stably) ahead of those whose bit is 1, and the level keeps how many zeros precede each position. A
    query's range then follows the values that share its bound's leading bits, counting the 0-side
    wherever the bound's bit is 1. Build: one numpy pass over the values per bit; query: one per bit over
    the queries.
    """

    def __init__(self, values: np.ndarray) -> None:
        top = int(values.max(initial=0))
        # int32 where it holds every position and value: half the memory traffic of int64
        self.small = np.dtype(np.int32) if max(top, values.size) < 2**31 - 1 else np.dtype(np.int64)
        self.bits = top.bit_length()
        self.levels: list[tuple[np.ndarray, int]] = []  # zeros before each position, zeros in all
        level_values = values.astype(self.small)
        next_values = np.empty_like(level_values)
        for level in range(self.bits - 1, -1, -1):
            zero = np.bitwise_and(level_values, 1 << level) == 0
            zeros_before = np.zeros(values.size + 1, dtype=self.small)
            np.cumsum(zero, out=zeros_before[1:], dtype=self.small)
            zeros = int(zeros_before[-1])
            self.levels.append((zeros_before, zeros))
            # the stable partition, written in place of the level before (no temporaries to join)
            np.compress(zero, level_values, out=next_values[:zeros])
            np.compress(~zero, level_values, out=next_values[zeros:])
            level_values, next_values = next_values, level_values
        self.size = values.size

    def count_below(self, lo: np.ndarray, hi: np.ndarray, bound: np.ndarray) -> np.ndarray:
        """For each query q: how many of values[lo[q]:hi[q]] are below bound[q]."""
        count = np.zeros(lo.size, dtype=np.int64)
        if lo.size == 0 or self.size == 0:
            return count
        above = bound >= 1 << self.bits  # above every value: the whole range counts
        count[above] = (hi - lo)[above]
        lo, hi = lo.astype(self.small), hi.astype(self.small)
        bound = np.where(above, 0, bound).astype(self.small)
        for level, (zeros_before, zeros) in zip(range(self.bits - 1, -1, -1), self.levels, strict=True):
            zeros_lo, zeros_hi = zeros_before[lo], zeros_before[hi]
            bound_one = np.bitwise_and(bound, 1 << level) != 0
            count += np.where(bound_one, zeros_hi - zeros_lo, 0)
            lo = np.where(bound_one, zeros + lo - zeros_lo, zeros_lo)
            hi = np.where(bound_one, zeros + hi - zeros_hi, zeros_hi)
        return count
