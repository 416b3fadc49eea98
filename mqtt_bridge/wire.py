"""The MQTT 5 client the bridge needs, and no more: one asyncio protocol over one TCP connection.

Why not a library: `benchmarks/mqtt_clients.py` measured the receive path. paho-mqtt costs ~36 µs of CPU per
QoS 1 message and gmqtt ~21 µs (with its acknowledge-after-handler mode, which also creates a task per
message), against ~4 µs for reading the same packets straight off the socket. With gmqtt the whole bridge
reached ~13,000 Observations/s on this 2-core machine, half the 25,000/s it must sustain, and the client's
per-message Python was the largest share. This module parses PUBLISH packets in `data_received`, hands
them on without a task or future each, and writes the PUBACKs of a committed batch in one write.

Scope: CONNECT/CONNACK (username, password, clean start, session expiry, receive maximum), SUBSCRIBE/SUBACK,
PUBLISH both ways at QoS 0 and 1 with its properties (user properties, response topic, correlation data),
PUBACK both ways, PINGREQ/PINGRESP, DISCONNECT, reconnection. Not implemented: QoS 2, topic aliases (we
announce a Topic Alias Maximum of 0, so the broker sends none), AUTH, TLS, wills.

Outgoing QoS 1 (the bridge's STA notifications) is best effort from us to the broker: it exists so that the
broker delivers at QoS 1 to QoS 1 subscribers (it delivers the lower of the publish and the subscription
QoS), and queues for their offline persistent sessions. Per connection we keep only which packet ids await
their PUBACK (a bytearray, no payload, no future, no timer), within the broker's Receive Maximum from CONNACK
(65,535 when it sends none, as Mosquitto does by default). The window is full when that many await their
PUBACK: the broker is behind by as many, or, as benchmarks/notification_qos.py found at full ingest load,
we have published a larger burst than that without yielding to read the PUBACKs (the notifier catching up
publishes a whole merged change set at once; 80,000 of 190,000 notifications in one run). Then `publish`
sends the message at QoS 0 (counted in `stats.downgraded`, logged) instead of dropping it: subscribers online
still get it, as they got every notification when all went out at QoS 0, and only an offline session misses
it (its QoS 1 queue never gets it). That costs no more than QoS 0 always did: the same bytes in the same
socket buffer, and a broker that stops reading is dropped by the keepalive. Dropping instead lost those
80,000 for everyone; keeping them for later would hold their payloads in our memory for a broker that
may not come back. A publish never waits for the window.
A PUBACK with a failure reason (>= 0x80: not authorized, quota exceeded, ...) is counted by reason and
logged (at most once per reason every LOG_EVERY_S); it changes nothing else. On a new connection nothing in
flight is sent again (MQTT 5 §4.4 says a resumed session resends unacknowledged PUBLISHes; the broker keeps
no state for a QoS 1 message it received, so nothing is inconsistent if we do not): a notification is about
"now", and the bridge has no copy to resend. The ones a lost connection held are counted in its log line.
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

log = logging.getLogger("citystream.mqtt")

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK = 1, 2, 3, 4, 8, 9
PINGREQ, PINGRESP, DISCONNECT = 12, 13, 14
MAX_REMAINING_LENGTH = 268_435_455
SUBSCRIBE_PACKET_ID = 1  # the one SUBSCRIBE of a connection; QoS 1 PUBLISHes take the others
FIRST_PUBLISH_ID = 2
PUBLISH_IDS = 65535 - FIRST_PUBLISH_ID + 1  # so the in-flight window is at most 65,534, whatever the broker allows
DEFAULT_RECEIVE_MAXIMUM = 65535  # MQTT 5 §3.2.2.3.3: a CONNACK without Receive Maximum means 65,535
LOG_EVERY_S = 10.0  # refused PUBACKs, a full window: at most one log record per cause in this time
_PUBACK_HEADER = PUBACK << 4

# Property identifiers (MQTT 5 §2.2.2.2) and how their values are encoded.
_BYTE, _TWO, _FOUR, _VARINT, _STRING, _BINARY, _PAIR = range(7)
PROPERTY_KINDS: dict[int, tuple[str, int]] = {
    0x01: ("payload_format", _BYTE), 0x02: ("message_expiry", _FOUR), 0x03: ("content_type", _STRING),
    0x08: ("response_topic", _STRING), 0x09: ("correlation_data", _BINARY), 0x0B: ("subscription_id", _VARINT),
    0x11: ("session_expiry", _FOUR), 0x12: ("assigned_client_id", _STRING), 0x13: ("server_keep_alive", _TWO),
    0x15: ("auth_method", _STRING), 0x16: ("auth_data", _BINARY), 0x17: ("request_problem_info", _BYTE),
    0x18: ("will_delay", _FOUR), 0x19: ("request_response_info", _BYTE), 0x1A: ("response_info", _STRING),
    0x1C: ("server_reference", _STRING), 0x1F: ("reason_string", _STRING), 0x21: ("receive_maximum", _TWO),
    0x22: ("topic_alias_maximum", _TWO), 0x23: ("topic_alias", _TWO), 0x24: ("maximum_qos", _BYTE),
    0x25: ("retain_available", _BYTE), 0x26: ("user_property", _PAIR), 0x27: ("maximum_packet_size", _FOUR),
    0x28: ("wildcard_subscription_available", _BYTE), 0x29: ("subscription_id_available", _BYTE),
    0x2A: ("shared_subscription_available", _BYTE),
}


class ProtocolError(Exception):
    """The broker sent something this client cannot read; the connection is dropped and made again."""


@dataclass(slots=True)
class Message:
    topic: str
    payload: bytes
    qos: int
    packet_id: int = 0
    dup: bool = False
    properties: Mapping[str, Any] = field(default_factory=dict)
    """Read-only: shared by the messages that carry the same properties (see _publish_properties)."""
    unreadable: str | None = None
    """Why the PUBLISH could not be read in full (e.g. a property this client does not know). Framing is
    intact, so the message is still handed on, to be dead-lettered and acknowledged like any bad payload:
    dropping the connection instead would only get the same message redelivered, for ever."""

    @property
    def user_properties(self) -> Sequence[tuple[str, str]]:
        found: Sequence[tuple[str, str]] = self.properties.get("user_property", ())
        return found


# ------------------------------------------------------------------ encoding


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        value, digit = divmod(value, 128)
        out.append(digit | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("!H", len(data)) + data


def _binary(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


def _packet(kind: int, flags: int, body: bytes) -> bytes:
    return bytes([kind << 4 | flags]) + _varint(len(body)) + body


def _properties(items: Iterable[tuple[int, bytes]]) -> bytes:
    data = b"".join(bytes([identifier]) + value for identifier, value in items)
    return _varint(len(data)) + data


def connect_packet(client_id: str, *, username: str | None, password: str | None, clean_start: bool,
                   keepalive: int, session_expiry: int, receive_maximum: int) -> bytes:
    flags = (0x80 if username else 0) | (0x40 if password else 0) | (0x02 if clean_start else 0)
    props = _properties([(0x11, struct.pack("!I", session_expiry)), (0x21, struct.pack("!H", receive_maximum))])
    body = _string("MQTT") + bytes([5, flags]) + struct.pack("!H", keepalive) + props + _string(client_id)
    if username:
        body += _string(username)
    if password:
        body += _binary(password.encode())
    return _packet(CONNECT, 0, body)


def subscribe_packet(packet_id: int, filters: Iterable[tuple[str, int]]) -> bytes:
    body = struct.pack("!H", packet_id) + _properties([])
    for topic_filter, qos in filters:
        body += _string(topic_filter) + bytes([qos])
    return _packet(SUBSCRIBE, 0x02, body)


def publish_packet(topic: str, payload: bytes, *, user_properties: Iterable[tuple[str, str]] = (),
                   correlation_data: bytes | None = None, qos: int = 0, packet_id: int = 0) -> bytes:
    """A PUBLISH: QoS 0, or QoS 1 with `packet_id` (the bridge's notifications, benchmarks/loadgen.py)."""
    props = [(0x26, _string(k) + _string(v)) for k, v in user_properties]
    if correlation_data is not None:
        props.append((0x09, _binary(correlation_data)))
    if qos and not 0 < packet_id < 65536:
        raise ValueError(f"a QoS {qos} PUBLISH needs a packet id in 1..65535, not {packet_id}")
    variable = _string(topic) + (struct.pack("!H", packet_id) if qos else b"")
    return _packet(PUBLISH, qos << 1, variable + _properties(props) + payload)


def puback_packets(packet_ids: Iterable[int]) -> bytes:
    """PUBACKs with reason Success and no properties: MQTT 5 allows the 2-byte short form."""
    return b"".join(struct.pack("!BBH", PUBACK << 4, 2, packet_id) for packet_id in packet_ids)


PINGREQ_PACKET = bytes([PINGREQ << 4, 0])
DISCONNECT_PACKET = bytes([DISCONNECT << 4, 0])  # reason 0: the session stays for its expiry interval


# ------------------------------------------------------------------ decoding


def _read_varint(data: bytes | bytearray, at: int) -> tuple[int, int]:
    value, shift = 0, 0
    for _ in range(4):
        if at >= len(data):
            raise IndexError
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7
    raise ProtocolError("malformed variable byte integer")


def read_properties(data: bytes, at: int) -> tuple[dict[str, Any], int]:
    length, at = _read_varint(data, at)
    end = at + length
    props: dict[str, Any] = {}
    while at < end:
        identifier = data[at]
        at += 1
        kind = PROPERTY_KINDS.get(identifier)
        if kind is None:
            raise ProtocolError(f"unknown property 0x{identifier:02x}")
        name, encoding = kind
        value: Any
        if encoding == _BYTE:
            value, at = data[at], at + 1
        elif encoding == _TWO:
            value, at = struct.unpack_from("!H", data, at)[0], at + 2
        elif encoding == _FOUR:
            value, at = struct.unpack_from("!I", data, at)[0], at + 4
        elif encoding == _VARINT:
            value, at = _read_varint(data, at)
        elif encoding == _PAIR:
            (n,) = struct.unpack_from("!H", data, at)
            key = data[at + 2:at + 2 + n].decode(errors="replace")
            at += 2 + n
            (n,) = struct.unpack_from("!H", data, at)
            value = (key, data[at + 2:at + 2 + n].decode(errors="replace"))
            at += 2 + n
            props.setdefault(name, []).append(value)
            continue
        else:
            (n,) = struct.unpack_from("!H", data, at)
            raw = data[at + 2:at + 2 + n]
            value = raw.decode(errors="replace") if encoding == _STRING else bytes(raw)
            at += 2 + n
        props[name] = value
    return props, end


def read_publish(flags: int, body: bytes) -> Message:
    """One PUBLISH. Once the topic and packet id are read, nothing in it makes the connection unusable: text
    that is not UTF-8 is read with replacement characters, and properties that cannot be read leave the
    message `unreadable` (see Message), with its payload."""
    qos = (flags >> 1) & 0x03
    (n,) = struct.unpack_from("!H", body, 0)
    topic = body[2:2 + n].decode(errors="replace")
    at = 2 + n
    packet_id = 0
    if qos:
        (packet_id,) = struct.unpack_from("!H", body, at)
        at += 2
    if at < len(body) and body[at] == 0:  # no properties: the common case, skip the general reader
        props: Mapping[str, Any] = _NO_PROPERTIES
        at += 1
    else:
        # If they cannot be read, the properties and payload (body[start:]) are the dead letter's evidence.
        start = at
        try:
            props, at = _publish_properties(body, at)
        except (ProtocolError, struct.error, IndexError) as exc:
            return Message(topic, body[start:], qos, packet_id, bool(flags & 0x08), _NO_PROPERTIES,
                           unreadable=f"the PUBLISH packet's properties cannot be read ({exc or type(exc).__name__})")
        if at > len(body):
            return Message(topic, body[start:], qos, packet_id, bool(flags & 0x08), _NO_PROPERTIES,
                           unreadable="the PUBLISH packet's properties run past its end")
    return Message(topic, body[at:], qos, packet_id, bool(flags & 0x08), props)


_NO_PROPERTIES: Mapping[str, Any] = MappingProxyType({})
_PROPERTY_CACHE: dict[bytes, Mapping[str, Any]] = {}
PROPERTY_CACHE_SIZE = 4096
"""Distinct PUBLISH property blocks remembered (a few hundred bytes each): one per sender in practice."""


def _publish_properties(body: bytes, at: int) -> tuple[Mapping[str, Any], int]:
    """A PUBLISH's properties, read once per distinct block: the broker stamps every create of one client
    with the same ones, and reading them took three times as long as the rest of the packet. The mapping
    (and its user properties, a tuple) is shared by the messages that carry the block, so it is read-only.
    A sender varying its properties only empties the cache now and then."""
    length, start = _read_varint(body, at)
    end = start + length
    block = body[at:end]
    props = _PROPERTY_CACHE.get(block)
    if props is None:
        parsed, end = read_properties(body, at)
        if "user_property" in parsed:
            parsed["user_property"] = tuple(parsed["user_property"])
        props = MappingProxyType(parsed)
        if end <= len(body):  # a block that runs past the packet's end is never a cache entry
            if len(_PROPERTY_CACHE) >= PROPERTY_CACHE_SIZE:
                _PROPERTY_CACHE.clear()
            _PROPERTY_CACHE[block] = props
    return props, end


# ------------------------------------------------------------------ the protocol


@dataclass(slots=True)
class PublishStats:
    """Our QoS 1 PUBLISHes over all the connections of one client (each connection's protocol adds to it)."""

    acknowledged: int = 0
    """PUBACKs with a success reason (0x00, or 0x10 "no matching subscribers")."""
    reasons: Counter[int] = field(default_factory=Counter)
    """PUBACK reason codes other than 0x00, by code; those >= 0x80 are refusals."""
    downgraded: int = 0
    """Sent at QoS 0 although asked for QoS 1: the broker's Receive Maximum was used up (module docstring)."""
    not_connected: int = 0
    """Not sent (any QoS): no connection at the time."""
    lost_in_flight: int = 0
    """Sent, but the connection ended before their PUBACK came; never sent again."""
    _logged: dict[str, float] = field(default_factory=dict)

    @property
    def refused(self) -> int:
        return sum(n for reason, n in self.reasons.items() if reason >= 0x80)

    def warn(self, cause: str, message: str, *args: object) -> None:
        """A warning, but at most one per `cause` every LOG_EVERY_S (the counts say how many there were)."""
        now = time.monotonic()
        if now - self._logged.get(cause, -math.inf) >= LOG_EVERY_S:
            self._logged[cause] = now
            log.warning(message, *args)


class MqttProtocol(asyncio.Protocol):
    """Frames packets; PUBLISH goes to `on_message`, everything else resolves the waiting call.

    Our QoS 1 PUBLISHes: `take_packet_id` reserves an id while fewer than `window` (the broker's Receive
    Maximum) await their PUBACK, which frees it. That state is the connection's: a new connection starts
    empty (nothing is sent again, see the module docstring)."""

    def __init__(self, on_message: Callable[[Message], None], stats: PublishStats | None = None) -> None:
        self.on_message = on_message
        self.stats = PublishStats() if stats is None else stats
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self.connack: asyncio.Future[tuple[int, dict[str, Any]]] = asyncio.get_running_loop().create_future()
        self._subacks: dict[int, asyncio.Future[bytes]] = {}
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.last_received = 0.0
        self.lost_because = ""
        """Why the connection ended, for the log: the broker's DISCONNECT, our giving up, a socket error."""
        self.window = min(DEFAULT_RECEIVE_MAXIMUM, PUBLISH_IDS)
        """How many QoS 1 PUBLISHes may await their PUBACK: the broker's Receive Maximum (set by CONNACK)."""
        self.in_flight = 0
        self._unacknowledged = bytearray(65536)  # [packet id] = 1 while that id awaits its PUBACK
        self._next_id = FIRST_PUBLISH_ID

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport (uvloop's is no subclass)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost_because = self.lost_because or (f"{type(exc).__name__}: {exc}" if exc else "closed")
        if not self.closed.done():
            self.closed.set_result(None)
        waiters: list[asyncio.Future[Any]] = [self.connack, *self._subacks.values()]
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(ConnectionError("connection to the MQTT broker lost"))

    def data_received(self, data: bytes) -> None:
        self.last_received = asyncio.get_running_loop().time()
        buffer = self._buffer
        buffer += data
        at = 0
        try:
            while len(buffer) - at >= 2:
                header = buffer[at]
                if header == _PUBACK_HEADER and buffer[at + 1] == 2 and len(buffer) - at >= 4:
                    # a PUBACK of ours with reason Success (the 2-byte form): one per QoS 1 notification
                    packet_id = buffer[at + 2] << 8 | buffer[at + 3]
                    if self._unacknowledged[packet_id]:
                        self._unacknowledged[packet_id] = 0
                        self.in_flight -= 1
                        self.stats.acknowledged += 1
                    at += 4
                    continue
                try:
                    length, start = _read_varint(buffer, at + 1)
                except IndexError:
                    break
                end = start + length
                if end > len(buffer):
                    break
                self._handle(header >> 4, header & 0x0F, bytes(buffer[start:end]))
                at = end
        except (ProtocolError, struct.error, IndexError, UnicodeDecodeError) as exc:
            log.error("unreadable packet from the MQTT broker (%s); reconnecting", exc)
            self.lost_because = f"unreadable packet ({exc})"
            assert self.transport is not None
            self.transport.close()
        del buffer[:at]

    def _handle(self, kind: int, flags: int, body: bytes) -> None:
        if kind == PUBLISH:
            message = read_publish(flags, body)
            try:
                self.on_message(message)
            except Exception:  # a bug of the consumer: keep the connection (dropping it would redeliver)
                log.exception("the MQTT message handler failed", extra={"topic": message.topic})
        elif kind == PUBACK:  # the long form: a reason code, maybe properties (a reason string)
            (packet_id,) = struct.unpack_from("!H", body, 0)
            self._puback(packet_id, body[2] if len(body) > 2 else 0)
        elif kind == CONNACK:
            reason = body[1]
            props, _ = read_properties(body, 2) if len(body) > 2 else ({}, 2)
            self.window = max(1, min(props.get("receive_maximum", DEFAULT_RECEIVE_MAXIMUM), PUBLISH_IDS))
            if not self.connack.done():
                self.connack.set_result((reason, props))
        elif kind == SUBACK:
            (packet_id,) = struct.unpack_from("!H", body, 0)
            _, at = read_properties(body, 2)
            waiter = self._subacks.pop(packet_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(body[at:])
        elif kind == DISCONNECT:
            reason = body[0] if body else 0
            log.warning("the MQTT broker disconnected us (reason 0x%02x)", reason)
            self.lost_because = f"the broker sent DISCONNECT, reason 0x{reason:02x}"
        # PINGRESP: nothing to do beyond last_received

    def _puback(self, packet_id: int, reason: int) -> None:
        if not self._unacknowledged[packet_id]:
            log.debug("PUBACK for packet id %d, which is not in flight; ignored", packet_id)
            return
        self._unacknowledged[packet_id] = 0
        self.in_flight -= 1
        stats = self.stats
        if reason:
            stats.reasons[reason] += 1
            if reason >= 0x80:
                stats.warn(f"refused-{reason}", "the MQTT broker refused a QoS 1 PUBLISH (PUBACK reason 0x%02x; "
                           "%d so far); it is not sent again", reason, stats.reasons[reason])
                return
        stats.acknowledged += 1

    def take_packet_id(self) -> int:
        """A packet id for a QoS 1 PUBLISH, now awaiting its PUBACK; 0 if `window` of them already are."""
        if self.in_flight >= self.window:
            return 0
        unacknowledged = self._unacknowledged
        packet_id = self._next_id
        while unacknowledged[packet_id]:  # ends: fewer than PUBLISH_IDS are in flight
            packet_id = packet_id + 1 if packet_id < 65535 else FIRST_PUBLISH_ID
        unacknowledged[packet_id] = 1
        self._next_id = packet_id + 1 if packet_id < 65535 else FIRST_PUBLISH_ID
        self.in_flight += 1
        return packet_id

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def subscribe(self, packet_id: int, filters: list[tuple[str, int]]) -> asyncio.Future[bytes]:
        waiter: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._subacks[packet_id] = waiter
        self.write(subscribe_packet(packet_id, filters))
        return waiter


CONNACK_REASONS = {0x84: "unsupported protocol version", 0x85: "client identifier not valid",
                   0x86: "bad user name or password", 0x87: "not authorized", 0x88: "server unavailable",
                   0x89: "server busy", 0x8A: "banned"}
PERMANENT_REFUSALS = {0x84, 0x85, 0x86, 0x87, 0x8A}


class BrokerRefused(Exception):
    pass


class MqttClient:
    """Keeps one connection up (reconnecting with back-off) and re-subscribes on every connect.

    `generation` counts connections: a PUBACK is only valid on the connection that delivered the message
    (after a reconnect the broker sends unacknowledged messages again, with the same packet ids)."""

    def __init__(self, host: str, port: int, client_id: str, *, username: str | None, password: str | None,
                 clean_start: bool, session_expiry: int, receive_maximum: int, keepalive: int = 30,
                 subscriptions: list[tuple[str, int]], on_message: Callable[[Message], None]) -> None:
        self.host, self.port, self.client_id = host, port, client_id
        self.username, self.password = username, password
        self.clean_start, self.session_expiry = clean_start, session_expiry
        self.receive_maximum, self.keepalive = receive_maximum, keepalive
        self.subscriptions = subscriptions
        self.on_message = on_message
        self.generation = 0
        self.stats = PublishStats()
        self._protocol: MqttProtocol | None = None
        self._stopping = False
        self._paused = False
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect and keep the connection up in the background. A broker that refuses our credentials is an
        error now; one that is not reachable yet is retried in the background (the API still starts)."""
        try:
            await self._connect_once()
        except (OSError, ConnectionError, TimeoutError) as exc:
            log.warning("MQTT broker at %s:%s not reachable yet (%s); retrying in the background",
                        self.host, self.port, exc)
        self._task = asyncio.create_task(self._keep_connected(), name=f"mqtt-{self.client_id}")

    async def _connect_once(self) -> None:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(lambda: MqttProtocol(self.on_message, self.stats), self.host,
                                                   self.port)
        protocol.write(connect_packet(self.client_id, username=self.username, password=self.password,
                                      clean_start=self.clean_start, keepalive=self.keepalive,
                                      session_expiry=self.session_expiry, receive_maximum=self.receive_maximum))
        reason, _ = await asyncio.wait_for(protocol.connack, 30)
        if reason != 0:
            assert protocol.transport is not None
            protocol.transport.close()
            message = f"MQTT broker refused the connection: {CONNACK_REASONS.get(reason, hex(reason))}"
            if reason in PERMANENT_REFUSALS:
                raise BrokerRefused(message)
            raise ConnectionError(message)
        self.generation += 1
        self._protocol = protocol
        granted = await asyncio.wait_for(protocol.subscribe(SUBSCRIBE_PACKET_ID, self.subscriptions), 30)
        refused = [f for (f, _), code in zip(self.subscriptions, granted, strict=False) if code >= 0x80]
        if refused:
            log.warning("the MQTT broker refused the subscriptions %s", refused)
        if self._paused and protocol.transport is not None:
            protocol.transport.pause_reading()  # the consumer is still catching up

    async def _keep_connected(self) -> None:
        delay = 1.0
        while not self._stopping:
            protocol = self._protocol
            if protocol is not None:
                await self._watch(protocol)
                self._protocol = None
                self.stats.lost_in_flight += protocol.in_flight  # best effort: not sent again (module docstring)
                if not self._stopping:
                    log.warning("lost the connection to the MQTT broker at %s:%s (%s); reconnecting", self.host,
                                self.port, protocol.lost_because or "closed",
                                extra={"client_id": self.client_id,
                                       "unacknowledged_publishes": protocol.in_flight})
            if self._stopping:
                return
            try:
                await self._connect_once()
                delay = 1.0
                log.info("reconnected to the MQTT broker at %s:%s", self.host, self.port)
            except (OSError, ConnectionError, TimeoutError, BrokerRefused) as exc:
                log.warning("MQTT broker at %s:%s unreachable (%s); retrying in %.0f s", self.host, self.port,
                            exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def _watch(self, protocol: MqttProtocol) -> None:
        """Ping while idle; give up on a connection that stays silent for 1.5 keepalive intervals."""
        loop = asyncio.get_running_loop()
        while not protocol.closed.done():
            try:
                await asyncio.wait_for(asyncio.shield(protocol.closed), self.keepalive / 2)
            except TimeoutError:
                protocol.write(PINGREQ_PACKET)
                if self._paused:  # we are not reading: silence says nothing about the broker
                    protocol.last_received = loop.time()
                elif loop.time() - protocol.last_received > self.keepalive * 1.5 and protocol.transport:
                    log.warning("the MQTT broker stopped answering; reconnecting")
                    protocol.lost_because = f"no answer for {self.keepalive * 1.5:.0f} s"
                    protocol.transport.close()

    def write(self, data: bytes, generation: int | None = None) -> bool:
        """Send raw packets on the current connection (only if it is still `generation`, when given)."""
        protocol = self._protocol
        if protocol is None or (generation is not None and generation != self.generation):
            return False
        protocol.write(data)
        return True

    def publish(self, topic: str, payload: bytes, *, user_properties: Iterable[tuple[str, str]] = (),
                correlation_data: bytes | None = None, qos: int = 0) -> bool:
        """Write a PUBLISH at QoS 0 or 1 on the current connection; never waits. QoS 1 goes out at QoS 0 when
        the broker's window is full (see the module docstring for why, and for what a reconnect does with
        those in flight). False: not written, for want of a connection (counted in `stats`, not kept)."""
        protocol = self._protocol
        if protocol is None:
            self.stats.not_connected += 1
            return False
        if not qos:
            protocol.write(publish_packet(topic, payload, user_properties=user_properties,
                                          correlation_data=correlation_data))
            return True
        if qos != 1:
            raise ValueError(f"this client publishes at QoS 0 or 1, not {qos}")
        packet_id = protocol.take_packet_id()
        if not packet_id:
            stats = self.stats
            stats.downgraded += 1
            stats.warn("window-full", "%d QoS 1 PUBLISHes await the MQTT broker's PUBACK, as many as it allows "
                       "(Receive Maximum): publishing at QoS 0 until it catches up (%d so far)",
                       protocol.in_flight, stats.downgraded)
        protocol.write(publish_packet(topic, payload, user_properties=user_properties,
                                      correlation_data=correlation_data, qos=1 if packet_id else 0,
                                      packet_id=packet_id))
        return True

    def acknowledge(self, packet_ids: list[int], generation: int) -> None:
        self.write(puback_packets(packet_ids), generation)

    def pause_reading(self, pause: bool) -> None:
        self._paused = pause
        protocol = self._protocol
        if protocol is not None and protocol.transport is not None:
            (protocol.transport.pause_reading if pause else protocol.transport.resume_reading)()

    async def stop(self) -> None:
        self._stopping = True
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.write(DISCONNECT_PACKET)
            self._protocol.transport.close()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
