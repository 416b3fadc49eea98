"""STA 1.0 over MQTT: creates published to `v1.0/…` topics, and notifications on the version the subscriber
used, rendered as that version's GET renders them (links to /v1.0, no 1.1-only properties). Real app, real
Mosquitto with its generated ACL, `mosquitto_pub`, `mosquitto_sub` and paho."""

from __future__ import annotations

import subprocess

import orjson

from citystream.embedded import EmbeddedMosquitto
from tests.mqtt_helpers import Subscriber, mosquitto_pub, wait_for, wait_until_learned
from tests.sta_helpers import (
    create,
    create_datastream,
    feature_body,
    patch,
    read,
    values,
)


def _v10(sta: str) -> str:
    return sta.removesuffix("/v1.1") + "/v1.0"


def test_create_topics_of_v10_store_observations(sta: str, mosquitto_server: EmbeddedMosquitto) -> None:
    broker = mosquitto_server
    datastream = create_datastream(sta)
    feature = create(sta, "FeaturesOfInterest", feature_body("gauge"))
    mosquitto_pub(broker, f"v1.0/Datastreams({datastream})/Observations",
                  '{"result": 1, "phenomenonTime": "2026-11-22T08:00:00Z"}')
    mosquitto_pub(broker, "v1.0/Observations", orjson.dumps(
        {"result": 2, "phenomenonTime": "2026-11-22T08:01:00Z", "Datastream": {"@iot.id": datastream}}))
    mosquitto_pub(broker, f"v1.0/FeaturesOfInterest({feature})/Observations", orjson.dumps(
        {"result": 3, "phenomenonTime": "2026-11-22T08:02:00Z", "Datastream": {"@iot.id": datastream}}))
    stored = wait_for(lambda: len(values(sta, "Observations")) == 3
                      and values(sta, "Observations", **{"$orderby": "phenomenonTime"}), what="3 observations")
    assert [o["result"] for o in stored] == [1, 2, 3]
    assert read(sta, f"Observations({stored[2]['@iot.id']})/FeatureOfInterest")["@iot.id"] == feature


def test_v11_property_over_a_v10_create_topic_is_stored(sta: str, mosquitto_server: EmbeddedMosquitto) -> None:
    """A device configured for FROST's v1.0 topics that sends a FeatureOfInterest with `properties` (1.1) is
    not dead-lettered: its Observation and the feature's properties are stored."""
    broker = mosquitto_server
    datastream = create_datastream(sta)
    mosquitto_pub(broker, f"v1.0/Datastreams({datastream})/Observations",
                  orjson.dumps({"result": 1, "FeatureOfInterest": feature_body(properties={"k": 1})}))
    (stored,) = wait_for(lambda: values(sta, "Observations"), what="the observation")
    assert read(sta, f"Observations({stored['@iot.id']})/FeatureOfInterest")["properties"] == {"k": 1}


def test_each_subscriber_gets_its_version(sta: str, server_url: str, mosquitto_server: EmbeddedMosquitto) -> None:
    broker = mosquitto_server
    v10 = _v10(sta)
    datastream = create_datastream(sta)
    assert patch(sta, f"Datastreams({datastream})", {"properties": {"k": 1}}).status_code == 200
    sensor = read(sta, f"Datastreams({datastream})/Sensor")["@iot.id"]
    assert patch(sta, f"Sensors({sensor})", {"properties": {"k": 1}}).status_code == 200
    topics = [f"v1.0/Datastreams({datastream})/Observations", f"v1.1/Datastreams({datastream})/Observations",
              f"v1.0/Datastreams({datastream})", f"v1.1/Datastreams({datastream})",
              f"v1.0/Sensors({sensor})/properties", f"v1.1/Sensors({sensor})/properties",
              f"v1.0/Sensors({sensor})/name"]
    cli_topic = "v1.0/Observations"
    sub = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-V", "mqttv5",
                            "-t", cli_topic, "-F", "%P|%p", "-C", "1", "-W", "20"], stdout=subprocess.PIPE, text=True)
    try:
        with Subscriber(broker, topics) as subscriber:
            wait_until_learned(server_url, cli_topic, *topics)
            mosquitto_pub(broker, f"v1.1/Datastreams({datastream})/Observations",
                          '{"result": 7, "phenomenonTime": "2026-11-22T09:00:00Z"}')
            old = wait_for(lambda: subscriber.on(topics[0]), what="v1.0 notification")[0].json()
            new = wait_for(lambda: subscriber.on(topics[1]), what="v1.1 notification")[0].json()
            assert old == read(v10, f"Observations({old['@iot.id']})")
            assert new == read(sta, f"Observations({new['@iot.id']})")
            assert old["@iot.selfLink"].startswith(f"{v10}/") and new["@iot.selfLink"].startswith(f"{sta}/")
            assert old["Datastream@iot.navigationLink"] == f"{old['@iot.selfLink']}/Datastream"

            assert patch(sta, f"Datastreams({datastream})", {"name": "renamed"}).status_code == 200
            old_ds = wait_for(lambda: subscriber.on(topics[2]), what="v1.0 entity notification")[-1].json()
            new_ds = wait_for(lambda: subscriber.on(topics[3]), what="v1.1 entity notification")[-1].json()
            assert "properties" not in old_ds and old_ds == read(v10, f"Datastreams({datastream})")
            assert new_ds["properties"] == {"k": 1} and new_ds == read(sta, f"Datastreams({datastream})")

            assert patch(sta, f"Sensors({sensor})", {"properties": {"k": 2}, "name": "s"}).status_code == 200
            wait_for(lambda: subscriber.on(topics[5]), what="v1.1 property notification")
            wait_for(lambda: subscriber.on(topics[6]), what="v1.0 name notification")
            assert subscriber.on(topics[4]) == []  # no v1.0 property topic for a 1.1-only property
        out, _ = sub.communicate(timeout=30)
    finally:
        sub.kill()
    notification = [line for line in out.strip().splitlines() if line.startswith("citystream:notification|")]
    assert len(notification) == 1
    assert orjson.loads(notification[0].split("|", 1)[1])["@iot.selfLink"].startswith(f"{v10}/Observations(")
