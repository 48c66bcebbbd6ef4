"""The order a cache layer serves its accesses in (sim/model/policies/access_order.py)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.model.policies.access_order import by_time


def served_order(times: np.ndarray) -> np.ndarray:
    """The reference: by time, ties in stream order."""
    return np.lexsort((np.arange(times.size), times))


@settings(max_examples=200, deadline=None)
@given(
    head=st.lists(st.integers(0, 30), max_size=60).map(sorted),
    rest=st.lists(st.integers(0, 40), max_size=60),
    scale=st.sampled_from([1.0, 0.25, 1e5]),
)
def test_a_stream_whose_head_is_already_in_order_is_ordered_as_a_full_sort_would(head, rest, scale):
    """A chunked run's stream: a head in time order (the carried history), then accesses in any order --
    later, tied with the head's last, or earlier than some of it (the head is then only partly kept)."""
    times = np.array(head + rest, dtype=np.float64) * scale
    expected = served_order(times)
    assert np.array_equal(by_time(times), expected)


def test_ties_between_the_head_and_the_rest_go_in_stream_order() -> None:
    times = np.array([1.0, 2.0, 2.0, 5.0, 2.0, 1.5, 2.0])
    assert by_time(times).tolist() == [0, 5, 1, 2, 4, 6, 3]
    assert by_time(np.array([3.0, 3.0, 3.0])).tolist() == [0, 1, 2]
    assert by_time(np.zeros(0)).tolist() == []
