"""MQTT.js (npm `mqtt`, the library Masterportal's sensor layers use) against the real platform over
WebSocket: at the broker's own WebSocket listener and at `/mqtt` on the HTTP port, which relays to it
(citystream/mqtt_websocket.py). MQTT 3.1.1 and 5, QoS 0/1/2 subscriptions on STA topics; Observations created
over HTTP and by MQTT.js publishing through `/mqtt`; every notification must equal the GET of its selfLink.
Then what the relay promises besides: frames unchanged, a clear 4xx for plain HTTP, the broker's
authentication, bounded messages, and no upstream connection left behind by a client that vanishes; and, last,
the same against `citystream up` itself, with no reverse proxy.

The node clients live in tests/clients/js (`npm ci` there; scripts/quickstart.sh does it when node and npm
are installed): tests/clients/js/mqtt_clients.mjs runs several MQTT.js clients in one node process, takes
commands on stdin and reports events as JSON lines.
"""

from __future__ import annotations

import asyncio
import functools
import json
import queue
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from citystream.embedded import EmbeddedMosquitto, find_free_port
from citystream.settings import Settings
from mqtt_bridge import wire
from tests.clients.node_mqtt import NodeClients, requires_mqtt_js
from tests.clients.up import running_up
from tests.conftest import empty_database, private_broker, running_app
from tests.mqtt_helpers import wait_for, wait_until_learned
from tests.sta_helpers import create_datastream, post

pytestmark = requires_mqtt_js

MAX_MESSAGE = 1024 * 1024  # the relay's default, CITYSTREAM_MQTT_WS_MAX_MESSAGE_BYTES


@pytest.fixture(scope="module")
def broker() -> Iterator[EmbeddedMosquitto]:
    """A broker of this module's own: the app's bridge keeps a persistent session in the shared-subscription
    group, which must not linger in the session's broker after the module."""
    with private_broker("cs-js-mqtt-") as own:
        yield own


@pytest.fixture(scope="module")
def app(database_url: str, broker: EmbeddedMosquitto) -> Iterator[str]:
    """The real app with its bridge, `/mqtt` relaying to the broker's WebSocket listener."""
    empty_database(database_url)
    settings = Settings(database_url=database_url, mqtt_url=broker.platform_url, host="127.0.0.1",
                        http_port=find_free_port(), mqtt_ws_url=broker.websocket_url)
    with running_app(settings, database_url) as url:
        yield url


def relay_url(app: str) -> str:
    return app.replace("http://", "ws://", 1) + "/mqtt"


def endpoints(app: str, broker: EmbeddedMosquitto) -> dict[str, str]:
    assert broker.websocket_url is not None
    return {"broker": broker.websocket_url, "relay": relay_url(app)}


def open_relays() -> float:
    """The relay's gauge of open connections (tests run the app in this process: one registry)."""
    from citystream.mqtt_websocket import OPEN

    return float(OPEN._value.get())


@pytest.fixture
def sensor(broker: EmbeddedMosquitto) -> dict[str, str]:
    return {"username": broker.sensor_username, "password": broker.sensor_password}


