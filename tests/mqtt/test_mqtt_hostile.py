"""Poison MQTT messages (issue 13, item 2): a payload nested 5,000 deep crashed the bridge's connection
handler, so the broker redelivered it for ever (even across restarts) with duplicates of committed
neighbours; raw surrogate bytes failed a whole batch (0 of 20 neighbours stored, no dead letter). Every bad
message must be dead-lettered and acknowledged alone, its neighbours stored once, the bridge alive."""

from __future__ import annotations

import subprocess
import time

import httpx
import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from citystream.embedded import EmbeddedMosquitto
from tests.mqtt.test_mqtt_bridge import dead_letters
from tests.mqtt_helpers import wait_for
from tests.sta_helpers import create_datastream, values

POISON = {
    "nested 5000": b'{"result": 1, "parameters": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    "nested 1100": b'{"result": 1, "parameters": ' + b'{"a": ' * 1100 + b"1" + b"}" * 1100 + b"}",
    "nested 101": b'{"result": 1, "parameters": ' + b"[" * 101 + b"]" * 101 + b"}",
    "raw surrogate": b'{"result": 1, "parameters": {"x": "\xed\xa0\x80"}}',
    "raw surrogate result": b'{"result": "\xed\xa0\x80"}',
    "latin-1": b'{"result": "gr\xfcn"}',
    "huge integer": b'{"result": ' + b"9" * 5000 + b"}",
    "NaN": b'{"result": NaN}',
    "huge exponent": b'{"result": 1, "parameters": {"a": 1e99999999999999999999}}',
    "escaped NUL": b'{"result": "a\\u0000b"}',
}
REASONS = {"nested 5000": "nested", "nested 1100": "nested", "nested 101": "nested", "raw surrogate": "UTF-8",
           "raw surrogate result": "UTF-8", "latin-1": "UTF-8", "huge integer": "digits", "NaN": "NaN",
           "huge exponent": "out of range",
           "escaped NUL": "NUL"}


def publish_lines(broker: EmbeddedMosquitto, topic: str, lines: list[bytes]) -> None:
    """One mosquitto_pub connection, one message per line, QoS 1: the messages share ingest batches."""
    args = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-V", "mqttv5", "-q", "1",
            "-u", broker.sensor_username, "-P", broker.sensor_password, "-t", topic, "-l"]
    subprocess.run(args, input=b"\n".join(lines) + b"\n", check=True, timeout=60)


def rejected_count(server_url: str) -> float:
    for line in httpx.get(f"{server_url}/metrics", timeout=10).text.splitlines():
        if line.startswith('citystream_ingest_rejected_total{source="mqtt"}'):
            return float(line.split()[-1])
    return 0.0


def test_poison_messages_among_good_ones(sta: str, server_url: str, mosquitto_server: EmbeddedMosquitto) -> None:
    datastream = create_datastream(sta)
    rejected_before = rejected_count(server_url)
    lines: list[bytes] = []
    for n, payload in enumerate(POISON.values()):
        lines += [orjson.dumps({"result": 2 * n}), payload, orjson.dumps({"result": 2 * n + 1})]
    publish_lines(mosquitto_server, f"v1.1/Datastreams({datastream})/Observations", lines)

    def stored() -> list[int]:
        return sorted(o["result"] for o in values(sta, "Observations", **{"$top": 1000}))

    wait_for(lambda: len(dead_letters(server_url)) == len(POISON), what=f"{len(POISON)} dead letters")
    assert wait_for(lambda: len(stored()) == 2 * len(POISON) and stored()) == list(range(2 * len(POISON)))
    letters = {letter["payloadBytes"]: letter["reason"] for letter in dead_letters(server_url)}
    for name, payload in POISON.items():
        assert REASONS[name].lower() in letters[len(payload)].lower(), (name, letters[len(payload)])
    assert rejected_count(server_url) - rejected_before == len(POISON)

    # acknowledged once: no redelivery, no duplicates of the neighbours; the bridge still takes messages
    publish_lines(mosquitto_server, f"v1.1/Datastreams({datastream})/Observations", [b'{"result": 100}'])
    wait_for(lambda: 100 in stored(), what="a message published after the poison")
    time.sleep(1.0)
    assert len(dead_letters(server_url)) == len(POISON)
    assert stored() == [*range(2 * len(POISON)), 100]


def test_a_response_topic_with_a_wildcard_does_not_loop_the_bridge(
        sta: str, server_url: str, mosquitto_server: EmbeddedMosquitto) -> None:
    """The bridge published its error report to the device's response topic `replies/#`; the broker ends
    the connection of a client that publishes to a wildcard, the batch's PUBACKs (sent after the report)
    were lost, and the window came back, to be stored again, for ever. Reports outside
    citystream/errors/ are not sent now, and the PUBACKs go first."""
    datastream = create_datastream(sta)
    topic = f"v1.1/Datastreams({datastream})/Observations"
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.username_pw_set(mosquitto_server.sensor_username, mosquitto_server.sensor_password)
    client.connect("127.0.0.1", mosquitto_server.port)
    client.loop_start()
    try:
        for n in range(5):
            client.publish(topic, orjson.dumps({"result": n}), qos=1).wait_for_publish(10)
        for reply in ("replies/#", "citystream/errors/+", "v1.1/Things(1)"):
            properties = Properties(PacketTypes.PUBLISH)
            properties.ResponseTopic = reply
            client.publish(topic, b'{"result": 1, "bad": ', qos=1, properties=properties).wait_for_publish(10)
        for n in range(5, 10):
            client.publish(topic, orjson.dumps({"result": n}), qos=1).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()

    def stored() -> list[int]:
        return sorted(o["result"] for o in values(sta, "Observations", **{"$top": 1000}))

    wait_for(lambda: len(stored()) == 10, what="the 10 good messages")
    time.sleep(2.0)
    assert stored() == list(range(10))
    assert len(dead_letters(server_url)) == 3
