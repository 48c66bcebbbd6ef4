"""budget.mqtt.connection: packets split across reads arrive whole; one write per loop turn; a bad packet
or a broker's DISCONNECT ends the connection with the reason."""

from __future__ import annotations

import asyncio
import itertools
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from budget.errors import ConnectionLost
from budget.mqtt.connection import Mqtt5Connection, _Protocol
from budget.mqtt.packets import Publish
from tests.budget.mqtt_helpers import remaining_length


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


# -- flow control: never more in flight than the broker's receive maximum -------------------------------


def connack(receive_maximum: int) -> bytes:
    """A successful CONNACK carrying the broker's receive maximum (property 0x21)."""
    return b"\x20\x06\x00\x00\x03\x21" + struct.pack("!H", receive_maximum)


def puback(packet_id: int, reason_code: int | None = None) -> bytes:
    if reason_code is None:
        return b"\x40\x02" + struct.pack("!H", packet_id)
    return b"\x40\x03" + struct.pack("!H", packet_id) + bytes([reason_code])


def sent_publishes(transport: FakeTransport) -> list[tuple[str, int]]:
    """(topic, packet id) of every QoS 1 PUBLISH written, parsed by hand (not with the codec)."""
    data, out, pos = b"".join(transport.written), [], 0
    while pos < len(data):
        first, shift, length, at = data[pos], 0, 0, pos + 1
        while True:
            byte = data[at]
            length |= (byte & 0x7F) << shift
            at += 1
            shift += 7
            if not byte & 0x80:
                break
        if first & 0xF0 == 0x30 and first & 0x06:
            size = struct.unpack("!H", data[at : at + 2])[0]
            topic = data[at + 2 : at + 2 + size].decode()
            out.append((topic, struct.unpack("!H", data[at + 2 + size : at + 4 + size])[0]))
        pos = at + length
    return out


def test_publishes_beyond_the_receive_maximum_wait_in_order_for_pubacks() -> None:
    async def run() -> None:
        connection = Mqtt5Connection(lambda message: None)
        transport = FakeTransport()
        protocol = _Protocol(connection)
        protocol.connection_made(transport)
        protocol.data_received(connack(3))
        assert connection.send_quota == 3
        for i in range(10):
            connection.publish(f"t/{i}", b"{}")
        await asyncio.sleep(0)
        first = sent_publishes(transport)
        assert [topic for topic, _ in first] == ["t/0", "t/1", "t/2"]
        assert (connection.in_flight, connection.pending) == (3, 10)
        protocol.data_received(puback(first[1][1]))  # acknowledged out of order: one slot frees
        await asyncio.sleep(0)
        assert [topic for topic, _ in sent_publishes(transport)] == ["t/0", "t/1", "t/2", "t/3"]
        for _ in range(20):
            for _topic, packet_id in sent_publishes(transport):
                protocol.data_received(puback(packet_id))  # a second PUBACK for an id changes nothing
            await asyncio.sleep(0)
        sent = sent_publishes(transport)
        assert [topic for topic, _ in sent] == [f"t/{i}" for i in range(10)]
        assert connection.pending == 0 and connection.is_open

    asyncio.run(run())


def test_a_hundred_thousand_publishes_never_run_out_of_packet_ids() -> None:
    async def run() -> None:
        connection = Mqtt5Connection(lambda message: None)
        transport = FakeTransport()
        protocol = _Protocol(connection)
        protocol.connection_made(transport)
        protocol.data_received(CONNACK)  # no receive maximum given: 65,535
        for i in range(100_000):
            connection.publish(f"margins/status/u{i}", b"{}", retain=True)
        assert connection.in_flight < 65_535  # ids are kept back for SUBSCRIBE
        assert connection.pending == 100_000
        await asyncio.sleep(0)
        topics: list[str] = []
        while connection.pending:
            sent = sent_publishes(transport)
            transport.written.clear()
            assert sent, "nothing sent while publishes are pending"
            topics += [topic for topic, _ in sent]
            protocol.data_received(b"".join(puback(packet_id) for _, packet_id in sent))
            await asyncio.sleep(0)
        assert topics == [f"margins/status/u{i}" for i in range(100_000)]  # all of them, in order
        assert connection.is_open

    asyncio.run(run())


def test_a_refused_publish_is_reported_and_the_connection_stays() -> None:
    async def run() -> list[tuple[str, int]]:
        refused: list[tuple[str, int]] = []
        connection = Mqtt5Connection(lambda message: None, lambda topic, code: refused.append((topic, code)))
        transport = FakeTransport()
        protocol = _Protocol(connection)
        protocol.connection_made(transport)
        protocol.data_received(connack(10))
        connection.publish("elsewhere/replies/1", b"{}")
        connection.publish("margins/status/alice", b"{}")
        await asyncio.sleep(0)
        (_, denied), (_, fine) = sent_publishes(transport)
        protocol.data_received(puback(denied, 0x87) + puback(fine, 0x10))  # not authorized; no subscribers
        assert connection.is_open and connection.pending == 0
        return refused

    assert asyncio.run(run()) == [("elsewhere/replies/1", 0x87)]


def test_waiting_for_room_ends_when_pubacks_come_or_the_connection_closes() -> None:
    async def run() -> None:
        connection = Mqtt5Connection(lambda message: None)
        transport = FakeTransport()
        protocol = _Protocol(connection)
        protocol.connection_made(transport)
        protocol.data_received(connack(2))
        for i in range(5):
            connection.publish(f"t/{i}", b"")
        await asyncio.sleep(0)
        waiter = asyncio.create_task(connection.wait_for_room(2))
        await asyncio.sleep(0)
        assert not waiter.done()
        for _ in range(3):
            protocol.data_received(b"".join(puback(i) for _, i in sent_publishes(transport)))
            transport.written.clear()
            await asyncio.sleep(0)
        await asyncio.wait_for(waiter, 1)
        assert connection.pending < 2
        for i in range(5):
            connection.publish(f"u/{i}", b"")
        blocked = asyncio.create_task(connection.wait_for_room(1))
        await asyncio.sleep(0)
        protocol.connection_lost(None)
        try:
            await asyncio.wait_for(blocked, 1)
        except ConnectionLost:
            return
        raise AssertionError("wait_for_room returned on a closed connection")

    asyncio.run(run())


def test_a_subscription_the_broker_never_answers_is_a_lost_connection_not_a_crash() -> None:
    # The enforcer's and the alerts forwarder's connect loops reconnect on ConnectionLost; anything else
    # would end their broker task.
    async def run() -> None:
        connection = Mqtt5Connection(lambda message: None)
        protocol = _Protocol(connection)
        protocol.connection_made(FakeTransport())
        protocol.data_received(connack(10))
        try:
            await connection.subscribe(["margins/usage/+"], timeout_s=0.05)
        except ConnectionLost as error:
            assert "SUBACK" in error.reason
            return
        raise AssertionError("subscribe returned without a SUBACK")

    asyncio.run(run())
