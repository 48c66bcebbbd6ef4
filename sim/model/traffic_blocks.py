"""Traffic drawn a block of users at a time: the same numbers, to the byte, as `traffic.draw`.

`traffic.draw` holds the whole run at once. Each of its sources draws *segments* one after the other
from its stream -- per month the users' sessions (users), each session's hour and then its time within
the hour (sessions); every session's extra messages, then every message's think time (messages); each
request's kind, Zipf slot and acceptance, chain, context slot and acceptance, difficulty (prompts); each
call's input tokens, then its output tokens (tokens) -- and requests are grouped by session, sessions by
user, users by month. Drawing a segment in consecutive pieces from one generator gives the numbers of one
draw (tests/sim/test_traffic_blocks.py holds every method used here to that), so a block of users gets
its slice of every segment from a *cursor*: a copy of the stream positioned at the segment's start and
moved on block by block, in user order.

Where a segment starts:
- segments of float64 uniforms (`random`, and `choice` with probabilities, which draws one uniform per
  item) use one 64-bit output of PCG64 per number, so the cursor is the stream advanced by the numbers
  before it (`bit_generator.advance`);
- after a segment whose draws use a varying number of outputs (Poisson, ziggurat normals), the next
  one starts where a pass through that segment leaves the stream: a pre-pass draws it in chunks and
  throws the numbers away (its time is paid twice, its memory is a chunk);
- a segment that follows one which the blocks finish first (next month's sessions after this month's)
  needs no pre-pass: the previous cursor ends where it starts.

Pre-passes also find what a block cannot know alone: how many sessions start inside the run, how many
requests and calls the run has (the prompts' segment lengths), and whether any token count needs int64
(`lognormal_tokens` types a whole draw by its largest count). Carried from block to block: each user's
heaviness and sessions this month (a few arrays of `mau`), and the running sum of think times, which
`traffic.draw` adds up over the whole run before taking each session's part (floating point: the
block's sums must start from the same partial sum), and the cursors (a fixed dozen generators). So the
carried state grows with the MAU alone (about 16 bytes a user), not with the run's requests; a block's
own arrays grow with its users' requests (about 100 bytes a request, 8 more for each engine draw).

The engine's per-request draws (`engine.simulate`'s router uniforms, `engine.cache_layers`' three rows of
cache uniforms: request i's are the i-th, (n + i)-th and (2n + i)-th of the cache stream, n the run's
requests) can come with each block as `draws` columns, by the same cursors: a day holds a scattered
subset of request ids and cannot draw them itself. `engine_draws` says which a scenario uses: 8 bytes
a request each in a block and on disk (at 10M MAU, 30 days of `optimized.toml`, 400M requests: 3.2 GB
a column, so a scenario without the semantic layer spares 6.4 GB, without the router 3.2 GB more).

Conversation context (`traffic._with_context`) is not applied here but per block, after it
(sim/model/traffic_block_context.py): it is local to a session and blocks hold whole sessions.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from sim.errors import ArgumentError
from sim.model.periods import SECONDS_PER_DAY, run_periods
from sim.model.randomness import Streams
from sim.model.scenario import Distribution, Scenario
from sim.model.traffic import (
    chain_calls,
    contexts,
    lognormal_tokens,
    prompt_keys,
    session_starts,
    sessions_per_user,
)

PRE_PASS_CHUNK = 1 << 20  # numbers drawn at a time by a pre-pass that only moves a generator on

# The engine's per-request draws a block can carry, each one float64 uniform per request: the router's
# (engine.simulate), the exact cache layer's, and the semantic layer's true- and false-hit draws
# (engine.cache_layers), taken in that order from the router and the cache streams.
U_ROUTER, U_EXACT, U_TRUE, U_FALSE = "u_router", "u_exact", "u_true", "u_false"
ENGINE_DRAWS = (U_ROUTER, U_EXACT, U_TRUE, U_FALSE)

# The prompts stream's segments, each one number per request, in the order traffic.draw uses them.
(KIND, SLOT, ACCEPT, CHAIN, CONTEXT_SLOT, CONTEXT_ACCEPT, HARD) = range(7)


@dataclass(frozen=True, slots=True)
class TrafficBlock:
    """One month's traffic of users first_user .. first_user + users - 1: exactly the slice of
    `traffic.draw`'s arrays from first_request (calls: from first_call; sessions: from first_session),
    with global ids (call_request is the whole run's request index)."""

    period: int
    first_user: int
    users: int
    first_session: int
    first_request: int
    first_call: int
    t: np.ndarray
    user: np.ndarray
    exact_key: np.ndarray
    cluster: np.ndarray
    context: np.ndarray
    hard: np.ndarray
    call_request: np.ndarray
    call_step: np.ndarray
    call_deterministic: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    session_messages: np.ndarray
    # The engine's draws for the block's requests (ENGINE_DRAWS names): the slice at first_request of each.
    draws: dict[str, np.ndarray] = field(default_factory=dict)
    # With conversation context (sim/model/traffic_block_context.py): input_tokens are then what each turn
    # call sends, and this holds the block's part of `traffic.Traffic.conversation` and its summary calls.
    conversation: BlockConversation | None = None

    @property
    def requests(self) -> int:
        return int(self.t.size)

    @property
    def calls(self) -> int:
        return int(self.call_request.size)


@dataclass(frozen=True, slots=True)
class BlockConversation:
    """A block's slice of `traffic.generate`'s conversation: per request (first_request on) the history
    its calls carry and its epoch (a global request id, int32), and the summary calls its sessions made --
    the run's summary calls first_summary on, whose call ids follow every turn call of the run."""

    history: np.ndarray
    epoch: np.ndarray
    first_summary: int
    summary_call: np.ndarray  # int64: global call ids
    summary_request: np.ndarray  # int64: global request ids
    summary_step: np.ndarray  # conversation.SUMMARY_STEP, in call_step's dtype
    summary_input: np.ndarray
    summary_output: np.ndarray
    summary_epoch: np.ndarray  # int64: the epoch (global request id) whose history each condenses

    @property
    def summaries(self) -> int:
        return int(self.summary_call.size)


@dataclass(frozen=True, slots=True)
class DayTraffic:
    """One simulated day's requests and calls of the whole run, in global order: column -> array (what
    sim/io/traffic_spill.py reads back and the day loop plays).

    `requests` has the request columns and whichever engine draws and conversation columns were spilled;
    `calls` has the call columns, the day's summary calls last (call ids ascend throughout); `summaries`
    is, with conversation context, the day's summary calls' `call` and `summary_epoch` (else empty)."""

    day: int
    requests: dict[str, np.ndarray]
    calls: dict[str, np.ndarray]
    summaries: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TrafficTotals:
    """What the pre-passes found: the run's sessions (that start inside it), requests and calls, and the
    integer types of its token counts."""

    sessions: int
    requests: int
    calls: int
    input_dtype: type[np.integer]
    output_dtype: type[np.integer]


@dataclass(frozen=True, slots=True)
class _Plan:
    """The totals, and the two cursors whose start only a pre-pass finds."""

    totals: TrafficTotals
    think_times: np.random.Generator  # the messages stream after every session's extra messages
    output_tokens: np.random.Generator  # the tokens stream after every call's input tokens


def blocks(
    scenario: Scenario,
    mau: int,
    days: int,
    streams: Streams,
    users_per_block: int,
    draws: Iterable[str] = (),
) -> Iterator[TrafficBlock]:
    """The run's drawn traffic (`traffic.draw`'s, no conversation context) in blocks: for each month,
    users in consecutive ranges of `users_per_block`. Concatenated in order, the blocks' arrays are
    `traffic.draw`'s, and their `draws` (those named, of ENGINE_DRAWS) the engine's draws of the same
    seed. `streams` are left as they are (the blocks draw from copies)."""
    return blocks_with_totals(scenario, mau, days, streams, users_per_block, draws)[1]


def blocks_with_totals(
    scenario: Scenario,
    mau: int,
    days: int,
    streams: Streams,
    users_per_block: int,
    draws: Iterable[str] = (),
) -> tuple[TrafficTotals, Iterator[TrafficBlock]]:
    """`blocks`, and the run's totals its pre-passes found (they run here, before the first block)."""
    if users_per_block < 1:
        raise ArgumentError("users_per_block", f"must be at least 1, got {users_per_block}")
    wanted = tuple(draws)
    unknown = sorted(set(wanted) - set(ENGINE_DRAWS))
    if unknown:
        raise ArgumentError("draws", f"each one of {', '.join(ENGINE_DRAWS)}, got {', '.join(unknown)}")
    plan = _plan(scenario, mau, days, streams)
    return plan.totals, _blocks(scenario, mau, days, streams, users_per_block, plan, wanted)


def engine_draws(scenario: Scenario) -> tuple[str, ...]:
    """The draws the engine uses in this scenario: the router's if it routes, the exact layer's if on,
    the semantic layer's two if on (engine.cache_layers draws every row but reads only these)."""
    used = {
        U_ROUTER: scenario.router.enabled,
        U_EXACT: scenario.cache.exact.enabled,
        U_TRUE: scenario.cache.semantic.enabled,
        U_FALSE: scenario.cache.semantic.enabled,
    }
    return tuple(name for name in ENGINE_DRAWS if used[name])


def _draw_cursors(streams: Streams, requests: int, wanted: tuple[str, ...]) -> dict[str, np.random.Generator]:
    """Each wanted draw's stream positioned at its first request's number."""
    where = {
        U_ROUTER: (streams.router, 0),
        U_EXACT: (streams.cache, 0),
        U_TRUE: (streams.cache, requests),
        U_FALSE: (streams.cache, 2 * requests),
    }
    return {name: _advanced(*where[name]) for name in ENGINE_DRAWS if name in wanted}


def _blocks(
    scenario: Scenario,
    mau: int,
    days: int,
    streams: Streams,
    users_per_block: int,
    plan: _Plan,
    wanted: tuple[str, ...],
) -> Iterator[TrafficBlock]:
    n = plan.totals.requests
    draw_cursors = _draw_cursors(streams, n, wanted)
    prompts = [_advanced(streams.prompts, segment * n) for segment in range(HARD + 1)]
    extra_messages = _copy(streams.messages)
    think_times, input_tokens, output_tokens = plan.think_times, _copy(streams.tokens), plan.output_tokens
    traffic, tokens, end = scenario.traffic, scenario.prompts, days * SECONDS_PER_DAY
    elapsed = 0.0  # think times summed over every earlier request of the run
    sessions_used = 0  # outputs of the sessions stream the earlier months took
    first_session = first_request = first_call = 0
    for period, weights, per_user in sessions_per_user(scenario, mau, days, _copy(streams.users)):
        month_sessions = int(per_user.sum())
        hours = _advanced(streams.sessions, sessions_used)
        within = _advanced(streams.sessions, sessions_used + month_sessions)
        sessions_used += 2 * month_sessions
        for first_user in range(0, mau, users_per_block):
            last_user = min(first_user + users_per_block, mau)
            session_user = np.repeat(
                np.arange(first_user, last_user, dtype=np.int64), per_user[first_user:last_user]
            )
            start = session_starts(period, weights, session_user.size, hours, within)
            keep = start < end
            session_user, start = session_user[keep], start[keep]
            per_session = 1 + extra_messages.poisson(
                traffic.messages_per_session - 1.0, size=session_user.size
            )
            t, session, elapsed = _message_times(
                start, per_session, think_times, traffic.think_time_s, elapsed
            )
            user = session_user[session]
            exact_key, cluster = prompt_keys(scenario, user, *prompts[KIND : ACCEPT + 1])
            context = contexts(scenario, t.size, *prompts[CHAIN : CONTEXT_ACCEPT + 1])
            hard = prompts[HARD].random(t.size) < tokens.hard_share
            call_request, call_step, deterministic = chain_calls(scenario, context)
            call_request += first_request
            calls = call_request.size
            yield TrafficBlock(
                period=period.index,
                first_user=first_user,
                users=last_user - first_user,
                first_session=first_session,
                first_request=first_request,
                first_call=first_call,
                t=t,
                user=user,
                exact_key=exact_key,
                cluster=cluster,
                context=context,
                hard=hard,
                call_request=call_request,
                call_step=call_step,
                call_deterministic=deterministic,
                input_tokens=lognormal_tokens(
                    input_tokens, tokens.input_tokens, calls, plan.totals.input_dtype
                ),
                output_tokens=lognormal_tokens(
                    output_tokens, tokens.output_tokens, calls, plan.totals.output_dtype
                ),
                session_messages=per_session,
                draws={name: cursor.random(t.size) for name, cursor in draw_cursors.items()},
            )
            first_session += per_session.size
            first_request += t.size
            first_call += calls


def traffic_totals(scenario: Scenario, mau: int, days: int, streams: Streams) -> TrafficTotals:
    """The run's sessions, requests, calls and token types, found by the pre-passes alone (streams are
    left as they are)."""
    return _plan(scenario, mau, days, streams).totals


def _message_times(
    session_start: np.ndarray,
    per_session: np.ndarray,
    think_times: np.random.Generator,
    think_time_s: float,
    elapsed_before: float,
) -> tuple[np.ndarray, np.ndarray, float]:
    """traffic._messages for a block: each message's time and session (within the block), and the run's
    sum of think times after the block. The sum runs on from `elapsed_before` as traffic.draw's one
    cumulative sum over the whole run does (float addition in the same order: the same roundings)."""
    n = int(per_session.sum())
    session = np.repeat(np.arange(per_session.size, dtype=np.int64), per_session)
    running = np.empty(n + 1)
    running[0] = elapsed_before
    running[1:] = think_times.exponential(think_time_s, size=n)
    first = np.cumsum(per_session) - per_session
    running[1 + first] = 0.0  # a session's first message opens it
    np.cumsum(running, out=running)
    elapsed_after = float(running[-1])  # before the sessions' offsets come off, in place
    elapsed = running[1:]
    elapsed -= np.repeat(elapsed[first], per_session)
    t = np.take(session_start, session)
    t += elapsed
    return t, session, elapsed_after


def _plan(scenario: Scenario, mau: int, days: int, streams: Streams) -> _Plan:
    """The pre-passes, each on copies of the streams: kept sessions, requests, chains, token types."""
    periods = run_periods(scenario.traffic.start, days)
    end = days * SECONDS_PER_DAY
    sessions = sessions_used = 0
    for period, weights, per_user in sessions_per_user(scenario, mau, days, _copy(streams.users)):
        month_sessions = int(per_user.sum())
        if period.index < len(periods) - 1:
            # A month before the last ends at least a day before the run does (its hours stop at its end,
            # whole numbers of seconds in float64): all its sessions start inside the run.
            sessions += month_sessions
        else:
            hours = _advanced(streams.sessions, sessions_used)
            within = _advanced(streams.sessions, sessions_used + month_sessions)
            for size in _chunks(month_sessions):
                sessions += int(np.count_nonzero(session_starts(period, weights, size, hours, within) < end))
        sessions_used += 2 * month_sessions
    messages = _copy(streams.messages)
    requests = sessions
    for size in _chunks(sessions):
        requests += int(messages.poisson(scenario.traffic.messages_per_session - 1.0, size=size).sum())
    chains = scenario.prompts.chains
    chain_draws = _advanced(streams.prompts, CHAIN * requests)
    chain_count = sum(
        int(np.count_nonzero(chain_draws.random(size) < chains.share)) for size in _chunks(requests)
    )
    calls = requests + (chains.steps - 1) * chain_count
    tokens = _copy(streams.tokens)
    input_dtype = _token_dtype(tokens, scenario.prompts.input_tokens, calls)  # moves `tokens` past the inputs
    output_dtype = _token_dtype(_copy(tokens), scenario.prompts.output_tokens, calls)
    totals = TrafficTotals(sessions, requests, calls, input_dtype, output_dtype)
    return _Plan(totals=totals, think_times=messages, output_tokens=tokens)


def _token_dtype(rng: np.random.Generator, dist: Distribution, n: int) -> type[np.integer]:
    """The integer type lognormal_tokens gives `n` counts drawn from `rng` (which it moves past them):
    int64 if any chunk of them needs it."""
    if dist.sigma == 0:  # one count for all, no draws
        return np.int32 if max(1, round(dist.mean)) < 2**31 else np.int64
    wide = False
    for size in _chunks(n):
        wide |= lognormal_tokens(rng, dist, size).dtype == np.int64
    return np.int64 if wide else np.int32


def _chunks(n: int) -> Iterator[int]:
    """Sizes of consecutive chunks of at most PRE_PASS_CHUNK that add up to n."""
    for start in range(0, n, PRE_PASS_CHUNK):
        yield min(PRE_PASS_CHUNK, n - start)


def _copy(rng: np.random.Generator) -> np.random.Generator:
    """An independent generator in the same state (its bit generator's buffered half-output included)."""
    return copy.deepcopy(rng)


def _advanced(rng: np.random.Generator, outputs: int) -> np.random.Generator:
    """A copy of `rng` moved on by `outputs` 64-bit outputs: where a segment of float64 uniforms that
    starts `outputs` numbers later begins (PCG64 gives one output per uniform)."""
    moved = _copy(rng)
    bits = moved.bit_generator
    assert isinstance(bits, np.random.PCG64), "cursors are positioned for PCG64 streams"
    bits.advance(outputs)
    return moved
