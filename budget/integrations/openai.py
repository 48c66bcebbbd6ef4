"""Guarded OpenAI clients: `guarded(client, budget, user_id=...)` turns each Chat Completions and
Responses call into authorize -> call -> report (`pip install 'margins[openai]'`). This module guards Chat
Completions; budget.integrations.openai_responses the Responses API (`responses.create`).

```python
openai = guarded(AsyncOpenAI(), budget, user_id="alice")      # budget: an entered BudgetClient
reply = await openai.chat.completions.create(model="gpt-4o", messages=[...], max_tokens=300)
```

Before the call it reserves the worst case: `max_completion_tokens` (or `max_tokens`) times `n` output
tokens, and the prompt's upper bound from budget.integrations.prompt_bound (or `max_input_tokens` given to
`guarded`); it raises BudgetDenied (an unknown model included) or AuthorizationTimeout before any request
reaches OpenAI, and UnguardedCall for a call without an output limit. On degrade the cheaper model is the
one called. The usage reported is the response's (`prompt_tokens`, of which
`prompt_tokens_details.cached_tokens` were read from OpenAI's prompt cache, and `completion_tokens`); a
call that raises is reported with 0 tokens (outcome error), which releases its reservation.

A streamed call (`stream=True`) returns a stream that passes chunks through as they arrive. It asks for
the final usage chunk (`stream_options={"include_usage": True}`) and, if the caller did not, keeps that
chunk to itself, so the caller sees the chunks it asked for. It reports, once (budget.integrations.streams):

- the usage chunk's counts, as soon as it arrives;
- if the stream ends, raises or is closed before it: input tokens = the prompt's upper bound (what was
  authorized; OpenAI sends no usage before the end), cached 0, output tokens = the UTF-8 bytes of the
  content, refusal and tool-call deltas received (an upper bound on their tokens), at most the authorized
  output. Outcome: ok if the stream ended, error if it raised, aborted if it was closed.

A synchronous `OpenAI` client takes a BudgetThread (budget.integrations.thread) as its budget. Only
`chat.completions.create` and `responses.create` are guarded: any other attribute of a guarded client
(`embeddings`, `chat.completions.parse`, ...) raises NotGuarded rather than hand out an unguarded call
path; `.unguarded` is the client as given, for calls made unguarded on purpose.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, overload

try:
    from openai import AsyncOpenAI, OpenAI
    from openai.types.chat import ChatCompletion, ChatCompletionChunk
    from openai.types.completion_usage import CompletionUsage
except ImportError as missing:  # one line that says what to install, not a bare ModuleNotFoundError
    raise ImportError(
        "budget.integrations.openai needs the openai extra: pip install 'margins[openai]'"
    ) from missing

from budget.client import BudgetClient
from budget.errors import UnguardedCall
from budget.integrations.calls import NOTHING, AsyncCall, BlockingCall, Limits, Usage
from budget.integrations.openai_responses import AsyncResponses, Responses
from budget.integrations.prompt_bound import listed, prompt_token_bound, text_bytes
from budget.integrations.refusing import GuardedEndpoint, OnlyGuarded
from budget.integrations.streams import AsyncGuardedStream, GuardedStream
from budget.integrations.thread import BudgetThread

__all__ = ["AsyncGuardedOpenAI", "GuardedOpenAI", "guarded"]

CREATE = "chat.completions.create"


@overload
def guarded(
    client: OpenAI,
    budget: BudgetThread,
    *,
    user_id: str,
    feature: str = "default",
    max_input_tokens: int | None = None,
) -> GuardedOpenAI: ...


@overload
def guarded(
    client: AsyncOpenAI,
    budget: BudgetClient,
    *,
    user_id: str,
    feature: str = "default",
    max_input_tokens: int | None = None,
) -> AsyncGuardedOpenAI: ...


def guarded(
    client: OpenAI | AsyncOpenAI,
    budget: BudgetThread | BudgetClient,
    *,
    user_id: str,
    feature: str = "default",
    max_input_tokens: int | None = None,
) -> GuardedOpenAI | AsyncGuardedOpenAI:
    """`client`'s Chat Completions, guarded for `user_id` (see the module docstring). An `AsyncOpenAI`
    takes the BudgetClient it runs beside; an `OpenAI` a BudgetThread. `max_input_tokens` replaces the
    prompt's byte-count bound (for prompts with media the bound cannot see, such as documents by URL)."""
    if isinstance(client, AsyncOpenAI) and isinstance(budget, BudgetClient):
        return AsyncGuardedOpenAI(client, budget, user_id, feature, max_input_tokens)
    if isinstance(client, OpenAI) and isinstance(budget, BudgetThread):
        return GuardedOpenAI(client, budget, user_id, feature, max_input_tokens)
    raise TypeError(
        "guarded() takes an AsyncOpenAI with a BudgetClient, or an OpenAI with a BudgetThread; got "
        f"{type(client).__name__} with {type(budget).__name__}"
    )


