"""Outgoing QoS 1 in the bridge's MQTT 5 client (mqtt_bridge/wire.py): packet ids, the broker's Receive
Maximum, PUBACKs with and without a failure reason, a full window (QoS 0 then), and what a reconnect does
with the publishes still in flight. Against a fake transport, and against a fake broker on a loopback socket
for the client's reconnection; tests/mqtt/test_notification_qos.py runs the same code against Mosquitto."""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from mqtt_bridge import wire


class FakeTransport:
    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def packets(stream: bytes) -> list[tuple[int, int, bytes]]:
    """(type, flags, body) of each packet in `stream`."""
    found, at = [], 0
    while at < len(stream):
        length, start = wire._read_varint(stream, at + 1)
        found.append((stream[at] >> 4, stream[at] & 0x0F, bytes(stream[start:start + length])))
        at = start + length
    return found


def published(stream: bytes) -> list[wire.Message]:
    return [wire.read_publish(flags, body) for kind, flags, body in packets(stream) if kind == wire.PUBLISH]


def connack(receive_maximum: int | None = None) -> bytes:
    props = [] if receive_maximum is None else [(0x21, struct.pack("!H", receive_maximum))]
    return wire._packet(wire.CONNACK, 0, bytes([0, 0]) + wire._properties(props))


def puback(packet_id: int, reason: int | None = None, reason_string: str | None = None) -> bytes:
    body = struct.pack("!H", packet_id)
    if reason is not None:
        body += bytes([reason])
        if reason_string is not None:
            body += wire._properties([(0x1F, wire._string(reason_string))])
    return wire._packet(wire.PUBACK, 0, body)


def run_with_protocol(check: Callable[[wire.MqttProtocol, FakeTransport], None]) -> None:
    async def run() -> None:
        protocol = wire.MqttProtocol(lambda message: None)
        transport = FakeTransport()
        protocol.connection_made(transport)  # type: ignore[arg-type]
        check(protocol, transport)

    asyncio.run(run())


# ------------------------------------------------------------------ the protocol: ids, window, PUBACKs


def test_connack_sets_the_window_to_the_brokers_receive_maximum() -> None:
    def check(protocol: wire.MqttProtocol, transport: FakeTransport) -> None:
        protocol.data_received(connack(3))
        assert protocol.window == 3
        assert [protocol.take_packet_id() for _ in range(4)] == [2, 3, 4, 0]  # never 1: the SUBSCRIBE's

    run_with_protocol(check)


def test_a_connack_without_receive_maximum_means_65535_and_the_ids_cap_the_window() -> None:
    def check(protocol: wire.MqttProtocol, transport: FakeTransport) -> None:
        protocol.data_received(connack())
        assert protocol.window == wire.PUBLISH_IDS == 65534
        ids = [protocol.take_packet_id() for _ in range(65535)]
        assert ids[-1] == 0 and sorted(ids[:-1]) == list(range(2, 65536))

    run_with_protocol(check)


def test_packet_ids_wrap_around_and_skip_those_still_in_flight() -> None:
    def check(protocol: wire.MqttProtocol, transport: FakeTransport) -> None:
        protocol.data_received(connack())
        for _ in range(65534 - 2):  # ids 2..65533, all acknowledged but 5 and 7
            packet_id = protocol.take_packet_id()
            if packet_id not in (5, 7):
                protocol.data_received(puback(packet_id))
        assert protocol.in_flight == 2
        assert [protocol.take_packet_id() for _ in range(6)] == [65534, 65535, 2, 3, 4, 6]

    run_with_protocol(check)


def test_pubacks_free_the_window_in_every_form_and_split_across_reads() -> None:
    def check(protocol: wire.MqttProtocol, transport: FakeTransport) -> None:
        protocol.data_received(connack(4))
        ids = [protocol.take_packet_id() for _ in range(4)]
        assert protocol.take_packet_id() == 0
        stream = (puback(ids[0]) + puback(ids[1], 0x00) + puback(ids[2], 0x10)  # 0x10: no matching subscribers
                  + puback(ids[3], 0x00, "fine"))
        for i in range(0, len(stream), 3):  # 3-byte pieces: no PUBACK arrives whole
            protocol.data_received(stream[i:i + 3])
        assert protocol.in_flight == 0 and protocol.stats.acknowledged == 4
        assert protocol.stats.reasons == {0x10: 1} and protocol.stats.refused == 0
        assert protocol.take_packet_id() != 0 and not transport.closed

    run_with_protocol(check)


