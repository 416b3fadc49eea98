"""POST /v1.1/CreateObservations (the Data Array extension's write half, STA 1.1 §14.3; issue 6 part 1):
every row through the ingest path; bad rows answer "error …" while the good ones are stored."""

from __future__ import annotations

from typing import Any

import frost_sta_client as fsc
import psycopg
import pytest
from frost_sta_client.model.ext.data_array_value import DataArrayValue
from frost_sta_client.service.auth_handler import AuthHandler

from citystream.auth.credentials import create_key
from sensorthings.model.access import Role
from tests.sta_helpers import (
    HTTP,
    assert_error,
    count,
    create,
    create_datastream,
    create_thing_with_location,
    datastream_body,
    feature_body,
    observed_property_body,
    post,
    read,
    send_raw,
    sensor_body,
)

COUNT_TYPE = "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_CountObservation"


def create_observations(sta: str, document: Any) -> list[str]:
    response = post(sta, "CreateObservations", document)
    assert response.status_code == 201, response.text
    return response.json()


def observation_id(link: str) -> int:
    assert link.startswith("http") and link.endswith(")"), link
    return int(link.rsplit("(", 1)[1][:-1])


def test_rows_of_several_datastreams_are_created(sta: str) -> None:
    thing = create_thing_with_location(sta)
    first, second = create_datastream(sta, thing, "first"), create_datastream(sta, thing, "second")
    feature = create(sta, "FeaturesOfInterest", feature_body())
    links = create_observations(sta, [
        {"Datastream": {"@iot.id": first}, "components": ["phenomenonTime", "result", "FeatureOfInterest/id"],
         "dataArray@iot.count": 2,
         "dataArray": [["2024-05-01T10:00:00Z", 20.5, feature], ["2024-05-01T10:01:00Z", 21, feature]]},
        {"Datastream": {"@iot.id": second}, "components": ["result", "phenomenonTime", "resultTime", "parameters"],
         "dataArray": [[1.50, "2024-05-01T10:00:00Z/2024-05-01T10:15:00Z", "2024-05-01T10:16:00Z", {"q": 1}]]},
    ])
    assert len(links) == 3
    first_row = read(sta, f"Observations({observation_id(links[0])})", **{"$expand": "FeatureOfInterest,Datastream"})
    assert (first_row["result"], first_row["phenomenonTime"]) == (20.5, "2024-05-01T10:00:00Z")
    assert (first_row["Datastream"]["@iot.id"], first_row["FeatureOfInterest"]["@iot.id"]) == (first, feature)
    third = HTTP.get(links[2]).json()
    assert third["phenomenonTime"] == "2024-05-01T10:00:00Z/2024-05-01T10:15:00Z"
    assert third["resultTime"] == "2024-05-01T10:16:00Z" and third["parameters"] == {"q": 1}
    raw = send_raw("POST", sta, "CreateObservations",
                   f'[{{"Datastream": {{"@iot.id": {second}}}, "components": ["result"], "dataArray": [[1.50]]}}]')
    assert HTTP.get(raw.json()[0]).text.count('"result" : 1.50') == 1  # the number's text is kept
    assert count(sta, f"Datastreams({first})/Observations") == 2


def test_without_a_feature_the_things_location_is_used(sta: str) -> None:
    datastream = create_datastream(sta)
    links = create_observations(sta, [{"Datastream": {"@iot.id": datastream}, "components": ["result"],
                                       "dataArray": [[1], [2]]}])
    feature = read(sta, f"Observations({observation_id(links[0])})/FeatureOfInterest")
    assert feature["feature"]["type"] == "Point"
    assert count(sta, "FeaturesOfInterest") == 1


def test_bad_rows_are_errors_and_the_good_rows_are_stored(sta: str) -> None:
    thing = create_thing_with_location(sta)
    counted = create(sta, f"Things({thing})/Datastreams", datastream_body(
        "bikes", observationType=COUNT_TYPE, Sensor=sensor_body(), ObservedProperty=observed_property_body()))
    links = create_observations(sta, [
        {"Datastream": {"@iot.id": counted}, "components": ["phenomenonTime", "result"],
         "dataArray": [["2024-05-01T10:00:00Z", 3],
                       ["2024-05-01T10:01:00Z"],  # too short
                       ["2024-05-01T10:02:00Z", "many"],  # not a count
                       ["yesterday", 4],  # not a time
                       ["2024-05-01T10:04:00Z", 5]]},
        {"Datastream": {"@iot.id": 999}, "components": ["result"], "dataArray": [[1]]},  # no such Datastream
    ])
    assert [link.startswith("error") for link in links] == [False, True, True, True, False, True]
    assert "2 values" in links[1]
    assert "Count" in links[2] or "integer" in links[2]
    assert "999" in links[5]
    assert sorted(o["result"] for o in read(sta, "Observations")["value"]) == [3, 5]


