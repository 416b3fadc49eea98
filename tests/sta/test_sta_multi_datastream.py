"""MultiDatastreams (STA 1.1 §10, issue 6 part 3) against the real app and PostgreSQL: the entity and its
ordered ObservedProperties, array results checked against the components on every write path (REST, deep
insert, CreateObservations, $batch; MQTT is in test_mqtt_multi_datastream.py), the query language over
them, and their place in the other extensions (Data Array, result formats)."""

from __future__ import annotations

from typing import Any

import frost_sta_client as fsc
import pytest

from tests.sta_helpers import (
    HTTP,
    assert_error,
    count,
    create,
    create_datastream,
    create_thing_with_location,
    delete,
    get,
    ids,
    observed_property_body,
    patch,
    post,
    put,
    read,
    ref,
    sensor_body,
    values,
)

OM = "http://www.opengis.net/def/observationType/OGC-OM/2.0/"
COMPLEX = OM + "OM_ComplexObservation"
TYPES = [OM + "OM_Measurement", OM + "OM_CountObservation", OM + "OM_CategoryObservation"]
UNITS = [{"name": "degree Celsius", "symbol": "°C", "definition": "http://unitsofmeasure.org/ucum.html#para-30"},
         {"name": "vehicles", "symbol": "1", "definition": "http://unitsofmeasure.org/ucum.html#para-29"},
         {"name": "sky condition", "symbol": "", "definition": "https://example.org/def/sky"}]
PROPERTY_NAMES = ("air temperature", "vehicle count", "sky")


def multi_body(name: str = "weather and traffic", **extra: Any) -> dict[str, Any]:
    """A MultiDatastream of three components (a measurement, a count, a category), without relations."""
    return {"name": name, "description": f"{name} description", "observationType": COMPLEX,
            "multiObservationDataTypes": list(TYPES), "unitOfMeasurements": [dict(u) for u in UNITS], **extra}


def new_properties(sta: str) -> list[int]:
    return [create(sta, "ObservedProperties", observed_property_body(name)) for name in PROPERTY_NAMES]


def create_multi(sta: str, thing: int | None = None, observed: list[int] | None = None, **extra: Any
                 ) -> tuple[int, list[int]]:
    """A MultiDatastream on `thing` (or a new located Thing) observing `observed` (or three new
    ObservedProperties)."""
    thing = thing if thing is not None else create_thing_with_location(sta)
    observed = observed if observed is not None else new_properties(sta)
    body = multi_body(Thing=ref(thing), Sensor=sensor_body(), ObservedProperties=[ref(p) for p in observed],
                      **extra)
    return create(sta, "MultiDatastreams", body), observed


def post_observation(sta: str, multi: int, result: Any, time: str = "2024-05-01T10:00:00Z", **extra: Any
                     ) -> Any:
    return post(sta, f"MultiDatastreams({multi})/Observations", {"result": result, "phenomenonTime": time, **extra})


# ------------------------------------------------------------------ the entity


def test_a_multi_datastream_reads_back_with_its_relations(sta: str) -> None:
    thing = create_thing_with_location(sta)
    multi, properties = create_multi(sta, thing, properties={"owner": "HPA"})
    body = read(sta, f"MultiDatastreams({multi})")
    assert body["@iot.selfLink"].endswith(f"/MultiDatastreams({multi})")
    assert (body["name"], body["observationType"], body["properties"]) == ("weather and traffic", COMPLEX,
                                                                          {"owner": "HPA"})
    assert body["multiObservationDataTypes"] == TYPES and body["unitOfMeasurements"] == UNITS
    assert "phenomenonTime" not in body and "observedArea" not in body  # absent until it has Observations
    for name in ("Thing", "Sensor", "ObservedProperties", "Observations"):
        assert body[f"{name}@iot.navigationLink"] == f"{body['@iot.selfLink']}/{name}"
    assert read(sta, f"MultiDatastreams({multi})/Thing")["@iot.id"] == thing
    assert ids(sta, f"Things({thing})/MultiDatastreams") == [multi]
    sensor = read(sta, f"MultiDatastreams({multi})/Sensor")["@iot.id"]
    assert ids(sta, f"Sensors({sensor})/MultiDatastreams") == [multi]
    assert ids(sta, f"ObservedProperties({properties[1]})/MultiDatastreams") == [multi]
    assert read(sta, f"MultiDatastreams({multi})/unitOfMeasurements") == {"unitOfMeasurements": UNITS}


