"""Scenarios and draws the traffic-block tests share: a conversation window long sessions reach, and the
engine's per-request draws as engine.simulate makes them."""

from __future__ import annotations

from typing import Literal

import msgspec
import numpy as np

from sim.model.randomness import streams_for
from sim.model.scenario import Scenario
from sim.model.traffic_blocks import engine_draws


def at_a_small_limit(scenario: Scenario, at_limit: Literal["truncate", "summarize"]) -> Scenario:
    """The scenario's context with a 4,000-token window: long sessions reach it."""
    context = msgspec.structs.replace(
        scenario.prompts.context, max_tokens=4000, at_limit=at_limit, summary_tokens=300
    )
    return msgspec.structs.replace(
        scenario, prompts=msgspec.structs.replace(scenario.prompts, context=context)
    )


def engine_uniforms(scenario: Scenario, mau: int, seed: int, requests: int) -> dict[str, np.ndarray]:
    """The draws engine.simulate makes, by name: the router's row, then the cache stream's three rows."""
    streams = streams_for(seed, mau, 0)
    u_exact, u_true, u_false = streams.cache.random((3, requests))
    every = {
        "u_router": streams.router.random(requests),
        "u_exact": u_exact,
        "u_true": u_true,
        "u_false": u_false,
    }
    return {name: every[name] for name in engine_draws(scenario)}
