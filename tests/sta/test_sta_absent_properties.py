"""Optional properties without a value are left out, not written as `null` (issue 15, point 3), as FROST
does: pygeoapi's SensorThings provider failed on `"properties": null`. In every form the JSON takes: an
entity, a collection, `$select`, `$expand`, the result formats and MQTT notifications; `result` and the
nulls inside free JSON values stay. Against the real app and PostgreSQL (the `sta` fixture) over HTTP."""

from __future__ import annotations

import csv
import io
from typing import Any

import psycopg
import pytest

from citystream.embedded import EmbeddedMosquitto
from tests.mqtt_helpers import Subscriber, mosquitto_pub, wait_for, wait_until_learned
from tests.sta_helpers import (
    create,
    create_datastream,
    create_observation,
    create_thing_with_location,
    datastream_body,
    feature_body,
    get,
    ids,
    location_body,
    observed_property_body,
    patch,
    post,
    read,
    ref,
    sensor_body,
    thing_body,
    values,
)

OM = "http://www.opengis.net/def/observationType/OGC-OM/2.0/"
MULTI_TYPES = [OM + "OM_Measurement", OM + "OM_CountObservation"]
MULTI_UNITS = [{"name": "degree Celsius", "symbol": "°C", "definition": "https://example.org/celsius"},
               {"name": "vehicles", "symbol": "1", "definition": "https://example.org/count"}]

OPTIONAL = {
    "Thing": ("properties",),
    "Location": ("properties",),
    "HistoricalLocation": (),
    "Datastream": ("observedArea", "phenomenonTime", "resultTime", "properties"),
    "Sensor": ("properties",),
    "ObservedProperty": ("properties",),
    "Observation": ("resultTime", "resultQuality", "validTime", "parameters"),
    "FeatureOfInterest": ("properties",),
    "MultiDatastream": ("observedArea", "phenomenonTime", "resultTime", "properties"),
}
REQUIRED = {
    "Thing": ("name", "description"),
    "Location": ("name", "description", "encodingType", "location"),
    "HistoricalLocation": ("time",),
    "Datastream": ("name", "description", "observationType", "unitOfMeasurement"),
    "Sensor": ("name", "description", "encodingType", "metadata"),
    "ObservedProperty": ("name", "definition", "description"),
    "Observation": ("phenomenonTime", "result"),
    "FeatureOfInterest": ("name", "description", "encodingType", "feature"),
    "MultiDatastream": ("name", "description", "observationType", "multiObservationDataTypes",
                        "unitOfMeasurements"),
}
SET_OF = {
    "Thing": "Things", "Location": "Locations", "HistoricalLocation": "HistoricalLocations",
    "Datastream": "Datastreams", "Sensor": "Sensors", "ObservedProperty": "ObservedProperties",
    "Observation": "Observations", "FeatureOfInterest": "FeaturesOfInterest", "MultiDatastream": "MultiDatastreams",
}
SUMMARIES = ("observedArea", "phenomenonTime", "resultTime")
"""A Datastream's or MultiDatastream's, kept by the server from its Observations."""
WITH_VALUES = {
    "properties": {"owner": "city", "note": None},
    "resultTime": "2024-05-01T10:05:00Z",
    "resultQuality": ["good", None],
    "validTime": "2024-05-01T00:00:00Z/2024-06-01T00:00:00Z",
    "parameters": {"battery": 0.9, "unknown": None},
}


def writable(entity: str) -> tuple[str, ...]:
    """The optional properties of `entity` that a request may set."""
    streams = ("Datastream", "MultiDatastream")
    return tuple(name for name in OPTIONAL[entity] if entity not in streams or name not in SUMMARIES)


def bare_tree(sta: str, **optional: Any) -> dict[str, int]:
    """One entity of every type (a MultiDatastream too), each given `optional` where it may set such a
    property (none by default), and one Observation of the Datastream. Returns {entity type: id}."""
    def given(entity: str) -> dict[str, Any]:
        return {k: v for k, v in optional.items() if k in writable(entity)}

    thing = create(sta, "Things", thing_body(**given("Thing"), Locations=[location_body(**given("Location"))]))
    feature = create(sta, "FeaturesOfInterest", feature_body(**given("FeatureOfInterest")))
    datastream = create(sta, f"Things({thing})/Datastreams", datastream_body(
        **given("Datastream"), Sensor=sensor_body(**given("Sensor")),
        ObservedProperty=observed_property_body(**given("ObservedProperty"))))
    multi = create(sta, "MultiDatastreams", {
        "name": "multi", "description": "two components", "observationType": OM + "OM_ComplexObservation",
        "multiObservationDataTypes": MULTI_TYPES, "unitOfMeasurements": MULTI_UNITS, **given("MultiDatastream"),
        "Thing": ref(thing), "Sensor": sensor_body("multi sensor"),
        "ObservedProperties": [ref(create(sta, "ObservedProperties", observed_property_body(name)))
                               for name in ("t", "n")]})
    tree = {
        "Thing": thing,
        "Location": ids(sta, f"Things({thing})/Locations")[0],
        "HistoricalLocation": ids(sta, f"Things({thing})/HistoricalLocations")[0],
        "Datastream": datastream,
        "Sensor": read(sta, f"Datastreams({datastream})/Sensor")["@iot.id"],
        "ObservedProperty": read(sta, f"Datastreams({datastream})/ObservedProperty")["@iot.id"],
        "FeatureOfInterest": feature,
        "MultiDatastream": multi,
        "Observation": create_observation(sta, datastream, 1.5, "2024-05-01T10:00:00Z",
                                          FeatureOfInterest=ref(feature), **given("Observation")),
    }
    return tree


