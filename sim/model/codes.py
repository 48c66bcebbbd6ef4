"""The small integer codes a run's arrays hold, one IntEnum per family.

Arrays keep codes compact (the attempt log's `outcome` and `action` are int8, `served` per request is
int64): build them with an explicit dtype (`np.full(n, Action.FAILED, dtype=np.int8)`) and compare them
against members (`action == Action.RETRY`); never against the bare numbers. A member is an int, so it
indexes arrays and orders like one.

NumPy takes a member for a strong int64, not for a weak Python int: comparing an int8 array with it
compares in int64. That is right, and costs a fraction of a nanosecond per element; it only matters for
arithmetic, where `int8_array + member` is int64.
"""

from __future__ import annotations

from enum import IntEnum, unique

from budget.domain.events import CacheLayer as UsageCacheLayer
from budget.domain.events import Outcome as UsageOutcome


@unique
class Outcome(IntEnum):
    """What one attempt at a model call ended in (the attempt log's `outcome`). The provider draws it
    (sim/model/policies/provider.py), streaming shortens it, the retry policy decides what follows."""

    OK = 0  # an answer, served
    ERROR = 1  # a transient provider error (5xx): billed as the provider's error_bills says
    TIMEOUT = 2  # a stall: cut at the timeout, or sooner by streaming; billed as timeout_bills says
    BAD = 3  # a bad completion: billed, not served, regenerated once (aborted early when streaming)
    RATE_LIMITED = 4  # refused by the model's rate window (a 429): a quick reply, nothing billed
    BAD_SERVED = 5  # the regenerated answer was bad too: served anyway, there is no second regeneration

    @property
    def usage_outcome(self) -> UsageOutcome:
        """The outcome a UsageRecorded event gives it: a served bad answer was billed and served like any
        other ("ok"); a bad one caught and regenerated was "aborted"."""
        return _USAGE_OUTCOMES[self]


_USAGE_OUTCOMES: dict[Outcome, UsageOutcome] = {
    Outcome.OK: "ok",
    Outcome.ERROR: "error",
    Outcome.TIMEOUT: "timeout",
    Outcome.BAD: "aborted",
    Outcome.RATE_LIMITED: "rate_limited",
    Outcome.BAD_SERVED: "ok",
}


@unique
class Action(IntEnum):
    """What follows a finished attempt (the attempt log's `action`), as the retry policy decides it
    (sim/model/policies/retry.py)."""

    DONE = 0  # the call has its answer (OK or BAD_SERVED)
    FAILED = 1  # the call gives up: its request is not answered
    RETRY = 2  # another attempt after the policy's backoff; counts against the policy's retries
    QUEUE = 3  # cost-aware, rate limited: the user sees a fallback and the call waits in the client's
    # queue until a window has room for it (sim/model/queue.py)
    REGENERATE = 4  # a bad completion is asked for again, at once; not a retry
    GIVE_UP = 5  # cost-aware, rate limited: queued like QUEUE, but no window within queue_windows has room
    # for it: the call fails when its wait runs out (the user saw the fallback first)


@unique
class Served(IntEnum):
    """How a request was answered (RunResult.served)."""

    MODEL = 0  # by a model call
    EXACT = 1  # by the exact-match cache
    SEMANTIC = 2  # by the semantic cache, with a fitting answer
    FALSE_HIT = 3  # by the semantic cache, with another question's answer
    FAILED = 4  # not at all: every attempt failed
    DENIED = 5  # not sent: the scenario's cap refused it (sim/model/caps.py)


@unique
class CapDecision(IntEnum):
    """What the scenario's cap decided for a request (CapEffect.decision)."""

    ALLOWED = 0  # also when the request needed no model call
    DEGRADED = 1  # answered by the cap's cheaper model
    DENIED = 2  # not sent


@unique
class Route(IntEnum):
    """Where the router sends a request: its model's index in Scenario.models (RunResult.request_model;
    a cap that degrades may add a third model after these two)."""

    CHEAP = 0  # the cheap model, or the only one when the router is off
    EXPENSIVE = 1  # the expensive model


@unique
class CacheLayer(IntEnum):
    """Which cache layer served a row of a forecast's usage table (NONE: a provider attempt)."""

    NONE = 0
    EXACT = 1
    SEMANTIC = 2  # a true or a false hit
    FRAGMENT = 3  # a deterministic chain step

    @property
    def usage_layer(self) -> UsageCacheLayer | None:
        """The layer as UsageRecorded.cache_layer names it (None for a provider attempt)."""
        return _USAGE_LAYERS[self]


_USAGE_LAYERS: dict[CacheLayer, UsageCacheLayer | None] = {
    CacheLayer.NONE: None,
    CacheLayer.EXACT: "exact",
    CacheLayer.SEMANTIC: "semantic",
    CacheLayer.FRAGMENT: "fragment",
}

# The layer that gave each answer a cache layer serves.
LAYER_OF_SERVED = {
    Served.EXACT: CacheLayer.EXACT,
    Served.SEMANTIC: CacheLayer.SEMANTIC,
    Served.FALSE_HIT: CacheLayer.SEMANTIC,
}
CACHE_ANSWERS = tuple(LAYER_OF_SERVED)  # the Served codes of a request answered by a cache layer
