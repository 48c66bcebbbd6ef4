"""budget.integrations.openai's Responses API guard: the real OpenAI SDK against a local stand-in of its
HTTP API, a real mosquitto and the enforcer in-process."""

from __future__ import annotations

import asyncio
import re
import textwrap
from pathlib import Path
from typing import Any

import openai
import pytest

from budget.errors import BudgetDenied, UnguardedCall
from budget.integrations.openai import guarded
from tests.budget.broker import Broker
from tests.budget.guard_helpers import GPT_4O, GPT_4O_MINI, Bench, nanos
from tests.budget.llm_stand_in import Script, StandIn
from tests.budget.sdk_bench import REPLY
from tests.budget.sdk_bench import openai_client as async_client
from tests.budget.sdk_bench import run_openai as run

QUESTION = "Where is my order?"


def test_a_response_is_authorized_made_and_reported_with_its_cache_reads_and_writes(
    mosquitto: Broker, tmp_path: Path
) -> None:
    async def scenario(live: Bench, stand_in: StandIn) -> None:
        stand_in.script = Script(
            prompt_tokens=1500, cached_tokens=1024, cache_write_tokens=200, completion_tokens=40
        )
        client = guarded(async_client(stand_in), live.budget, user_id="ann", feature="support")
        reply = await client.responses.create(
            model="gpt-4o", input=QUESTION, instructions="Be brief.", max_output_tokens=300
        )
        assert reply.output_text == REPLY
        (report,) = await live.settled("ann", 1)
        assert (report["model"], report["input_tokens"], report["output_tokens"]) == ("gpt-4o", 1500, 40)
        assert (report["cached_input_tokens"], report["cache_write_tokens"]) == (1024, 200)
        assert (report["feature"], report["outcome"]) == ("support", "ok")
        status = live.status("ann")
        assert status.spent_nanos == nanos(GPT_4O, 1500, 40, cached=1024, written=200)
        assert status.reserved_nanos == 0
        (request,) = stand_in.seen
        assert request.path == "/v1/responses"
        assert (request.body["model"], request.body["max_output_tokens"]) == ("gpt-4o", 300)
        assert request.body["input"] == QUESTION

    run(scenario, mosquitto, tmp_path)


def test_cache_writes_reported_beyond_the_uncached_prompt_are_capped_so_the_report_settles(
    mosquitto: Broker, tmp_path: Path
) -> None:
    async def scenario(live: Bench, stand_in: StandIn) -> None:
        # 1000 prompt tokens, 800 read from the cache: at most 200 can have been written to it
        stand_in.script = Script(
            prompt_tokens=1000, cached_tokens=800, cache_write_tokens=500, completion_tokens=10
        )
        client = guarded(async_client(stand_in), live.budget, user_id="cy")
        await client.responses.create(model="gpt-4o", input=QUESTION, max_output_tokens=50)
        (report,) = await live.settled("cy", 1)
        assert (report["cached_input_tokens"], report["cache_write_tokens"]) == (800, 200)
        status = live.status("cy")
        assert status.spent_nanos == nanos(GPT_4O, 1000, 10, cached=800, written=200)
        assert status.reserved_nanos == 0

    run(scenario, mosquitto, tmp_path)


def test_degrade_deny_and_every_call_that_cannot_be_bounded(mosquitto: Broker, tmp_path: Path) -> None:
    async def scenario(live: Bench, stand_in: StandIn) -> None:
        client = guarded(async_client(stand_in), live.budget, user_id="bob")
        items = [{"role": "user", "content": [{"type": "input_text", "text": QUESTION}]}]
        tools = [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}]
        # 100k output tokens of gpt-4o ($1.00) do not fit a $1.00 cap with the prompt; of gpt-4o-mini they do
        await client.responses.create(
            model="gpt-4o", input=iter(items), tools=iter(tools), max_output_tokens=100_000
        )
        assert [seen.body["model"] for seen in stand_in.seen] == ["gpt-4o-mini"]
        assert (stand_in.seen[0].body["input"], stand_in.seen[0].body["tools"]) == (items, tools)
        (report,) = await live.settled("bob", 1)
        assert report["model"] == "gpt-4o-mini"
        assert live.status("bob").spent_nanos == nanos(GPT_4O_MINI, 1200, 40)

        with pytest.raises(BudgetDenied):  # 2M output tokens: not even gpt-4o-mini fits
            await client.responses.create(model="gpt-4o", input=QUESTION, max_output_tokens=2_000_000)
        with pytest.raises(BudgetDenied, match="unknown model 'gpt-9'"):
            await client.responses.create(model="gpt-9", input=QUESTION, max_output_tokens=10)
        refused: dict[str, dict[str, Any]] = {
            "max_output_tokens as a positive int": {},
            "background=True": {"background": True},
            "previous_response_id puts stored text": {"previous_response_id": "resp_1"},
            "conversation puts stored text": {"conversation": "conv_1"},
            "'web_search' tool is run by OpenAI": {"tools": [{"type": "web_search"}]},
            "'file_search' tool is run by OpenAI": {"tools": (tool for tool in [{"type": "file_search"}])},
        }
        for reason, params in refused.items():
            limit = {"max_output_tokens": 10} if params else {}
            request: dict[str, Any] = {"model": "gpt-4o", "input": QUESTION, **limit, **params}
            with pytest.raises(UnguardedCall, match=reason) as refusal:
                await client.responses.create(**request)
            assert refusal.value.call == "responses.create"
        assert len(stand_in.seen) == 1  # none of the refused calls reached OpenAI
        assert live.status("bob").reserved_nanos == 0

    run(scenario, mosquitto, tmp_path)


