"""Create over MQTT (STA §14.2), notifications (§14.1) and bad messages, against the real app, a real
Mosquitto (with its generated ACL) and real PostgreSQL. Publishing goes through `mosquitto_pub` and paho,
subscribing through paho and `mosquitto_sub`: clients we did not write."""

from __future__ import annotations

import subprocess
from typing import Any

import httpx
import orjson
import pytest

from citystream.embedded import EmbeddedMosquitto
from tests.mqtt_helpers import (
    Subscriber,
    mosquitto_pub,
    publish_with_properties,
    wait_for,
    wait_until_learned,
)
from tests.sta_helpers import (
    HTTP,
    create,
    create_datastream,
    create_thing_with_location,
    datastream_body,
    feature_body,
    get,
    observed_property_body,
    patch,
    read,
    ref,
    sensor_body,
    values,
)

OM = "http://www.opengis.net/def/observationType/OGC-OM/2.0/"


def observations(sta: str, path: str = "Observations", **params: Any) -> list[dict[str, Any]]:
    return values(sta, path, **{"$orderby": "id", "$top": 10000, **params})


def dead_letters(server_url: str) -> list[dict[str, Any]]:
    return list(HTTP.get(f"{server_url}/admin/dead-letters", params={"limit": 1000}, timeout=10).json()["value"])


def typed_datastream(sta: str, thing_id: int, observation_type: str) -> int:
    return create(sta, "Datastreams", datastream_body(
        observationType=OM + observation_type, Thing=ref(thing_id), Sensor=sensor_body(),
        ObservedProperty=observed_property_body()))


@pytest.fixture
def broker(mosquitto_server: EmbeddedMosquitto) -> EmbeddedMosquitto:
    return mosquitto_server


def test_every_create_topic_form_stores_the_observation(sta: str, broker: EmbeddedMosquitto) -> None:
    datastream = create_datastream(sta)
    feature = create(sta, "FeaturesOfInterest", feature_body("gauge"))
    mosquitto_pub(broker, f"v1.1/Datastreams({datastream})/Observations",
                  '{"result": 21.50, "phenomenonTime": "2026-11-22T08:00:00Z"}')
    mosquitto_pub(broker, "v1.1/Observations",
                  orjson.dumps({"result": 2, "phenomenonTime": "2026-11-22T08:01:00Z",
                                "Datastream": {"@iot.id": datastream}}))
    mosquitto_pub(broker, f"v1.1/FeaturesOfInterest({feature})/Observations",
                  orjson.dumps({"result": "three", "phenomenonTime": "2026-11-22T08:02:00Z",
                                "Datastream": {"@iot.id": datastream}}), qos=0)
    # two writers commit batches side by side, so ids need not follow the publishing order: sort by time
    stored = wait_for(lambda: len(observations(sta)) == 3 and observations(sta, **{"$orderby": "phenomenonTime"}),
                      what="3 observations")
    assert [o["result"] for o in stored] == [21.5, 2, "three"]
    assert get(sta, f"Observations({stored[0]['@iot.id']})").text.count("21.50") == 1  # exact number text
    assert read(sta, f"Observations({stored[2]['@iot.id']})/FeatureOfInterest")["@iot.id"] == feature
    generated = read(sta, f"Observations({stored[0]['@iot.id']})/FeatureOfInterest")
    assert generated["feature"]["type"] == "Point"  # generated from the Thing's Location, as over HTTP
    summary = read(sta, f"Datastreams({datastream})")
    assert summary["phenomenonTime"] == "2026-11-22T08:00:00Z/2026-11-22T08:02:00Z"


def test_inline_feature_of_interest_is_created_with_the_observation(sta: str, broker: EmbeddedMosquitto) -> None:
    datastream = create_datastream(sta)
    mosquitto_pub(broker, f"v1.1/Datastreams({datastream})/Observations",
                  orjson.dumps({"result": 1, "FeatureOfInterest": feature_body("inline", lon=10.1, lat=53.6)}))
    stored = wait_for(lambda: observations(sta), what="the observation")
    feature = read(sta, f"Observations({stored[0]['@iot.id']})/FeatureOfInterest")
    assert feature["name"] == "inline" and feature["feature"]["coordinates"] == [10.1, 53.6]


def test_http_post_goes_through_the_same_path_and_checks_result_types(sta: str) -> None:
    thing = create_thing_with_location(sta)
    counts = typed_datastream(sta, thing, "OM_CountObservation")
    response = HTTP.post(f"{sta}/Datastreams({counts})/Observations", json={"result": 2.5}, timeout=10)
    assert response.status_code == 400 and "integer" in response.json()["message"]
    response = HTTP.post(f"{sta}/Datastreams({counts})/Observations", json={"result": 7}, timeout=10)
    assert response.status_code == 201 and response.json()["result"] == 7
    assert response.headers["location"].endswith(f"Observations({response.json()['@iot.id']})")
    missing = HTTP.post(f"{sta}/Observations", json={"result": 1, "Datastream": {"@iot.id": 999999}}, timeout=10)
    assert missing.status_code == 400 and "no Datastream with @iot.id 999999" in missing.json()["message"]
    assert len(observations(sta)) == 1


