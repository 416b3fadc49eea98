"""The bridge's MQTT 5 framing (mqtt_bridge/wire.py) against packets built by paho, a client we did not
write, plus framing edge cases. The integration tests (test_mqtt_bridge, test_mqtt_delivery) run it against
Mosquitto."""

from __future__ import annotations

import asyncio
import struct

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from mqtt_bridge import wire


def paho_publish_body(topic: str, payload: bytes, qos: int, packet_id: int, properties: Properties | None
                      ) -> bytes:
    body = struct.pack("!H", len(topic)) + topic.encode()
    if qos:
        body += struct.pack("!H", packet_id)
    body += properties.pack() if properties is not None else b"\x00"
    return body + payload


def test_publish_with_properties_is_read_as_paho_wrote_it() -> None:
    properties = Properties(PacketTypes.PUBLISH)
    properties.UserProperty = [("client_id", "meter-7"), ("citystream", "notification")]
    properties.ResponseTopic = "citystream/errors/meter-7"
    properties.CorrelationData = b"\x00\x01req"
    properties.MessageExpiryInterval = 60
    body = paho_publish_body("v1.1/Observations", b'{"result": 1}', 1, 4711, properties)
    message = wire.read_publish(0x02 | 0x08, body)
    assert (message.topic, message.payload, message.qos, message.packet_id, message.dup) == (
        "v1.1/Observations", b'{"result": 1}', 1, 4711, True)
    assert message.user_properties == (("client_id", "meter-7"), ("citystream", "notification"))
    assert message.properties["response_topic"] == "citystream/errors/meter-7"
    assert message.properties["correlation_data"] == b"\x00\x01req"
    assert message.properties["message_expiry"] == 60


def test_our_publish_packet_round_trips() -> None:
    packet = wire.publish_packet("v1.1/Things(1)", b"{}", user_properties=[("citystream", "notification")],
                                 correlation_data=b"abc")
    assert packet[0] >> 4 == wire.PUBLISH
    length, start = wire._read_varint(packet, 1)
    assert start + length == len(packet)
    message = wire.read_publish(packet[0] & 0x0F, packet[start:])
    assert message.qos == 0 and message.topic == "v1.1/Things(1)" and message.payload == b"{}"
    assert message.user_properties == (("citystream", "notification"),)
    assert message.properties["correlation_data"] == b"abc"


def test_a_property_block_is_read_once_and_shared_read_only() -> None:
    """The broker stamps every create of one client with the same properties: read once, then shared."""
    stamped = Properties(PacketTypes.PUBLISH)
    stamped.UserProperty = [("citystream-client-id", "meter-7")]
    first = wire.read_publish(0x02, paho_publish_body("t", b"1", 1, 1, stamped))
    second = wire.read_publish(0x02, paho_publish_body("t", b"2", 1, 2, stamped))
    assert first.properties is second.properties and second.payload == b"2"
    with pytest.raises(TypeError):
        first.properties["user_property"] = ()  # type: ignore[index]
    other = Properties(PacketTypes.PUBLISH)
    other.UserProperty = [("citystream-client-id", "meter-8")]
    third = wire.read_publish(0x02, paho_publish_body("t", b"3", 1, 3, other))
    assert third.user_properties == (("citystream-client-id", "meter-8"),)


def test_the_property_cache_is_bounded() -> None:
    for n in range(wire.PROPERTY_CACHE_SIZE + 10):
        properties = Properties(PacketTypes.PUBLISH)
        properties.UserProperty = [("k", str(n))]
        message = wire.read_publish(0x02, paho_publish_body("t", b"x", 1, 1, properties))
        assert message.user_properties == (("k", str(n)),)
    assert len(wire._PROPERTY_CACHE) <= wire.PROPERTY_CACHE_SIZE


@pytest.mark.parametrize("value", [0, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, wire.MAX_REMAINING_LENGTH])
def test_variable_byte_integers_round_trip(value: int) -> None:
    encoded = wire._varint(value)
    assert len(encoded) <= 4
    assert wire._read_varint(encoded, 0) == (value, len(encoded))


def test_packets_split_across_reads_are_framed_once_complete() -> None:
    async def run() -> list[wire.Message]:
        received: list[wire.Message] = []
        protocol = wire.MqttProtocol(received.append)
        stream = b"".join(wire.publish_packet(f"v1.1/Datastreams({i})/Observations", b"x" * (i * 50))
                          for i in range(1, 6))
        for i in range(0, len(stream), 7):  # in 7-byte pieces
            protocol.data_received(stream[i:i + 7])
        return received

    received = asyncio.run(run())
    assert [m.topic for m in received] == [f"v1.1/Datastreams({i})/Observations" for i in range(1, 6)]
    assert [len(m.payload) for m in received] == [50, 100, 150, 200, 250]


def test_pubacks_of_a_batch_are_one_write_of_short_form_packets() -> None:
    assert wire.puback_packets([1, 65535]) == bytes([0x40, 2, 0, 1, 0x40, 2, 0xFF, 0xFF])


@pytest.mark.parametrize(("properties", "reason"), [
    (b"\x02\x7f\x00", "cannot be read"),  # property 0x7f does not exist
    (b"\x05\x26\x00\x10ab", "cannot be read"),  # a user property whose key runs past the end
    (b"\x40\x03\x00\x64ab", "run past"),  # 64 bytes of properties in a packet of fewer
])
def test_a_publish_with_unreadable_properties_is_handed_on_to_be_dead_lettered(properties: bytes,
                                                                              reason: str) -> None:
    """Before, it dropped the connection: the broker sent the same message again, for ever."""
    body = struct.pack("!H", 17) + b"v1.1/Observations" + struct.pack("!H", 99) + properties + b'{"result": 1}'
    message = wire.read_publish(0x02, body)
    assert (message.topic, message.qos, message.packet_id) == ("v1.1/Observations", 1, 99)
    assert message.unreadable is not None and reason in message.unreadable
    assert message.payload == properties + b'{"result": 1}'  # the evidence


def test_text_that_is_not_utf8_is_read_with_replacement_characters() -> None:
    properties = b"\x0a\x26\x00\x02k\xff\x00\x03v\xfe1"
    body = struct.pack("!H", 4) + b"t/\xffx" + properties + b"{}"
    message = wire.read_publish(0x00, body)
    assert message.unreadable is None and message.topic == "t/\ufffdx"
    assert message.user_properties == (("k\ufffd", "v\ufffd1"),)


def test_a_failing_message_handler_keeps_the_connection() -> None:
    async def run() -> tuple[list[str], bool]:
        seen: list[str] = []

        def handler(message: wire.Message) -> None:
            seen.append(message.topic)
            if message.topic == "boom":
                raise RuntimeError("a bug")

        protocol = wire.MqttProtocol(handler)

        class Transport:
            closed = False

            def close(self) -> None:
                self.closed = True

        transport = Transport()
        protocol.transport = transport  # type: ignore[assignment]
        protocol.data_received(wire.publish_packet("boom", b"1") + wire.publish_packet("next", b"2"))
        return seen, transport.closed

    seen, closed = asyncio.run(run())
    assert seen == ["boom", "next"] and not closed