def test_a_response_stream_passes_events_through_and_reports_the_completed_usage(
    mosquitto: Broker, tmp_path: Path
) -> None:
    async def scenario(live: Bench, stand_in: StandIn) -> None:
        stand_in.script = Script(prompt_tokens=900, cached_tokens=512, completion_tokens=7)
        client = guarded(async_client(stand_in), live.budget, user_id="eve")
        stream = await client.responses.create(
            model="gpt-4o", input=QUESTION, max_output_tokens=100, stream=True
        )
        events = [event async for event in stream]
        assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == REPLY
        assert events[-1].type == "response.completed" and events[-1].response.usage is not None
        (report,) = await live.settled("eve", 1)
        assert (report["input_tokens"], report["cached_input_tokens"], report["output_tokens"]) == (
            900,
            512,
            7,
        )
        assert report["outcome"] == "ok"
        assert live.status("eve").spent_nanos == nanos(GPT_4O, 900, 7, cached=512)

    run(scenario, mosquitto, tmp_path)


def test_a_response_stream_that_dies_reports_what_was_received(mosquitto: Broker, tmp_path: Path) -> None:
    async def scenario(live: Bench, stand_in: StandIn) -> None:
        stand_in.script = Script(die_after=2)  # "Your ", "order ", then the connection drops
        client = guarded(async_client(stand_in), live.budget, user_id="fay")
        stream = await client.responses.create(
            model="gpt-4o", input=QUESTION, max_output_tokens=100, stream=True
        )
        received = []
        with pytest.raises(openai.APIConnectionError):
            async for event in stream:
                if event.type == "response.output_text.delta":
                    received.append(event.delta)
        assert "".join(received) == "Your order "
        (report,) = await live.settled("fay", 1)
        # output: the received text's bytes; input: the prompt's bound (no usage came), above its true size
        assert (report["output_tokens"], report["outcome"]) == (len(b"Your order "), "error")
        assert len(QUESTION) < report["input_tokens"] < 200
        assert live.status("fay").reserved_nanos == 0
        assert live.status("fay").spent_nanos == nanos(GPT_4O, report["input_tokens"], len(b"Your order "))

    run(scenario, mosquitto, tmp_path)


def test_a_synchronous_client_guards_responses_alike(mosquitto: Broker, tmp_path: Path) -> None:
    async def scenario(live: Bench, stand_in: StandIn) -> None:
        stand_in.script = Script(prompt_tokens=300, cached_tokens=100, completion_tokens=9)
        sync = openai.OpenAI(base_url=stand_in.openai_url, api_key="sk-test", max_retries=0)
        loop = asyncio.get_running_loop()

        def application() -> list[Any]:
            with live.thread() as budget:
                client = guarded(sync, budget, user_id="gus")
                plain = client.responses.create(model="gpt-4o", input=QUESTION, max_output_tokens=50)
                with client.responses.create(
                    model="gpt-4o", input=QUESTION, max_output_tokens=50, stream=True
                ) as stream:
                    events = list(stream)
                # with the prompt bounded by the caller, a stored conversation can be continued
                bounded = guarded(sync, budget, user_id="gus", max_input_tokens=5_000)
                bounded.responses.create(
                    model="gpt-4o", previous_response_id=plain.id, input="And when?", max_output_tokens=50
                )
                settle = live.settled("gus", 3, budget)
                return [plain, events, asyncio.run_coroutine_threadsafe(settle, loop).result()]

        plain, events, reports = await asyncio.to_thread(application)
        assert plain.output_text == REPLY
        assert events[-1].type == "response.completed"
        counts = [(r["input_tokens"], r["cached_input_tokens"], r["output_tokens"]) for r in reports]
        assert counts == [(300, 100, 9)] * 3
        assert stand_in.seen[2].body["previous_response_id"] == "resp_standin"
        assert live.status("gus").reserved_nanos == 0

    run(scenario, mosquitto, tmp_path)


def readme_responses_example() -> str:
    """The README's Responses API example (the python block after its heading)."""
    text = (Path(__file__).parents[2] / "README.md").read_text()
    section = text[text.index("**The Responses API** is guarded") :]
    found = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert found is not None, "no python block after the Responses API's paragraph in README.md"
    return found.group(1)


def test_the_readme_responses_example_runs_as_written(
    mosquitto: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def scenario(live: Bench, stand_in: StandIn) -> None:
        monkeypatch.setenv("OPENAI_BASE_URL", stand_in.openai_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        body = textwrap.indent(readme_responses_example(), "    ")
        namespace: dict[str, Any] = {"AsyncOpenAI": openai.AsyncOpenAI, "guarded": guarded}
        exec(f"async def example(budget):\n{body}\n    return openai", namespace)
        client = await namespace["example"](live.budget)
        stand_in.clients.append(client.unguarded)
        reports = await live.settled("alice", 2)
        assert [(r["feature"], r["outcome"], r["output_tokens"]) for r in reports] == [
            ("support", "ok", 40)
        ] * 2
        assert [seen.body.get("stream", False) for seen in stand_in.seen] == [False, True]

    run(scenario, mosquitto, tmp_path)
    assert capsys.readouterr().out == REPLY + "\n" + REPLY