def assert_without(body: dict[str, Any], entity: str) -> None:
    for name in OPTIONAL[entity]:
        assert name not in body, f"{entity}: {name} should be left out, got {body.get(name)!r}"
    for name in REQUIRED[entity]:
        assert name in body, f"{entity}: {name} missing from {body}"
    assert "@iot.id" in body and "@iot.selfLink" in body


# ------------------------------------------------------------------ entities and collections


@pytest.mark.parametrize("entity", [e for e in SET_OF if e != "Datastream"])  # its Observation summarised
def test_an_entity_without_optional_values_leaves_them_out(sta: str, entity: str) -> None:
    tree = bare_tree(sta)
    single = read(sta, f"{SET_OF[entity]}({tree[entity]})")
    assert_without(single, entity)
    listed = [e for e in values(sta, SET_OF[entity]) if e["@iot.id"] == tree[entity]]
    assert listed == [single]


def test_a_datastream_without_observations_leaves_out_its_summaries_and_properties(sta: str) -> None:
    datastream = create_datastream(sta)
    body = read(sta, f"Datastreams({datastream})")
    assert_without(body, "Datastream")
    assert [e for e in values(sta, "Datastreams") if e["@iot.id"] == datastream] == [body]
    create_observation(sta, datastream, 1, "2024-05-01T10:00:00Z")
    summarised = read(sta, f"Datastreams({datastream})")
    assert summarised["phenomenonTime"] == "2024-05-01T10:00:00Z"
    assert "resultTime" not in summarised and "properties" not in summarised  # still without values


@pytest.mark.parametrize("entity", [e for e in SET_OF if writable(e)])
def test_optional_values_that_are_given_are_written_with_their_inner_nulls(sta: str, entity: str) -> None:
    tree = bare_tree(sta, **WITH_VALUES)
    body = read(sta, f"{SET_OF[entity]}({tree[entity]})")
    for name in writable(entity):
        assert body[name] == WITH_VALUES[name]  # `"note": null` inside properties stays


def test_key_order_and_links_stay_as_before(sta: str) -> None:
    tree = bare_tree(sta, **WITH_VALUES)
    observation = read(sta, f"Observations({tree['Observation']})")
    assert list(observation) == ["@iot.id", "@iot.selfLink", "phenomenonTime", "resultTime", "result",
                                 "resultQuality", "validTime", "parameters", "Datastream@iot.navigationLink",
                                 "FeatureOfInterest@iot.navigationLink"]
    bare = read(sta, f"Observations({bare_tree(sta)['Observation']})")
    assert list(bare) == ["@iot.id", "@iot.selfLink", "phenomenonTime", "result", "Datastream@iot.navigationLink",
                          "FeatureOfInterest@iot.navigationLink"]


def test_clearing_an_optional_property_removes_its_key(sta: str) -> None:
    thing = create(sta, "Things", thing_body(properties={"owner": "city"}))
    assert read(sta, f"Things({thing})")["properties"] == {"owner": "city"}
    response = patch(sta, f"Things({thing})", {"properties": None})
    assert response.status_code == 200 and "properties" not in response.json()
    assert "properties" not in read(sta, f"Things({thing})")


def test_created_entities_answer_without_the_absent_keys(sta: str) -> None:
    datastream = create_datastream(sta)
    response = get(sta, f"Datastreams({datastream})")
    assert "null" not in response.text  # no optional value anywhere is written as null
    created = post(sta, f"Datastreams({datastream})/Observations", {"result": 3})
    assert created.status_code == 201
    assert_without(created.json(), "Observation")


def test_a_null_result_stays_a_value(sta: str) -> None:
    observation = create_observation(sta, create_datastream(sta), None, "2024-05-01T10:00:00Z")
    body = read(sta, f"Observations({observation})")
    assert "result" in body and body["result"] is None
    assert read(sta, f"Observations({observation})", **{"$select": "result"}) == {"result": None}


