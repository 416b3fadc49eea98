"""STA notifications at the subscriber's QoS (docs/mqtt.md, "Subscriptions"): the platform publishes them at
QoS 1 and never retained, so Mosquitto delivers each at the lower of that and the subscription's QoS, and
queues QoS 1 ones for a persistent session while its client is away. Against the real app, Mosquitto (its
generated config and plugin) and PostgreSQL, with paho (a client we did not write) as the subscriber,
speaking MQTT 5 and 3.1.1; Observations are created over HTTP."""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from citystream.embedded import EmbeddedMosquitto
from tests.mqtt_helpers import wait_for, wait_until_learned
from tests.sta_helpers import create_datastream, create_observation

SESSION_EXPIRY_S = 600
MISSED = 5


@dataclass
class Delivery:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    user_properties: list[tuple[str, str]]

    def json(self) -> Any:
        return orjson.loads(self.payload)


@dataclass
class Device:
    """One paho connection (anonymous: it may read v1.x/#). `persistent`: MQTT 5 with clean start off and a
    session expiry, or MQTT 3.1.1 with clean session off; else a clean session that ends with the connection.
    A new Device with the same client id is the same device back after a restart: paho's in-memory state is
    gone, the broker's session is not."""

    broker: EmbeddedMosquitto
    client_id: str
    version: MQTTProtocolVersion = mqtt.MQTTv5
    persistent: bool = False
    received: list[Delivery] = field(default_factory=list)
    session_present: bool | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        clean_session = None if self.version == mqtt.MQTTv5 else not self.persistent
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=self.version,
                                  clean_session=clean_session)
        self.client.on_message = self._on_message
        self._connected = threading.Event()
        self._subacks: dict[int, list[int]] = {}
        self._subscribed = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe

    def connect(self) -> Device:
        if self.version == mqtt.MQTTv5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = SESSION_EXPIRY_S if self.persistent else 0
            self.client.connect("127.0.0.1", self.broker.port, clean_start=not self.persistent,
                                properties=properties)
        else:
            self.client.connect("127.0.0.1", self.broker.port)
        self.client.loop_start()
        assert self._connected.wait(10), f"{self.client_id}: no CONNACK"
        return self

    def subscribe(self, topic: str, qos: int) -> int:
        """Subscribe and wait for the SUBACK; the granted QoS."""
        _, mid = self.client.subscribe(topic, qos)
        assert mid is not None
        with self._subscribed:
            assert self._subscribed.wait_for(lambda: mid in self._subacks, 10), f"{self.client_id}: no SUBACK"
            return self._subacks[mid][0]

    def disconnect(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def notifications(self, topic: str) -> list[Delivery]:
        with self._lock:
            return [d for d in self.received if d.topic == topic]

    def wait_for_notifications(self, topic: str, n: int, what: str) -> list[Delivery]:
        """The first `n` notifications on `topic`, once they are there."""
        wait_for(lambda: len(self.notifications(topic)) >= n, what=what)
        return self.notifications(topic)[:n]

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
                    ) -> None:
        self.session_present = bool(flags.session_present)
        self._connected.set()

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any
                      ) -> None:
        with self._subscribed:
            self._subacks[mid] = [code.value for code in reason_codes]
            self._subscribed.notify_all()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        props = getattr(message.properties, "UserProperty", None) or []
        with self._lock:
            self.received.append(Delivery(message.topic, bytes(message.payload), message.qos, bool(message.retain),
                                          list(props)))


def end_session(broker: EmbeddedMosquitto, client_id: str, version: MQTTProtocolVersion) -> None:
    """Connect once with a clean session, so that the broker forgets the persistent one (and its queue)."""
    Device(broker, client_id, version).connect().disconnect()


def assert_is_the_entity(delivery: Delivery, version: MQTTProtocolVersion) -> dict[str, Any]:
    body = delivery.json()
    assert body == httpx.get(body["@iot.selfLink"], timeout=10).json()
    assert not delivery.retain
    if version == mqtt.MQTTv5:
        assert ("citystream", "notification") in delivery.user_properties
    return dict(body)


