"""The provider: what one attempt at a model call does, how long it takes and what it bills.

Pure and vectorized over attempts. Streaming changes two things (sim/model/policies/streaming.py): a bad
completion is caught after a few tokens instead of after the whole answer, and a stalled call is cut at
the first sign of trouble instead of at the timeout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.model.codes import Outcome
from sim.model.policies import streaming
from sim.model.randomness import Draw, hashed_uniform, hashed_uniforms
from sim.model.scenario import Provider, Scenario

RATE_LIMIT_REPLY_S = 0.05
LOGISTIC_TO_NORMAL = 0.5513  # scales a logistic variate to unit variance: a close stand-in for a normal


@dataclass(frozen=True, slots=True)
class ProviderTable:
    """The scenario's providers as arrays indexed by model index (0 cheap / only, 1 expensive)."""

    ttft_s: np.ndarray
    ttft_sigma: np.ndarray
    tokens_per_s: np.ndarray
    error_rate: np.ndarray
    timeout_rate: np.ndarray
    bad_rate: np.ndarray
    rpm: np.ndarray
    tpm: np.ndarray
    timeout_s: np.ndarray
    error_bills: tuple[str, ...]
    timeout_bills: tuple[str, ...]

    @classmethod
    def of(cls, scenario: Scenario) -> ProviderTable:
        providers: list[Provider] = [scenario.provider(model) for model in scenario.models]

        def column(name: str) -> np.ndarray:
            return np.array([getattr(p, name) for p in providers], dtype=np.float64)

        return cls(
            ttft_s=column("ttft_ms") / 1000.0,
            ttft_sigma=column("ttft_sigma"),
            tokens_per_s=column("tokens_per_s"),
            error_rate=column("error_rate"),
            timeout_rate=column("timeout_rate"),
            bad_rate=column("bad_completion_rate"),
            rpm=column("rpm"),
            tpm=column("tpm"),
            timeout_s=column("timeout_s"),
            error_bills=tuple(p.error_bills for p in providers),
            timeout_bills=tuple(p.timeout_bills for p in providers),
        )


@dataclass(frozen=True, slots=True)
class AttemptOutcome:
    """Per admitted attempt: what happened, how long it took, what it billed, when a token was visible."""

    outcome: np.ndarray
    duration_s: np.ndarray
    first_visible_s: np.ndarray
    billed_input: np.ndarray
    billed_output: np.ndarray


def attempt(
    scenario: Scenario,
    table: ProviderTable,
    key: int,
    call: np.ndarray,
    attempt_no: np.ndarray,
    regenerated: np.ndarray,
    model: np.ndarray,
    input_tokens: np.ndarray,
    output_tokens: np.ndarray,
) -> AttemptOutcome:
    """Draw and price the attempts that the rate limiter admitted."""
    u, u_ttft = hashed_uniforms(key, call, attempt_no, (Draw.OUTCOME, Draw.TTFT))
    error_edge = table.error_rate[model]
    timeout_edge = error_edge + table.timeout_rate[model]
    bad_edge = timeout_edge + table.bad_rate[model]
    # The first edge below u decides: error, timeout, bad (a second bad answer is served, not regenerated
    # again), else ok. Assigned from the last rule to the first, so that the first one wins.
    outcome = np.full(call.size, Outcome.BAD, dtype=np.int64)
    outcome[regenerated] = Outcome.BAD_SERVED
    outcome[u >= bad_edge] = Outcome.OK
    outcome[u < timeout_edge] = Outcome.TIMEOUT
    outcome[u < error_edge] = Outcome.ERROR
    ttft = table.ttft_s[model] * ttft_factor(table.ttft_sigma[model], u_ttft)
    full = ttft + output_tokens / table.tokens_per_s[model]
    duration = full.copy()
    billed_input = input_tokens.astype(np.int64)  # token counts may come as int32: bills are int64
    billed_output = output_tokens.astype(np.int64)
    is_error = outcome == Outcome.ERROR
    duration[is_error] = ttft[is_error]
    _bill(is_error, model, table.error_bills, billed_input, billed_output)
    stall_share = np.zeros(call.size)
    stalled = outcome == Outcome.TIMEOUT
    stall_share[stalled] = hashed_uniform(key, call[stalled], attempt_no[stalled], Draw.STALL)
    streaming.apply_failures(
        scenario.streaming,
        ttft,
        table.tokens_per_s[model],
        table.timeout_s[model],
        outcome,
        output_tokens,
        stall_share,
        duration,
        billed_output,
    )
    _bill(outcome == Outcome.TIMEOUT, model, table.timeout_bills, billed_input, billed_output)
    first_visible = np.where(scenario.streaming.enabled, ttft, full)
    return AttemptOutcome(outcome, duration, first_visible, billed_input, billed_output)


def ttft_factor(sigma: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Lognormal-like multiplier with median 1 from a uniform: exp(sigma * z), z a logistic ~ N(0, 1)."""
    u = np.clip(u, 1e-12, 1 - 1e-12)
    factor: np.ndarray = np.exp(sigma * LOGISTIC_TO_NORMAL * np.log(u / (1.0 - u)))
    return factor


def _bill(
    mask: np.ndarray,
    model: np.ndarray,
    bills: tuple[str, ...],
    billed_input: np.ndarray,
    billed_output: np.ndarray,
) -> None:
    """Apply what a failed attempt bills, per model: nothing, the input only, or everything generated."""
    for index, rule in enumerate(bills):
        selected = mask & (model == index)
        if rule == "nothing":
            billed_input[selected] = 0
            billed_output[selected] = 0
        elif rule == "input":
            billed_output[selected] = 0
