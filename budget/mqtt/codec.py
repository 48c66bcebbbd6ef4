"""MQTT 5 on the wire: `encode(packet) -> bytes` and `read(buffer, start) -> (packet | None, consumed)`.

Sans-IO: no sockets, no event loop, so every byte the enforcer's connection reads or writes is tested here
without one. `read` takes a start offset, so a connection walks one received buffer holding many packets
without copying each one out; it returns `(None, 0)` while the buffer does not yet hold the whole packet
at `start`, and raises `MalformedPacket` for bytes that can never become a valid packet.

Scope, what the enforcer's client sends and receives: CONNECT, CONNACK (with the broker's receive
maximum), PUBLISH (QoS 0-2, with the message-expiry, response-topic and correlation-data properties),
PUBACK, SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT.
Other properties defined by MQTT 5 are checked and skipped; other packet types (QoS 2 handshakes,
UNSUBSCRIBE, AUTH) are refused as `MalformedPacket`, since this client never asks for them.

The per-message path -- tens of thousands a second -- is kept short: an incoming PUBLISH or PUBACK is
decoded inline in `read`, and outgoing ones have their own encoders, `encode_publish` and `encode_puback`
(which `encode` also uses), so a connection need not build a packet object to send one.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import fields

from budget.errors import MalformedPacket
from budget.mqtt.packets import (
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    PacketType,
    PingReq,
    PingResp,
    PubAck,
    Publish,
    SubAck,
    Subscribe,
)

Buffer = bytes | bytearray

_U16 = struct.Struct("!H")
_MAX_REMAINING_LENGTH = 268_435_455  # four bytes of variable integer
_NOTHING_YET: tuple[None, int] = (None, 0)


# -- properties ---------------------------------------------------------------------------------------

_BYTE, _TWO, _FOUR, _VARINT, _STRING, _BINARY, _PAIR = range(7)
_MESSAGE_EXPIRY, _SESSION_EXPIRY, _RECEIVE_MAXIMUM, _RESPONSE_TOPIC, _CORRELATION = (
    0x02,
    0x11,
    0x21,
    0x08,
    0x09,
)
# every property MQTT 5 defines: id -> how it is encoded
_PROPERTY_FORM = {
    0x01: _BYTE, 0x02: _FOUR, 0x03: _STRING, 0x08: _STRING, 0x09: _BINARY, 0x0B: _VARINT, 0x11: _FOUR,
    0x12: _STRING, 0x13: _TWO, 0x15: _STRING, 0x16: _BINARY, 0x17: _BYTE, 0x18: _FOUR, 0x19: _BYTE,
    0x1A: _STRING, 0x1C: _STRING, 0x1F: _STRING, 0x21: _TWO, 0x22: _TWO, 0x23: _TWO, 0x24: _BYTE,
    0x25: _BYTE, 0x26: _PAIR, 0x27: _FOUR, 0x28: _BYTE, 0x29: _BYTE, 0x2A: _BYTE,
}  # fmt: skip
_REPEATABLE = {0x0B, 0x26}  # subscription identifiers, user properties
# which properties each packet may carry (MQTT 5 section 3)
_ALLOWED = {
    PacketType.CONNECT: {0x11, 0x21, 0x27, 0x22, 0x19, 0x17, 0x26, 0x15, 0x16},
    PacketType.CONNACK: {0x11, 0x21, 0x24, 0x25, 0x27, 0x12, 0x22, 0x1F, 0x26, 0x28, 0x29, 0x2A, 0x13,
                         0x1A, 0x1C, 0x15, 0x16},
    PacketType.PUBLISH: {0x01, 0x02, 0x23, 0x08, 0x09, 0x26, 0x0B, 0x03},
    PacketType.PUBACK: {0x1F, 0x26},
    PacketType.SUBSCRIBE: {0x0B, 0x26},
    PacketType.SUBACK: {0x1F, 0x26},
    PacketType.DISCONNECT: {0x11, 0x1F, 0x26, 0x1C},
}  # fmt: skip


def _fail(kind: PacketType, reason: str) -> MalformedPacket:
    return MalformedPacket(kind.name, reason)


def _read_varint(buf: Buffer, pos: int, end: int, kind: PacketType, what: str) -> tuple[int, int]:
    """A variable byte integer at `pos`, read no further than `end`; returns (value, position after)."""
    value = shift = 0
    while True:
        if pos >= end:
            raise _fail(kind, f"{what} is cut off")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if byte == 0 and shift:
                raise _fail(kind, f"{what} is not in its shortest encoding")
            return value, pos
        shift += 7
        if shift > 21:
            raise _fail(kind, f"{what} is longer than four bytes")


def _read_string(buf: Buffer, pos: int, end: int, kind: PacketType, what: str) -> tuple[bytes, int]:
    """A two-byte length and that many bytes, all before `end`; returns (bytes, position after)."""
    if pos + 2 > end:
        raise _fail(kind, f"{what} is cut off")
    stop = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
    if stop > end:
        raise _fail(kind, f"{what} runs past the end of the packet")
    return bytes(buf[pos + 2 : stop]), stop


def _text(data: bytes) -> str:
    # Bad UTF-8 is replaced, not refused: a relayed message with a bad topic should be dead-lettered by
    # the enforcer, not drop the connection (the broker would redeliver it on every reconnect).
    return data.decode("utf-8", "replace")


def _read_properties(buf: Buffer, pos: int, end: int, kind: PacketType) -> tuple[dict[int, int | bytes], int]:
    """The properties block at `pos`: single-valued properties by id (strings as raw bytes; pairs and
    repeatable ones checked and dropped), and the position after the block."""
    length, pos = _read_varint(buf, pos, end, kind, "property length")
    stop = pos + length
    if stop > end:
        raise _fail(kind, "properties run past the end of the packet")
    found: dict[int, int | bytes] = {}
    allowed = _ALLOWED[kind]
    while pos < stop:
        prop = buf[pos]
        pos += 1
        form = _PROPERTY_FORM.get(prop)
        if form is None or prop not in allowed:
            raise _fail(kind, f"unknown property 0x{prop:02x}")
        what = f"property 0x{prop:02x}"
        value: int | bytes
        if form <= _FOUR:
            size = (1, 2, 4)[form]
            if pos + size > stop:
                raise _fail(kind, f"{what} is cut off")
            value = int.from_bytes(buf[pos : pos + size], "big")
            pos += size
        elif form == _VARINT:
            value, pos = _read_varint(buf, pos, stop, kind, what)
        else:
            value, pos = _read_string(buf, pos, stop, kind, what)
            if form == _PAIR:
                _, pos = _read_string(buf, pos, stop, kind, what)
        if prop in _REPEATABLE:
            continue
        if prop in found:
            raise _fail(kind, f"{what} appears twice")
        found[prop] = value
    return found, stop


def _topic_property(props: dict[int, int | bytes], prop: int) -> str | None:
    value = props.get(prop)
    # Bad UTF-8 becomes lone surrogates here, not U+FFFD: a reply topic is published to, and replacing
    # its bytes would answer a different topic than the one asked for; a lone surrogate is refused by
    # budget.mqtt.topics.topic_problem instead.
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else None


def _int_property(props: dict[int, int | bytes], prop: int) -> int | None:
    value = props.get(prop)
    return value if isinstance(value, int) else None


def _binary_property(props: dict[int, int | bytes], prop: int) -> bytes | None:
    value = props.get(prop)
    return value if isinstance(value, bytes) else None


# -- reading ------------------------------------------------------------------------------------------


def _publish_builder() -> Callable[
    [str, bytes, int, int, str | None, bytes | None, bool, bool, int | None], Publish
]:
    """A `Publish` built by setting its slots directly. A frozen dataclass's own __init__ sets each field
    through object.__setattr__, which here costs as much as the rest of decoding a PUBLISH."""
    setters = tuple(getattr(Publish, field.name).__set__ for field in fields(Publish))
    (
        set_topic,
        set_payload,
        set_qos,
        set_id,
        set_response,
        set_correlation,
        set_retain,
        set_dup,
        set_expiry,
    ) = setters
    new = object.__new__

    def build(
        topic: str,
        payload: bytes,
        qos: int,
        packet_id: int,
        response_topic: str | None,
        correlation: bytes | None,
        retain: bool,
        dup: bool,
        message_expiry_s: int | None,
    ) -> Publish:
        packet = new(Publish)
        set_topic(packet, topic)
        set_payload(packet, payload)
        set_qos(packet, qos)
        set_id(packet, packet_id)
        set_response(packet, response_topic)
        set_correlation(packet, correlation)
        set_retain(packet, retain)
        set_dup(packet, dup)
        set_expiry(packet, message_expiry_s)
        return packet

    return build


def _puback_builder() -> Callable[[int, int], PubAck]:
    """A `PubAck` built the same way as `_publish_builder`'s packets."""
    set_id, set_reason = (getattr(PubAck, field.name).__set__ for field in fields(PubAck))
    new = object.__new__

    def build(packet_id: int, reason_code: int) -> PubAck:
        packet = new(PubAck)
        set_id(packet, packet_id)
        set_reason(packet, reason_code)
        return packet

    return build


