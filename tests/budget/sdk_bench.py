"""What the SDK guards' tests share: a scenario run against a fresh enforcer and the LLM stand-in, and the
real SDK clients pointed at the stand-in (each closed in the scenario's event loop: closing after it is
gone fails)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import anthropic
import openai

from tests.budget.broker import Broker
from tests.budget.guard_helpers import Bench, bench
from tests.budget.llm_stand_in import StandIn, llm_stand_in

QUESTION = [{"role": "user", "content": "Where is my order?"}]
REPLY = "Your order ships today."  # the stand-in's reply, unless a test scripts another
SONNET, HAIKU = "claude-sonnet-4.5", "claude-haiku-4.5"

Scenario = Callable[[Bench, StandIn], Awaitable[None]]


def run_scenario(scenario: Scenario, mosquitto: Broker, tmp_path: Path, degrade_model: str) -> StandIn:
    """Run `scenario(bench, stand_in)` against a fresh enforcer and stand-in; the enforcer degrades to
    `degrade_model`."""

    async def main() -> StandIn:
        with llm_stand_in() as stand_in:
            async with bench(mosquitto, tmp_path, degrade_model=degrade_model) as live:
                try:
                    await scenario(live, stand_in)
                finally:
                    for client in stand_in.clients:
                        await client.close()
            return stand_in

    return asyncio.run(main())


def run_openai(scenario: Scenario, mosquitto: Broker, tmp_path: Path) -> StandIn:
    """`run_scenario` with an enforcer that degrades to gpt-4o-mini."""
    return run_scenario(scenario, mosquitto, tmp_path, "gpt-4o-mini")


def run_anthropic(scenario: Scenario, mosquitto: Broker, tmp_path: Path) -> StandIn:
    """`run_scenario` with an enforcer that degrades to Claude Haiku."""
    return run_scenario(scenario, mosquitto, tmp_path, HAIKU)


def openai_client(stand_in: StandIn) -> openai.AsyncOpenAI:
    client = openai.AsyncOpenAI(base_url=stand_in.openai_url, api_key="sk-test", max_retries=0)
    stand_in.clients.append(client)
    return client


def anthropic_client(stand_in: StandIn) -> anthropic.AsyncAnthropic:
    client = anthropic.AsyncAnthropic(base_url=stand_in.anthropic_url, api_key="sk-ant-test", max_retries=0)
    stand_in.clients.append(client)
    return client