@pytest.mark.parametrize("sta_version", ["v1.1", "v1.0"])
def test_notifications_over_websocket_equal_the_get_of_their_self_link(
        app: str, broker: EmbeddedMosquitto, sensor: dict[str, str], sta_version: str) -> None:
    """Topics and entities of both STA versions (Masterportal layer configs still say 1.0)."""
    sta = f"{app}/{sta_version}"
    datastream = create_datastream(sta)
    topic = f"{sta_version}/Datastreams({datastream})/Observations"
    subscribers: list[dict[str, Any]] = [
        {"name": f"{where}-v{version}-qos{qos}", "url": url, "protocolVersion": version,
         "clientId": f"js-{where}-v{version}-q{qos}-{sta_version}", "subscribe": {topic: qos}}
        for where, url in endpoints(app, broker).items() for version in (4, 5) for qos in (0, 1, 2)]
    publishers: list[dict[str, Any]] = [
        {"name": f"sensor-v{version}", "url": relay_url(app), "protocolVersion": version,
         "clientId": f"js-sensor-v{version}-{sta_version}", **sensor} for version in (4, 5)]
    node = NodeClients(subscribers + publishers)
    try:
        for spec in subscribers:
            granted = node.wait("subscribe", spec["name"])[0]["granted"]
            assert granted == [[topic, spec["subscribe"][topic]]], spec["name"]
        for spec in publishers:
            assert node.wait("connect", spec["name"])[0]["reasonCode"] == 0
        wait_until_learned(app, topic)

        for result in (1.5, 2.5):  # HTTP POST
            assert post(sta, f"Datastreams({datastream})/Observations", {"result": result}).status_code == 201
        published = [  # MQTT publish through /mqtt: MQTT 3.1.1 and 5, QoS 0, 1 and 2
            node.publish("sensor-v4", topic, orjson.dumps({"result": 3.5}).decode(), 1, "v4-q1"),
            node.publish("sensor-v5", topic, orjson.dumps({"result": 4.5}).decode(), 2, "v5-q2"),
            node.publish("sensor-v5", topic, orjson.dumps({"result": 5.5}).decode(), 0, "v5-q0"),
        ]
        assert [p["reasonCode"] for p in published] == [0, 0, 0]
        results = [1.5, 2.5, 3.5, 4.5, 5.5]

        def notifications(name: str) -> list[dict[str, Any]]:
            # A device's own publish on the topic reaches subscribers too (raw, not an entity): MQTT 5
            # clients tell notifications by their user property, MQTT 3.1.1 ones by the entity's selfLink.
            found = []
            for message in node.of("message", name):
                body = orjson.loads(message["payload"])
                if message["userProperties"] is not None:
                    is_notification = message["userProperties"].get("citystream") == "notification"
                    assert is_notification == ("@iot.selfLink" in body), message
                if "@iot.selfLink" in body:
                    assert message["topic"] == topic
                    found.append(body)
            return found

        def all_of(name: str) -> list[dict[str, Any]]:
            found = notifications(name)
            return found if len(found) >= len(results) else []

        for spec in subscribers:
            name = spec["name"]
            got = wait_for(functools.partial(all_of, name), what=f"{len(results)} notifications at {name}")
            assert sorted(n["result"] for n in got) == results, name
            assert len({n["@iot.id"] for n in got}) == len(results), name
            for body in got:
                assert body == httpx.get(body["@iot.selfLink"], timeout=10).json(), (name, body)
        # Both listeners deliver the same notifications.
        assert all(sorted(map(json.dumps, notifications(s["name"]))) ==
                   sorted(map(json.dumps, notifications(subscribers[0]["name"]))) for s in subscribers)
    finally:
        node.close()
    wait_for(lambda: open_relays() == 0, what="the relayed connections to close")


def test_qos2_subscriptions_with_retain_handling(app: str, broker: EmbeddedMosquitto) -> None:
    """MQTT 5 subscriptions at QoS 2 with each retain handling (0: retained messages at subscribe, 1: only for
    a new subscription, 2: none), and MQTT 3.1.1 at QoS 2, at both endpoints: each is granted QoS 2, and a live
    Observation arrives, not flagged retained, equal to its GET, at QoS 1 (notifications are published at QoS 1,
    docs/mqtt.md; the broker delivers at the lower of the two). The platform retains no notification, so a
    subscriber who comes later (retain handling 0) is not handed an old Observation as if it were live."""
    sta = f"{app}/v1.1"
    datastream = create_datastream(sta)
    topic = f"v1.1/Datastreams({datastream})/Observations"
    subscribers: list[dict[str, Any]] = [
        {"name": f"{where}-v5-rh{rh}", "url": url, "protocolVersion": 5, "clientId": f"js-rh{rh}-{where}",
         "subscribe": {topic: {"qos": 2, "rh": rh}}}
        for where, url in endpoints(app, broker).items() for rh in (0, 1, 2)] + [
        {"name": f"{where}-v4", "url": url, "protocolVersion": 4, "clientId": f"js-rh-v4-{where}",
         "subscribe": {topic: 2}} for where, url in endpoints(app, broker).items()]
    node = NodeClients(subscribers)
    try:
        for spec in subscribers:
            assert node.wait("subscribe", spec["name"])[0]["granted"] == [[topic, 2]], spec["name"]
        wait_until_learned(app, topic)
        assert post(sta, f"Datastreams({datastream})/Observations", {"result": 7}).status_code == 201
        for spec in subscribers:
            (message,) = node.wait("message", spec["name"])
            assert (message["topic"], message["qos"], message["retain"]) == (topic, 1, False), spec["name"]
            body = orjson.loads(message["payload"])
            assert body["result"] == 7 and body == httpx.get(body["@iot.selfLink"], timeout=10).json()
    finally:
        node.close()
    late = NodeClients([{"name": "late", "url": relay_url(app), "protocolVersion": 5, "clientId": "js-rh-late",
                         "subscribe": {topic: {"qos": 2, "rh": 0}}}])
    try:
        late.wait("subscribe", "late")
        late.command(op="publish", client="late", topic="citystream/probe", payload="x", qos=1, id="probe")
        late.wait("published", "late")  # a round trip after the SUBACK: any retained message came before it
        assert late.of("message", "late") == []
    finally:
        late.close()
    wait_for(lambda: open_relays() == 0, what="the relayed connections to close")


