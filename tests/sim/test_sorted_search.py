"""The sorted-first lookups give exactly numpy's answers, for keys in any order."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.model.sorted_search import contains, positions

ids = st.lists(st.integers(-50, 5000), max_size=300).map(lambda v: np.unique(np.array(v, dtype=np.int64)))
keys = st.lists(st.integers(-60, 5100), max_size=9000).map(lambda v: np.array(v, dtype=np.int64))


@settings(max_examples=60, deadline=None)
@given(ids, keys)
def test_positions_are_searchsorted(ascending: np.ndarray, wanted: np.ndarray) -> None:
    np.testing.assert_array_equal(positions(ascending, wanted), np.searchsorted(ascending, wanted))


@settings(max_examples=60, deadline=None)
@given(ids, keys)
def test_contains_is_isin(ascending: np.ndarray, wanted: np.ndarray) -> None:
    np.testing.assert_array_equal(contains(ascending, wanted), np.isin(wanted, ascending))


def test_many_random_keys_take_the_sorted_path() -> None:
    """Past the size where keys are sorted first, the answer is still searchsorted's, in the keys' order."""
    rng = np.random.default_rng(3)
    ascending = np.sort(rng.choice(1_000_000, 50_000, replace=False))
    wanted = rng.choice(ascending, 20_000)
    wanted[::7] += 1  # some absent
    np.testing.assert_array_equal(positions(ascending, wanted), np.searchsorted(ascending, wanted))
    np.testing.assert_array_equal(contains(ascending, wanted), np.isin(wanted, ascending))


def test_many_keys_into_dense_ids_take_the_table() -> None:
    """Ids spanning few values per key are read from a table: still searchsorted's places, for keys
    present, absent, below the first id and past the last."""
    rng = np.random.default_rng(4)
    ascending = np.sort(rng.choice(np.arange(10_000, 70_000), 40_000, replace=False))
    wanted = rng.integers(9_000, 71_000, 30_000)
    assert int(ascending[-1] - ascending[0]) < 8 * wanted.size  # the table's case
    np.testing.assert_array_equal(positions(ascending, wanted), np.searchsorted(ascending, wanted))
    np.testing.assert_array_equal(contains(ascending, wanted), np.isin(wanted, ascending))
