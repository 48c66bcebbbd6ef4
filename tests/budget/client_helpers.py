"""Helpers for budget.client's tests: a stand-in for the enforcer's side of the client protocol, the
enforcer's counters read over MQTT, extra application credentials on a secured broker, and a bounded wait
on a condition."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from budget.domain.events import UsageRecorded
from budget.store.event_store import EventStore
from tests.budget.broker import Broker


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]], what: str, timeout: float = 60.0, every: float = 0.05
) -> None:
    """Until `condition()` holds; fails naming `what` after `timeout` seconds (generous: this machine is
    shared and busy, and a restarted broker or enforcer takes its backoff)."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(every)


async def enforcer_counters(port: int, wait_s: float = 2.0) -> dict[str, int]:
    """The enforcer's counters as last published (retained on margins/enforcer/stats); {} if none."""
    with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
        async with (
            aiomqtt.Client(
                "127.0.0.1", port, identifier=f"stats-{uuid.uuid4().hex[:8]}", timeout=5
            ) as client,
            asyncio.timeout(wait_s),
        ):
            await client.subscribe("margins/enforcer/stats", qos=0)
            async for message in client.messages:
                counters: dict[str, int] = json.loads(bytes(message.payload))
                return counters
    return {}


def stored_usage(store: Path) -> list[UsageRecorded]:
    """Every usage event in a store whose enforcer has stopped."""
    with EventStore.open(store, flush_interval=None) as opened:
        return [e for e in opened.replay() if isinstance(e, UsageRecorded)]


def add_app_user(broker: Broker, username: str, password: str, timeout: float = 30.0) -> None:
    """Another application credential on a running secured broker: the ACL's `user app` block copied for
    `username`, as deploy/mosquitto.acl.example tells operators to do, then a reload (SIGHUP; a restart
    would rewrite both files from the examples)."""
    subprocess.run(
        ["mosquitto_passwd", "-b", str(broker.directory / "passwd"), username, password], check=True
    )
    acl = broker.directory / "acl"
    text = acl.read_text()
    block = text[text.index("user app\n") : text.index("\n\n", text.index("user app\n"))]
    acl.write_text(text + "\n" + block.replace("user app", f"user {username}", 1) + "\n")
    log = broker.directory / "mosquitto.log"
    reloads = log.read_text(errors="replace").count("Reloading config")
    assert broker.proc is not None
    broker.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while log.read_text(errors="replace").count("Reloading config") == reloads:
        if time.monotonic() > deadline:
            raise TimeoutError(f"mosquitto did not reload its config within {timeout}s")
        time.sleep(0.02)


@dataclass
class Seen:
    topic: str
    body: dict[str, Any]
    properties: dict[str, Any]
    at: float = field(default_factory=time.monotonic)


class FakeEnforcer:
    """The enforcer's side of the client protocol, without a ledger: answers every authorization with
    `decision` (a grant's reservation expires `ttl_s` from now), confirms usage reports to their response
    topic when `confirm` is on, and records everything it receives with its MQTT 5 properties."""

    def __init__(
        self, port: int, decision: str = "allow", ttl_s: float = 600.0, confirm: bool = True
    ) -> None:
        self.port = port
        self.decision = decision
        self.ttl_s = ttl_s
        self.confirm = confirm
        self.seen: list[Seen] = []
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> FakeEnforcer:
        self._client = aiomqtt.Client(
            "127.0.0.1",
            self.port,
            identifier=f"fake-enforcer-{uuid.uuid4().hex[:8]}",
            protocol=aiomqtt.ProtocolVersion.V5,
            timeout=10,
        )
        await self._client.__aenter__()
        for topic in ("margins/authorize/+", "margins/usage/+", "margins/renew/+"):
            await self._client.subscribe(topic, qos=1)
        self._task = asyncio.create_task(self._serve(self._client))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._client is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await self._client.__aexit__(None, None, None)

    def on(self, prefix: str) -> list[Seen]:
        return [s for s in self.seen if s.topic.startswith(prefix)]

    async def _serve(self, client: aiomqtt.Client) -> None:
        with contextlib.suppress(aiomqtt.MqttError):
            async for message in client.messages:
                props = message.properties
                found = {
                    name: getattr(props, name)
                    for name in ("ResponseTopic", "CorrelationData", "MessageExpiryInterval")
                    if props is not None and hasattr(props, name)
                }
                body = json.loads(bytes(message.payload))
                topic = str(message.topic)
                self.seen.append(Seen(topic, body, found))
                reply_to = found.get("ResponseTopic")
                if reply_to is None:
                    continue
                if topic.startswith("margins/authorize/"):
                    await self._answer(client, reply_to, found.get("CorrelationData"), body)
                elif topic.startswith("margins/usage/") and self.confirm:
                    events = body if isinstance(body, list) else [body]
                    confirmation = {"confirmed": [e["event_id"] for e in events]}
                    await client.publish(reply_to, json.dumps(confirmation).encode(), qos=1)

    async def _answer(
        self, client: aiomqtt.Client, reply_to: str, correlation: bytes | None, body: dict[str, Any]
    ) -> None:
        granted = self.decision in ("allow", "degrade")
        reply = {
            "request_id": body["request_id"],
            "decision": self.decision,
            "model": body["model"],
            "reservation_id": f"r-{body['request_id']}" if granted else None,
            "remaining_usd": 1.0,
            "reason": "" if granted else "decided after the request's deadline",
            "expires_at": (datetime.now(UTC) + timedelta(seconds=self.ttl_s)).isoformat()
            if granted
            else None,
        }
        props = Properties(PacketTypes.PUBLISH)
        if correlation is not None:
            props.CorrelationData = correlation
        await client.publish(reply_to, json.dumps(reply).encode(), qos=1, properties=props)
