"""Bad input never amplifies, stalls or disconnects the enforcer (in-process, against a real mosquitto):
one dead letter per message however many items it rejects, authorizations answered meanwhile, reply
topics the broker would refuse never published, repeated errors logged once per interval."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from budget.domain.events import DeadLettered, ReservationGranted
from budget.service.wire import MAX_PAYLOAD_BYTES
from tests.budget.broker import Broker
from tests.budget.enforcer_helpers import (
    PATIENCE_S,
    Authorizer,
    enforcer_client_id,
    make_enforcer,
    stored_events,
    wait_until,
)
from tests.budget.mqtt_helpers import Collector, mqtt, usage_body

ZEROS = b"[" + b",".join([b"0"] * 32_000) + b"]"  # 64 KB: 32,000 items, none of them an object
EMPTIES = b"[" + b",".join([b"{}"] * 21_000) + b"]"  # 63 KB: 21,000 objects missing every field


def test_64kb_arrays_of_bad_items_are_one_dead_letter_each_while_authorizations_keep_being_answered(
    mosquitto: Broker, tmp_path: Path
) -> None:
    mixed = json.dumps([usage_body("good1"), {"event_id": "bad1"}, usage_body("good2")]).encode()
    too_large = b"[" + b" " * MAX_PAYLOAD_BYTES + b"]"
    bad = [ZEROS, ZEROS, EMPTIES, ZEROS, mixed, too_large]  # one alone, then three in a row, then two more
    round_trips: list[float] = []

    async def scenario() -> None:
        async with make_enforcer(mosquitto, tmp_path) as enforcer:
            await enforcer.wait_subscribed(PATIENCE_S)
            async with mqtt(mosquitto.port) as app, mqtt(mosquitto.port) as pub, mqtt(mosquitto.port) as sub:
                authorizer = await Authorizer(app).start()
                dead = await Collector(sub).start("margins/deadletter")
                stop = asyncio.Event()

                async def load() -> None:  # one authorization at a time, each timed
                    count = 0
                    while not stop.is_set():
                        request_id = f"q{count}"
                        await authorizer.ask(request_id)
                        round_trips.append(authorizer.round_trip_s(request_id))
                        count += 1
                        await asyncio.sleep(0.01)

                loading = asyncio.create_task(load())
                await wait_until(lambda: len(round_trips) >= 5, "authorizations answered before the flood")
                await pub.publish("margins/usage/alice", bad[0], qos=1)
                await dead.wait_for(lambda: len(dead.on("margins/deadletter")) >= 1, PATIENCE_S)
                for payload in bad[1:4]:  # three in a row, without waiting
                    await pub.publish("margins/usage/alice", payload, qos=1)
                await dead.wait_for(lambda: len(dead.on("margins/deadletter")) >= 4, PATIENCE_S)
                answered = len(round_trips)
                for payload in bad[4:]:
                    await pub.publish("margins/usage/alice", payload, qos=1)
                await dead.wait_for(lambda: len(dead.on("margins/deadletter")) >= 6, PATIENCE_S)
                await wait_until(lambda: len(round_trips) >= answered + 5, "authorizations after the flood")
                stop.set()
                await loading
                await asyncio.sleep(0.3)  # anything more on the dead-letter topic would show now
                letters = dead.on("margins/deadletter")
                dead.stop()
                authorizer.stop()
            assert [(d["reason"], d["count"], d["user_id"]) for d in letters] == [
                ("not_an_object", 32_000, "alice"),
                ("not_an_object", 32_000, "alice"),
                ("missing_field", 21_000, "alice"),
                ("not_an_object", 32_000, "alice"),
                ("missing_field", 1, "alice"),
                ("too_large", 1, "alice"),
            ]
            assert letters[0]["detail"].startswith(
                "32,000 of 32,000 items rejected; item 0: Expected `object`"
            )
            assert [d["payload"].encode() for d in letters[:5]] == bad[:5]  # the original message, whole
            assert letters[4]["detail"].startswith("1 of 3 items rejected; item 1: ")
            assert enforcer.counters["rejected_items"] == 3 * 32_000 + 21_000 + 2
            assert enforcer.counters["UsageRecorded"] == 2  # the good items of the mixed array apply
            assert enforcer.counters["connections"] == 1

    asyncio.run(scenario())
    assert max(round_trips) < 1.0, f"an authorization took {max(round_trips):.2f} s"
    assert mosquitto.connections(enforcer_client_id(tmp_path)) == 1
    assert sum(1 for e in stored_events(tmp_path) if isinstance(e, DeadLettered)) == 6


# Each class of code point a broker may refuse in a topic, and the other ways a reply topic can be unsafe.
UNSAFE_REPLY_TOPICS = {
    "tab": "margins/replies/t/a\tb",
    "newline": "margins/replies/t/a\nb",
    "nul": "margins/replies/t/a\x00b",
    "c0 control": "margins/replies/t/a\x01b",
    "unit separator": "margins/replies/t/a\x1fb",
    "delete": "margins/replies/t/a\x7fb",
    "next line (c1)": "margins/replies/t/a\x85b",
    "c1 end": "margins/replies/t/a\x9fb",
    "non-character fdd0": "margins/replies/t/a\ufdd0b",
    "non-character fdef": "margins/replies/t/a\ufdefb",
    "non-character fffe": "margins/replies/t/a\ufffeb",
    "non-character ffff": "margins/replies/t/a\uffffb",
    "non-character 1fffe": "margins/replies/t/a\U0001fffeb",
    "non-character 10ffff": "margins/replies/t/a\U0010ffffb",
    "wildcard +": "margins/replies/t/+",
    "wildcard #": "margins/replies/t/#",
    "dollar": "$SYS/t/a",
    "status topic": "margins/status/bob",
    "outside margins/replies/": "elsewhere/replies/1",
    "too long": "margins/replies/t/" + "a" * 600,
}


def test_a_reply_topic_the_broker_would_refuse_is_decided_not_answered_and_costs_no_reconnect(
    mosquitto: Broker, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with make_enforcer(mosquitto, tmp_path) as enforcer:
            await enforcer.wait_subscribed(PATIENCE_S)
            async with mqtt(mosquitto.port, v5=False) as app, mqtt(mosquitto.port) as sub:
                authorizer = await Authorizer(app).start()
                replies = await Collector(sub).start("margins/replies/#", "margins/status/#")
                for name, topic in UNSAFE_REPLY_TOPICS.items():
                    await authorizer.send(name, reply_to=topic)
                last = await authorizer.ask("after")  # answered after every request above was decided
                assert last["decision"] == "allow"
                await wait_until(
                    lambda: enforcer.counters["granted"] == len(UNSAFE_REPLY_TOPICS) + 1,
                    "every request decided",
                )
                await asyncio.sleep(0.3)
                answered = {json.loads(p).get("request_id") for _, p, _ in replies.messages}
                replies.stop()
                authorizer.stop()
            assert answered & set(UNSAFE_REPLY_TOPICS) == set()
            assert set(authorizer.answers) == {"after"}
            assert enforcer.counters["bad_reply_topic"] == len(UNSAFE_REPLY_TOPICS)
            assert enforcer.counters["connections"] == 1

    asyncio.run(scenario())
    granted = {e.request_id for e in stored_events(tmp_path) if isinstance(e, ReservationGranted)}
    assert granted == {*UNSAFE_REPLY_TOPICS, "after"}  # decided: each holds its reservation
    assert mosquitto.connections(enforcer_client_id(tmp_path)) == 1


def test_a_flood_of_bad_messages_logs_one_line_per_reason_and_interval(
    mosquitto: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="margins.enforce")

    async def scenario() -> None:
        async with make_enforcer(mosquitto, tmp_path) as enforcer:
            await enforcer.wait_subscribed(PATIENCE_S)
            async with mqtt(mosquitto.port) as pub:
                for i in range(200):
                    await pub.publish("margins/usage/alice", b"{broken" if i % 2 else b"[]", qos=1)
                await wait_until(lambda: enforcer.counters["committed"] >= 200, "200 dead letters committed")
            assert enforcer.counters["dead_letter_malformed_json"] == 100
            assert enforcer.counters["dead_letter_empty"] == 100

    asyncio.run(scenario())
    lines = [r.getMessage() for r in caplog.records if r.name == "margins.enforce"]
    assert sum(1 for line in lines if line.startswith("dead letter (malformed_json)")) == 1
    assert sum(1 for line in lines if line.startswith("dead letter (empty)")) == 1
    # on stopping, the lines held back are summed up
    assert any(line.startswith("... and 99 more like it (dead letter malformed_json)") for line in lines)
