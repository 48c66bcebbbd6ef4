"""Streaming: what a failed attempt costs in time and tokens, with and without it.

Without streaming the client sees nothing until the end: a bad completion is paid in full before it can
be judged, and a stalled call holds the client until the timeout (the provider usually goes on generating
and bills it). With streaming, a bad completion is judged after `detect_bad_after_tokens` and aborted,
and a stall shows as missing tokens and is cut after `stall_detect_s`, billing what was streamed so far.
"""

from __future__ import annotations

import numpy as np

from sim.model.codes import Outcome
from sim.model.scenario import Streaming


def apply_failures(
    streaming: Streaming,
    ttft_s: np.ndarray,
    tokens_per_s: np.ndarray,
    timeout_s: np.ndarray,
    outcome: np.ndarray,
    output_tokens: np.ndarray,
    stall_share: np.ndarray,
    duration: np.ndarray,
    billed_output: np.ndarray,
) -> None:
    """Set duration and billed output tokens of bad and stalled attempts, in place (arrays per attempt)."""
    bad = outcome == Outcome.BAD
    stalled = outcome == Outcome.TIMEOUT
    if streaming.enabled:
        seen = np.minimum(output_tokens, streaming.detect_bad_after_tokens)
        duration[bad] = ttft_s[bad] + seen[bad] / tokens_per_s[bad]
        billed_output[bad] = seen[bad]
        duration[stalled] = streaming.stall_detect_s
        billed_output[stalled] = np.floor(stall_share[stalled] * output_tokens[stalled]).astype(np.int64)
    else:
        duration[stalled] = timeout_s[stalled]


def stream_aborts(streaming: Streaming, outcome: np.ndarray) -> int:
    """Attempts that streaming cut short: bad completions aborted early and stalls cut."""
    if not streaming.enabled:
        return 0
    return int(np.count_nonzero((outcome == Outcome.BAD) | (outcome == Outcome.TIMEOUT)))
