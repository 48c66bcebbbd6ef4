"""The wire's newer parts, in-process against a real mosquitto: renewals, authorization deadlines (the
"expired" decision), a reservation's expiry in its reply, confirmations of usage after their commit, and a
broker that refuses one of the enforcer's publishes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from budget.domain.events import DeadLettered, ReservationGranted, ReservationRenewed, UsageRecorded
from budget.mqtt.broker import BrokerSettings
from budget.mqtt.connection import Mqtt5Connection
from budget.service.enforcer import Enforcer
from budget.service.settings import load_config
from budget.store.event_store import EventStore
from tests.budget.broker import ACL_EXAMPLE, PASSWORDS, Broker
from tests.budget.enforcer_helpers import (
    NOW,
    PATIENCE_S,
    Authorizer,
    make_enforcer,
    stored_events,
    wait_until,
)
from tests.budget.mqtt_helpers import Collector, mqtt, usage_body


def test_renewals_keep_a_reservation_open_and_the_reply_says_until_when(
    mosquitto: Broker, tmp_path: Path
) -> None:
    now = [NOW]

    async def scenario() -> None:
        async with make_enforcer(mosquitto, tmp_path, clock=lambda: now[0]) as enforcer:
            await enforcer.wait_subscribed(PATIENCE_S)
            async with mqtt(mosquitto.port) as app, mqtt(mosquitto.port) as sub:
                authorizer = await Authorizer(app).start()
                dead = await Collector(sub).start("margins/deadletter")
                grant = await authorizer.ask("q1")
                assert grant["decision"] == "allow"
                assert grant["expires_at"] == "2026-11-26T21:10:00Z"  # the caps' 600 s TTL
                reservation = grant["reservation_id"]
                now[0] = NOW + timedelta(seconds=300)
                renew = {"reservation_id": reservation, "user_id": "alice"}
                await app.publish("margins/renew/alice", json.dumps(renew).encode(), qos=1)
                await wait_until(lambda: enforcer.counters["renewed"] == 1, "the renewal applied")
                held = enforcer.ledger.reservation(reservation)
                assert held is not None and held.expires_at == NOW + timedelta(seconds=900)
                for body in ({"reservation_id": "r-none", "user_id": "alice"}, renew | {"user_id": "alice"}):
                    await app.publish("margins/renew/alice", json.dumps(body).encode(), qos=1)
                await app.publish("margins/renew/alice", b'{"user_id": "alice"}', qos=1)
                await app.publish(
                    "margins/renew/alice", json.dumps(renew | {"user_id": "bob"}).encode(), qos=1
                )
                await dead.wait_for(lambda: len(dead.on("margins/deadletter")) >= 2, PATIENCE_S)
                assert [d["reason"] for d in dead.on("margins/deadletter")] == [
                    "missing_field",
                    "user_mismatch",
                ]
                # the unknown id, and the same instant's second renewal (nothing to extend): no dead letter
                assert enforcer.counters["renewal_ignored"] == 2
                dead.stop()
                authorizer.stop()

    asyncio.run(scenario())
    renewed = [e for e in stored_events(tmp_path) if isinstance(e, ReservationRenewed)]
    assert [(e.user_id, e.expires_at) for e in renewed] == [("alice", NOW + timedelta(seconds=900))]


def test_an_authorization_decided_after_its_deadline_is_expired_and_holds_nothing(
    mosquitto: Broker, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with make_enforcer(mosquitto, tmp_path) as enforcer:
            await enforcer.wait_subscribed(PATIENCE_S)
            async with mqtt(mosquitto.port) as app:
                authorizer = await Authorizer(app).start()
                late = await authorizer.ask("late", expires_at=(NOW - timedelta(seconds=1)).isoformat())
                assert (late["decision"], late["reservation_id"], late["expires_at"]) == (
                    "expired",
                    None,
                    None,
                )
                assert "deadline" in late["reason"]
                in_time = await authorizer.ask("in-time", expires_at=(NOW + timedelta(seconds=5)).isoformat())
                assert in_time["decision"] == "allow"
                # the MQTT 5 message expiry interval of the request is a deadline too (30 s from now: in time)
                expiring = Properties(PacketTypes.PUBLISH)
                expiring.MessageExpiryInterval = 30
                body: dict[str, object] = {"request_id": "prop", "user_id": "alice", "model": "gpt-4o-mini"}
                body |= {"max_input_tokens": 1, "max_output_tokens": 1, "reply_to": f"{authorizer.prefix}/p"}
                await app.publish(
                    "margins/authorize/alice", json.dumps(body).encode(), qos=1, properties=expiring
                )
                assert (await authorizer.answer("prop"))["decision"] == "allow"
                authorizer.stop()
            assert enforcer.counters["authorization_expired"] == 1
            assert enforcer.counters["granted"] == 2

    asyncio.run(scenario())
    granted = [e.request_id for e in stored_events(tmp_path) if isinstance(e, ReservationGranted)]
    assert granted == ["in-time", "prop"]


def test_usage_is_confirmed_to_its_response_topic_only_after_its_commit(
    mosquitto: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log: list[tuple[str, set[object]]] = []
    real_append, real_publish = EventStore.append, Mqtt5Connection.publish

    def append(store: EventStore, events: Iterable[object]) -> None:
        batch = list(events)
        real_append(store, batch)  # type: ignore[arg-type]
        log.append(("durable", {getattr(e, "event_id", None) for e in batch}))

    def publish(connection: Mqtt5Connection, topic: str, payload: bytes, **options: object) -> None:
        if topic.endswith("/confirm"):
            log.append(("confirm", set(json.loads(payload)["confirmed"])))
        real_publish(connection, topic, payload, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(EventStore, "append", append)
    monkeypatch.setattr(Mqtt5Connection, "publish", publish)
    confirm_topic = "margins/replies/app1/confirm"
    messages = [
        json.dumps(usage_body("c1")).encode(),
        json.dumps([usage_body("c2"), usage_body("c3"), usage_body("c1")]).encode(),  # c1 again: a duplicate
        json.dumps([usage_body("c4"), usage_body("c5", input_tokens=-1)]).encode(),  # c5 dead-lettered
        json.dumps(usage_body("c6", model="mystery-9")).encode(),  # dead-lettered by the ledger
    ]

    async def scenario() -> list[str]:
        async with make_enforcer(mosquitto, tmp_path) as enforcer:
            await enforcer.wait_subscribed(PATIENCE_S)
            async with mqtt(mosquitto.port) as app, mqtt(mosquitto.port) as sub:
                confirms = await Collector(sub).start(confirm_topic)
                asking = Properties(PacketTypes.PUBLISH)
                asking.ResponseTopic = confirm_topic
                for payload in messages:
                    await app.publish("margins/usage/alice", payload, qos=1, properties=asking)
                await app.publish("margins/usage/alice", json.dumps(usage_body("quiet")).encode(), qos=1)
                await confirms.wait_for(
                    lambda: sum(len(c["confirmed"]) for c in confirms.on(confirm_topic)) >= 7, PATIENCE_S
                )
                await wait_until(lambda: enforcer.counters["UsageRecorded"] == 5, "every usage applied")
                await asyncio.sleep(0.3)
                confirms.stop()
                return [i for c in confirms.on(confirm_topic) for i in c["confirmed"]]

    confirmed = asyncio.run(scenario())
    assert sorted(confirmed) == ["c1", "c1", "c2", "c3", "c4", "c5", "c6"]  # not "quiet": it did not ask
    durable: set[object] = set()
    for kind, value in log:
        if kind == "durable":
            durable |= value
        else:
            assert set(value) <= durable | {"c5", "c6"}, f"confirmed {value} before its commit"
    dead = [e for e in stored_events(tmp_path) if isinstance(e, DeadLettered)]
    assert [(e.reason, e.count, e.event_id) for e in dead] == [
        ("out_of_range", 1, "c5"),
        ("unknown_model", 1, "c6"),
    ]


def test_a_publish_the_broker_refuses_is_counted_and_the_connection_stays(tmp_path: Path) -> None:
    # The shipped ACL without the enforcer's right to publish alerts: the broker answers an alert's PUBLISH
    # with PUBACK 0x87 (not authorized). A finite max_queued_messages: with 0, mosquitto before 2.0.22 also
    # drops the connection after such a PUBACK (its issue #3244), which no client can prevent.
    acl = ACL_EXAMPLE.read_text().replace("topic write margins/alerts/+\n", "")
    assert "margins/alerts" not in acl.split("user enforcer", 1)[1]
    broker = Broker(tmp_path / "broker", secured=True, settings={"max_queued_messages": "100000"}, acl=acl)
    broker.start()
    (tmp_path / "caps.toml").write_text('default_cap_usd = "1.00"\n')
    settings = BrokerSettings(
        host="127.0.0.1",
        port=broker.port,
        username="enforcer",
        password=PASSWORDS["enforcer"],
    )

    async def scenario() -> None:
        async with Enforcer(settings, tmp_path / "store", load_config(tmp_path / "caps.toml")) as enforcer:
            await enforcer.wait_subscribed(PATIENCE_S)
            async with mqtt(broker.port, "app", PASSWORDS["app"]) as app:
                for i in range(3):  # an unknown model: a dead letter and an alert, refused
                    body = usage_body(f"m{i}", model="mystery-9", ts=NOW.isoformat())
                    await app.publish("margins/usage/alice", json.dumps(body).encode(), qos=1)
                await wait_until(lambda: enforcer.counters["publish_refused"] >= 3, "the refusals counted")
                body = usage_body("ok", ts=NOW.isoformat())
                await app.publish("margins/usage/alice", json.dumps(body).encode(), qos=1)
                await wait_until(lambda: enforcer.counters["UsageRecorded"] == 1, "the next message handled")
            assert enforcer.counters["connections"] == 1
            assert enforcer.counters["publish_refused"] == 3

    try:
        asyncio.run(scenario())
        assert broker.connections("enforcer") == 1  # the shipped config: client id = username
    finally:
        broker.kill()


def test_usage_settling_an_expired_reservation_counts_as_an_overshoot_and_alerts(
    mosquitto: Broker, tmp_path: Path
) -> None:
    now = [NOW]

    async def scenario() -> None:
        async with make_enforcer(mosquitto, tmp_path, clock=lambda: now[0]) as enforcer:
            await enforcer.wait_subscribed(PATIENCE_S)
            async with mqtt(mosquitto.port) as app, mqtt(mosquitto.port) as sub:
                authorizer = await Authorizer(app).start()
                alerts = await Collector(sub).start("margins/alerts/+")
                grant = await authorizer.ask("long-call")
                now[0] = NOW + timedelta(seconds=601)  # never renewed: the hold lapses
                await wait_until(lambda: enforcer.counters["expired"] == 1, "the reservation expired")
                body = usage_body("u-long", reservation_id=grant["reservation_id"], ts=now[0].isoformat())
                await app.publish("margins/usage/alice", json.dumps(body).encode(), qos=1)
                await alerts.wait_for(lambda: len(alerts.on("margins/alerts/alice")) >= 1, PATIENCE_S)
                [alert] = alerts.on("margins/alerts/alice")
                assert (alert["alert"], alert["event_id"], alert["reservation_id"]) == (
                    "overshoot",
                    "u-long",
                    grant["reservation_id"],
                )
                assert alert["cost_usd"] > 0 and enforcer.counters["overshoot"] == 1
                alerts.stop()
                authorizer.stop()

    asyncio.run(scenario())
    [usage] = [e for e in stored_events(tmp_path) if isinstance(e, UsageRecorded)]
    assert usage.overshoot and usage.reservation_id is not None