def test_plain_http_on_mqtt_is_a_clear_4xx(app: str) -> None:
    response = httpx.get(f"{app}/mqtt", timeout=10)
    assert response.status_code == 426
    assert response.headers["content-type"] == "application/json"
    assert response.headers["upgrade"] == "websocket"
    body = response.json()
    assert body["code"] == 426 and "WebSocket" in body["message"] and "Sec-WebSocket-Protocol: mqtt" in body["message"]
    other = httpx.post(f"{app}/mqtt", content=b"x", timeout=10)
    assert other.status_code == 405 and other.json()["code"] == 405


def test_a_websocket_without_the_mqtt_subprotocol_is_refused_with_a_reason(app: str) -> None:
    async def attempt() -> InvalidStatus:
        with pytest.raises(InvalidStatus) as refused:
            async with ws_connect(relay_url(app), subprotocols=["chat"], proxy=None):  # type: ignore[list-item]
                pass
        return refused.value

    refused = asyncio.run(attempt())
    assert refused.response.status_code == 400
    assert "mqtt" in orjson.loads(refused.response.body)["message"]


def test_disabled_relay_says_what_to_configure(database_url: str, broker: EmbeddedMosquitto) -> None:
    settings = Settings(database_url=database_url, mqtt_url=None, host="127.0.0.1", http_port=find_free_port())
    with running_app(settings, database_url) as url:
        plain = httpx.get(f"{url}/mqtt", timeout=10)
        assert plain.status_code == 404 and "CITYSTREAM_MQTT_WS_URL" in plain.json()["message"]

        async def attempt() -> InvalidStatus:
            with pytest.raises(InvalidStatus) as refused:
                async with ws_connect(relay_url(url), subprotocols=["mqtt"], proxy=None):  # type: ignore[list-item]
                    pass
            return refused.value

        refused = asyncio.run(attempt())
        assert refused.response.status_code == 404
        assert "CITYSTREAM_MQTT_WS_URL" in orjson.loads(refused.response.body)["message"]


def test_an_unreachable_broker_is_a_502_and_the_server_goes_on(database_url: str) -> None:
    settings = Settings(database_url=database_url, mqtt_url=None, host="127.0.0.1", http_port=find_free_port(),
                        mqtt_ws_url=f"ws://127.0.0.1:{find_free_port()}")  # nobody listens there
    with running_app(settings, database_url) as url:
        async def attempt() -> InvalidStatus:
            with pytest.raises(InvalidStatus) as refused:
                async with ws_connect(relay_url(url), subprotocols=["mqtt"], proxy=None):  # type: ignore[list-item]
                    pass
            return refused.value

        for _ in range(3):
            refused = asyncio.run(attempt())
            assert refused.response.status_code == 502
            assert "broker" in orjson.loads(refused.response.body)["message"]
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
        assert open_relays() == 0


def test_a_client_without_a_subprotocol_is_relayed_as_mqtt(app: str) -> None:
    """Mosquitto takes a WebSocket without a subprotocol for plain HTTP; through /mqtt it still speaks MQTT."""
    async def run() -> tuple[str | None, bytes]:
        async with ws_connect(relay_url(app), proxy=None, compression=None) as socket:
            await socket.send(wire.connect_packet("raw-no-subprotocol", username=None, password=None,
                                                  clean_start=True, keepalive=60, session_expiry=0,
                                                  receive_maximum=10))
            connack = await asyncio.wait_for(socket.recv(), 10)
            assert isinstance(connack, bytes)
            return socket.subprotocol, connack

    subprotocol, connack = asyncio.run(run())
    assert subprotocol is None  # not offered, so not answered
    assert connack[0] == 0x20 and connack[3] == 0  # CONNACK, success