@pytest.mark.parametrize(("document", "fragment"), [
    ({"Datastream": {"@iot.id": 1}}, "JSON array"),
    ([["not an object"]], "Data Array object"),
    ([{"components": ["result"], "dataArray": [[1]]}], "Datastream"),
    ([{"Datastream": {"name": "new"}, "components": ["result"], "dataArray": [[1]]}], "existing Datastream"),
    ([{"Datastream": {"@iot.id": 1}, "components": ["result", "colour"], "dataArray": [[1, 2]]}], "colour"),
    ([{"Datastream": {"@iot.id": 1}, "components": [], "dataArray": []}], "components"),
    ([{"Datastream": {"@iot.id": 1}, "components": ["result", "result"], "dataArray": [[1, 2]]}], "twice"),
    ([{"Datastream": {"@iot.id": 1}, "components": ["result"], "dataArray": {"0": [1]}}], "dataArray"),
    ([{"Datastream": {"@iot.id": 1}, "components": ["result"], "dataArray@iot.count": 3, "dataArray": [[1]]}],
     "dataArray@iot.count"),
    ([{"Datastream": {"@iot.id": 1}, "MultiDatastream": {"@iot.id": 1}, "components": ["result"],
      "dataArray": [[[1, 2]]]}], "exactly one Datastream or MultiDatastream"),
])
def test_malformed_documents_are_400_and_store_nothing(sta: str, document: Any, fragment: str) -> None:
    create_datastream(sta)
    assert_error(post(sta, "CreateObservations", document), 400, fragment)
    assert count(sta, "Observations") == 0


def test_frost_client_uploads_a_data_array(sta: str, database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:  # a sensor operator's key, as Basic
        key = create_key(conn, "uploader", frozenset({Role.CREATE, Role.READ}))
    service = fsc.SensorThingsService(sta, auth_handler=AuthHandler(key.id, key.secret))
    datastream = service.datastreams().find(create_datastream(sta))
    feature = service.features_of_interest().find(create(sta, "FeaturesOfInterest", feature_body()))
    array = DataArrayValue()
    array.datastream = datastream
    array.components = {DataArrayValue.Property.PHENOMENON_TIME, DataArrayValue.Property.RESULT,
                        DataArrayValue.Property.FEATURE_OF_INTEREST}
    for minute in range(5):
        array.add_observation(fsc.Observation(phenomenon_time=f"2024-05-01T10:0{minute}:00Z", result=minute,
                                              feature_of_interest=feature, datastream=datastream))
    document = fsc.DataArrayDocument()
    document.value = [array]
    created = service.observations().create(document)
    assert len(created) == 5
    assert sorted(o["result"] for o in read(sta, f"Datastreams({datastream.id})/Observations")["value"]) == [
        0, 1, 2, 3, 4]


def test_a_document_of_several_batches_keeps_every_row_in_its_place(sta: str) -> None:
    """More rows than one ingest batch (5,000): the batches are written side by side, and each row's answer
    still lands at its own position, bad rows among them."""
    thing = create_thing_with_location(sta)
    datastreams = [create_datastream(sta, thing, f"stream {n}") for n in range(3)]
    rows_per_array = 4_000
    document = [{"Datastream": {"@iot.id": d}, "components": ["phenomenonTime", "result"],
                 "dataArray": [["yesterday" if i % 997 == 0 else
                                f"2024-05-0{1 + n}T{i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d}Z", i]
                               for i in range(rows_per_array)]}
                for n, d in enumerate(datastreams)]
    links = create_observations(sta, document)
    assert len(links) == 3 * rows_per_array
    bad = [n for n, link in enumerate(links) if link.startswith("error")]
    assert bad == [a * rows_per_array + i for a in range(3) for i in range(rows_per_array) if i % 997 == 0]
    assert count(sta, "Observations") == 3 * rows_per_array - len(bad)
    for position in (1, rows_per_array + 5_001 % rows_per_array, 3 * rows_per_array - 1):
        stored = HTTP.get(links[position]).json()
        array, i = divmod(position, rows_per_array)
        assert stored["result"] == i
        assert read(sta, f"Observations({stored['@iot.id']})/Datastream")["@iot.id"] == datastreams[array]
