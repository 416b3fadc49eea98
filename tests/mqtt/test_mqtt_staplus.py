"""STAplus over MQTT: notifications of Parties, Projects and Licenses and of the streams linked to them, on
`v1.1/…` topics only (STA 1.0 has no STAplus, so there is no `v1.0/Parties` and a 1.0 Datastream carries no
Party link). Real app, real Mosquitto, paho."""

from __future__ import annotations

from citystream.embedded import EmbeddedMosquitto
from tests.mqtt_helpers import Subscriber, wait_for, wait_until_learned
from tests.sta_helpers import (
    create,
    create_datastream,
    datastream_body,
    observed_property_body,
    patch,
    read,
    ref,
    sensor_body,
)


def test_staplus_notifications_are_v11_only(sta: str, server_url: str, mosquitto_server: EmbeddedMosquitto) -> None:
    v10 = sta.removesuffix("/v1.1") + "/v1.0"
    datastream = create_datastream(sta)
    party = create(sta, "Parties", {"role": "institutional", "displayName": "City"})
    topics = ["v1.1/Parties", "v1.0/Parties", f"v1.1/Parties({party})/Datastreams",
              f"v1.0/Parties({party})/Datastreams", f"v1.0/Datastreams({datastream})",
              f"v1.1/Datastreams({datastream})", f"v1.1/Parties({party})/displayName"]
    with Subscriber(mosquitto_server, topics) as subscriber:
        wait_until_learned(server_url, *topics)
        assert patch(sta, f"Datastreams({datastream})", {"Party": ref(party)}).status_code == 200
        new = wait_for(lambda: subscriber.on(topics[5]), what="the v1.1 Datastream notification")[-1].json()
        old = wait_for(lambda: subscriber.on(topics[4]), what="the v1.0 Datastream notification")[-1].json()
        assert new == read(sta, f"Datastreams({datastream})") and "Party@iot.navigationLink" in new
        assert old == read(v10, f"Datastreams({datastream})") and "Party@iot.navigationLink" not in old

        assert patch(sta, f"Parties({party})", {"displayName": "Hamburg"}).status_code == 200
        renamed = wait_for(lambda: subscriber.on(topics[6]), what="the property notification")[-1].json()
        assert renamed == {"displayName": "Hamburg"}
        second = create(sta, "Parties", {"role": "individual"})
        created = wait_for(lambda: [m for m in subscriber.on(topics[0]) if m.json()["@iot.id"] == second],
                           what="the new Party on v1.1/Parties")
        assert created[0].json() == read(sta, f"Parties({second})")
        thing = read(sta, f"Datastreams({datastream})/Thing")["@iot.id"]
        create(sta, f"Parties({party})/Datastreams", datastream_body(
            "owned", Thing=ref(thing), Sensor=sensor_body(), ObservedProperty=observed_property_body()))
        wait_for(lambda: subscriber.on(topics[2]), what="the new Datastream on v1.1/Parties(id)/Datastreams")
        # Everything of v1.0 was published before its v1.1 counterpart (model.VERSIONS order): none came.
        assert subscriber.on(topics[1]) == [] and subscriber.on(topics[3]) == []