class GuardedOpenAI(OnlyGuarded):
    """A synchronous OpenAI client whose `chat.completions.create` and `responses.create` are guarded."""

    def __init__(
        self, client: OpenAI, budget: BudgetThread, user_id: str, feature: str, max_input_tokens: int | None
    ) -> None:
        self.unguarded = client
        self.chat = _Chat(_Completions(client, budget, user_id, feature, max_input_tokens))
        self.responses = Responses(client, budget, user_id, feature, max_input_tokens)


class AsyncGuardedOpenAI(OnlyGuarded):
    """An asynchronous OpenAI client whose `chat.completions.create` and `responses.create` are guarded."""

    def __init__(
        self,
        client: AsyncOpenAI,
        budget: BudgetClient,
        user_id: str,
        feature: str,
        max_input_tokens: int | None,
    ) -> None:
        self.unguarded = client
        self.chat = _AsyncChat(_AsyncCompletions(client, budget, user_id, feature, max_input_tokens))
        self.responses = AsyncResponses(client, budget, user_id, feature, max_input_tokens)


class _Chat(OnlyGuarded):
    path = "chat"

    def __init__(self, completions: _Completions) -> None:
        self.completions = completions


class _AsyncChat(OnlyGuarded):
    path = "chat"

    def __init__(self, completions: _AsyncCompletions) -> None:
        self.completions = completions


class _Completions(GuardedEndpoint[OpenAI, BudgetThread]):
    path = "chat.completions"

    @overload
    def create(self, *, stream: Literal[True], **params: Any) -> GuardedStream[ChatCompletionChunk]: ...

    @overload
    def create(self, *, stream: Literal[False] = False, **params: Any) -> ChatCompletion: ...

    def create(
        self, *, stream: bool = False, **params: Any
    ) -> ChatCompletion | GuardedStream[ChatCompletionChunk]:
        """`OpenAI().chat.completions.create(**params)`, authorized first and reported after."""
        limits = _limits(params, self._user_id, self._feature, self._max_input_tokens)
        call = BlockingCall.open(self._budget, limits)
        try:
            if stream:
                tally = _ChunkTally(limits, _ask_for_usage(params))
                chunks = self._client.chat.completions.create(**params, model=call.model, stream=True)
                return GuardedStream(chunks, tally, call)
            response: ChatCompletion = self._client.chat.completions.create(**params, model=call.model)
        except BaseException:
            call.finish(NOTHING, "error")
            raise
        call.finish(_response_usage(response, limits), "ok")
        return response


class _AsyncCompletions(GuardedEndpoint[AsyncOpenAI, BudgetClient]):
    path = "chat.completions"

    @overload
    async def create(
        self, *, stream: Literal[True], **params: Any
    ) -> AsyncGuardedStream[ChatCompletionChunk]: ...

    @overload
    async def create(self, *, stream: Literal[False] = False, **params: Any) -> ChatCompletion: ...

    async def create(
        self, *, stream: bool = False, **params: Any
    ) -> ChatCompletion | AsyncGuardedStream[ChatCompletionChunk]:
        """`AsyncOpenAI().chat.completions.create(**params)`, authorized first and reported after."""
        limits = _limits(params, self._user_id, self._feature, self._max_input_tokens)
        call = await AsyncCall.open(self._budget, limits)
        try:
            if stream:
                tally = _ChunkTally(limits, _ask_for_usage(params))
                chunks = await self._client.chat.completions.create(**params, model=call.model, stream=True)
                return AsyncGuardedStream(chunks, tally, call)
            response: ChatCompletion = await self._client.chat.completions.create(**params, model=call.model)
        except BaseException:
            await call.finish(NOTHING, "error")
            raise
        await call.finish(_response_usage(response, limits), "ok")
        return response


