"""The guarded Responses API of budget.integrations.openai: `responses.create`, as authorize -> call ->
report, streamed (`stream=True`) or not.

```python
openai = guarded(AsyncOpenAI(), budget, user_id="alice")      # budget.integrations.openai.guarded
reply = await openai.responses.create(model="gpt-4o", input="Where is my order?", max_output_tokens=300)
```

Before the call it reserves the worst case: `max_output_tokens` output tokens (reasoning tokens count
within it), and the prompt's upper bound from budget.integrations.prompt_bound over `input` (a string, or
a list of items), `instructions`, `tools` and `text` (a structured output's schema); or `max_input_tokens`
given to `guarded`. It raises UnguardedCall, before any request reaches OpenAI, for a call whose cost it
cannot bound or cannot see:

- without `max_output_tokens` (as Chat Completions without `max_completion_tokens`);
- with `background=True` (its usage is known only to whoever polls the response later);
- with `previous_response_id`, `conversation` or `prompt` (a stored template), unless `guarded` was given
  `max_input_tokens`: the prompt then holds text the request does not carry;
- with a tool OpenAI runs itself (web search, file search, code interpreter, MCP, ...): those are billed
  per call beyond their tokens, which margins does not price. Function and custom tools are guarded.

On degrade the cheaper model is the one called. The usage reported is the response's: `input_tokens`, of
which `input_tokens_details.cached_tokens` were read from OpenAI's prompt cache and
`input_tokens_details.cache_write_tokens` written to it, and `output_tokens`. A call that raises is
reported with 0 tokens (outcome error), which releases its reservation.

A streamed call returns a stream that passes every event through as it arrives and reports, once
(budget.integrations.streams): the usage of the response in `response.completed` (or
`response.incomplete` or `response.failed`, which end a response cut short); or, if the stream ends,
raises or is closed before that, the prompt's upper bound as input and the UTF-8 bytes of the text,
refusal, reasoning and tool-call deltas received as output, at most `max_output_tokens`. Reasoning a model
did not stream (no summary asked for) is not in those bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, overload

try:
    from openai import AsyncOpenAI, OpenAI
    from openai.types.responses import (
        Response,
        ResponseCompletedEvent,
        ResponseFailedEvent,
        ResponseIncompleteEvent,
        ResponseStreamEvent,
        ResponseUsage,
    )
except ImportError as missing:  # one line that says what to install, not a bare ModuleNotFoundError
    raise ImportError(
        "budget.integrations.openai_responses needs the openai extra: pip install 'margins[openai]'"
    ) from missing

from budget.client import BudgetClient
from budget.errors import UnguardedCall
from budget.integrations.calls import NOTHING, AsyncCall, BlockingCall, Limits, Usage
from budget.integrations.prompt_bound import listed, prompt_token_bound, text_bytes
from budget.integrations.refusing import GuardedEndpoint
from budget.integrations.streams import AsyncGuardedStream, GuardedStream
from budget.integrations.thread import BudgetThread

CREATE = "responses.create"
# Tools the model only asks for, which the application runs: their cost is the tokens of the call.
CLIENT_TOOLS = frozenset({"function", "custom"})
# Parameters that put stored text into the prompt: the request does not carry it, so it has no bound here.
STORED_PROMPT = ("previous_response_id", "conversation", "prompt")


class Responses(GuardedEndpoint[OpenAI, BudgetThread]):
    """A synchronous OpenAI client's Responses API, `create` guarded."""

    path = "responses"

    @overload
    def create(self, *, stream: Literal[True], **params: Any) -> GuardedStream[ResponseStreamEvent]: ...

    @overload
    def create(self, *, stream: Literal[False] = False, **params: Any) -> Response: ...

    def create(self, *, stream: bool = False, **params: Any) -> Response | GuardedStream[ResponseStreamEvent]:
        """`OpenAI().responses.create(**params)`, authorized first and reported after."""
        limits = _limits(params, self._user_id, self._feature, self._max_input_tokens)
        call = BlockingCall.open(self._budget, limits)
        try:
            if stream:
                events = self._client.responses.create(**params, model=call.model, stream=True)
                return GuardedStream(events, _EventTally(limits), call)
            response: Response = self._client.responses.create(**params, model=call.model)
        except BaseException:
            call.finish(NOTHING, "error")
            raise
        call.finish(_response_usage(response, limits), "ok")
        return response


