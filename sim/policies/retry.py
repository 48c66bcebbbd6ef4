"""Retry policies: what follows an attempt that did not give an answer.

- naive: `max_retries` retries on anything (rate limits included), backoff base x 2^n, every attempt billed
  as the provider bills it.
- sdk-default: the OpenAI and Anthropic SDK defaults: 2 retries on 408/409/429/5xx, backoff
  min(0.5 s x 2^n, 8 s) minus up to 25% jitter.
- cost-aware: one retry on a transient error or stall; never on a rate limit: the user sees a "we're a
  little slow" fallback and the request waits for the next rate window (up to `queue_windows` windows).
A bad completion is regenerated once under every policy; that is not a retry.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.policies.outcomes import BAD, BAD_SERVED, ERROR, OK, RATE_LIMITED, TIMEOUT
from sim.scenario import Retry

RATE_WINDOW_S = 60.0
DONE, FAILED, RETRY, QUEUE, REGENERATE = 0, 1, 2, 3, 4


@dataclass(frozen=True, slots=True)
class FollowUp:
    """Per finished attempt: what happens next (DONE, FAILED, RETRY, QUEUE, REGENERATE) and when."""

    action: np.ndarray
    next_t: np.ndarray


def retry_limit(retry: Retry) -> int:
    """How many retries a call may use under the policy."""
    return {"naive": retry.max_retries, "sdk-default": 2, "cost-aware": 1}[retry.policy]


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
    queued: np.ndarray,
    jitter: np.ndarray,
) -> FollowUp:
    """Decide the next step for each attempt (vectorized)."""
    finished = started_at + duration_s
    transient = (outcome == ERROR) | (outcome == TIMEOUT)
    limited = outcome == RATE_LIMITED
    may_retry = retries_used < retry_limit(retry)
    if retry.policy == "cost-aware":
        retry_now = transient & may_retry
        window_end = (np.floor(started_at / RATE_WINDOW_S) + 1.0) * RATE_WINDOW_S
        queue = limited & (queued < retry.queue_windows)
    else:
        retry_now = (transient | limited) & may_retry
        window_end = finished
        queue = np.zeros(outcome.size, dtype=bool)
    action = np.full(outcome.size, FAILED, dtype=np.int64)
    action[(outcome == OK) | (outcome == BAD_SERVED)] = DONE
    action[outcome == BAD] = REGENERATE
    action[retry_now] = RETRY
    action[queue] = QUEUE
    next_t = np.where(action == RETRY, finished + backoff_s(retry, retries_used, jitter), finished)
    next_t = np.where(action == QUEUE, window_end, next_t)
    return FollowUp(action, next_t)
