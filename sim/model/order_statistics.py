"""Exact percentiles of float64 values held in chunks, in bounded memory: the same figure as np.percentile
(its default "linear" method) over all the chunks joined, without ever joining them.

The values are never sorted whole. Each wanted rank is found by a radix selection over order-preserving
uint64 keys of the floats (a float's key orders as the float does: negatives below positives, -0.0 just
below 0.0): a pass over the chunks counts the keys' next 16 bits among those that share the prefix found
so far, which narrows the rank to one bucket; once a bucket holds at most `gather_limit` values, one more
pass gathers them and np.partition picks the rank. Four passes at most, one chunk's keys at a time.

Memory: one chunk's values and keys, 65,536 counters, and at most `gather_limit` gathered values (8 bytes
each) -- whatever the total. The chunks are read again on each pass, so they are handed over as a
function that yields them afresh (from memory, or from files a spill wrote).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np

Chunks = Callable[[], Iterable[np.ndarray]]

DIGIT_BITS = 16
DIGITS = 1 << DIGIT_BITS
GATHER_LIMIT = 1 << 22  # values gathered at once to pick a rank: 32 MiB
_SIGN = np.uint64(1 << 63)


def sort_keys(values: np.ndarray) -> np.ndarray:
    """Order-preserving uint64 keys of float64 values: a < b (as floats) implies key(a) < key(b)."""
    bits = np.ascontiguousarray(values, dtype=np.float64).view(np.uint64)
    negative = (bits & _SIGN) != 0
    keys: np.ndarray = np.where(negative, ~bits, bits | _SIGN)
    return keys


def from_key(key: int) -> float:
    """The float64 whose key is `key` (the inverse of sort_keys)."""
    bits = np.uint64(key)
    raw = bits & ~_SIGN if bits & _SIGN else ~bits
    return float(np.array([raw], dtype=np.uint64).view(np.float64)[0])


def order_statistics(
    chunks: Chunks, count: int, ranks: Iterable[int], gather_limit: int = GATHER_LIMIT
) -> dict[int, float]:
    """The values at `ranks` (0-based) of the `count` values in `chunks`, as if they were sorted."""
    found: dict[int, float] = {}
    for rank in sorted(set(ranks)):
        if not 0 <= rank < count:
            raise ValueError(f"rank {rank} is outside 0..{count - 1}")
        found[rank] = _select(chunks, count, rank, gather_limit)
    return found


def _select(chunks: Chunks, count: int, rank: int, gather_limit: int) -> float:
    """One rank: narrow the key prefix 16 bits a pass until its bucket is small enough to gather."""
    prefix, known_bits, in_bucket = 0, 0, count
    while in_bucket > gather_limit and known_bits < 64:
        shift = 64 - known_bits - DIGIT_BITS
        counts = np.zeros(DIGITS, dtype=np.int64)
        for chunk in chunks():
            keys = _with_prefix(sort_keys(chunk), prefix, known_bits)
            counts += np.bincount((keys >> np.uint64(shift)) & np.uint64(DIGITS - 1), minlength=DIGITS)
        below = np.cumsum(counts)
        digit = int(np.searchsorted(below, rank, side="right"))
        rank -= int(below[digit - 1]) if digit else 0
        prefix, known_bits, in_bucket = (
            (prefix << DIGIT_BITS) | digit,
            known_bits + DIGIT_BITS,
            int(counts[digit]),
        )
    if known_bits == 64:
        return from_key(prefix)
    gathered = [_with_prefix(sort_keys(chunk), prefix, known_bits) for chunk in chunks()]
    keys = np.concatenate(gathered) if gathered else np.zeros(0, dtype=np.uint64)
    return from_key(int(np.partition(keys, rank)[rank]))


def _with_prefix(keys: np.ndarray, prefix: int, known_bits: int) -> np.ndarray:
    if known_bits == 0:
        return keys
    kept: np.ndarray = keys[(keys >> np.uint64(64 - known_bits)) == np.uint64(prefix)]
    return kept


def linear_percentiles(chunks: Chunks, count: int, qs: Sequence[float]) -> list[float]:
    """np.percentile(all values, q) for each q (0..100, "linear"), to the bit, from the chunks.

    The index and interpolation repeat numpy's own steps (numpy/lib/_function_base_impl.py, `_quantile`,
    `_get_indexes`, `_lerp`) in the same float64 operations, so the result is the same double."""
    if count == 0:
        raise ValueError("percentiles of no values")
    wanted = [_neighbours(count, q / 100) for q in qs]
    values = order_statistics(chunks, count, [i for lower, upper, _ in wanted for i in (lower, upper)])
    return [_lerp(values[lower], values[upper], gamma) for lower, upper, gamma in wanted]


def _neighbours(count: int, quantile: float) -> tuple[int, int, float]:
    """numpy's "linear" virtual index (n - 1) * q, its neighbouring ranks and the interpolation weight
    (numpy measures the weight from rank -1 when the index is at or past the last value: kept, as the two
    neighbours are then the same value)."""
    virtual = (count - 1) * quantile
    if virtual >= count - 1:
        return count - 1, count - 1, virtual - (-1)
    if virtual < 0:
        return 0, 0, virtual
    lower = math.floor(virtual)
    return lower, lower + 1, virtual - lower


def _lerp(a: float, b: float, gamma: float) -> float:
    difference = b - a
    return b - difference * (1 - gamma) if gamma >= 0.5 else a + difference * gamma
