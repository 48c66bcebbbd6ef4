"""A small MQTT 5 client for the enforcer's hot path: what it needs and nothing else.

This module is the asyncio side -- the Protocol, keepalive, packet ids, write coalescing; every byte it
reads or writes goes through the sans-IO `budget.mqtt.codec`.

Why not aiomqtt / paho here: measured on the 2-core benchmark machine, a paho-based subscriber (which
aiomqtt wraps) receives about 5-9k QoS 1 messages/s doing no work at all -- it reads each packet with
several one-byte `recv` calls, builds a thread-safe message object per packet, and runs one event-loop
turn per packet. The enforcer's own work is ~20 us a message. This client parses whole buffers of packets
per `data_received`, and coalesces every write of one loop turn (a commit's PUBACKs, replies and status)
into one `send`. It also makes acknowledgement explicit, which aiomqtt 2.x cannot (its issue #345).

Scope: CONNECT (MQTT 5, clean start off, session expiry, receive maximum, user/password, TLS), SUBSCRIBE
at QoS 1, incoming PUBLISH at QoS 0/1 with the message-expiry, response-topic and correlation-data
properties, PUBACK sent only by `ack`, outgoing PUBLISH at QoS 0/1 (retain, correlation data), PINGREQ
keepalive, DISCONNECT. No QoS 2, no topic aliases (none requested, so the broker sends none), no enhanced
auth.

Flow control: the broker's CONNACK says how many QoS 1 publishes it accepts in flight from us (its receive
maximum; mosquitto's `max_inflight_messages`). MQTT 5 lets a broker disconnect a client that sends more,
and 65,535 packet ids are all there are, so `publish` never puts more than that on the wire: the rest wait
in order in a queue and go out as PUBACKs come back. A PUBACK with a failure reason code (the broker
refused that one message: not authorized, quota exceeded, ...) is reported per message to `on_refused`;
this client never ends the connection for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

from budget.errors import ConnectionLost, MalformedPacket
from budget.mqtt.broker import BrokerSettings
from budget.mqtt.codec import encode, encode_puback, encode_publish, read
from budget.mqtt.packets import (
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    PingReq,
    PubAck,
    Publish,
    SubAck,
    Subscribe,
)

_PINGREQ = encode(PingReq())
# Packet ids kept back from publishes for SUBSCRIBE: a broker may allow 65,535 publishes in flight, which
# would leave no id for anything else.
_IDS_FOR_SUBSCRIBE = 16


class _Waiting(NamedTuple):
    """A QoS 1 publish queued until the broker's receive maximum lets it go out."""

    topic: str
    payload: bytes
    retain: bool
    correlation: bytes | None


