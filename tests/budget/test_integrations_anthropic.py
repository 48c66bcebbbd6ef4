"""budget.integrations.anthropic: the real Anthropic SDK against a local stand-in of its HTTP API, a real
mosquitto and the enforcer in-process."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import anthropic
import pytest
from anthropic.types import TextBlock, TextDelta

from budget.errors import BudgetDenied, UnguardedCall
from budget.integrations.anthropic import guarded
from tests.budget.broker import Broker
from tests.budget.guard_helpers import CLAUDE_HAIKU, CLAUDE_SONNET, Bench, nanos
from tests.budget.llm_stand_in import Script, StandIn
from tests.budget.sdk_bench import HAIKU, QUESTION, REPLY, SONNET
from tests.budget.sdk_bench import anthropic_client as async_client
from tests.budget.sdk_bench import run_anthropic as run


def test_cache_reads_and_writes_are_reported_and_priced(mosquitto: Broker, tmp_path: Path) -> None:
    async def scenario(live: Bench, stand_in: StandIn) -> None:
        # Anthropic's input_tokens leaves the cache out: 2000 prompt tokens = 200 + 1500 read + 300 written
        stand_in.script = Script(
            prompt_tokens=2000, cached_tokens=1500, cache_write_tokens=300, completion_tokens=60
        )
        client = guarded(async_client(stand_in), live.budget, user_id="ann", feature="support")
        reply = await client.messages.create(
            model=SONNET, messages=QUESTION, max_tokens=400, system="Be brief."
        )
        assert isinstance(reply.content[0], TextBlock) and reply.content[0].text == REPLY
        (report,) = await live.settled("ann", 1)
        assert (report["model"], report["input_tokens"], report["output_tokens"]) == (SONNET, 2000, 60)
        assert (report["cached_input_tokens"], report["cache_write_tokens"]) == (1500, 300)
        status = live.status("ann")
        assert status.spent_nanos == nanos(CLAUDE_SONNET, 2000, 60, cached=1500, written=300)
        assert status.reserved_nanos == 0
        (request,) = stand_in.seen
        assert request.path == "/v1/messages" and request.body["model"] == SONNET

    run(scenario, mosquitto, tmp_path)


def test_degrade_deny_and_unknown_model(mosquitto: Broker, tmp_path: Path) -> None:
    async def scenario(live: Bench, stand_in: StandIn) -> None:
        client = guarded(async_client(stand_in), live.budget, user_id="bob")
        # 70k output tokens of Sonnet ($1.05) do not fit a $1.00 cap; of Haiku ($0.35) they do
        tools = [{"name": "lookup", "description": "order status", "input_schema": {"type": "object"}}]
        await client.messages.create(
            model=SONNET, messages=QUESTION, max_tokens=70_000, tools=tools, timeout=60
        )
        assert [seen.body["model"] for seen in stand_in.seen] == [HAIKU]
        (report,) = await live.settled("bob", 1)
        assert report["model"] == HAIKU
        assert live.status("bob").spent_nanos == nanos(CLAUDE_HAIKU, 1200, 40)
        with pytest.raises(BudgetDenied):  # not even Haiku fits 300k output tokens
            await client.messages.create(model=SONNET, messages=QUESTION, max_tokens=300_000)
        with pytest.raises(BudgetDenied, match="unknown model 'claude-9'"):
            await client.messages.create(model="claude-9", messages=QUESTION, max_tokens=10)
        with pytest.raises(UnguardedCall, match="max_tokens"):
            await client.messages.create(model=SONNET, messages=QUESTION)
        assert len(stand_in.seen) == 1  # none of the refused calls reached the provider

    run(scenario, mosquitto, tmp_path)


def test_a_stream_reports_its_final_usage(mosquitto: Broker, tmp_path: Path) -> None:
    async def scenario(live: Bench, stand_in: StandIn) -> None:
        stand_in.script = Script(prompt_tokens=800, cached_tokens=600, completion_tokens=6)
        client = guarded(async_client(stand_in), live.budget, user_id="eve")
        stream = await client.messages.create(model=SONNET, messages=QUESTION, max_tokens=100, stream=True)
        events = [event async for event in stream]
        text = "".join(
            e.delta.text for e in events if e.type == "content_block_delta" and isinstance(e.delta, TextDelta)
        )
        assert text == REPLY and events[-1].type == "message_stop"
        (report,) = await live.settled("eve", 1)
        assert (report["input_tokens"], report["cached_input_tokens"], report["output_tokens"]) == (
            800,
            600,
            6,
        )
        assert report["outcome"] == "ok"

    run(scenario, mosquitto, tmp_path)


def test_a_stream_that_dies_reports_the_prompt_counted_and_the_text_received(
    mosquitto: Broker, tmp_path: Path
) -> None:
    async def scenario(live: Bench, stand_in: StandIn) -> None:
        stand_in.script = Script(prompt_tokens=800, cached_tokens=600, die_after=3)
        client = guarded(async_client(stand_in), live.budget, user_id="fay")
        stream = await client.messages.create(model=SONNET, messages=QUESTION, max_tokens=100, stream=True)
        # this SDK lets the HTTP library's error through, where the OpenAI SDK wraps it
        with pytest.raises(Exception, match="incomplete chunked read"):
            async for _ in stream:
                pass
        (report,) = await live.settled("fay", 1)
        # message_start told the prompt's counts; output is the bytes of "Your order ships "
        assert (report["input_tokens"], report["cached_input_tokens"]) == (800, 600)
        assert (report["output_tokens"], report["outcome"]) == (len(b"Your order ships "), "error")
        assert live.status("fay").reserved_nanos == 0

    run(scenario, mosquitto, tmp_path)


def test_a_synchronous_client_is_guarded_alike(mosquitto: Broker, tmp_path: Path) -> None:
    async def scenario(live: Bench, stand_in: StandIn) -> None:
        stand_in.script = Script(
            prompt_tokens=300, cached_tokens=100, cache_write_tokens=50, completion_tokens=9
        )
        sync = anthropic.Anthropic(base_url=stand_in.anthropic_url, api_key="sk-ant-test", max_retries=0)
        loop = asyncio.get_running_loop()

        def application() -> list[Any]:
            with live.thread() as budget:
                client = guarded(sync, budget, user_id="gus")
                plain = client.messages.create(model=SONNET, messages=QUESTION, max_tokens=50)
                with client.messages.create(
                    model=SONNET, messages=QUESTION, max_tokens=50, stream=True
                ) as stream:
                    events = list(stream)
                settle = live.settled("gus", 2, budget)
                return [plain, events, asyncio.run_coroutine_threadsafe(settle, loop).result()]

        plain, events, reports = await asyncio.to_thread(application)
        assert isinstance(plain.content[0], TextBlock) and plain.content[0].text == REPLY
        assert events[-1].type == "message_stop"
        counts = [
            (r["input_tokens"], r["cached_input_tokens"], r["cache_write_tokens"], r["output_tokens"])
            for r in reports
        ]
        assert counts == [(300, 100, 50, 9), (300, 100, 50, 9)]
        assert live.status("gus").reserved_nanos == 0

    run(scenario, mosquitto, tmp_path)


def test_a_dated_model_id_is_priced_as_its_model_and_an_unknown_one_is_denied_before_the_call(
    mosquitto: Broker, tmp_path: Path
) -> None:
    async def scenario(live: Bench, stand_in: StandIn) -> None:
        stand_in.script = Script(prompt_tokens=1000, cached_tokens=400, completion_tokens=50)
        client = guarded(async_client(stand_in), live.budget, user_id="ida")
        dated = "claude-sonnet-4-5-20250929"  # what Anthropic's docs and responses name the model
        await client.messages.create(model=dated, messages=QUESTION, max_tokens=100)
        (report,) = await live.settled("ida", 1)
        assert report["model"] == dated
        # the default catalog (genai-prices) matches the snapshot to its model: Sonnet 4.5's prices
        assert live.status("ida").spent_nanos == nanos(CLAUDE_SONNET, 1000, 50, cached=400)
        with pytest.raises(BudgetDenied, match="unknown model 'claude-sonnet-9-20250929'"):
            await client.messages.create(model="claude-sonnet-9-20250929", messages=QUESTION, max_tokens=10)
        assert [seen.body["model"] for seen in stand_in.seen] == [dated]

    run(scenario, mosquitto, tmp_path)
