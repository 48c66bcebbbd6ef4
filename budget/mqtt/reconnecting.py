"""An application's MQTT 5 connection that stays up: aiomqtt (paho) underneath, margins' errors on top.

`ReconnectingClient` connects, subscribes to its owner's topics and hands every message received to a
callback. When the connection drops it reconnects with exponential backoff (jittered, so a restarted
broker is not met by every application in the same instant), subscribes again, and calls `on_connected`
with the new connection's number: that is how its owner learns to re-send what the broker may have lost.
Every connection starts clean (no broker session is kept): what the owner needs again it sends again.

Nothing aiomqtt or paho raises leaves this module: a publish that cannot be acknowledged in time raises
BrokerUnavailable; a first connection the broker refuses for good (credentials, client id, permission)
raises BrokerRefused.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.properties import Properties

from budget.errors import BrokerError, BrokerRefused, BrokerUnavailable
from budget.mqtt.broker import BrokerSettings

log = logging.getLogger("margins.client")

# CONNACK reason codes that the same settings will always get again: retrying does not help, so the first
# connection fails with BrokerRefused instead of retrying in silence. (0x88 server unavailable, 0x89 busy,
# 0x97 quota exceeded and the rest are worth retrying.)
PERMANENT_REFUSALS = {
    0x84: "unsupported protocol version",
    0x85: "client identifier not valid",
    0x86: "bad user name or password",
    0x87: "not authorized",
    0x8A: "banned",
    0x8C: "bad authentication method",
}


@dataclass(slots=True)
class _Link:
    """One live connection."""

    number: int
    client: aiomqtt.Client
    down: asyncio.Event = field(default_factory=asyncio.Event)


class ReconnectingClient:
    """A broker connection that reconnects by itself; `start()` it, `stop()` it when done."""

    def __init__(
        self,
        settings: BrokerSettings,
        subscriptions: tuple[str, ...],
        on_message: Callable[[str, bytes], None],
        on_connected: Callable[[int], None],
        *,
        min_backoff_s: float = 0.1,
        max_backoff_s: float = 5.0,
    ) -> None:
        self.settings = settings
        self.broker = f"{settings.host}:{settings.port}"
        self._subscriptions = subscriptions
        self._on_message = on_message
        self._on_connected = on_connected
        self._min_backoff = min_backoff_s
        self._max_backoff = max_backoff_s
        self._link: _Link | None = None
        self._count = 0
        self._up = asyncio.Event()
        self._attempted = asyncio.Event()
        self._refused: BrokerRefused | None = None
        self._last_error = "not connected yet"
        self._task: asyncio.Task[None] | None = None
        self._tls: ssl.SSLContext | None = None

    @property
    def connection(self) -> int:
        """The number of the current connection (1 for the first); 0 while never connected."""
        return self._link.number if self._link is not None else 0

    @property
    def is_up(self) -> bool:
        """Whether a connection is up now."""
        return self._link is not None

    async def start(self, timeout_s: float) -> None:
        """Start connecting and wait for the first attempt's outcome (at most `timeout_s`).

        Raises BrokerRefused if the broker refuses for good (the background retrying stops then), BrokerError
        for a TLS CA file that cannot be loaded. An unreachable broker is no error: the client keeps trying
        in the background and logs a warning.
        """
        try:
            self._tls = self.settings.tls_context()
        except (OSError, ssl.SSLError) as error:
            raise BrokerError("tls_ca", f"cannot use {self.settings.tls_ca}: {error}") from error
        self._task = asyncio.create_task(self._run(), name="margins-client-broker")
        try:
            async with asyncio.timeout(timeout_s):
                await self._attempted.wait()
        except TimeoutError:
            pass
        if self._refused is not None:
            await self.stop()
            raise self._refused
        if not self.is_up:
            log.warning(
                "broker %s not reachable yet (%s); reconnecting in the background",
                self.broker,
                self._last_error,
            )

    async def stop(self) -> None:
        """Disconnect and stop reconnecting."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def wait_up(self, timeout_s: float) -> int:
        """The current connection's number, waiting up to `timeout_s` for one; raises BrokerUnavailable."""
        return (await self._wait_link(asyncio.get_running_loop().time() + timeout_s, timeout_s)).number

    async def wait_down(self, connection: int) -> None:
        """Until connection number `connection` has ended (at once if it is not the current one)."""
        link = self._link
        if link is not None and link.number == connection:
            await link.down.wait()

    async def publish(
        self, topic: str, payload: bytes, *, properties: Properties | None = None, timeout_s: float
    ) -> int:
        """Publish at QoS 1 and wait for the broker's acknowledgement, waiting for a connection first if
        there is none; returns the number of the connection that acknowledged it.

        Raises BrokerUnavailable when `timeout_s` passes first or the connection drops before the
        acknowledgement (then the broker may or may not have the message).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        link = await self._wait_link(deadline, timeout_s)
        sending = asyncio.ensure_future(
            link.client.publish(topic, payload, qos=1, properties=properties, timeout=math.inf)
        )
        dropped = asyncio.ensure_future(link.down.wait())
        try:
            done, _ = await asyncio.wait(
                {sending, dropped},
                timeout=max(0.0, deadline - loop.time()),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            dropped.cancel()
            sending.cancel()
        if sending in done and not sending.cancelled():
            error = sending.exception()
            if error is None:
                return link.number
            raise BrokerUnavailable(self.broker, timeout_s, f"publish failed: {error}") from None
        reason = (
            "the connection dropped before the broker acknowledged"
            if link.down.is_set()
            else "no acknowledgement"
        )
        raise BrokerUnavailable(self.broker, timeout_s, reason)

    async def _wait_link(self, deadline: float, timeout_s: float) -> _Link:
        loop = asyncio.get_running_loop()
        while self._link is None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise BrokerUnavailable(self.broker, timeout_s, f"not connected: {self._last_error}")
            try:
                async with asyncio.timeout(remaining):
                    await self._up.wait()
            except TimeoutError:
                continue
        return self._link

    # -- the connection loop ----------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = self._min_backoff
        while True:
            if await self._connect_once():
                backoff = self._min_backoff
            elif self._refused is not None and self._count == 0:
                return  # refused before ever connecting: start() raises it
            # Jitter: after a broker restart, applications come back spread out rather than all at once.
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, self._max_backoff)

    async def _connect_once(self) -> bool:
        """One connection, from CONNECT until it drops; whether it was ever up."""
        s = self.settings
        client = aiomqtt.Client(
            s.host,
            s.port,
            username=s.username,
            password=s.password,
            identifier=s.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            tls_context=self._tls,
            keepalive=s.keepalive_s,
            timeout=10,
            clean_start=True,
            max_inflight_messages=1000,
        )
        client.pending_calls_threshold = 1_000_000
        link: _Link | None = None
        try:
            async with client:
                for topic in self._subscriptions:
                    await client.subscribe(topic, qos=1)
                self._count += 1
                link = _Link(self._count, client)
                self._link = link
                self._up.set()
                self._attempted.set()
                if link.number == 1:
                    log.info("connected to broker %s as %s", self.broker, s.client_id)
                else:
                    log.info("reconnected to broker %s (connection %d)", self.broker, link.number)
                self._on_connected(link.number)
                async for message in client.messages:
                    self._deliver(str(message.topic), message.payload)
        except MqttConnectError as error:
            self._note_refusal(error)
        except aiomqtt.MqttError as error:
            self._last_error = str(error) or type(error).__name__
            if link is not None:
                log.warning("lost broker %s: %s; reconnecting", self.broker, self._last_error)
            else:
                log.info("broker %s: %s; retrying", self.broker, self._last_error)
        except Exception as error:  # whatever else paho raises must not end the reconnecting
            self._last_error = repr(error)
            log.exception("broker %s: unexpected error; reconnecting", self.broker)
        finally:
            if link is not None:
                link.down.set()
                self._link = None
                self._up.clear()
            self._attempted.set()
        return link is not None

    def _note_refusal(self, error: MqttConnectError) -> None:
        code = getattr(error.rc, "value", error.rc)
        self._last_error = str(error)
        if isinstance(code, int) and code in PERMANENT_REFUSALS:
            refused = BrokerRefused(self.broker, code, PERMANENT_REFUSALS[code])
            if self._count == 0:
                self._refused = refused
            log.error("%s", refused)
        else:
            log.warning("broker %s refused the connection: %s; retrying", self.broker, error)

    def _deliver(self, topic: str, payload: object) -> None:
        body = bytes(payload) if isinstance(payload, bytes | bytearray) else str(payload).encode()
        try:
            self._on_message(topic, body)
        except Exception:  # one bad message must not end the connection
            log.exception("cannot handle a message on %s", topic)
