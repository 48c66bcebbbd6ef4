"""budget.client: usage parsing, guard's report on success / failure, deny, timeout and expired answers,
the deadline an authorization carries, reports re-sent until confirmed, renewals, and the broker absent or
refusing -- against a real mosquitto, the enforcer's side played by a stand-in where it is not the point."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from budget.client import BudgetClient, Grant, _cache_write_count, guard, usage_counts
from budget.errors import (
    AuthorizationExpired,
    AuthorizationTimeout,
    BrokerError,
    BrokerRefused,
    BrokerUnavailable,
    BudgetDenied,
    BudgetError,
    UsageCountsError,
)
from tests.budget.broker import Broker
from tests.budget.client_helpers import FakeEnforcer, eventually
from tests.budget.enforcer_helpers import make_enforcer
from tests.budget.enforcer_process import CAPS_TOML
from tests.budget.mqtt_helpers import Collector, mqtt


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


def test_usage_counts_reads_anthropic_usage_with_its_cache_outside_input_tokens() -> None:
    # Anthropic's input_tokens leave the cache out: 2000 prompt tokens = 200 new + 1500 read + 300 written
    usage = SimpleNamespace(
        input_tokens=200, cache_read_input_tokens=1500, cache_creation_input_tokens=300, output_tokens=60
    )
    assert usage_counts(usage) == (2000, 1500, 60) and _cache_write_count(usage) == 300
    no_cache = {"input_tokens": 200, "cache_read_input_tokens": None, "cache_creation_input_tokens": None}
    assert usage_counts(no_cache | {"output_tokens": 7}) == (200, 0, 7)
    assert _cache_write_count(no_cache) == 0
    with pytest.raises(UsageCountsError):
        usage_counts({"input_tokens": 1, "cache_read_input_tokens": "x", "output_tokens": 1})


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


def test_a_grant_is_renewed_every_third_of_the_time_left() -> None:
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    grant = Grant("q1", "allow", "gpt-4o", "r-1", 1.0, expires_at=now + timedelta(seconds=600))
    assert grant.renew_every_s(now) == 200.0
    assert grant.renew_every_s(now + timedelta(seconds=597)) == 1.0  # never busier than once a second
    assert replace(grant, expires_at=None).renew_every_s(now) == 60.0  # the enforcer did not say
    naive = replace(grant, expires_at=datetime(2026, 12, 1, 12, 0, 30))  # read as UTC
    assert naive.renew_every_s(now) == 10.0


def test_authorize_carries_its_deadline_and_an_expired_answer_is_no_grant(mosquitto: Broker) -> None:
    async def scenario() -> None:
        async with (
            FakeEnforcer(mosquitto.port, decision="expired") as fake,
            BudgetClient.connect(mosquitto.url, timeout_s=3.5) as budget,
        ):
            began = datetime.now(UTC)
            with pytest.raises(AuthorizationExpired) as caught:
                await budget.authorize("alice", "gpt-4o", 100, 100)
            assert isinstance(caught.value, AuthorizationTimeout) and caught.value.timeout_s == 3.5
            (request,) = fake.on("margins/authorize/alice")
            deadline = datetime.fromisoformat(request.body["expires_at"])
            assert timedelta(seconds=3) < deadline - began < timedelta(seconds=4)
            assert request.properties["MessageExpiryInterval"] == 4  # whole seconds, rounded up
            assert request.properties["ResponseTopic"].startswith(f"{budget.reply_topic}/")
            fake.decision = "allow"
            grant = await budget.authorize("alice", "gpt-4o", 100, 100)
            assert grant.reservation_id.startswith("r-") and grant.expires_at is not None

    asyncio.run(scenario())


def test_reports_are_sent_until_confirmed(mosquitto: Broker) -> None:
    async def scenario() -> None:
        async with FakeEnforcer(mosquitto.port, confirm=False) as fake:
            budget = BudgetClient.connect(mosquitto.url, resend_after_s=0.6, drain_timeout_s=0.1)
            async with budget:
                first = await budget.report(
                    "alice", "gpt-4o-mini", {"prompt_tokens": 9, "completion_tokens": 1}
                )
                assert budget.unconfirmed == 1
                # unconfirmed: sent again after 0.6 s, then 1.2 s later, ... (Outbox.due's test times it)
                await eventually(lambda: len(fake.on("margins/usage/alice")) >= 3, "two re-sends")
                sends = [s for s in fake.on("margins/usage/alice") if s.body["event_id"] == first]
                assert len(sends) >= 3 and sends[1].at - sends[0].at > 0.5  # waited, no busy loop
                assert {s.properties["ResponseTopic"] for s in sends} == {
                    f"margins/replies/{budget.settings.client_id}/confirm"
                }
                fake.confirm = True  # the next re-send is confirmed, and the outbox forgets it
                assert await budget.flush(60) == 0
                second = await budget.report(
                    "bob", "gpt-4o-mini", {"prompt_tokens": 5, "completion_tokens": 5}
                )
                assert await budget.flush(60) == 0
                assert [s.body["event_id"] for s in fake.on("margins/usage/bob")] == [second]

    asyncio.run(scenario())


def test_guard_renews_its_reservation_while_the_body_runs(mosquitto: Broker) -> None:
    async def scenario() -> None:
        async with (
            FakeEnforcer(mosquitto.port, ttl_s=6) as fake,  # renew every ~2 s
            BudgetClient.connect(mosquitto.url, timeout_s=5) as budget,
        ):
            async with guard(budget, "alice", "gpt-4o", 100, max_input_tokens=100) as call:
                granted = time.monotonic()
                # the guard counts a renewal once the broker acknowledged it, a moment after the
                # enforcer saw it: wait for both, or leaving the guard can cancel the second's count
                await eventually(
                    lambda: len(fake.on("margins/renew/alice")) >= 2 and call.renewals >= 2, "two renewals"
                )
                call.record({"prompt_tokens": 10, "completion_tokens": 10})
            renewals = fake.on("margins/renew/alice")
            assert [r.body for r in renewals[:2]] == [
                {"reservation_id": call.grant.reservation_id, "user_id": "alice"}
            ] * 2
            assert renewals[0].at - granted < 6  # before the hold would lapse
            assert renewals[1].at - renewals[0].at > 1  # a third of the TTL apart, not a busy loop
            assert call.renewals >= 2
            count = len(fake.on("margins/renew/alice"))
            await budget.flush(30)  # the report is confirmed; no renewal after the guard left
            assert len(fake.on("margins/renew/alice")) == count

    asyncio.run(scenario())


def test_a_client_started_while_the_broker_is_down_connects_when_it_comes(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "late-broker", secured=False)

    async def scenario() -> None:
        async with BudgetClient.connect(broker.url, timeout_s=0.5, drain_timeout_s=30) as budget:
            with pytest.raises(AuthorizationTimeout):  # not the MQTT library's exception
                await budget.authorize("alice", "gpt-4o", 100, 100)
            with pytest.raises(BrokerUnavailable):
                await budget.renew("alice", "r-1", timeout_s=0.3)
            event_id = await budget.report(
                "alice", "gpt-4o-mini", {"prompt_tokens": 1, "completion_tokens": 1}
            )
            await asyncio.to_thread(broker.start)
            async with FakeEnforcer(broker.port) as fake:
                await eventually(
                    lambda: len(fake.on("margins/usage/alice")) == 1, "the report, once connected"
                )
                assert fake.on("margins/usage/alice")[0].body["event_id"] == event_id
                assert await budget.flush(60) == 0

    try:
        asyncio.run(scenario())
    finally:
        broker.kill()


def test_refused_credentials_are_one_clear_error(secured_mosquitto: Broker) -> None:
    async def scenario() -> None:
        with pytest.raises(BrokerRefused) as caught:
            async with BudgetClient.connect(secured_mosquitto.url, username="app", password="wrong"):
                raise AssertionError("connected with a wrong password")
        assert caught.value.code in (0x86, 0x87) and "refused the connection" in str(caught.value)

    asyncio.run(scenario())


def test_a_tls_ca_file_that_is_no_certificate_is_one_clear_error(tmp_path: Path) -> None:
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate\n")

    async def scenario() -> None:
        with pytest.raises(BrokerError, match=r"tls_ca: cannot use .*ca\.pem") as caught:
            async with BudgetClient.connect("mqtts://127.0.0.1:1", tls_ca=str(junk)):
                raise AssertionError("connected without a usable CA file")
        assert not isinstance(caught.value, BrokerRefused)

    asyncio.run(scenario())