_build_publish, _build_puback = _publish_builder(), _puback_builder()


def read(buffer: Buffer, start: int = 0) -> tuple[Packet | None, int]:
    """The packet at `buffer[start:]` and how many bytes it took; `(None, 0)` if it is not all there yet.

    Raises MalformedPacket for bytes that can never be a valid packet.
    """
    end = len(buffer)
    if end - start < 2:
        return _NOTHING_YET
    first = buffer[start]
    length = buffer[start + 1]
    body = start + 2
    if length & 0x80:  # a remaining length of 128 or more
        length, body = _remaining_length(buffer, start + 1, end, first)
        if body < 0:
            return _NOTHING_YET
    stop = body + length
    if stop > end:
        return _NOTHING_YET
    if first == 0x40 and length == 2:  # a successful PUBACK: one per QoS 1 message the enforcer sends
        packet_id = (buffer[body] << 8) | buffer[body + 1]
        if packet_id:
            return _build_puback(packet_id, 0), stop - start
    if first & 0xF0 == 0x30:  # PUBLISH, inline: it is nearly every packet the enforcer receives
        qos = (first >> 1) & 0x03
        if body + 2 > stop:
            raise _fail(PacketType.PUBLISH, "topic is cut off")
        pos = body + 2 + ((buffer[body] << 8) | buffer[body + 1])
        if pos > stop:
            raise _fail(PacketType.PUBLISH, "topic runs past the end of the packet")
        topic = buffer[body + 2 : pos].decode("utf-8", "replace")  # as _text does
        packet_id = 0
        if qos:
            if qos == 3:
                raise _fail(PacketType.PUBLISH, "QoS 3 does not exist")
            packet_id = (buffer[pos] << 8) | buffer[pos + 1] if pos + 2 <= stop else 0
            if not packet_id:
                raise _fail(PacketType.PUBLISH, "packet id is missing or 0")
            pos += 2
        elif first & 0x08:
            raise _fail(PacketType.PUBLISH, "DUP set on a QoS 0 message")
        if pos >= stop:
            raise _fail(PacketType.PUBLISH, "property length is missing")
        if buffer[pos] == 0:  # no properties, the usual case
            response_topic = correlation = expiry = None
            pos += 1
        else:
            props, pos = _read_properties(buffer, pos, stop, PacketType.PUBLISH)
            response_topic = _topic_property(props, _RESPONSE_TOPIC)
            correlation = _binary_property(props, _CORRELATION)
            expiry = _int_property(props, _MESSAGE_EXPIRY)
        payload = buffer[pos:stop]
        if isinstance(payload, bytearray):
            payload = bytes(payload)
        packet = _build_publish(
            topic,
            payload,
            qos,
            packet_id,
            response_topic,
            correlation,
            first & 0x01 != 0,  # retain
            first & 0x08 != 0,  # dup
            expiry,
        )
        return packet, stop - start
    return _read_other(buffer, first, body, stop), stop - start


