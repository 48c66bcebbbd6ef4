"""Traffic: users, sessions, messages, prompts and the model calls they need, as numpy arrays.

Everything is drawn at once, vectorized, from the run's streams; the engine then replays it through the
cost levers. A run covers months counted from its start (sim/model/periods.py): each month's sessions are
spread over its own hours by the diurnal profile and the bursts, and a run that ends inside a month keeps
the sessions that start before its end.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np

from sim.model.conversation import Conversation, carry
from sim.model.periods import SECONDS_PER_DAY as SECONDS_PER_DAY
from sim.model.periods import Period, run_periods
from sim.model.randomness import Streams
from sim.model.scenario import Distribution, Scenario

MONTH_DAYS = 30


@dataclass(frozen=True, slots=True)
class Traffic:
    """One run's requests (one per user message, grouped by session) and the model calls they would need.

    Keys are -1 where nothing can match: a novel prompt has no exact or semantic key, a plain message
    has no chain context.
    """

    mau: int
    days: int
    sessions: int
    t: np.ndarray  # float64 seconds since the start of the run
    user: np.ndarray  # int64
    exact_key: np.ndarray  # int64: the exact-cache key (scope applied), -1 for a unique prompt
    cluster: np.ndarray  # int64: the semantic cluster (a catalog prompt and its paraphrases), -1 if none
    context: np.ndarray  # int64: the chain's shared context, -1 for a single-call message
    hard: np.ndarray  # bool
    call_request: np.ndarray  # int64: for each call, its request
    call_step: np.ndarray  # small ints (int8 when drawn): the call's step in its chain (0 for a single call)
    call_deterministic: np.ndarray  # bool: a deterministic chain step (fragment-cacheable)
    input_tokens: np.ndarray  # per call: int32 when drawn (the engine bills in int64)
    output_tokens: np.ndarray  # per call: int32 when drawn
    steps: int = 1  # calls in every chain (a plain message has one)
    # Per call, the ids of its prompt's 512-token prefix blocks (a replayed Mooncake trace); empty when
    # the prefix comes from prompts.prefix_share instead.
    prefix_blocks: tuple[tuple[int, ...], ...] = ()
    # Messages per session, sessions in order (requests are grouped by session); None for a trace.
    session_messages: np.ndarray | None = None
    # The system prompt and history the calls carry ([prompts.context]); None when they carry none.
    conversation: Conversation | None = None

    @property
    def requests(self) -> int:
        return int(self.t.size)

    @property
    def calls_per_request(self) -> np.ndarray:
        return np.bincount(self.call_request, minlength=self.requests)


def generate(scenario: Scenario, mau: int, days: int, streams: Streams) -> Traffic:
    """Draw one run's traffic for `mau` monthly active users over `days` days, with its conversation
    context when the scenario has one (each call's input is then what it sends)."""
    drawn = draw(scenario, mau, days, streams)
    if not scenario.prompts.context.active:
        return drawn
    return _with_context(drawn, scenario)


def _with_context(traffic: Traffic, scenario: Scenario) -> Traffic:
    """Drawn traffic with the scenario's conversation context carried (sim/model/conversation.py); its
    input_tokens array becomes what each call sends."""
    assert traffic.session_messages is not None, "a trace carries its context in its own token counts"
    calls = carry(
        scenario.prompts.context,
        traffic.session_messages,
        traffic.call_request,
        traffic.call_step,
        traffic.call_deterministic,
        traffic.input_tokens,
        traffic.output_tokens,
    )
    return replace(
        traffic,
        call_request=calls.call_request,
        call_step=calls.call_step,
        call_deterministic=calls.call_deterministic,
        input_tokens=calls.input_tokens,
        output_tokens=calls.output_tokens,
        conversation=calls.conversation,
    )


def draw(scenario: Scenario, mau: int, days: int, streams: Streams) -> Traffic:
    """The drawn traffic: every call's own new input, no conversation context."""
    session_user, session_start = _sessions(scenario, mau, days, streams)
    t, user, per_session = _messages(scenario, session_user, session_start, days, streams)
    prompts = streams.prompts  # one stream for the kinds, the Zipf slots and their acceptances, in turn
    exact_key, cluster = prompt_keys(scenario, user, prompts, prompts, prompts)
    context = contexts(scenario, t.size, prompts, prompts, prompts)
    hard = prompts.random(t.size) < scenario.prompts.hard_share
    call_request, call_step, deterministic = chain_calls(scenario, context)
    tokens = scenario.prompts
    return Traffic(
        mau=mau,
        days=days,
        sessions=int(per_session.size),
        steps=scenario.prompts.chains.steps,
        t=t,
        user=user,
        exact_key=exact_key,
        cluster=cluster,
        context=context,
        hard=hard,
        call_request=call_request,
        call_step=call_step,
        call_deterministic=deterministic,
        input_tokens=lognormal_tokens(streams.tokens, tokens.input_tokens, call_request.size),
        output_tokens=lognormal_tokens(streams.tokens, tokens.output_tokens, call_request.size),
        session_messages=per_session,
    )


def _sessions(scenario: Scenario, mau: int, days: int, streams: Streams) -> tuple[np.ndarray, np.ndarray]:
    """Sessions per user for each month the run covers (gamma-Poisson: heavy users exist), each month's
    spread over its own hours; the last month is drawn whole, and _messages keeps what the run covers.

    A user's heaviness (the gamma draw) is drawn once and kept from month to month: a heavy user stays
    heavy, and their sessions are a fresh Poisson draw each month. A burst adds sessions: "20x for 48 h"
    means 20 times the usual intensity in those hours, so its month holds the usual sessions plus
    19 x 48 hours' worth more.
    """
    users, starts = [], []
    for period, weights, per_user in sessions_per_user(scenario, mau, days, streams.users):
        session_user = np.repeat(np.arange(mau, dtype=np.int64), per_user)
        start = session_starts(period, weights, session_user.size, streams.sessions, streams.sessions)
        users.append(session_user)
        starts.append(start)
    if len(users) == 1:
        return users[0], starts[0]
    return np.concatenate(users), np.concatenate(starts)


def sessions_per_user(
    scenario: Scenario, mau: int, days: int, users: np.random.Generator
) -> Iterator[tuple[Period, np.ndarray, np.ndarray]]:
    """For each month the run covers: the month, its hourly intensity and every user's sessions in it,
    drawn from the users stream (the heaviness once, in the first month with extra sessions)."""
    heaviness: np.ndarray | None = None
    for period in run_periods(scenario.traffic.start, days):
        weights = hourly_intensity(scenario, period)
        usual = hourly_intensity(scenario, period, with_bursts=False)
        mean_sessions = scenario.traffic.sessions_per_user_month * weights.sum() / usual.sum()
        extra_mean = mean_sessions - 1.0  # every active user has at least one session
        shape = scenario.traffic.dispersion
        if extra_mean <= 0:
            rates = np.zeros(mau)
        elif heaviness is None:
            rates = users.gamma(shape, extra_mean / shape, size=mau)
            heaviness = rates / extra_mean
        else:
            rates = heaviness * extra_mean
        yield period, weights, 1 + users.poisson(rates)


def session_starts(
    period: Period,
    weights: np.ndarray,
    count: int,
    hours: np.random.Generator,
    within: np.random.Generator,
) -> np.ndarray:
    """Start times (seconds since the run's start) of `count` sessions of one month: an hour drawn by its
    intensity from `hours`, then a uniform time within it from `within` (one stream may be both)."""
    hour = hours.choice(weights.size, size=count, p=weights / weights.sum())
    start: np.ndarray = (hour + within.random(count)) * 3600.0
    if period.first_day:
        start += period.start_s
    return start


def hourly_intensity(scenario: Scenario, period: Period, with_bursts: bool = True) -> np.ndarray:
    """Relative session intensity for each hour of a month the run covers: the diurnal profile times any
    burst (a burst's start_day counts from the run's start)."""
    traffic = scenario.traffic
    hours = np.arange(period.month_days * 24)
    weights = np.asarray(traffic.diurnal, dtype=np.float64)[hours % 24]
    for burst in traffic.bursts if with_bursts else ():
        begin = (burst.start_day - period.first_day) * 24
        weights = np.where((hours >= begin) & (hours < begin + burst.hours), weights * burst.factor, weights)
    return weights


def _messages(
    scenario: Scenario, session_user: np.ndarray, session_start: np.ndarray, days: int, streams: Streams
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Messages of the sessions that start inside the run, spaced by exponential think times.

    Returns each message's time and user, and the messages of each session (in order: requests are
    grouped by session, in time order within one)."""
    keep = session_start < days * SECONDS_PER_DAY
    session_user, session_start = session_user[keep], session_start[keep]
    per_session = 1 + streams.messages.poisson(
        scenario.traffic.messages_per_session - 1.0, size=session_user.size
    )
    session = np.repeat(np.arange(session_user.size, dtype=np.int64), per_session)
    gaps = streams.messages.exponential(scenario.traffic.think_time_s, size=session.size)
    first = np.cumsum(per_session) - per_session
    gaps[first] = 0.0  # a session's first message opens it
    elapsed = np.cumsum(gaps, out=gaps)
    session_offset = np.repeat(elapsed[first], per_session)
    elapsed -= session_offset
    t = np.take(session_start, session, out=session_offset)  # the buffer is free again: reuse it
    t += elapsed
    return t, session_user[session], per_session


def prompt_keys(
    scenario: Scenario,
    user: np.ndarray,
    kind: np.random.Generator,
    slot: np.random.Generator,
    accept: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact repeats and paraphrases of a Zipf-popular catalog; the rest are novel prompts. Each prompt's
    kind is a uniform from `kind`, its catalog entry two from `slot` and `accept` (zipf_indices)."""
    prompts = scenario.prompts
    n = user.size
    draw = kind.random(n)
    # The kind of each prompt -- an exact repeat below repeat_share, then a paraphrase, else novel -- as
    # the two masks the keys need.
    repeat = draw < prompts.repeat_share
    novel = ~(repeat | (draw < prompts.repeat_share + prompts.paraphrase_share))
    catalog_id = zipf_indices(
        slot, prompts.catalog_size, prompts.zipf_exponent, n, scratch=draw, accept_rng=accept
    )
    cluster = np.where(novel, -1, catalog_id)
    if scenario.cache.exact.scope == "user":
        catalog_id = user * prompts.catalog_size + catalog_id
    catalog_id[~repeat] = -1  # in place: the array is this function's own
    return catalog_id, cluster


def contexts(
    scenario: Scenario,
    n: int,
    chain: np.random.Generator,
    slot: np.random.Generator,
    accept: np.random.Generator,
) -> np.ndarray:
    """Each of `n` messages' chain context (a Zipf-popular one, drawn as in prompt_keys), -1 for a plain
    message: whether it is a chain is a uniform from `chain`."""
    chains = scenario.prompts.chains
    draw = chain.random(n)
    is_chain = draw < chains.share
    context = zipf_indices(
        slot, chains.context_catalog_size, chains.context_zipf_exponent, n, scratch=draw, accept_rng=accept
    )
    context[~is_chain] = -1
    return context


def chain_calls(scenario: Scenario, context: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One call per plain message, `steps` calls per chain; the first deterministic_steps are cacheable."""
    chains = scenario.prompts.chains
    is_chain = context >= 0
    steps = np.where(is_chain, chains.steps, 1)
    call_request = np.repeat(np.arange(context.size, dtype=np.int64), steps)
    chains_before = np.arange(np.count_nonzero(is_chain))
    chain_first = np.flatnonzero(is_chain) + (chains.steps - 1) * chains_before  # earlier chains' extra calls
    # The smallest signed type that holds every step (int8 for any sensible chain): a small array to fill.
    call_step = np.zeros(call_request.size, dtype=np.min_scalar_type(-chains.steps))
    for step in range(1, chains.steps):  # a handful of steps: one column of chain calls at a time
        call_step[chain_first + step] = step
    deterministic = np.repeat(is_chain, steps)
    deterministic &= call_step < chains.deterministic_steps
    return call_request, call_step, deterministic


def zipf_indices(
    rng: np.random.Generator,
    size: int,
    exponent: float,
    n: int,
    scratch: np.ndarray | None = None,
    accept_rng: np.random.Generator | None = None,
) -> np.ndarray:
    """`n` draws from a finite Zipf law over 0..size-1 (item i has weight 1 / (i + 1) ** exponent).

    Walker's alias method: two uniforms and two lookups per draw, whatever the catalog size: n slot
    uniforms from `rng`, then n acceptance uniforms from `accept_rng` (default: `rng` again). `scratch`, a
    float64 array of n the caller no longer needs, takes the uniforms instead of a new array.
    """
    accept, alias = zipf_alias_table(size, exponent)
    u = rng.random(n) if scratch is None else rng.random(out=scratch)
    u *= size
    slot = u.astype(np.int64)
    np.minimum(slot, size - 1, out=slot)
    keep = (rng if accept_rng is None else accept_rng).random(out=u) < accept[
        slot
    ]  # the second uniforms reuse the first ones' buffer
    picked: np.ndarray = alias[slot]
    np.copyto(picked, slot, where=keep)
    return picked


@functools.lru_cache(maxsize=8)
def zipf_alias_table(size: int, exponent: float) -> tuple[np.ndarray, np.ndarray]:
    """The alias table of a finite Zipf law, built once per (size, exponent) in a process."""
    weights = 1.0 / np.arange(1, size + 1, dtype=np.float64) ** exponent
    return alias_table(weights / weights.sum())


def alias_table(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walker/Vose alias table: slot i keeps i with probability accept[i], else gives alias[i]."""
    size = probabilities.size
    scaled = probabilities * size
    accept = np.ones(size)
    alias = np.arange(size, dtype=np.int64)
    small = [i for i in range(size) if scaled[i] < 1.0]
    large = [i for i in range(size) if scaled[i] >= 1.0]
    while small and large:
        low, high = small.pop(), large.pop()
        accept[low], alias[low] = scaled[low], high
        scaled[high] -= 1.0 - scaled[low]
        (small if scaled[high] < 1.0 else large).append(high)
    return accept, alias


def lognormal_tokens(
    rng: np.random.Generator, dist: Distribution, n: int, dtype: type[np.integer] | None = None
) -> np.ndarray:
    """Whole token counts >= 1 with the distribution's mean, as `dtype` when given (a part of a longer
    draw must take the whole draw's type), else int32 unless a count needs int64."""
    if dist.sigma == 0:
        count = max(1, round(dist.mean))
        return np.full(n, count, dtype=dtype or (np.int32 if count < 2**31 else np.int64))
    mu = np.log(dist.mean) - dist.sigma**2 / 2
    normal = rng.standard_normal(n, dtype=np.float32)  # float32: twice as fast, ample for token counts
    normal *= np.float32(dist.sigma)
    normal += np.float32(mu)
    np.exp(normal, out=normal)  # in place: no temporaries the size of all calls
    np.rint(normal, out=normal)
    np.maximum(normal, 1, out=normal)
    # int32 (half the memory; sums are taken in int64) unless a count would not fit, as a huge sigma allows.
    if dtype is None:
        dtype = np.int32 if normal.max(initial=0) < 2**31 else np.int64
    tokens: np.ndarray = normal.astype(dtype)
    return tokens
