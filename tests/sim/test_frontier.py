"""The cost-quality frontier: no point on it is dominated, every dominated point is off it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sim.errors import ArgumentError
from sim.workbench.frontier import pareto_frontier

# Few distinct values, so ties in cost and in quality are common (the cases that break a naive sweep).
costs = st.sampled_from([0.01, 0.02, 0.05, 0.1, 0.2, 0.5]) | st.floats(0.0, 10.0)
qualities = st.sampled_from([70.0, 80.0, 85.0, 90.0]) | st.floats(0.0, 100.0)
points = st.lists(st.tuples(costs, qualities), max_size=40)


@given(points)
def test_frontier_is_exactly_the_undominated_points(pts: list[tuple[float, float]]) -> None:
    on = pareto_frontier([c for c, _ in pts], [q for _, q in pts])
    assert len(on) == len(pts)
    for i, (cost, quality) in enumerate(pts):
        # Written out here rather than imported, so the test does not share the code it checks.
        dominated = any(c <= cost and q >= quality and (c < cost or q > quality) for c, q in pts)
        assert on[i] == (not dominated), (pts[i], pts)


@given(points.filter(bool))
def test_the_cheapest_best_point_is_always_on_it(pts: list[tuple[float, float]]) -> None:
    on = pareto_frontier([c for c, _ in pts], [q for _, q in pts])
    cheapest = min(range(len(pts)), key=lambda i: (pts[i][0], -pts[i][1]))
    best = max(range(len(pts)), key=lambda i: (pts[i][1], -pts[i][0]))
    assert on[cheapest] and on[best]


def test_small_known_case() -> None:
    costs = [0.10, 0.05, 0.05, 0.20, 0.30, 0.05]
    quality = [90.0, 85.0, 80.0, 95.0, 94.0, 85.0]
    # 0.05/80 loses to 0.05/85; 0.30/94 loses to 0.20/95; the two 0.05/85 tie and both stay.
    assert pareto_frontier(costs, quality) == [True, True, False, True, False, True]


def test_costs_and_qualities_must_pair_up() -> None:
    with pytest.raises(ArgumentError, match=r"qualities: expected one per cost \(2\), got 1") as caught:
        pareto_frontier([1.0, 2.0], [50.0])
    assert caught.value.argument == "qualities"


def test_empty_and_single() -> None:
    assert pareto_frontier([], []) == []
    assert pareto_frontier([1.0], [50.0]) == [True]