def test_a_refused_publish_is_counted_and_logged_once_per_reason_and_keeps_the_connection(
        caplog: pytest.LogCaptureFixture) -> None:
    def check(protocol: wire.MqttProtocol, transport: FakeTransport) -> None:
        protocol.data_received(connack())
        ids = [protocol.take_packet_id() for _ in range(4)]
        protocol.data_received(puback(ids[0], 0x87, "not authorised") + puback(ids[1], 0x87) + puback(ids[2], 0x97)
                               + puback(ids[3]))
        assert protocol.stats.reasons == {0x87: 2, 0x97: 1} and protocol.stats.refused == 3
        assert protocol.stats.acknowledged == 1 and protocol.in_flight == 0
        assert not transport.closed

    with caplog.at_level(logging.WARNING, logger="citystream.mqtt"):
        run_with_protocol(check)
    refused = [r.getMessage() for r in caplog.records if "refused a QoS 1 PUBLISH" in r.getMessage()]
    assert len(refused) == 2 and "0x87" in refused[0] and "0x97" in refused[1]  # the second 0x87: counted only


def test_a_puback_for_an_id_not_in_flight_is_ignored() -> None:
    def check(protocol: wire.MqttProtocol, transport: FakeTransport) -> None:
        protocol.data_received(connack())
        packet_id = protocol.take_packet_id()
        protocol.data_received(puback(packet_id) + puback(packet_id) + puback(999, 0x80))
        assert protocol.in_flight == 0 and protocol.stats.acknowledged == 1 and not protocol.stats.reasons
        assert not transport.closed

    run_with_protocol(check)


def test_publishes_after_a_puback_in_the_same_read_still_reach_the_handler() -> None:
    async def run() -> list[str]:
        received: list[wire.Message] = []
        protocol = wire.MqttProtocol(received.append)
        protocol.connection_made(FakeTransport())  # type: ignore[arg-type]
        protocol.data_received(connack())
        packet_id = protocol.take_packet_id()
        protocol.data_received(wire.publish_packet("a", b"1", qos=1, packet_id=9) + puback(packet_id)
                               + wire.publish_packet("b", b"2"))
        assert protocol.in_flight == 0
        return [m.topic for m in received]

    assert asyncio.run(run()) == ["a", "b"]


# ------------------------------------------------------------------ the client against a fake broker


@dataclass
class FakeBroker:
    """Accepts connections, answers CONNECT (with `receive_maximum` if given) and SUBSCRIBE, records every
    PUBLISH by connection, and acknowledges QoS 1 ones only when told to."""

    receive_maximum: int | None = None
    connections: list[list[wire.Message]] = field(default_factory=list)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        messages: list[wire.Message] = []
        self.connections.append(messages)
        self.writers.append(writer)
        try:
            while True:
                header = (await reader.readexactly(1))[0]
                length, shift = 0, 0
                while True:
                    byte = (await reader.readexactly(1))[0]
                    length |= (byte & 0x7F) << shift
                    shift += 7
                    if not byte & 0x80:
                        break
                body = await reader.readexactly(length)
                kind = header >> 4
                if kind == wire.CONNECT:
                    writer.write(connack(self.receive_maximum))
                elif kind == wire.SUBSCRIBE:
                    writer.write(wire._packet(wire.SUBACK, 0, body[:2] + b"\x00\x00"))
                elif kind == wire.PUBLISH:
                    messages.append(wire.read_publish(header & 0x0F, body))
                elif kind == wire.DISCONNECT:
                    break
                self.changed.set()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def until(self, check: Callable[[], bool]) -> None:
        async with asyncio.timeout(10):
            while not check():
                self.changed.clear()
                await self.changed.wait()


