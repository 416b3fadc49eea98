"""MQTT in and out for one platform process: creates over MQTT (STA §14.2) into the ingest pipeline, STA
notifications (§14.1) out, and the broker log that says which notification topics have subscribers.

Delivery guarantee (docs/mqtt.md, "Real-time MQTT"): at-least-once for QoS 1. The bridge holds a persistent
session (clean start off, session expiry set) and acknowledges a message (PUBACK) only after the batch
holding it is committed — dead letter included for a payload that cannot be stored. If the bridge dies, the
broker keeps every unacknowledged message in the session and redelivers it; messages committed but not yet
acknowledged at the moment of the crash are stored again. Duplicates are therefore bounded by the in-flight
window (`receive_maximum`) per crash. QoS 0 is at-most-once, as MQTT defines it.

Messages are handled without a task or future each (see wire.py for why): `_on_message` validates and
offers the item to the pipeline; `_completed` runs after commit and collects PUBACKs, which go out in one
write per batch, and only on the connection that delivered them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import orjson
from prometheus_client import REGISTRY, Counter
from prometheus_client.core import CounterMetricFamily

from ingest.pipeline import IngestPipeline
from ingest.rows import Origin, parse_observation
from ingest.store import Item
from mqtt_bridge import identity
from mqtt_bridge.address import BrokerAddress
from mqtt_bridge.notifier import DROPPED, NOTIFICATION_PROPERTY, Notifier
from mqtt_bridge.subscriptions import LOG_FILTERS, SubscriptionRegistry
from mqtt_bridge.topics import ERROR_PREFIX, INGEST_FILTERS, INGEST_PREFIX, create_target, error_topic
from mqtt_bridge.wire import Message, MqttClient
from sensorthings.model.access import Principal, from_description
from sensorthings.model.errors import StaError
from sensorthings.model.json_values import parse_observation_json

log = logging.getLogger("citystream.bridge")
ERROR_EXCERPT_CHARS = 256


@dataclass(frozen=True)
class BridgeConfig:
    client_id: str = identity.CLIENT_ID
    ingest: bool = True
    """Subscribe to the create topics; False: notifications only."""
    shared_group: str | None = identity.SHARED_GROUP
    """MQTT 5 shared subscription group, so that several bridge processes share one stream."""
    max_payload_bytes: int = 64 * 1024
    receive_maximum: int = 20_000
    """Unacknowledged QoS 1 messages the broker may send us: throughput is at most this / commit latency."""
    session_expiry_s: int = 7 * 24 * 3600


class _RateLimitedLog:
    """Logs at most `per_second` records a second and counts the rest into the next one: one record per
    dead letter is what an operator wants, until a flood of bad messages would flood the log too."""

    def __init__(self, per_second: int = 20) -> None:
        self.per_second = per_second
        self._second = 0
        self._logged = 0
        self._skipped = 0

    def warning(self, message: str, *, exc_info: bool = False, **fields: object) -> None:
        second = int(asyncio.get_running_loop().time())
        if second != self._second:
            self._second, self._logged = second, 0
        if self._logged >= self.per_second:
            self._skipped += 1
            return
        self._logged += 1
        if self._skipped:
            fields["not_logged_before"] = self._skipped
            self._skipped = 0
        log.warning(message, exc_info=exc_info, extra=fields)


PRINCIPAL_PROPERTY = "citystream-principal"
"""The user property the broker's plugin stamps on a create: its publisher, as the platform described it."""
CLIENT_PROPERTY = "citystream-client-id"
"""The user property the broker's plugin stamps on a create: the publisher's client id."""
AUDIENCE_PROPERTY = "citystream-audience"
"""Who may read a message the platform publishes (the plugin checks it on every delivery)."""
PLUGIN_TOPIC = "$SYS/broker/citystream/plugin"
"""Where the plugin publishes its counters every 2 s: while they arrive, audiences are enforced."""
PLUGIN_SILENCE_S = 10.0
"""How long after the plugin's last report restricted notifications are still published."""
FORBIDDEN = Counter("citystream_mqtt_forbidden_creates", "MQTT creates refused by the bridge: the publisher "
                    "may not create in the body's stream")


@functools.lru_cache(maxsize=1024)
def _stamps(user_properties: Sequence[tuple[str, str]]) -> tuple[str | None, Principal | None]:
    """The client id and the publisher the broker's plugin stamped on a create. Cached by the message's
    user properties (a tuple, the same for every create of one client): read once per client, not per
    message."""
    stamped = dict(user_properties)
    stamp = stamped.get(PRINCIPAL_PROPERTY)
    publisher = None
    if stamp is not None:
        try:
            publisher = from_description(stamp)
        except ValueError:
            publisher = None
    return stamped.get(CLIENT_PROPERTY), publisher


