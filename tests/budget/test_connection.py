"""budget.mqtt.connection: packets split anywhere parse the same; properties; one write per loop turn."""

from __future__ import annotations

import asyncio
import itertools
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from budget.mqtt.connection import Incoming, Mqtt5Connection, _Protocol, _varint


def publish_packet(topic: str, payload: bytes, packet_id: int, props: bytes = b"") -> bytes:
    body = struct.pack("!H", len(topic)) + topic.encode()
    body += struct.pack("!H", packet_id) if packet_id else b""
    body += _varint(len(props)) + props + payload
    return bytes([0x32 if packet_id else 0x30]) + _varint(len(body)) + body


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
    Incoming("margins/usage/alice", b'{"a": 1}', 1, 7, None, None),
    Incoming("margins/authorize/bob", b"x" * 300, 1, 8, "margins/replies/c/1", b"corr"),
    Incoming("margins/admin/users/carol", b"{}", 0, 0, None, None),
]


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=sum(map(len, PACKETS))), max_size=12))
def test_packets_split_anywhere_parse_the_same(cuts: list[int]) -> None:
    async def run() -> list[Incoming]:
        got: list[Incoming] = []
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


def test_a_garbled_stream_closes_the_connection() -> None:
    async def run() -> bool:
        connection = Mqtt5Connection(lambda message: None)
        protocol = _Protocol(connection)
        protocol.connection_made(FakeTransport())
        protocol.data_received(b"\x30\xff\xff\xff\xff\xff")  # a length longer than MQTT allows
        return connection.is_open

    assert asyncio.run(run()) is False