def with_broker(receive_maximum: int | None, scenario: Callable[[FakeBroker, wire.MqttClient], Awaitable[Any]]
                ) -> Any:
    async def run() -> Any:
        broker = FakeBroker(receive_maximum)
        server = await asyncio.start_server(broker.serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = wire.MqttClient("127.0.0.1", port, "test-client", username=None, password=None, clean_start=False,
                                 session_expiry=60, receive_maximum=100, subscriptions=[("v1.1/#", 1)],
                                 on_message=lambda message: None)
        await client.start()
        try:
            return await scenario(broker, client)
        finally:
            await client.stop()
            server.close()
            for writer in broker.writers:
                writer.close()

    return asyncio.run(run())


def test_the_client_publishes_at_qos_1_within_the_window_and_at_qos_0_when_it_is_full(
        caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(broker: FakeBroker, client: wire.MqttClient) -> None:
        sent = [client.publish(f"v1.1/Things({i})", b"{}", user_properties=[("citystream", "notification")], qos=1)
                for i in range(5)]
        assert sent == [True] * 5
        assert client.stats.downgraded == 2
        await broker.until(lambda: len(broker.connections[0]) == 5)
        first = broker.connections[0]
        assert [(m.topic, m.qos, m.packet_id) for m in first] == [
            ("v1.1/Things(0)", 1, 2), ("v1.1/Things(1)", 1, 3), ("v1.1/Things(2)", 1, 4),
            ("v1.1/Things(3)", 0, 0), ("v1.1/Things(4)", 0, 0)]  # the window (3) is full: QoS 0, not dropped
        assert all(m.user_properties == (("citystream", "notification"),) for m in first)
        broker.writers[0].write(puback(first[1].packet_id))
        async with asyncio.timeout(10):
            while client.stats.acknowledged < 1:
                await asyncio.sleep(0.01)
        assert client.publish("v1.1/Things(9)", b"{}", qos=1)  # room again
        assert client.publish("v1.1/Things(10)", b"{}")  # QoS 0 takes no id
        await broker.until(lambda: len(first) == 7)
        assert [(m.qos, m.packet_id) for m in first[5:]] == [(1, 5), (0, 0)]
        assert client.stats.downgraded == 2

    with caplog.at_level(logging.WARNING, logger="citystream.mqtt"):
        with_broker(3, scenario)
    full = [r.getMessage() for r in caplog.records if "publishing at QoS 0" in r.getMessage()]
    assert len(full) == 1 and full[0].startswith("3 QoS 1 PUBLISHes await")  # once, not per message


def test_publishes_in_flight_are_not_sent_again_after_a_reconnect() -> None:
    async def scenario(broker: FakeBroker, client: wire.MqttClient) -> None:
        assert all(client.publish(f"v1.1/Things({i})", b"{}", qos=1) for i in range(3))
        await broker.until(lambda: len(broker.connections[0]) == 3)
        broker.writers[0].close()  # the broker drops the connection with 3 publishes unacknowledged
        async with asyncio.timeout(10):
            while client.generation < 2:
                await asyncio.sleep(0.01)
        assert client.stats.lost_in_flight == 3
        assert client.publish("v1.1/Things(3)", b"{}", qos=1)  # a fresh window: the full one of the broker
        await broker.until(lambda: len(broker.connections) == 2 and len(broker.connections[1]) == 1)
        await asyncio.sleep(0.1)
        assert [m.topic for m in broker.connections[1]] == ["v1.1/Things(3)"]

    with_broker(3, scenario)


def test_without_a_connection_publish_returns_false_and_counts() -> None:
    async def run() -> wire.PublishStats:
        client = wire.MqttClient("127.0.0.1", 9, "x", username=None, password=None, clean_start=True,
                                 session_expiry=0, receive_maximum=10, subscriptions=[], on_message=lambda m: None)
        assert not client.publish("t", b"", qos=1) and not client.publish("t", b"")
        return client.stats

    assert asyncio.run(run()).not_connected == 2


def test_qos_2_is_refused() -> None:
    async def scenario(broker: FakeBroker, client: wire.MqttClient) -> None:
        with pytest.raises(ValueError, match="QoS 0 or 1"):
            client.publish("t", b"", qos=2)

    with_broker(None, scenario)
