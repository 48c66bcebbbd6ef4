"""The provider's prompt cache: which input tokens of each call are billed at the cached-input price.

Providers cache a prompt's leading tokens: a call whose prefix was sent within the cache's lifetime pays
the cached-input price for it, and a new prefix is written (at the cache_write price where the provider
bills writes; where it does not, the catalog's cache_write equals input). Each use refreshes the entry's
lifetime, and a prefix shorter than the provider's minimum is not cached at all.

Three sources of prefixes:
- a trace with block hashes (Mooncake: one id per 512-token block, prefix-chained): a call reads its
  leading blocks seen within the lifetime, up to the first one not seen, and writes its other full blocks;
- drawn traffic with conversation context ([prompts.context], sim/model/conversation.py): the calls of
  one epoch of a session extend each other's prompts, so a call reads what the previous call of its
  epoch sent to the same model, when that was within the lifetime; otherwise the system prompt, shared by
  every session, when any call sent it to that model within the lifetime. It writes the rest of its
  prompt, so the next turn can read it. Only calls actually sent count: a turn a response cache answered
  sent nothing, and the next turn reads what the one before it sent.
- drawn traffic without context: `prompts.prefix_share` of each call's input is a per-user prefix (system
  prompt, tools, earlier turns), read when the same user's previous call was within the lifetime, written
  otherwise. Warmth is judged on the traffic as the application would send it, before the response caches:
  the fast path and the per-request reference use the same arrays, so they agree by construction.

A call's request time stands for the time it is sent (the calls of a request come together), and the
calls of one request are sent in order: its summary, if any, then its steps.
"""

from __future__ import annotations

import numpy as np

from sim.model.conversation import Conversation
from sim.model.scenario import Scenario
from sim.model.traffic import Traffic

BLOCK_TOKENS = 512


def prompt_cache_tokens(
    scenario: Scenario, traffic: Traffic, call_model: np.ndarray, sent: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per call: (cached input tokens, cache write tokens) under its model's provider prompt cache.

    `sent` marks the calls made (none a response cache answered); traffic with conversation context needs
    it, other traffic is judged before the response caches.
    """
    calls = traffic.call_request.size
    if traffic.conversation is not None:
        assert sent is not None, "the conversation's prefixes are what was sent"
        talking = sent & ~traffic.call_deterministic
        cached = np.zeros(calls, dtype=np.int32)  # at most the context limit
        write = np.zeros(calls, dtype=np.int32)
        for index, model in enumerate(scenario.models):
            provider = scenario.provider(model)
            if provider.prompt_cache:
                mine = np.flatnonzero((call_model == index) & talking)
                ttl_s = provider.prompt_cache_ttl_s
                read, wrote = conversation_prefixes(traffic, traffic.conversation, mine, ttl_s)
                cached[mine], write[mine] = _at_least(read, wrote, provider.prompt_cache_min_tokens)
        return cached, write
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


def conversation_prefixes(
    traffic: Traffic, conversation: Conversation, calls: np.ndarray, ttl_s: float
) -> tuple[np.ndarray, np.ndarray]:
    """(read, written) input tokens of `calls`: the calls with a conversation one model's cache sees, in
    ascending id order (deterministic chain steps have none: they read and write nothing here)."""
    inputs = traffic.input_tokens[calls]  # at most the context limit
    request, epoch, shared = conversation.prefixes(traffic.call_request, calls, inputs)
    t = traffic.t[request]
    read = np.zeros(calls.size, dtype=inputs.dtype)
    # Turns' calls in id order have non-decreasing epochs, so the previous call of an epoch is the
    # previous call, when it has the same epoch.
    turns = int(np.searchsorted(calls, traffic.call_request.size - conversation.summaries))
    epoch_of, t_of = epoch[:turns], t[:turns]
    follows = np.flatnonzero((epoch_of[1:] == epoch_of[:-1]) & (t_of[1:] - t_of[:-1] <= ttl_s))
    read[follows + 1] = shared[follows]
    # A summary call (appended after every turn's call) comes last in its epoch: after its latest turn.
    if turns < calls.size:
        previous = np.searchsorted(epoch_of, epoch[turns:], side="right") - 1
        found = np.flatnonzero(previous >= 0)
        found = found[epoch_of[previous[found]] == epoch[turns:][found]]
        found = found[t[turns:][found] - t_of[previous[found]] <= ttl_s]
        read[turns + found] = shared[previous[found]]
    warm = _sent_within(t, request, traffic.call_step[calls], ttl_s)
    np.maximum(read, conversation.system_tokens, out=read, where=warm)
    np.minimum(read, inputs, out=read)
    inputs -= read  # what is written: the rest of the prompt
    return read, inputs


def _sent_within(t: np.ndarray, request: np.ndarray, step: np.ndarray, ttl_s: float) -> np.ndarray:
    """Per call, did an earlier one send the system prompt within `ttl_s` before it?

    Calls are taken in time order, and at one time by request, then step (a summary first). Exact without
    sorting them all: in time bins as wide as the lifetime, every call but a bin's first has that one
    before it, within the lifetime; a bin's first is warm when the previous bin's last was recent enough.
    """
    if not t.size:
        return np.zeros(0, dtype=bool)
    bins = (t / ttl_s).astype(np.int32)  # times are >= 0: truncation is the floor
    first = np.full(int(bins.max()) + 1, np.inf)
    last = np.full(first.size, -np.inf)
    np.minimum.at(first, bins, t)
    np.maximum.at(last, bins, t)
    opens = np.flatnonzero(t == first[bins])  # steps of one request share its time
    opens = opens[np.lexsort((step[opens], request[opens], bins[opens]))]
    leads = opens[np.r_[True, bins[opens][1:] != bins[opens][:-1]]]
    lead_bin = bins[leads]
    before = np.where(lead_bin > 0, last[np.maximum(lead_bin - 1, 0)], -np.inf)
    warm = np.ones(t.size, dtype=bool)
    warm[leads] = t[leads] - before <= ttl_s
    return warm


def shared_prefixes(traffic: Traffic, share: float, ttl_s: float) -> tuple[np.ndarray, np.ndarray]:
    """A fixed share of each call's input is its user's prefix: read if the user's previous call was within
    `ttl_s` (calls of one request come together, so a chain's later steps read), written otherwise."""
    if share == 0:
        nothing = np.zeros(traffic.call_request.size, dtype=np.int64)
        return nothing, nothing
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
