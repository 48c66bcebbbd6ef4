"""The cost-quality Pareto frontier: the points no other point beats on both cost and quality."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sim.errors import ArgumentError


def pareto_frontier(costs: Sequence[float], qualities: Sequence[float]) -> list[bool]:
    """For each point, whether it is on the frontier (lower cost and higher quality are better).

    Points that tie exactly are all on it (neither dominates the other). Quadratic in the points, which
    is nothing next to simulating them, and obviously right.
    """
    cost = np.asarray(costs, dtype=np.float64)
    quality = np.asarray(qualities, dtype=np.float64)
    if cost.shape != quality.shape:
        raise ArgumentError("qualities", f"expected one per cost ({cost.size}), got {quality.size}")
    no_dearer = cost[:, None] <= cost[None, :]  # [a, b]: a costs no more than b
    no_worse = quality[:, None] >= quality[None, :]
    strictly = (cost[:, None] < cost[None, :]) | (quality[:, None] > quality[None, :])
    dominated = np.asarray((no_dearer & no_worse & strictly).any(axis=0), dtype=bool)
    return [not bool(flag) for flag in dominated]
