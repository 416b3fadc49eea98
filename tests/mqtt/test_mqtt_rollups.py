"""Subscribers of a rollup Datastream are notified when a bucket changes: its Observation created by the
first raw Observation in it, updated (same @iot.id) by the next ones, from MQTT ingest and from REST alike."""

from __future__ import annotations

from citystream.embedded import EmbeddedMosquitto
from tests.mqtt_helpers import Subscriber, mosquitto_pub, wait_for, wait_until_learned
from tests.sta.test_rollups import numeric_datastream, rollup
from tests.sta_helpers import post, read


def test_a_rollups_subscribers_see_its_bucket_change(sta: str, server_url: str,
                                                    mosquitto_server: EmbeddedMosquitto) -> None:
    source = numeric_datastream(sta)
    hourly = rollup(sta, source, "PT1H", "max", zone="UTC")
    topics = [f"v1.1/Datastreams({hourly})/Observations", "v1.1/Observations?$filter=result gt 100"]
    with Subscriber(mosquitto_server, topics) as subscriber:
        wait_until_learned(server_url, *topics)
        mosquitto_pub(mosquitto_server, f"v1.1/Datastreams({source})/Observations",
                      '{"result": 4.5, "phenomenonTime": "2026-11-22T09:10:00Z"}')
        created = wait_for(lambda: subscriber.on(topics[0]), what="the bucket's Observation")[0].json()
        assert created["phenomenonTime"] == "2026-11-22T09:00:00Z/2026-11-22T10:00:00Z"
        assert (created["result"], created["parameters"]["rollup"]["count"]) == (4.5, 1)
        response = post(sta, f"Datastreams({source})/Observations",
                        {"result": 120, "phenomenonTime": "2026-11-22T09:40:00Z"})
        assert response.status_code == 201, response.text
        updated = wait_for(lambda: subscriber.on(topics[0])[1:], what="the bucket's update")[0].json()
        assert updated["@iot.id"] == created["@iot.id"]
        assert (updated["result"], updated["parameters"]["rollup"]["count"]) == (120, 2)
        assert updated == read(sta, f"Observations({created['@iot.id']})")
        filtered = wait_for(lambda: subscriber.on(topics[1]), what="the filtered collection's notifications")
        assert {m.json()["@iot.id"] for m in filtered} >= {created["@iot.id"]}  # the raw 120 and the bucket
