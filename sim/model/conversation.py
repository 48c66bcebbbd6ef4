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

    def call_epoch(self, call_request: np.ndarray, calls: np.ndarray) -> np.ndarray:
        """The epoch of each of `calls`, calls that carry the conversation (no deterministic chain step)."""
        turns = call_request.size - self.summaries
        epoch: np.ndarray = self.epoch[call_request[calls]].astype(np.int64)
        summary = np.flatnonzero(calls >= turns)
        epoch[summary] = self.summary_epoch[calls[summary] - turns]
        return epoch

    def call_shared(self, call_request: np.ndarray, calls: np.ndarray, inputs: np.ndarray) -> np.ndarray:
        """How many leading tokens of each of `calls`' prompt (of `inputs` tokens) a later call of its epoch
        resends: its system prompt and history, and its own new input too when that enters the history (a
        turn's last call); all of a summary call's prompt (no later call of its epoch comes)."""
        turns = call_request.size - self.summaries
        inside = np.minimum(calls, turns - 1)
        shared: np.ndarray = self.history[call_request[inside]].astype(np.int64)
        shared += self.system_tokens
        whole = calls >= turns
        if self.history_carried:
            following = np.minimum(inside + 1, turns - 1)
            whole |= (inside == turns - 1) | (call_request[following] != call_request[inside])
        np.minimum(shared, inputs, out=shared)
        shared[whole] = inputs[whole]
        return shared


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


SLICE = 1 << 20  # calls updated at a time: small temporaries


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
    each call sends (the caller gives up its drawn array).
    """
    requests = int(session_messages.sum())
    last = np.flatnonzero(np.r_[call_request[1:] != call_request[:-1], True])  # each request's last call
    histories = _histories(context, session_messages, input_tokens[last], output_tokens[last], requests)
    del last
    system, limit = context.system_tokens, context.max_tokens
    for start in range(0, call_request.size, SLICE):
        part = slice(start, start + SLICE)
        sends = histories.tokens[call_request[part]].astype(np.int64)
        sends += system
        sends += input_tokens[part]
        np.minimum(sends, limit, out=sends)
        np.copyto(input_tokens[part], sends, where=~call_deterministic[part], casting="unsafe")
    conversation = Conversation(
        system_tokens=system,
        history_carried=context.history,
        history=histories.tokens,
        epoch=histories.epoch,
        summary_epoch=histories.summary_epoch,
        summaries=int(histories.summary_request.size),
    )
    if not conversation.summaries:
        return ConversationCalls(
            call_request, call_step, call_deterministic, input_tokens, output_tokens, conversation
        )
    summary, count = histories.summary_request, conversation.summaries
    return ConversationCalls(
        call_request=np.concatenate([call_request, summary]),
        call_step=np.concatenate([call_step, np.full(count, SUMMARY_STEP, dtype=call_step.dtype)]),
        call_deterministic=np.concatenate([call_deterministic, np.zeros(count, dtype=bool)]),
        input_tokens=np.concatenate([input_tokens, histories.summary_input.astype(input_tokens.dtype)]),
        output_tokens=np.concatenate(
            [output_tokens, np.full(count, context.summary_tokens, dtype=output_tokens.dtype)]
        ),
        conversation=conversation,
    )


def _histories(
    context: ConversationContext, session_messages: np.ndarray, new: np.ndarray, answer: np.ndarray, n: int
) -> _Histories:
    """Each turn's history (int32: at most the limit) under the context's rule, and its epoch (no history:
    every turn its own epoch)."""
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
    history = np.repeat(before[first], session_messages)
    np.subtract(before[:n], history, out=history)
    room = context.max_tokens - context.system_tokens - new  # history that fits beside the new input
    if not np.any(history > room):
        start = np.repeat(first.astype(np.int32), session_messages)
        return _Histories(history.astype(np.int32), start, nothing, nothing, nothing)
    if entry is None:
        return _truncated(before, np.repeat(first, session_messages), room)
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
