"""The citystream_auth Mosquitto plugin, which decides every login, publish, subscription and delivery (there
is no ACL file):

- only the platform account may use the bridge's client ids and its shared subscription group (issue 13,
  item 5): otherwise any client could join `$share/citystream/...` and be handed part of the devices'
  Observations (never stored, although the devices were told they were delivered), or connect as
  `citystream-bridge` and take over the bridge's persistent session;
- a device's create is moved to citystream/ingest/<topic>, which only the platform reads, stamped with its
  publisher (forged stamps removed), so no subscriber gets a device's raw publish;
- each notification reaches only the subscribers its audience (citystream-audience) allows, a message the
  plugin did not see the platform publish (a Will) only principals who read everything;
- without the platform (no decision_url, or the platform unreachable) only the broker's accounts log in;
- it refuses to start without its required options, and reports its counters on $SYS.

Everything runs against a real Mosquitto with the real plugin; clients are paho-mqtt (MQTT 5 and 3.1.1) and
mosquitto_sub/mosquitto_pub. Logins with API keys, users and tokens (the platform's decisions) are covered by
tests/mqtt/test_mqtt_access.py; the accounts, listeners and $SYS log by tests/mqtt/test_broker_config.py. The
plugin's configuration, which needs no broker, is checked in tests/unit/test_broker_plugin_config.py.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shlex
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from citystream.auth.credentials import split_key
from citystream.embedded import (
    AUTH_PLUGIN_PACKAGES,
    PLATFORM_MQTT_USER,
    EmbeddedMosquitto,
    EmbeddedServiceError,
    auth_plugin_library,
    compile_auth_plugin,
    find_free_port,
    find_mosquitto,
)
from mqtt_bridge import identity
from mqtt_bridge.bridge import AUDIENCE_PROPERTY, CLIENT_PROPERTY, PLUGIN_TOPIC, PRINCIPAL_PROPERTY
from mqtt_bridge.notifier import NOTIFICATION_PROPERTY
from mqtt_bridge.topics import INGEST_PREFIX
from tests.auth.helpers import new_key
from tests.conftest import make_service_dir, private_broker
from tests.mqtt_helpers import wait_for
from tests.sta_helpers import create_datastream
from tests.unit.test_broker_plugin_config import BRIDGE_FILTER

pytestmark = pytest.mark.skipif(
    shutil.which("mosquitto_pub") is None or shutil.which("mosquitto_sub") is None,
    reason="mosquitto-clients (mosquitto_pub, mosquitto_sub) not installed",
)

NOT_AUTHORIZED_V5 = 0x87
FAILURE_V311 = 0x80
V5, V311 = mqtt.MQTTv5, mqtt.MQTTv311


# ------------------------------------------------------------------------------------------ clients


class Probe:
    """A paho client that records its CONNACK, SUBACK reason codes, messages (and the last one received with
    each payload, in `received`) and being disconnected."""

    def __init__(self, broker: EmbeddedMosquitto, account: str, *, client_id: str | None = None,
                 protocol: int = V5, port: int | None = None, transport: str = "tcp") -> None:
        self.client_id = client_id or f"probe-{uuid.uuid4().hex[:10]}"
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.received: dict[bytes, mqtt.MQTTMessage] = {}
        self.disconnected = threading.Event()
        self._connack: queue.Queue[Any] = queue.Queue()
        self._suback: queue.Queue[tuple[int, list[int]]] = queue.Queue()
        self.mqtt = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                protocol=protocol, transport=transport)  # type: ignore[arg-type]
        user, password = credentials(broker, account)
        if user is not None:
            self.mqtt.username_pw_set(user, password)
        self.mqtt.on_connect = lambda _c, _u, _f, reason, _p: self._connack.put(reason)
        self.mqtt.on_disconnect = lambda *_args: self.disconnected.set()
        self.mqtt.on_message = self._on_message
        self.mqtt.on_subscribe = lambda _c, _u, mid, codes, _p: self._suback.put((mid, [int(c.value) for c in codes]))
        self.mqtt.connect(broker.host, port or broker.port, keepalive=60)
        self.mqtt.loop_start()
        self.connack = self._connack.get(timeout=10)
        if self.connack.is_failure:
            self.close()

    def _on_message(self, _client: Any, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.received[bytes(msg.payload)] = msg
        self.messages.put((msg.topic, bytes(msg.payload)))

    @property
    def connected(self) -> bool:
        return not self.connack.is_failure

    def user_properties(self, payload: bytes) -> list[tuple[str, str]]:
        return list(getattr(self.received[payload].properties, "UserProperty", None) or [])

    def until(self, payload: bytes, timeout: float = 10) -> list[tuple[str, bytes]]:
        """Every message up to and including the one with `payload` (a sentinel published after the messages
        under test: the broker delivers one subscriber's messages in order)."""
        got: list[tuple[str, bytes]] = []
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                got.append(self.messages.get(timeout=left))
            except queue.Empty:
                break
            if got[-1][1] == payload:
                return got
        pytest.fail(f"{self.client_id}: no sentinel within {timeout} s; got {got}")

    def subscribe(self, *filters: str, qos: int = 1) -> list[int]:
        """The SUBACK's reason code for each filter (the granted QoS, or a failure code)."""
        _, mid = self.mqtt.subscribe([(f, qos) for f in filters])
        got, codes = self._suback.get(timeout=10)
        assert got == mid
        return codes

    def drain(self) -> list[tuple[str, bytes]]:
        out = []
        while True:
            try:
                out.append(self.messages.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        self.mqtt.disconnect()
        self.mqtt.loop_stop()


def credentials(broker: EmbeddedMosquitto, account: str) -> tuple[str | None, str | None]:
    return {
        "anonymous": (None, None),
        "sensor": (broker.sensor_username, broker.sensor_password),
        "platform": (PLATFORM_MQTT_USER, broker.platform_password),
        "user": ("alice", "correct horse battery staple"),  # no account: only the platform could know her
    }[account]


def cli_auth(broker: EmbeddedMosquitto, account: str) -> list[str]:
    user, password = credentials(broker, account)
    return [] if user is None else ["-u", user, "-P", password or ""]


def sensor_publish(broker: EmbeddedMosquitto, topic: str, payloads: list[bytes]) -> None:
    """One mosquitto_pub connection, QoS 1, one message per line: returns once the broker has PUBACKed all."""
    argv = ["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-V", "mqttv5", "-q", "1",
            *cli_auth(broker, "sensor"), "-t", topic, "-l"]
    subprocess.run(argv, input=b"\n".join(payloads) + b"\n", check=True, timeout=60)


def mosquitto_sub(broker: EmbeddedMosquitto, account: str, *args: str, version: str = "mqttv5"
                  ) -> tuple[subprocess.Popen[str], str]:
    """mosquitto_sub -d, line-buffered, started and waited for until its SUBACK is in: (process, SUBACK line)."""
    if shutil.which("stdbuf") is None:
        pytest.skip("stdbuf (coreutils) not installed")
    argv = ["stdbuf", "-oL", "mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-V", version, "-d", "-v",
            *cli_auth(broker, account), *args]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("Subscribed (mid:"):
            return proc, line.strip()
    pytest.fail(f"mosquitto_sub exited before subscribing (exit {proc.wait()})")


def collect(reader: Probe, n: int) -> list[bytes]:
    """The payloads `reader` receives: at least n, and whatever else arrives shortly after."""
    got: list[bytes] = []
    deadline = time.monotonic() + 15
    while len(got) < n and time.monotonic() < deadline:
        with contextlib.suppress(queue.Empty):
            got.append(reader.messages.get(timeout=0.2)[1])
    time.sleep(0.3)
    return got + [payload for _topic, payload in reader.drain()]


def stop(proc: subprocess.Popen[str]) -> str:
    """Stop mosquitto_sub and return what it printed (nothing when it was stopped before)."""
    if proc.returncode is not None:
        return ""
    proc.terminate()
    out, _ = proc.communicate(timeout=15)
    return out


@pytest.fixture(scope="module")
def broker() -> Iterator[EmbeddedMosquitto]:
    """A broker of its own, with no bridge attached (these tests use the bridge's client id and group) and no
    decision_url (only the broker's accounts and anonymous clients log in)."""
    with private_broker("cs-mqtt-security-") as server:
        yield server


@pytest.fixture
def bridge(broker: EmbeddedMosquitto) -> Iterator[Probe]:
    """The platform holding the bridge's client id and shared subscription, as the real bridge does."""
    holder = Probe(broker, "platform", client_id=identity.CLIENT_ID)
    assert holder.connected
    assert holder.subscribe(BRIDGE_FILTER) == [1]
    yield holder
    holder.close()


def assert_still_the_bridge(broker: EmbeddedMosquitto, holder: Probe) -> None:
    """Not disconnected, and still receiving on its session."""
    payload = b'{"result": "' + uuid.uuid4().hex.encode() + b'"}'
    sensor_publish(broker, "v1.1/Datastreams(1)/Observations", [payload])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if holder.messages.get(timeout=0.2)[1] == payload:
                break
        except queue.Empty:
            continue
    else:
        pytest.fail("the bridge's session no longer receives")
    assert not holder.disconnected.is_set(), "the bridge was disconnected"


# ----------------------------------------------------------------------------- reserved client ids


@pytest.mark.parametrize("protocol", [V5, V311], ids=["mqtt5", "mqtt311"])
@pytest.mark.parametrize("account", ["anonymous", "sensor"])
def test_others_cannot_connect_with_the_bridges_client_ids(
    broker: EmbeddedMosquitto, bridge: Probe, account: str, protocol: int
) -> None:
    for client_id in (identity.CLIENT_ID, f"{identity.CLIENT_ID}-w2"):
        thief = Probe(broker, account, client_id=client_id, protocol=protocol)
        assert not thief.connected and "authori" in str(thief.connack).lower(), (client_id, str(thief.connack))
    assert_still_the_bridge(broker, bridge)


def test_mosquitto_sub_cannot_take_over_the_bridge_session(broker: EmbeddedMosquitto, bridge: Probe) -> None:
    """The attack as reported: `mosquitto_sub -i citystream-bridge ...`; also over WebSocket."""
    for account in ("anonymous", "sensor"):
        result = subprocess.run(
            ["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-i", identity.CLIENT_ID,
             *cli_auth(broker, account), "-t", "v1.1/#", "-C", "1", "-W", "5"],
            capture_output=True, text=True, timeout=30)
        assert result.returncode != 0 and "not authorised" in result.stderr, result
    assert broker.websocket_port is not None
    web = Probe(broker, "anonymous", client_id=identity.CLIENT_ID, port=broker.websocket_port,
                transport="websockets")
    assert not web.connected
    log = broker.log_path.read_text()
    assert f"Client {identity.CLIENT_ID} already connected" not in log
    assert (f"citystream_auth: refused client {identity.CLIENT_ID} (anonymous): the client id is reserved to the "
            "platform's MQTT bridge") in log
    assert_still_the_bridge(broker, bridge)


def test_extended_authentication_is_no_way_around(broker: EmbeddedMosquitto, bridge: Probe) -> None:
    """MQTT 5 extended authentication skips the basic-auth check the plugin hooks into; without a plugin that
    implements a method, Mosquitto refuses every such CONNECT ("Bad authentication method")."""
    sneaky = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=identity.CLIENT_ID, protocol=V5)
    properties = Properties(PacketTypes.CONNECT)
    properties.AuthenticationMethod = "SCRAM-SHA-256"
    answer: queue.Queue[Any] = queue.Queue()
    sneaky.on_connect = lambda _c, _u, _f, reason, _p: answer.put(reason)
    sneaky.connect(broker.host, broker.port, properties=properties)
    sneaky.loop_start()
    try:
        reason = answer.get(timeout=10)
        assert reason.is_failure and "authentication method" in str(reason).lower(), str(reason)
    finally:
        sneaky.disconnect()
        sneaky.loop_stop()
    assert_still_the_bridge(broker, bridge)


def test_the_platform_may_use_them_with_its_password(broker: EmbeddedMosquitto, bridge: Probe) -> None:
    """The plugin only refuses: the password file still checks the platform's password."""
    worker = Probe(broker, "platform", client_id=f"{identity.CLIENT_ID}-w2")
    assert worker.connected
    worker.close()
    impostor = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{identity.CLIENT_ID}-w3",
                           protocol=V5)
    impostor.username_pw_set(PLATFORM_MQTT_USER, "wrong")
    refused: queue.Queue[Any] = queue.Queue()
    impostor.on_connect = lambda _c, _u, _f, reason, _p: refused.put(reason)
    impostor.connect(broker.host, broker.port)
    impostor.loop_start()
    try:
        assert refused.get(timeout=10).is_failure
    finally:
        impostor.disconnect()
        impostor.loop_stop()
    other = Probe(broker, "anonymous", client_id="citystream-brid")  # not the prefix: an ordinary client id
    assert other.connected
    other.close()
    assert_still_the_bridge(broker, bridge)


