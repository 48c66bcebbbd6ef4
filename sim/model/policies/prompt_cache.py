"""The provider's prompt cache: which input tokens of each call are billed at the cached-input price.

Providers cache a prompt's leading tokens: a call whose prefix was sent within the cache's lifetime pays
the cached-input price for it, and a new prefix is written (at the cache_write price where the provider
bills writes; where it does not, the catalog's cache_write equals input). Each use refreshes the entry's
lifetime, and a prefix shorter than the provider's minimum is not cached at all.

Two sources of prefixes:
- a trace with block hashes (Mooncake: one id per 512-token block, prefix-chained): a call reads its
  leading blocks seen within the lifetime, up to the first one not seen, and writes its other full blocks;
- drawn traffic: `prompts.prefix_share` of each call's input is a per-user prefix (system prompt, tools,
  earlier turns), read when the same user's previous call was within the lifetime, written otherwise.

Warmth is judged on the traffic as sent by the application, one call after another, before the response
caches: the fast path and the per-request reference use the same arrays, so they agree by construction.
"""

from __future__ import annotations

import numpy as np

from sim.model.scenario import Scenario
from sim.model.traffic import Traffic

BLOCK_TOKENS = 512


def prompt_cache_tokens(
    scenario: Scenario, traffic: Traffic, call_model: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per call: (cached input tokens, cache write tokens) under its model's provider prompt cache."""
    calls = traffic.call_request.size
    cached = np.zeros(calls, dtype=np.int64)
    write = np.zeros(calls, dtype=np.int64)
    by_ttl: dict[float, tuple[np.ndarray, np.ndarray]] = {}  # models with one cache lifetime share a pass
    for index, model in enumerate(scenario.models):
        provider = scenario.provider(model)
        if not provider.prompt_cache:
            continue
        mine = call_model == index
        ttl_s = provider.prompt_cache_ttl_s
        if ttl_s not in by_ttl:
            by_ttl[ttl_s] = (
                block_prefixes(traffic, ttl_s)
                if traffic.prefix_blocks
                else shared_prefixes(traffic, scenario.prompts.prefix_share, ttl_s)
            )
        read, wrote = _at_least(*by_ttl[ttl_s], provider.prompt_cache_min_tokens)
        cached[mine], write[mine] = read[mine], wrote[mine]
    return cached, write


def shared_prefixes(traffic: Traffic, share: float, ttl_s: float) -> tuple[np.ndarray, np.ndarray]:
    """A fixed share of each call's input is its user's prefix: read if the user's previous call was within
    `ttl_s` (calls of one request come together, so a chain's later steps read), written otherwise."""
    prefix = np.floor(traffic.input_tokens * share).astype(np.int64)
    t = traffic.t[traffic.call_request]
    user = traffic.user[traffic.call_request]
    order = np.lexsort((np.arange(t.size), t, user))
    same_user = np.r_[False, user[order][1:] == user[order][:-1]]
    gap = np.r_[np.inf, np.diff(t[order])]
    warm_sorted = same_user & (gap <= ttl_s)
    warm = np.empty(t.size, dtype=bool)
    warm[order] = warm_sorted
    return np.where(warm, prefix, 0), np.where(warm, 0, prefix)


def block_prefixes(traffic: Traffic, ttl_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Walk the calls in time order: read the leading blocks used within `ttl_s`, write the other full
    blocks, and refresh every block the call sent."""
    calls = traffic.call_request.size
    read = np.zeros(calls, dtype=np.int64)
    wrote = np.zeros(calls, dtype=np.int64)
    t = traffic.t[traffic.call_request]
    last_used: dict[int, float] = {}
    inputs = traffic.input_tokens.tolist()
    for call in np.argsort(t, kind="stable").tolist():
        now = float(t[call])
        blocks = traffic.prefix_blocks[call]
        warm = 0
        for block in blocks:
            seen = last_used.get(block)
            if seen is None or now - seen > ttl_s:
                break
            warm += 1
        full = min(len(blocks), inputs[call] // BLOCK_TOKENS)
        read[call] = min(warm * BLOCK_TOKENS, inputs[call])
        wrote[call] = max(full * BLOCK_TOKENS - read[call], 0)
        for block in blocks:
            last_used[block] = now
    return read, wrote


def _at_least(read: np.ndarray, wrote: np.ndarray, min_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """A prefix under the provider's minimum is neither read nor written."""
    total = read + wrote
    small = total < min_tokens
    read = np.where(small | (read < min_tokens), 0, read)
    return read, np.where(small, 0, total - read)
