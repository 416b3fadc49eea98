"""SensorThings API 1.1 bad input: every class of mistake is a 4xx JSON error (never 500, never 422) whose
message names what is wrong, and a rejected request leaves nothing behind.

`rejected(...)` sends a request, checks the error and checks that no entity count changed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from citystream.settings import Settings
from tests.sta_helpers import (
    HTTP,
    assert_error,
    counts,
    create,
    create_datastream,
    create_observation,
    datastream_body,
    delete,
    feature_body,
    get,
    location_body,
    observed_property_body,
    patch,
    point,
    post,
    read,
    ref,
    send_raw,
    sensor_body,
    thing_body,
    url,
)


def rejected(sta: str, send: Callable[[], httpx.Response], status: int | tuple[int, ...], *mentions: str
             ) -> dict[str, Any]:
    """Send a bad request: it gets a JSON error with `status` mentioning `mentions`, and changes no count."""
    before = counts(sta)
    response = send()
    statuses = status if isinstance(status, tuple) else (status,)
    assert response.status_code in statuses, f"expected {statuses}, got {response.status_code}: {response.text}"
    body = assert_error(response, response.status_code, *mentions)
    assert counts(sta) == before, "a rejected request left something behind"
    return body


def full_datastream(name: str = "datastream", **extra: Any) -> dict[str, Any]:
    return datastream_body(name, Sensor=sensor_body(), ObservedProperty=observed_property_body(), **extra)


# ------------------------------------------------------------------ unreadable bodies


@pytest.mark.parametrize("raw", ['{"name": "x", ', "{'name': 'x'}", "name=x", '{"name": "x"} trailing',
                                 "\xff\xfe".encode("latin-1")])
def test_malformed_json_is_400(sta: str, raw: str | bytes) -> None:
    rejected(sta, lambda: send_raw("POST", sta, "Things", raw), 400)


def test_malformed_json_message_says_so(sta: str) -> None:
    rejected(sta, lambda: send_raw("POST", sta, "Things", '{"name": '), 400, "JSON")


@pytest.mark.parametrize("method", ["POST", "PATCH", "PUT"])
def test_empty_body_is_400(sta: str, method: str) -> None:
    thing = create(sta, "Things", thing_body())
    path = "Things" if method == "POST" else f"Things({thing})"
    rejected(sta, lambda: send_raw(method, sta, path, b""), 400, "empty")
    assert read(sta, f"Things({thing})")["name"] == "thing"


@pytest.mark.parametrize("body", [[], [thing_body()], "a thing", 5, None, True])
def test_non_object_body_is_400(sta: str, body: object) -> None:
    rejected(sta, lambda: post(sta, "Things", body), 400)


@pytest.mark.parametrize("body", [[], "x", 5])
def test_non_object_patch_body_is_400(sta: str, body: object) -> None:
    thing = create(sta, "Things", thing_body())
    rejected(sta, lambda: patch(sta, f"Things({thing})", body), 400)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_number_literal_as_result_is_400(sta: str, literal: str) -> None:
    datastream = create_datastream(sta)
    rejected(sta, lambda: send_raw("POST", sta, f"Datastreams({datastream})/Observations",
                                   '{"result": ' + literal + '}'), 400)


def test_non_finite_number_inside_json_properties_is_400(sta: str) -> None:
    rejected(sta, lambda: send_raw("POST", sta, "Things",
                                   '{"name": "a", "description": "b", "properties": {"x": NaN}}'), 400)


def test_number_too_large_for_a_double_is_400(sta: str) -> None:
    datastream = create_datastream(sta)
    rejected(sta, lambda: send_raw("POST", sta, f"Datastreams({datastream})/Observations",
                                   '{"result": 1e999}'), 400, "result")


# ------------------------------------------------------------------ wrong types


@pytest.mark.parametrize(("set_name", "body", "field"), [
    ("Things", thing_body(name=5), "name"),
    ("Things", {"name": "a", "description": None}, "description"),
    ("Things", thing_body(properties="x"), "properties"),
    ("Things", thing_body(properties=[1, 2]), "properties"),
    ("Locations", location_body(encodingType=7), "encodingType"),
    ("Sensors", sensor_body(name=["a"]), "name"),
    ("ObservedProperties", observed_property_body(definition={"a": 1}), "definition"),
    ("FeaturesOfInterest", feature_body(description=False), "description"),
])
def test_wrong_type_is_400_naming_the_field(sta: str, set_name: str, body: dict[str, Any], field: str) -> None:
    rejected(sta, lambda: post(sta, set_name, body), 400, field)


def test_unit_of_measurement_that_is_not_an_object_is_400(sta: str) -> None:
    thing = create(sta, "Things", thing_body())
    rejected(sta, lambda: post(sta, f"Things({thing})/Datastreams", full_datastream(unitOfMeasurement=[])),
             400, "unitOfMeasurement")


@pytest.mark.parametrize(("field", "value"), [
    ("phenomenonTime", "yesterday"),
    ("phenomenonTime", 1714550400),
    ("phenomenonTime", "2024-13-01T00:00:00Z"),
    ("phenomenonTime", "2024-05-01T00:00:00Z/soon"),
    ("resultTime", "2024-05-01T00:00:00Z/2024-05-02T00:00:00Z"),
    ("resultTime", "noon"),
    ("validTime", "2024-05-01T00:00:00Z"),
    ("parameters", "x"),
])
def test_invalid_observation_time_or_parameters_is_400_naming_the_field(sta: str, field: str, value: Any) -> None:
    datastream = create_datastream(sta)
    rejected(sta, lambda: post(sta, f"Datastreams({datastream})/Observations", {"result": 1, field: value}),
             400, field)


def test_historical_location_time_that_is_not_a_time_is_400(sta: str) -> None:
    thing = create(sta, "Things", thing_body(Locations=[location_body()]))
    rejected(sta, lambda: post(sta, "HistoricalLocations", {"time": "now", "Thing": ref(thing)}), 400, "time")


def test_wrong_type_in_a_patch_is_400_and_changes_nothing(sta: str) -> None:
    thing = create(sta, "Things", thing_body("kept"))
    rejected(sta, lambda: patch(sta, f"Things({thing})", {"name": "changed", "properties": "x"}), 400,
             "properties")
    assert read(sta, f"Things({thing})")["name"] == "kept"


@pytest.mark.parametrize("moved", ["yesterday", "2024-05-02T00:00:00Z/2024-05-01T00:00:00Z"])
def test_invalid_time_in_a_patch_leaves_the_observation_where_it_was(sta: str, moved: str) -> None:
    datastream = create_datastream(sta)
    observation = create_observation(sta, datastream, 1, "2024-05-01T10:00:00Z")
    rejected(sta, lambda: patch(sta, f"Observations({observation})", {"phenomenonTime": moved}), 400,
             "phenomenonTime")
    assert read(sta, f"Observations({observation})")["phenomenonTime"] == "2024-05-01T10:00:00Z"


# ------------------------------------------------------------------ unknown and forbidden keys


def test_unknown_property_is_400_naming_it(sta: str) -> None:
    rejected(sta, lambda: post(sta, "Things", thing_body(colour="red")), 400, "colour")


def test_unknown_navigation_property_is_400_naming_it(sta: str) -> None:
    rejected(sta, lambda: post(sta, "Things", thing_body(Sensors=[sensor_body()])), 400, "Sensors")


def test_property_names_are_case_sensitive(sta: str) -> None:
    rejected(sta, lambda: post(sta, "Things", {"Name": "a", "description": "b"}), 400, "Name")


def test_unknown_property_in_a_patch_is_400(sta: str) -> None:
    thing = create(sta, "Things", thing_body())
    rejected(sta, lambda: patch(sta, f"Things({thing})", {"colour": "red"}), 400, "colour")


def test_iot_id_in_a_create_body_is_400(sta: str) -> None:
    rejected(sta, lambda: post(sta, "Things", thing_body(**{"@iot.id": 42})), 400, "@iot.id")


def test_patch_changing_the_iot_id_is_400(sta: str) -> None:
    thing = create(sta, "Things", thing_body())
    rejected(sta, lambda: patch(sta, f"Things({thing})", {"@iot.id": thing + 1}), 400, "@iot.id")


def test_relation_given_by_the_url_and_the_body_is_400(sta: str) -> None:
    datastream = create_datastream(sta)
    rejected(sta, lambda: post(sta, f"Datastreams({datastream})/Observations",
                               {"result": 1, "Datastream": ref(datastream)}), 400, "Datastream")


# ------------------------------------------------------------------ missing required things


@pytest.mark.parametrize(("set_name", "body", "field"), [
    ("Things", {"name": "a"}, "description"),
    ("Locations", {k: v for k, v in location_body().items() if k != "location"}, "location"),
    ("Locations", {k: v for k, v in location_body().items() if k != "encodingType"}, "encodingType"),
    ("Sensors", {k: v for k, v in sensor_body().items() if k != "metadata"}, "metadata"),
    ("ObservedProperties", {k: v for k, v in observed_property_body().items() if k != "definition"},
     "definition"),
    ("FeaturesOfInterest", {k: v for k, v in feature_body().items() if k != "feature"}, "feature"),
])
def test_missing_required_property_is_400_naming_it(sta: str, set_name: str, body: dict[str, Any],
                                                    field: str) -> None:
    rejected(sta, lambda: post(sta, set_name, body), 400, field)


def test_observation_without_result_is_400(sta: str) -> None:
    datastream = create_datastream(sta)
    rejected(sta, lambda: post(sta, f"Datastreams({datastream})/Observations",
                               {"phenomenonTime": "2024-05-01T00:00:00Z"}), 400, "result")


def test_datastream_without_unit_of_measurement_is_400(sta: str) -> None:
    thing = create(sta, "Things", thing_body())
    body = {k: v for k, v in full_datastream().items() if k != "unitOfMeasurement"}
    rejected(sta, lambda: post(sta, f"Things({thing})/Datastreams", body), 400, "unitOfMeasurement")


@pytest.mark.parametrize("missing", ["Thing", "Sensor", "ObservedProperty"])
def test_datastream_without_a_required_relation_is_400_and_creates_none_of_the_others(
        sta: str, missing: str) -> None:
    relations = {"Thing": thing_body(), "Sensor": sensor_body(), "ObservedProperty": observed_property_body()}
    del relations[missing]
    rejected(sta, lambda: post(sta, "Datastreams", datastream_body(**relations)), 400, missing)


def test_observation_without_datastream_is_400(sta: str) -> None:
    rejected(sta, lambda: post(sta, "Observations", {"result": 1, "FeatureOfInterest": feature_body()}), 400,
             "Datastream")


def test_observation_without_feature_whose_thing_has_no_location_is_400(sta: str) -> None:
    thing = create(sta, "Things", thing_body())
    datastream = create(sta, f"Things({thing})/Datastreams", full_datastream())
    rejected(sta, lambda: post(sta, f"Datastreams({datastream})/Observations", {"result": 1}), 400,
             "FeatureOfInterest")


def test_historical_location_without_locations_is_400(sta: str) -> None:
    thing = create(sta, "Things", thing_body())
    rejected(sta, lambda: post(sta, "HistoricalLocations", {"time": "2024-05-01T00:00:00Z", "Thing": ref(thing)}),
             400, "Locations")


# ------------------------------------------------------------------ invalid GeoJSON


@pytest.mark.parametrize("geometry", [
    {"type": "Pointy", "coordinates": [1, 2]},
    {"type": "Point", "coordinates": "x"},
    {"type": "Point", "coordinates": []},
    {"type": "Point"},
    {"type": "Polygon", "coordinates": [[[0, 0], [1, 1]]]},
    {"coordinates": [1, 2]},
    {"type": "Feature", "properties": {}},
    "POINT(1 2)",
    [1, 2],
])
def test_invalid_geojson_location_is_400(sta: str, geometry: Any) -> None:
    rejected(sta, lambda: post(sta, "Locations", location_body(location=geometry)), 400, "location")


def test_invalid_geojson_feature_is_400(sta: str) -> None:
    rejected(sta, lambda: post(sta, "FeaturesOfInterest", feature_body(feature={"type": "Pointy"})), 400, "feature")


def test_encoding_type_other_than_geojson_is_400(sta: str) -> None:
    rejected(sta, lambda: post(sta, "Locations", location_body(encodingType="text/plain")), 400, "encodingType")


def test_invalid_geojson_in_a_patch_is_400_and_keeps_the_old_position(sta: str) -> None:
    location = create(sta, "Locations", location_body(lon=1, lat=2))
    rejected(sta, lambda: patch(sta, f"Locations({location})", {"location": {"type": "Point", "coordinates": "x"}}),
             400, "location")
    assert read(sta, f"Locations({location})")["location"] == point(1, 2)


def test_geojson_feature_with_a_valid_geometry_is_accepted(sta: str) -> None:
    feature = {"type": "Feature", "geometry": point(1, 2), "properties": {"a": 1}}
    location = create(sta, "Locations", location_body(location=feature))
    assert read(sta, f"Locations({location})")["location"] == feature


# ------------------------------------------------------------------ links to entities that do not exist


@pytest.mark.parametrize("relation", ["Thing", "Sensor", "ObservedProperty"])
def test_link_to_a_nonexistent_id_is_rejected_and_creates_nothing(sta: str, relation: str) -> None:
    relations = {"Thing": thing_body(), "Sensor": sensor_body(), "ObservedProperty": observed_property_body(),
                 relation: ref(4242)}
    rejected(sta, lambda: post(sta, "Datastreams", datastream_body(**relations)), (400, 404), relation, "4242")


def test_observation_linking_a_nonexistent_feature_is_rejected(sta: str) -> None:
    datastream = create_datastream(sta)
    rejected(sta, lambda: post(sta, f"Datastreams({datastream})/Observations",
                               {"result": 1, "FeatureOfInterest": ref(4242)}), (400, 404), "FeatureOfInterest")


@pytest.mark.parametrize("bad_id", [-1, 1.5, "abc", None, True, [1], {"id": 1}])
def test_link_with_an_invalid_id_is_400(sta: str, bad_id: Any) -> None:
    rejected(sta, lambda: post(sta, "Datastreams", full_datastream(Thing={"@iot.id": bad_id})), 400, "Thing")


def test_patch_linking_a_nonexistent_entity_is_rejected(sta: str) -> None:
    datastream = create_datastream(sta)
    rejected(sta, lambda: patch(sta, f"Datastreams({datastream})", {"Sensor": ref(4242)}), (400, 404), "Sensor")


# ------------------------------------------------------------------ deep inserts that fail late


def test_deep_insert_failing_at_the_third_nested_entity_leaves_nothing(sta: str) -> None:
    bad_datastream = datastream_body("bad", Sensor=sensor_body(name=5), ObservedProperty=observed_property_body())
    body = thing_body(Locations=[location_body()], Datastreams=[full_datastream("good"), bad_datastream])
    rejected(sta, lambda: post(sta, "Things", body), (400, 409), "Sensor", "name")
    assert counts(sta) == dict.fromkeys(counts(sta), 0)


def test_deep_insert_failing_at_the_last_observation_leaves_nothing(sta: str) -> None:
    observations = [{"result": 1}, {"result": 2}, {"result": 3, "phenomenonTime": "later"}]
    body = thing_body(Locations=[location_body()], Datastreams=[full_datastream(Observations=observations)])
    rejected(sta, lambda: post(sta, "Things", body), (400, 409), "phenomenonTime")


def test_deep_insert_with_a_nonexistent_link_deep_inside_leaves_nothing(sta: str) -> None:
    body = thing_body(Locations=[location_body()],
                      Datastreams=[datastream_body(Sensor=sensor_body(), ObservedProperty=ref(31337))])
    rejected(sta, lambda: post(sta, "Things", body), (400, 404, 409), "31337")


def test_deep_insert_of_observations_into_a_thing_without_location_leaves_nothing(sta: str) -> None:
    body = thing_body(Datastreams=[full_datastream(Observations=[{"result": 1}])])
    rejected(sta, lambda: post(sta, "Things", body), 400, "FeatureOfInterest")


def test_rejected_observation_does_not_change_the_datastream_summary(sta: str) -> None:
    datastream = create_datastream(sta)
    create_observation(sta, datastream, 1, "2024-05-01T00:00:00Z")
    rejected(sta, lambda: post(sta, f"Datastreams({datastream})/Observations",
                               {"result": 1, "phenomenonTime": "2030-01-01T00:00:00Z", "bogus": 1}), 400, "bogus")
    assert read(sta, f"Datastreams({datastream})")["phenomenonTime"] == "2024-05-01T00:00:00Z"


# ------------------------------------------------------------------ intervals


@pytest.mark.parametrize("field", ["phenomenonTime", "validTime"])
def test_interval_ending_before_it_starts_is_400(sta: str, field: str) -> None:
    datastream = create_datastream(sta)
    rejected(sta, lambda: post(sta, f"Datastreams({datastream})/Observations",
                               {"result": 1, field: "2024-05-02T00:00:00Z/2024-05-01T00:00:00Z"}), 400, field)


# ------------------------------------------------------------------ size limit


def limit() -> int:
    return Settings().max_body_bytes


def oversized_thing() -> bytes:
    return json.dumps(thing_body(description="x" * (limit() + 1024))).encode()


def test_body_over_the_size_limit_is_413(sta: str) -> None:
    rejected(sta, lambda: send_raw("POST", sta, "Things", oversized_thing()), 413)


def test_body_over_the_size_limit_without_content_length_is_413(sta: str) -> None:
    def chunks() -> Iterator[bytes]:
        body = oversized_thing()
        for start in range(0, len(body), 1 << 20):
            yield body[start:start + (1 << 20)]

    rejected(sta, lambda: HTTP.post(url(sta, "Things"), content=chunks(),
                                    headers={"Content-Type": "application/json"}), 413)


def test_body_just_under_the_size_limit_is_accepted(sta: str) -> None:
    envelope = len(json.dumps(thing_body(description="")).encode())
    body = json.dumps(thing_body(description="x" * (limit() - envelope - 16))).encode()
    response = send_raw("POST", sta, "Things", body)
    assert response.status_code == 201, response.text[:300]


# ------------------------------------------------------------------ wrong method / wrong address


def test_post_to_a_single_entity_is_rejected(sta: str) -> None:
    thing = create(sta, "Things", thing_body())
    rejected(sta, lambda: post(sta, f"Things({thing})", thing_body()), (400, 405))


def test_post_to_a_property_is_rejected(sta: str) -> None:
    thing = create(sta, "Things", thing_body())
    rejected(sta, lambda: post(sta, f"Things({thing})/name", thing_body()), (400, 405))


@pytest.mark.parametrize("method", ["PATCH", "PUT"])
def test_patch_or_put_on_a_collection_is_rejected(sta: str, method: str) -> None:
    create(sta, "Things", thing_body("kept"))
    rejected(sta, lambda: HTTP.request(method, url(sta, "Things"), json={"name": "all"}), (400, 405))
    assert read(sta, "Things")["value"][0]["name"] == "kept"


def test_delete_on_a_collection_is_rejected_and_deletes_nothing(sta: str) -> None:
    create(sta, "Things", thing_body())
    rejected(sta, lambda: delete(sta, "Things"), (400, 405))


def test_patch_of_a_property_path_is_rejected(sta: str) -> None:
    thing = create(sta, "Things", thing_body("kept"))
    rejected(sta, lambda: patch(sta, f"Things({thing})/name", {"name": "x"}), (400, 405))
    assert read(sta, f"Things({thing})")["name"] == "kept"


@pytest.mark.parametrize("path", ["Things({t})/foo", "Things({t})/Sensor", "Things({t})/name/extra",
                                  "Things({t})/$value", "Things({t})/name/$ref", "Things/Datastreams",
                                  "Things({t})/name(1)", "Datastreams({t})/Thing(1)"])
def test_unknown_or_misplaced_path_segment_is_4xx_naming_it(sta: str, path: str) -> None:
    thing = create(sta, "Things", thing_body())
    response = get(sta, path.format(t=thing))
    assert response.status_code in (400, 404), response.text
    assert_error(response, response.status_code)


def test_unknown_path_segment_message_names_it(sta: str) -> None:
    thing = create(sta, "Things", thing_body())
    assert_error(get(sta, f"Things({thing})/foo"), 404, "foo")


@pytest.mark.parametrize("key", ["'a'", "a", "1.5", "-1", "", "1,2", "0x10", " 1", "1 "])
def test_non_integer_id_is_4xx(sta: str, key: str) -> None:
    response = get(sta, f"Things({key})")
    assert response.status_code in (400, 404), response.text
    assert_error(response, response.status_code)


def test_non_integer_id_in_a_write_is_4xx_and_changes_nothing(sta: str) -> None:
    create(sta, "Things", thing_body())
    rejected(sta, lambda: delete(sta, "Things('a')"), (400, 404))
    rejected(sta, lambda: patch(sta, "Things('a')", {"name": "x"}), (400, 404))


def test_unknown_top_level_path_is_404_json(sta: str) -> None:
    assert_error(HTTP.get(sta.replace("/v1.1", "/v2.0/Things")), 404)


# ------------------------------------------------------------------ hostile strings


HOSTILE = [
    "Robert'); DROP TABLE things;--",
    'quote " double \\" and \\ backslash',
    "semi;colon -- comment /* block */",
    "SELECT * FROM observations WHERE 1=1 OR ''=''",
    "$1 %s %(p0)s {name} ${x}",
    "Ünïcödé ✓ 雨 🚲 \u202e rtl",
    "line\nbreak\ttab\r",
    "<script>alert(1)</script>",
    "",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_strings_are_stored_and_read_back_verbatim(sta: str, text: str) -> None:
    thing = create(sta, "Things", {"name": text, "description": text,
                                   "properties": {text: text, "nested": {"list": [text]}}})
    body = read(sta, f"Things({thing})")
    assert (body["name"], body["description"]) == (text, text)
    assert body["properties"] == {text: text, "nested": {"list": [text]}}
    value = get(sta, f"Things({thing})/name/$value")
    assert value.text == text


def test_hostile_string_as_result_is_read_back_verbatim(sta: str) -> None:
    datastream = create_datastream(sta)
    for text in HOSTILE:
        observation = create_observation(sta, datastream, text)
        assert read(sta, f"Observations({observation})")["result"] == text


def test_nul_character_is_rejected_or_kept_never_500(sta: str) -> None:
    response = post(sta, "Things", thing_body("nul\u0000inside", properties={"k": "nul\u0000inside"}))
    assert response.status_code in (201, 400), response.text
    if response.status_code == 201:
        assert response.json()["name"] == "nul\u0000inside"
    else:
        assert_error(response, 400)
        assert counts(sta)["Things"] == 0


@pytest.mark.parametrize("orderby", ["name; DROP TABLE things", "name'--", "name desc, (SELECT 1)",
                                     "properties/x') desc", "name/**/desc", "1", "name desc nulls first",
                                     "\"name\"", "name,", "sum(id)"])
def test_hostile_orderby_is_400(sta: str, orderby: str) -> None:
    create(sta, "Things", thing_body())
    assert_error(get(sta, "Things", params={"$orderby": orderby}), 400, "$orderby")
    assert counts(sta)["Things"] == 1


def test_orderby_json_path_with_odd_key_is_harmless(sta: str) -> None:
    create(sta, "Things", thing_body(properties={"a.b@c": 1}))
    response = get(sta, "Things", params={"$orderby": "properties/a.b@c desc"})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("path", ["Things(1;DROP TABLE things)", "Things(1)'--", "Things(1)/name;",
                                  "Things%00(1)", "Things(1)/%2e%2e/Sensors"])
def test_hostile_paths_are_4xx(sta: str, path: str) -> None:
    create(sta, "Things", thing_body())
    response = HTTP.get(f"{sta}/{path}")
    assert 400 <= response.status_code < 500 and response.status_code != 422, response.text
    assert counts(sta)["Things"] == 1