def test_the_configured_bridge_client_id_is_the_one_reserved() -> None:
    root = make_service_dir("cs-mqtt-client-id-")
    try:
        with EmbeddedMosquitto(root / "mosquitto", find_free_port(), bridge_client_id="meter-bridge") as custom:
            assert not Probe(custom, "anonymous", client_id="meter-bridge-w1").connected
            assert Probe(custom, "platform", client_id="meter-bridge").connected
            free = Probe(custom, "anonymous", client_id=identity.CLIENT_ID)
            assert free.connected
            free.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -------------------------------------------------------------------------------- the shared group


@pytest.mark.parametrize(("protocol", "failure"), [(V5, NOT_AUTHORIZED_V5), (V311, FAILURE_V311)],
                         ids=["mqtt5", "mqtt311"])
@pytest.mark.parametrize("account", ["anonymous", "sensor"])
def test_others_cannot_subscribe_in_the_bridges_group(
    broker: EmbeddedMosquitto, account: str, protocol: int, failure: int
) -> None:
    """Per filter of one SUBSCRIBE: the bridge's group is refused, other groups and plain filters are not."""
    client = Probe(broker, account, protocol=protocol)
    try:
        codes = client.subscribe(BRIDGE_FILTER, "$share/citystream/#", "$share/citystream/v1.1/Observations",
                                 "$share/citystream2/v1.1/#", "$share/mine/v1.1/#", "v1.1/Things")
        assert codes == [failure, failure, failure, 1, 1, 1]
    finally:
        client.close()


