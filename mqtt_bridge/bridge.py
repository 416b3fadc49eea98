"""MQTT in and out for one platform process: creates over MQTT (STA §14.2) into the ingest pipeline, STA
notifications (§14.1) out, and the broker log that says which notification topics have subscribers.

Delivery guarantee (README "MQTT"): at-least-once for QoS 1. The bridge holds a persistent session (clean
start off, session expiry set) and acknowledges a message (PUBACK) only after the batch holding it is
committed — dead letter included for a payload that cannot be stored. If the bridge dies, the broker keeps
every unacknowledged message in the session and redelivers it; messages committed but not yet acknowledged
at the moment of the crash are stored again. Duplicates are therefore bounded by the in-flight window
(`receive_maximum`) per crash. QoS 0 is at-most-once, as MQTT defines it.

The MQTT client is gmqtt: `benchmarks/mqtt_clients.py` measured it receiving 2-3x faster than paho-mqtt on
this class of machine, and its `optimistic_acknowledgement=False` mode sends PUBACK only when our
handler returns, which is exactly acknowledge-after-commit.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson
from gmqtt import Client, Subscription
from gmqtt.mqtt.constants import MQTTv50

from ingest.pipeline import IngestPipeline
from ingest.rows import Origin, parse_observation
from ingest.store import Item
from mqtt_bridge.notifier import NOTIFICATION_PROPERTY, Notifier
from mqtt_bridge.subscriptions import LOG_FILTERS, SubscriptionRegistry
from mqtt_bridge.topics import CREATE_FILTERS, create_target, error_topic
from sensorthings.errors import StaError
from sensorthings.fields import parse_request_json

log = logging.getLogger("citystream.bridge")
ERROR_EXCERPT_CHARS = 256


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None = None
    password: str | None = None

    @classmethod
    def from_url(cls, url: str) -> BrokerAddress:
        """mqtt://[user[:password]@]host[:port]"""
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "tcp") or not parts.hostname:
            raise ValueError(f"MQTT URL {url!r} must look like mqtt://user:password@host:1883")
        return cls(parts.hostname, parts.port or 1883,
                   unquote(parts.username) if parts.username else None,
                   unquote(parts.password) if parts.password else None)


@dataclass(frozen=True)
class BridgeConfig:
    client_id: str = "citystream-bridge"
    ingest: bool = True
    """Subscribe to the create topics; False: notifications only."""
    shared_group: str | None = "citystream"
    """MQTT 5 shared subscription group, so that several bridge processes share one stream."""
    max_payload_bytes: int = 64 * 1024
    receive_maximum: int = 20_000
    """Unacknowledged QoS 1 messages the broker may send us: throughput is at most this / commit latency."""
    session_expiry_s: int = 7 * 24 * 3600


def _user_property(properties: dict[str, Any], name: str) -> str | None:
    for key, value in properties.get("user_property") or ():
        if key == name:
            return str(value)
    return None


class Bridge:
    def __init__(self, broker: BrokerAddress, pipeline: IngestPipeline, notifier: Notifier,
                 config: BridgeConfig) -> None:
        self.broker = broker
        self.pipeline = pipeline
        self.notifier = notifier
        self.registry: SubscriptionRegistry = notifier.registry
        self.registry.ignored_clients.add(config.client_id)
        self.config = config
        self._closing = False
        self._notify_task: asyncio.Task[None] | None = None
        self.client = Client(
            config.client_id,
            clean_session=not config.ingest,
            optimistic_acknowledgement=False,
            session_expiry_interval=config.session_expiry_s if config.ingest else 0,
            receive_maximum=config.receive_maximum,
        )
        if broker.username:
            self.client.set_auth_credentials(broker.username, broker.password)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message

    async def start(self) -> None:
        await self.client.connect(self.broker.host, self.broker.port, version=MQTTv50, keepalive=30)
        self.notifier.publish = self._publish_notification
        self._notify_task = asyncio.create_task(self.notifier.run(), name="mqtt-notifier")

    async def stop(self) -> None:
        """Stop taking new messages (they stay with the broker), let the pipeline commit and acknowledge
        what it holds, then disconnect; the persistent session keeps whatever arrives meanwhile."""
        self._closing = True
        await self.pipeline.stop()
        await asyncio.sleep(0.05)  # let the last PUBACKs leave
        if self._notify_task is not None:
            self._notify_task.cancel()
        await self.client.disconnect()

    def _on_connect(self, client: Client, flags: int, rc: int, properties: dict[str, Any]) -> None:
        subscriptions = [Subscription(f, qos=0) for f in LOG_FILTERS]
        if self.config.ingest:
            shared = f"$share/{self.config.shared_group}/" if self.config.shared_group else ""
            subscriptions += [Subscription(shared + f, qos=1) for f in CREATE_FILTERS]
        client.subscribe(subscriptions)

    async def _on_message(self, client: Client, topic: str, payload: bytes, qos: int,
                          properties: dict[str, Any]) -> int:
        """Returns the PUBACK reason code (0), after commit. Raising leaves the message unacknowledged, so
        the broker redelivers it after the next connect."""
        if topic.startswith("$SYS/"):
            self.registry.handle_log(topic, payload)
            return 0
        if tuple(NOTIFICATION_PROPERTY) in {tuple(p) for p in properties.get("user_property") or ()}:
            return 0
        if self._closing:
            raise RuntimeError("bridge is stopping; the broker will redeliver this message")
        item = await self.pipeline.submit(self._item(topic, payload, properties), "mqtt")
        if item.reason is not None:
            self._report(topic, payload, item.reason, properties)
        return 0

    def _item(self, topic: str, payload: bytes, properties: dict[str, Any]) -> Item:
        origin = Origin(topic, payload, _user_property(properties, "client_id"))
        if len(payload) > self.config.max_payload_bytes:
            return Item(None, origin, f"the payload of {len(payload)} bytes exceeds the limit of "
                                      f"{self.config.max_payload_bytes} bytes")
        try:
            datastream_id, feature_id = create_target(topic)
            body = parse_request_json(payload)
            row = parse_observation(body, datastream_id=datastream_id, feature_id=feature_id,
                                    now=datetime.now(UTC), where="payload")
        except StaError as exc:
            return Item(None, origin, exc.message)
        return Item(row, origin)

    def _report(self, topic: str, payload: bytes, reason: str, properties: dict[str, Any]) -> None:
        """Tell the device: on citystream/errors/<topic>, and on its MQTT 5 response topic if it gave one."""
        excerpt = payload[:ERROR_EXCERPT_CHARS].decode("utf-8", "replace")
        body = orjson.dumps({"code": 400, "type": "error", "message": reason, "topic": topic, "payload": excerpt})
        self.client.publish(error_topic(topic), body, qos=1)
        response_topics = properties.get("response_topic") or ()
        correlation = properties.get("correlation_data") or ()
        for response_topic in response_topics:
            extra = {"correlation_data": correlation[0]} if correlation else {}
            self.client.publish(response_topic, body, qos=1, **extra)

    def _publish_notification(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=0, user_property=[NOTIFICATION_PROPERTY])
