"""The shipped mosquitto config and ACL (deploy/), on a real mosquitto: one credential is one session that
reads only its own replies -- claiming another client's id gets it neither that client's replies nor its
session -- and a SIGKILLed broker comes back with what its periodic save had written."""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from pathlib import Path

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from budget.client import BudgetClient
from tests.budget.broker import PASSWORDS, Broker
from tests.budget.client_helpers import add_app_user, eventually
from tests.budget.enforcer_process import EnforcerProcess
from tests.budget.mqtt_helpers import Collector, mqtt

SPY_PASSWORD = "app2-secret"


def test_an_app_credential_reads_only_its_own_replies_and_keeps_its_session(
    secured_mosquitto: Broker, tmp_path: Path, caps_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broker = secured_mosquitto
    add_app_user(broker, "app2", SPY_PASSWORD)
    enforcer = EnforcerProcess(broker, tmp_path / "store", caps_file, tmp_path / "enforcer.log")
    enforcer.start()
    caplog.set_level(logging.INFO, logger="margins.client")

    async def scenario() -> list[str]:
        async with (
            mqtt(broker.port, "app2", SPY_PASSWORD) as spy,
            mqtt(broker.port, "admin", PASSWORDS["admin"]) as admin,
        ):
            # app2 asks for everything an app might want to read; the broker grants the subscriptions and
            # delivers only what the ACL lets app2 read
            spied = await Collector(spy).start("margins/#", "margins/replies/app/#", "margins/status/+")
            watched = await Collector(admin).start("margins/status/alice", "margins/replies/#")
            async with BudgetClient.connect(
                broker.url, username="app", password=PASSWORDS["app"], timeout_s=5, drain_timeout_s=1
            ) as budget:
                assert budget.reply_topic == "margins/replies/app"
                grant = await budget.authorize("alice", "gpt-4o-mini", 100, 100)
                # app2 claims app's client id: the broker makes its id "app2" instead, so app keeps its
                # session and its replies, and answers again at once
                async with aiomqtt.Client(
                    "127.0.0.1",
                    broker.port,
                    username="app2",
                    password=SPY_PASSWORD,
                    identifier="app",
                    timeout=10,
                ) as impostor:
                    await impostor.subscribe("margins/replies/app/#", qos=1)
                    await budget.authorize("alice", "gpt-4o-mini", 100, 100)
                await budget.report(
                    "alice",
                    "gpt-4o-mini",
                    {"prompt_tokens": 50, "completion_tokens": 50},
                    reservation_id=grant.reservation_id,
                )
                await eventually(
                    lambda: any(s["spent_usd"] > 0 for s in watched.on("margins/status/alice")),
                    "alice's status after her usage",
                )
            answers = [topic for topic, _, _ in watched.messages if topic == "margins/replies/app/authorize"]
            assert len(answers) == 2  # both reached app's own topic (what admin sees of them)
            spied.stop()
            watched.stop()
            return [topic for topic, _, _ in spied.messages]

    try:
        assert asyncio.run(scenario()) == []
    finally:
        assert enforcer.terminate() == 0
    assert not [r for r in caplog.records if "lost broker" in r.getMessage()]


def test_a_sigkilled_broker_comes_back_with_what_it_saved(mosquitto: Broker) -> None:
    """A message queued for an offline session (the enforcer, down) survives a SIGKILL once one of the
    broker's periodic saves (the shipped autosave_interval) has run after it."""
    session = f"offline-{uuid.uuid4().hex[:8]}"
    log = mosquitto.directory / "mosquitto.log"

    def saves() -> int:
        return log.read_text(errors="replace").count("Saving in-memory database")

    def offline_session() -> aiomqtt.Client:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        return aiomqtt.Client(
            "127.0.0.1",
            mosquitto.port,
            identifier=session,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=props,
            timeout=10,
        )

    async def queue_one() -> int:
        async with offline_session() as subscriber:
            await subscriber.subscribe("margins/usage/+", qos=1)
        async with mqtt(mosquitto.port) as app:
            await app.publish("margins/usage/alice", b'{"event_id": "saved"}', qos=1)
        acknowledged = saves()
        # The log line opens a save; the next one opening means the first has finished (one thread), so a
        # save that began after the acknowledgement is on disk. Killing at the first line could cut it short.
        await eventually(lambda: saves() >= acknowledged + 2, "a whole periodic save after the message", 90)
        return acknowledged

    async def receive() -> bytes:
        async with offline_session() as subscriber, asyncio.timeout(30):
            async for message in subscriber.messages:
                return bytes(message.payload)
        raise AssertionError("the session ended without a message")

    asyncio.run(queue_one())
    mosquitto.kill()
    mosquitto.start()
    assert asyncio.run(receive()) == b'{"event_id": "saved"}'


def test_a_test_broker_whose_port_was_taken_starts_on_a_fresh_one(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker", secured=False)
    with socket.socket() as taken:  # another process took the port after free_port found it free
        taken.bind(("127.0.0.1", broker.port))  # bound, not listening: as a client's port is
        try:
            broker.start()
            assert broker.port != taken.getsockname()[1]
            with socket.create_connection(("127.0.0.1", broker.port), timeout=5):
                pass
        finally:
            broker.kill()