def test_only_the_platform_shares_the_bridges_stream(broker: EmbeddedMosquitto, bridge: Probe) -> None:
    """40 QoS 1 Observations: the bridge's group gets every one, whoever else tried to join; refused
    subscribers get nothing. Old: readers in their own group, or without one, got their own copy of each
    device publish. New: nobody but the platform gets a device's publish, in any group, on the device's
    topic or on the ingest topic it is moved to."""
    attackers = [Probe(broker, account, protocol=protocol) for account in ("anonymous", "sensor")
                 for protocol in (V5, V311)]
    for attacker in attackers:
        assert attacker.subscribe(BRIDGE_FILTER, "v1.1/Things")[0] in (NOT_AUTHORIZED_V5, FAILURE_V311)
    cli = [mosquitto_sub(broker, "anonymous", "-t", BRIDGE_FILTER, "-t", "v1.1/Things", version=v)
           for v in ("mqttv5", "mqttv311")]
    assert [suback for _proc, suback in cli] == ["Subscribed (mid: 1): 135, 0", "Subscribed (mid: 1): 128, 0"]
    readers = []
    for account in ("anonymous", "sensor"):
        own_group = Probe(broker, account)
        group = f"$share/mine-{account}"  # one member: it would get every message of the group
        assert own_group.subscribe(f"{group}/v1.1/#", f"{group}/{INGEST_PREFIX}#") == [1, 1]
        plain = Probe(broker, account)
        assert plain.subscribe("v1.1/+/Observations", f"{INGEST_PREFIX}#", "#") == [1, 1, 1]
        readers += [own_group, plain]
    platform = Probe(broker, "platform")  # not in the group: its own copy
    assert platform.subscribe(f"{INGEST_PREFIX}#") == [1]
    try:
        payloads = [orjson.dumps({"result": i, "run": uuid.uuid4().hex}) for i in range(40)]
        sensor_publish(broker, "v1.1/Datastreams(7)/Observations", payloads)
        for reader in (bridge, platform):
            assert sorted(collect(reader, len(payloads))) == sorted(payloads)
        sentinel = b"sentinel-" + uuid.uuid4().hex.encode()
        publisher = Probe(broker, "platform")
        publisher.mqtt.publish("v1.1/Datastreams(7)/Observations", sentinel, qos=1).wait_for_publish(10)
        publisher.close()
        for reader in readers:
            assert not [p for _t, p in reader.until(sentinel) if p in payloads], reader.client_id
        for attacker in attackers:
            assert attacker.drain() == []
        for proc, _suback in cli:
            out = stop(proc)
            assert not any(p.decode() in out for p in payloads), out[-2000:]
    finally:
        for client in (*attackers, *readers, platform):
            client.close()
        for proc, _suback in cli:
            stop(proc)


def test_read_rules_apply_to_allowed_shared_subscriptions(broker: EmbeddedMosquitto) -> None:
    """A subscription the plugin grants ($share/mine/#) still delivers only what the subscriber may read:
    not other topics, not the error reports (anonymous clients read only anonymous_read), not restricted
    notifications."""
    reader = Probe(broker, "anonymous")
    try:
        assert reader.subscribe("$share/mine/#") == [1]
        platform = Probe(broker, "platform")
        restricted = Properties(PacketTypes.PUBLISH)
        restricted.UserProperty = [(AUDIENCE_PROPERTY, "r")]
        for topic in ("other/topic", "citystream/errors/v1.1/Observations", f"{INGEST_PREFIX}x/Observations"):
            platform.mqtt.publish(topic, topic.encode(), qos=1).wait_for_publish(10)
        platform.mqtt.publish("v1.1/Things(2)", b"restricted", qos=1, properties=restricted).wait_for_publish(10)
        platform.mqtt.publish("v1.1/Things(1)", b"v1.1/Things(1)", qos=1).wait_for_publish(10)
        platform.close()
        assert reader.until(b"v1.1/Things(1)") == [("v1.1/Things(1)", b"v1.1/Things(1)")]
    finally:
        reader.close()


# ---------------------------------------------------------------------------- creates and audiences