class _PluginCounters:
    """/metrics: the refusals the broker's plugin counted (its latest report; it counts from its start)."""

    latest: dict[str, int] = {}

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("citystream_mqtt_broker_refusals", "Refusals by the broker's plugin, by "
                                     "what was refused (deliveries: notifications withheld from a subscriber)",
                                     labels=["action"])
        for action, key in (("connect", "connect_refused"), ("subscribe", "subscribe_refused"),
                            ("publish", "publish_refused"), ("delivery", "delivery_withheld"),
                            ("disconnect", "disconnected")):
            family.add_metric([action], self.latest.get(key, 0))
        yield family


PLUGIN_COUNTERS = _PluginCounters()
REGISTRY.register(PLUGIN_COUNTERS)


MAX_REPLY_TOPIC_CHARS = 512


def reply_topic(requested: object) -> str | None:
    """The response topic a device asked for, if the bridge may publish there: under citystream/errors/
    (which devices may read, and nothing else listens on), a topic name without wildcards. The platform
    account may publish anywhere; without this a device could have it publish on any topic (a forged
    notification, say), or on `replies/#`, a PUBLISH the broker answers by ending the connection."""
    if not isinstance(requested, str) or not requested.startswith(ERROR_PREFIX):
        return None
    if len(requested) > MAX_REPLY_TOPIC_CHARS or any(c in requested for c in "+#\0"):
        return None
    return requested