def test_a_stored_json_null_counts_as_no_value(sta: str, database_url: str) -> None:
    """The API stores SQL NULL for null; data loaded by other means may hold a JSON null."""
    thing = create(sta, "Things", thing_body())
    observation = create_observation(sta, create_datastream(sta), 1, "2024-05-01T10:00:00Z")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE things SET properties = 'null'::jsonb WHERE id = %s", (thing,))
        conn.execute("UPDATE observations SET parameters = 'null'::jsonb, result_quality = 'null'::jsonb "
                     "WHERE id = %s", (observation,))
    assert "properties" not in read(sta, f"Things({thing})")
    body = read(sta, f"Observations({observation})")
    assert "parameters" not in body and "resultQuality" not in body


# ------------------------------------------------------------------ $select, $expand, paths


def test_select_of_an_absent_property_gives_an_object_without_it(sta: str) -> None:
    datastream = create_datastream(sta)
    bare = create_observation(sta, datastream, 1, "2024-05-01T10:00:00Z")
    timed = create_observation(sta, datastream, 2, "2024-05-01T11:00:00Z", resultTime="2024-05-01T11:00:05Z")
    assert read(sta, f"Observations({bare})", **{"$select": "resultTime"}) == {}
    assert read(sta, f"Observations({timed})", **{"$select": "resultTime"}) == {"resultTime": "2024-05-01T11:00:05Z"}
    page = values(sta, f"Datastreams({datastream})/Observations",
                  **{"$select": "resultTime,result,parameters", "$orderby": "phenomenonTime"})
    assert page == [{"result": 1}, {"resultTime": "2024-05-01T11:00:05Z", "result": 2}]
    assert values(sta, "Observations", **{"$select": "parameters,id", "$orderby": "id"}) == [
        {"@iot.id": bare}, {"@iot.id": timed}]


def test_expanded_entities_leave_out_their_absent_properties(sta: str) -> None:
    tree = bare_tree(sta)
    thing = read(sta, f"Things({tree['Thing']})", **{
        "$expand": "Locations,Datastreams($expand=Observations($expand=FeatureOfInterest),Sensor,ObservedProperty)"})
    assert_without(thing, "Thing")
    assert_without(thing["Locations"][0], "Location")
    (datastream,) = thing["Datastreams"]
    assert "properties" not in datastream and "resultTime" not in datastream
    (observation,) = datastream["Observations"]
    assert_without(observation, "Observation")
    assert_without(observation["FeatureOfInterest"], "FeatureOfInterest")
    assert_without(datastream["Sensor"], "Sensor")
    assert_without(datastream["ObservedProperty"], "ObservedProperty")
    listed = values(sta, "Observations", **{"$expand": "Datastream($select=name,properties)",
                                            "$select": "id,resultTime"})
    assert {"@iot.id": tree["Observation"], "Datastream": {"name": "datastream"}} in listed


def test_expanded_collections_keep_count_and_next_link(sta: str) -> None:
    datastream = create_datastream(sta)
    for hour in range(3):
        create_observation(sta, datastream, hour, f"2024-05-01T{hour:02d}:00:00Z")
    body = read(sta, f"Datastreams({datastream})", **{"$expand": "Observations($top=2;$count=true)"})
    assert body["Observations@iot.count"] == 3 and "Observations@iot.nextLink" in body
    assert all("resultTime" not in o for o in body["Observations"])
    last = read(sta, f"Datastreams({datastream})", **{"$expand": "Observations($top=5;$select=resultTime)"})
    assert last["Observations"] == [{}, {}, {}] and "Observations@iot.nextLink" not in last


def test_an_observation_of_a_multi_datastream_has_no_expanded_datastream(sta: str) -> None:
    tree = bare_tree(sta)
    created = create(sta, f"MultiDatastreams({tree['MultiDatastream']})/Observations",
                     {"result": [1.5, 3], "phenomenonTime": "2024-05-01T10:00:00Z",
                      "FeatureOfInterest": ref(tree["FeatureOfInterest"])})
    body = read(sta, f"Observations({created})", **{"$expand": "Datastream,MultiDatastream($select=name)"})
    assert "Datastream" not in body and body["MultiDatastream"] == {"name": "multi"}
    assert_without(body, "Observation")


def test_the_value_of_an_absent_property_is_no_content(sta: str) -> None:
    observation = create_observation(sta, create_datastream(sta), 1, "2024-05-01T10:00:00Z")
    assert get(sta, f"Observations({observation})/resultTime/$value").status_code == 204