def test_creates_are_stamped_with_their_publisher_and_forged_stamps_removed(
    broker: EmbeddedMosquitto, bridge: Probe
) -> None:
    """The bridge learns who sent a create from the plugin's stamp, never from the device: user properties
    named citystream-* that the device sends are removed; its own properties, response topic and correlation
    data are kept; a retained create is not retained (it would reach later subscribers of the ingest topic)."""
    device = Probe(broker, "sensor")
    try:
        properties = Properties(PacketTypes.PUBLISH)
        properties.UserProperty = [
            (PRINCIPAL_PROPERTY, '{"kind":"operator","name":"root","roles":["admin","create","read"]}'),
            (CLIENT_PROPERTY, identity.CLIENT_ID), (AUDIENCE_PROPERTY, "r"), ("citystream-anything", "x"),
            ("site", "north")]
        properties.ResponseTopic = "citystream/errors/my-replies"
        properties.CorrelationData = b"corr-1"
        payload = orjson.dumps({"result": uuid.uuid4().hex})
        topic = "v1.1/Datastreams(1)/Observations"
        device.mqtt.publish(topic, payload, qos=1, retain=True, properties=properties).wait_for_publish(10)
        wait_for(lambda: payload in bridge.received, what="the create at the bridge")
        message = bridge.received[payload]
        assert message.topic == INGEST_PREFIX + topic and not message.retain
        user = bridge.user_properties(payload)
        assert [(k, v) for k, v in user if k.startswith("citystream-")] == [
            (PRINCIPAL_PROPERTY, orjson.dumps({"kind": "account", "name": broker.sensor_username, "roles": ["create"],
                                               "auth_id": broker.sensor_username}).decode()),
            (CLIENT_PROPERTY, device.client_id)]
        assert ("site", "north") in user
        assert message.properties is not None
        assert message.properties.ResponseTopic == "citystream/errors/my-replies"
        assert message.properties.CorrelationData == b"corr-1"
        old = Probe(broker, "sensor", protocol=V311)  # MQTT 3.1.1 has no properties: stamped all the same
        old_payload = orjson.dumps({"result": uuid.uuid4().hex})
        old.mqtt.publish(topic, old_payload, qos=1).wait_for_publish(10)
        old.close()
        wait_for(lambda: old_payload in bridge.received, what="the MQTT 3.1.1 create at the bridge")
        assert bridge.received[old_payload].topic == INGEST_PREFIX + topic
        assert [(k, v) for k, v in bridge.user_properties(old_payload) if k == CLIENT_PROPERTY] == [
            (CLIENT_PROPERTY, old.client_id)]
        assert [k for k, _v in bridge.user_properties(old_payload)].count(PRINCIPAL_PROPERTY) == 1
        later = Probe(broker, "platform")
        try:
            assert later.subscribe(INGEST_PREFIX + topic, topic) == [1, 1]
            sentinel = b"sentinel-" + uuid.uuid4().hex.encode()
            later.mqtt.publish(topic, sentinel, qos=1).wait_for_publish(10)
            assert later.until(sentinel) == [(topic, sentinel)], "a retained create reached a later subscriber"
        finally:
            later.close()
    finally:
        device.close()


AUDIENCES = [  # (topic, citystream-audience or None for public, who receives it)
    ("v1.1/Things(1)", None, {"anonymous", "sensor", "platform"}),
    ("v1.1/Things(2)", "r", {"platform"}),
    ("v1.1/Things(3)", "r;p=7", {"platform"}),
    ("v1.1/Things(4)", "r;o=sensor", {"sensor", "platform"}),
    ("v1.1/Things(5)", "r;p=7;o=sensor", {"sensor", "platform"}),
    ("v1.1/Things(6)", "r;o=sensor2", {"platform"}),
    ("v1.1/Things(7)", "not an audience", {"platform"}),
    ("citystream/errors/v1.1/Observations", "r;o=sensor", {"sensor", "platform"}),
    ("citystream/errors/v1.1/Things(1)/Observations", None, {"sensor", "platform"}),  # not anonymous_read
    ("citystream/other", None, {"platform"}),  # not readable
]


def test_each_subscriber_gets_only_the_notifications_its_audience_allows(broker: EmbeddedMosquitto) -> None:
    """The platform publishes each notification with its audience; the plugin delivers it on every
    subscription (wildcards, exact topics) only to whom the audience allows, and removes the property."""
    assert broker.sensor_username == "sensor"  # the audiences above name it
    readers = {account: Probe(broker, account) for account in ("anonymous", "sensor", "platform")}
    try:
        for reader in readers.values():
            assert reader.subscribe("v1.1/#", "citystream/#", "v1.1/Things(4)") == [1, 1, 1]
        publisher = Probe(broker, "platform")
        payloads = {}
        for topic, audience, _who in AUDIENCES:
            properties = Properties(PacketTypes.PUBLISH)
            properties.UserProperty = [NOTIFICATION_PROPERTY, *([(AUDIENCE_PROPERTY, audience)] if audience else [])]
            payloads[topic] = f"{topic} {uuid.uuid4().hex}".encode()
            publisher.mqtt.publish(topic, payloads[topic], qos=1, properties=properties).wait_for_publish(10)
        sentinel = b"sentinel-" + uuid.uuid4().hex.encode()
        publisher.mqtt.publish("v1.1/Things(0)", sentinel, qos=1).wait_for_publish(10)
        publisher.close()
        for account, reader in readers.items():
            got = {p for _t, p in reader.until(sentinel)}
            expected = {payloads[topic] for topic, _a, who in AUDIENCES if account in who}
            assert got - {sentinel} == expected, (account, sorted(got - {sentinel} ^ expected))
            for payload in expected:
                user = reader.user_properties(payload)
                assert not [k for k, _v in user if k.startswith("citystream-")], (account, user)
                assert NOTIFICATION_PROPERTY in user
    finally:
        for reader in readers.values():
            reader.close()


def test_a_will_reaches_only_principals_who_read_everything(broker: EmbeddedMosquitto) -> None:
    """A Will is published by the broker, not by the platform: the plugin does not know its audience, so only
    the platform gets it (not anonymous readers, not the device account's other devices)."""
    readers = {account: Probe(broker, account) for account in ("anonymous", "sensor", "platform")}
    try:
        for reader in readers.values():
            assert reader.subscribe("v1.1/#") == [1]
        will = b"will-" + uuid.uuid4().hex.encode()
        connected: queue.Queue[Any] = queue.Queue()
        dying = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=V5)
        dying.username_pw_set(*credentials(broker, "sensor"))
        dying.will_set("v1.1/Datastreams(1)/Observations", will, qos=1)  # a topic it may publish to
        dying.on_connect = lambda _c, _u, _f, reason, _p: connected.put(reason)
        dying.connect(broker.host, broker.port)
        dying.loop_start()
        assert not connected.get(timeout=10).is_failure
        dying.loop_stop()
        sock = dying.socket()
        assert sock is not None
        sock.close()  # gone without DISCONNECT: the broker sends the Will
        readers["platform"].until(will)
        sentinel = b"sentinel-" + uuid.uuid4().hex.encode()
        readers["platform"].mqtt.publish("v1.1/Datastreams(1)/Observations", sentinel, qos=1).wait_for_publish(10)
        for account in ("anonymous", "sensor"):
            assert readers[account].until(sentinel) == [("v1.1/Datastreams(1)/Observations", sentinel)], account
    finally:
        for reader in readers.values():
            reader.close()


