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

Chunks (the streaming engine): `advance` takes the calls of a chunk of the run -- every call of the
requests of some days, in ascending call id (a day's requests are a scattered, ascending subset of the
run's; with [prompts.context] the chunk's summary calls last) -- and a `PromptCacheState` carried from
the chunks before it, and gives the same tokens the whole run would. `prompt_cache_tokens` is the run as
one chunk. It needs the chunks in time order, each holding whole requests: every call of a chunk comes
after every call of the chunks before it (days partition time; a tie across chunks would order calls by
chunk, not by request). A trace with block hashes is worked on whole
(`block_prefixes`): drawn traffic, which the streaming engine chunks, has none.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.model.scenario import Scenario
from sim.model.sorted_search import contains
from sim.model.traffic import Traffic

BLOCK_TOKENS = 512


@dataclass(frozen=True, slots=True)
class ModelCalls:
    """The calls of a chunk one prompt-caching model sees with a conversation (sent, not answered by a
    response cache, not a deterministic chain step): their positions in the chunk (ascending), their
    epochs (global request ids, sim/model/conversation.py), `shared`, the leading tokens of each one's
    prompt a later call of its epoch resends (Conversation.prefixes of these calls), and their request's
    time (float64)."""

    calls: np.ndarray
    t: np.ndarray
    epoch: np.ndarray
    shared: np.ndarray


@dataclass(frozen=True, slots=True)
class ContextColumns:
    """A chunk's conversation columns ([prompts.context]): per call its request (global id) and step; per
    model of the scenario, the calls it sees (None for a model whose provider caches no prompts). The
    chunk's last `summaries` calls are summary calls."""

    system_tokens: int
    request: np.ndarray
    step: np.ndarray
    models: tuple[ModelCalls | None, ...]
    summaries: int


@dataclass(frozen=True, slots=True)
class ChunkCalls:
    """The calls of one chunk as the prompt cache sees them, in ascending call id: per call its model's
    index in the scenario (int) and the input tokens it sends; for `prompts.prefix_share`, its request's
    time (float64) and its user; with conversation context, the `context` columns instead (their calls
    carry their times: `t` and `user` are then empty)."""

    t: np.ndarray
    model: np.ndarray
    input_tokens: np.ndarray
    user: np.ndarray
    context: ContextColumns | None = None


@dataclass(frozen=True, slots=True)
class ModelCacheState:
    """One prompt-caching model's conversation prefixes after some chunks: the bin (time // lifetime) and
    time of the latest call sent to it (None before any), and its open epochs -- ascending, each with the
    time and the `shared` tokens of its latest turn call -- only those whose latest call is within the
    lifetime of the latest call the last chunk sent with a conversation, to any model (an older one is
    cold for every later call).

    Size: O(1) plus three numbers per epoch with a call in the last lifetime of the chunk, bounded by the
    sessions live in that window (every epoch ever seen when the lifetime is infinite)."""

    last_sent: tuple[int, float] | None
    epoch: np.ndarray
    epoch_t: np.ndarray
    epoch_shared: np.ndarray


@dataclass(frozen=True, slots=True)
class PromptCacheState:
    """What the prompt cache carries from one chunk to the next.

    `user_last_t`: per user id, the time of the user's latest call (NaN: none yet), for the per-user
    prefix of `prompts.prefix_share` (every call counts, whatever its model); empty otherwise. Size: 8
    bytes per user id up to the largest seen (the MAU for drawn traffic). `models`: per model of the
    scenario, its `ModelCacheState` with conversation context when its provider caches prompts, else
    None."""

    user_last_t: np.ndarray
    models: tuple[ModelCacheState | None, ...]


def initial_state(scenario: Scenario) -> PromptCacheState:
    """The state before the run's first chunk: nothing sent yet."""
    empty = ModelCacheState(
        None, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64), np.zeros(0, dtype=np.int64)
    )
    return PromptCacheState(
        user_last_t=np.zeros(0, dtype=np.float64),
        models=tuple(empty if scenario.provider(m).prompt_cache else None for m in scenario.models),
    )