def _remaining_length(buf: Buffer, pos: int, end: int, first: int) -> tuple[int, int]:
    """The remaining length at `pos` and where the body starts, or (0, -1) if it is not all there."""
    value = shift = 0
    for at in range(pos, min(pos + 4, end)):
        byte = buf[at]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if not byte and shift:
                raise _fail(_packet_type(first), "remaining length is not in its shortest encoding")
            return value, at + 1
        shift += 7
    if end - pos >= 4:
        raise _fail(_packet_type(first), "remaining length is longer than four bytes")
    return 0, -1


def _packet_type(first: int) -> PacketType:
    kind = _PACKET_TYPES[first >> 4]
    if kind is None:
        raise MalformedPacket("reserved (type 0)", "no MQTT packet has type 0")
    return kind


# by number: indexing this costs a tenth of calling PacketType(n)
_PACKET_TYPES: tuple[PacketType | None, ...] = (None, *PacketType)


def _read_other(buf: Buffer, first: int, body: int, stop: int) -> Packet:
    kind = _packet_type(first)
    decode = _DECODERS.get(kind)
    if decode is None:
        raise _fail(kind, "not a packet this client sends or receives")
    if first & 0x0F != (0x02 if kind == PacketType.SUBSCRIBE else 0):
        raise _fail(kind, f"reserved flags 0x{first & 0x0F:x} in the first byte")
    packet, pos = decode(buf, body, stop)
    if pos != stop:
        raise _fail(kind, f"{stop - pos} bytes left over after the packet")
    return packet