@pytest.mark.parametrize("version", [mqtt.MQTTv5, mqtt.MQTTv311], ids=["mqtt5", "mqtt311"])
def test_a_persistent_qos1_subscriber_gets_what_was_published_while_it_was_away(
        sta: str, server_url: str, mosquitto_server: EmbeddedMosquitto, version: MQTTProtocolVersion) -> None:
    datastream = create_datastream(sta)
    topic = f"v1.1/Datastreams({datastream})/Observations"
    client_id = f"qos1-away-{uuid.uuid4().hex[:8]}"
    device = Device(mosquitto_server, client_id, version, persistent=True).connect()
    witness = Device(mosquitto_server, f"qos0-witness-{uuid.uuid4().hex[:8]}").connect()  # stays online
    try:
        assert device.session_present is False
        assert device.subscribe(topic, 1) == 1
        assert witness.subscribe(topic, 0) == 0
        wait_until_learned(server_url, topic)
        device.disconnect()

        created = [create_observation(sta, datastream, i, f"2026-12-01T10:{i:02d}:00Z") for i in range(MISSED)]
        # published while the device was away: the online witness has them all (at its QoS, 0)
        live = witness.wait_for_notifications(topic, MISSED, f"{MISSED} notifications at the QoS 0 witness")
        assert [d.json()["@iot.id"] for d in live] == created
        assert {d.qos for d in live} == {0}

        back = Device(mosquitto_server, client_id, version, persistent=True).connect()
        try:
            assert back.session_present is True
            missed = back.wait_for_notifications(topic, MISSED, f"the {MISSED} notifications queued for the session")
            assert [d.json()["@iot.id"] for d in missed] == created  # every one, once, in order
            assert {d.qos for d in missed} == {1}
            for delivery in missed:
                assert_is_the_entity(delivery, version)
            assert [d.payload for d in missed] == [d.payload for d in live]

            later = create_observation(sta, datastream, 99, "2026-12-01T11:00:00Z")  # and live again, at QoS 1
            now = back.wait_for_notifications(topic, MISSED + 1, "the live notification")[-1]
            assert (now.json()["@iot.id"], now.qos) == (later, 1)
        finally:
            back.disconnect()
    finally:
        witness.disconnect()
        end_session(mosquitto_server, client_id, version)


@pytest.mark.parametrize("version", [mqtt.MQTTv5, mqtt.MQTTv311], ids=["mqtt5", "mqtt311"])
def test_each_subscriber_gets_the_lower_of_its_qos_and_the_platforms_and_nothing_is_retained(
        sta: str, server_url: str, mosquitto_server: EmbeddedMosquitto, version: MQTTProtocolVersion) -> None:
    datastream = create_datastream(sta)
    topic = f"v1.1/Datastreams({datastream})/Observations"
    devices = {qos: Device(mosquitto_server, f"qos{qos}-{uuid.uuid4().hex[:8]}", version).connect()
               for qos in (0, 1, 2)}
    try:
        assert {qos: d.subscribe(topic, qos) for qos, d in devices.items()} == {0: 0, 1: 1, 2: 2}
        wait_until_learned(server_url, topic)
        observation = create_observation(sta, datastream, 7.5)
        for qos, device in devices.items():
            (delivery,) = device.wait_for_notifications(topic, 1, f"the notification at QoS {qos}")
            assert len(device.notifications(topic)) == 1, qos
            assert delivery.qos == min(qos, 1), qos
            assert assert_is_the_entity(delivery, version)["@iot.id"] == observation
    finally:
        for device in devices.values():
            device.disconnect()

    late = Device(mosquitto_server, f"late-{uuid.uuid4().hex[:8]}", version).connect()
    try:
        assert late.subscribe(topic, 1) == 1
        # a second SUBACK: the broker sends retained messages of the first subscription before it
        late.subscribe(f"v1.1/Datastreams({datastream})", 1)
        assert late.received == []
    finally:
        late.disconnect()
