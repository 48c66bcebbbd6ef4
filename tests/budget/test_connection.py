"""budget.mqtt.connection: packets split across reads arrive whole; one write per loop turn; a bad packet
or a broker's DISCONNECT ends the connection with the reason."""

from __future__ import annotations

import asyncio
import itertools
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from mqtt_helpers import remaining_length

from budget.errors import ConnectionLost
from budget.mqtt.connection import Mqtt5Connection, _Protocol
from budget.mqtt.packets import Publish


def publish_packet(topic: str, payload: bytes, packet_id: int, props: bytes = b"") -> bytes:
    body = struct.pack("!H", len(topic)) + topic.encode()
    body += struct.pack("!H", packet_id) if packet_id else b""
    body += remaining_length(len(props)) + props + payload
    return bytes([0x32 if packet_id else 0x30]) + remaining_length(len(body)) + body


def prop_string(prop: int, value: bytes) -> bytes:
    return bytes([prop]) + struct.pack("!H", len(value)) + value


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


CONNACK = b"\x20\x03\x00\x00\x00"  # no session present, success, no properties
PACKETS = [
    publish_packet("margins/usage/alice", b'{"a": 1}', 7),
    publish_packet(
        "margins/authorize/bob",
        b"x" * 300,  # a remaining length over 127 takes two bytes
        8,
        b"\x01\x01" + prop_string(0x08, b"margins/replies/c/1") + prop_string(0x09, b"corr") + b"\x0b\x05",
    ),
    publish_packet("margins/admin/users/carol", b"{}", 0, b"\x26" + b"\x00\x01k\x00\x01v"),
]
EXPECTED = [
    Publish("margins/usage/alice", b'{"a": 1}', 1, 7, None, None),
    Publish("margins/authorize/bob", b"x" * 300, 1, 8, "margins/replies/c/1", b"corr"),
    Publish("margins/admin/users/carol", b"{}", 0, 0, None, None),
]


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=sum(map(len, PACKETS))), max_size=12))
def test_packets_split_anywhere_parse_the_same(cuts: list[int]) -> None:
    async def run() -> list[Publish]:
        got: list[Publish] = []
        connection = Mqtt5Connection(got.append)
        protocol = _Protocol(connection)
        protocol.connection_made(FakeTransport())
        data = b"".join(PACKETS)
        edges = sorted({0, len(data), *cuts})
        for start, end in itertools.pairwise(edges):
            protocol.data_received(data[start:end])
        assert connection.is_open
        return got

    assert asyncio.run(run()) == EXPECTED


def test_acks_and_publishes_of_one_loop_turn_are_one_write() -> None:
    async def run() -> list[bytes]:
        connection = Mqtt5Connection(lambda message: None)
        transport = FakeTransport()
        _Protocol(connection).connection_made(transport)
        connection.ack(7)
        connection.ack(8)
        connection.publish("margins/status/alice", b"{}", retain=True)
        connection.publish("margins/replies/c/1", b"{}", qos=0, correlation=b"corr")
        assert connection.pending == 1  # the QoS 1 status until its PUBACK
        await asyncio.sleep(0)
        _Protocol(connection).data_received(b"\x40\x02\x00\x01")
        assert connection.pending == 0
        return transport.written

    [written] = asyncio.run(run())
    assert written.startswith(b"\x40\x02\x00\x07\x40\x02\x00\x08\x33")  # two PUBACKs, then a retained QoS 1


def closing_reason(*chunks: bytes) -> str:
    """Feed `chunks` to a connection just past CONNACK; the reason it closed with ("" if still open)."""

    async def run() -> str:
        connection = Mqtt5Connection(lambda message: None)
        protocol = _Protocol(connection)
        protocol.connection_made(FakeTransport())
        for chunk in (CONNACK, *chunks):
            protocol.data_received(chunk)
        if connection.is_open:
            return ""
        try:
            await connection.wait_closed()
        except ConnectionLost as error:
            return str(error)
        return "closed without a reason"

    return asyncio.run(run())


def test_a_garbled_stream_closes_the_connection_and_says_why() -> None:
    reason = closing_reason(b"\x30\xff\xff", b"\xff\xff\xff")  # a length longer than MQTT allows
    assert "bad packet from the broker" in reason
    assert "PUBLISH" in reason and "remaining length" in reason


def test_a_packet_that_lies_about_its_topic_closes_the_connection() -> None:
    # the topic length (0x0100) runs past this packet into the next one, which is well formed
    reason = closing_reason(b"\x30\x04\x01\x00ab" + publish_packet("t", b"x", 0))
    assert "PUBLISH" in reason and "topic" in reason


def test_a_broker_disconnect_closes_with_its_reason_code() -> None:
    assert closing_reason(b"\xe0\x01\x8b").endswith("broker sent DISCONNECT (reason code 0x8b)")


def test_a_pingresp_changes_nothing() -> None:
    assert closing_reason(b"\xd0\x00", b"\xd0", b"\x00") == ""