def _read_connect(buf: Buffer, pos: int, stop: int) -> tuple[Packet, int]:
    kind = PacketType.CONNECT
    name, pos = _read_string(buf, pos, stop, kind, "protocol name")
    if name != b"MQTT" or pos + 4 > stop or buf[pos] != 5:
        raise _fail(kind, "not MQTT 5 (protocol name MQTT, level 5)")
    flags, keepalive_s = buf[pos + 1], (buf[pos + 2] << 8) | buf[pos + 3]
    if flags & 0x01:
        raise _fail(kind, "reserved flag 0x01 set")
    if flags & 0x3C:
        raise _fail(kind, "will messages are not supported")
    props, pos = _read_properties(buf, pos + 4, stop, kind)
    client_id, pos = _read_string(buf, pos, stop, kind, "client id")
    username = password = None
    if flags & 0x80:
        username, pos = _read_string(buf, pos, stop, kind, "user name")
    if flags & 0x40:
        password, pos = _read_string(buf, pos, stop, kind, "password")
    receive_maximum = props.get(_RECEIVE_MAXIMUM, 65535)
    if receive_maximum == 0:
        raise _fail(kind, "receive maximum is 0")
    connect = Connect(
        _text(client_id),
        keepalive_s,
        bool(flags & 0x02),
        int(props.get(_SESSION_EXPIRY, 0)),
        int(receive_maximum),
        None if username is None else _text(username),
        password,
    )
    return connect, pos


def _read_connack(buf: Buffer, pos: int, stop: int) -> tuple[Packet, int]:
    if pos + 2 > stop:
        raise _fail(PacketType.CONNACK, "acknowledge flags or reason code is missing")
    if buf[pos] & 0xFE:
        raise _fail(PacketType.CONNACK, "reserved acknowledge flags set")
    props, after = _read_properties(buf, pos + 2, stop, PacketType.CONNACK)
    receive_maximum = props.get(_RECEIVE_MAXIMUM, 65535)
    if receive_maximum == 0:
        raise _fail(PacketType.CONNACK, "receive maximum is 0")
    return ConnAck(bool(buf[pos]), buf[pos + 1], int(receive_maximum)), after


def _read_puback(buf: Buffer, pos: int, stop: int) -> tuple[Packet, int]:
    packet_id, pos = _read_packet_id(buf, pos, stop, PacketType.PUBACK)
    if pos == stop:  # success, in the short form
        return PubAck(packet_id), pos
    reason = buf[pos]
    if pos + 1 < stop:
        _, pos = _read_properties(buf, pos + 1, stop, PacketType.PUBACK)
        return PubAck(packet_id, reason), pos
    return PubAck(packet_id, reason), pos + 1


def _read_subscribe(buf: Buffer, pos: int, stop: int) -> tuple[Packet, int]:
    kind = PacketType.SUBSCRIBE
    packet_id, pos = _read_packet_id(buf, pos, stop, kind)
    _, pos = _read_properties(buf, pos, stop, kind)
    filters = []
    while pos < stop:
        name, pos = _read_string(buf, pos, stop, kind, "topic filter")
        if pos >= stop:
            raise _fail(kind, "subscription options are missing")
        if not _valid_options(buf[pos]):
            raise _fail(kind, f"bad subscription options 0x{buf[pos]:02x}")
        filters.append((_text(name), buf[pos]))
        pos += 1
    if not filters:
        raise _fail(kind, "no topic filter")
    return Subscribe(packet_id, tuple(filters)), pos


def _valid_options(options: int) -> bool:
    """Reserved bits clear, maximum QoS 0-2, retain handling 0-2."""
    return 0 <= options <= 0x3F and options & 0x03 != 3 and options & 0x30 != 0x30


def _read_suback(buf: Buffer, pos: int, stop: int) -> tuple[Packet, int]:
    packet_id, pos = _read_packet_id(buf, pos, stop, PacketType.SUBACK)
    _, pos = _read_properties(buf, pos, stop, PacketType.SUBACK)
    if pos == stop:
        raise _fail(PacketType.SUBACK, "no reason code")
    return SubAck(packet_id, tuple(buf[pos:stop])), stop


