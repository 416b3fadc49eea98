"""MQTT.js (the library Masterportal's sensor layers use), MQTT 3.1.1 and 5 over the broker's WebSocket
listener, against the per-principal broker of issue 17 (citystream/mosquitto_plugin/citystream_auth.c): an
anonymous subscriber on `v1.1/#` receives neither a device's raw publish nor the notification of a restricted
Observation, only the platform's public notifications (payload = GET of the selfLink); a subscriber with a key
reading the restricted Project receives the restricted one too (the positive control that it was published).
tests/mqtt/test_mqtt_access.py covers the same with paho and the mosquitto clients in full.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from citystream.auth import credentials
from citystream.embedded import EmbeddedMosquitto
from tests.auth.helpers import new_key
from tests.auth.test_project_access import scoped_key
from tests.clients.node_mqtt import NodeClients, requires_mqtt_js
from tests.conftest import empty_database
from tests.mqtt.test_mqtt_access import wait_for_the_plugins_heartbeat
from tests.mqtt_helpers import wait_for, wait_until_learned
from tests.sta_helpers import (
    HTTP,
    create,
    create_thing_with_location,
    datastream_body,
    observed_property_body,
    ref,
    sensor_body,
)

pytestmark = requires_mqtt_js


@dataclass
class World:
    sta: str
    public: int
    restricted: int
    device: tuple[str, str]
    reader: tuple[str, str]


@pytest.fixture(scope="module")
def world(server_url: str, database_url: str, mosquitto_server: EmbeddedMosquitto) -> Iterator[World]:
    empty_database(database_url)
    sta = f"{server_url}/v1.1"
    project = create(sta, "Projects", {"name": "closed", "termsOfUse": "t", "visibility": "restricted"})
    thing = create_thing_with_location(sta, "js thing")
    sensor = create(sta, "Sensors", sensor_body())
    prop = create(sta, "ObservedProperties", observed_property_body())
    public, restricted = (create(sta, "Datastreams", datastream_body(
        name, Thing=ref(thing), Sensor=ref(sensor), ObservedProperty=ref(prop), **links))
        for name, links in (("public", {}), ("restricted", {"Project": ref(project)})))
    device = credentials.split_key(new_key(database_url, "create", name="js device"))
    reader = credentials.split_key(scoped_key(database_url, "js reader", ("read",), [project]))
    assert device is not None and reader is not None
    wait_for_the_plugins_heartbeat(server_url, mosquitto_server)  # before it, nothing restricted is published
    yield World(sta, public, restricted, device, reader)
    empty_database(database_url)


def payloads(node: NodeClients, client: str) -> list[Any]:
    out = []
    for event in node.of("message", client):
        try:
            out.append(orjson.loads(event["payload"]))
        except orjson.JSONDecodeError:
            out.append(event["payload"])
    return out


def ids(node: NodeClients, client: str) -> set[int]:
    return {p["@iot.id"] for p in payloads(node, client) if isinstance(p, dict) and "@iot.id" in p}


def test_mqtt_js_subscribers_get_neither_raw_publishes_nor_restricted_notifications(
        server_url: str, mosquitto_server: EmbeddedMosquitto, world: World) -> None:
    url = mosquitto_server.websocket_url
    assert url is not None
    key, secret = world.reader
    device, device_secret = world.device
    subscribers = [
        {"name": "anonymous-v4", "url": url, "protocolVersion": 4, "clientId": "js-access-anon-4",
         "subscribe": {"v1.1/#": 1}},
        {"name": "anonymous-v5", "url": url, "protocolVersion": 5, "clientId": "js-access-anon-5",
         "subscribe": {"v1.1/#": 1}},
        {"name": "reader-v5", "url": url, "protocolVersion": 5, "clientId": "js-access-reader-5",
         "username": key, "password": secret, "subscribe": {"v1.1/#": 1}},
    ]
    publishers = [
        {"name": f"device-v{v}", "url": url, "protocolVersion": v, "clientId": f"js-access-device-{v}",
         "username": device, "password": device_secret} for v in (4, 5)]
    node = NodeClients(subscribers + publishers)
    try:
        for spec in subscribers:
            assert node.wait("subscribe", spec["name"])[0]["granted"] == [["v1.1/#", 1]], spec["name"]
        for spec in publishers:
            assert node.wait("connect", spec["name"])[0]["reasonCode"] == 0, spec["name"]
        wait_until_learned(server_url, "v1.1/#")

        # devices publish raw payloads into both streams (MQTT 3.1.1 and 5): stored, never echoed
        raw = {"device-v4": 11.5, "device-v5": 12.5}
        for name, result in raw.items():
            for stream in (world.public, world.restricted):
                done = node.publish(name, f"v1.1/Datastreams({stream})/Observations",
                                    orjson.dumps({"result": result}).decode(), 1, f"{name}-{stream}")
                assert done["reasonCode"] == 0, done
        restricted = create(world.sta, f"Datastreams({world.restricted})/Observations", {"result": 21.5})
        sentinel = create(world.sta, f"Datastreams({world.public})/Observations", {"result": 22.5})

        for name in ("anonymous-v4", "anonymous-v5", "reader-v5"):
            wait_for(lambda n=name: sentinel in ids(node, n), what=f"the public sentinel at {name}")
        wait_for(lambda: restricted in ids(node, "reader-v5"), what="the restricted notification at the reader")
        time.sleep(0.5)

        restricted_ids = {o["@iot.id"] for o in HTTP.get(
            f"{world.sta}/Datastreams({world.restricted})/Observations").json()["value"]}
        public_results = sorted(o["result"] for o in HTTP.get(
            f"{world.sta}/Datastreams({world.public})/Observations").json()["value"])
        assert public_results == [11.5, 12.5, 22.5]  # the raw publishes were stored
        for name in ("anonymous-v4", "anonymous-v5"):
            got = payloads(node, name)
            not_entities = [p for p in got if not isinstance(p, dict) or "@iot.id" not in p]
            assert not_entities == [], f"{name} received raw payloads: {not_entities}"
            leaked = [p for p in got if p["@iot.id"] in restricted_ids and "/Observations(" in p["@iot.selfLink"]]
            assert leaked == [], f"{name} received restricted Observations: {leaked}"
            for payload in got:
                if "/Observations(" in payload["@iot.selfLink"]:
                    assert HTTP.get(payload["@iot.selfLink"]).json() == payload
        reader_got = payloads(node, "reader-v5")
        assert all(isinstance(p, dict) and "@iot.id" in p for p in reader_got), reader_got
        assert restricted_ids <= ids(node, "reader-v5")
    finally:
        node.close()
