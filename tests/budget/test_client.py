"""budget.client: usage parsing, guard's report on success / failure, deny and timeout errors."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import CAPS_TOML, Broker
from mqtt_helpers import Collector, mqtt
from test_service import make_enforcer

from budget.client import BudgetClient, guard, usage_counts
from budget.errors import AuthorizationTimeout, BudgetDenied, BudgetError, UsageCountsError


def test_usage_counts_accepts_openai_objects_and_dicts() -> None:
    chat = SimpleNamespace(
        prompt_tokens=1200, completion_tokens=80, prompt_tokens_details=SimpleNamespace(cached_tokens=1024)
    )
    assert usage_counts(chat) == (1200, 1024, 80)
    assert usage_counts({"prompt_tokens": 10, "completion_tokens": 5}) == (10, 0, 5)
    assert usage_counts({"prompt_tokens": 10, "completion_tokens": 5, "prompt_tokens_details": None}) == (
        10,
        0,
        5,
    )
    responses = {"input_tokens": 300, "output_tokens": 20, "input_tokens_details": {"cached_tokens": 256}}
    assert usage_counts(responses) == (300, 256, 20)
    with pytest.raises(UsageCountsError, match="integer prompt/input and completion/output") as caught:
        usage_counts({"prompt_tokens": "many"})
    assert caught.value.usage == {"prompt_tokens": "many"} and isinstance(caught.value, BudgetError)


def test_no_enforcer_means_a_timeout_not_a_hang(mosquitto: Broker) -> None:
    async def scenario() -> None:
        async with BudgetClient.connect(f"mqtt://127.0.0.1:{mosquitto.port}", timeout_s=0.3) as budget:
            with pytest.raises(AuthorizationTimeout) as caught:
                async with guard(budget, "alice", "gpt-4o", 100, max_input_tokens=100):
                    raise AssertionError("the body must not run without an answer")
            assert caught.value.user_id == "alice" and caught.value.timeout_s == 0.3

    asyncio.run(scenario())


def test_guard_reports_usage_and_releases_on_error(mosquitto: Broker, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with make_enforcer(mosquitto, tmp_path, CAPS_TOML, fixed_clock=False) as enforcer:
            await enforcer.wait_subscribed()
            async with (
                BudgetClient.connect(f"mqtt://127.0.0.1:{mosquitto.port}") as budget,
                mqtt(mosquitto.port) as watcher,
            ):
                usage = await Collector(watcher).start("margins/usage/+")
                async with guard(
                    budget, "zoe", "gpt-4o-mini", 500, max_input_tokens=1000, feature="search"
                ) as call:
                    call.record({"prompt_tokens": 700, "completion_tokens": 120})
                with pytest.raises(RuntimeError):
                    async with guard(budget, "zoe", "gpt-4o-mini", 500, max_input_tokens=1000):
                        raise RuntimeError("provider timeout")
                await usage.wait_for(lambda: len(usage.on("margins/usage/zoe")) == 2)
                first, second = usage.on("margins/usage/zoe")
                assert (first["input_tokens"], first["output_tokens"], first["feature"]) == (
                    700,
                    120,
                    "search",
                )
                assert first["reservation_id"] and first["outcome"] == "ok"
                assert (second["input_tokens"], second["outcome"]) == (0, "error")
                await asyncio.sleep(0.3)
                status = enforcer.ledger.status("zoe", datetime.now(UTC))
                assert status.reserved_nanos == 0  # both reservations settled
                assert status.spent_nanos == 700 * 150 + 120 * 600
                # $1.00 cap: a call whose worst case is $1.5 is denied with the fields an app needs
                with pytest.raises(BudgetDenied) as denied:
                    async with guard(budget, "zoe", "gpt-4o", 100_000, max_input_tokens=200_000):
                        pass
                assert denied.value.user_id == "zoe" and denied.value.model == "gpt-4o"
                assert denied.value.remaining_usd is not None and 0.99 < denied.value.remaining_usd < 1.0
                assert "exceeds" in denied.value.reason
                usage.stop()

    asyncio.run(scenario())


def test_the_public_names_are_the_documented_ones() -> None:
    """What `from budget.client import *` gives an application: the client, the guard, what they return
    (Grant, GuardedCall) and the usage parser; nothing imported from elsewhere, nothing private."""
    import budget.client

    assert budget.client.__all__ == ["BudgetClient", "Grant", "GuardedCall", "guard", "usage_counts"]
    for name in budget.client.__all__:
        public = getattr(budget.client, name)
        assert public.__module__ == "budget.client", name
        assert public.__doc__, f"{name} has no docstring"
