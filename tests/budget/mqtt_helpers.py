"""Small MQTT helpers for the enforcer's tests: publish, and collect what arrives on a topic."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import aiomqtt


def remaining_length(value: int) -> bytes:
    """MQTT's variable byte integer, written out here so tests do not check the codec with itself."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def usage_body(event_id: str, user: str = "alice", **over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event_id": event_id,
        "user_id": user,
        "ts": "2026-11-26T20:00:00Z",
        "model": "gpt-4o-mini",
        "input_tokens": 900,
        "cached_input_tokens": 0,
        "output_tokens": 250,
        "feature": "chat",
        "reservation_id": None,
        "outcome": "ok",
    }
    body.update(over)
    return body


@asynccontextmanager
async def mqtt(
    port: int, username: str | None = None, password: str | None = None, v5: bool = True
) -> AsyncIterator[aiomqtt.Client]:
    client = aiomqtt.Client(
        "127.0.0.1",
        port,
        username=username,
        password=password,
        identifier=f"test-{uuid.uuid4().hex[:8]}",
        protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
        max_inflight_messages=200,
        timeout=30,
    )
    client.pending_calls_threshold = 1_000_000
    async with client:
        yield client


async def publish_all(
    client: aiomqtt.Client, topic: str, payloads: Iterable[bytes], window: int = 100
) -> None:
    """QoS 1 publishes with a bounded number in flight (paho slows down with thousands queued)."""
    sem = asyncio.Semaphore(window)

    async def one(payload: bytes) -> None:
        async with sem:
            await client.publish(topic, payload, qos=1)

    await asyncio.gather(*(one(p) for p in payloads))


class Collector:
    """Messages received on subscribed topics, by topic, with a bounded wait."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.messages: list[tuple[str, bytes, bool]] = []
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    async def start(self, *topics: str) -> Collector:
        for topic in topics:
            await self.client.subscribe(topic, qos=1)
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        with contextlib.suppress(aiomqtt.MqttError):  # the connection closes when the test is done
            async for message in self.client.messages:
                payload = (
                    message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
                )
                self.messages.append((str(message.topic), payload, bool(message.retain)))
                self._changed.set()

    def on(self, topic: str) -> list[Any]:
        return [json.loads(p) for t, p, _ in self.messages if t == topic]

    async def wait_for(self, predicate: Any, timeout: float = 120.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


async def wait_for_status(port: int, expected: dict[str, int], timeout: float = 120.0) -> None:
    """Until every user's retained status shows the expected spend (to the nano-dollar, as float)."""
    async with mqtt(port) as sub:
        seen = await Collector(sub).start("margins/status/+")

        def reached() -> bool:
            latest = {t.rsplit("/", 1)[1]: json.loads(p) for t, p, _ in seen.messages}
            return all(
                user in latest and round(latest[user]["spent_usd"] * 1e9) == nanos
                for user, nanos in expected.items()
            )

        await seen.wait_for(reached, timeout)
        seen.stop()
