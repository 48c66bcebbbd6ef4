"""Conversation context: what each call of a chat turn resends, vectorized over every session at once.

The rule ([prompts.context], sim/model/scenario.py): a call that answers the user sends the system prompt,
the history of its session and its own new input, at most `max_tokens`. A turn enters the history as its
last call's new input and that call's answer, whatever answered it: a turn the exact or semantic cache
answered (keyed on the new message alone, as FAQ bots are) was still shown, and the next turn resends it.
Deterministic chain steps depend only on their shared context (that is what lets the fragment cache serve
them) and carry no conversation.

Sessions are contiguous runs of requests in time order (sim/model/traffic.py draws them so), so a turn's
history is a difference of one cumulative sum. At the limit:
- `truncate` drops the oldest turns: the first kept turn is the first that lets this turn fit (a binary
  search in the cumulative sum). It never moves back: a turn's history holds the whole previous turn;
- `summarize` replaces the history by a summary, made by a call of its own just before the turn that would
  not fit (when there is more history than a summary). Which turns summarize depends on the summaries
  before them, so sessions are walked one turn index at a time -- every session at once, a handful of
  numpy steps per index.

Summary calls are appended after the turns' calls (call_step -1), so every turn's call keeps its id and
its counter-based draws whether or not summaries happen. For the provider prompt cache
(sim/model/policies/prompt_cache.py), every turn has an epoch -- the turn its history starts from (the
session's first turn, the first kept turn, or the turn of the last summary): the prompts of one epoch
extend each other.

Memory is time here: a page a process touches for the first time costs far more than the arithmetic on
it, so the calls' inputs are updated in place, a slice at a time, and only per-request arrays are kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.model.scenario import ConversationContext

NO_EPOCH = -1  # the epoch of a call that carries no conversation
SUMMARY_STEP = -1  # the call_step of a summary call


@dataclass(frozen=True, slots=True)
class Conversation:
    """The context a run's calls carry: per request, the history tokens its calls carry and its epoch
    (int32), and per summary call -- the last `summaries` calls -- the epoch whose history it condenses."""

    system_tokens: int
    history_carried: bool  # does a turn's last call's new input enter the history?
    history: np.ndarray
    epoch: np.ndarray
    summary_epoch: np.ndarray
    summaries: int

    def prefixes(
        self, call_request: np.ndarray, calls: np.ndarray, inputs: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For `calls` -- ascending ids of calls that carry the conversation, each request's all or none
        (as one model's cache sees them) -- their requests, epochs, and how many leading tokens of each
        one's prompt (of `inputs` tokens) a later call of its epoch resends: its system prompt and
        history, and its own new input too when that enters the history (a turn's last call); all of a
        summary call's prompt (no later call of its epoch comes)."""
        turn_calls = call_request.size - self.summaries
        request = call_request[calls]
        turns = int(np.searchsorted(calls, turn_calls))  # the summary calls come last
        epoch: np.ndarray = self.epoch[request]
        epoch[turns:] = self.summary_epoch[calls[turns:] - turn_calls]
        shared: np.ndarray = self.history[request]
        shared += self.system_tokens  # both at most the limit: int32 holds them
        np.minimum(shared, inputs, out=shared)
        whole = np.zeros(calls.size, dtype=bool)
        whole[turns:] = True
        if self.history_carried:  # a request's last call: the next one in `calls` is another request's
            whole[:turns] = np.r_[request[1:turns] != request[: turns - 1], True][:turns]
        shared[whole] = inputs[whole]
        return request, epoch, shared


@dataclass(frozen=True, slots=True)
class ConversationCalls:
    """The calls with their context: the turns' calls in their original order, then the summary calls."""

    call_request: np.ndarray
    call_step: np.ndarray
    call_deterministic: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    conversation: Conversation


@dataclass(frozen=True, slots=True)
class _Histories:
    """Per request: the history its calls carry and its epoch; for each summary, its request and input."""

    tokens: np.ndarray
    epoch: np.ndarray
    summary_request: np.ndarray
    summary_input: np.ndarray
    summary_epoch: np.ndarray


BLOCK = 1 << 18  # requests worked on at a time (whole sessions): small temporaries


