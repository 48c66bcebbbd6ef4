"""The enforcer in-process against a real mosquitto: usage, authorization, status, alerts, dead letters."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from budget.client import BudgetClient, guard
from budget.domain.ledger import Ledger
from budget.errors import BudgetDenied
from budget.mqtt.connection import Mqtt5Connection
from budget.service.settings import load_config
from budget.store.event_store import EventStore
from tests.budget.broker import Broker
from tests.budget.enforcer_helpers import NOW, PATIENCE_S, make_enforcer, stored_events, wait_until
from tests.budget.enforcer_process import CAPS_TOML
from tests.budget.mqtt_helpers import Collector, mqtt, publish_all, usage_body


def test_usage_is_recorded_once_status_retained_and_alerts_once(mosquitto: Broker, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with make_enforcer(mosquitto, tmp_path) as enforcer:
            await enforcer.wait_subscribed(PATIENCE_S)
            async with mqtt(mosquitto.port) as pub, mqtt(mosquitto.port) as sub:
                seen = await Collector(sub).start("margins/status/+", "margins/alerts/+")
                # gpt-4o-mini, 900 in + 250 out = $0.000285; 3000 of them = $0.855 of $1.00 (soft at 80%)
                bodies = [json.dumps(usage_body(f"e{i}")).encode() for i in range(3000)]
                await publish_all(pub, "margins/usage/alice", bodies)
                await publish_all(pub, "margins/usage/alice", bodies[:500])  # redelivered / re-published
                await seen.wait_for(
                    lambda: any(s["spent_usd"] >= 0.855 - 1e-9 for s in seen.on("margins/status/alice"))
                )
                await wait_until(lambda: enforcer.counters["duplicate"] >= 500, "500 duplicates counted")
                assert [a["alert"] for a in seen.on("margins/alerts/alice")] == ["soft"]
                seen.stop()
            status = enforcer.ledger.status("alice", NOW)
            assert status.spent_nanos == 3000 * 285_000
            assert status.state == "soft"
            assert enforcer.counters["duplicate"] == 500
        # the retained status is there for a late subscriber
        async with mqtt(mosquitto.port) as late:
            got = await Collector(late).start("margins/status/alice")
            await got.wait_for(lambda: got.messages)
            assert got.messages[-1][2] is True  # retained
            assert json.loads(got.messages[-1][1])["spent_usd"] == 0.855

    asyncio.run(scenario())
    events = stored_events(tmp_path)
    assert sum(1 for e in events if type(e).__name__ == "UsageRecorded") == 3000


def test_authorize_allow_settle_deny_and_degrade(mosquitto: Broker, tmp_path: Path) -> None:
    caps = CAPS_TOML.replace('at_cap = "block"', 'at_cap = "degrade"\ndegrade_model = "gpt-4o-mini"')

    async def scenario() -> None:
        async with make_enforcer(mosquitto, tmp_path, caps, fixed_clock=False) as enforcer:
            await enforcer.wait_subscribed(PATIENCE_S)
            async with BudgetClient.connect(f"mqtt://127.0.0.1:{mosquitto.port}") as budget:
                async with guard(budget, "bob", "gpt-4o", 1000, max_input_tokens=2000) as call:
                    assert call.model == "gpt-4o" and not call.degraded
                    call.record(
                        {
                            "prompt_tokens": 1500,
                            "completion_tokens": 100,
                            "prompt_tokens_details": {"cached_tokens": 1000},
                        }
                    )
                await asyncio.sleep(0.2)
                status = enforcer.ledger.status("bob", datetime.now(UTC))
                assert status.reserved_nanos == 0  # settled by the usage event
                assert status.spent_nanos > 0
                # gpt-4o worst case for 200k in / 50k out is far above $1: degrade to gpt-4o-mini if it fits
                call2 = await budget.authorize("bob", "gpt-4o", 200_000, 50_000)
                assert call2.decision == "degrade" and call2.model == "gpt-4o-mini"
                try:
                    await budget.authorize("bob", "gpt-4o", 5_000_000, 5_000_000)
                except BudgetDenied as denied:
                    assert denied.user_id == "bob" and denied.remaining_usd is not None and denied.reason
                else:
                    raise AssertionError("expected a deny")

    asyncio.run(scenario())


def test_bad_inputs_are_dead_lettered_and_counted(mosquitto: Broker, tmp_path: Path) -> None:
    bad = [
        b"{not json",
        b"\xff\xfe\x00",
        json.dumps(usage_body("x1", input_tokens="9")).encode(),
        json.dumps({"event_id": "x2"}).encode(),
        json.dumps(usage_body("x3", output_tokens=-1)).encode(),
        json.dumps(usage_body("x4", output_tokens=20_000_000)).encode(),
        json.dumps(usage_body("x5", model="mystery-9")).encode(),
        json.dumps(usage_body("x6", user_id="mallory")).encode(),
        json.dumps(usage_body("x7", ts="2030-01-01T00:00:00Z")).encode(),
        b"[" + b" " * 70_000 + b"]",
        json.dumps([usage_body("good1"), usage_body("x8", input_tokens=-5), usage_body("good2")]).encode(),
    ]

    async def scenario() -> None:
        async with make_enforcer(mosquitto, tmp_path) as enforcer:
            await enforcer.wait_subscribed(PATIENCE_S)
            async with mqtt(mosquitto.port) as pub, mqtt(mosquitto.port) as sub:
                seen = await Collector(sub).start("margins/deadletter", "margins/alerts/+")
                for payload in bad:
                    await pub.publish("margins/usage/alice", payload, qos=1)
                await seen.wait_for(lambda: len(seen.on("margins/deadletter")) >= 11)
                reasons = sorted(d["reason"] for d in seen.on("margins/deadletter"))
                assert reasons == sorted(
                    [
                        "malformed_json",
                        "not_utf8",
                        "wrong_type",
                        "missing_field",
                        "out_of_range",
                        "out_of_range",
                        "unknown_model",
                        "user_mismatch",
                        "future_timestamp",
                        "too_large",
                        "out_of_range",
                    ]
                )
                await seen.wait_for(lambda: seen.on("margins/alerts/alice"))
                assert seen.on("margins/alerts/alice")[0]["alert"] == "unknown_model"
                seen.stop()
            assert enforcer.ledger.status("alice", NOW).spent_nanos == 2 * 285_000
            assert sum(v for k, v in enforcer.counters.items() if k.startswith("dead_letter_")) == 11
            assert enforcer.counters["dead_letter_out_of_range"] == 3

    asyncio.run(scenario())
    events = stored_events(tmp_path)
    assert sum(1 for e in events if type(e).__name__ == "DeadLettered") == 11
    replayed = Ledger(load_config(tmp_path / "caps.toml"), load_config(tmp_path / "caps.toml").catalog())
    replayed.apply_all(events)  # type: ignore[arg-type]
    assert replayed.status("alice", NOW).spent_nanos == 2 * 285_000


def test_reservations_expire_on_a_timer_and_alerts_come_once_per_month(
    mosquitto: Broker, tmp_path: Path
) -> None:
    now = [NOW]
    caps = CAPS_TOML.replace("reservation_ttl_s = 600", "reservation_ttl_s = 1")

    def costly(event_id: str, ts: str) -> bytes:  # gpt-4o, 100k input tokens = $0.25
        return json.dumps(
            usage_body(event_id, model="gpt-4o", input_tokens=100_000, output_tokens=0, ts=ts)
        ).encode()

    async def scenario() -> None:
        async with make_enforcer(mosquitto, tmp_path, caps, clock=lambda: now[0]) as enforcer:
            await enforcer.wait_subscribed(PATIENCE_S)
            async with mqtt(mosquitto.port, v5=False) as app, mqtt(mosquitto.port) as sub:
                seen = await Collector(sub).start("margins/alerts/+", "margins/replies/t/#")
                # an MQTT 3.1.1 client: the answer goes to "reply_to"
                request: dict[str, object] = {"request_id": "q1", "user_id": "alice", "model": "gpt-4o-mini"}
                request |= {
                    "max_input_tokens": 1000,
                    "max_output_tokens": 1000,
                    "reply_to": "margins/replies/t/q1",
                }
                await app.publish("margins/authorize/alice", json.dumps(request).encode(), qos=1)
                await seen.wait_for(lambda: seen.on("margins/replies/t/q1"))
                [reply] = seen.on("margins/replies/t/q1")
                assert (
                    reply["decision"] == "allow" and reply["request_id"] == "q1" and reply["reservation_id"]
                )
                assert enforcer.ledger.status("alice", now[0]).reserved_nanos == 750_000
                now[0] = NOW + timedelta(seconds=2)  # past the TTL: the timer returns the amount
                await wait_until(
                    lambda: not enforcer.ledger.status("alice", now[0]).reserved_nanos,
                    "the reservation expired",
                )
                assert enforcer.counters["expired"] == 1

                november = [costly(f"n{i}", "2026-11-26T20:00:00Z") for i in range(6)]
                await publish_all(app, "margins/usage/alice", november)
                await seen.wait_for(lambda: len(seen.on("margins/alerts/alice")) >= 2)
                now[0] = datetime(2026, 12, 1, 0, 5, tzinfo=UTC)  # a new month is a new key
                december = [costly(f"d{i}", "2026-12-01T00:04:00Z") for i in range(6)]
                await publish_all(app, "margins/usage/alice", december)
                expected = [("soft", "2026-11"), ("cap", "2026-11"), ("soft", "2026-12"), ("cap", "2026-12")]
                await seen.wait_for(lambda: len(seen.on("margins/alerts/alice")) >= 4)
                await asyncio.sleep(0.3)
                assert sorted((a["alert"], a["month"]) for a in seen.on("margins/alerts/alice")) == sorted(
                    expected
                )
                seen.stop()
        assert [type(e).__name__ for e in stored_events(tmp_path)].count("ReservationExpired") == 1

    asyncio.run(scenario())


def test_no_message_is_acknowledged_before_its_event_is_durable(
    mosquitto: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log: list[tuple[str, int]] = []
    real_append, real_ack = EventStore.append, Mqtt5Connection.ack

    def append(store: EventStore, events: Iterable[object]) -> None:
        batch = list(events)
        time.sleep(0.002)  # a slow disk widens the window in which an early ack would show
        real_append(store, batch)  # type: ignore[arg-type]
        log.append(("durable", sum(1 for e in batch if type(e).__name__ == "UsageRecorded")))

    def ack(connection: Mqtt5Connection, packet_id: int) -> None:
        log.append(("ack", packet_id))
        real_ack(connection, packet_id)

    monkeypatch.setattr(EventStore, "append", append)
    monkeypatch.setattr(Mqtt5Connection, "ack", ack)

    async def scenario() -> None:
        async with make_enforcer(mosquitto, tmp_path) as enforcer:
            await enforcer.wait_subscribed(PATIENCE_S)
            async with mqtt(mosquitto.port) as pub:
                bodies = [json.dumps(usage_body(f"d{i}")).encode() for i in range(500)]
                await publish_all(pub, "margins/usage/alice", bodies)
            assert enforcer.ledger.status("alice", NOW).spent_nanos == 500 * 285_000

    asyncio.run(scenario())
    durable = acked = 0
    for kind, value in log:
        if kind == "durable":
            durable += value
        else:
            acked += 1
            assert acked <= durable, "a usage message was acknowledged before its event was durable"
    assert acked == durable == 500


def test_a_restart_republishes_every_replayed_users_status(mosquitto: Broker, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with make_enforcer(mosquitto, tmp_path) as enforcer:
            await enforcer.wait_subscribed(PATIENCE_S)
            async with mqtt(mosquitto.port) as pub:
                await pub.publish("margins/usage/alice", json.dumps(usage_body("r1")).encode(), qos=1)
                await wait_until(lambda: enforcer.counters["committed"] > 0, "the usage committed")
        async with mqtt(mosquitto.port) as pub:  # as if the status publish had been lost in a crash
            await pub.publish("margins/status/alice", b"", qos=1, retain=True)
        async with make_enforcer(mosquitto, tmp_path) as enforcer:
            await enforcer.wait_subscribed(PATIENCE_S)
            async with mqtt(mosquitto.port) as sub:
                got = await Collector(sub).start("margins/status/alice")
                await got.wait_for(lambda: got.messages)
                assert json.loads(got.messages[-1][1])["spent_usd"] == 0.000285

    asyncio.run(scenario())