def test_authentication_and_acl_stay_the_brokers(app: str, broker: EmbeddedMosquitto) -> None:
    topic = "v1.1/Datastreams(1)/Observations"
    node = NodeClients([
        {"name": "wrong-password", "url": relay_url(app), "protocolVersion": 5, "clientId": "js-wrong",
         "username": broker.sensor_username, "password": "not-the-password"},
        {"name": "wrong-password-v4", "url": relay_url(app), "protocolVersion": 4, "clientId": "js-wrong-v4",
         "username": broker.sensor_username, "password": "not-the-password"},
        {"name": "anonymous", "url": relay_url(app), "protocolVersion": 5, "clientId": "js-anonymous"},
    ])
    try:
        assert node.wait("error", "wrong-password")[0]["code"] in (134, 135)  # bad user name or password
        assert node.wait("error", "wrong-password-v4")[0]["code"] in (4, 5)
        assert node.wait("connect", "anonymous")[0]["reasonCode"] == 0
        # Anonymous clients may read v1.1/# but not create: MQTT 5 PUBACK "not authorized" (0x87 = 135).
        assert node.publish("anonymous", topic, '{"result": 1}', 1, "anon")["reasonCode"] == 135
    finally:
        node.close()


async def _mqtt(url: str, client_id: str, username: str | None = None, password: str | None = None) -> Any:
    socket = await ws_connect(url, subprotocols=["mqtt"], proxy=None, compression=None)  # type: ignore[list-item]
    await socket.send(wire.connect_packet(client_id, username=username, password=password, clean_start=True,
                                          keepalive=60, session_expiry=0, receive_maximum=100))
    connack = await asyncio.wait_for(socket.recv(), 10)
    assert isinstance(connack, bytes) and connack[0] == 0x20 and connack[3] == 0, connack
    return socket


def test_frames_pass_unchanged_both_ways(app: str, broker: EmbeddedMosquitto) -> None:
    """Binary payloads with every byte value: the packets a subscriber gets through /mqtt are byte for byte
    those a subscriber on the broker's own listener gets; several packets in one message pass too."""
    topic = "v1.1/relay-test/binary"
    assert broker.websocket_url is not None
    payloads = [bytes(range(256)) * 4, b"\x00", bytes(range(255, -1, -1)) * 300]

    async def run() -> tuple[list[bytes], list[bytes]]:
        direct = await _mqtt(broker.websocket_url or "", "raw-direct")
        relayed = await _mqtt(relay_url(app), "raw-relayed")
        publisher = await _mqtt(relay_url(app), "raw-publisher", broker.platform_username, broker.platform_password)
        for socket in (direct, relayed):
            await socket.send(wire.subscribe_packet(1, [(topic, 0)]))
            suback = await asyncio.wait_for(socket.recv(), 10)
            assert isinstance(suback, bytes) and suback[0] == 0x90
        await publisher.send(b"".join(wire.publish_packet(topic, p) for p in payloads))  # one message
        got: list[list[bytes]] = [[], []]
        for i, socket in enumerate((direct, relayed)):
            while len(got[i]) < len(payloads):
                frame = await asyncio.wait_for(socket.recv(), 10)
                assert isinstance(frame, bytes)
                got[i].append(frame)
        for socket in (direct, relayed, publisher):
            await socket.close()
        return got[0], got[1]

    direct, relayed = asyncio.run(run())
    assert relayed == direct
    assert relayed == [wire.publish_packet(topic, p) for p in payloads]


def test_a_message_above_the_limit_closes_only_its_connection(app: str) -> None:
    async def run() -> ConnectionClosed:
        bystander = await _mqtt(relay_url(app), "raw-bystander")
        offender = await _mqtt(relay_url(app), "raw-offender")
        await offender.send(b"\x30" + b"\x00" * MAX_MESSAGE)  # one byte above the limit
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(offender.recv(), 10)
        await bystander.send(wire.PINGREQ_PACKET)  # the other connection is untouched
        assert await asyncio.wait_for(bystander.recv(), 10) == b"\xd0\x00"  # PINGRESP
        await bystander.close()
        return closed.value

    closed = asyncio.run(run())
    assert closed.rcvd is not None and closed.rcvd.code == 1009
    assert str(MAX_MESSAGE) in closed.rcvd.reason
    wait_for(lambda: open_relays() == 0, what="the relayed connections to close")