def carry(
    context: ConversationContext,
    session_messages: np.ndarray,
    call_request: np.ndarray,
    call_step: np.ndarray,
    call_deterministic: np.ndarray,
    input_tokens: np.ndarray,
    output_tokens: np.ndarray,
) -> ConversationCalls:
    """The calls of sessions of `session_messages` requests each, with the context each call sends.

    `input_tokens` and `output_tokens` are the drawn new input and answer of every call; calls of a request
    are contiguous and requests of a session too, in time order. `input_tokens` is overwritten with what
    each call sends (the caller gives up its drawn array). Sessions are worked on a block at a time.
    """
    requests = int(session_messages.sum())
    history = np.zeros(requests, dtype=np.int32)
    epoch = np.zeros(requests, dtype=np.int32)
    summaries: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    session_end = np.cumsum(session_messages)
    # Each block ends at the first session end past a multiple of BLOCK requests.
    block_end = np.unique(
        np.r_[session_end[np.searchsorted(session_end, np.arange(BLOCK, requests, BLOCK))], requests]
    )
    if not requests:
        block_end = block_end[:0]
    session_start, request_start, call_start = 0, 0, 0
    for request_end in block_end.tolist():
        session_stop = int(np.searchsorted(session_end, request_end, side="right"))
        call_end = int(np.searchsorted(call_request, request_end, side="left"))
        calls = slice(call_start, call_end)
        owner = call_request[calls] - request_start  # each call's request, within the block
        block = _histories(
            context,
            session_messages[session_start:session_stop],
            input_tokens[calls],
            output_tokens[calls],
            owner,
        )
        history[request_start:request_end] = block.tokens
        epoch[request_start:request_end] = block.epoch + request_start
        if block.summary_request.size:
            summaries.append(
                (
                    block.summary_request + request_start,
                    block.summary_input,
                    block.summary_epoch + request_start,
                )
            )
        sends = block.tokens[owner].astype(np.int64)
        sends += context.system_tokens
        sends += input_tokens[calls]
        np.minimum(sends, context.max_tokens, out=sends)
        np.copyto(input_tokens[calls], sends, where=~call_deterministic[calls], casting="unsafe")
        session_start, request_start, call_start = session_stop, request_end, call_end
    summary = summary_input = summary_epoch = np.zeros(0, dtype=np.int64)
    if summaries:
        summary, summary_input, summary_epoch = (
            np.concatenate(column) for column in zip(*summaries, strict=True)
        )
    conversation = Conversation(
        system_tokens=context.system_tokens,
        history_carried=context.history,
        history=history,
        epoch=epoch,
        summary_epoch=summary_epoch,
        summaries=int(summary.size),
    )
    if not conversation.summaries:
        return ConversationCalls(
            call_request, call_step, call_deterministic, input_tokens, output_tokens, conversation
        )
    count = conversation.summaries
    return ConversationCalls(
        call_request=np.concatenate([call_request, summary]),
        call_step=np.concatenate([call_step, np.full(count, SUMMARY_STEP, dtype=call_step.dtype)]),
        call_deterministic=np.concatenate([call_deterministic, np.zeros(count, dtype=bool)]),
        input_tokens=np.concatenate([input_tokens, summary_input.astype(input_tokens.dtype)]),
        output_tokens=np.concatenate(
            [output_tokens, np.full(count, context.summary_tokens, dtype=output_tokens.dtype)]
        ),
        conversation=conversation,
    )


def _histories(
    context: ConversationContext,
    session_messages: np.ndarray,
    inputs: np.ndarray,
    outputs: np.ndarray,
    owner: np.ndarray,
) -> _Histories:
    """Each turn's history (int32: at most the limit) under the context's rule, and its epoch (no history:
    every turn its own epoch), for sessions of `session_messages` turns whose calls (their drawn `inputs`
    and `outputs`) belong to requests `owner`, numbered from 0."""
    n = int(session_messages.sum())
    last = np.flatnonzero(np.r_[owner[1:] != owner[:-1], True])  # each request's last call
    new, answer = inputs[last], outputs[last]
    nothing = np.zeros(0, dtype=np.int64)
    if not context.history:
        return _Histories(
            np.zeros(n, dtype=np.int32), np.arange(n, dtype=np.int32), nothing, nothing, nothing
        )
    first = np.cumsum(session_messages) - session_messages
    before = np.zeros(n + 1, dtype=np.int64)  # before[r]: every turn before r, all sessions, in tokens
    before[1:] = new
    before[1:] += answer
    entry = before[1:].copy() if context.at_limit == "summarize" else None
    np.cumsum(before[1:], out=before[1:])
    start = np.repeat(first, session_messages)  # each request's session's first request
    history = before[start]
    np.subtract(before[:n], history, out=history)
    room = context.max_tokens - context.system_tokens - new  # history that fits beside the new input
    if not np.any(history > room):
        return _Histories(history.astype(np.int32), start.astype(np.int32), nothing, nothing, nothing)
    if entry is None:
        return _truncated(before, start, room)
    return _summarized(context, first, session_messages, entry, new.astype(np.int64))


def _truncated(before: np.ndarray, start: np.ndarray, room: np.ndarray) -> _Histories:
    """Drop the oldest turns: the first kept turn is the first of the session that lets the turn fit."""
    n = room.size
    kept_from = np.searchsorted(before, before[:n] - room, side="left")
    np.maximum(kept_from, start, out=kept_from)
    np.minimum(kept_from, np.arange(n), out=kept_from)  # no room at all: no history
    nothing = np.zeros(0, dtype=np.int64)
    history = (before[:n] - before[kept_from]).astype(np.int32)
    return _Histories(history, kept_from.astype(np.int32), nothing, nothing, nothing)


def _summarized(
    context: ConversationContext,
    first: np.ndarray,
    session_messages: np.ndarray,
    entry: np.ndarray,
    new: np.ndarray,
) -> _Histories:
    """Walk every session a turn index at a time: carry the history, summarize where a turn would not fit."""
    n = new.size
    system, limit, summary = context.system_tokens, context.max_tokens, context.summary_tokens
    history = np.zeros(n, dtype=np.int64)
    epoch = np.repeat(first, session_messages)
    summary_input = np.zeros(n, dtype=np.int64)
    summary_epoch = np.full(n, NO_EPOCH, dtype=np.int64)
    longest_first = np.argsort(-session_messages, kind="stable")
    lengths = session_messages[longest_first]
    carried = np.zeros(first.size, dtype=np.int64)  # per session, the history its next turn carries
    current = first.astype(np.int64)  # per session, its current epoch
    for turn in range(1, int(lengths.max(initial=0))):
        alive = longest_first[: int(np.count_nonzero(lengths > turn))]
        r = first[alive] + turn
        tokens = carried[alive] + entry[r - 1]
        over = (system + tokens + new[r] > limit) & (tokens > summary)
        if over.any():
            at = r[over]
            summary_input[at] = np.minimum(system + tokens[over], limit)
            summary_epoch[at] = current[alive[over]]
            tokens[over] = summary
            current[alive[over]] = at
        history[r] = tokens
        epoch[r] = current[alive]
        carried[alive] = tokens
    made = np.flatnonzero(summary_epoch != NO_EPOCH)
    return _Histories(
        history.astype(np.int32), epoch.astype(np.int32), made, summary_input[made], summary_epoch[made]
    )