def _read_disconnect(buf: Buffer, pos: int, stop: int) -> tuple[Packet, int]:
    if pos == stop:  # normal disconnection, in the short form
        return _DISCONNECT, pos
    reason = buf[pos]
    if pos + 1 < stop:
        _, pos = _read_properties(buf, pos + 1, stop, PacketType.DISCONNECT)
        return Disconnect(reason), pos
    return Disconnect(reason), pos + 1


def _read_packet_id(buf: Buffer, pos: int, stop: int, kind: PacketType) -> tuple[int, int]:
    if pos + 2 > stop:
        raise _fail(kind, "packet id is cut off")
    packet_id = (buf[pos] << 8) | buf[pos + 1]
    if not packet_id:
        raise _fail(kind, "packet id is 0")
    return packet_id, pos + 2


_PINGREQ, _PINGRESP, _DISCONNECT = PingReq(), PingResp(), Disconnect()
_DECODERS: dict[PacketType, Callable[[Buffer, int, int], tuple[Packet, int]]] = {
    PacketType.CONNECT: _read_connect,
    PacketType.CONNACK: _read_connack,
    PacketType.PUBACK: _read_puback,
    PacketType.SUBSCRIBE: _read_subscribe,
    PacketType.SUBACK: _read_suback,
    PacketType.PINGREQ: lambda buf, pos, stop: (_PINGREQ, pos),
    PacketType.PINGRESP: lambda buf, pos, stop: (_PINGRESP, pos),
    PacketType.DISCONNECT: _read_disconnect,
}


# -- writing ------------------------------------------------------------------------------------------


def encode(packet: Packet) -> bytes:
    """The bytes of one packet. Raises MalformedPacket for a field MQTT cannot carry (a string over
    65,535 bytes, a packet id outside 1-65535, a QoS outside 0-2, ...)."""
    match packet:
        case Publish():
            return encode_publish(
                packet.topic,
                packet.payload,
                qos=packet.qos,
                packet_id=packet.packet_id,
                retain=packet.retain,
                correlation=packet.correlation,
                response_topic=packet.response_topic,
                dup=packet.dup,
                message_expiry_s=packet.message_expiry_s,
            )
        case PubAck():
            return _encode_puback(packet)
        case Connect():
            return _encode_connect(packet)
        case ConnAck():
            return _encode_connack(packet)
        case Subscribe():
            return _encode_subscribe(packet)
        case SubAck():
            return _encode_suback(packet)
        case PingReq():
            return b"\xc0\x00"
        case PingResp():
            return b"\xd0\x00"
        case Disconnect():
            return _encode_disconnect(packet)