class _Protocol(asyncio.Protocol):
    """Walks each received buffer with the codec; the start of a packet split across reads waits in
    `partial` for the rest."""

    def __init__(self, connection: Mqtt5Connection) -> None:
        self.connection = connection
        self.partial = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.connection._transport = transport

    def data_received(self, data: bytes) -> None:
        buffer: bytes | bytearray = data
        if self.partial:
            self.partial += data
            buffer = self.partial
        on_publish, on_control = self.connection._on_publish, self.connection._control
        pos = 0
        try:
            while True:
                packet, size = read(buffer, pos)
                if packet is None:
                    break
                pos += size
                if type(packet) is Publish:
                    on_publish(packet)
                else:
                    on_control(packet)
        except MalformedPacket as error:  # a protocol error: drop the connection, the caller reconnects
            self.connection._fail(f"bad packet from the broker: {error}")
            return
        except Exception as error:
            self.connection._fail(f"cannot handle a packet from the broker: {error!r}")
            return
        if buffer is data:
            self.partial += memoryview(data)[pos:]
        else:
            del self.partial[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self.connection._fail(f"connection closed ({exc!r})" if exc else "connection closed by the broker")


class Mqtt5Connection:
    """One connection; open with `await Mqtt5Connection.open(...)`, then `subscribe`, `ack`, `publish`.

    `on_refused(topic, reason_code)` hears of each QoS 1 publish the broker acknowledged with a failure
    reason code (0x80 or more).
    """

    def __init__(
        self,
        on_publish: Callable[[Publish], None],
        on_refused: Callable[[str, int], None] | None = None,
    ) -> None:
        self._on_publish = on_publish
        self._on_refused = on_refused
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._connack: asyncio.Future[ConnAck] = self._loop.create_future()
        self._subacks: dict[int, asyncio.Future[tuple[int, ...]]] = {}
        self._in_flight: dict[int, str] = {}  # unacknowledged QoS 1 publishes: packet id -> topic
        self._waiting: deque[_Waiting] = deque()  # QoS 1 publishes beyond the broker's receive maximum
        self._send_quota = 65535 - _IDS_FOR_SUBSCRIBE  # until CONNACK says otherwise
        self._room = asyncio.Event()  # set when fewer than `_room_below` are pending, or on close
        self._room_below = 0
        self._next_id = 0
        self._out = bytearray()
        self._flush_scheduled = False
        self._pinger: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls, host: str, port: int, *, on_publish: Callable[[Publish], None], **options: Any
    ) -> Mqtt5Connection:
        """Construct and `start` in one step (options as for `start`)."""
        self = cls(on_publish)
        await self.start(host, port, **options)
        return self

    async def start(
        self,
        host: str,
        port: int,
        *,
        client_id: str | None = None,
        username: str | None = None,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
        keepalive_s: int = 30,
        session_expiry_s: int = 0,
        receive_maximum: int = 65535,
        clean_start: bool = False,
        timeout_s: float = 10.0,
    ) -> None:
        """Connect and wait for CONNACK; raises ConnectionLost (refused, unreachable, timed out).

        A resumed session's messages may arrive right after CONNACK, before this returns: whoever will
        acknowledge them should hold this object already (construct it, keep it, then start it).
        """
        connect = Connect(
            client_id or f"margins-{uuid.uuid4().hex[:12]}",
            keepalive_s,
            clean_start,
            session_expiry_s,
            receive_maximum,
            username,
            None if password is None else password.encode(),
        )
        packet = encode(connect)  # before connecting: a field MQTT cannot carry fails here, whole
        try:
            async with asyncio.timeout(timeout_s):
                await self._loop.create_connection(
                    lambda: _Protocol(self), host, port, ssl=tls, server_hostname=host if tls else None
                )
                self._write(packet)
                connack = await self._connack
        except (OSError, TimeoutError) as error:
            self.close()
            raise ConnectionLost(f"cannot connect to {host}:{port}: {error!r}") from error
        if connack.reason_code >= 0x80:
            self.close()
            raise ConnectionLost(f"broker refused the connection (reason code 0x{connack.reason_code:02x})")
        self._pinger = asyncio.create_task(self._ping(keepalive_s), name="margins-mqtt-ping")

    async def start_session(self, broker: BrokerSettings, receive_maximum: int | None = None) -> None:
        """`start` with the broker's address, credentials, TLS, keepalive and session expiry (a resumed
        session, never a clean start); `receive_maximum` defaults to the settings' own."""
        await self.start(
            broker.host,
            broker.port,
            client_id=broker.client_id,
            username=broker.username,
            password=broker.password,
            tls=broker.tls_context(),
            keepalive_s=broker.keepalive_s,
            session_expiry_s=broker.session_expiry_s,
            receive_maximum=broker.receive_maximum if receive_maximum is None else receive_maximum,
        )

    async def subscribe(self, filters: list[str], timeout_s: float = 10.0) -> None:
        """Subscribe at QoS 1; raises ConnectionLost if the broker refuses any filter or does not answer
        within `timeout_s` (a broker that never answers is as good as gone: reconnect, do not stop)."""
        packet_id = self._packet_id()
        packet = encode(Subscribe(packet_id, tuple((topic_filter, 1) for topic_filter in filters)))
        future: asyncio.Future[tuple[int, ...]] = self._loop.create_future()
        self._subacks[packet_id] = future
        self._write(packet)
        try:
            async with asyncio.timeout(timeout_s):
                codes = await future
        except TimeoutError as error:
            self._subacks.pop(packet_id, None)
            raise ConnectionLost(f"no SUBACK within {timeout_s:g} s") from error
        refused = [f for f, code in zip(filters, codes, strict=False) if code >= 0x80]
        if refused:
            raise ConnectionLost(f"subscription refused for {', '.join(refused)}")

    def ack(self, packet_id: int) -> None:
        """PUBACK one received QoS 1 message (the broker may then forget it)."""
        self._write(encode_puback(packet_id))

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        correlation: bytes | None = None,
    ) -> None:
        """Send a PUBLISH with the rest of this loop turn's writes. A QoS 1 one counts against the broker's
        receive maximum until its PUBACK; beyond it, it waits in order for one to come back."""
        if not qos:
            self._write(encode_publish(topic, payload, retain=retain, correlation=correlation))
        elif self._waiting or len(self._in_flight) >= self._send_quota:
            self._waiting.append(_Waiting(topic, payload, retain, correlation))
        else:
            self._send(topic, payload, retain, correlation)

    def _send(self, topic: str, payload: bytes, retain: bool, correlation: bytes | None) -> None:
        packet_id = self._packet_id()
        self._in_flight[packet_id] = topic
        self._write(
            encode_publish(topic, payload, qos=1, packet_id=packet_id, retain=retain, correlation=correlation)
        )

    @property
    def pending(self) -> int:
        """QoS 1 publishes the broker has not acknowledged yet: in flight and queued."""
        return len(self._in_flight) + len(self._waiting)

    @property
    def in_flight(self) -> int:
        """QoS 1 publishes sent and not acknowledged yet (at most the broker's receive maximum)."""
        return len(self._in_flight)

    @property
    def send_quota(self) -> int:
        """How many QoS 1 publishes may be in flight: the broker's receive maximum."""
        return self._send_quota

    async def wait_for_room(self, backlog: int) -> None:
        """Until fewer than `backlog` QoS 1 publishes are pending (in flight or queued); raises
        ConnectionLost if the connection ends first. For a sender that must not crowd out others."""
        while self.pending >= backlog and self.is_open:
            self._room_below = backlog
            self._room.clear()
            await self._room.wait()
        self._room_below = 0
        if not self.is_open:
            raise ConnectionLost("closed")

    @property
    def is_open(self) -> bool:
        return not self._closed.done()

    async def wait_closed(self) -> None:
        """Until the connection ends; raises ConnectionLost with the reason."""
        await asyncio.shield(self._closed)

    async def disconnect(self) -> None:
        """A normal DISCONNECT (the broker keeps the session if it has an expiry)."""
        if self.is_open and self._transport is not None:
            self._write(encode(Disconnect()))
            self._flush()
            self._transport.close()
        self.close()

    def close(self) -> None:
        """Drop the connection at once (no DISCONNECT); whatever waits on it hears ConnectionLost."""
        if self._pinger is not None:
            self._pinger.cancel()
        if self._transport is not None:
            self._transport.close()
        if not self._closed.done():
            self._closed.set_result(None)
        futures: list[asyncio.Future[Any]] = [self._connack, *self._subacks.values()]
        for future in futures:
            if not future.done():
                future.set_exception(ConnectionLost("closed"))
                # Marked as retrieved: when the connect itself failed nobody awaits the CONNACK, and an
                # unretrieved exception is logged by asyncio at ERROR level, on every reconnect attempt.
                future.exception()
        self._room.set()

    # -- internals --------------------------------------------------------------------------------

    def _packet_id(self) -> int:
        # Flow control keeps at most 65,535 - _IDS_FOR_SUBSCRIBE publishes in flight, so a free id exists.
        for _ in range(65535):
            self._next_id = self._next_id % 65535 + 1
            if self._next_id not in self._in_flight and self._next_id not in self._subacks:
                return self._next_id
        raise ConnectionLost("all 65535 packet ids are in flight")

    def _acknowledged(self, packet: PubAck) -> None:
        topic = self._in_flight.pop(packet.packet_id, None)
        if topic is not None and packet.reason_code >= 0x80 and self._on_refused is not None:
            self._on_refused(topic, packet.reason_code)
        waiting = self._waiting
        while waiting and len(self._in_flight) < self._send_quota:
            self._send(*waiting.popleft())
        if self._room_below and self.pending < self._room_below:
            self._room.set()

    def _write(self, data: bytes) -> None:
        self._out += data
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._out and self._transport is not None and not self._transport.is_closing():
            self._transport.write(bytes(self._out))
        self._out.clear()

    async def _ping(self, keepalive_s: int) -> None:
        while True:
            await asyncio.sleep(max(1.0, keepalive_s / 2))
            self._write(_PINGREQ)

    def _fail(self, reason: str) -> None:
        if not self._closed.done():
            self._closed.set_exception(ConnectionLost(reason))
            self._closed.exception()  # retrieved here: not every caller waits on it
        self.close()

    def _control(self, packet: Packet) -> None:
        """Every packet but PUBLISH, which goes straight to `on_publish`."""
        match packet:
            case PubAck():
                self._acknowledged(packet)
            case ConnAck():
                self._send_quota = min(packet.receive_maximum, 65535 - _IDS_FOR_SUBSCRIBE)
                if not self._connack.done():
                    self._connack.set_result(packet)
            case SubAck():
                future = self._subacks.pop(packet.packet_id, None)
                if future is not None and not future.done():
                    future.set_result(packet.reason_codes)
            case Disconnect():
                self._fail(f"broker sent DISCONNECT (reason code 0x{packet.reason_code:02x})")
            case Connect() | Subscribe() | PingReq():
                self._fail(f"broker sent {packet.TYPE.name}, which only clients send")
            # PINGRESP: nothing to do


async def close_quietly(connection: Mqtt5Connection | None) -> None:
    """Disconnect, ignoring a connection that is already gone."""
    if connection is not None:
        with contextlib.suppress(Exception):
            await connection.disconnect()