def test_the_service_root_and_conformance_list_multi_datastreams(sta: str) -> None:
    root = read(sta, "")
    assert {"name": "MultiDatastreams", "url": f"{sta}/MultiDatastreams"} in root["value"]
    assert ("http://www.opengis.net/spec/iot_sensing/1.1/req/multi-datastream"
            in root["serverSettings"]["conformance"])


def test_observed_properties_come_in_component_order(sta: str) -> None:
    first, second, third = new_properties(sta)
    multi, _ = create_multi(sta, observed=[third, first, second])
    assert ids(sta, f"MultiDatastreams({multi})/ObservedProperties") == [third, first, second]
    expanded = read(sta, f"MultiDatastreams({multi})", **{"$expand": "ObservedProperties($select=id,name)"})
    assert [p["@iot.id"] for p in expanded["ObservedProperties"]] == [third, first, second]
    listed = values(sta, "MultiDatastreams", **{"$expand": "ObservedProperties"})
    assert [p["@iot.id"] for p in listed[0]["ObservedProperties"]] == [third, first, second]
    # an explicit $orderby wins over the component order
    assert ids(sta, f"MultiDatastreams({multi})/ObservedProperties", **{"$orderby": "id"}) == [first, second, third]
    page = read(sta, f"MultiDatastreams({multi})/ObservedProperties", **{"$top": "2"})
    assert [p["@iot.id"] for p in page["value"]] == [third, first]
    assert [p["@iot.id"] for p in HTTP.get(page["@iot.nextLink"]).json()["value"]] == [second]


def test_deep_insert_creates_the_whole_tree_in_one_request(sta: str) -> None:
    body = {"name": "station", "description": "at the pier",
            "Locations": [{"name": "pier", "description": "pier", "encodingType": "application/geo+json",
                           "location": {"type": "Point", "coordinates": [9.99, 53.55]}}],
            "MultiDatastreams": [multi_body(
                Sensor=sensor_body(),
                ObservedProperties=[observed_property_body(name) for name in PROPERTY_NAMES],
                Observations=[{"result": [12.5, 3, "cloudy"], "phenomenonTime": "2024-05-01T10:00:00Z"},
                              {"result": [13.0, 4, "clear"], "phenomenonTime": "2024-05-01T11:00:00Z"}])]}
    thing = create(sta, "Things", body)
    (multi,) = ids(sta, f"Things({thing})/MultiDatastreams")
    names = [p["name"] for p in values(sta, f"MultiDatastreams({multi})/ObservedProperties")]
    assert names == list(PROPERTY_NAMES)
    observations = values(sta, f"MultiDatastreams({multi})/Observations", **{"$orderby": "phenomenonTime"})
    assert [o["result"] for o in observations] == [[12.5, 3, "cloudy"], [13.0, 4, "clear"]]
    stored = read(sta, f"MultiDatastreams({multi})")
    assert stored["phenomenonTime"] == "2024-05-01T10:00:00Z/2024-05-01T11:00:00Z"
    assert stored["observedArea"] == {"type": "Point", "coordinates": [9.99, 53.55]}


def test_an_observed_property_can_create_a_single_component_multi_datastream(sta: str) -> None:
    observed = create(sta, "ObservedProperties", observed_property_body())
    body = {**multi_body(), "multiObservationDataTypes": TYPES[:1], "unitOfMeasurements": UNITS[:1],
            "Thing": ref(create_thing_with_location(sta)), "Sensor": sensor_body()}
    multi = create(sta, f"ObservedProperties({observed})/MultiDatastreams", body)
    assert ids(sta, f"MultiDatastreams({multi})/ObservedProperties") == [observed]