class Session:
    """A paho MQTT 5 client with a persistent session (expiry 300 s) under a given client id."""

    def __init__(self, broker: EmbeddedMosquitto, account: str, client_id: str) -> None:
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.subscribed = threading.Event()
        connected: queue.Queue[Any] = queue.Queue()
        self.mqtt = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=V5)
        self.mqtt.on_subscribe = lambda *_args: self.subscribed.set()
        user, password = credentials(broker, account)
        if user is not None:
            self.mqtt.username_pw_set(user, password)
        self.mqtt.on_connect = lambda _c, _u, flags, reason, _p: connected.put((flags, reason))
        self.mqtt.on_message = lambda _c, _u, msg: self.messages.put((msg.topic, bytes(msg.payload)))
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 300
        self.mqtt.connect(broker.host, broker.port, clean_start=False, properties=properties)
        self.mqtt.loop_start()
        self.flags, reason = connected.get(timeout=10)
        assert not reason.is_failure, str(reason)

    def until(self, payload: bytes) -> list[tuple[str, bytes]]:
        got: list[tuple[str, bytes]] = []
        deadline = time.monotonic() + 10
        while (left := deadline - time.monotonic()) > 0 and (not got or got[-1][1] != payload):
            with contextlib.suppress(queue.Empty):
                got.append(self.messages.get(timeout=left))
        assert got and got[-1][1] == payload, got
        return got

    def close(self) -> None:
        self.mqtt.disconnect()
        self.mqtt.loop_stop()


@pytest.mark.parametrize("heir", ["sensor", "anonymous"])
def test_queued_notifications_go_only_to_who_may_read_them(broker: EmbeddedMosquitto, heir: str) -> None:
    """Notifications queued for an offline persistent session were checked for its principal. When another
    principal takes the session over (client ids are no secret), it gets only what it may read itself;
    the same principal gets everything queued."""
    client_id = f"session-{uuid.uuid4().hex[:8]}"
    owner = Session(broker, "sensor", client_id)
    owner.mqtt.subscribe("v1.1/#", qos=1)
    assert owner.subscribed.wait(10), "no SUBACK"
    publisher = Probe(broker, "platform")
    assert publisher.subscribe("$SYS/broker/log/N", qos=0) == [0]
    owner.close()
    wait_for(lambda: any(p.endswith(f"Client {client_id} disconnected.".encode())
                         for _t, p in publisher.drain()), what="the owner to be gone")
    own, public = b"own-" + uuid.uuid4().hex.encode(), b"public-" + uuid.uuid4().hex.encode()
    private = Properties(PacketTypes.PUBLISH)
    private.UserProperty = [(AUDIENCE_PROPERTY, f"r;o={broker.sensor_username}")]
    publisher.mqtt.publish("v1.1/Things(9)", own, qos=1, properties=private).wait_for_publish(10)
    publisher.mqtt.publish("v1.1/Things(8)", public, qos=1).wait_for_publish(10)
    heir_session = Session(broker, heir, client_id)
    try:
        assert heir_session.flags.session_present
        sentinel = b"sentinel-" + uuid.uuid4().hex.encode()
        publisher.mqtt.publish("v1.1/Things(0)", sentinel, qos=1).wait_for_publish(10)
        got = [p for _t, p in heir_session.until(sentinel)]
        assert got == ([own, public, sentinel] if heir == "sensor" else [public, sentinel]), got
    finally:
        heir_session.close()
        publisher.close()


# ------------------------------------------------------------------------------ without the platform


def _refused(broker: EmbeddedMosquitto, account: str) -> Probe:
    probe = Probe(broker, account)
    assert not probe.connected and "authori" in str(probe.connack).lower(), str(probe.connack)
    return probe


def test_without_a_decision_url_only_the_brokers_accounts_log_in(broker: EmbeddedMosquitto) -> None:
    """Nobody to ask about other credentials: they are refused; the accounts and anonymous readers are not."""
    assert broker.decision_url is None
    assert not any(line.startswith("plugin_opt_decision_") for line in broker.conf_path.read_text().splitlines())
    refused = _refused(broker, "user")
    assert (f"citystream_auth: refused client {refused.client_id} (alice): no decision_url"
            in broker.log_path.read_text())
    for account in ("anonymous", "sensor", "platform"):
        probe = Probe(broker, account)
        assert probe.connected, account
        probe.close()