def encode_publish(
    topic: str,
    payload: bytes,
    *,
    qos: int = 0,
    packet_id: int = 0,
    retain: bool = False,
    correlation: bytes | None = None,
    response_topic: str | None = None,
    dup: bool = False,
    message_expiry_s: int | None = None,
) -> bytes:
    """One PUBLISH, without building a `Publish` first (the enforcer's replies and status)."""
    name = topic.encode()
    if len(name) > 0xFFFF:
        raise _fail(PacketType.PUBLISH, f"topic is {len(name):,} bytes, more than 65,535")
    if qos == 0 and not packet_id and not dup:
        packet_id_field = b""
    elif (qos == 1 or qos == 2) and 0 < packet_id <= 0xFFFF:
        packet_id_field = _U16.pack(packet_id)
    else:
        raise _fail(PacketType.PUBLISH, f"QoS {qos} with packet id {packet_id}{' and DUP' if dup else ''}")
    props = b"\x00"  # no properties
    if correlation is not None or response_topic is not None or message_expiry_s is not None:
        props = b""
        if message_expiry_s is not None:
            props += b"\x02" + _unsigned(message_expiry_s, 4, PacketType.PUBLISH, "message expiry")
        if response_topic is not None:
            props += b"\x08" + _string(response_topic.encode(), PacketType.PUBLISH, "response topic")
        if correlation is not None:
            props += b"\x09" + _string(correlation, PacketType.PUBLISH, "correlation data")
        props = _varint(len(props)) + props
    first = 0x30 | (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    length = 2 + len(name) + len(packet_id_field) + len(props) + len(payload)
    return b"".join(
        (_fixed_header(first, length), _U16.pack(len(name)), name, packet_id_field, props, payload)
    )


def encode_puback(packet_id: int) -> bytes:
    """A successful PUBACK (the short form, no reason code)."""
    if not 0 < packet_id <= 0xFFFF:
        raise _fail(PacketType.PUBACK, f"packet id {packet_id} is outside 1-65535")
    return b"\x40\x02" + _U16.pack(packet_id)


def _frame(first: int, body: bytes) -> bytes:
    return _fixed_header(first, len(body)) + body


def _fixed_header(first: int, length: int) -> bytes:
    """The first byte and the remaining length."""
    if length < 0x80:
        return bytes((first, length))
    if length < 0x4000:
        return bytes((first, (length & 0x7F) | 0x80, length >> 7))
    if length > _MAX_REMAINING_LENGTH:
        raise _fail(_packet_type(first), f"{length:,} bytes is more than one packet can carry")
    return bytes((first,)) + _varint(length)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _string(data: bytes, kind: PacketType, what: str) -> bytes:
    if len(data) > 0xFFFF:
        raise _fail(kind, f"{what} is {len(data):,} bytes, more than 65,535")
    return _U16.pack(len(data)) + data


def _unsigned(value: int, size: int, kind: PacketType, what: str) -> bytes:
    if not 0 <= value < 1 << (8 * size):
        raise _fail(kind, f"{what} {value} does not fit in {size} bytes")
    return value.to_bytes(size, "big")


def _encode_connect(packet: Connect) -> bytes:
    kind = PacketType.CONNECT
    if not packet.receive_maximum:
        raise _fail(kind, "receive maximum is 0")
    props = b"\x11" + _unsigned(packet.session_expiry_s, 4, kind, "session expiry")
    props += b"\x21" + _unsigned(packet.receive_maximum, 2, kind, "receive maximum")
    flags = (0x02 if packet.clean_start else 0) | (0x80 if packet.username is not None else 0)
    flags |= 0x40 if packet.password is not None else 0
    body = _string(b"MQTT", kind, "protocol name") + bytes((5, flags))
    body += _unsigned(packet.keepalive_s, 2, kind, "keepalive") + _varint(len(props)) + props
    body += _string(packet.client_id.encode(), kind, "client id")
    if packet.username is not None:
        body += _string(packet.username.encode(), kind, "user name")
    if packet.password is not None:
        body += _string(packet.password, kind, "password")
    return _frame(0x10, body)


def _encode_connack(packet: ConnAck) -> bytes:
    kind = PacketType.CONNACK
    reason = _unsigned(packet.reason_code, 1, kind, "reason code")
    props = b""
    if packet.receive_maximum != 65535:  # the default needs no property
        if not packet.receive_maximum:
            raise _fail(kind, "receive maximum is 0")
        props = b"\x21" + _unsigned(packet.receive_maximum, 2, kind, "receive maximum")
    body = bytes((int(packet.session_present),)) + reason + _varint(len(props)) + props
    return _frame(0x20, body)


def _encode_puback(packet: PubAck) -> bytes:
    if not packet.reason_code:
        return encode_puback(packet.packet_id)
    reason = _unsigned(packet.reason_code, 1, PacketType.PUBACK, "reason code")
    return _frame(0x40, _packet_id(packet.packet_id, PacketType.PUBACK) + reason)


def _encode_subscribe(packet: Subscribe) -> bytes:
    kind = PacketType.SUBSCRIBE
    if not packet.filters:
        raise _fail(kind, "no topic filter")
    body = _packet_id(packet.packet_id, kind) + b"\x00"
    for name, options in packet.filters:
        if not _valid_options(options):
            raise _fail(kind, f"bad subscription options 0x{options:02x}")
        body += _string(name.encode(), kind, "topic filter") + bytes((options,))
    return _frame(0x82, body)


def _encode_suback(packet: SubAck) -> bytes:
    kind = PacketType.SUBACK
    if not packet.reason_codes:
        raise _fail(kind, "no reason code")
    codes = b"".join(_unsigned(code, 1, kind, "reason code") for code in packet.reason_codes)
    return _frame(0x90, _packet_id(packet.packet_id, kind) + b"\x00" + codes)


def _encode_disconnect(packet: Disconnect) -> bytes:
    if not packet.reason_code:
        return b"\xe0\x00"
    return _frame(0xE0, _unsigned(packet.reason_code, 1, PacketType.DISCONNECT, "reason code"))


def _packet_id(packet_id: int, kind: PacketType) -> bytes:
    if not 0 < packet_id <= 0xFFFF:
        raise _fail(kind, f"packet id {packet_id} is outside 1-65535")
    return _U16.pack(packet_id)
