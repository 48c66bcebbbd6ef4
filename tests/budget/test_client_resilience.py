"""BudgetClient while the broker fails under it, with `margins enforce` as a real process on a real
mosquitto (the shipped config): a broker SIGKILLed while usage is reported through a file outbox loses
nothing and counts nothing twice; authorize works again after a broker restart on the same client object;
guard never raises because the broker was down at its exit, and the report arrives later; a long call keeps
its hold by renewing it; an authorization that waited in the broker past its deadline is never granted.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from budget.client import BudgetClient, Grant, guard
from budget.domain.events import ReservationDenied, ReservationGranted
from budget.errors import AuthorizationTimeout, BudgetDenied
from budget.outbox import Outbox
from tests.budget.broker import Broker
from tests.budget.client_helpers import enforcer_counters, eventually, stored_usage
from tests.budget.enforcer_process import EnforcerProcess
from tests.budget.mqtt_helpers import mqtt
from tests.budget.store_helpers import replayed

USAGE = {"prompt_tokens": 900, "completion_tokens": 250}  # gpt-4o-mini: $0.000285


async def recorded(port: int) -> int:
    """Usage events the enforcer has recorded (not counting duplicates), as it last published."""
    return (await enforcer_counters(port)).get("UsageRecorded", 0)


def test_a_broker_sigkill_while_reporting_through_the_outbox_loses_nothing(
    enforcer_process: EnforcerProcess, tmp_path: Path
) -> None:
    """A third of the reports before the broker dies (some recorded, some in flight, some only in its
    memory), a third while it is down, a third after it restarted from its persistence directory."""
    count = 3000
    broker = enforcer_process.broker
    enforcer_process.start()

    async def scenario() -> list[str]:
        ids = []
        # A restarted broker may take reports before the enforcer is back: unless it had saved the enforcer's
        # session, they go nowhere, and only a re-send for want of a confirmation recovers them (after 2 s
        # here instead of the default 30, to keep the test short).
        budget = BudgetClient.connect(
            broker.url, outbox=tmp_path / "outbox.db", resend_after_s=2, drain_timeout_s=1
        )
        async with budget:

            async def report(start: int, stop: int) -> None:
                for i in range(start, stop):
                    ids.append(await budget.report(f"u{i % 5}", "gpt-4o-mini", USAGE, event_id=f"k{i}"))

            await report(0, count // 3)
            await eventually(
                lambda: _at_least(broker.port, count // 6), "the enforcer recording the first reports"
            )
            broker.kill()  # kill -9: whatever it acknowledged since its last autosave is gone
            await report(count // 3, 2 * count // 3)
            await asyncio.to_thread(broker.start)
            await report(2 * count // 3, count)
            await eventually(
                lambda: _at_least(broker.port, count), f"all {count} reports recorded", timeout=180
            )
        return ids

    ids = asyncio.run(scenario())
    assert enforcer_process.terminate() == 0
    counted = Counter(e.event_id for e in stored_usage(enforcer_process.store))
    assert len(ids) == count
    assert counted == Counter(ids)  # every one of them, each exactly once, nothing else


async def _at_least(port: int, count: int) -> bool:
    return await recorded(port) >= count


def test_the_outbox_forgets_what_the_enforcer_confirmed(
    enforcer_process: EnforcerProcess, tmp_path: Path
) -> None:
    enforcer_process.start()
    path = tmp_path / "outbox.db"

    async def scenario() -> int:
        async with BudgetClient.connect(
            enforcer_process.broker.url, outbox=path, drain_timeout_s=1
        ) as budget:
            for i in range(200):
                await budget.report(f"u{i % 3}", "gpt-4o-mini", USAGE)
            return await budget.flush(30)

    assert asyncio.run(scenario()) == 0

    async def reopened() -> int:
        outbox = await Outbox.open(path)
        await outbox.close()
        return len(outbox)

    assert asyncio.run(reopened()) == 0


@pytest.mark.parametrize("how", ["restart", "sigkill"])
def test_authorize_works_again_after_a_broker_restart_on_the_same_client(
    enforcer_process: EnforcerProcess, how: str
) -> None:
    broker = enforcer_process.broker
    enforcer_process.start()

    async def scenario() -> list[Grant]:
        grants = []

        async def authorized() -> bool:
            try:
                grants.append(await budget.authorize("bob", "gpt-4o-mini", 100, 100))
            except AuthorizationTimeout:
                return False  # margins' own error while the broker or the enforcer is still coming back
            return True

        async with BudgetClient.connect(broker.url, timeout_s=3, drain_timeout_s=1) as budget:
            assert await authorized()
            if how == "restart":
                await asyncio.to_thread(broker.restart)
            else:
                broker.kill()
                assert not await authorized()  # AuthorizationTimeout, never the MQTT library's error
                await asyncio.to_thread(broker.start)
            await eventually(authorized, "an authorization after the broker restart", timeout=90)
        return grants

    grants = asyncio.run(scenario())
    assert len({g.reservation_id for g in grants}) == 2
    assert enforcer_process.terminate() == 0


def test_guard_does_not_raise_when_the_broker_is_down_at_its_exit(enforcer_process: EnforcerProcess) -> None:
    broker = enforcer_process.broker
    enforcer_process.start()

    async def scenario() -> tuple[str | None, str]:
        # resend_after_s: as in the SIGKILL test above
        async with BudgetClient.connect(
            broker.url, timeout_s=3, resend_after_s=2, drain_timeout_s=1
        ) as budget:
            async with guard(budget, "carol", "gpt-4o-mini", 500, max_input_tokens=1000) as call:
                broker.kill()  # the model call succeeded; the broker is gone when its usage is reported
                call.record({"prompt_tokens": 700, "completion_tokens": 120})
            assert call.event_id is not None and budget.unconfirmed == 1
            await asyncio.to_thread(broker.start)
            await eventually(lambda: _at_least(broker.port, 1), "the report, once the broker is back")
        return call.event_id, call.grant.reservation_id

    event_id, reservation_id = asyncio.run(scenario())
    assert enforcer_process.terminate() == 0
    (usage,) = stored_usage(enforcer_process.store)
    assert (usage.event_id, usage.reservation_id) == (event_id, reservation_id)
    assert (usage.input_tokens, usage.output_tokens, usage.outcome) == (700, 120, "ok")


# A $1.00 cap and a 3 s reservation TTL; a gpt-4o call of up to 60,000 output tokens is $0.60 at worst.
SHORT_TTL_CAPS = (
    'default_cap_usd = "1.00"\nsoft_threshold_pct = 80\nat_cap = "block"\nreservation_ttl_s = 3\n'
)
LONG_CALL_S = 7.0  # more than twice the TTL: a hold that is not renewed has expired by then
LONG_CALL = {"prompt_tokens": 0, "completion_tokens": 60_000}


def _long_calls(tmp_path: Path, broker: Broker) -> tuple[str, int]:
    """Call A runs LONG_CALL_S; near its end call B asks for the same worst case. Returns B's fate and the
    user's recorded spend in nano-dollars."""
    caps = tmp_path / "short-ttl.toml"
    caps.write_text(SHORT_TTL_CAPS)
    enforcer = EnforcerProcess(broker, tmp_path / "store", caps, tmp_path / "enforcer.log")
    enforcer.start()

    async def scenario() -> str:
        async with BudgetClient.connect(broker.url, timeout_s=5, drain_timeout_s=1) as budget:
            async with guard(budget, "erin", "gpt-4o", 60_000, max_input_tokens=0) as first:
                await asyncio.sleep(LONG_CALL_S)  # the model call itself, longer than the TTL
                try:
                    async with guard(budget, "erin", "gpt-4o", 60_000, max_input_tokens=0) as second:
                        second.record(LONG_CALL)
                    fate = "allowed"
                except BudgetDenied:
                    fate = "denied"
                first.record(LONG_CALL)
            await eventually(
                lambda: _at_least(broker.port, 2 if fate == "allowed" else 1), "the calls' usage recorded"
            )
        return fate

    try:
        fate = asyncio.run(scenario())
    finally:
        assert enforcer.terminate() == 0
    return fate, sum(e.cost_nanos for e in stored_usage(tmp_path / "store"))