def _plugin_reports(probe: Probe, newer_than: dict[str, Any] | None = None,
                    until: Callable[[dict[str, Any]], bool] = lambda _r: True) -> dict[str, Any]:
    """The plugin's next heartbeat (every 2 s on $SYS/broker/citystream/plugin) that satisfies `until`."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(queue.Empty):
            topic, payload = probe.messages.get(timeout=0.5)
            if topic == PLUGIN_TOPIC and until(report := orjson.loads(payload)):
                return report  # type: ignore[no-any-return]
    pytest.fail(f"no such report from the plugin (after {newer_than})")


def test_the_plugin_reports_its_counters(broker: EmbeddedMosquitto) -> None:
    """Its presence tells the notifier that audiences are enforced; the counts go to /metrics."""
    watcher = Probe(broker, "platform")
    try:
        assert watcher.subscribe(PLUGIN_TOPIC, qos=0) == [0]
        first = _plugin_reports(watcher)
        assert first["plugin"] == "citystream_auth" and first["audiences"] is True
        counters = {"connect_refused", "subscribe_refused", "publish_refused", "delivery_withheld",
                    "platform_errors", "disconnected"}
        assert set(first) == {"plugin", "audiences", *counters}
        assert all(isinstance(first[name], int) for name in counters)
        _refused(broker, "user")
        thief = Probe(broker, "anonymous")
        assert thief.subscribe(BRIDGE_FILTER) == [NOT_AUTHORIZED_V5]
        thief.close()
        assert "Not authorized" in subprocess.run(
            ["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-V", "mqttv5", "-q", "1",
             *cli_auth(broker, "sensor"), "-t", "elsewhere", "-m", "x"], capture_output=True, text=True).stderr
        _plugin_reports(watcher, first, lambda r: all(r[name] > first[name] for name in (
            "connect_refused", "subscribe_refused", "publish_refused")))
    finally:
        watcher.close()


def test_an_unreachable_platform_refuses_new_logins_and_publishes_only() -> None:
    """Fail closed: while the platform does not answer, the plugin lets in no credentials it would have to
    ask about, and no publish it would have to ask about; the accounts and anonymous readers still work."""
    closed = f"http://127.0.0.1:{find_free_port()}/internal/mqtt"
    with private_broker("cs-mqtt-unreachable-", decision_url=closed) as lonely:
        refused = _refused(lonely, "user")
        log = lonely.log_path.read_text()
        assert f"citystream_auth: the platform did not answer {closed}/connect" in log
        assert f"citystream_auth: refused client {refused.client_id} (alice)" in log
        reader = Probe(lonely, "anonymous")
        try:
            assert reader.subscribe("v1.1/#") == [1]
            sensor = Probe(lonely, "sensor")
            sensor.mqtt.publish("v1.1/Datastreams(1)/Observations", b"{}", qos=1).wait_for_publish(10)
            sensor.close()  # the account creates anywhere: nothing to ask
            result = subprocess.run(
                ["mosquitto_pub", "-h", lonely.host, "-p", str(lonely.port), "-V", "mqttv5", "-q", "1",
                 "-t", "v1.1/Observations", "-m", "{}"], capture_output=True, text=True, timeout=30)
            assert "Not authorized" in result.stderr, result.stderr
            assert "the platform could not be asked" in lonely.log_path.read_text()
        finally:
            reader.close()
        watcher = Probe(lonely, "platform")
        try:
            assert watcher.subscribe(PLUGIN_TOPIC, qos=0) == [0]
            assert _plugin_reports(watcher, until=lambda r: r["platform_errors"] >= 2)["connect_refused"] >= 1
        finally:
            watcher.close()


# ------------------------------------------------------------------------------------- end to end


def test_an_attacker_in_the_bridges_group_does_not_lose_observations(
    sta: str, mosquitto_server: EmbeddedMosquitto
) -> None:
    """The real app and bridge: every one of N acknowledged QoS 1 Observations is stored, and neither the
    would-be group member nor the would-be session thief gets anything or disturbs the bridge."""
    broker = mosquitto_server
    datastream = create_datastream(sta)
    member = Probe(broker, "anonymous")
    assert member.subscribe(BRIDGE_FILTER, "v1.1/Things(999999)") == [NOT_AUTHORIZED_V5, 1]
    old_member, _ = mosquitto_sub(broker, "anonymous", "-t", BRIDGE_FILTER, "-t", "v1.1/Things(999999)",
                               version="mqttv311")
    thief = Probe(broker, "anonymous", client_id=identity.CLIENT_ID)
    assert not thief.connected
    try:
        n = 60
        payloads = [orjson.dumps({"result": i}) for i in range(n)]
        sensor_publish(broker, f"v1.1/Datastreams({datastream})/Observations", payloads)

        def stored() -> list[int]:
            body = httpx.get(f"{sta}/Datastreams({datastream})/Observations",
                             params={"$top": 1000, "$select": "result"}, timeout=10).json()
            return sorted(o["result"] for o in body["value"])

        wait_for(lambda: len(stored()) >= n, what=f"{n} stored observations")
        assert stored() == list(range(n))
        assert member.drain() == []
        assert '{"result"' not in stop(old_member)
        assert f"Client {identity.CLIENT_ID} already connected" not in broker.log_path.read_text()
    finally:
        member.close()
        stop(old_member)


def _pub_cli(broker: EmbeddedMosquitto, auth: list[str], topic: str, payload: str) -> str:
    """mosquitto_pub, MQTT 5, QoS 1; its stderr (where a refusal in the PUBACK shows)."""
    return subprocess.run(["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-V", "mqttv5", "-q", "1",
                           *auth, "-t", topic, "-m", payload], capture_output=True, text=True, timeout=30).stderr


def _own_error_report(broker: EmbeddedMosquitto, auth: list[str]) -> list[str]:
    """What a mosquitto_sub logged in with `auth` reads on citystream/errors/# after a mosquitto_pub logged in
    the same way sent an Observation the bridge rejects (its stream does not exist)."""
    reader, _ = mosquitto_sub(broker, "anonymous", *auth, "-t", "citystream/errors/#", "-C", "1", "-W", "5")
    assert _pub_cli(broker, auth, "v1.1/Datastreams(999999)/Observations", '{"result": 1}') == ""
    out, _ = reader.communicate(timeout=30)
    return [line for line in out.splitlines() if line.startswith("citystream/errors/")]


def test_a_keys_error_reports_reach_that_key_only(sta: str, database_url: str,
                                                  mosquitto_server: EmbeddedMosquitto) -> None:
    """The real bridge reports a rejected create with the audience of its publisher (r;o=<auth id>): the key
    that published reads it, another device's key does not (a key with read everywhere would: it may read
    whatever any audience restricts). The other device's first report is one of its own, sent later."""
    key_id, secret = split_key(new_key(database_url, "create", "read", name="reports to itself"))  # type: ignore[misc]
    other_id, other_secret = split_key(new_key(database_url, "create", name="another device"))  # type: ignore[misc]
    other = ["-u", other_id, "-P", other_secret]
    other_reader, _ = mosquitto_sub(mosquitto_server, "anonymous", *other, "-t", "citystream/errors/#",
                                    "-C", "1", "-W", "20")
    try:
        [report] = _own_error_report(mosquitto_server, ["-u", key_id, "-P", secret])
        assert report.startswith("citystream/errors/v1.1/Datastreams(999999)/Observations ")
        assert '"code":400' in report
        assert "Not authorized" in _pub_cli(mosquitto_server, other, "elsewhere/x", "{}")  # the plugin reports it
        out, _ = other_reader.communicate(timeout=30)
        reports = [line for line in out.splitlines() if line.startswith("citystream/errors/")]
        assert [line.split(" ", 1)[0] for line in reports] == ["citystream/errors/elsewhere/x"], out
    finally:
        stop(other_reader)


def test_a_key_given_as_the_only_password_reads_its_own_error_reports(
    sta: str, database_url: str, mosquitto_server: EmbeddedMosquitto
) -> None:
    token = new_key(database_url, "create", "read", name="the whole key as the password")
    assert _own_error_report(mosquitto_server, ["-P", token]) != []  # mosquitto_pub/sub send no user name


# -------------------------------------------------------------------------------- building the plugin


