"""A run's usage rows in compact pieces: what the forecast DB's `usage` table is written from.

One row per provider attempt, one per request a cache layer answered, one per deterministic chain step
of a request whose fragment was cached (sim/io/forecast_db.py turns them into the table's columns). The
whole-run engine makes them at once (`of_run`); the day engine (sim/model/day_loop.py) hands them out a
day at a time -- a tick's attempts, the requests it finished -- or, with a cap, a block of users at a time
after the cap (sim/model/cap_pass.py). Over a run the pieces hold the same rows, in another order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.model.codes import CACHE_ANSWERS
from sim.model.run import RunResult
from sim.model.traffic import Traffic

# What a usage row reads of an attempt (the AttemptLog's columns of the same names).
USAGE_ATTEMPT_COLUMNS = (
    "t",
    "model",
    "billed_input",
    "billed_output",
    "billed_cached",
    "billed_write",
    "outcome",
    "cost_nanos",
)


@dataclass(frozen=True, slots=True)
class UsageChunk:
    """Some usage rows of a run, compact. `models` names the model codes (a cap may add its degrade model).

    attempts: one row each, `attempt_user` its request's user, `attempts` the USAGE_ATTEMPT_COLUMNS;
    answered: requests a cache layer answered (user, arrival t, routed model, Served code);
    fragments: one row per deterministic call of a request with a fragment hit (user, t, routed model).
    """

    models: tuple[str, ...]
    attempt_user: np.ndarray
    attempts: dict[str, np.ndarray]
    answered_user: np.ndarray
    answered_t: np.ndarray
    answered_model: np.ndarray
    answered_served: np.ndarray
    fragment_user: np.ndarray
    fragment_t: np.ndarray
    fragment_model: np.ndarray

    @property
    def rows(self) -> int:
        """How many usage rows the chunk holds."""
        return self.attempt_user.size + self.answered_user.size + self.fragment_user.size


def of_run(run: RunResult) -> UsageChunk:
    """A whole run's usage rows (as the run is: capped when the run was)."""
    traffic, log = run.traffic, run.attempts
    attempt_request = traffic.call_request[log.column("call").astype(np.int64)]
    return of_requests(
        run.models,
        traffic.user[attempt_request],
        {name: log.column(name) for name in USAGE_ATTEMPT_COLUMNS},
        traffic.user,
        traffic.t,
        run.request_model,
        run.served,
        fragment_calls(traffic, run.fragment_hit),
    )


def of_requests(
    models: tuple[str, ...],
    attempt_user: np.ndarray,
    attempts: dict[str, np.ndarray],
    user: np.ndarray,
    t: np.ndarray,
    request_model: np.ndarray,
    served: np.ndarray,
    fragments: np.ndarray,
) -> UsageChunk:
    """Usage rows of some attempts and of some finished requests (one value each in `user` .. `served`;
    `fragments`: each request's count of cached fragment calls, `fragment_calls`)."""
    answered = np.flatnonzero(np.isin(served, CACHE_ANSWERS))
    fragment = np.repeat(np.arange(user.size), fragments)
    return UsageChunk(
        models=models,
        attempt_user=attempt_user,
        attempts=attempts,
        answered_user=user[answered],
        answered_t=t[answered],
        answered_model=request_model[answered],
        answered_served=served[answered],
        fragment_user=user[fragment],
        fragment_t=t[fragment],
        fragment_model=request_model[fragment],
    )


def fragment_calls(traffic: Traffic, fragment_hit: np.ndarray) -> np.ndarray:
    """Per request of `traffic`: how many of its deterministic calls the fragment cache answered."""
    hit = traffic.call_deterministic & fragment_hit[traffic.call_request]
    counts = np.bincount(traffic.call_request[hit], minlength=traffic.requests)
    return counts.astype(np.int32)  # carried per open request by the day loop: a few chain steps each