def test_without_renewal_a_long_call_loses_its_hold_and_the_cap_is_passed(
    mosquitto: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What guard did before it renewed: the enforcer expires the first call's hold mid-call, the second
    call is allowed, and the user spends $1.20 against a $1.00 cap."""

    async def no_renewals(*args: object) -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr("budget.client._keep_reserved", no_renewals)
    assert _long_calls(tmp_path, mosquitto) == ("allowed", 1_200_000_000)


def test_a_long_call_keeps_its_hold_by_renewing_it_and_the_cap_holds(
    mosquitto: Broker, tmp_path: Path
) -> None:
    assert _long_calls(tmp_path, mosquitto) == ("denied", 600_000_000)


def test_an_authorization_that_waited_in_the_broker_past_its_deadline_is_not_granted(
    enforcer_process: EnforcerProcess,
) -> None:
    """The enforcer is down (its session queues in the broker); a client asks with a 1 s timeout and gives
    up; when the enforcer comes back, the request is gone. A request without a deadline, as clients sent
    before, waits in the same queue and is granted -- to nobody."""
    broker = enforcer_process.broker
    enforcer_process.start()
    assert enforcer_process.terminate() == 0

    async def scenario() -> None:
        async with BudgetClient.connect(broker.url, timeout_s=1, drain_timeout_s=1) as budget:
            with pytest.raises(AuthorizationTimeout):
                await budget.authorize("dave", "gpt-4o-mini", 100, 100, request_id="with-deadline")
        old_style: dict[str, object] = {
            "request_id": "no-deadline",
            "user_id": "dave",
            "model": "gpt-4o-mini",
        }
        old_style |= {"max_input_tokens": 100, "max_output_tokens": 100, "reply_to": "margins/replies/gone/r"}
        async with mqtt(broker.port) as app:
            await app.publish("margins/authorize/dave", json.dumps(old_style).encode(), qos=1)
        # Let the client's deadline (1 s; the broker counts whole seconds) pass while both wait queued.
        await asyncio.sleep(2.5)
        await asyncio.to_thread(enforcer_process.start)
        async with mqtt(broker.port) as app:  # a usage after both: once it is recorded, both were handled
            body: dict[str, object] = {"event_id": "marker", "user_id": "dave", "model": "gpt-4o-mini"}
            body |= {"ts": datetime.now(UTC).isoformat(), "input_tokens": 1, "output_tokens": 1}
            await app.publish("margins/usage/dave", json.dumps(body).encode(), qos=1)
        await eventually(lambda: _at_least(broker.port, 1), "the marker recorded")

    asyncio.run(scenario())
    assert enforcer_process.terminate() == 0
    decided = {
        e.request_id: type(e).__name__
        for e in replayed(enforcer_process.store)
        if isinstance(e, ReservationGranted | ReservationDenied)
    }
    assert decided == {"no-deadline": "ReservationGranted"}