def test_the_path_to_an_absent_property_is_no_content(sta: str) -> None:
    datastream = create_datastream(sta)
    observation = create_observation(sta, datastream, None, "2024-05-01T10:00:00Z")
    for path in (f"Observations({observation})/resultTime", f"Observations({observation})/parameters",
                 f"Datastreams({datastream})/properties"):
        answer = get(sta, path)
        assert (answer.status_code, answer.content) == (204, b""), path
    assert read(sta, f"Observations({observation})/result") == {"result": None}  # null is a result
    assert read(sta, f"Observations({observation})/phenomenonTime") == {"phenomenonTime": "2024-05-01T10:00:00Z"}
    assert get(sta, "Observations(999999999)/resultTime").status_code == 404


# ------------------------------------------------------------------ Data Array, CSV, GeoJSON


def test_data_array_rows_keep_their_positions(sta: str) -> None:
    datastream = create_datastream(sta)
    create_observation(sta, datastream, 1, "2024-05-01T10:00:00Z")
    (array,) = values(sta, f"Datastreams({datastream})/Observations", **{"$resultFormat": "dataArray"})
    assert array["components"] == ["id", "phenomenonTime", "resultTime", "result"]
    (row,) = array["dataArray"]
    assert row[1:] == ["2024-05-01T10:00:00Z", None, 1]


def csv_rows(sta: str, path: str, **params: str) -> tuple[list[str], list[dict[str, str]]]:
    response = get(sta, path, params={"$resultFormat": "CSV", **params})
    assert response.status_code == 200, response.text
    reader = csv.DictReader(io.StringIO(response.text))
    rows = list(reader)
    return list(reader.fieldnames or ()), rows


def test_csv_has_a_column_for_each_property_with_empty_cells(sta: str) -> None:
    datastream = create_datastream(sta)
    create_observation(sta, datastream, 1, "2024-05-01T10:00:00Z")
    create_observation(sta, datastream, 2, "2024-05-01T11:00:00Z", parameters={"x": 1})
    header, rows = csv_rows(sta, f"Datastreams({datastream})/Observations", **{"$orderby": "phenomenonTime"})
    assert header == ["@iot.id", "@iot.selfLink", "phenomenonTime", "resultTime", "result", "resultQuality",
                      "validTime", "parameters"]
    assert [(r["resultTime"], r["parameters"]) for r in rows] == [("", ""), ("", '{"x":1}')]
    things_header, things = csv_rows(sta, "Things", **{"$expand": "Locations"})
    assert things_header.index("properties") == 4 and things[0]["properties"] == ""
    assert "Locations/0/properties" in things_header
    selected_header, selected = csv_rows(sta, f"Datastreams({datastream})/Observations",
                                         **{"$select": "result,resultTime", "$orderby": "phenomenonTime"})
    assert selected_header == ["result"] and [r["result"] for r in selected] == ["1", "2"]


def test_geojson_features_leave_out_absent_properties(sta: str) -> None:
    thing = create_thing_with_location(sta)
    body = read(sta, "Locations", **{"$resultFormat": "GeoJSON"})
    (feature,) = body["features"]
    assert feature["geometry"] == {"type": "Point", "coordinates": [9.99, 53.55]}
    assert "properties" not in feature["properties"] and feature["properties"]["name"] == "thing location"
    things = read(sta, "Things", **{"$resultFormat": "GeoJSON", "$expand": "Locations"})["features"]
    assert [f["id"] for f in things] == [thing] and "properties" not in things[0]["properties"]
    assert "Locations/0/properties" not in things[0]["properties"]


# ------------------------------------------------------------------ MQTT notifications


def test_notifications_leave_out_absent_properties_as_get_does(sta: str, server_url: str,
                                                               mosquitto_server: EmbeddedMosquitto) -> None:
    thing = create_thing_with_location(sta)
    datastream = create_datastream(sta, thing)
    topics = ["v1.1/Observations", "v1.1/Observations?$select=resultTime,result", f"v1.1/Things({thing})"]
    with Subscriber(mosquitto_server, topics) as subscriber:
        wait_until_learned(server_url, *topics)
        mosquitto_pub(mosquitto_server, f"v1.1/Datastreams({datastream})/Observations",
                      '{"result": 4, "phenomenonTime": "2026-11-22T09:00:00Z"}')
        (created,) = wait_for(lambda: subscriber.on("v1.1/Observations"), what="entity-set notification")
        body = created.json()
        assert_without(body, "Observation")
        assert body == read(sta, f"Observations({body['@iot.id']})")
        (selected,) = wait_for(lambda: subscriber.on("v1.1/Observations?$select=resultTime,result"),
                               what="$select notification")
        assert selected.json() == {"result": 4}
        assert patch(sta, f"Things({thing})", {"name": "renamed"}).status_code == 200
        changed = wait_for(lambda: subscriber.on(f"v1.1/Things({thing})"), what="entity notification")
        assert "properties" not in changed[-1].json() and changed[-1].json()["name"] == "renamed"