def test_subscribers_get_the_entity_as_get_returns_it(sta: str, server_url: str, broker: EmbeddedMosquitto
                                                      ) -> None:
    thing = create_thing_with_location(sta)
    datastream = create_datastream(sta, thing)
    topics = ["v1.1/Observations", f"v1.1/Datastreams({datastream})/Observations",
              "v1.1/Observations?$select=result,phenomenonTime", "v1.1/Things", f"v1.1/Things({thing})",
              f"v1.1/Things({thing})/name", f"v1.1/Things({thing})/Datastreams"]
    with Subscriber(broker, topics) as subscriber:
        wait_until_learned(server_url, *topics)
        mosquitto_pub(broker, f"v1.1/Datastreams({datastream})/Observations",
                      '{"result": 1.0, "phenomenonTime": "2026-11-22T09:00:00Z"}')
        on_set = wait_for(lambda: subscriber.on("v1.1/Observations"), what="entity-set notification")
        on_nav = wait_for(lambda: subscriber.on(f"v1.1/Datastreams({datastream})/Observations"),
                          what="navigation-set notification")
        selected = wait_for(lambda: subscriber.on("v1.1/Observations?$select=result,phenomenonTime"),
                            what="$select notification")
        observation_id = on_set[0].json()["@iot.id"]
        assert on_set[0].json() == read(sta, f"Observations({observation_id})")
        assert on_nav[0].json() == on_set[0].json()
        assert selected[0].json() == {"result": 1.0, "phenomenonTime": "2026-11-22T09:00:00Z"}
        assert b"1.0" in selected[0].payload  # the number as it was sent

        assert patch(sta, f"Things({thing})", {"name": "renamed"}).status_code == 200
        entity = wait_for(lambda: subscriber.on(f"v1.1/Things({thing})"), what="entity notification")
        assert entity[-1].json() == read(sta, f"Things({thing})")
        name = wait_for(lambda: subscriber.on(f"v1.1/Things({thing})/name"), what="property notification")
        assert name[-1].json() == {"name": "renamed"} == read(sta, f"Things({thing})/name")

        new_thing = create(sta, "Things", {"name": "new", "description": "created over REST"})
        # an entity-set topic carries creates and updates of its members (the PATCH above was one)
        wait_for(lambda: [m for m in subscriber.on("v1.1/Things") if m.json()["@iot.id"] == new_thing],
                 what="create notification")
        new_datastream = create_datastream(sta, thing, name="second")
        # the first Datastream may be notified here too (CI saw one arrive after the creation above)
        wait_for(lambda: [m for m in subscriber.on(f"v1.1/Things({thing})/Datastreams")
                          if m.json()["@iot.id"] == new_datastream], what="Things(id)/Datastreams")

        before = len(subscriber.messages)
        assert HTTP.delete(f"{sta}/Things({new_thing})", timeout=10).status_code == 200
        mosquitto_pub(broker, f"v1.1/Datastreams({datastream})/Observations", '{"result": 2}')
        wait_for(lambda: len(subscriber.on("v1.1/Observations")) == 2, what="the second observation")
        assert not [m for m in subscriber.messages[before:] if m.topic.startswith("v1.1/Things")]  # no deletes


def test_mosquitto_sub_receives_notifications(sta: str, server_url: str, broker: EmbeddedMosquitto) -> None:
    datastream = create_datastream(sta)
    topic = f"v1.1/Datastreams({datastream})/Observations"
    sub = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-V", "mqttv5", "-t", topic,
                            "-F", "%P|%p", "-C", "2", "-W", "20"], stdout=subprocess.PIPE, text=True)
    try:
        wait_until_learned(server_url, topic)
        mosquitto_pub(broker, topic, '{"result": 5}')
        out, _ = sub.communicate(timeout=30)
    finally:
        sub.kill()
    lines = out.strip().splitlines()
    # One line is the device's own publish (the broker echoes creates to subscribers of the same topic),
    # the other our notification, marked by its user property.
    notification = [line for line in lines if line.startswith("citystream:notification|")]
    assert len(notification) == 1
    assert orjson.loads(notification[0].split("|", 1)[1])["result"] == 5


BAD_MESSAGES = [
    ("not json", "Datastreams({d})/Observations", b"{not json", "malformed JSON"),
    ("unknown datastream", "Datastreams(987654)/Observations", b'{"result": 1}', "no Datastream with @iot.id 987654"),
    ("wrong result type", "Datastreams({counts})/Observations", b'{"result": "many"}', "must be an integer"),
    ("invalid time", "Datastreams({d})/Observations", b'{"result": 1, "phenomenonTime": "yesterday"}',
     "is not an ISO 8601 time"),
    ("unknown topic", "Things(1)/Observations", b'{"result": 1}', "is not a create topic"),
    ("missing datastream", "Observations", b'{"result": 1}', "needs its Datastream"),
    ("oversize", "Datastreams({d})/Observations", b'{"result": "' + b"x" * 70_000 + b'"}', "exceeds the limit"),
    ("not an object", "Datastreams({d})/Observations", b"[1, 2]", "must be a JSON object"),
]


