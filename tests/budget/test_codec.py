"""budget.mqtt.codec and its packets, without an event loop: round trips of every packet, packets split
at every byte, packets coalesced in one buffer, the wire bytes of known packets, and bad bytes refused
with MalformedPacket only."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from budget.errors import BrokerError, MalformedPacket
from budget.mqtt.codec import encode, encode_puback, encode_publish, read
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
from tests.budget.mqtt_helpers import remaining_length

texts = st.text(max_size=40)
packet_ids = st.integers(1, 0xFFFF)
bytes_values = st.integers(0, 0xFF)
small_payloads = st.binary(max_size=200)
# up to ~120 kB: remaining lengths of one, two and three bytes
large_payloads = st.builds(bytes.__mul__, st.binary(min_size=1, max_size=40), st.integers(0, 3000))
# maximum QoS 0-2, retain handling 0-2, reserved bits clear
subscription_options = st.integers(0, 0x3F).filter(lambda o: o & 0x03 != 0x03 and o & 0x30 != 0x30)


@st.composite
def publishes(draw: st.DrawFn, payloads: st.SearchStrategy[bytes] = small_payloads) -> Publish:
    qos = draw(st.integers(min_value=0, max_value=2))
    return Publish(
        topic=draw(texts),
        payload=draw(payloads),
        qos=qos,
        packet_id=draw(packet_ids) if qos else 0,
        response_topic=draw(st.none() | texts),
        correlation=draw(st.none() | st.binary(max_size=40)),
        retain=draw(st.booleans()),
        dup=draw(st.booleans()) if qos else False,
        message_expiry_s=draw(st.none() | st.integers(0, 0xFFFF_FFFF)),
    )


def packets(payloads: st.SearchStrategy[bytes] = small_payloads) -> st.SearchStrategy[Packet]:
    """Every packet type the codec speaks, with arbitrary fields."""
    return st.one_of(
        st.builds(
            Connect,
            client_id=texts,
            keepalive_s=st.integers(0, 0xFFFF),
            clean_start=st.booleans(),
            session_expiry_s=st.integers(0, 0xFFFF_FFFF),
            receive_maximum=st.integers(1, 0xFFFF),
            username=st.none() | texts,
            password=st.none() | st.binary(max_size=40),
        ),
        st.builds(
            ConnAck,
            session_present=st.booleans(),
            reason_code=bytes_values,
            receive_maximum=st.integers(1, 0xFFFF),
        ),
        publishes(payloads),
        st.builds(PubAck, packet_id=packet_ids, reason_code=bytes_values),
        st.builds(
            Subscribe,
            packet_id=packet_ids,
            filters=st.lists(st.tuples(texts, subscription_options), min_size=1, max_size=5).map(tuple),
        ),
        st.builds(SubAck, packet_id=packet_ids, reason_codes=st.lists(bytes_values, min_size=1).map(tuple)),
        st.just(PingReq()),
        st.just(PingResp()),
        st.builds(Disconnect, reason_code=bytes_values),
    )


# -- round trips, splits, coalescing -------------------------------------------------------------------


@settings(max_examples=500)
@given(packets(st.one_of(small_payloads, large_payloads)))
def test_encode_then_read_gives_the_same_packet(packet: Packet) -> None:
    data = encode(packet)
    assert read(data) == (packet, len(data))
    assert read(bytearray(data)) == (packet, len(data))  # the connection's buffer between reads


@settings(max_examples=300)
@given(packets())
def test_a_packet_cut_anywhere_is_not_there_yet(packet: Packet) -> None:
    data = encode(packet)
    for cut in range(len(data)):
        assert read(data[:cut]) == (None, 0), cut
    assert read(data) == (packet, len(data))


@settings(max_examples=30, deadline=None)
@given(publishes(large_payloads))
def test_a_large_publish_cut_anywhere_is_not_there_yet(packet: Publish) -> None:
    data = bytearray(encode(packet))
    while data:  # from the end, so no cut copies the packet
        data.pop()
        assert read(data) == (None, 0)


@given(st.lists(packets(), min_size=1, max_size=8), st.binary(max_size=5), st.data())
def test_coalesced_packets_are_read_in_order_from_one_buffer(
    sent: list[Packet], prefix: bytes, data: st.DataObject
) -> None:
    tail = encode(data.draw(packets()))
    tail = tail[: data.draw(st.integers(0, len(tail) - 1))]  # the start of a packet still on its way
    buffer = prefix + b"".join(map(encode, sent)) + tail
    got, pos = [], len(prefix)
    while True:
        packet, size = read(buffer, pos)
        if packet is None:
            break
        got.append(packet)
        pos += size
    assert got == sent
    assert pos == len(buffer) - len(tail)


# -- the bytes on the wire, against the MQTT 5 layout ---------------------------------------------------


def test_a_qos1_publish_has_the_documented_layout() -> None:
    data = encode_publish("a/b", b"hi", qos=1, packet_id=7, retain=True, correlation=b"c")
    # type 3, QoS 1, retain; remaining length; topic; packet id; properties (correlation data); payload
    assert data == b"\x33\x0e" + b"\x00\x03a/b" + b"\x00\x07" + b"\x04\x09\x00\x01c" + b"hi"
    assert encode(Publish("a/b", b"hi", 1, 7, None, b"c", retain=True)) == data


def test_acks_pings_and_disconnect_have_the_documented_bytes() -> None:
    assert encode_puback(0x1234) == encode(PubAck(0x1234)) == b"\x40\x02\x12\x34"
    assert encode(PubAck(5, reason_code=0x10)) == b"\x40\x03\x00\x05\x10"
    assert encode(PingReq()) == b"\xc0\x00"
    assert encode(PingResp()) == b"\xd0\x00"
    assert encode(Disconnect()) == b"\xe0\x00"
    assert encode(Disconnect(0x8E)) == b"\xe0\x01\x8e"


def test_connect_and_subscribe_have_the_documented_layout() -> None:
    connect = encode(Connect("c1", keepalive_s=60, session_expiry_s=3600, receive_maximum=100, username="u"))
    variable = b"\x00\x04MQTT\x05\x80\x00\x3c" + b"\x08\x11\x00\x00\x0e\x10\x21\x00\x64"
    assert connect == b"\x10\x1a" + variable + b"\x00\x02c1" + b"\x00\x01u"
    subscribe = encode(Subscribe(9, (("m/#", 1), ("n", 0))))
    assert subscribe == b"\x82\x0d\x00\x09\x00" + b"\x00\x03m/#\x01" + b"\x00\x01n\x00"


def test_what_a_broker_sends_is_read_with_the_properties_it_skips() -> None:
    # mosquitto's CONNACK: receive maximum (kept), topic alias maximum, assigned client id, user property
    props = b"\x21\x00\x14\x22\x00\x0a\x12\x00\x02id\x26\x00\x01k\x00\x01v"
    assert read(b"\x20" + bytes([3 + len(props)]) + b"\x01\x00" + bytes([len(props)]) + props) == (
        ConnAck(session_present=True, receive_maximum=20),
        5 + len(props),
    )
    assert read(b"\x20\x03\x00\x00\x00") == (ConnAck(False), 5)  # none given: 65,535
    suback = b"\x90\x06\x00\x02\x00\x01\x80\x02"
    assert read(suback) == (SubAck(2, (1, 0x80, 2)), 8)
    # a PUBLISH with a payload format indicator, a message expiry (kept) and a subscription identifier
    body = b"\x00\x01t" + b"\x00\x05" + b"\x0a\x01\x01\x02\x00\x00\x00\x3c\x0b\x81\x01" + b"x"
    assert read(b"\x32" + bytes([len(body)]) + body) == (
        Publish("t", b"x", 1, 5, message_expiry_s=60),
        2 + len(body),
    )


def test_a_connack_and_a_publish_with_properties_have_the_documented_layout() -> None:
    assert encode(ConnAck(False, 0, receive_maximum=7)) == b"\x20\x06\x00\x00\x03\x21\x00\x07"
    assert encode(ConnAck(True)) == b"\x20\x03\x01\x00\x00"
    data = encode_publish("t", b"", qos=0, message_expiry_s=30, response_topic="r")
    assert data == b"\x30\x0d\x00\x01t" + b"\x09\x02\x00\x00\x00\x1e\x08\x00\x01r"


def test_bad_utf8_in_a_topic_is_replaced_not_refused() -> None:
    packet, _ = read(b"\x30\x05\x00\x02\xff\xfe\x00")
    assert packet == Publish("\ufffd\ufffd", b"")


def test_bad_utf8_in_a_response_topic_stays_recognisably_bad() -> None:
    # replaced by U+FFFD, a reply would go to a topic nobody asked for; a lone surrogate is refused later
    packet, _ = read(b"\x30\x09\x00\x01t\x05\x08\x00\x02r\xff")
    assert isinstance(packet, Publish) and packet.response_topic == "r\udcff"


# -- what is refused -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x30\xff\xff\xff\xff\x7f", "remaining length is longer than four bytes"),
        (b"\x30\x80\x00", "remaining length is not in its shortest encoding"),
        (b"\x00\x00", "type 0"),
        (b"\x50\x02\x00\x01", "PUBREC packet: not a packet this client"),
        (b"\x36\x04\x00\x01t\x00", "QoS 3"),
        (b"\x32\x06\x00\x01t\x00\x00\x00", "packet id is missing or 0"),
        (b"\x38\x04\x00\x01t\x00", "DUP set on a QoS 0"),
        (b"\x30\x01\x00", "topic is cut off"),
        (b"\x30\x04\x00\x05ab" + b"\x30\x04\x00\x01t\x00", "topic runs past the end of the packet"),
        (b"\x30\x03\x00\x01t", "property length"),
        (b"\x30\x06\x00\x01t\x02\x7f\x00", "unknown property 0x7f"),
        (b"\x30\x06\x00\x01t\x02\x11\x00", "unknown property 0x11"),  # session expiry: not on a PUBLISH
        (b"\x30\x07\x00\x01t\x03\x09\x00\x05", "property 0x09 runs past the end"),
        (b"\x30\x0b\x00\x01t\x07\x09\x00\x00\x09\x00\x01c\x00", "property 0x09 appears twice"),
        (b"\x30\x05\x00\x01t\x05\x01", "properties run past the end"),
        (b"\x40\x01\x00", "PUBACK packet: packet id is cut off"),
        (b"\x40\x02\x00\x00", "PUBACK packet: packet id is 0"),
        (b"\x41\x02\x00\x01", "reserved flags"),
        (b"\x80\x06\x00\x01\x00\x00\x01t", "reserved flags"),  # SUBSCRIBE must carry flags 0010
        (b"\x82\x03\x00\x01\x00", "no topic filter"),
        (b"\x82\x07\x00\x01\x00\x00\x01t\x03", "bad subscription options 0x03"),
        (b"\x90\x03\x00\x01\x00", "SUBACK packet: no reason code"),
        (b"\x20\x04\x02\x00\x00\x00", "reserved acknowledge flags"),
        (b"\x20\x04\x00\x00\x00\x00", "1 bytes left over"),
        (b"\x20\x06\x00\x00\x03\x21\x00\x00", "CONNACK packet: receive maximum is 0"),
        (b"\xd0\x01\x00", "PINGRESP packet: 1 bytes left over"),
        (b"\x10\x07\x00\x04MQTT\x04", "not MQTT 5"),
        (b"\x10\x0a\x00\x04MQTT\x05\x04\x00\x00", "will messages are not supported"),
    ],
)
def test_bytes_that_can_never_be_a_packet_are_refused_by_name(data: bytes, message: str) -> None:
    with pytest.raises(MalformedPacket, match=message) as raised:
        read(data)
    assert isinstance(raised.value, BrokerError)


@pytest.mark.parametrize(
    ("packet", "message"),
    [
        (Publish("t" * 70_000, b""), "topic is 70,000 bytes"),
        (Publish("t", b"", qos=1, packet_id=0), "QoS 1 with packet id 0"),
        (Publish("t", b"", qos=3, packet_id=1), "QoS 3"),
        (Publish("t", b"", qos=0, packet_id=4), "QoS 0 with packet id 4"),
        (Publish("t", b"", dup=True), "QoS 0 with packet id 0 and DUP"),
        (Publish("t", b"", qos=-1, packet_id=1), "QoS -1"),
        (PubAck(0x10000), "outside 1-65535"),
        (Connect("c", keepalive_s=70_000), "keepalive 70000 does not fit"),
        (Connect("c", receive_maximum=0), "receive maximum is 0"),
        (ConnAck(False, receive_maximum=0), "receive maximum is 0"),
        (Publish("t", b"", message_expiry_s=1 << 32), "message expiry 4294967296 does not fit"),
        (Subscribe(1, ()), "no topic filter"),
        (Subscribe(1, (("t", 0x30),)), "bad subscription options"),
        (SubAck(1, (256,)), "reason code 256"),
        (Publish("t", b"x" * 268_435_456), "more than one packet can carry"),
    ],
)
def test_fields_mqtt_cannot_carry_are_refused_on_encode(packet: Packet, message: str) -> None:
    with pytest.raises(MalformedPacket, match=message):
        encode(packet)


def _walk(buffer: bytes) -> None:
    """Read packets from the start until one is incomplete; only MalformedPacket may escape."""
    pos = 0
    while True:
        packet, size = read(buffer, pos)
        if packet is None:
            return
        assert size > 0
        pos += size


@settings(max_examples=1000)
@given(st.binary(max_size=300))
@example(b"\x30\x04\x00\x05ab")
def test_garbage_raises_only_malformed_packet(garbage: bytes) -> None:
    with contextlib.suppress(MalformedPacket):
        _walk(garbage)


@settings(max_examples=1000)
@given(st.lists(packets(), min_size=1, max_size=3), st.data())
def test_damaged_packets_raise_only_malformed_packet(sent: list[Packet], data: st.DataObject) -> None:
    buffer = bytearray(b"".join(map(encode, sent)))
    for _ in range(data.draw(st.integers(1, 4))):
        buffer[data.draw(st.integers(0, len(buffer) - 1))] = data.draw(bytes_values)
    with contextlib.suppress(MalformedPacket):
        _walk(bytes(buffer))


@settings(max_examples=1000)
@given(packets(), st.data())
def test_a_body_cut_short_is_refused_or_read_within_its_frame(packet: Packet, data: st.DataObject) -> None:
    whole = encode(packet)
    header = 2 + sum(1 for byte in whole[1:5] if byte & 0x80)
    body = whole[header:]
    keep = data.draw(st.integers(0, max(0, len(body) - 1)))
    frame = whole[:1] + remaining_length(keep) + body[:keep]
    # what follows the frame: nothing, or a packet that a decoder reading past its frame would find
    behind = data.draw(st.sampled_from([b"", encode(PingReq()), encode(PubAck(1))]))
    try:
        _, size = read(frame + behind)
    except MalformedPacket:
        return
    assert size == len(frame)


def test_every_packet_type_is_named_by_the_enum() -> None:
    assert [PacketType(n).name for n in (1, 3, 4, 8, 9, 12, 13, 14)] == [
        "CONNECT", "PUBLISH", "PUBACK", "SUBSCRIBE", "SUBACK", "PINGREQ", "PINGRESP", "DISCONNECT"
    ]  # fmt: skip
    assert {cls.TYPE for cls in (Connect, ConnAck, Publish, PubAck, Subscribe, SubAck)} == {
        PacketType(n) for n in (1, 2, 3, 4, 8, 9)
    }