def chunk_calls(
    scenario: Scenario,
    traffic: Traffic,
    call_model: np.ndarray,
    sent: np.ndarray | None = None,
    calls: np.ndarray | None = None,
) -> ChunkCalls:
    """The prompt cache's view of `calls` (ascending call ids; every call of the run when None) of a run's
    traffic, whose calls go to models `call_model` and, with conversation context, are made where `sent`."""
    # The whole run takes the traffic's columns as they are: no copies of them.
    request = traffic.call_request if calls is None else traffic.call_request[calls]
    model = call_model if calls is None else call_model[calls]
    inputs = traffic.input_tokens if calls is None else traffic.input_tokens[calls]
    conversation = traffic.conversation
    if conversation is None:
        return ChunkCalls(traffic.t[request], model, inputs, traffic.user[request])
    assert sent is not None, "the conversation's prefixes are what was sent"
    talking = (
        sent & ~traffic.call_deterministic
        if calls is None
        else sent[calls] & ~traffic.call_deterministic[calls]
    )
    models: list[ModelCalls | None] = []
    for index, name in enumerate(scenario.models):
        if not scenario.provider(name).prompt_cache:
            models.append(None)
            continue
        mine = np.flatnonzero((model == index) & talking)
        ids = mine if calls is None else calls[mine]
        _, epoch, shared = conversation.prefixes(traffic.call_request, ids, inputs[mine])
        models.append(ModelCalls(mine, traffic.t[request[mine]], epoch, shared))
    summaries = conversation.summaries
    if calls is not None:
        summaries = model.size - int(np.searchsorted(calls, traffic.call_request.size - summaries))
    step = traffic.call_step if calls is None else traffic.call_step[calls]
    context = ContextColumns(conversation.system_tokens, request, step, tuple(models), summaries)
    nothing = np.zeros(0, dtype=np.int64)
    return ChunkCalls(nothing.astype(np.float64), model, inputs, nothing, context)


