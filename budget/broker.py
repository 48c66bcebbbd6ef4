"""How margins reaches its MQTT broker: settings parsed from `mqtt://HOST:PORT` and the aiomqtt client
the enforcer uses (MQTT 5, persistent session, manual acknowledgements).

aiomqtt 2.x acknowledges a QoS 1 message as soon as it is received, before the application has done
anything with it; a crash then loses it. paho (underneath) can leave acknowledgements to the application
(`manual_ack_set(True)` then `ack(mid, qos)`), which aiomqtt does not expose yet (aiomqtt issue #345), so
this module reaches the paho client through `client._client`, in one place. It must be switched on before
connecting: a resumed session delivers its queued messages right after CONNACK.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from budget.errors import BrokerError

DEFAULT_PORT = 1883
DEFAULT_TLS_PORT = 8883
MessageCallback = Callable[[paho.Client, Any, paho.MQTTMessage], None]


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    """Where the broker is and who we are to it."""

    host: str
    port: int = DEFAULT_PORT
    username: str | None = None
    password: str | None = None
    tls_ca: str | None = None
    client_id: str = "margins-enforcer"
    keepalive_s: int = 30
    # The broker keeps the enforcer's session (subscriptions + queued messages) this long while it is
    # down: a restart or a deploy must not lose the usage published meanwhile.
    session_expiry_s: int = 7 * 24 * 3600
    # QoS 1 messages the broker may have in flight to us before it waits for acknowledgements; we ack a
    # whole commit at once, so this bounds the batch size too.
    receive_maximum: int = 10_000

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        username: str | None = None,
        password_file: str | None = None,
        tls_ca: str | None = None,
        client_id: str = "margins-enforcer",
    ) -> BrokerSettings:
        """Parse `mqtt://HOST[:PORT]` or `mqtts://HOST[:PORT]`; read the password from its file."""
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise BrokerError("--broker", f"expected mqtt://HOST:PORT or mqtts://HOST:PORT, got {url!r}")
        try:
            port = parts.port or (DEFAULT_TLS_PORT if parts.scheme == "mqtts" else DEFAULT_PORT)
        except ValueError as error:
            raise BrokerError("--broker", f"bad port in {url!r}: {error}") from error
        password = None
        if password_file is not None:
            try:
                password = Path(password_file).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as error:
                raise BrokerError("--password-file", f"cannot read {password_file}: {error}") from error
            if username is None:
                raise BrokerError("--password-file", "needs --username")
        if tls_ca is not None and not Path(tls_ca).is_file():
            raise BrokerError("--tls-ca", f"no such file: {tls_ca}")
        if parts.scheme == "mqtts" and tls_ca is None:
            tls_ca = ""  # TLS with the system's trust store
        return cls(
            host=parts.hostname,
            port=port,
            username=username,
            password=password,
            tls_ca=tls_ca,
            client_id=client_id,
        )

    def tls_context(self) -> ssl.SSLContext | None:
        """A verifying TLS context, or None for plain TCP."""
        if self.tls_ca is None:
            return None
        return ssl.create_default_context(cafile=self.tls_ca or None)


def enforcer_client(settings: BrokerSettings, on_message: MessageCallback) -> aiomqtt.Client:
    """An MQTT 5 client that resumes its session and leaves every acknowledgement to `ack`.

    `on_message` replaces aiomqtt's queue: it runs in the event loop's thread for each message, which
    saves a task and a queue hop per message on the hot path.
    """
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = settings.session_expiry_s
    props.ReceiveMaximum = settings.receive_maximum
    client = aiomqtt.Client(
        settings.host,
        settings.port,
        username=settings.username,
        password=settings.password,
        identifier=settings.client_id,
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=False,  # never paho's default "clean on first connect": that would drop the queue
        properties=props,
        keepalive=settings.keepalive_s,
        tls_context=settings.tls_context(),
        max_inflight_messages=settings.receive_maximum,
        timeout=10,
    )
    client.pending_calls_threshold = 1_000_000  # bursts of publishes are normal here, not a leak
    client._client.manual_ack_set(True)
    client._client.on_message = on_message
    return client


def paho_of(client: aiomqtt.Client) -> paho.Client:
    """The paho client under an aiomqtt client: for `ack` and non-blocking publishes."""
    return client._client


def ack(client: aiomqtt.Client, mid: int, qos: int) -> None:
    """Acknowledge one received message (PUBACK for QoS 1)."""
    if qos > 0:
        client._client.ack(mid, qos)


def publish_nowait(
    client: aiomqtt.Client,
    topic: str,
    payload: bytes,
    *,
    qos: int = 1,
    retain: bool = False,
    correlation: bytes | None = None,
) -> None:
    """Queue a publish without awaiting its PUBACK (paho writes it from the event loop).

    Awaiting each PUBACK in turn would serialize a commit's replies and status updates behind round trips.
    """
    props = None
    if correlation is not None:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.CorrelationData = correlation
    client._client.publish(topic, payload, qos=qos, retain=retain, properties=props)


def pending_publishes(client: aiomqtt.Client) -> int:
    """QoS 1 publishes not yet acknowledged by the broker."""
    return len(client._client._out_messages)