class Bridge:
    def __init__(self, broker: BrokerAddress, pipeline: IngestPipeline, notifier: Notifier,
                 config: BridgeConfig) -> None:
        if broker.tls:
            raise ValueError(f"the bridge connects without TLS; give it a plain listener, not {broker.url}")
        self.broker = broker
        self.pipeline = pipeline
        self.notifier = notifier
        self.registry: SubscriptionRegistry = notifier.registry
        self.registry.ignored_clients.add(config.client_id)
        self.config = config
        subscriptions = [(f, 0) for f in (*LOG_FILTERS, PLUGIN_TOPIC)]
        if config.ingest:
            shared = f"$share/{config.shared_group}/" if config.shared_group else ""
            subscriptions += [(shared + f, 1) for f in INGEST_FILTERS]
        self.client = MqttClient(
            broker.host, broker.port, config.client_id, username=broker.username, password=broker.password,
            clean_start=not config.ingest, session_expiry=config.session_expiry_s if config.ingest else 0,
            receive_maximum=config.receive_maximum, subscriptions=subscriptions, on_message=self._on_message)
        self._closing = False
        self._overflow: deque[Item] = deque()
        self._draining: asyncio.Task[None] | None = None
        self._acks: dict[int, list[int]] = {}
        self._reports: list[tuple[Item, str]] = []
        self._flush_scheduled = False
        self._notify_task: asyncio.Task[None] | None = None
        self._dead_letters = _RateLimitedLog()
        self._plugin_seen = -PLUGIN_SILENCE_S

    async def start(self) -> None:
        await self.client.start()
        self.notifier.publish = self._publish_notification
        self.notifier.audiences_enforced = self.audiences_enforced
        self._notify_task = asyncio.create_task(self.notifier.run(), name="mqtt-notifier")

    async def stop(self) -> None:
        """Stop taking new messages (unacknowledged, they stay with the broker), let the pipeline commit and
        acknowledge what it holds, then disconnect; the persistent session keeps whatever arrives meanwhile."""
        self._closing = True
        if self._draining is not None:
            self._draining.cancel()
        await self.pipeline.stop()
        self._flush_acks()
        await asyncio.sleep(0.05)  # let the last PUBACKs leave
        if self._notify_task is not None:
            self._notify_task.cancel()
        await self.client.stop()

    # ---------------------------------------------------------------- in

    def _on_message(self, message: Message) -> None:
        """Every PUBLISH the broker sends us, straight from the socket."""
        topic = message.topic
        if topic.startswith("$SYS/"):
            if topic == PLUGIN_TOPIC:
                self._plugin_report(message.payload)
            else:
                self.registry.handle_log(topic, message.payload)
            self._ack_now(message)
            return
        if self._closing:
            return  # not acknowledged: the broker redelivers it to the session
        item = self._item(message)
        if self._overflow or not self.pipeline.offer(item, "mqtt", self._completed):
            # The queue is full: stop reading the socket (for QoS 0 the only flow control there is) and
            # hand the rest over as room appears.
            self._overflow.append(item)
            if self._draining is None or self._draining.done():
                self.client.pause_reading(True)
                self._draining = asyncio.create_task(self._drain())

    async def _drain(self) -> None:
        while self._overflow:
            await self.pipeline.put(self._overflow[0], "mqtt", self._completed)
            self._overflow.popleft()
        self.client.pause_reading(False)

    def _item(self, message: Message) -> Item:
        """The create in `message`, which the broker's plugin moved to INGEST_PREFIX + the device's topic and
        stamped with its publisher and client id (removing whatever the device sent under those names)."""
        payload = message.payload
        topic = message.topic.removeprefix(INGEST_PREFIX)
        client_id, publisher = _stamps(tuple(message.user_properties))
        origin = Origin(topic, payload, client_id)
        ticket = (self.client.generation, message.packet_id, message)
        if message.unreadable is not None:
            return Item(None, origin, message.unreadable, ticket=ticket, publisher=publisher)
        if publisher is None:
            return Item(None, origin, "the message does not say who sent it (the broker's plugin stamps every "
                                      "create it lets through)", ticket=ticket, status=403)
        if len(payload) > self.config.max_payload_bytes:
            return Item(None, origin, f"the payload of {len(payload)} bytes exceeds the limit of "
                                      f"{self.config.max_payload_bytes} bytes", ticket=ticket, publisher=publisher)
        try:
            parents = create_target(topic)
            body = parse_observation_json(payload)
            row = parse_observation(body, parents=parents, now=None, where="payload")
        except StaError as exc:
            return Item(None, origin, exc.message, ticket=ticket, publisher=publisher)
        except Exception as exc:  # a payload no check foresaw: dead-lettered alone, never a stuck session
            self._dead_letters.warning("could not read an MQTT payload", exc_info=True, topic=topic)
            return Item(None, origin, f"the payload could not be read ({type(exc).__name__})", ticket=ticket,
                        publisher=publisher)
        return Item(row, origin, ticket=ticket, publisher=publisher)

    def _completed(self, item: Item) -> None:
        """After commit: report a rejection to the device, acknowledge the message."""
        generation, packet_id, message = item.ticket
        if item.id is None and item.reason is None:
            return  # not stored because of a fault of ours: unacknowledged, the broker redelivers it
        if item.reason is not None:
            self._dead_letters.warning(
                f"dead letter: {item.reason}", topic=message.topic, bytes=len(message.payload),
                client_id=item.origin.client_id if item.origin else None, packet_id=packet_id)
            if item.status == 403:
                FORBIDDEN.inc()
            self._reports.append((item, item.reason))
        if packet_id:
            self._acks.setdefault(generation, []).append(packet_id)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_acks)

    def _flush_acks(self) -> None:
        """One write for the PUBACKs of a batch; those of an earlier connection are dropped (the broker has
        already sent those messages again on the current one). The error reports go after them: should one
        make the broker end the connection, the acknowledgements are out already."""
        self._flush_scheduled = False
        acks, self._acks = self._acks, {}
        reports, self._reports = self._reports, []
        for generation, packet_ids in acks.items():
            self.client.acknowledge(packet_ids, generation)
        for item, reason in reports:
            self._report(item, reason)

    def _plugin_report(self, payload: bytes) -> None:
        try:
            report = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        if isinstance(report, dict) and report.get("audiences") is True:
            self._plugin_seen = asyncio.get_running_loop().time()
            PLUGIN_COUNTERS.latest = {k: v for k, v in report.items() if isinstance(v, int) and not isinstance(v, bool)}

    def audiences_enforced(self) -> bool:
        """Whether the broker's plugin filters deliveries by audience (it reported within PLUGIN_SILENCE_S):
        only then are notifications of restricted data published."""
        return asyncio.get_running_loop().time() - self._plugin_seen < PLUGIN_SILENCE_S

    def _ack_now(self, message: Message) -> None:
        if message.packet_id:
            self.client.acknowledge([message.packet_id], self.client.generation)

    # ---------------------------------------------------------------- out

    def _report(self, item: Item, reason: str) -> None:
        """Tell the device: on citystream/errors/<topic>, and on its MQTT 5 response topic if it gave one
        there (see `reply_topic`); only the publisher (and whoever may read everything) may read them."""
        _, _, message = item.ticket
        topic = item.origin.topic if item.origin else message.topic
        excerpt = message.payload[:ERROR_EXCERPT_CHARS].decode("utf-8", "replace")
        body = orjson.dumps({"code": item.status, "type": "error", "message": reason, "topic": topic,
                             "payload": excerpt, "client_id": item.origin.client_id if item.origin else None})
        owner = item.publisher.auth_id if item.publisher is not None else None
        audience = [(AUDIENCE_PROPERTY, f"r;o={owner}" if owner else "r")]
        self.client.publish(error_topic(topic), body, user_properties=audience)
        response_topic = reply_topic(message.properties.get("response_topic"))
        if response_topic:
            self.client.publish(response_topic, body, user_properties=audience,
                                correlation_data=message.properties.get("correlation_data"))

    def _publish_notification(self, topic: str, payload: bytes, audience: str | None = None) -> None:
        # QoS 1: the broker delivers the lower of this and the subscription's QoS, and queues QoS 1 for
        # offline persistent sessions. Never waits (wire.py: QoS 0 when the broker's window is full);
        # without a connection the notification is dropped and counted.
        properties = [NOTIFICATION_PROPERTY, (AUDIENCE_PROPERTY, audience)] if audience else [NOTIFICATION_PROPERTY]
        if not self.client.publish(topic, payload, user_properties=properties, qos=1):
            DROPPED.inc()
