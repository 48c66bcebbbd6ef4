"""The router: which model answers each request."""

from __future__ import annotations

import numpy as np

from sim.model.codes import Route
from sim.model.scenario import Router


def route(router: Router, hard: np.ndarray, u: np.ndarray) -> np.ndarray:
    """A Route per request (int64): the cheap model (or the only one), or the expensive model.

    The classifier is what an eval set measured: it sends `hard_to_expensive` of the hard requests and
    `easy_to_expensive` of the easy ones to the expensive model.
    """
    if not router.enabled:
        return np.full(hard.size, Route.CHEAP, dtype=np.int64)
    to_expensive = np.where(hard, u < router.hard_to_expensive, u < router.easy_to_expensive)
    routes: np.ndarray = np.where(to_expensive, Route.EXPENSIVE, Route.CHEAP).astype(np.int64, copy=False)
    return routes


def cheap_share(router: Router, hard_share: float) -> float:
    """Expected share of requests the router sends to the cheap model."""
    if not router.enabled:
        return 1.0
    expensive = hard_share * router.hard_to_expensive + (1 - hard_share) * router.easy_to_expensive
    return 1.0 - expensive
