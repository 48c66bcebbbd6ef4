"""budget.integrations.anthropic's `messages.stream(...)`, the SDK's stream helper over a guarded call: the
real Anthropic SDK against a local stand-in of its HTTP API, a real mosquitto and the enforcer in-process."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import anthropic
import pytest

from budget.errors import BudgetDenied, UnguardedCall
from budget.integrations.anthropic import guarded
from tests.budget.broker import Broker
from tests.budget.guard_helpers import CLAUDE_HAIKU, CLAUDE_SONNET, Bench, nanos
from tests.budget.llm_stand_in import Script, StandIn
from tests.budget.sdk_bench import HAIKU, QUESTION, REPLY, SONNET
from tests.budget.sdk_bench import anthropic_client as async_client
from tests.budget.sdk_bench import run_anthropic as run


def test_the_stream_helper_reports_the_final_message_with_its_cache_reads_and_writes(
    mosquitto: Broker, tmp_path: Path
) -> None:
    async def scenario(live: Bench, stand_in: StandIn) -> None:
        stand_in.script = Script(
            prompt_tokens=2000, cached_tokens=1500, cache_write_tokens=300, completion_tokens=60
        )
        client = guarded(async_client(stand_in), live.budget, user_id="ann")
        async with client.messages.stream(model=SONNET, messages=QUESTION, max_tokens=400) as stream:
            text = [piece async for piece in stream.text_stream]
            final = await stream.get_final_message()
        assert "".join(text) == REPLY
        assert (final.usage.cache_read_input_tokens, final.usage.output_tokens) == (1500, 60)
        (report,) = await live.settled("ann", 1)
        assert (report["model"], report["input_tokens"], report["output_tokens"]) == (SONNET, 2000, 60)
        assert (report["cached_input_tokens"], report["cache_write_tokens"]) == (1500, 300)
        assert report["outcome"] == "ok"
        status = live.status("ann")
        assert status.spent_nanos == nanos(CLAUDE_SONNET, 2000, 60, cached=1500, written=300)
        assert status.reserved_nanos == 0
        assert stand_in.seen[0].body["stream"] is True

    run(scenario, mosquitto, tmp_path)


def test_the_stream_helper_degrades_denies_and_refuses_before_the_request(
    mosquitto: Broker, tmp_path: Path
) -> None:
    async def scenario(live: Bench, stand_in: StandIn) -> None:
        client = guarded(async_client(stand_in), live.budget, user_id="bob")
        # 70k output tokens of Sonnet ($1.05) do not fit a $1.00 cap; of Haiku ($0.35) they do
        async with client.messages.stream(model=SONNET, messages=QUESTION, max_tokens=70_000) as stream:
            await stream.until_done()
        assert [seen.body["model"] for seen in stand_in.seen] == [HAIKU]
        (report,) = await live.settled("bob", 1)
        assert report["model"] == HAIKU
        assert live.status("bob").spent_nanos == nanos(CLAUDE_HAIKU, 1200, 40)
        with pytest.raises(BudgetDenied):  # not even Haiku fits 300k output tokens
            async with client.messages.stream(model=SONNET, messages=QUESTION, max_tokens=300_000):
                pass
        with pytest.raises(UnguardedCall, match=r"messages\.stream: max_tokens"):
            client.messages.stream(model=SONNET, messages=QUESTION)
        with pytest.raises(UnguardedCall, match=r"messages\.stream: output_format"):
            client.messages.stream(model=SONNET, messages=QUESTION, max_tokens=10, output_format=dict)
        assert len(stand_in.seen) == 1  # none of the refused calls reached Anthropic
        assert live.status("bob").reserved_nanos == 0

    run(scenario, mosquitto, tmp_path)


def test_a_stream_helper_that_breaks_reports_the_prompt_counted_and_the_text_received(
    mosquitto: Broker, tmp_path: Path
) -> None:
    async def scenario(live: Bench, stand_in: StandIn) -> None:
        stand_in.script = Script(prompt_tokens=800, cached_tokens=600, die_after=3)
        client = guarded(async_client(stand_in), live.budget, user_id="fay")
        with pytest.raises(Exception, match="incomplete chunked read"):
            async with client.messages.stream(model=SONNET, messages=QUESTION, max_tokens=100) as stream:
                async for _ in stream:
                    pass
        (report,) = await live.settled("fay", 1)
        # message_start told the prompt's counts; output is the bytes of "Your order ships "
        assert (report["input_tokens"], report["cached_input_tokens"]) == (800, 600)
        assert (report["output_tokens"], report["outcome"]) == (len(b"Your order ships "), "error")
        assert live.status("fay").reserved_nanos == 0

    run(scenario, mosquitto, tmp_path)


def test_a_synchronous_stream_helper_is_guarded_alike_and_a_block_left_early_is_aborted(
    mosquitto: Broker, tmp_path: Path
) -> None:
    async def scenario(live: Bench, stand_in: StandIn) -> None:
        stand_in.script = Script(
            prompt_tokens=300, cached_tokens=100, cache_write_tokens=50, completion_tokens=9
        )
        sync = anthropic.Anthropic(base_url=stand_in.anthropic_url, api_key="sk-ant-test", max_retries=0)
        loop = asyncio.get_running_loop()

        def application() -> list[Any]:
            with live.thread() as budget:
                client = guarded(sync, budget, user_id="gus")
                with client.messages.stream(model=SONNET, messages=QUESTION, max_tokens=50) as stream:
                    final = stream.get_final_message()
                with client.messages.stream(model=SONNET, messages=QUESTION, max_tokens=50) as stream:
                    first = next(iter(stream))  # message_start, then the caller leaves
                settle = live.settled("gus", 2, budget)
                return [final, first, asyncio.run_coroutine_threadsafe(settle, loop).result()]

        final, first, reports = await asyncio.to_thread(application)
        assert final.content[0].text == REPLY and first.type == "message_start"
        counts = [
            (r["input_tokens"], r["cached_input_tokens"], r["cache_write_tokens"], r["output_tokens"])
            for r in reports
        ]
        # the second: message_start's prompt counts and its output count of 1, nothing of the reply
        assert counts == [(300, 100, 50, 9), (300, 100, 50, 1)]
        assert [r["outcome"] for r in reports] == ["ok", "aborted"]
        assert live.status("gus").reserved_nanos == 0

    run(scenario, mosquitto, tmp_path)