def test_plugin_compiles_without_warnings(tmp_path: Path) -> None:
    """With the link flags (-lcurl -lcjson, which compile_auth_plugin adds after the source): a shared object
    builds without them too, its curl_*/cJSON_* symbols unresolved until Mosquitto fails to load it."""
    compile_auth_plugin(tmp_path / "citystream_auth.so", extra_flags=(
        "-Werror", "-Wshadow", "-Wconversion", "-Wstrict-prototypes", "-Wmissing-prototypes", "-Wformat=2"))
    library = (tmp_path / "citystream_auth.so").read_bytes()
    assert library.startswith(b"\x7fELF")
    assert b"libcurl.so." in library and b"libcjson.so." in library  # DT_NEEDED: linked, not left to chance


def test_plugin_is_compiled_once_per_source_and_broker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    broker = find_mosquitto()
    first = auth_plugin_library(broker, cache)
    [cached] = cache.iterdir()
    assert cached.name.startswith("citystream_auth-") and cached.read_bytes() == first
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    assert auth_plugin_library(broker, cache) == first  # from the cache: no compiler needed
    other_broker = tmp_path / "mosquitto"
    shutil.copy(broker, other_broker)  # another broker binary (an upgrade): built again
    with pytest.raises(EmbeddedServiceError, match="no C compiler"):
        auth_plugin_library(other_broker, cache)


@pytest.mark.parametrize("loosen", ["file", "directory"])
def test_a_cache_others_could_write_to_is_not_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      loosen: str) -> None:
    """The broker runs what the cache holds: a library someone else could have planted is compiled anew."""
    cache = tmp_path / "cache"
    broker = find_mosquitto()
    genuine = auth_plugin_library(broker, cache)
    [cached] = cache.iterdir()
    cached.write_bytes(b"\x7fELF planted")
    (cached if loosen == "file" else cache).chmod(0o777 if loosen == "directory" else 0o666)
    assert auth_plugin_library(broker, cache) == genuine


def test_a_missing_compiler_is_a_clear_error_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    data_dir = tmp_path / "mosquitto"
    with pytest.raises(EmbeddedServiceError) as raised:
        EmbeddedMosquitto(data_dir, find_free_port()).start()
    message = str(raised.value)
    assert "citystream_auth" in message and "no C compiler" in message
    assert f"apt-get install {AUTH_PLUGIN_PACKAGES}" in message
    assert not data_dir.exists()


def _mirror(source: Path, target: Path, hidden: tuple[str, ...]) -> None:
    """`target`: a directory of symlinks to the entries of `source`, except `hidden`."""
    target.mkdir()
    for entry in source.iterdir():
        if entry.name not in hidden:
            (target / entry.name).symlink_to(entry)


def _gcc() -> str:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc not installed")
    return gcc


def _multiarch(gcc: str) -> str:
    return subprocess.run([gcc, "-print-multiarch"], capture_output=True, text=True).stdout.strip()


def _compiler_hiding(tmp_path: Path, *hidden: str) -> str:
    """A CC that sees the system's headers except `hidden` (as if their package were not installed), in
    /usr/include and its multiarch directory (where libcurl's headers are)."""
    gcc = _gcc()
    builtin = subprocess.run([gcc, "-print-file-name=include"], capture_output=True, text=True).stdout.strip()
    multiarch = _multiarch(gcc)
    fake = tmp_path / f"include-{uuid.uuid4().hex[:8]}"
    _mirror(Path("/usr/include"), fake, (*hidden, multiarch))
    if multiarch and (Path("/usr/include") / multiarch).is_dir():
        _mirror(Path("/usr/include") / multiarch, fake / multiarch, hidden)
    dirs = [builtin, *([str(fake / multiarch)] if multiarch else []), str(fake)]
    return shlex.join([gcc, "-nostdinc", *(arg for d in dirs for arg in ("-isystem", d))])


@pytest.mark.parametrize(("hidden", "header", "package"), [
    ("mosquitto_broker.h", "mosquitto_broker.h", "mosquitto-dev"),
    ("mosquitto_plugin.h", "mosquitto_plugin.h", "mosquitto-dev"),
    ("mosquitto.h", "mosquitto.h", "libmosquitto-dev"),
    ("mqtt_protocol.h", "mqtt_protocol.h", "libmosquitto-dev"),
    ("curl", "curl/curl.h", "libcurl4-openssl-dev"),
    ("cjson", "cjson/cJSON.h", "libcjson-dev"),
    ("uthash.h", "uthash.h", "uthash-dev"),
    ("stdlib.h", "stdlib.h", "libc6-dev"),
])
def test_a_missing_header_names_its_package(tmp_path: Path, hidden: str, header: str, package: str) -> None:
    if not Path("/usr/include/mosquitto_broker.h").is_file():
        pytest.skip("the headers are not in /usr/include")
    compile_auth_plugin(tmp_path / "control.so", cc=_compiler_hiding(tmp_path))  # the simulation itself builds
    with pytest.raises(EmbeddedServiceError) as raised:
        compile_auth_plugin(tmp_path / "x.so", cc=_compiler_hiding(tmp_path, hidden))
    message = str(raised.value)
    assert f"the C header {header} is missing: install {package}" in message, message
    assert f"apt-get install {AUTH_PLUGIN_PACKAGES}" in message


def _linker_hiding(tmp_path: Path, *hidden: str) -> str:
    """A CC whose linker sees the system's libraries except the files `hidden` (libcurl.so: as if
    libcurl4-openssl-dev were not installed): gcc's own directory and a mirror of the multiarch library
    directory are its only search path (a specs file replaces gcc's list, -nostdlib the linker's)."""
    gcc = _gcc()
    own = Path(subprocess.run([gcc, "-print-libgcc-file-name"], capture_output=True, text=True).stdout.strip()).parent
    libraries = Path("/usr/lib") / _multiarch(gcc)
    if not (libraries / "libcurl.so").exists() or not (libraries / "libcjson.so").exists():
        pytest.skip(f"libcurl and cJSON are not in {libraries}")
    fake = tmp_path / f"lib-{uuid.uuid4().hex[:8]}"
    _mirror(libraries, fake, hidden)
    specs = tmp_path / f"{fake.name}.specs"
    specs.write_text(f"*link_libgcc:\n-L{own} -L{fake}\n\n")
    return shlex.join([gcc, f"-specs={specs}", "-Wl,-nostdlib"])


