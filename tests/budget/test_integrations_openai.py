"""budget.integrations.openai: the real OpenAI SDK against a local stand-in of its HTTP API, a real
mosquitto and the enforcer in-process."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path
from typing import Any

import openai
import pytest

from budget.errors import BudgetDenied, UnguardedCall
from budget.integrations.openai import guarded
from tests.budget.broker import Broker
from tests.budget.guard_helpers import GPT_4O, GPT_4O_MINI, Bench, nanos
from tests.budget.llm_stand_in import Script, StandIn
from tests.budget.sdk_bench import QUESTION, REPLY
from tests.budget.sdk_bench import openai_client as async_client
from tests.budget.sdk_bench import run_openai as run


def test_a_call_is_authorized_made_and_reported_with_its_cached_tokens(
    mosquitto: Broker, tmp_path: Path
) -> None:
    async def scenario(live: Bench, stand_in: StandIn) -> None:
        stand_in.script = Script(prompt_tokens=1200, cached_tokens=1024, completion_tokens=40)
        client = guarded(async_client(stand_in), live.budget, user_id="ann", feature="support")
        reply = await client.chat.completions.create(model="gpt-4o", messages=QUESTION, max_tokens=300)
        assert reply.choices[0].message.content == REPLY
        (report,) = await live.settled("ann", 1)
        assert (report["model"], report["input_tokens"], report["cached_input_tokens"]) == (
            "gpt-4o",
            1200,
            1024,
        )
        assert (report["output_tokens"], report["feature"], report["outcome"]) == (40, "support", "ok")
        assert report["reservation_id"]
        status = live.status("ann")
        assert status.spent_nanos == nanos(GPT_4O, 1200, 40, cached=1024)
        assert status.reserved_nanos == 0
        (request,) = stand_in.seen
        assert request.body["model"] == "gpt-4o" and request.body["max_tokens"] == 300

    run(scenario, mosquitto, tmp_path)


def test_on_degrade_the_cheaper_model_is_called_and_reported(mosquitto: Broker, tmp_path: Path) -> None:
    async def scenario(live: Bench, stand_in: StandIn) -> None:
        client = guarded(async_client(stand_in), live.budget, user_id="bob")
        tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
        # 100k output tokens of gpt-4o ($1.00) do not fit a $1.00 cap with the prompt; of gpt-4o-mini they do
        await client.chat.completions.create(
            model="gpt-4o",
            messages=iter(QUESTION),  # one-pass iterables: measured for the bound and still sent whole
            tools=(tool for tool in tools),
            max_completion_tokens=100_000,
        )
        assert [seen.body["model"] for seen in stand_in.seen] == ["gpt-4o-mini"]
        assert (stand_in.seen[0].body["messages"], stand_in.seen[0].body["tools"]) == (QUESTION, tools)
        (report,) = await live.settled("bob", 1)
        assert report["model"] == "gpt-4o-mini"
        assert live.status("bob").spent_nanos == nanos(GPT_4O_MINI, 1200, 40)

    run(scenario, mosquitto, tmp_path)


def test_a_denied_call_never_reaches_the_provider(mosquitto: Broker, tmp_path: Path) -> None:
    async def scenario(live: Bench, stand_in: StandIn) -> None:
        client = guarded(async_client(stand_in), live.budget, user_id="cat")
        with pytest.raises(BudgetDenied) as denied:  # n=20 x 100k tokens: not even gpt-4o-mini fits
            await client.chat.completions.create(model="gpt-4o", messages=QUESTION, max_tokens=100_000, n=20)
        assert denied.value.user_id == "cat"
        with pytest.raises(BudgetDenied, match="unknown model 'gpt-9'"):
            await client.chat.completions.create(model="gpt-9", messages=QUESTION, max_tokens=10)
        with pytest.raises(UnguardedCall, match="max_completion_tokens"):
            await client.chat.completions.create(model="gpt-4o", messages=QUESTION)
        assert stand_in.seen == []
        assert live.status("cat").reserved_nanos == 0

    run(scenario, mosquitto, tmp_path)


def test_a_failed_request_releases_its_reservation(mosquitto: Broker, tmp_path: Path) -> None:
    async def scenario(live: Bench, stand_in: StandIn) -> None:
        stand_in.script = Script(error_status=400)
        client = async_client(stand_in)
        with pytest.raises(openai.BadRequestError):
            await guarded(client, live.budget, user_id="dan").chat.completions.create(
                model="gpt-4o", messages=QUESTION, max_tokens=100
            )
        (report,) = await live.settled("dan", 1)
        assert (report["input_tokens"], report["output_tokens"], report["outcome"]) == (0, 0, "error")
        assert live.status("dan").reserved_nanos == 0 and live.status("dan").spent_nanos == 0

    run(scenario, mosquitto, tmp_path)


def test_a_stream_passes_chunks_through_and_reports_the_final_usage(
    mosquitto: Broker, tmp_path: Path
) -> None:
    async def scenario(live: Bench, stand_in: StandIn) -> None:
        stand_in.script = Script(prompt_tokens=900, cached_tokens=512, completion_tokens=7)
        client = guarded(async_client(stand_in), live.budget, user_id="eve")
        stream = await client.chat.completions.create(
            model="gpt-4o", messages=QUESTION, max_tokens=100, stream=True
        )
        chunks = [chunk async for chunk in stream]
        # the usage chunk was asked for on the caller's behalf and kept from it: every chunk has a choice
        assert all(chunk.choices for chunk in chunks)
        assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == REPLY
        assert stand_in.seen[0].body["stream_options"] == {"include_usage": True}
        (report,) = await live.settled("eve", 1)
        assert (report["input_tokens"], report["cached_input_tokens"], report["output_tokens"]) == (
            900,
            512,
            7,
        )
        assert report["outcome"] == "ok"
        assert live.status("eve").spent_nanos == nanos(GPT_4O, 900, 7, cached=512)

    run(scenario, mosquitto, tmp_path)


def test_a_stream_that_dies_reports_what_was_received(mosquitto: Broker, tmp_path: Path) -> None:
    async def scenario(live: Bench, stand_in: StandIn) -> None:
        stand_in.script = Script(die_after=2)  # "Your ", "order ", then the connection drops
        client = guarded(async_client(stand_in), live.budget, user_id="fay")
        stream = await client.chat.completions.create(
            model="gpt-4o", messages=QUESTION, max_tokens=100, stream=True
        )
        received = []
        with pytest.raises(openai.APIConnectionError):
            async for chunk in stream:
                received.append(chunk.choices[0].delta.content or "")
        assert "".join(received) == "Your order "
        (report,) = await live.settled("fay", 1)
        # output: the received text's bytes; input: the prompt's bound (no usage came), above its true size
        assert (report["output_tokens"], report["outcome"]) == (len(b"Your order "), "error")
        assert len(QUESTION[0]["content"]) < report["input_tokens"] < 200
        assert live.status("fay").reserved_nanos == 0
        assert live.status("fay").spent_nanos == nanos(GPT_4O, report["input_tokens"], len(b"Your order "))

    run(scenario, mosquitto, tmp_path)


def test_a_synchronous_client_is_guarded_alike(mosquitto: Broker, tmp_path: Path) -> None:
    async def scenario(live: Bench, stand_in: StandIn) -> None:
        stand_in.script = Script(prompt_tokens=300, cached_tokens=0, completion_tokens=9)
        sync = openai.OpenAI(base_url=stand_in.openai_url, api_key="sk-test", max_retries=0)

        def application() -> list[Any]:
            with live.thread() as budget:
                client = guarded(sync, budget, user_id="gus")
                plain = client.chat.completions.create(model="gpt-4o", messages=QUESTION, max_tokens=50)
                asked = client.chat.completions.create(
                    model="gpt-4o", messages=QUESTION, max_tokens=50, stream=True,
                    stream_options={"include_usage": True},
                )  # fmt: skip
                with asked:
                    chunks = list(asked)
                left = client.chat.completions.create(
                    model="gpt-4o", messages=QUESTION, max_tokens=50, stream=True
                )
                with left:
                    first = next(left)  # the role chunk, then the caller leaves
                return [plain, chunks, first, asyncio.run_coroutine_threadsafe(settle(budget), loop).result()]

        async def settle(budget: Any) -> list[dict[str, Any]]:
            return await live.settled("gus", 3, budget)

        loop = asyncio.get_running_loop()
        plain, chunks, first, reports = await asyncio.to_thread(application)
        assert plain.choices[0].message.content == REPLY
        assert chunks[-1].usage is not None and not chunks[-1].choices  # asked for, so shown
        assert first.choices[0].delta.role == "assistant"
        outcomes = [(r["input_tokens"], r["output_tokens"], r["outcome"]) for r in reports]
        assert outcomes[:2] == [(300, 9, "ok"), (300, 9, "ok")]
        closed_input, closed_output, closed_outcome = outcomes[2]
        assert (closed_output, closed_outcome) == (0, "aborted")  # nothing of the reply had arrived
        assert closed_input > len(QUESTION[0]["content"])
        assert live.status("gus").reserved_nanos == 0

    run(scenario, mosquitto, tmp_path)


def test_a_stream_dropped_unfinished_is_reported_when_collected(mosquitto: Broker, tmp_path: Path) -> None:
    async def scenario(live: Bench, stand_in: StandIn) -> None:
        client = guarded(async_client(stand_in), live.budget, user_id="hal")

        async def first_words() -> str:
            stream = await client.chat.completions.create(
                model="gpt-4o", messages=QUESTION, max_tokens=100, stream=True
            )
            async for chunk in stream:
                if chunk.choices[0].delta.content:
                    return chunk.choices[0].delta.content  # leaves the loop, and the stream, unclosed
            raise AssertionError("no content")

        assert await first_words() == "Your "
        gc.collect()  # the stream is garbage now (CPython has usually freed it already)
        (report,) = await live.settled("hal", 1)
        assert (report["output_tokens"], report["outcome"]) == (len(b"Your "), "aborted")
        assert live.status("hal").reserved_nanos == 0

    run(scenario, mosquitto, tmp_path)
