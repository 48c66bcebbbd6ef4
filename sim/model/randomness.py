"""Random numbers for a run: one SeedSequence per run, one stream per source.

Two scenarios run with one seed draw the same users, sessions, prompts and tokens (common random
numbers), so a comparison shows the levers' effect and not sampling noise. Draws for provider attempts
are counter-based (a hash of seed, call and attempt number) so that they do not depend on the order in
which the fast path or the per-request reference happens to process attempts.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, unique

import numpy as np

SOURCES = ("users", "sessions", "messages", "prompts", "tokens", "router", "cache", "attempts")


@dataclass(frozen=True, slots=True)
class Streams:
    """Independent generators, one per source of randomness, plus the key for attempt draws."""

    users: np.random.Generator
    sessions: np.random.Generator
    messages: np.random.Generator
    prompts: np.random.Generator
    tokens: np.random.Generator
    router: np.random.Generator
    cache: np.random.Generator
    attempt_key: int


def streams_for(seed: int, mau: int, replication: int) -> Streams:
    """Streams for one (seed, MAU level, replication). Scenarios are not part of the key on purpose."""
    children = np.random.SeedSequence([seed, mau, replication]).spawn(len(SOURCES))
    users, sessions, messages, prompts, tokens, router, cache = (
        np.random.default_rng(c) for c in children[:-1]
    )
    attempt_key = int(children[-1].generate_state(1, dtype=np.uint64)[0])
    return Streams(users, sessions, messages, prompts, tokens, router, cache, attempt_key)


@unique
class Draw(IntEnum):
    """Which of an attempt's counter-based draws a uniform is for: its salt in hashed_uniform, which keeps
    the draws of one (call, attempt) independent. Renumbering one changes every forecast."""

    OUTCOME = 1  # what the attempt ends in (sim/model/policies/provider.py)
    STALL = 2  # how much of a stalled answer was streamed before it was cut
    JITTER = 3  # the jitter of the retry backoff (sdk-default)
    TTFT = 4  # the spread of the time to first token


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def hashed_uniform(key: int, call_ids: np.ndarray, attempt_nos: np.ndarray, salt: Draw) -> np.ndarray:
    """Uniforms in [0, 1) that depend only on (key, call, attempt, salt): splitmix64 of their mix."""
    return hashed_uniforms(key, call_ids, attempt_nos, (salt,))[0]


def hashed_uniforms(
    key: int, call_ids: np.ndarray, attempt_nos: np.ndarray, salts: tuple[Draw, ...]
) -> list[np.ndarray]:
    """hashed_uniform for each salt in turn; the (call, attempt) part of the mix is worked out once."""
    with np.errstate(over="ignore"):
        base = np.asarray(call_ids, dtype=np.uint64) * np.uint64(0x100000001B3)
        base += np.asarray(attempt_nos, dtype=np.uint64) * _GOLDEN
        return [_splitmix_uniform(base + (np.uint64(key) ^ (np.uint64(salt) * _GOLDEN))) for salt in salts]


def _splitmix_uniform(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer, in place on x, then its top 53 bits as a uniform in [0, 1)."""
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= _MIX1
        x ^= x >> np.uint64(27)
        x *= _MIX2
        x ^= x >> np.uint64(31)
    uniform: np.ndarray = (x >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
    return uniform
