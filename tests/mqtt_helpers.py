"""MQTT helpers for the bridge tests: external clients (mosquitto_pub) and a paho subscriber that records
what arrives, with polling helpers instead of fixed sleeps."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from citystream.embedded import EmbeddedMosquitto
from tests.sta_helpers import HTTP

T = TypeVar("T")


def wait_for(check: Callable[[], T], timeout: float = 15.0, what: str = "condition") -> T:
    """Poll `check` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; last value {result!r}")
        time.sleep(0.05)


def mosquitto_pub(broker: EmbeddedMosquitto, topic: str, payload: str | bytes, qos: int = 1,
                  extra: tuple[str, ...] = ()) -> None:
    """Publish as the sensor account with the C client (an external client we did not write)."""
    args = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-V", "mqttv5", "-q", str(qos),
            "-u", broker.sensor_username, "-P", broker.sensor_password, "-t", topic, "-s", *extra]
    data = payload.encode() if isinstance(payload, str) else payload
    subprocess.run(args, input=data, check=True, timeout=30)


@dataclass
class Received:
    topic: str
    payload: bytes
    user_properties: list[tuple[str, str]]

    def json(self) -> Any:
        return orjson.loads(self.payload)


@dataclass
class Subscriber:
    """A paho MQTT 5 client that records every message on its topics."""

    broker: EmbeddedMosquitto
    topics: list[str]
    username: str | None = None
    password: str | None = None
    messages: list[Received] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> Subscriber:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        if self.username:
            self.client.username_pw_set(self.username, self.password)
        subscribed = threading.Event()
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.connect("127.0.0.1", self.broker.port)
        self.client.loop_start()
        self.client.subscribe([(t, 1) for t in self.topics])
        if not subscribed.wait(10):
            raise AssertionError("no SUBACK")
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        props = getattr(message.properties, "UserProperty", None) or []
        with self._lock:
            self.messages.append(Received(message.topic, message.payload, list(props)))

    def on(self, topic: str, notifications_only: bool = True) -> list[Received]:
        with self._lock:
            return [m for m in self.messages if m.topic == topic
                    and (not notifications_only or ("citystream", "notification") in m.user_properties)]


def wait_until_learned(server_url: str, *filters: str, admin: dict[str, str] | None = None) -> None:
    """Notifications go only to topics the platform knows have subscribers (learned from the broker log).
    `admin`: the headers of an admin credential (default: the tests' operator token)."""
    def learned() -> bool:
        response = HTTP.get(f"{server_url}/admin/subscriptions", timeout=10, headers=admin)
        known = set(response.json()["value"])
        return set(filters) <= known
    wait_for(learned, what=f"the platform to learn the subscriptions {filters}")


def publish_with_properties(broker: EmbeddedMosquitto, topic: str, payload: bytes, *,
                            response_topic: str | None = None, correlation: bytes | None = None) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.username_pw_set(broker.sensor_username, broker.sensor_password)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    properties = Properties(PacketTypes.PUBLISH)
    if response_topic:
        properties.ResponseTopic = response_topic
    if correlation:
        properties.CorrelationData = correlation
    client.publish(topic, payload, qos=1, properties=properties).wait_for_publish(10)
    client.disconnect()
    client.loop_stop()