def prompt_cache_tokens(
    scenario: Scenario, traffic: Traffic, call_model: np.ndarray, sent: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per call: (cached input tokens, cache write tokens) under its model's provider prompt cache.

    `sent` marks the calls made (none a response cache answered); traffic with conversation context needs
    it, other traffic is judged before the response caches. The whole run is one chunk of `advance`.
    """
    if traffic.conversation is None and traffic.prefix_blocks:
        return _whole_trace(scenario, traffic, call_model)
    chunk = chunk_calls(scenario, traffic, call_model, sent)
    cached, write, _ = _advance(scenario, initial_state(scenario), chunk, carry=False)
    return cached, write


def advance(
    scenario: Scenario, state: PromptCacheState, chunk: ChunkCalls
) -> tuple[np.ndarray, np.ndarray, PromptCacheState]:
    """The chunk's calls' (cached input tokens, cache write tokens) and the state after it. Pure: `state`
    is left as it was."""
    return _advance(scenario, state, chunk, carry=True)


def _advance(
    scenario: Scenario, state: PromptCacheState, chunk: ChunkCalls, carry: bool
) -> tuple[np.ndarray, np.ndarray, PromptCacheState]:
    """`advance`; without `carry` (the last chunk) the conversation's epochs are not carried."""
    calls = chunk.model.size
    if chunk.context is not None:
        context = chunk.context
        cached = np.zeros(calls, dtype=np.int32)  # at most the context limit
        write = np.zeros(calls, dtype=np.int32)
        models = list(state.models)
        # The chunk's latest time: every later chunk's calls come after it.
        times = [float(seen.t.max()) for seen in context.models if seen is not None and seen.t.size]
        horizon = max(times) if times else None
        for index, model in enumerate(scenario.models):
            provider = scenario.provider(model)
            carried = models[index]
            if carried is None:
                continue
            model_calls = context.models[index]
            assert model_calls is not None, "a model that caches prompts has its calls"
            mine = model_calls.calls
            ttl_s = provider.prompt_cache_ttl_s
            read, wrote, models[index] = _conversation_prefixes(
                chunk, model_calls, ttl_s, carried, horizon, carry
            )
            cached[mine], write[mine] = _at_least(read, wrote, provider.prompt_cache_min_tokens)
        return cached, write, PromptCacheState(state.user_last_t, tuple(models))
    cached = np.zeros(calls, dtype=np.int64)
    write = np.zeros(calls, dtype=np.int64)
    caching = [i for i, m in enumerate(scenario.models) if scenario.provider(m).prompt_cache]
    share = scenario.prompts.prefix_share
    if not caching or share == 0:
        return cached, write, state
    gap, user_last_t = _user_gaps(chunk.t, chunk.user, state.user_last_t)
    prefix = np.floor(chunk.input_tokens * share).astype(np.int64)
    by_ttl: dict[float, tuple[np.ndarray, np.ndarray]] = {}  # models with one cache lifetime share a pass
    for index in caching:
        provider = scenario.provider(scenario.models[index])
        mine = chunk.model == index
        ttl_s = provider.prompt_cache_ttl_s
        if ttl_s not in by_ttl:
            warm = gap <= ttl_s  # NaN, no earlier call of the user: cold
            by_ttl[ttl_s] = np.where(warm, prefix, 0), np.where(warm, 0, prefix)
        read, wrote = _at_least(*by_ttl[ttl_s], provider.prompt_cache_min_tokens)
        cached[mine], write[mine] = read[mine], wrote[mine]
    return cached, write, PromptCacheState(user_last_t, state.models)


def _user_gaps(t: np.ndarray, user: np.ndarray, last_t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per call, the time since its user's previous call (NaN for a user's first), taken in time order and
    at one time by call id; and every user's latest time after the chunk (a copy: `last_t` is kept)."""
    gap = np.empty(t.size, dtype=np.float64)
    later = np.full(max(last_t.size, int(user.max(initial=-1)) + 1), np.nan)
    later[: last_t.size] = last_t
    if not t.size:
        return gap, later
    order = np.lexsort((np.arange(t.size), t, user))
    sorted_user, sorted_t = user[order], t[order]
    first = np.r_[True, sorted_user[1:] != sorted_user[:-1]]
    gap_sorted = np.r_[np.inf, np.diff(sorted_t)]
    gap_sorted[first] = sorted_t[first] - later[sorted_user[first]]
    gap[order] = gap_sorted
    last = np.r_[first[1:], True]
    later[sorted_user[last]] = sorted_t[last]
    return gap, later


def _conversation_prefixes(
    chunk: ChunkCalls,
    model_calls: ModelCalls,
    ttl_s: float,
    state: ModelCacheState,
    horizon: float | None,
    carry: bool,
) -> tuple[np.ndarray, np.ndarray, ModelCacheState]:
    """(read, written) input tokens of the calls one model's cache sees in the chunk, and that model's
    state after them (`state` itself unless `carry`: no chunk follows). `horizon`: the chunk's latest
    time (None for an empty chunk)."""
    context = chunk.context
    assert context is not None
    mine, t, epoch, shared = model_calls.calls, model_calls.t, model_calls.epoch, model_calls.shared
    inputs = chunk.input_tokens[mine]  # at most the context limit
    read = np.zeros(mine.size, dtype=inputs.dtype)
    # Turns' calls in id order have non-decreasing epochs, so the previous call of an epoch is the
    # previous call, when it has the same epoch -- or, for its first call in the chunk, its latest call
    # of the chunks before (an epoch's calls are one session's: in id order, in time order).
    turns = mine.size - int(np.count_nonzero(mine >= chunk.model.size - context.summaries))
    epoch_of, t_of = epoch[:turns], t[:turns]
    follows = np.flatnonzero((epoch_of[1:] == epoch_of[:-1]) & (t_of[1:] - t_of[:-1] <= ttl_s))
    read[follows + 1] = shared[follows]
    if state.epoch.size and turns:
        opens = np.flatnonzero(np.r_[True, epoch_of[1:] != epoch_of[:-1]])
        at, seen = _carried(state, epoch_of[opens], t_of[opens], ttl_s)
        read[opens[seen]] = state.epoch_shared[at[seen]]
    # A summary call (after every turn's call) comes last in its epoch: after its latest turn, in this
    # chunk or before it.
    if turns < mine.size:
        summary_epoch, summary_t = epoch[turns:], t[turns:]
        previous = np.searchsorted(epoch_of, summary_epoch, side="right") - 1
        here = previous >= 0
        here[here] = epoch_of[previous[here]] == summary_epoch[here]
        found = np.flatnonzero(here)
        found = found[summary_t[found] - t_of[previous[found]] <= ttl_s]
        read[turns + found] = shared[previous[found]]
        if state.epoch.size:
            before = np.flatnonzero(~here)
            at, seen = _carried(state, summary_epoch[before], summary_t[before], ttl_s)
            read[turns + before[seen]] = state.epoch_shared[at[seen]]
    warm, last_sent = _sent_within(t, context.request[mine], context.step[mine], ttl_s, state.last_sent)
    np.maximum(read, context.system_tokens, out=read, where=warm)
    np.minimum(read, inputs, out=read)
    inputs -= read  # what is written: the rest of the prompt
    if not carry:
        return read, inputs, state
    return read, inputs, _carry_epochs(state, epoch_of, t_of, shared[:turns], last_sent, ttl_s, horizon)


def _carried(
    state: ModelCacheState, epoch: np.ndarray, t: np.ndarray, ttl_s: float
) -> tuple[np.ndarray, np.ndarray]:
    """For calls of `epoch` at `t`: where their epoch sits in the state, and whether its latest call there
    is within `ttl_s` before them."""
    at = np.searchsorted(state.epoch, epoch)
    seen = at < state.epoch.size
    seen[seen] = state.epoch[at[seen]] == epoch[seen]
    seen[seen] = t[seen] - state.epoch_t[at[seen]] <= ttl_s
    return at, seen


def _carry_epochs(
    state: ModelCacheState,
    epoch: np.ndarray,
    t: np.ndarray,
    shared: np.ndarray,
    last_sent: tuple[int, float] | None,
    ttl_s: float,
    horizon: float | None,
) -> ModelCacheState:
    """The state after a chunk whose turn calls (of one model) were of `epoch`, at `t`, resending `shared`:
    each epoch's latest call, kept while it is within `ttl_s` of the chunk's latest time `horizon`."""
    last = np.flatnonzero(np.r_[epoch[1:] != epoch[:-1], True]) if epoch.size else epoch[:0]
    kept = ~contains(epoch[last], state.epoch)  # both ascending
    merged = np.r_[state.epoch[kept], epoch[last]]
    merged_t = np.r_[state.epoch_t[kept], t[last]]
    merged_shared = np.r_[state.epoch_shared[kept], shared[last]]
    order = np.argsort(merged, kind="stable")
    if horizon is not None:  # every later call comes at or after the horizon: older entries are cold
        order = order[~(horizon - merged_t[order] > ttl_s)]
    return ModelCacheState(last_sent, merged[order], merged_t[order], merged_shared[order])


def _sent_within(
    t: np.ndarray, request: np.ndarray, step: np.ndarray, ttl_s: float, last_sent: tuple[int, float] | None
) -> tuple[np.ndarray, tuple[int, float] | None]:
    """Per call, did an earlier one send the system prompt within `ttl_s` before it? And the (bin, time)
    of the latest call sent, this chunk's or `last_sent`, carried from the chunks before.

    Calls are taken in time order, and at one time by request, then step (a summary first). Exact without
    sorting them all: in time bins as wide as the lifetime, every call but a bin's first has that one
    before it, within the lifetime; a bin's first is warm when the previous bin's last was recent enough.
    A bin the chunks before reached has its first call there.
    """
    if not t.size:
        return np.zeros(0, dtype=bool), last_sent
    bins = (t / ttl_s).astype(np.int32)  # times are >= 0: truncation is the floor
    low = int(bins.min())
    offset = bins - low if low else bins
    first = np.full(int(offset.max()) + 1, np.inf)
    last = np.full(first.size, -np.inf)
    np.minimum.at(first, offset, t)
    np.maximum.at(last, offset, t)
    opens = np.flatnonzero(t == first[offset])  # steps of one request share its time
    opens = opens[np.lexsort((step[opens], request[opens], offset[opens]))]
    leads = opens[np.r_[True, offset[opens][1:] != offset[opens][:-1]]]
    lead_offset = offset[leads]
    before = np.where(lead_offset > 0, last[np.maximum(lead_offset - 1, 0)], -np.inf)
    warm = np.ones(t.size, dtype=bool)
    warm[leads] = t[leads] - before <= ttl_s
    if last_sent is not None:  # only the chunk's lowest bin can follow the chunks before
        carried_bin, carried_t = last_sent
        if carried_bin == low:
            warm[leads[0]] = True
        elif carried_bin == low - 1:
            warm[leads[0]] = t[leads[0]] - carried_t <= ttl_s
    return warm, (low + last.size - 1, float(last[-1]))  # the top bin holds the latest time


def _whole_trace(
    scenario: Scenario, traffic: Traffic, call_model: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """A trace's calls with block hashes, the whole run at once: (cached input tokens, cache write tokens)."""
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
            by_ttl[ttl_s] = block_prefixes(traffic, ttl_s)
        read, wrote = _at_least(*by_ttl[ttl_s], provider.prompt_cache_min_tokens)
        cached[mine], write[mine] = read[mine], wrote[mine]
    return cached, write


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
