"""budget.integrations without a provider: the prompt's token bound, what each guard accepts, and that
the client and the shared modules never import an SDK."""

from __future__ import annotations

import subprocess
import sys
from typing import Any, cast

import pytest

from budget.integrations.prompt_bound import (
    PER_MESSAGE_TOKENS,
    PER_REQUEST_TOKENS,
    REMOTE_MEDIA_TOKENS,
    listed,
    prompt_token_bound,
    text_bytes,
)


def test_the_bound_counts_every_byte_of_the_messages_and_tools_and_each_message() -> None:
    one = [{"role": "user", "content": "hi"}]
    base = prompt_token_bound(messages=one)
    assert base == len('[{"role": "user", "content": "hi"}]') + PER_MESSAGE_TOKENS + PER_REQUEST_TOKENS
    # a non-ASCII character is several bytes, each of which may be a token of its own
    assert prompt_token_bound(messages=[{"role": "user", "content": "h\u00e9"}]) == base + 1
    two = [*one, {"role": "assistant", "content": "hi"}]
    assert prompt_token_bound(messages=two) > 2 * base - PER_REQUEST_TOKENS
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    assert prompt_token_bound(tools, messages=one) > base + len("lookup")
    assert prompt_token_bound(None, messages=one) == base


def test_media_named_by_url_gets_an_allowance_and_inline_media_its_bytes() -> None:
    def image(url: str) -> list[dict[str, object]]:
        part = {"type": "image_url", "image_url": {"url": url}}
        return [{"role": "user", "content": [{"type": "text", "text": "what is this?"}, part]}]

    remote = prompt_token_bound(messages=image("https://example.com/cat.png"))
    inline = prompt_token_bound(messages=image("data:image/png;base64," + "A" * 4000))
    assert remote > REMOTE_MEDIA_TOKENS > inline - 4000 > 0
    anthropic_file = [
        {"role": "user", "content": [{"type": "document", "source": {"type": "file", "file_id": "f1"}}]}
    ]
    assert prompt_token_bound(messages=anthropic_file) > REMOTE_MEDIA_TOKENS


def test_one_pass_iterables_are_listed_so_the_bound_measures_what_is_sent() -> None:
    messages = [{"role": "user", "content": "hi"}]
    tools = [{"type": "function", "function": {"name": "lookup"}}]
    params: dict[str, object] = {
        "messages": (message for message in messages),
        "tools": iter(tools),
        "system": "be brief",
        "metadata": {"k": "v"},
    }
    listed(params, "messages", "tools", "system", "metadata")
    assert params == {"messages": messages, "tools": tools, "system": "be brief", "metadata": {"k": "v"}}
    assert prompt_token_bound(params["tools"], messages=messages) > prompt_token_bound(messages=messages) + 6


def test_text_bytes_counts_strings_only() -> None:
    assert text_bytes("ab", None, "\u00e9", 7) == 4


def test_the_client_and_the_shared_modules_import_no_sdk() -> None:
    probe = (
        "import sys, budget.client, budget.integrations, budget.integrations.thread, "
        "budget.integrations.calls, budget.integrations.streams, budget.integrations.prompt_bound; "
        "print(sorted({'openai', 'anthropic'} & set(sys.modules)))"
    )
    shown = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert shown.stdout == "[]\n"


def test_a_guard_refuses_a_client_with_the_wrong_kind_of_budget() -> None:
    openai = pytest.importorskip("openai")
    from budget.client import BudgetClient
    from budget.integrations.openai import guarded

    budget = BudgetClient.connect("mqtt://127.0.0.1:1")
    with pytest.raises(TypeError, match="an OpenAI with a BudgetThread"):
        guarded(openai.OpenAI(api_key="sk"), budget, user_id="ann")


def test_a_budget_thread_outside_with_says_so_instead_of_hanging() -> None:
    from budget.client import BudgetClient
    from budget.errors import NotConnected
    from budget.integrations.thread import BudgetThread

    budget = BudgetThread(BudgetClient.connect("mqtt://127.0.0.1:1"))

    async def nothing() -> None:
        pass

    with pytest.raises(NotConnected):
        budget.submit(nothing())


def test_a_guarded_client_refuses_every_method_it_does_not_guard() -> None:
    openai = pytest.importorskip("openai")
    anthropic = pytest.importorskip("anthropic")
    from budget.client import BudgetClient
    from budget.errors import NotGuarded, UnguardedCall
    from budget.integrations import anthropic as guard_anthropic
    from budget.integrations import openai as guard_openai

    budget = BudgetClient.connect("mqtt://127.0.0.1:1")
    sdk_openai = openai.AsyncOpenAI(api_key="sk")
    gpt = guard_openai.guarded(sdk_openai, budget, user_id="ann")
    claude = guard_anthropic.guarded(anthropic.AsyncAnthropic(api_key="sk"), budget, user_id="ann")
    # (a guarded object, an attribute it leaves out: the SDK call it would have been)
    refused = [
        (gpt, "embeddings", "embeddings"),
        (gpt.chat.completions, "parse", "chat.completions.parse"),
        (gpt.chat.completions, "with_raw_response", "chat.completions.with_raw_response"),
        (gpt.responses, "retrieve", "responses.retrieve"),
        (claude.messages, "batches", "messages.batches"),
        (claude.messages, "count_tokens", "messages.count_tokens"),
        (claude, "beta", "beta"),
    ]
    for guarded_object, name, call in refused:
        with pytest.raises(NotGuarded) as refusal:
            getattr(guarded_object, name)
        assert refusal.value.call == call
        assert str(refusal.value) == (
            f"{call}: not guarded by margins: a call through it would be neither authorized nor reported; "
            f"use .unguarded.{call} if you mean to call it unguarded"
        )
        assert isinstance(refusal.value, UnguardedCall)
    # an AttributeError too: probing for a method finds none, and the SDK client is there on purpose
    assert not hasattr(gpt, "embeddings") and getattr(claude.messages, "batches", None) is None
    assert gpt.unguarded is sdk_openai and gpt.unguarded.embeddings is sdk_openai.embeddings
    # the guarded methods are the guard's own, not the SDK's
    assert cast(Any, gpt.chat.completions.create).__self__ is gpt.chat.completions
    assert cast(Any, gpt.responses.create).__self__ is gpt.responses
    assert cast(Any, claude.messages.create).__self__ is claude.messages