def _without(key: str) -> dict[str, Any]:
    body = multi_body()
    del body[key]
    return body


BAD_MULTI_DATASTREAMS = [
    ("two units for three components", {"unitOfMeasurements": UNITS[:2]}, "found 3 multiObservationDataTypes, "
                                                                          "2 unitOfMeasurements, 3 ObservedProperties"),
    ("four types", {"multiObservationDataTypes": [*TYPES, TYPES[0]]}, "one item per component"),
    ("two observed properties", {"ObservedProperties": "two"}, "one item per component"),
    ("a Datastream's observationType", {"observationType": OM + "OM_Measurement"}, "OM_ComplexObservation"),
    ("types not a list", {"multiObservationDataTypes": TYPES[0]}, "non-empty JSON array of strings"),
    ("empty types", {"multiObservationDataTypes": []}, "non-empty JSON array of strings"),
    ("a type that is not a string", {"multiObservationDataTypes": [TYPES[0], 2, TYPES[2]]}, "array of strings"),
    ("units not objects", {"unitOfMeasurements": ["°C", "1", ""]}, "non-empty JSON array of JSON objects"),
    ("a unitOfMeasurement", {"unitOfMeasurements": UNITS[0]}, "JSON array of JSON objects"),
    ("null units", {"unitOfMeasurements": None}, "cannot be null"),
    ("an observed property twice", {"ObservedProperties": "twice"}, "already in ObservedProperties"),
    ("no observed properties", {"ObservedProperties": "none"}, "at least one of its ObservedProperties"),
    ("no types", {"multiObservationDataTypes": "absent"}, "requires 'multiObservationDataTypes'"),
    ("no thing", {"Thing": "absent"}, "needs a Thing"),
    ("a missing observed property", {"ObservedProperties": "missing"}, "no ObservedProperty with @iot.id 987654"),
    ("a datastream's unitOfMeasurement key", {"unitOfMeasurement": UNITS[0]}, "has no property 'unitOfMeasurement'"),
]


@pytest.mark.parametrize(("name", "change", "reason"), BAD_MULTI_DATASTREAMS, ids=[b[0] for b in BAD_MULTI_DATASTREAMS])
def test_an_inconsistent_multi_datastream_is_a_400_and_stores_nothing(
        sta: str, name: str, change: dict[str, Any], reason: str) -> None:
    thing = create_thing_with_location(sta)
    properties = new_properties(sta)
    links = {"two": properties[:2], "twice": [properties[0], properties[1], properties[0]], "none": [],
             "missing": [properties[0], properties[1], 987654]}
    body = multi_body(Thing=ref(thing), Sensor=sensor_body(), ObservedProperties=[ref(p) for p in properties])
    for key, value in change.items():
        if value == "absent":
            del body[key]
        elif key == "ObservedProperties":
            body[key] = [ref(p) for p in links[value]]
        else:
            body[key] = value
    before = {name: count(sta, name) for name in ("MultiDatastreams", "Sensors", "ObservedProperties")}
    assert_error(post(sta, "MultiDatastreams", body), 400, reason)
    assert {name: count(sta, name) for name in before} == before


# ------------------------------------------------------------------ Observations of a MultiDatastream


