"""The enforcer in-process for tests: construction against a test broker, the store it wrote, waits on
conditions, and authorization requests over a plain MQTT client (independent of budget.client)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt

from budget.mqtt.broker import BrokerSettings
from budget.service.enforcer import Enforcer
from budget.service.settings import load_config
from budget.store.event_store import EventStore
from tests.budget.broker import Broker
from tests.budget.enforcer_process import CAPS_TOML

NOW = datetime(2026, 11, 26, 21, 0, tzinfo=UTC)
# Generous limits for waits on conditions: a busy shared machine can be slow by seconds, never by this.
PATIENCE_S = 120.0


def make_enforcer(
    broker: Broker,
    tmp_path: Path,
    caps: str = CAPS_TOML,
    fixed_clock: bool = True,
    clock: Callable[[], datetime] | None = None,
    **options: Any,
) -> Enforcer:
    (tmp_path / "caps.toml").write_text(caps)
    config = load_config(tmp_path / "caps.toml")
    settings = BrokerSettings(host="127.0.0.1", port=broker.port, client_id=enforcer_client_id(tmp_path))
    if clock is None and fixed_clock:
        clock = lambda: NOW  # noqa: E731
    return Enforcer(settings, tmp_path / "store", config, clock=clock, expiry_interval_s=0.1, **options)


def enforcer_client_id(tmp_path: Path) -> str:
    return f"enf-{tmp_path.name}"[:60]


def stored_events(tmp_path: Path) -> list[object]:
    with EventStore.open(tmp_path / "store", flush_interval=None) as store:
        return list(store.replay())


async def wait_until(predicate: Callable[[], bool], what: str, timeout: float = PATIENCE_S) -> None:
    """Poll `predicate` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        await asyncio.sleep(0.01)


class Authorizer:
    """Authorization requests with `reply_to` in the payload, answers collected by request id under
    margins/replies/<client id>/; `asked_at` and `answered_at` time each round trip."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.prefix = f"margins/replies/{uuid.uuid4().hex[:10]}"
        self.answers: dict[str, dict[str, Any]] = {}
        self.asked_at: dict[str, float] = {}
        self.answered_at: dict[str, float] = {}
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> Authorizer:
        await self.client.subscribe(f"{self.prefix}/#", qos=1)
        self._task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        with contextlib.suppress(aiomqtt.MqttError):
            async for message in self.client.messages:
                assert isinstance(message.payload, bytes)
                answer = json.loads(message.payload)
                self.answers[answer["request_id"]] = answer
                self.answered_at[answer["request_id"]] = time.perf_counter()
                self._arrived.set()

    async def send(
        self, request_id: str, user: str = "alice", reply_to: str | None = None, **extra: Any
    ) -> None:
        body: dict[str, Any] = {"request_id": request_id, "user_id": user, "model": "gpt-4o-mini"}
        body |= {"max_input_tokens": 100, "max_output_tokens": 100}
        body |= {"reply_to": reply_to or f"{self.prefix}/{request_id}", **extra}
        self.asked_at[request_id] = time.perf_counter()
        await self.client.publish(f"margins/authorize/{user}", json.dumps(body).encode(), qos=1)

    async def answer(self, request_id: str, timeout: float = PATIENCE_S) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while request_id not in self.answers:
                self._arrived.clear()
                await self._arrived.wait()
        return self.answers[request_id]

    async def ask(self, request_id: str, user: str = "alice", **extra: Any) -> dict[str, Any]:
        await self.send(request_id, user, **extra)
        return await self.answer(request_id)

    def round_trip_s(self, request_id: str) -> float:
        return self.answered_at[request_id] - self.asked_at[request_id]

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
