"""Retry policies: what follows an attempt that did not give an answer.

- naive: `max_retries` retries on anything (rate limits included), backoff base x 2^n, every attempt billed
  as the provider bills it.
- sdk-default: the OpenAI and Anthropic SDK defaults: 2 retries on 408/409/429/5xx, backoff
  min(0.5 s x 2^n, 8 s) minus up to 25% jitter.
- cost-aware: one retry on a transient error or stall; never on a rate limit: the user sees a "we're a
  little slow" fallback and the call joins the client's queue, which sends it when a rate window has room
  for it, first come, first served, or fails it after `queue_windows` windows (sim/model/queue.py).
A bad completion is regenerated once under every policy; that is not a retry.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.model.codes import Action, Outcome
from sim.model.scenario import Retry

RATE_WINDOW_S = 60.0


@dataclass(frozen=True, slots=True)
class FollowUp:
    """Per finished attempt: what happens next (an Action, int8) and when."""

    action: np.ndarray
    next_t: np.ndarray


def retry_limit(retry: Retry) -> int:
    """How many retries a call may use under the policy."""
    return {"naive": retry.max_retries, "sdk-default": 2, "cost-aware": 1}[retry.policy]


def uses_jitter(retry: Retry) -> bool:
    """Does the policy's backoff read the jitter draw? (Other policies need not draw it.)"""
    return retry.policy == "sdk-default"


def backoff_s(retry: Retry, retries_used: np.ndarray, jitter: np.ndarray) -> np.ndarray:
    """Wait before retry number retries_used + 1."""
    if retry.policy == "sdk-default":
        return np.minimum(0.5 * 2.0**retries_used, 8.0) * (1.0 - 0.25 * jitter)
    return retry.backoff_base_s * 2.0**retries_used


def follow_up(
    retry: Retry,
    outcome: np.ndarray,
    started_at: np.ndarray,
    duration_s: np.ndarray,
    retries_used: np.ndarray,
    jitter: np.ndarray,
) -> FollowUp:
    """Decide the next step for each attempt (vectorized): an Action per Outcome.

    A call the policy queues (cost-aware, rate limited) is due at the start of the next window here; the
    client's queue decides when it really goes, or that it gives up.
    """
    transient = (outcome == Outcome.ERROR) | (outcome == Outcome.TIMEOUT)
    limited = outcome == Outcome.RATE_LIMITED
    may_retry = retries_used < retry_limit(retry)
    if retry.policy == "cost-aware":
        retry_now = transient & may_retry
        queue = limited
    else:
        retry_now = (transient | limited) & may_retry
        queue = np.zeros(outcome.size, dtype=bool)
    action = np.full(outcome.size, Action.FAILED, dtype=np.int8)
    action[(outcome == Outcome.OK) | (outcome == Outcome.BAD_SERVED)] = Action.DONE
    action[outcome == Outcome.BAD] = Action.REGENERATE
    action[retry_now] = Action.RETRY
    action[queue] = Action.QUEUE
    # Most attempts finish for good: the waits are worked out only for those that retry or queue.
    next_t = started_at + duration_s
    retrying = np.flatnonzero(action == Action.RETRY)
    next_t[retrying] += backoff_s(retry, retries_used[retrying], jitter[retrying])
    queueing = np.flatnonzero(action == Action.QUEUE)  # cost-aware only: to the end of the window it hit
    next_t[queueing] = (np.floor(started_at[queueing] / RATE_WINDOW_S) + 1.0) * RATE_WINDOW_S
    return FollowUp(action, next_t)