class BrokerLog:
    """The broker's connection log ($SYS/broker/log/N), read as the platform account."""

    def __init__(self, broker: EmbeddedMosquitto) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.username_pw_set(broker.platform_username, broker.platform_password)
        subscribed = threading.Event()
        self.client.on_message = lambda c, u, m: self.lines.put(m.payload.decode())
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        self.client.subscribe("$SYS/broker/log/N", 0)
        assert subscribed.wait(10)

    def wait(self, match: Callable[[str], bool], what: str) -> str:
        def found() -> str | None:
            while not self.lines.empty():
                self.seen.append(self.lines.get())
            return next((line for line in self.seen if match(line)), None)
        line = wait_for(found, what=what)
        assert line is not None
        return line

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_a_client_that_vanishes_leaves_no_upstream_connection(app: str, broker: EmbeddedMosquitto,
                                                              sensor: dict[str, str]) -> None:
    """SIGKILL of a node process with a client on /mqtt: the relay closes its broker connection (the broker
    logs that the client closed its connection), its task ends, and another client and HTTP go on (a
    device's create through the relay reaches the survivor as the platform's notification)."""
    topic = f"v1.1/Datastreams({create_datastream(f'{app}/v1.1')})/Observations"
    log = BrokerLog(broker)
    survivor = NodeClients([{"name": "survivor", "url": relay_url(app), "protocolVersion": 5,
                             "clientId": "js-survivor", "subscribe": {topic: 1}}])
    try:
        survivor.wait("subscribe", "survivor")
        wait_until_learned(app, topic)
        before = open_relays()
        doomed = NodeClients([{"name": "doomed", "url": relay_url(app), "protocolVersion": 5,
                               "clientId": "js-doomed", "subscribe": {topic: 1}}])
        doomed.wait("subscribe", "doomed")
        log.wait(lambda line: "as js-doomed " in line, "the broker to log js-doomed's connect")
        assert open_relays() == before + 1
        doomed.proc.kill()  # no DISCONNECT, no WebSocket close: the TCP connection just ends
        doomed.proc.wait()
        doomed.close()
        log.wait(lambda line: re.search(r"Client js-doomed (closed its connection|disconnected)", line) is not None,
                 "the broker to see js-doomed's connection end")
        wait_for(lambda: open_relays() == before, what="the relay task of js-doomed to end")

        publisher = NodeClients([{"name": "sensor", "url": relay_url(app), "protocolVersion": 5,
                                  "clientId": "js-sensor-after", **sensor}])
        try:
            publisher.wait("connect", "sensor")
            assert publisher.publish("sensor", topic, '{"result": 1}', 1, "after")["reasonCode"] == 0
        finally:
            publisher.close()
        assert orjson.loads(survivor.wait("message", "survivor")[0]["payload"])["result"] == 1
        assert httpx.get(f"{app}/health", timeout=10).status_code == 200
    finally:
        survivor.close()
        log.close()


def test_mqtt_on_the_http_port_of_citystream_up() -> None:
    """`citystream up` as a user runs it, and an MQTT.js client where Masterportal looks by default:
    ws://<STA host>/mqtt; a POSTed Observation arrives there as the GET of its selfLink."""
    with running_up() as up:
        assert f"MQTT on HTTP port ws://127.0.0.1:{up.http_port}/mqtt" in up.log_text()
        sta = f"{up.base}/v1.1"
        datastream = create_datastream(sta, headers=up.admin)
        topic = f"v1.1/Datastreams({datastream})/Observations"
        node = NodeClients([{"name": "portal", "url": f"ws://127.0.0.1:{up.http_port}/mqtt", "protocolVersion": 4,
                             "clientId": "js-portal", "subscribe": {topic: 2}}])
        try:
            assert node.wait("subscribe", "portal")[0]["granted"] == [[topic, 2]]
            wait_until_learned(up.base, topic, admin=up.admin)
            assert post(sta, f"Datastreams({datastream})/Observations", {"result": 7.25},
                        headers=up.admin).status_code == 201
            body = orjson.loads(node.wait("message", "portal")[0]["payload"])
            assert body["result"] == 7.25
            assert body == httpx.get(body["@iot.selfLink"], timeout=10).json()
        finally:
            node.close()
