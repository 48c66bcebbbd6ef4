"""The order a cache layer serves its accesses in: by time (ties in stream order), grouped by key.

Sorting is most of a cache layer's cost, so accesses are not argsorted: one int64 per access packs key,
quantized time and position, and a plain sort of those (several times faster than an argsort) gives the
order in its low bits; accesses that fall in the same time step are then put in exact order.
"""

from __future__ import annotations

import numpy as np

MIN_TIME_BITS = 20  # below this (very many distinct keys), ties would be common: argsort instead


def by_key_then_time(keys: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


def by_time(times: np.ndarray) -> np.ndarray:
    """The order the accesses are served in: by time, ties in stream order (indices into `times`).

    A leading run already in that order and served before all the rest (a chunked run's history, which
    precedes its chunk) is kept as it is: only the rest is sorted.
    """
    head = _served_head(times)
    if head == times.size:
        return np.arange(times.size)
    rest = by_key_then_time(np.zeros(times.size - head, dtype=np.int64), times[head:])[0]
    if head == 0:
        return rest
    return np.concatenate((np.arange(head), rest + head))


def _served_head(times: np.ndarray) -> int:
    """How many leading accesses are in time order and no later than any access after them."""
    descents = times[1:] < times[:-1]
    if not descents.any():
        return int(times.size)
    run = int(np.argmax(descents)) + 1  # the leading run in time order
    # Of it, those no later than the rest: ties with a later access are served first (stream order).
    return int(np.searchsorted(times[:run], times[run:].min(), side="right"))
