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
    assert message.user_properties == [("client_id", "meter-7"), ("citystream", "notification")]
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
    assert message.user_properties == [("citystream", "notification")]
    assert message.properties["correlation_data"] == b"abc"


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