@pytest.mark.parametrize(("hidden", "library", "package"), [
    (("libcurl.so", "libcurl.a"), "libcurl", "libcurl4-openssl-dev"),
    (("libcjson.so", "libcjson.a"), "libcjson", "libcjson-dev"),
])
def test_a_missing_library_names_its_package(tmp_path: Path, hidden: tuple[str, ...], library: str,
                                             package: str) -> None:
    compile_auth_plugin(tmp_path / "control.so", cc=_linker_hiding(tmp_path))  # the simulation itself links
    with pytest.raises(EmbeddedServiceError) as raised:
        compile_auth_plugin(tmp_path / "x.so", cc=_linker_hiding(tmp_path, *hidden))
    message = str(raised.value)
    assert f"the library {library} is missing: install {package}" in message, message
    assert f"apt-get install {AUTH_PLUGIN_PACKAGES}" in message


# ----------------------------------------------------------------------------------- configuration


def _secret_file(root: Path, text: str = "platform-secret\n") -> Path:
    secret = root / "decision-secret"
    secret.write_text(text)
    secret.chmod(0o600)
    return secret


def _options(root: Path) -> dict[str, str]:
    """Everything the plugin takes, valid (the control case starts)."""
    return {"platform_user": PLATFORM_MQTT_USER, "bridge_client_id": identity.CLIENT_ID,
            "bridge_group": identity.SHARED_GROUP, "ingest_prefix": INGEST_PREFIX,
            "readable": "v1.0/# v1.1/# citystream/errors/#", "anonymous_read": "v1.1/#", "account_user": "sensor",
            "decision_url": f"http://127.0.0.1:{find_free_port()}/internal/mqtt",
            "decision_secret_file": str(_secret_file(root)), "cache_seconds": "10", "revalidate_seconds": "2",
            "timeout_ms": "2000"}


def _start_with(root: Path, options: dict[str, str], unreadable: Path | None = None) -> tuple[int | None, str]:
    """Run Mosquitto with the plugin and `options`: (its exit status, its log), or (None, log) once it
    listens (then stopped). As root it runs as the broker account, which cannot read `unreadable`."""
    library = root / "citystream_auth.so"
    library.write_bytes(auth_plugin_library(find_mosquitto()))
    port = find_free_port()
    conf = root / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nplugin {library}\n"
                    + "".join(f"plugin_opt_{name} {value}\n" for name, value in options.items()))
    as_root = os.geteuid() == 0
    if as_root:
        for path in (root, *root.iterdir()):
            if path != unreadable:
                shutil.chown(path, "mosquitto")
    if unreadable is not None:
        unreadable.chmod(0)
    proc = subprocess.Popen([str(find_mosquitto()), "-c", str(conf)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, user="mosquitto" if as_root else None)
    try:
        def done() -> bool:
            if proc.poll() is not None:
                return True
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", port)) == 0
        wait_for(done, timeout=15, what="Mosquitto to exit or listen")
        status = proc.poll()
        if status is None:
            proc.terminate()
        out, _ = proc.communicate(timeout=15)
        return status, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture
def plugin_dir() -> Iterator[Path]:
    root = make_service_dir("cs-mqtt-opt-")
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_the_plugin_starts_with_its_options(plugin_dir: Path) -> None:
    """The control case of the refusals below: the complete set of options starts a broker."""
    status, log = _start_with(plugin_dir, _options(plugin_dir))
    assert status is None, log
    assert "citystream_auth: client ids citystream-bridge* and shared group citystream reserved" in log


@pytest.mark.parametrize("missing", ["platform_user", "bridge_client_id", "bridge_group", "ingest_prefix",
                                     "readable"])
def test_the_plugin_refuses_to_start_without_its_options(plugin_dir: Path, missing: str) -> None:
    """A broker whose plugin lacks a required option does not start at all, rather than run unprotected."""
    options = _options(plugin_dir)
    del options[missing]
    status, log = _start_with(plugin_dir, options)
    assert status not in (None, 0), log
    assert f"citystream_auth: missing option plugin_opt_{missing}" in log, log


@pytest.mark.parametrize(("change", "message"), [
    pytest.param({"decision_secret_file": None},
                 "plugin_opt_decision_url needs a readable plugin_opt_decision_secret_file", id="no-secret-file"),
    pytest.param({"decision_secret_file": "/nonexistent/decision-secret"},
                 "cannot read plugin_opt_decision_secret_file /nonexistent/decision-secret", id="missing-secret"),
    pytest.param({"decision_secret_file": "empty"}, "is empty", id="empty-secret"),
    pytest.param({"decision_secret_file": "unreadable"}, "cannot read plugin_opt_decision_secret_file",
                 id="unreadable-secret"),
    pytest.param({"bridge_group": "a/b"}, "plugin_opt_bridge_group must not contain", id="group-with-slash"),
    pytest.param({"bridge_group": "#"}, "plugin_opt_bridge_group must not contain", id="group-wildcard"),
    pytest.param({"readable": "v1.1/#/x"}, "plugin_opt_readable: not a topic filter", id="bad-readable"),
    pytest.param({"anonymous_read": "v1.1/a+"}, "plugin_opt_anonymous_read: not a topic filter",
                 id="bad-anonymous-read"),
    pytest.param({"readable": " ".join(f"t{n}/#" for n in range(33))},
                 "plugin_opt_readable: too many topic filters", id="too-many-filters"),
    pytest.param({"cache_seconds": "-1"}, "plugin_opt_cache_seconds must be a number", id="negative-cache"),
    pytest.param({"revalidate_seconds": "0"}, "plugin_opt_revalidate_seconds must be a number",
                 id="zero-revalidate"),
    pytest.param({"timeout_ms": "2s"}, "plugin_opt_timeout_ms must be a number", id="timeout-not-a-number"),
    pytest.param({"platform_user": "x" * 4097}, "plugin_opt_platform_user is longer than 4096 bytes",
                 id="option-too-long"),
])
def test_the_plugin_refuses_to_start_with_bad_options(plugin_dir: Path, change: dict[str, str | None],
                                                      message: str) -> None:
    """Notably a decision_url without a secret it can read: it could not prove to the platform that it is
    the broker, and would refuse every login the platform decides."""
    options = _options(plugin_dir)
    unreadable = None
    for name, value in change.items():
        if value is None:
            del options[name]
        elif value == "empty":
            options[name] = str(_secret_file(plugin_dir, "\n"))
        elif value == "unreadable":
            unreadable = _secret_file(plugin_dir)
            options[name] = str(unreadable)
        else:
            options[name] = value
    status, log = _start_with(plugin_dir, options, unreadable)
    assert status not in (None, 0), log
    assert "citystream_auth: " in log and message in log, log
