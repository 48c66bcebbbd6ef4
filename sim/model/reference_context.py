"""The per-request reference's conversation context, written independently of sim/model/conversation.py.

The same rule in plain Python, one session and one turn at a time: a history that grows by each turn's
new input and answer, an oldest-first trim or a summary call at the limit, and what every call sends. And
the provider prompt cache as the reference meets the calls, one sent call after another: what the
previous call of a conversation's epoch sent to a model, and when any call last sent it the system prompt.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace

import numpy as np

from sim.model.conversation import NO_EPOCH, SUMMARY_STEP, Conversation
from sim.model.scenario import ConversationContext, Scenario
from sim.model.traffic import Traffic


@dataclass(slots=True)
class _Calls:
    """The calls as plain lists: the drawn ones first, then the summary calls as they are made."""

    request: list[int]
    step: list[int]
    deterministic: list[bool]
    inputs: list[int]  # what each call sends
    outputs: list[int]
    drawn: list[int]  # each drawn call's own new input
    epoch: list[int] = field(default_factory=list)
    shared: list[int] = field(default_factory=list)
    history: list[int] = field(default_factory=list)  # per request
    request_epoch: list[int] = field(default_factory=list)  # per request
    summary_of: dict[int, int] = field(default_factory=dict)  # request -> its summary call


@dataclass(frozen=True, slots=True)
class ReferenceConversation:
    """The traffic with its context; per call, its epoch and the tokens of its prompt later calls of the
    epoch resend; each summarizing request's summary call."""

    traffic: Traffic
    call_epoch: list[int]
    call_shared: list[int]
    summary_of: dict[int, int]


def converse(context: ConversationContext, drawn: Traffic) -> ReferenceConversation:
    """The drawn traffic with every call's context."""
    assert drawn.session_messages is not None
    calls = _Calls(
        request=drawn.call_request.tolist(),
        step=drawn.call_step.tolist(),
        deterministic=drawn.call_deterministic.tolist(),
        inputs=drawn.input_tokens.tolist(),
        outputs=drawn.output_tokens.tolist(),
        drawn=drawn.input_tokens.tolist(),
    )
    turns = len(calls.request)
    calls.epoch = [NO_EPOCH] * turns
    calls.shared = [0] * turns
    calls.history = [0] * drawn.requests
    calls.request_epoch = [0] * drawn.requests
    own: dict[int, list[int]] = {}
    for call, request in enumerate(calls.request):
        own.setdefault(request, []).append(call)
    request = 0
    for messages in drawn.session_messages.tolist():
        _session(context, calls, [own[r] for r in range(request, request + messages)], request)
        request += messages
    summaries = len(calls.request) - turns
    summary_epoch = calls.epoch[turns:]
    traffic = replace(
        drawn,
        call_request=np.asarray(calls.request, dtype=np.int64),
        call_step=np.asarray(calls.step, dtype=np.int64),
        call_deterministic=np.asarray(calls.deterministic, dtype=bool),
        input_tokens=np.asarray(calls.inputs, dtype=np.int64),
        output_tokens=np.asarray(calls.outputs, dtype=np.int64),
        conversation=Conversation(
            system_tokens=context.system_tokens,
            history_carried=context.history,
            history=np.asarray(calls.history, dtype=np.int64),
            epoch=np.asarray(calls.request_epoch, dtype=np.int64),
            summary_epoch=np.asarray(summary_epoch, dtype=np.int64),
            summaries=summaries,
        ),
    )
    return ReferenceConversation(traffic, calls.epoch, calls.shared, calls.summary_of)


def _session(context: ConversationContext, calls: _Calls, turns: list[list[int]], first: int) -> None:
    """One session's turns in order: the history each carries, then what each of its calls sends."""
    system, limit = context.system_tokens, context.max_tokens
    kept: deque[tuple[int, int]] = deque()  # (request, tokens) of the turns the history holds
    summary = 0  # the summary's tokens at the head of the history, if any
    epoch = first
    for index, own in enumerate(turns):
        request = first + index
        last = own[-1]
        new = calls.drawn[last]
        if context.history and index:
            previous = turns[index - 1][-1]
            kept.append((request - 1, calls.drawn[previous] + calls.outputs[previous]))
            carried = summary + sum(tokens for _, tokens in kept)
            if system + carried + new > limit:
                if context.at_limit == "truncate":
                    while kept and system + summary + sum(tokens for _, tokens in kept) + new > limit:
                        kept.popleft()
                elif carried > context.summary_tokens:
                    _summarize(context, calls, request, epoch, min(system + carried, limit))
                    kept.clear()
                    summary, epoch = context.summary_tokens, request
        if not context.history:
            epoch = request
        elif context.at_limit == "truncate":
            epoch = kept[0][0] if kept else request
        history = summary + sum(tokens for _, tokens in kept)
        calls.history[request] = history
        calls.request_epoch[request] = epoch
        for call in own:
            if calls.deterministic[call]:
                continue
            sends = min(system + history + calls.drawn[call], limit)
            resent = system + history + (calls.drawn[call] if call == last and context.history else 0)
            calls.inputs[call] = sends
            calls.epoch[call] = epoch
            calls.shared[call] = min(resent, sends)


def _summarize(context: ConversationContext, calls: _Calls, request: int, epoch: int, tokens: int) -> None:
    calls.summary_of[request] = len(calls.request)
    calls.request.append(request)
    calls.step.append(SUMMARY_STEP)
    calls.deterministic.append(False)
    calls.inputs.append(tokens)
    calls.outputs.append(context.summary_tokens)
    calls.epoch.append(epoch)
    calls.shared.append(tokens)


class PromptCacheLog:
    """The provider prompt caches as calls are sent, one after another, for conversation traffic."""

    def __init__(self, scenario: Scenario, conversation: ReferenceConversation, inputs: list[int]) -> None:
        self.providers = [scenario.provider(model) for model in scenario.models]
        self.system = scenario.prompts.context.system_tokens
        self.epoch = conversation.call_epoch
        self.shared = conversation.call_shared
        self.inputs = inputs
        self.sent: dict[tuple[int, int], tuple[float, int]] = {}  # (epoch, model) -> (when, tokens)
        self.system_sent: dict[int, float] = {}  # model -> when

    def send(self, call: int, model: int, now: float) -> tuple[int, int]:
        """The call is sent now: (input tokens read from the cache, written to it)."""
        provider, epoch = self.providers[model], self.epoch[call]
        if not provider.prompt_cache or epoch == NO_EPOCH:
            return 0, 0
        ttl = provider.prompt_cache_ttl_s
        read = 0
        previous = self.sent.get((epoch, model))
        if previous is not None and now - previous[0] <= ttl:
            read = previous[1]
        system_at = self.system_sent.get(model)
        if system_at is not None and now - system_at <= ttl:
            read = max(read, self.system)
        self.sent[(epoch, model)] = (now, self.shared[call])
        self.system_sent[model] = now
        inputs = self.inputs[call]
        read = min(read, inputs)
        if inputs < provider.prompt_cache_min_tokens:
            return 0, 0
        if read < provider.prompt_cache_min_tokens:
            return 0, inputs
        return read, inputs - read
