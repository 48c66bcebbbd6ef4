"""The response cache layers of one simulated day, their states carried to the next: `engine.cache_layers`
as the streaming engine's day loop runs it.

A day's requests come in request-id order (the order ties in time are served in) with their own draws --
the cache stream's three uniforms of each request (sim/model/traffic_blocks.py `engine_draws`), the same
numbers `engine.cache_layers` draws for the whole run. Each layer is served by `lookup_chunk` behind the
state the day before left (sim/model/policies/cache_chunks.py), so the days give exactly the whole run's
hits. Carried: three LRU stacks of at most `capacity` slots each.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.model.policies.cache import LayerHits
from sim.model.policies.cache_chunks import CacheState, lookup_chunk
from sim.model.scenario import Scenario


@dataclass(frozen=True, slots=True)
class LayerStates:
    """The exact, semantic and fragment layers' LRU stacks between two days."""

    exact: CacheState
    semantic: CacheState
    fragment: CacheState

    @classmethod
    def empty(cls) -> LayerStates:
        return cls(CacheState.empty(), CacheState.empty(), CacheState.empty())


@dataclass(frozen=True, slots=True)
class DayRequests:
    """What the cache layers read of a day's requests, in request-id order (one value per request)."""

    t: np.ndarray
    exact_key: np.ndarray
    cluster: np.ndarray
    context: np.ndarray  # the chain's context, -1 for a single-call message
    u_exact: np.ndarray
    u_true: np.ndarray
    u_false: np.ndarray


def day_cache_layers(
    scenario: Scenario,
    day: DayRequests,
    p_true: float,
    p_false: float,
    states: LayerStates,
    last: bool = False,
) -> tuple[np.ndarray, LayerHits, np.ndarray, LayerStates]:
    """Exact hits, semantic hits among exact misses and fragment hits among the rest, for one day; and
    the states the next day starts from (`last`: no day with requests follows, so none; cheaper).
    `p_true`, `p_false` are `engine.semantic_rates(scenario)`."""
    layers, n = scenario.cache, day.t.size
    exact = np.zeros(n, dtype=bool)
    exact_state, semantic_state, fragment_state = states.exact, states.semantic, states.fragment
    if layers.exact.enabled:
        hits, exact_state = lookup_chunk(
            day.exact_key, day.t, layers.exact.ttl_s, layers.exact.capacity, 1.0, 0.0,
            day.u_exact, np.broadcast_to(1.0, n), exact_state, last,
        )  # fmt: skip
        exact = hits.true_hit
    true_hit, false_hit = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    if layers.semantic.enabled:
        rows = np.flatnonzero(~exact)
        hits, semantic_state = lookup_chunk(
            day.cluster[rows], day.t[rows], layers.semantic.ttl_s, layers.semantic.capacity,
            p_true, p_false, day.u_true[rows], day.u_false[rows], semantic_state, last,
        )  # fmt: skip
        true_hit[rows], false_hit[rows] = hits.true_hit, hits.false_hit
    fragment = np.zeros(n, dtype=bool)
    if layers.fragment.enabled and scenario.prompts.chains.deterministic_steps > 0:
        rows = np.flatnonzero(~(exact | true_hit | false_hit) & (day.context >= 0))
        hits, fragment_state = lookup_chunk(
            day.context[rows], day.t[rows], layers.fragment.ttl_s, layers.fragment.capacity, 1.0, 0.0,
            np.broadcast_to(0.0, rows.size), np.broadcast_to(1.0, rows.size), fragment_state, last,
        )  # fmt: skip
        fragment[rows] = hits.true_hit
    states = LayerStates(exact_state, semantic_state, fragment_state)
    return exact, LayerHits(true_hit, false_hit), fragment, states
