"""The router: which model answers each request."""

from __future__ import annotations

import numpy as np

from sim.model.scenario import Router

CHEAP, EXPENSIVE = 0, 1


def route(router: Router, hard: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Model index per request: 0 (the cheap model, or the only one) or 1 (the expensive model).

    The classifier is what an eval set measured: it sends `hard_to_expensive` of the hard requests and
    `easy_to_expensive` of the easy ones to the expensive model.
    """
    if not router.enabled:
        return np.zeros(hard.size, dtype=np.int64)
    to_expensive = np.where(hard, u < router.hard_to_expensive, u < router.easy_to_expensive)
    return to_expensive.astype(np.int64)


def cheap_share(router: Router, hard_share: float) -> float:
    """Expected share of requests the router sends to the cheap model."""
    if not router.enabled:
        return 1.0
    expensive = hard_share * router.hard_to_expensive + (1 - hard_share) * router.easy_to_expensive
    return 1.0 - expensive
