"""Start-up at scale, and flow control against a broker with a small receive maximum: the enforcer is
ready and answering before the retained statuses of its users have all gone out again, never has more
publishes in flight than the broker allows, and never reconnects for it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from budget.domain.events import UsageRecorded
from budget.mqtt.connection import Mqtt5Connection
from budget.store.event_store import EventStore
from tests.budget.broker import Broker
from tests.budget.enforcer_helpers import (
    NOW,
    PATIENCE_S,
    Authorizer,
    enforcer_client_id,
    make_enforcer,
    wait_until,
)
from tests.budget.mqtt_helpers import Collector, mqtt, publish_all, usage_body

USERS = 70_000  # more than the 65,535 packet ids one connection has


@pytest.fixture
def narrow_broker(tmp_path: Path) -> Iterator[Broker]:
    """A mosquitto that takes only 20 QoS 1 publishes in flight from a client (CONNACK receive maximum)."""
    broker = Broker(tmp_path / "narrow-broker", secured=False, settings={"max_inflight_messages": "20"})
    broker.start()
    try:
        yield broker
    finally:
        broker.kill()


def seed_store(store: Path, users: int, month_ts: datetime) -> None:
    """One usage event for each of `users` users, appended in big batches."""
    with EventStore.open(store, flush_interval=None) as opened:
        for start in range(0, users, 50_000):
            opened.append(
                [
                    UsageRecorded(
                        event_id=f"seed-{i}",
                        user_id=f"u{i}",
                        ts=month_ts,
                        model="gpt-4o-mini",
                        input_tokens=900,
                        output_tokens=250,
                        cost_nanos=285_000,
                        month=f"{month_ts:%Y-%m}",
                    )
                    for i in range(start, min(users, start + 50_000))
                ]
            )


def test_with_more_users_than_packet_ids_it_is_ready_and_answers_while_statuses_still_go_out(
    narrow_broker: Broker, tmp_path: Path
) -> None:
    seed_store(tmp_path / "store", USERS, datetime(2026, 11, 20, tzinfo=UTC))

    async def scenario() -> None:
        port = narrow_broker.port
        async with mqtt(port) as app:  # connected first: asking costs no connect
            authorizer = await Authorizer(app).start()
            async with make_enforcer(narrow_broker, tmp_path) as enforcer:
                await enforcer.wait_subscribed(PATIENCE_S)
                answer = await authorizer.ask("q1", user="u7")
                republishing_when_answered = enforcer.republishing
                sent_when_answered = enforcer.counters["status_republished"]
                assert answer["decision"] == "allow"
                await wait_until(lambda: not enforcer.republishing, "every status republished")
                assert enforcer.counters["status_republished"] >= USERS - 1  # u7's may have gone out itself
                assert enforcer.counters["connections"] == 1
            authorizer.stop()
        assert republishing_when_answered, f"answered only after the republish ({sent_when_answered} sent)"
        async with mqtt(port) as late:  # the retained statuses are there, the first and the last
            seen = await Collector(late).start(*(f"margins/status/u{i}" for i in (0, 123, USERS - 1)))
            await seen.wait_for(lambda: len(seen.messages) >= 3, PATIENCE_S)
            seen.stop()
        assert all(json.loads(p)["spent_usd"] == 0.000285 for _, p, _ in seen.messages)

    asyncio.run(scenario())
    assert narrow_broker.connections(enforcer_client_id(tmp_path)) == 1


def test_only_users_active_this_month_are_republished(mosquitto: Broker, tmp_path: Path) -> None:
    seed_store(tmp_path / "store", 30, datetime(2026, 10, 5, tzinfo=UTC))  # October: not this month
    with EventStore.open(tmp_path / "store", flush_interval=None) as opened:
        opened.append(
            [
                UsageRecorded(
                    event_id="now",
                    user_id="active",
                    ts=NOW,
                    model="gpt-4o-mini",
                    input_tokens=900,
                    output_tokens=250,
                    cost_nanos=285_000,
                    month="2026-11",
                )
            ]
        )

    async def scenario() -> None:
        async with make_enforcer(mosquitto, tmp_path) as enforcer:
            await enforcer.wait_subscribed(PATIENCE_S)
            await wait_until(lambda: not enforcer.republishing, "the republish done")
            assert enforcer.counters["status_republished"] == 1

    asyncio.run(scenario())


def test_thousands_of_publishes_through_a_receive_maximum_of_20(
    narrow_broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    users = 3000
    in_flight: list[int] = []  # after each publish of the enforcer's
    real_publish = Mqtt5Connection.publish

    def publish(connection: Mqtt5Connection, topic: str, payload: bytes, **options: Any) -> None:
        real_publish(connection, topic, payload, **options)
        in_flight.append(connection.in_flight)

    monkeypatch.setattr(Mqtt5Connection, "publish", publish)

    async def scenario() -> None:
        async with make_enforcer(narrow_broker, tmp_path) as enforcer:
            await enforcer.wait_subscribed(PATIENCE_S)
            async with mqtt(narrow_broker.port) as pub, mqtt(narrow_broker.port) as sub:
                statuses = await Collector(sub).start("margins/status/+")
                bodies = [json.dumps(usage_body(f"e{i}", user=f"v{i}")).encode() for i in range(users)]
                await asyncio.gather(
                    *(publish_all(pub, f"margins/usage/v{i}", [b]) for i, b in enumerate(bodies))
                )
                await statuses.wait_for(
                    lambda: len({t for t, _, _ in statuses.messages}) >= users, PATIENCE_S
                )
                statuses.stop()
            assert narrow_broker.connections(enforcer_client_id(tmp_path)) == 1  # by the broker's log
            assert (
                len(in_flight) >= users and max(in_flight) == 20
            )  # the broker's receive maximum, never more
            assert enforcer.counters["UsageRecorded"] == users
            assert enforcer.counters["connections"] == 1
            assert enforcer.counters["publish_refused"] == 0

    asyncio.run(scenario())