def test_results_are_arrays_with_one_value_of_the_right_type_per_component(sta: str) -> None:
    multi, _ = create_multi(sta)
    created = post_observation(sta, multi, [21.50, 17, "cloudy"])
    assert created.status_code == 201, created.text
    assert created.json()["result"] == [21.5, 17, "cloudy"]
    links = sorted(key for key in created.json() if key.endswith("@iot.navigationLink"))
    assert links == ["FeatureOfInterest@iot.navigationLink", "MultiDatastream@iot.navigationLink"]
    assert post_observation(sta, multi, [None, None, None]).status_code == 201  # a component may be missing
    bad = [
        (21.5, "result must be an array of 3 values"),
        ([21.5, 17], "result must be an array of 3 values"),
        ([21.5, 17, "cloudy", 1], "result must be an array of 3 values"),
        ({"t": 21.5}, "result must be an array of 3 values"),
        (None, "result must be an array of 3 values"),
        (["warm", 17, "cloudy"], "result[0] must be a number"),
        ([21.5, 17.5, "cloudy"], "result[1] must be an integer"),
        ([21.5, 17, 3], "result[2] must be a string"),
    ]
    for result, reason in bad:
        assert_error(post_observation(sta, multi, result), 400, reason, "multiObservationDataTypes")
    too_large = HTTP.post(f"{sta}/MultiDatastreams({multi})/Observations", content=b'{"result": [1e400, 1, "x"]}',
                          headers={"Content-Type": "application/json"})
    assert_error(too_large, 400, "finite")
    assert count(sta, f"MultiDatastreams({multi})/Observations") == 2


def test_an_observation_names_exactly_one_stream(sta: str) -> None:
    thing = create_thing_with_location(sta)
    multi, _ = create_multi(sta, thing)
    datastream = create_datastream(sta, thing)
    linked = post(sta, "Observations", {"result": [1, 2, "x"], "MultiDatastream": ref(multi)})
    assert linked.status_code == 201, linked.text
    assert read(sta, f"Observations({linked.json()['@iot.id']})/MultiDatastream")["@iot.id"] == multi
    both = {"result": [1, 2, "x"], "MultiDatastream": ref(multi), "Datastream": ref(datastream)}
    assert_error(post(sta, "Observations", both), 400, "Datastream or MultiDatastream, exactly one")
    assert_error(post(sta, "Observations", {"result": 1}), 400, "Datastream or MultiDatastream")
    assert_error(post(sta, f"MultiDatastreams({multi})/Observations",
                      {"result": [1, 2, "x"], "Datastream": ref(datastream)}), 400, "exactly one")
    assert_error(post(sta, "MultiDatastreams(987654)/Observations", {"result": [1, 2, "x"]}), 404)
    assert_error(post(sta, "Observations", {"result": [1, 2, "x"], "MultiDatastream": ref(987654)}), 400,
                 "no MultiDatastream with @iot.id 987654")
    # A Datastream's Observation has no MultiDatastream: the navigation finds nothing.
    plain = create(sta, f"Datastreams({datastream})/Observations", {"result": 5})
    assert "MultiDatastream@iot.navigationLink" not in read(sta, f"Observations({plain})")
    multi_observation = linked.json()["@iot.id"]
    only_multi = {o["@iot.id"]: o for o in values(sta, "Observations", **{"$select": "id,MultiDatastream"})}
    assert only_multi[plain] == {"@iot.id": plain}
    assert only_multi[multi_observation]["MultiDatastream@iot.navigationLink"].endswith(
        f"Observations({multi_observation})/MultiDatastream")
    both = {o["@iot.id"]: o for o in values(sta, "Observations", **{"$select": "id,Datastream,MultiDatastream"})}
    assert list(both[plain]) == ["@iot.id", "Datastream@iot.navigationLink"]
    assert list(both[multi_observation]) == ["@iot.id", "MultiDatastream@iot.navigationLink"]
    assert get(sta, f"Observations({plain})/MultiDatastream").status_code == 404
    assert count(sta, "Observations") == 2


def test_deep_inserted_observations_are_checked_like_ingested_ones(sta: str) -> None:
    thing = create_thing_with_location(sta)
    body = multi_body(Thing=ref(thing), Sensor=sensor_body(),
                      ObservedProperties=[observed_property_body(name) for name in PROPERTY_NAMES],
                      Observations=[{"result": [1.5, 2, "x"]}, {"result": [1.5, 2]}])
    assert_error(post(sta, "MultiDatastreams", body), 400, "Observations[1]", "array of 3 values")
    assert count(sta, "MultiDatastreams") == 0 and count(sta, "ObservedProperties") == 0
    # the same check now covers a Datastream's deep-inserted Observations
    counts = {"name": "counts", "description": "d", "observationType": OM + "OM_CountObservation",
              "unitOfMeasurement": UNITS[1], "Thing": ref(thing), "Sensor": sensor_body(),
              "ObservedProperty": observed_property_body(), "Observations": [{"result": 2.5}]}
    assert_error(post(sta, "Datastreams", counts), 400, "result must be an integer")