@pytest.mark.parametrize(("name", "topic", "payload", "reason"), BAD_MESSAGES, ids=[b[0] for b in BAD_MESSAGES])
def test_bad_message_is_dead_lettered_and_reported_without_losing_its_neighbours(
        sta: str, server_url: str, broker: EmbeddedMosquitto, name: str, topic: str, payload: bytes,
        reason: str) -> None:
    thing = create_thing_with_location(sta)
    datastream = create_datastream(sta, thing)
    counts = typed_datastream(sta, thing, "OM_CountObservation")
    topic = "v1.1/" + topic.format(d=datastream, counts=counts)
    good = f"v1.1/Datastreams({datastream})/Observations"
    with Subscriber(broker, ["citystream/errors/#"], broker.sensor_username, broker.sensor_password) as errors:
        mosquitto_pub(broker, good, '{"result": "before"}')
        mosquitto_pub(broker, topic, payload)
        mosquitto_pub(broker, good, '{"result": "after"}')
        stored = wait_for(lambda: len(observations(sta)) == 2 and observations(sta), what="both good messages")
        assert sorted(o["result"] for o in stored) == ["after", "before"]
        letters = wait_for(lambda: dead_letters(server_url), what="the dead letter")
        assert len(letters) == 1
        letter = letters[0]
        assert letter["topic"] == topic and reason in letter["reason"]
        assert letter["payloadBytes"] == len(payload) and letter["payload"] == payload[:2048].decode()
        report = wait_for(lambda: errors.on("citystream/errors/" + topic, notifications_only=False),
                          what="the error report")
        body = report[0].json()
        assert body["code"] == 400 and reason in body["message"] and body["topic"] == topic


def test_error_report_goes_to_the_response_topic_too(sta: str, server_url: str, broker: EmbeddedMosquitto) -> None:
    datastream = create_datastream(sta)
    reply = "citystream/errors/device-7/replies"
    with Subscriber(broker, [reply], broker.sensor_username, broker.sensor_password) as device:
        publish_with_properties(broker, f"v1.1/Datastreams({datastream})/Observations", b"nope",
                                response_topic=reply, correlation=b"req-42")
        answer = wait_for(lambda: device.on(reply, notifications_only=False), what="the reply")
    assert "malformed JSON" in answer[0].json()["message"]


def test_bad_rows_inside_a_busy_batch_do_not_fail_the_others(sta: str, server_url: str,
                                                              broker: EmbeddedMosquitto) -> None:
    datastream = create_datastream(sta)
    lines = []
    for i in range(600):
        if i % 50 == 7:
            lines.append(orjson.dumps({"result": i, "Datastream": {"@iot.id": 999999}}))
        elif i % 50 == 8:
            lines.append(b'{"result": 1, "validTime": "2026-01-02T00:00:00Z/2026-01-01T00:00:00Z"}')
        else:
            lines.append(orjson.dumps({"result": i, "Datastream": {"@iot.id": datastream}}))
    # one connection, many messages back to back: they land in the same batches
    args = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-V", "mqttv5", "-q", "1",
            "-u", broker.sensor_username, "-P", broker.sensor_password, "-t", "v1.1/Observations", "-l"]
    subprocess.run(args, input=b"\n".join(lines) + b"\n", check=True, timeout=60)
    wait_for(lambda: len(dead_letters(server_url)) == 24, what="24 dead letters")
    stored = wait_for(lambda: len(observations(sta)) == 576 and observations(sta), what="576 observations")
    assert sorted(o["result"] for o in stored) == [i for i in range(600) if i % 50 not in (7, 8)]


def test_metrics_count_ingest(sta: str, server_url: str, broker: EmbeddedMosquitto) -> None:
    datastream = create_datastream(sta)
    mosquitto_pub(broker, f"v1.1/Datastreams({datastream})/Observations", '{"result": 1}')
    wait_for(lambda: observations(sta), what="the observation")
    text = httpx.get(f"{server_url}/metrics", timeout=10).text
    for name in ("citystream_ingest_received_total{source=\"mqtt\"}", "citystream_ingest_stored_total",
                 "citystream_ingest_batch_rows_bucket", "citystream_ingest_commit_seconds_bucket"):
        assert name in text


def test_admin_endpoints_validate_their_parameters(server_url: str) -> None:
    response = HTTP.get(f"{server_url}/admin/dead-letters", params={"limit": "x"}, timeout=10)
    assert response.status_code == 400 and "limit" in response.json()["message"]
    response = HTTP.get(f"{server_url}/admin/dead-letters", params={"sort": "id"}, timeout=10)
    assert response.status_code == 400
