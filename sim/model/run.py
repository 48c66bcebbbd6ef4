"""What one run of the simulator produced: the per-request and per-attempt arrays (their codes:
sim/model/codes.py). The engine (sim/model/engine.py) makes a RunResult; caps, forecasts and writers
read it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.model.attempts import AttemptLog
from sim.model.scenario import Scenario
from sim.model.traffic import Traffic


@dataclass(frozen=True, slots=True)
class CapEffect:
    """What the cap did in one run, per request, and what the run would have been without it."""

    decision: np.ndarray  # CapDecision per request
    uncapped_cost_nanos: np.ndarray
    uncapped_quality: np.ndarray
    cap_nanos: int  # the cap of each month of the run, whole or partial
    users_replayed: int  # user-months that went through the ledger (the others could not reach the cap)


@dataclass(frozen=True, slots=True)
class RunResult:
    """Everything one run produced, per request and per attempt; forecast.py summarizes it."""

    scenario: Scenario
    seed: int
    replication: int
    traffic: Traffic
    models: tuple[str, ...]
    request_model: np.ndarray  # routed model index per request
    served: np.ndarray  # Served per request
    fragment_hit: np.ndarray  # per request: its deterministic chain steps came from the cache
    cost_nanos: np.ndarray  # int64 per request
    quality: np.ndarray  # 0-100 per request
    ttft_s: np.ndarray  # per request; NaN when it failed
    fallback: np.ndarray  # per request: the user saw the "a little slow" fallback
    attempts: AttemptLog
    rounds: int
    cap: CapEffect | None = None  # what the scenario's cap changed (sim/model/caps.py)


def calls_needing_model(
    traffic: Traffic, answered_by_cache: np.ndarray, fragment_hit: np.ndarray
) -> np.ndarray:
    """Per call: does it go to a model? Not when a cache layer answered its request, nor when it is a
    deterministic chain step whose fragment is cached. A summary of the conversation's history always
    does: the next turns carry it whatever answered this one."""
    request = traffic.call_request
    needed: np.ndarray = ~answered_by_cache[request] & ~(traffic.call_deterministic & fragment_hit[request])
    summaries = traffic.conversation.summaries if traffic.conversation is not None else 0
    if summaries:
        needed[-summaries:] = True  # summary calls come after every turn's calls
    return needed