def test_observations_are_queried_through_their_multi_datastream(sta: str) -> None:
    thing = create_thing_with_location(sta)
    multi, properties = create_multi(sta, thing)
    other, _ = create_multi(sta, thing, observed=new_properties(sta))
    datastream = create_datastream(sta, thing)
    for hour in range(4):
        assert post_observation(sta, multi, [10.0 + hour, hour, "sky"], f"2024-05-01T{10 + hour}:00:00Z"
                                ).status_code == 201
    assert post_observation(sta, other, [1.0, 1, "x"]).status_code == 201
    create(sta, f"Datastreams({datastream})/Observations", {"result": 3})

    assert count(sta, f"MultiDatastreams({multi})/Observations") == 4
    mine = values(sta, "Observations", **{"$filter": f"MultiDatastream/id eq {multi}", "$orderby": "phenomenonTime"})
    assert [o["result"][1] for o in mine] == [0, 1, 2, 3]
    named = values(sta, "Observations", **{"$filter": "MultiDatastream/name eq 'weather and traffic'"})
    assert len(named) == 5
    assert len(values(sta, "Observations", **{"$filter": "Datastream/id ne 0"})) == 1
    on_thing = values(sta, "Observations", **{"$filter": f"MultiDatastream/Thing/id eq {thing}"})
    assert len(on_thing) == 5
    expanded = read(sta, f"Observations({mine[0]['@iot.id']})", **{"$expand": "MultiDatastream($select=name)"})
    assert expanded["MultiDatastream"] == {"name": "weather and traffic"}
    tree = read(sta, f"Things({thing})", **{
        "$expand": "MultiDatastreams($orderby=id;$expand=ObservedProperties($select=name),"
                   "Observations($top=2;$orderby=phenomenonTime desc;$count=true))"})
    first = tree["MultiDatastreams"][0]
    assert [p["name"] for p in first["ObservedProperties"]] == list(PROPERTY_NAMES)
    assert first["Observations@iot.count"] == 4 and [o["result"][0] for o in first["Observations"]] == [13.0, 12.0]
    assert "Observations@iot.nextLink" in first
    by_name = values(sta, "MultiDatastreams", **{"$filter": "substringof('traffic', name)", "$count": "true"})
    assert len(by_name) == 2
    selected = values(sta, "MultiDatastreams", **{"$select": "id,multiObservationDataTypes", "$orderby": "id desc",
                                                 "$top": "1"})
    assert selected == [{"@iot.id": other, "multiObservationDataTypes": TYPES}]
    assert ids(sta, "MultiDatastreams", **{"$filter": f"Thing/id eq {thing} and phenomenonTime ge "
                                                     "2024-05-01T10:00:00Z", "$orderby": "id"}) == [multi, other]
    assert ids(sta, f"ObservedProperties({properties[2]})/MultiDatastreams") == [multi]
    summary = read(sta, f"MultiDatastreams({multi})")
    assert summary["phenomenonTime"] == "2024-05-01T10:00:00Z/2024-05-01T13:00:00Z"


# ------------------------------------------------------------------ updates and deletes