def _limits(params: dict[str, Any], user_id: str, feature: str, max_input_tokens: int | None) -> Limits:
    """The call's worst case; pops `model` from `params` (the granted model replaces it)."""
    model = params.pop("model", None)
    if not isinstance(model, str):
        raise UnguardedCall(CREATE, "model must be given as a string")
    max_output = params.get("max_completion_tokens") or params.get("max_tokens")
    if not isinstance(max_output, int) or max_output <= 0:
        raise UnguardedCall(
            CREATE,
            "give max_completion_tokens (or max_tokens) as a positive int: without it the worst case "
            "has no bound",
        )
    choices = params.get("n") or 1
    if not isinstance(choices, int) or choices <= 0:
        raise UnguardedCall(CREATE, f"n must be a positive int, got {choices!r}")
    if max_input_tokens is None:
        listed(params, "messages", "tools", "functions")
        max_input_tokens = prompt_token_bound(
            params.get("tools"), params.get("functions"), params.get("response_format"),
            messages=params.get("messages") or (),
        )  # fmt: skip
    return Limits(user_id, model, max_input_tokens, max_output * choices, feature)


def _ask_for_usage(params: dict[str, Any]) -> bool:
    """Ask for the final usage chunk; whether the caller asked for it too (else it is kept from them)."""
    options = params.get("stream_options")
    asked = isinstance(options, Mapping) and options.get("include_usage") is True
    params["stream_options"] = {**(options if isinstance(options, Mapping) else {}), "include_usage": True}
    return asked


def _usage(usage: CompletionUsage) -> Usage:
    details = usage.prompt_tokens_details
    cached = (details.cached_tokens if details is not None else None) or 0
    return Usage(usage.prompt_tokens, usage.completion_tokens, cached_input_tokens=cached)


def _response_usage(response: ChatCompletion, limits: Limits) -> Usage:
    """The response's usage; without one (some OpenAI-compatible servers), the bounds: the prompt's and the
    received text's bytes."""
    if response.usage is not None:
        return _usage(response.usage)
    output = 0
    for choice in response.choices:
        message = choice.message
        output += text_bytes(message.content, message.refusal)
        for tool_call in message.tool_calls or ():
            function = getattr(tool_call, "function", None)
            output += text_bytes(getattr(function, "name", None), getattr(function, "arguments", None))
    return Usage(limits.max_input_tokens, min(output, limits.max_output_tokens))


class _ChunkTally:
    """Reads Chat Completions chunks: the final usage chunk, and the bytes of the deltas before it."""

    def __init__(self, limits: Limits, show_usage_chunk: bool) -> None:
        self._limits = limits
        self._show_usage_chunk = show_usage_chunk
        self._output_bytes = 0
        self._final: Usage | None = None

    def see(self, item: ChatCompletionChunk) -> bool:
        for choice in item.choices:
            delta = choice.delta
            self._output_bytes += text_bytes(delta.content, delta.refusal)
            for tool_call in delta.tool_calls or ():
                function = tool_call.function
                if function is not None:
                    self._output_bytes += text_bytes(function.name, function.arguments)
        if item.usage is not None:
            self._final = _usage(item.usage)
            # The usage chunk has no choices; one the caller did not ask for would surprise its loop.
            return self._show_usage_chunk or bool(item.choices)
        return True

    def final(self) -> Usage | None:
        return self._final

    def received(self) -> Usage:
        return Usage(self._limits.max_input_tokens, min(self._output_bytes, self._limits.max_output_tokens))
