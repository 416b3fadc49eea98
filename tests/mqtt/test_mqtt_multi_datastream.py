"""MultiDatastreams over MQTT (issue 6 part 3): create on `v1.1/MultiDatastreams(id)/Observations` with
`mosquitto_pub`, results checked against the components in the ingest batch (a bad payload is dead-lettered
and its neighbours are stored), and notifications on the MultiDatastream topics, against the real app,
Mosquitto and PostgreSQL."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from citystream.embedded import EmbeddedMosquitto
from tests.mqtt_helpers import Subscriber, mosquitto_pub, wait_for, wait_until_learned
from tests.sta.test_sta_multi_datastream import create_multi, multi_body, new_properties
from tests.sta_helpers import (
    HTTP,  # noqa: E402 (placed by hand below)
    create,
    create_datastream,
    create_thing_with_location,
    read,
    values,
)


def stored(sta: str, multi: int) -> list[Any]:
    return [o["result"] for o in values(sta, f"MultiDatastreams({multi})/Observations",
                                        **{"$orderby": "phenomenonTime"})]


def test_observations_are_created_on_the_multi_datastream_topic(
        sta: str, server_url: str, mosquitto_server: EmbeddedMosquitto) -> None:
    multi, _ = create_multi(sta)
    topic = f"v1.1/MultiDatastreams({multi})/Observations"
    mosquitto_pub(mosquitto_server, topic, '{"result": [21.50, 3, "cloudy"], "phenomenonTime": "2024-05-01T10:00:00Z"}')
    mosquitto_pub(mosquitto_server, topic, '{"result": [21.5, 3], "phenomenonTime": "2024-05-01T10:01:00Z"}')
    mosquitto_pub(mosquitto_server, "v1.1/Observations", orjson.dumps(
        {"result": [22, 4, "clear"], "phenomenonTime": "2024-05-01T10:02:00Z", "MultiDatastream": {"@iot.id": multi}}))
    mosquitto_pub(mosquitto_server, topic, '{"result": [1, 2.5, "x"], "phenomenonTime": "2024-05-01T10:03:00Z"}')
    mosquitto_pub(mosquitto_server, topic, '{"result": [1e400, 2, "x"], "phenomenonTime": "2024-05-01T10:04:00Z"}')
    mosquitto_pub(mosquitto_server, "v1.1/MultiDatastreams(987654)/Observations", '{"result": [1, 2, "x"]}')
    wait_for(lambda: len(stored(sta, multi)) == 2, what="the two good Observations")
    letters = wait_for(lambda: len(dead := HTTP.get(f"{server_url}/admin/dead-letters", timeout=10
                                                     ).json()["value"]) == 4 and dead, what="four dead letters")
    reasons = " | ".join(letter["reason"] for letter in letters)
    for reason in ("array of 3 values", "result[1] must be an integer", "no MultiDatastream with @iot.id 987654",
                   "numbers must be finite"):
        assert reason in reasons
    assert stored(sta, multi) == [[21.5, 3, "cloudy"], [22, 4, "clear"]]
    assert b"[21.50, 3, " in httpx.get(f"{sta}/MultiDatastreams({multi})/Observations", timeout=10).content
    assert read(sta, f"MultiDatastreams({multi})")["phenomenonTime"] == "2024-05-01T10:00:00Z/2024-05-01T10:02:00Z"


def test_multi_datastream_topics_are_notified(
        sta: str, server_url: str, mosquitto_server: EmbeddedMosquitto) -> None:
    thing = create_thing_with_location(sta)
    multi, _ = create_multi(sta, thing)
    datastream = create_datastream(sta, thing)
    topics = [f"v1.1/MultiDatastreams({multi})/Observations", "v1.1/Observations", "v1.1/MultiDatastreams",
              f"v1.1/Things({thing})/MultiDatastreams", f"v1.1/MultiDatastreams({multi})",
              "v1.1/MultiDatastreams?$select=name,multiObservationDataTypes"]
    with Subscriber(mosquitto_server, topics) as subscriber:
        wait_until_learned(server_url, *topics)
        mosquitto_pub(mosquitto_server, f"v1.1/MultiDatastreams({multi})/Observations", '{"result": [1.5, 2, "x"]}')
        on_multi = wait_for(lambda: subscriber.on(topics[0]), what="MultiDatastreams(id)/Observations")
        observation = on_multi[0].json()
        assert observation == read(sta, f"Observations({observation['@iot.id']})")
        assert observation["result"] == [1.5, 2, "x"]
        wait_for(lambda: subscriber.on("v1.1/Observations"), what="the Observations entity set")
        # an Observation of a Datastream is not notified on any MultiDatastream topic
        mosquitto_pub(mosquitto_server, f"v1.1/Datastreams({datastream})/Observations", '{"result": 7}')
        wait_for(lambda: len(subscriber.on("v1.1/Observations")) == 2, what="the Datastream's Observation")
        assert len(subscriber.on(topics[0])) == 1

        second = create(sta, f"Things({thing})/MultiDatastreams",
                        {**multi_body("second"), "Sensor": {"name": "s", "description": "d",
                                                             "encodingType": "application/pdf", "metadata": "m"},
                         "ObservedProperties": [{"@iot.id": p} for p in new_properties(sta)]})
        created = wait_for(lambda: subscriber.on(f"v1.1/Things({thing})/MultiDatastreams"), what="Things(id)/...")
        assert created[0].json()["@iot.id"] == second
        selected = wait_for(lambda: subscriber.on(topics[-1]), what="the $select notification")
        assert selected[0].json() == {"name": "second", "multiObservationDataTypes": multi_body()[
            "multiObservationDataTypes"]}
        HTTP.patch(f"{sta}/MultiDatastreams({multi})", json={"name": "renamed"}, timeout=10).raise_for_status()
        updated = wait_for(lambda: subscriber.on(f"v1.1/MultiDatastreams({multi})"), what="the update")
        assert updated[0].json()["name"] == "renamed"