def test_the_components_stay_consistent_through_updates(sta: str) -> None:
    multi, properties = create_multi(sta)
    extra = create(sta, "ObservedProperties", observed_property_body("humidity"))
    assert_error(post(sta, f"MultiDatastreams({multi})/ObservedProperties/$ref", ref(extra)), 400,
                 "set when it is created")
    assert_error(post(sta, f"ObservedProperties({extra})/MultiDatastreams/$ref", ref(multi)), 400,
                 "set when it is created")
    assert_error(delete(sta, f"MultiDatastreams({multi})/ObservedProperties({properties[0]})/$ref"), 400,
                 "set when it is created")
    assert_error(post(sta, f"MultiDatastreams({multi})/ObservedProperties", observed_property_body("new")), 400,
                 "set when it is created")
    assert count(sta, "ObservedProperties") == 4
    assert_error(patch(sta, f"MultiDatastreams({multi})", {"unitOfMeasurements": UNITS[:2]}), 400,
                 "one item per component")
    assert_error(patch(sta, f"MultiDatastreams({multi})", {"ObservedProperties": [ref(extra)]}), 400,
                 "cannot be changed in an update")
    assert read(sta, f"MultiDatastreams({multi})")["unitOfMeasurements"] == UNITS
    renamed = [{**UNITS[0], "name": "Celsius"}, UNITS[1], UNITS[2]]
    assert patch(sta, f"MultiDatastreams({multi})", {"unitOfMeasurements": renamed}).status_code == 200
    assert read(sta, f"MultiDatastreams({multi})/unitOfMeasurements") == {"unitOfMeasurements": renamed}
    replaced = put(sta, f"MultiDatastreams({multi})", multi_body("replaced"))
    assert replaced.status_code == 200, replaced.text
    assert ids(sta, f"MultiDatastreams({multi})/ObservedProperties") == properties


def test_an_updated_result_must_still_fit(sta: str) -> None:
    thing = create_thing_with_location(sta)
    multi, _ = create_multi(sta, thing)
    observation = post_observation(sta, multi, [1.0, 2, "x"]).json()["@iot.id"]
    assert_error(patch(sta, f"Observations({observation})", {"result": [1.0, 2]}), 400, "array of 3 values")
    assert_error(patch(sta, f"Observations({observation})", {"result": [1.0, "2", "x"]}), 400, "result[1]")
    assert_error(patch(sta, f"Observations({observation})", {"Datastream": ref(create_datastream(sta, thing)),
                                                              "MultiDatastream": ref(multi)}), 400, "not several")
    assert patch(sta, f"Observations({observation})", {"result": [1.5, 3, "y"]}).status_code == 200
    # moved to a Datastream, it leaves its MultiDatastream (one stream at a time)
    datastream = create_datastream(sta, thing)
    moved = patch(sta, f"Observations({observation})", {"Datastream": ref(datastream)})
    assert moved.status_code == 200, moved.text
    assert count(sta, f"MultiDatastreams({multi})/Observations") == 0
    assert ids(sta, f"Datastreams({datastream})/Observations") == [observation]
    back = put(sta, f"Observations({observation})/MultiDatastream/$ref", ref(multi))
    assert back.status_code in (200, 204), back.text
    assert ids(sta, f"MultiDatastreams({multi})/Observations") == [observation]
    assert count(sta, f"Datastreams({datastream})/Observations") == 0
    # through the collection's $ref, too; a result that does not fit the target stream stays where it is
    assert post(sta, f"Datastreams({datastream})/Observations/$ref", ref(observation)).status_code in (200, 201, 204)
    assert ids(sta, f"Datastreams({datastream})/Observations") == [observation]
    counts = create(sta, "Datastreams", {
        "name": "counts", "description": "d", "observationType": OM + "OM_CountObservation",
        "unitOfMeasurement": UNITS[1], "Thing": ref(thing), "Sensor": sensor_body(),
        "ObservedProperty": observed_property_body()})
    assert_error(post(sta, f"Datastreams({counts})/Observations/$ref", ref(observation)), 400, "must be an integer")
    assert ids(sta, f"Datastreams({datastream})/Observations") == [observation]


