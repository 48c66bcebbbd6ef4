"""Guarded Anthropic clients: `guarded(client, budget, user_id=...)` turns each Messages call into
authorize -> call -> report (`pip install 'margins[anthropic]'`).

```python
claude = guarded(AsyncAnthropic(), budget, user_id="alice")   # budget: an entered BudgetClient
reply = await claude.messages.create(model="claude-sonnet-4.5", messages=[...], max_tokens=300)
```

Before the call it reserves the worst case: `max_tokens` output tokens (extended thinking counts within
it), and the prompt's upper bound from budget.integrations.prompt_bound over the system prompt, messages
and tools, plus TOOL_USE_TOKENS when tools are given (Anthropic adds a tool-use system prompt); or
`max_input_tokens` given to `guarded`. It raises BudgetDenied (an unknown model included) or
AuthorizationTimeout before any request reaches Anthropic. On degrade the cheaper model is the one called.

Anthropic's `input_tokens` leaves out the prompt tokens read from and written to its prompt cache; margins
counts every prompt token as input, so the report is input = `input_tokens` + `cache_read_input_tokens` +
`cache_creation_input_tokens`, of which the reads are cached input and the creations cache writes (billed
at the catalog's `cache_write` price), and output = `output_tokens`. A call that raises is reported with 0
tokens (outcome error), which releases its reservation.

A streamed call (`stream=True`) returns a stream that passes events through as they arrive. It reports,
once (budget.integrations.streams):

- at `message_delta` (whose usage is the call's final, cumulative count): the counts above, taking the
  prompt's counts from `message_start` where `message_delta` leaves them out;
- if the stream ends, raises or is closed before that: the prompt's counts from `message_start` if it
  came (Anthropic counts the prompt before it answers), else the prompt's upper bound with nothing
  cached; output tokens = the larger of `message_start`'s output count and the UTF-8 bytes of the text,
  thinking and tool-input deltas received (an upper bound on their tokens), at most `max_tokens`. Outcome:
  ok if the stream ended, error if it raised, aborted if it was closed.

`messages.stream(...)`, the SDK's stream helper (`with client.messages.stream(...) as stream:`, its
`text_stream`, `get_final_message()` and the rest), runs over such a guarded streamed call: authorized as
the `with` block is entered (BudgetDenied is raised there), reported as above, and, if the block is left
before the message ends, reported as closed (aborted). Its `output_format` (a type to parse the reply
into) is refused with UnguardedCall: give the schema as `output_config` instead.

A synchronous `Anthropic` client takes a BudgetThread (budget.integrations.thread) as its budget. Only
`messages.create` and `messages.stream` are guarded: any other attribute of a guarded client
(`messages.batches`, `beta`, ...) raises NotGuarded rather than hand out an unguarded call path;
`.unguarded` is the client as given, for calls made unguarded on purpose.

Model names are priced by the enforcer's catalog (genai-prices' data, and its `[prices]` tables), which
knows the names Anthropic's API takes: `claude-sonnet-4-5`, `claude-sonnet-4.5` and the dated snapshot
`claude-sonnet-4-5-20250929` are one model at one price. A model the enforcer cannot price is denied
before the call.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, Literal, cast, overload

try:
    from anthropic import NOT_GIVEN, Anthropic, AsyncAnthropic, AsyncStream, Stream
    from anthropic.lib.streaming import AsyncMessageStreamManager, MessageStreamManager
    from anthropic.types import Message, MessageDeltaUsage, RawMessageStreamEvent
    from anthropic.types import Usage as AnthropicUsage
except ImportError as missing:  # one line that says what to install, not a bare ModuleNotFoundError
    raise ImportError(
        "budget.integrations.anthropic needs the anthropic extra: pip install 'margins[anthropic]'"
    ) from missing

from budget.client import BudgetClient
from budget.errors import UnguardedCall
from budget.integrations.calls import NOTHING, AsyncCall, BlockingCall, Limits, Usage
from budget.integrations.prompt_bound import listed, prompt_token_bound, text_bytes
from budget.integrations.refusing import GuardedEndpoint, OnlyGuarded
from budget.integrations.streams import AsyncGuardedStream, GuardedStream
from budget.integrations.thread import BudgetThread

__all__ = ["AsyncGuardedAnthropic", "GuardedAnthropic", "guarded"]

CREATE = "messages.create"
STREAM = "messages.stream"
# Anthropic's tool-use system prompt, added when a request has tools: its documented sizes are 300-700
# tokens by model and tool_choice; 1,000 keeps the bound above them.
TOOL_USE_TOKENS = 1_000


@overload
def guarded(
    client: Anthropic,
    budget: BudgetThread,
    *,
    user_id: str,
    feature: str = "default",
    max_input_tokens: int | None = None,
) -> GuardedAnthropic: ...


@overload
def guarded(
    client: AsyncAnthropic,
    budget: BudgetClient,
    *,
    user_id: str,
    feature: str = "default",
    max_input_tokens: int | None = None,
) -> AsyncGuardedAnthropic: ...


def guarded(
    client: Anthropic | AsyncAnthropic,
    budget: BudgetThread | BudgetClient,
    *,
    user_id: str,
    feature: str = "default",
    max_input_tokens: int | None = None,
) -> GuardedAnthropic | AsyncGuardedAnthropic:
    """`client`'s Messages, guarded for `user_id` (see the module docstring). An `AsyncAnthropic` takes the
    BudgetClient it runs beside; an `Anthropic` a BudgetThread. `max_input_tokens` replaces the prompt's
    byte-count bound (for prompts with media the bound cannot see, such as documents by URL)."""
    if isinstance(client, AsyncAnthropic) and isinstance(budget, BudgetClient):
        return AsyncGuardedAnthropic(client, budget, user_id, feature, max_input_tokens)
    if isinstance(client, Anthropic) and isinstance(budget, BudgetThread):
        return GuardedAnthropic(client, budget, user_id, feature, max_input_tokens)
    raise TypeError(
        "guarded() takes an AsyncAnthropic with a BudgetClient, or an Anthropic with a BudgetThread; got "
        f"{type(client).__name__} with {type(budget).__name__}"
    )


class GuardedAnthropic(OnlyGuarded):
    """A synchronous Anthropic client whose `messages.create` and `messages.stream` are guarded."""

    def __init__(
        self,
        client: Anthropic,
        budget: BudgetThread,
        user_id: str,
        feature: str,
        max_input_tokens: int | None,
    ) -> None:
        self.unguarded = client
        self.messages = _Messages(client, budget, user_id, feature, max_input_tokens)


class AsyncGuardedAnthropic(OnlyGuarded):
    """An asynchronous Anthropic client whose `messages.create` and `messages.stream` are guarded."""

    def __init__(
        self,
        client: AsyncAnthropic,
        budget: BudgetClient,
        user_id: str,
        feature: str,
        max_input_tokens: int | None,
    ) -> None:
        self.unguarded = client
        self.messages = _AsyncMessages(client, budget, user_id, feature, max_input_tokens)


class _Messages(GuardedEndpoint[Anthropic, BudgetThread]):
    path = "messages"

    @overload
    def create(self, *, stream: Literal[True], **params: Any) -> GuardedStream[RawMessageStreamEvent]: ...

    @overload
    def create(self, *, stream: Literal[False] = False, **params: Any) -> Message: ...

    def create(
        self, *, stream: bool = False, **params: Any
    ) -> Message | GuardedStream[RawMessageStreamEvent]:
        """`Anthropic().messages.create(**params)`, authorized first and reported after."""
        limits = _limits(params, self._user_id, self._feature, self._max_input_tokens, CREATE)
        if stream:
            return self._guarded_stream(limits, params)
        call = BlockingCall.open(self._budget, limits)
        try:
            response: Message = self._client.messages.create(**params, model=call.model)
        except BaseException:
            call.finish(NOTHING, "error")
            raise
        call.finish(_usage(response.usage), "ok")
        return response

    def stream(self, **params: Any) -> MessageStreamManager[Any]:
        """`Anthropic().messages.stream(**params)`: the SDK's stream helper over a guarded streamed call,
        authorized as its `with` block is entered and reported as `create(stream=True)` is."""
        limits = _limits(params, self._user_id, self._feature, self._max_input_tokens, STREAM)
        return MessageStreamManager(
            lambda: _sdk_stream(self._guarded_stream(limits, params)), output_format=NOT_GIVEN
        )

    def _guarded_stream(self, limits: Limits, params: dict[str, Any]) -> GuardedStream[RawMessageStreamEvent]:
        call = BlockingCall.open(self._budget, limits)
        try:
            events = self._client.messages.create(**params, model=call.model, stream=True)
        except BaseException:
            call.finish(NOTHING, "error")
            raise
        return GuardedStream(events, _EventTally(limits), call)


class _AsyncMessages(GuardedEndpoint[AsyncAnthropic, BudgetClient]):
    path = "messages"

    @overload
    async def create(
        self, *, stream: Literal[True], **params: Any
    ) -> AsyncGuardedStream[RawMessageStreamEvent]: ...

    @overload
    async def create(self, *, stream: Literal[False] = False, **params: Any) -> Message: ...

    async def create(
        self, *, stream: bool = False, **params: Any
    ) -> Message | AsyncGuardedStream[RawMessageStreamEvent]:
        """`AsyncAnthropic().messages.create(**params)`, authorized first and reported after."""
        limits = _limits(params, self._user_id, self._feature, self._max_input_tokens, CREATE)
        if stream:
            return await self._guarded_stream(limits, params)
        call = await AsyncCall.open(self._budget, limits)
        try:
            response: Message = await self._client.messages.create(**params, model=call.model)
        except BaseException:
            await call.finish(NOTHING, "error")
            raise
        await call.finish(_usage(response.usage), "ok")
        return response

    def stream(self, **params: Any) -> AsyncMessageStreamManager[Any]:
        """`AsyncAnthropic().messages.stream(**params)`: the SDK's stream helper over a guarded streamed
        call, authorized as its `async with` block is entered and reported as `create(stream=True)` is."""
        limits = _limits(params, self._user_id, self._feature, self._max_input_tokens, STREAM)
        return AsyncMessageStreamManager(_async_sdk_stream(self._guarded_stream(limits, params)))

    async def _guarded_stream(
        self, limits: Limits, params: dict[str, Any]
    ) -> AsyncGuardedStream[RawMessageStreamEvent]:
        call = await AsyncCall.open(self._budget, limits)
        try:
            events = await self._client.messages.create(**params, model=call.model, stream=True)
        except BaseException:
            await call.finish(NOTHING, "error")
            raise
        return AsyncGuardedStream(events, _EventTally(limits), call)


def _sdk_stream(stream: GuardedStream[RawMessageStreamEvent]) -> Stream[RawMessageStreamEvent]:
    """The guarded stream as the SDK's stream helper takes it: it iterates, closes and reads `response`
    of its raw stream, all of which the guarded stream does (the last by passing it through)."""
    return cast(Stream[RawMessageStreamEvent], stream)


async def _async_sdk_stream(
    opening: Coroutine[Any, Any, AsyncGuardedStream[RawMessageStreamEvent]],
) -> AsyncStream[RawMessageStreamEvent]:
    return cast(AsyncStream[RawMessageStreamEvent], await opening)


def _limits(
    params: dict[str, Any], user_id: str, feature: str, max_input_tokens: int | None, method: str
) -> Limits:
    """The worst case of a call of `method`; pops `model` from `params` (the granted model replaces it)."""
    model = params.pop("model", None)
    if not isinstance(model, str):
        raise UnguardedCall(method, "model must be given as a string")
    max_output = params.get("max_tokens")
    if not isinstance(max_output, int) or max_output <= 0:
        raise UnguardedCall(method, f"max_tokens must be a positive int, got {max_output!r}")
    if method == STREAM and params.pop("output_format", None) is not None:
        raise UnguardedCall(
            method,
            "output_format is not taken by the guarded stream helper: give the schema as "
            "output_config={'format': {'type': 'json_schema', 'schema': ...}}",
        )
    if max_input_tokens is None:
        listed(params, "messages", "tools", "system")
        tools = params.get("tools")
        max_input_tokens = prompt_token_bound(
            params.get("system"), tools, params.get("tool_choice"), messages=params.get("messages") or ()
        ) + (TOOL_USE_TOKENS if tools else 0)
    return Limits(user_id, model, max_input_tokens, max_output, feature)


def _usage(usage: AnthropicUsage | MessageDeltaUsage, prompt: Usage | None = None) -> Usage:
    """margins' counts of an Anthropic usage; `prompt` fills in prompt counts it leaves out."""
    read, written, uncached = (
        usage.cache_read_input_tokens,
        usage.cache_creation_input_tokens,
        usage.input_tokens,
    )
    if prompt is not None and uncached is None:
        return Usage(
            prompt.input_tokens, usage.output_tokens, prompt.cached_input_tokens, prompt.cache_write_tokens
        )
    read, written, uncached = read or 0, written or 0, uncached or 0
    return Usage(uncached + read + written, usage.output_tokens, read, written)


class _EventTally:
    """Reads Messages stream events: the prompt's counts at message_start, the final usage at
    message_delta, and the bytes of the deltas in between."""

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._prompt: Usage | None = None
        self._output_bytes = 0
        self._final: Usage | None = None

    def see(self, item: RawMessageStreamEvent) -> bool:
        if item.type == "message_start":
            self._prompt = _usage(item.message.usage)
        elif item.type == "content_block_delta":
            delta = item.delta
            if delta.type == "text_delta":
                self._output_bytes += text_bytes(delta.text)
            elif delta.type == "thinking_delta":
                self._output_bytes += text_bytes(delta.thinking)
            elif delta.type == "input_json_delta":
                self._output_bytes += text_bytes(delta.partial_json)
        elif item.type == "message_delta":
            self._final = _usage(item.usage, self._prompt)
        return True

    def final(self) -> Usage | None:
        return self._final

    def received(self) -> Usage:
        prompt = self._prompt or Usage(self._limits.max_input_tokens, 0)
        output = min(max(prompt.output_tokens, self._output_bytes), self._limits.max_output_tokens)
        return Usage(prompt.input_tokens, output, prompt.cached_input_tokens, prompt.cache_write_tokens)