class AsyncResponses(GuardedEndpoint[AsyncOpenAI, BudgetClient]):
    """An asynchronous OpenAI client's Responses API, `create` guarded."""

    path = "responses"

    @overload
    async def create(
        self, *, stream: Literal[True], **params: Any
    ) -> AsyncGuardedStream[ResponseStreamEvent]: ...

    @overload
    async def create(self, *, stream: Literal[False] = False, **params: Any) -> Response: ...

    async def create(
        self, *, stream: bool = False, **params: Any
    ) -> Response | AsyncGuardedStream[ResponseStreamEvent]:
        """`AsyncOpenAI().responses.create(**params)`, authorized first and reported after."""
        limits = _limits(params, self._user_id, self._feature, self._max_input_tokens)
        call = await AsyncCall.open(self._budget, limits)
        try:
            if stream:
                events = await self._client.responses.create(**params, model=call.model, stream=True)
                return AsyncGuardedStream(events, _EventTally(limits), call)
            response: Response = await self._client.responses.create(**params, model=call.model)
        except BaseException:
            await call.finish(NOTHING, "error")
            raise
        await call.finish(_response_usage(response, limits), "ok")
        return response


def _limits(params: dict[str, Any], user_id: str, feature: str, max_input_tokens: int | None) -> Limits:
    """The call's worst case, or UnguardedCall for a call it cannot bound (module docstring); pops `model`
    from `params` (the granted model replaces it)."""
    model = params.pop("model", None)
    if not isinstance(model, str):
        raise UnguardedCall(CREATE, "model must be given as a string")
    max_output = params.get("max_output_tokens")
    if not isinstance(max_output, int) or isinstance(max_output, bool) or max_output <= 0:
        raise UnguardedCall(
            CREATE, "give max_output_tokens as a positive int: without it the worst case has no bound"
        )
    if params.get("background"):
        raise UnguardedCall(
            CREATE, "background=True is not guarded: its usage is known only once the response is polled"
        )
    listed(params, "input", "tools")  # a generator of tools is checked and measured, then sent, whole
    _refuse_hosted_tools(params.get("tools"))
    if max_input_tokens is None:
        stored = [name for name in STORED_PROMPT if params.get(name) is not None]
        if stored:
            raise UnguardedCall(
                CREATE,
                f"{stored[0]} puts stored text into the prompt, which the request does not carry: "
                "give guarded() max_input_tokens to bound the prompt",
            )
        prompt = params.get("input")
        items = [] if prompt is None else [prompt] if isinstance(prompt, str) else prompt
        max_input_tokens = prompt_token_bound(
            params.get("instructions"), params.get("tools"), params.get("text"), messages=items
        )
    return Limits(user_id, model, max_input_tokens, max_output, feature)


def _refuse_hosted_tools(tools: object) -> None:
    for tool in tools if isinstance(tools, list | tuple) else ():
        kind = tool.get("type") if isinstance(tool, Mapping) else getattr(tool, "type", None)
        if kind not in CLIENT_TOOLS:
            raise UnguardedCall(
                CREATE,
                f"a {kind!r} tool is run by OpenAI and billed per call beyond its tokens, which margins "
                "does not price: only function and custom tools are guarded",
            )


def _usage(usage: ResponseUsage) -> Usage:
    details = usage.input_tokens_details
    cached = getattr(details, "cached_tokens", None) or 0
    written = getattr(details, "cache_write_tokens", None) or 0
    # Both are parts of input_tokens; a report claiming more would be refused by the enforcer and leave
    # the call unsettled, so the writes are capped at the prompt tokens that were not read from the cache.
    written = max(0, min(written, usage.input_tokens - cached))
    return Usage(usage.input_tokens, usage.output_tokens, cached, written)


def _response_usage(response: Response, limits: Limits) -> Usage:
    """The response's usage; without one (some OpenAI-compatible servers), the bounds: the prompt's and the
    output's bytes."""
    if response.usage is not None:
        return _usage(response.usage)
    output = 0
    for item in response.output:
        output += text_bytes(getattr(item, "arguments", None), getattr(item, "input", None))
        for part in getattr(item, "content", None) or ():
            output += text_bytes(getattr(part, "text", None), getattr(part, "refusal", None))
    return Usage(limits.max_input_tokens, min(output, limits.max_output_tokens))


class _EventTally:
    """Reads Responses stream events: the usage of the response that ends the stream, and the bytes of
    the text deltas before it."""

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._output_bytes = 0
        self._final: Usage | None = None

    def see(self, item: ResponseStreamEvent) -> bool:
        if isinstance(item, ResponseCompletedEvent | ResponseIncompleteEvent | ResponseFailedEvent):
            if item.response.usage is not None:
                self._final = _usage(item.response.usage)
        else:
            # every event that streams model output carries it as a string `delta` (text, refusal,
            # reasoning, function and custom tool input)
            self._output_bytes += text_bytes(getattr(item, "delta", None))
        return True

    def final(self) -> Usage | None:
        return self._final

    def received(self) -> Usage:
        return Usage(self._limits.max_input_tokens, min(self._output_bytes, self._limits.max_output_tokens))