def test_an_update_keeps_large_and_exact_numbers_of_a_json_result(sta: str) -> None:
    """An update re-reads the stored result to check it; numbers beyond 64-bit integers must survive that."""
    datastream = create_datastream(sta)
    created = HTTP.post(f"{sta}/Datastreams({datastream})/Observations",
                        content=b'{"result": {"v": 1.5e20, "w": 21.50, "n": 123456789012345678901234567890}}',
                        headers={"Content-Type": "application/json"})
    assert created.status_code == 201, created.text
    observation = created.json()["@iot.id"]
    assert patch(sta, f"Observations({observation})", {"resultTime": "2024-01-01T00:00:00Z"}).status_code == 200
    # (an integer beyond 64 bits makes the whole result take the general writer, which keeps values, not text)
    assert read(sta, f"Observations({observation})")["result"] == {"v": 1.5e20, "w": 21.5,
                                                                   "n": 123456789012345678901234567890}
    exact = HTTP.post(f"{sta}/Datastreams({datastream})/Observations", content=b'{"result": {"w": 21.50}}',
                      headers={"Content-Type": "application/json"}).json()["@iot.id"]
    assert patch(sta, f"Observations({exact})", {"resultTime": "2024-01-01T00:00:00Z"}).status_code == 200
    assert b'"w": 21.50' in get(sta, f"Observations({exact})/result").content


def test_deletes_cascade_to_multi_datastreams_and_their_observations(sta: str) -> None:
    thing = create_thing_with_location(sta)
    first, properties = create_multi(sta, thing)
    second, _ = create_multi(sta, thing, observed=new_properties(sta))
    third, _ = create_multi(sta, thing, observed=new_properties(sta))
    for multi in (first, second, third):
        assert post_observation(sta, multi, [1.0, 1, "x"]).status_code == 201
    # an ObservedProperty is a component the MultiDatastream cannot lose: it goes with it
    assert delete(sta, f"ObservedProperties({properties[1]})").status_code == 200
    assert ids(sta, "MultiDatastreams", **{"$orderby": "id"}) == [second, third]
    assert count(sta, "Observations") == 2
    assert delete(sta, f"MultiDatastreams({second})").status_code == 200
    assert count(sta, "Observations") == 1 and count(sta, "ObservedProperties") == 8
    assert delete(sta, f"Things({thing})").status_code == 200
    assert count(sta, "MultiDatastreams") == 0 and count(sta, "Observations") == 0
    assert get(sta, f"MultiDatastreams({third})").status_code == 404


# ------------------------------------------------------------------ the other extensions


def test_create_observations_takes_multi_datastream_arrays(sta: str) -> None:
    thing = create_thing_with_location(sta)
    multi, _ = create_multi(sta, thing)
    datastream = create_datastream(sta, thing)
    response = post(sta, "CreateObservations", [
        {"MultiDatastream": ref(multi), "components": ["phenomenonTime", "result"],
         "dataArray": [["2024-05-01T10:00:00Z", [1.5, 2, "a"]], ["2024-05-01T10:01:00Z", [1.5, 2]],
                       ["2024-05-01T10:02:00Z", [2.5, 3, "b"]]]},
        {"Datastream": ref(datastream), "components": ["result"], "dataArray": [[7]]},
    ])
    assert response.status_code == 201, response.text
    links = response.json()
    assert links[1].startswith("error") and "array of 3 values" in links[1]
    assert all(link.startswith("http") for n, link in enumerate(links) if n != 1)
    assert [o["result"] for o in values(sta, f"MultiDatastreams({multi})/Observations",
                                        **{"$orderby": "phenomenonTime"})] == [[1.5, 2, "a"], [2.5, 3, "b"]]
    assert_error(post(sta, "CreateObservations", [{"Datastream": ref(datastream), "MultiDatastream": ref(multi),
                                                  "components": ["result"], "dataArray": [[1]]}]), 400,
                 "exactly one Datastream or MultiDatastream")

    arrays = read(sta, "Observations", **{"$resultFormat": "dataArray", "$orderby": "id",
                                         "$select": "result,phenomenonTime"})["value"]
    by_link = {next(v for k, v in a.items() if k.endswith("@iot.navigationLink")): a for a in arrays}
    assert set(by_link) == {f"{sta}/MultiDatastreams({multi})", f"{sta}/Datastreams({datastream})"}
    grouped = by_link[f"{sta}/MultiDatastreams({multi})"]
    assert "MultiDatastream@iot.navigationLink" in grouped and grouped["dataArray@iot.count"] == 2
    assert grouped["dataArray"] == [[[1.5, 2, "a"], "2024-05-01T10:00:00Z"], [[2.5, 3, "b"], "2024-05-01T10:02:00Z"]]


