"""The MQTT 5 packets the enforcer's client speaks, as frozen values; `budget.mqtt.codec` reads and writes
them."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar


class PacketType(IntEnum):
    """The MQTT control packet types: the high four bits of a packet's first byte."""

    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14
    AUTH = 15


@dataclass(frozen=True, slots=True)
class Connect:
    """Open a session. MQTT 5 only; no will message, no enhanced authentication."""

    TYPE: ClassVar[PacketType] = PacketType.CONNECT
    client_id: str
    keepalive_s: int = 30
    clean_start: bool = False
    session_expiry_s: int = 0
    receive_maximum: int = 65535
    username: str | None = None
    password: bytes | None = None


@dataclass(frozen=True, slots=True)
class ConnAck:
    """The broker's answer to CONNECT; a `reason_code` of 0x80 or more is a refusal. `receive_maximum` is
    how many QoS 1 publishes the broker accepts in flight from this client (65,535 when it sets none)."""

    TYPE: ClassVar[PacketType] = PacketType.CONNACK
    session_present: bool
    reason_code: int = 0
    receive_maximum: int = 65535


@dataclass(frozen=True, slots=True)
class Publish:
    """An application message. `packet_id` is 0 at QoS 0 (nothing to acknowledge), 1-65535 otherwise.
    `message_expiry_s` is the MQTT 5 message expiry interval: the seconds the message has left to live
    (a broker forwards what remains of the publisher's interval), None when it never expires."""

    TYPE: ClassVar[PacketType] = PacketType.PUBLISH
    topic: str
    payload: bytes
    qos: int = 0
    packet_id: int = 0
    response_topic: str | None = None
    correlation: bytes | None = None
    retain: bool = False
    dup: bool = False
    message_expiry_s: int | None = None


@dataclass(frozen=True, slots=True)
class PubAck:
    """Acknowledges one QoS 1 PUBLISH."""

    TYPE: ClassVar[PacketType] = PacketType.PUBACK
    packet_id: int
    reason_code: int = 0


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Subscribe to topic filters, each with its subscription options byte (maximum QoS in bits 0-1)."""

    TYPE: ClassVar[PacketType] = PacketType.SUBSCRIBE
    packet_id: int
    filters: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class SubAck:
    """The broker's answer to SUBSCRIBE: one reason code per filter (the granted QoS, or 0x80+ refused)."""

    TYPE: ClassVar[PacketType] = PacketType.SUBACK
    packet_id: int
    reason_codes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class PingReq:
    """Keepalive request."""

    TYPE: ClassVar[PacketType] = PacketType.PINGREQ


@dataclass(frozen=True, slots=True)
class PingResp:
    """Keepalive answer."""

    TYPE: ClassVar[PacketType] = PacketType.PINGRESP


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Closes the connection; from the broker, a `reason_code` says why."""

    TYPE: ClassVar[PacketType] = PacketType.DISCONNECT
    reason_code: int = 0


Packet = Connect | ConnAck | Publish | PubAck | Subscribe | SubAck | PingReq | PingResp | Disconnect
