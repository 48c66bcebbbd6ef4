"""Looking up many ids in an ascending array of ids, fast when the ids looked up come in no order.

`np.searchsorted` walks a binary search from the top for every key; for keys in random order each search
jumps across the whole array, a cache miss at almost every level. Searched in ascending order, the keys
go down neighbouring paths that stay in the cache (numpy also starts each search where the last one
ended). So the keys are sorted first and their places put back in the caller's order. Measured here for
1.5M random keys into 2M ascending ids: 1.14 s as they come, 0.15 s sorted first (sort included). The
day-at-a-time engine looks its calls and requests up this way (sim/model/day_loop.py): their ids are
global to the run, the arrays it searches are the day's.
"""

from __future__ import annotations

import numpy as np

_SORT_FROM = 4096  # fewer keys than this: the search alone is as fast as sorting first


def positions(ascending: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """`np.searchsorted(ascending, keys)` (the left side), the same positions, in the order of `keys`."""
    if keys.size < _SORT_FROM or bool(np.all(keys[1:] >= keys[:-1])):
        return np.searchsorted(ascending, keys)
    order = np.argsort(keys)
    at = np.empty(keys.size, dtype=np.intp)
    at[order] = np.searchsorted(ascending, keys[order])
    return at


def contains(ascending: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Whether each key is in `ascending` (an ascending array): `np.isin(keys, ascending)`."""
    if not ascending.size:
        return np.zeros(keys.size, dtype=bool)
    at = positions(ascending, keys)
    found = at < ascending.size
    found[found] = ascending[at[found]] == keys[found]
    return found