def test_a_change_set_creates_a_multi_datastream_and_its_observations_atomically(sta: str) -> None:
    thing = create_thing_with_location(sta)

    def change_set(observation_result: Any) -> dict[str, Any]:
        return {"requests": [
            {"id": "op", "atomicityGroup": "g", "method": "post", "url": "ObservedProperties",
             "body": observed_property_body("noise")},
            {"id": "md", "atomicityGroup": "g", "method": "post", "url": "MultiDatastreams", "dependsOn": ["op"],
             "body": {**multi_body(), "multiObservationDataTypes": TYPES[:1], "unitOfMeasurements": UNITS[:1],
                      "Thing": ref(thing), "Sensor": sensor_body(), "ObservedProperties": [{"@iot.id": "$op"}]}},
            {"id": "obs", "atomicityGroup": "g", "method": "post", "url": "$md/Observations", "dependsOn": ["md"],
             "body": {"result": observation_result}},
        ]}

    failed = post(sta, "$batch", change_set([1.0, 2.0]))
    assert failed.status_code == 200, failed.text
    assert 400 in [r["status"] for r in failed.json()["responses"]]
    assert count(sta, "MultiDatastreams") == 0 and count(sta, "ObservedProperties") == 0
    done = post(sta, "$batch", change_set([61.5]))
    assert [r["status"] for r in done.json()["responses"]] == [201, 201, 201], done.text
    (multi,) = ids(sta, "MultiDatastreams")
    assert [o["result"] for o in values(sta, f"MultiDatastreams({multi})/Observations")] == [[61.5]]


def test_csv_and_geojson_flatten_multi_datastreams(sta: str) -> None:
    multi, _ = create_multi(sta)
    assert post_observation(sta, multi, [1.0, 2, "x"]).status_code == 201
    csv = get(sta, "MultiDatastreams", params={"$resultFormat": "CSV", "$select": "id,name,unitOfMeasurements"})
    assert csv.status_code == 200, csv.text
    header, row = csv.text.strip().splitlines()
    assert header.split(",")[:2] == ["@iot.id", "name"] and str(multi) in row and "°C" in row
    geojson = read(sta, "MultiDatastreams", **{"$resultFormat": "GeoJSON"})
    assert geojson["type"] == "FeatureCollection"
    assert geojson["features"][0]["geometry"] == {"type": "Point", "coordinates": [9.99, 53.55]}


def test_frost_client_reads_multi_datastreams(sta: str) -> None:
    """frost-sta-client 1.1 cannot create one (it serialises unitOfMeasurements as null), and reads one only
    while its observedArea is empty or a Polygon (it rejects a Point), but it reads the rest."""
    thing = create_thing_with_location(sta)
    multi, properties = create_multi(sta, thing)
    service = fsc.SensorThingsService(sta)
    found = service.multi_datastreams().find(multi)
    assert (found.id, found.name, found.multi_observation_data_types) == (multi, "weather and traffic", TYPES)
    assert found.unit_of_measurements == UNITS
    listed = service.multi_datastreams().query().list().entities
    assert [m.id for m in listed] == [multi]
    assert post_observation(sta, multi, [1.5, 2, "x"]).status_code == 201
    observations = found.get_observations().query().list().entities
    assert [o.result for o in observations] == [[1.5, 2, "x"]]
    observed = found.get_observed_properties().query().list().entities
    assert [p.id for p in observed] == properties
