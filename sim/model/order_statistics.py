"""Exact percentiles of float64 values held in chunks, in bounded memory: the same figure as np.percentile
(its default "linear" method) over all the chunks joined, without ever joining them.

The values are never sorted whole. The wanted ranks are found by a radix selection over order-preserving
uint64 keys of the floats (a float's key orders as the float does: negatives below positives, -0.0 just
below 0.0): a pass over the chunks counts the keys' next 16 bits among those that share the prefix found
so far, which narrows each rank to one bucket; once a rank's bucket holds at most `gather_limit` values,
one more pass gathers it and np.partition picks the rank. Every wanted rank is narrowed in the same passes
(a percentile's two neighbouring ranks mostly share their buckets), so the chunks are read at most four
times to narrow and once to gather, however many ranks are wanted -- once more to gather for each further
`gather_limit` values of buckets.

Memory: one chunk's values and keys, 65,536 counters per bucket being narrowed, and at most `gather_limit`
gathered values (8 bytes each) -- whatever the total. The chunks are read again on each pass, so they are
handed over as a function that yields them afresh (from memory, or from files a spill wrote).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

Chunks = Callable[[], Iterable[np.ndarray]]

DIGIT_BITS = 16
DIGITS = 1 << DIGIT_BITS
GATHER_LIMIT = 1 << 22  # values gathered at once to pick ranks: 32 MiB
_SIGN = np.uint64(1 << 63)

# A bucket of keys: the prefix its keys share, and how many leading bits that prefix is.
Bucket = tuple[int, int]


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


@dataclass(slots=True)
class _Search:
    """One wanted rank, narrowed: the bucket it lies in, its rank there and how many values that bucket
    holds."""

    wanted: int
    rank: int
    in_bucket: int
    prefix: int = 0
    known_bits: int = 0

    @property
    def bucket(self) -> Bucket:
        return self.prefix, self.known_bits


def order_statistics(
    chunks: Chunks, count: int, ranks: Iterable[int], gather_limit: int = GATHER_LIMIT
) -> dict[int, float]:
    """The values at `ranks` (0-based) of the `count` values in `chunks`, as if they were sorted."""
    searches = []
    for rank in sorted(set(ranks)):
        if not 0 <= rank < count:
            raise ValueError(f"rank {rank} is outside 0..{count - 1}")
        searches.append(_Search(rank, rank, count))
    while narrowing := [s for s in searches if s.in_bucket > gather_limit and s.known_bits < 64]:
        _narrow(chunks, narrowing)
    found = {s.wanted: from_key(s.prefix) for s in searches if s.known_bits == 64}
    for group in _gather_groups([s for s in searches if s.known_bits < 64], gather_limit):
        found.update(_pick(chunks, group))
    return found


def _narrow(chunks: Chunks, searches: list[_Search]) -> None:
    """One pass over the chunks: the next 16 bits counted in every search's bucket, and each search moved
    to the sub-bucket holding its rank."""
    counts = {search.bucket: np.zeros(DIGITS, dtype=np.int64) for search in searches}
    for chunk in chunks():
        keys = sort_keys(chunk)
        for (prefix, known_bits), bucket_counts in counts.items():
            shift = np.uint64(64 - known_bits - DIGIT_BITS)
            digits = (_with_prefix(keys, prefix, known_bits) >> shift) & np.uint64(DIGITS - 1)
            bucket_counts += np.bincount(digits, minlength=DIGITS)
    for search in searches:
        below = np.cumsum(counts[search.bucket])
        digit = int(np.searchsorted(below, search.rank, side="right"))
        search.rank -= int(below[digit - 1]) if digit else 0
        search.in_bucket = int(counts[search.bucket][digit])
        search.prefix = (search.prefix << DIGIT_BITS) | digit
        search.known_bits += DIGIT_BITS


def _gather_groups(searches: list[_Search], gather_limit: int) -> list[list[_Search]]:
    """The searches in groups gathered in one pass each: a group's distinct buckets hold at most
    `gather_limit` values together (each bucket does on its own, or it would have been narrowed)."""
    groups: list[list[_Search]] = []
    held, bucket = gather_limit + 1, None
    for search in sorted(searches, key=lambda s: s.bucket):
        if search.bucket != bucket:
            bucket = search.bucket
            if held + search.in_bucket > gather_limit:
                groups.append([])
                held = 0
            held += search.in_bucket
        groups[-1].append(search)
    return groups


def _pick(chunks: Chunks, searches: list[_Search]) -> dict[int, float]:
    """One pass over the chunks: the keys of the searches' buckets gathered, then each search's rank
    picked among its bucket's keys."""
    gathered: dict[Bucket, list[np.ndarray]] = {search.bucket: [] for search in searches}
    for chunk in chunks():
        keys = sort_keys(chunk)
        for (prefix, known_bits), parts in gathered.items():
            parts.append(_with_prefix(keys, prefix, known_bits))
    picked: dict[int, float] = {}
    for bucket, parts in gathered.items():
        keys = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)
        here = [search for search in searches if search.bucket == bucket]
        ordered = np.partition(keys, sorted({search.rank for search in here}))
        picked.update({search.wanted: from_key(int(ordered[search.rank])) for search in here})
    return picked


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
