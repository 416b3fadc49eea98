"""SensorThings API 1.1 reads: service root, addressing, links, paging, ordering, times, query option errors.

Every test runs against the real app and a freshly emptied database (the `sta` fixture) over HTTP.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from sensorthings.http.routes import CONFORMANCE, DATA_ARRAY_CONFORMANCE, MQTT_CONFORMANCE, STAPLUS_CONFORMANCE
from tests.sta_helpers import (
    ENTITY_SETS,
    HTTP,
    NAVIGATION,
    assert_error,
    create,
    create_datastream,
    create_datastream_with_observations,
    create_observation,
    create_thing_with_location,
    feature_body,
    get,
    ids,
    location_body,
    observed_property_body,
    patch,
    post,
    read,
    sensor_body,
    thing_body,
    values,
)

CONFORMANCE_BASE = "http://www.opengis.net/spec/iot_sensing/1.1/req/"
STAPLUS_SETS = ("Parties", "Projects", "Licenses")
"""The entity sets of STAplus, which /v1.1 serves besides ENTITY_SETS (those of both versions)."""
STAPLUS_NAVIGATION = {"Thing": ("Party",), "Datastream": ("Party", "Project", "License", "Rollups", "RollupOf")}
"""v1.1 only: STAplus, and CityStream's rollups (sensorthings/model/rollups.py)."""
"""The navigation properties STAplus adds to the entity types of full_tree (tests/sta/test_staplus.py)."""


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def full_tree(sta: str) -> dict[str, int]:
    """One entity of every type, linked as STA links them; returns {entity type: id}."""
    thing = create_thing_with_location(sta)
    datastream = create_datastream(sta, thing)
    observation = create_observation(sta, datastream, 1.5, "2024-05-01T10:00:00Z")
    return {
        "Thing": thing,
        "Location": ids(sta, f"Things({thing})/Locations")[0],
        "HistoricalLocation": ids(sta, f"Things({thing})/HistoricalLocations")[0],
        "Datastream": datastream,
        "Sensor": read(sta, f"Datastreams({datastream})/Sensor")["@iot.id"],
        "ObservedProperty": read(sta, f"Datastreams({datastream})/ObservedProperty")["@iot.id"],
        "Observation": observation,
        "FeatureOfInterest": read(sta, f"Observations({observation})/FeatureOfInterest")["@iot.id"],
    }


SET_OF = {
    "Thing": "Things", "Location": "Locations", "HistoricalLocation": "HistoricalLocations",
    "Datastream": "Datastreams", "Sensor": "Sensors", "ObservedProperty": "ObservedProperties",
    "Observation": "Observations", "FeatureOfInterest": "FeaturesOfInterest",
}


# ------------------------------------------------------------------ service root


def test_service_root_lists_all_twelve_entity_sets_with_absolute_urls(sta: str) -> None:
    body = read(sta, "")
    assert sorted(item["name"] for item in body["value"]) == sorted(ENTITY_SETS + STAPLUS_SETS)
    for item in body["value"]:
        assert item["url"] == f"{sta}/{item['name']}"


def test_service_root_url_with_trailing_slash_is_the_same_document(sta: str) -> None:
    assert HTTP.get(f"{sta}/").json() == read(sta, "")


def test_service_root_declares_exactly_the_implemented_conformance_classes(sta: str) -> None:
    settings = read(sta, "")["serverSettings"]
    conformance = settings["conformance"]
    assert conformance == [*CONFORMANCE, DATA_ARRAY_CONFORMANCE, *MQTT_CONFORMANCE]  # the app has ingest and MQTT
    for uri in MQTT_CONFORMANCE:
        assert all(e.startswith("mqtt://") and "@" not in e for e in settings[uri]["endpoints"])
    assert len(set(conformance)) == len(conformance)
    assert STAPLUS_CONFORMANCE in conformance  # the one class of another standard (OGC 22-022r1)
    assert all(uri.startswith(CONFORMANCE_BASE) for uri in conformance if uri != STAPLUS_CONFORMANCE)
    for core in ("datamodel", "resource-path/resource-path-to-entities", "create-update-delete"):
        assert CONFORMANCE_BASE + core in conformance


def test_service_root_does_not_claim_request_data_while_filter_is_rejected(sta: str) -> None:
    filter_supported = get(sta, "Things", params={"$filter": "name eq 'x'"}).status_code == 200
    assert (CONFORMANCE_BASE + "request-data" in read(sta, "")["serverSettings"]["conformance"]) == filter_supported


# ------------------------------------------------------------------ entity sets and single entities


def test_empty_entity_set_is_an_empty_value_array(sta: str) -> None:
    for name in ENTITY_SETS:
        assert read(sta, name) == {"value": []}


def test_entity_set_lists_created_entities(sta: str) -> None:
    first = create(sta, "Things", thing_body("first"))
    second = create(sta, "Things", thing_body("second"))
    assert [(e["@iot.id"], e["name"]) for e in values(sta, "Things")] == [(first, "first"), (second, "second")]


def test_single_entity_has_its_properties(sta: str) -> None:
    thing = create(sta, "Things", thing_body("lamp post 7", properties={"district": "Altona", "height": 4.5}))
    body = read(sta, f"Things({thing})")
    assert body["@iot.id"] == thing
    assert body["name"] == "lamp post 7"
    assert body["description"] == "lamp post 7 description"
    assert body["properties"] == {"district": "Altona", "height": 4.5}


def test_unknown_id_is_404_json(sta: str) -> None:
    assert_error(get(sta, "Things(12345)"), 404)


def test_unknown_entity_set_is_404_json(sta: str) -> None:
    assert_error(get(sta, "Thingies"), 404, "Thingies")


def test_id_beyond_64_bits_is_404_not_500(sta: str) -> None:
    assert_error(get(sta, "Things(99999999999999999999999)"), 404)


@pytest.mark.parametrize("path", ["Things(999)/Datastreams", "Things(999)/Locations/$ref", "Things(999)/name",
                                  "Things(999)/name/$value", "Datastreams(999)/Thing",
                                  "Datastreams(999)/Observations(1)"])
def test_navigation_from_a_missing_parent_is_404(sta: str, path: str) -> None:
    assert_error(get(sta, path), 404)


# ------------------------------------------------------------------ properties and $value


def test_property_is_an_object_with_that_property_only(sta: str) -> None:
    thing = create(sta, "Things", thing_body("lamp"))
    assert read(sta, f"Things({thing})/name") == {"name": "lamp"}


def test_value_of_a_string_property_is_plain_text(sta: str) -> None:
    thing = create(sta, "Things", thing_body("Straßenlaterne \"7\""))
    response = get(sta, f"Things({thing})/name/$value")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == "Straßenlaterne \"7\""


def test_value_of_location_is_the_geojson_object(sta: str) -> None:
    location = create(sta, "Locations", location_body(lon=10.01, lat=53.57))
    response = get(sta, f"Locations({location})/location/$value")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"type": "Point", "coordinates": [10.01, 53.57]}


def test_value_of_unit_of_measurement_is_the_json_object(sta: str) -> None:
    datastream = create_datastream(sta)
    response = get(sta, f"Datastreams({datastream})/unitOfMeasurement/$value")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["symbol"] == "°C"


def post_raw_observation(sta: str, datastream: int, raw_json: str) -> str:
    """POST an Observation body given as JSON text (to control number digits); its Location URL."""
    response = HTTP.post(f"{sta}/Datastreams({datastream})/Observations", content=raw_json,
                         headers={"Content-Type": "application/json"})
    assert response.status_code == 201, response.text
    return response.headers["Location"]


def test_value_of_a_number_result_keeps_the_exact_number_text(sta: str) -> None:
    location = post_raw_observation(sta, create_datastream(sta), '{"result": 21.50}')
    raw = HTTP.get(f"{location}/result/$value")
    assert raw.status_code == 200
    assert raw.text == "21.50"


def test_entity_json_keeps_the_exact_number_text_of_the_result(sta: str) -> None:
    location = post_raw_observation(sta, create_datastream(sta), '{"result": 21.50}')
    assert re.search(r'"result"\s*:\s*21\.50[,}\s]', HTTP.get(location).text)
    assert re.fullmatch(r'\{\s*"result"\s*:\s*21\.50\s*\}', HTTP.get(f"{location}/result").text)


@pytest.mark.parametrize("result", [21.5, 0, -3, 12345678901234567, True, False, "open", "", None,
                                    {"value": 3, "unit": "m"}, [1, "two", None], {"nested": {"deep": [1.25]}}])
def test_result_keeps_its_json_type(sta: str, result: object) -> None:
    observation = create_observation(sta, create_datastream(sta), result=result)
    body = read(sta, f"Observations({observation})")
    assert body["result"] == result
    assert type(body["result"]) is type(result)


def test_large_and_precise_numbers_keep_their_digits(sta: str) -> None:
    datastream = create_datastream(sta)
    for text in ("0.1000", "123456789012345678901234567890", "-0.0", "3.141592653589793238462643", "-7"):
        location = post_raw_observation(sta, datastream, '{"result": ' + text + '}')
        assert HTTP.get(f"{location}/result/$value").text == text


def test_numbers_in_exponent_notation_keep_their_text(sta: str) -> None:
    datastream = create_datastream(sta)
    for text in ("1e-7", "2.5E+3", "6.02e23"):
        location = post_raw_observation(sta, datastream, '{"result": ' + text + '}')
        assert HTTP.get(f"{location}/result/$value").text == text


# ------------------------------------------------------------------ navigation


def test_navigation_to_a_related_collection(sta: str) -> None:
    thing = create_thing_with_location(sta)
    mine = {create_datastream(sta, thing, "a"), create_datastream(sta, thing, "b")}
    create_datastream(sta, name="someone else's")
    assert set(ids(sta, f"Things({thing})/Datastreams")) == mine


def test_navigation_to_a_single_related_entity(sta: str) -> None:
    thing = create_thing_with_location(sta, "owner")
    datastream = create_datastream(sta, thing)
    body = read(sta, f"Datastreams({datastream})/Thing")
    assert (body["@iot.id"], body["name"]) == (thing, "owner")


def test_navigation_path_with_three_steps(sta: str) -> None:
    thing = create_thing_with_location(sta)
    datastream = create_datastream(sta, thing)
    other = create_datastream(sta, thing, "other")
    observation = create_observation(sta, datastream, 1)
    create_observation(sta, other, 2)
    assert ids(sta, f"Things({thing})/Datastreams({datastream})/Observations") == [observation]


def test_navigation_through_to_one_relations(sta: str) -> None:
    thing = create_thing_with_location(sta, "owner")
    observation = create_observation(sta, create_datastream(sta, thing), 1)
    assert read(sta, f"Observations({observation})/Datastream/Thing")["@iot.id"] == thing
    assert read(sta, f"Observations({observation})/Datastream/Thing/name") == {"name": "owner"}
    assert get(sta, f"Observations({observation})/Datastream/Thing/name/$value").text == "owner"


def test_long_navigation_path_mixing_to_one_and_to_many(sta: str) -> None:
    tree = full_tree(sta)
    path = (f"Things({tree['Thing']})/Datastreams({tree['Datastream']})/Observations({tree['Observation']})"
            f"/FeatureOfInterest/Observations({tree['Observation']})/Datastream/Sensor/Datastreams")
    assert ids(sta, path) == [tree["Datastream"]]
    path = f"Locations({tree['Location']})/HistoricalLocations({tree['HistoricalLocation']})/Thing/Locations"
    assert ids(sta, path) == [tree["Location"]]


def test_entity_addressed_through_a_parent_it_does_not_belong_to_is_404(sta: str) -> None:
    thing = create_thing_with_location(sta)
    foreign = create_datastream(sta, name="foreign")
    assert_error(get(sta, f"Things({thing})/Datastreams({foreign})"), 404)
    assert_error(get(sta, f"Things({thing})/Datastreams({foreign})/Observations"), 404)


def test_navigation_to_an_empty_collection_of_an_existing_parent_is_an_empty_list(sta: str) -> None:
    thing = create(sta, "Things", thing_body())
    assert read(sta, f"Things({thing})/Datastreams") == {"value": []}


# ------------------------------------------------------------------ $ref


def test_ref_of_a_collection_returns_only_self_links(sta: str) -> None:
    thing = create_thing_with_location(sta)
    datastreams = [create_datastream(sta, thing, "a"), create_datastream(sta, thing, "b")]
    body = read(sta, f"Things({thing})/Datastreams/$ref")
    assert body["value"] == [{"@iot.selfLink": f"{sta}/Datastreams({d})"} for d in datastreams]


def test_ref_of_a_single_related_entity_returns_only_its_self_link(sta: str) -> None:
    thing = create_thing_with_location(sta)
    datastream = create_datastream(sta, thing)
    assert read(sta, f"Datastreams({datastream})/Thing/$ref") == {"@iot.selfLink": f"{sta}/Things({thing})"}


def test_ref_of_an_entity_set_returns_only_self_links(sta: str) -> None:
    thing = create(sta, "Things", thing_body())
    assert read(sta, "Things/$ref") == {"value": [{"@iot.selfLink": f"{sta}/Things({thing})"}]}


# ------------------------------------------------------------------ links


def test_self_link_is_absolute(sta: str) -> None:
    thing = create(sta, "Things", thing_body())
    assert read(sta, f"Things({thing})")["@iot.selfLink"] == f"{sta}/Things({thing})"


def test_every_entity_type_carries_every_navigation_link(sta: str) -> None:
    tree = full_tree(sta)
    for entity_type, entity_id in tree.items():
        body = read(sta, f"{SET_OF[entity_type]}({entity_id})")
        self_link = f"{sta}/{SET_OF[entity_type]}({entity_id})"
        assert body["@iot.selfLink"] == self_link
        links = {k for k in body if k.endswith("@iot.navigationLink")}
        navigation = (*NAVIGATION[entity_type], *STAPLUS_NAVIGATION.get(entity_type, ()))
        assert links == {f"{nav}@iot.navigationLink" for nav in navigation}, entity_type
        for nav in NAVIGATION[entity_type]:
            assert body[f"{nav}@iot.navigationLink"] == f"{self_link}/{nav}"


def test_navigation_links_lead_to_the_related_entities(sta: str) -> None:
    tree = full_tree(sta)
    for entity_type, entity_id in tree.items():
        body = read(sta, f"{SET_OF[entity_type]}({entity_id})")
        for nav in NAVIGATION[entity_type]:
            response = HTTP.get(body[f"{nav}@iot.navigationLink"])
            assert response.status_code == 200, (entity_type, nav, response.text)


def test_collection_items_carry_self_and_navigation_links(sta: str) -> None:
    thing = create(sta, "Things", thing_body())
    item = values(sta, "Things")[0]
    assert item["@iot.selfLink"] == f"{sta}/Things({thing})"
    assert item["Datastreams@iot.navigationLink"] == f"{sta}/Things({thing})/Datastreams"


FORWARDED = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "iot.example.org"}
PUBLIC = "https://iot.example.org/v1.1"


def test_forwarded_headers_are_honoured_in_self_and_navigation_links(sta: str) -> None:
    thing = create(sta, "Things", thing_body())
    body = get(sta, f"Things({thing})", headers=FORWARDED).json()
    assert body["@iot.selfLink"] == f"{PUBLIC}/Things({thing})"
    assert body["Locations@iot.navigationLink"] == f"{PUBLIC}/Things({thing})/Locations"


def test_forwarded_headers_are_honoured_in_the_service_root(sta: str) -> None:
    body = get(sta, "", headers=FORWARDED).json()
    assert {item["url"] for item in body["value"]} == {f"{PUBLIC}/{name}" for name in ENTITY_SETS + STAPLUS_SETS}


def test_forwarded_headers_are_honoured_in_the_location_header_and_next_link(sta: str) -> None:
    response = post(sta, "Things", thing_body(), headers=FORWARDED)
    assert response.headers["Location"].startswith(f"{PUBLIC}/Things(")
    create(sta, "Things", thing_body())
    page = get(sta, "Things", params={"$top": "1"}, headers=FORWARDED).json()
    assert page["@iot.nextLink"].startswith(f"{PUBLIC}/Things?")
    assert get(sta, "Things/$ref", headers=FORWARDED).json()["value"][0]["@iot.selfLink"].startswith(PUBLIC)


# ------------------------------------------------------------------ paging: $top, $skip, nextLink


def test_top_defaults_to_100_with_a_next_link(sta: str) -> None:
    datastream = create_datastream_with_observations(sta, 130)
    body = read(sta, f"Datastreams({datastream})/Observations")
    assert len(body["value"]) == 100
    assert "@iot.nextLink" in body


def test_last_page_has_no_next_link(sta: str) -> None:
    datastream = create_datastream_with_observations(sta, 10)
    assert "@iot.nextLink" not in read(sta, f"Datastreams({datastream})/Observations", **{"$top": "10"})
    assert "@iot.nextLink" not in read(sta, f"Datastreams({datastream})/Observations", **{"$skip": "5"})
    assert "@iot.nextLink" not in read(sta, f"Datastreams({datastream})/Observations", **{"$skip": "50"})


def follow_next_links(first_url: str, params: dict[str, str]) -> tuple[list[int], int]:
    """All ids over every page, and the number of pages."""
    response = HTTP.get(first_url, params=params)
    collected: list[int] = []
    pages = 0
    while True:
        assert response.status_code == 200, response.text
        body = response.json()
        collected += [e["@iot.id"] for e in body["value"]]
        pages += 1
        if "@iot.nextLink" not in body:
            return collected, pages
        assert pages < 100, "nextLink never ends"
        response = HTTP.get(body["@iot.nextLink"])


def test_following_next_links_returns_every_entity_exactly_once(sta: str) -> None:
    datastream = create_datastream_with_observations(sta, 23)
    every = ids(sta, f"Datastreams({datastream})/Observations")
    collected, pages = follow_next_links(f"{sta}/Datastreams({datastream})/Observations", {"$top": "5"})
    assert collected == every
    assert pages == 5


def test_next_links_keep_orderby_and_count(sta: str) -> None:
    datastream = create_datastream_with_observations(sta, 12)
    newest_first = ids(sta, f"Datastreams({datastream})/Observations", **{"$orderby": "phenomenonTime desc"})
    first = read(sta, f"Datastreams({datastream})/Observations",
                 **{"$top": "5", "$orderby": "phenomenonTime desc", "$count": "true"})
    second = HTTP.get(first["@iot.nextLink"]).json()
    assert second["@iot.count"] == 12
    collected, _ = follow_next_links(f"{sta}/Datastreams({datastream})/Observations",
                                     {"$top": "5", "$orderby": "phenomenonTime desc"})
    assert collected == newest_first


def test_top_above_the_maximum_is_clamped_not_rejected(sta: str, database_url: str) -> None:
    # 10,001 Things inserted directly: the REST path would take too long for a unit test.
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO things (name, description) "
                     "SELECT 'bulk ' || i, 'bulk' FROM generate_series(1, 10001) AS i")
    body = read(sta, "Things", **{"$top": "50000"})
    assert len(body["value"]) == 10_000
    assert "$top=10000" in body["@iot.nextLink"]
    assert len(HTTP.get(body["@iot.nextLink"]).json()["value"]) == 1


def test_huge_top_is_clamped(sta: str) -> None:
    create(sta, "Things", thing_body())
    assert len(values(sta, "Things", **{"$top": "99999999999999999999999999"})) == 1


def test_top_zero_returns_no_entities_but_a_next_link_when_there_are_some(sta: str) -> None:
    create(sta, "Things", thing_body())
    body = read(sta, "Things", **{"$top": "0", "$count": "true"})
    assert body["value"] == []
    assert body["@iot.count"] == 1


def test_skip_skips_entities_in_order(sta: str) -> None:
    created = [create(sta, "Things", thing_body(f"t{i}")) for i in range(5)]
    assert ids(sta, "Things", **{"$skip": "2"}) == created[2:]
    assert ids(sta, "Things", **{"$skip": "1", "$top": "2"}) == created[1:3]
    assert ids(sta, "Things", **{"$skip": "9"}) == []


# ------------------------------------------------------------------ $count


def test_count_true_gives_the_total_regardless_of_top_and_skip(sta: str) -> None:
    for i in range(4):
        create(sta, "Things", thing_body(f"t{i}"))
    body = read(sta, "Things", **{"$count": "true", "$top": "1", "$skip": "1"})
    assert body["@iot.count"] == 4
    assert len(body["value"]) == 1


def test_count_in_a_navigation_collection_counts_only_related_entities(sta: str) -> None:
    thing = create_thing_with_location(sta)
    datastream = create_datastream_with_observations(sta, 3, thing)
    create_datastream_with_observations(sta, 4, thing)
    assert read(sta, f"Datastreams({datastream})/Observations", **{"$count": "true"})["@iot.count"] == 3


def test_count_false_or_absent_gives_no_count(sta: str) -> None:
    create(sta, "Things", thing_body())
    assert "@iot.count" not in read(sta, "Things", **{"$count": "false"})
    assert "@iot.count" not in read(sta, "Things")


# ------------------------------------------------------------------ $orderby


def things_named(sta: str, names: list[str], descriptions: list[str] | None = None) -> list[int]:
    descriptions = descriptions or ["d"] * len(names)
    return [create(sta, "Things", {"name": n, "description": d}) for n, d in zip(names, descriptions, strict=True)]


def test_orderby_ascending_breaks_ties_by_id(sta: str) -> None:
    t = things_named(sta, ["b", "a", "b", "a", "c"])
    assert ids(sta, "Things", **{"$orderby": "name"}) == [t[1], t[3], t[0], t[2], t[4]]
    assert ids(sta, "Things", **{"$orderby": "name asc"}) == [t[1], t[3], t[0], t[2], t[4]]


def test_orderby_descending_breaks_ties_by_id(sta: str) -> None:
    t = things_named(sta, ["b", "a", "b", "a", "c"])
    assert ids(sta, "Things", **{"$orderby": "name desc"}) == [t[4], t[0], t[2], t[1], t[3]]


def test_orderby_several_keys(sta: str) -> None:
    t = things_named(sta, ["b", "a", "b", "a"], ["1", "1", "2", "2"])
    assert ids(sta, "Things", **{"$orderby": "name asc,description desc"}) == [t[3], t[1], t[2], t[0]]
    assert ids(sta, "Things", **{"$orderby": "description desc, name"}) == [t[3], t[2], t[1], t[0]]


def test_orderby_id_descending(sta: str) -> None:
    t = things_named(sta, ["a", "b", "c"])
    assert ids(sta, "Things", **{"$orderby": "id desc"}) == t[::-1]
    assert ids(sta, "Things", **{"$orderby": "@iot.id desc"}) == t[::-1]


def test_orderby_direction_is_case_insensitive(sta: str) -> None:
    t = things_named(sta, ["a", "b"])
    assert ids(sta, "Things", **{"$orderby": "name DESC"}) == t[::-1]


def test_orderby_phenomenon_time_and_result(sta: str) -> None:
    datastream = create_datastream(sta)
    late = create_observation(sta, datastream, 1, "2024-05-03T00:00:00Z")
    early = create_observation(sta, datastream, 3, "2024-05-01T00:00:00Z")
    middle = create_observation(sta, datastream, 2, "2024-05-02T00:00:00Z")
    assert ids(sta, "Observations", **{"$orderby": "phenomenonTime asc"}) == [early, middle, late]
    assert ids(sta, "Observations", **{"$orderby": "phenomenonTime desc"}) == [late, middle, early]
    assert ids(sta, "Observations", **{"$orderby": "result desc"}) == [early, middle, late]


def test_orderby_numeric_results_compares_numbers_not_text(sta: str) -> None:
    datastream = create_datastream(sta)
    nine = create_observation(sta, datastream, 9)
    ten = create_observation(sta, datastream, 10)
    minus = create_observation(sta, datastream, -2.5)
    assert ids(sta, "Observations", **{"$orderby": "result"}) == [minus, nine, ten]


def test_orderby_a_json_property_path(sta: str) -> None:
    a = create(sta, "Things", thing_body("a", properties={"rank": 2}))
    b = create(sta, "Things", thing_body("b", properties={"rank": 1}))
    assert ids(sta, "Things", **{"$orderby": "properties/rank"}) == [b, a]


# ------------------------------------------------------------------ times


def test_times_read_back_as_iso_8601_utc_with_z(sta: str) -> None:
    datastream = create_datastream(sta)
    observation = create_observation(sta, datastream, 1, "2024-05-01T12:00:00+02:00",
                                     resultTime="2024-05-01T10:00:05Z")
    body = read(sta, f"Observations({observation})")
    assert body["phenomenonTime"] == "2024-05-01T10:00:00Z"
    assert body["resultTime"] == "2024-05-01T10:00:05Z"


def test_fractional_seconds_are_kept(sta: str) -> None:
    observation = create_observation(sta, create_datastream(sta), 1, "2024-05-01T10:00:00.123Z")
    text = read(sta, f"Observations({observation})")["phenomenonTime"]
    assert text.endswith("Z")
    assert parse_time(text) == datetime(2024, 5, 1, 10, 0, 0, 123000, tzinfo=UTC)


def test_interval_reads_back_as_start_slash_end(sta: str) -> None:
    observation = create_observation(sta, create_datastream(sta), 1, "2024-05-01T10:00:00Z/2024-05-01T11:00:00Z",
                                     validTime="2024-05-01T00:00:00+01:00/2024-06-01T00:00:00+01:00")
    body = read(sta, f"Observations({observation})")
    assert body["phenomenonTime"] == "2024-05-01T10:00:00Z/2024-05-01T11:00:00Z"
    assert body["validTime"] == "2024-04-30T23:00:00Z/2024-05-31T23:00:00Z"


def test_zero_length_interval_reads_back_as_an_instant(sta: str) -> None:
    observation = create_observation(sta, create_datastream(sta), 1, "2024-05-01T10:00:00Z/2024-05-01T10:00:00Z")
    assert read(sta, f"Observations({observation})")["phenomenonTime"] == "2024-05-01T10:00:00Z"


def test_phenomenon_time_defaults_to_now_and_result_time_to_null(sta: str) -> None:
    datastream = create_datastream(sta)
    before = datetime.now(UTC) - timedelta(seconds=5)
    observation = create_observation(sta, datastream, 1)
    after = datetime.now(UTC) + timedelta(seconds=5)
    body = read(sta, f"Observations({observation})")
    assert before <= parse_time(body["phenomenonTime"]) <= after
    assert "resultTime" not in body  # absent, as FROST leaves it out (issue 15)


def test_datastream_times_summarise_its_observations(sta: str) -> None:
    datastream = create_datastream(sta)
    create_observation(sta, datastream, 1, "2024-05-02T00:00:00Z", resultTime="2024-05-02T00:01:00Z")
    create_observation(sta, datastream, 2, "2024-05-01T00:00:00Z/2024-05-01T06:00:00Z")
    create_observation(sta, datastream, 3, "2024-05-03T00:00:00Z", resultTime="2024-05-03T00:01:00Z")
    body = read(sta, f"Datastreams({datastream})")
    assert body["phenomenonTime"] == "2024-05-01T00:00:00Z/2024-05-03T00:00:00Z"
    assert body["resultTime"] == "2024-05-02T00:01:00Z/2024-05-03T00:01:00Z"


def test_datastream_without_observations_has_null_times(sta: str) -> None:
    body = read(sta, f"Datastreams({create_datastream(sta)})")
    assert "phenomenonTime" not in body  # absent, as FROST leaves them out (issue 15)
    assert "resultTime" not in body


# ------------------------------------------------------------------ Observation ids


@pytest.mark.parametrize("time", ["1850-01-01T00:00:00Z", "1900-01-01T00:00:00Z", "1970-01-01T00:00:00Z",
                                  "2024-02-29T23:59:59.999Z", "2079-06-06T00:00:00Z", "2150-12-31T12:00:00Z"])
def test_observation_is_found_by_id_whatever_its_time(sta: str, time: str) -> None:
    datastream = create_datastream(sta)
    observation = create_observation(sta, datastream, 42, time)
    assert read(sta, f"Observations({observation})")["result"] == 42
    assert ids(sta, f"Datastreams({datastream})/Observations") == [observation]


def test_observation_is_found_after_its_time_moves_to_another_day_and_month(sta: str) -> None:
    datastream = create_datastream(sta)
    observation = create_observation(sta, datastream, 7, "2024-05-01T10:00:00Z")
    for moved in ("2024-05-02T10:00:00Z", "2024-07-15T00:00:00Z", "1999-12-31T23:59:59Z", "2024-05-01T23:00:00Z"):
        response = patch(sta, f"Observations({observation})", {"phenomenonTime": moved})
        assert response.status_code == 200, response.text
        assert response.json()["@iot.id"] == observation
        body = read(sta, f"Observations({observation})")
        assert (body["phenomenonTime"], body["result"]) == (moved, 7)
        assert ids(sta, f"Datastreams({datastream})/Observations") == [observation]
        assert read(sta, f"Observations({observation})/Datastream")["@iot.id"] == datastream


def test_moved_observation_can_be_patched_and_deleted_by_id(sta: str) -> None:
    datastream = create_datastream(sta)
    observation = create_observation(sta, datastream, 7, "2024-05-01T10:00:00Z")
    patch(sta, f"Observations({observation})", {"phenomenonTime": "2024-08-01T10:00:00Z"})
    assert patch(sta, f"Observations({observation})", {"result": 8}).status_code == 200
    assert read(sta, f"Observations({observation})")["result"] == 8
    assert HTTP.delete(f"{sta}/Observations({observation})").status_code == 200
    assert_error(get(sta, f"Observations({observation})"), 404)


def test_observation_ids_from_different_days_do_not_collide(sta: str) -> None:
    datastream = create_datastream(sta)
    created = [create_observation(sta, datastream, i, f"2024-0{m}-0{d}T00:00:00Z")
               for i, (m, d) in enumerate([(1, 1), (1, 2), (5, 1), (5, 1), (9, 9)])]
    assert len(set(created)) == 5
    assert [read(sta, f"Observations({o})")["result"] for o in created] == [0, 1, 2, 3, 4]


def test_nonexistent_observation_id_is_404(sta: str) -> None:
    datastream = create_datastream(sta)
    observation = create_observation(sta, datastream, 1, "2024-05-01T00:00:00Z")
    for missing in (observation + 1, observation - 1, observation + 65536, 1, 0):
        assert_error(get(sta, f"Observations({missing})"), 404)


# ------------------------------------------------------------------ query option errors


@pytest.mark.parametrize(("params", "mentions"), [
    ({"$top": "-1"}, "$top"),
    ({"$top": "abc"}, "$top"),
    ({"$top": "1.5"}, "$top"),
    ({"$top": ""}, "$top"),
    ({"$skip": "-3"}, "$skip"),
    ({"$count": "maybe"}, "$count"),
    ({"$count": "TRUE1"}, "$count"),
    ({"$orderby": "name asc desc"}, "$orderby"),
    ({"$orderby": "name,,description"}, "$orderby"),
    ({"$orderby": ""}, "$orderby"),
    ({"$orderby": "colour"}, "colour"),
    ({"$orderby": "Datastreams"}, "$orderby"),
    ({"$orderby": "location"}, "location"),
    ({"$frobnicate": "1"}, "$frobnicate"),
    ({"$filter": "name eq"}, "$filter"),
    ({"$filter": "colour eq 'x'"}, "colour"),
])
def test_invalid_query_option_is_400_json_with_a_message(sta: str, params: dict[str, str], mentions: str) -> None:
    create(sta, "Locations", location_body())
    assert_error(get(sta, "Locations", params=params), 400, mentions)


def test_query_option_given_twice_is_400(sta: str) -> None:
    assert_error(get(sta, "Things?$top=1&$top=2"), 400, "$top")


def test_custom_query_options_without_dollar_are_ignored(sta: str) -> None:
    create(sta, "Things", thing_body())
    assert len(values(sta, "Things", foo="bar")) == 1


def test_query_options_apply_to_navigation_collections_and_refs(sta: str) -> None:
    datastream = create_datastream_with_observations(sta, 6)
    page = read(sta, f"Datastreams({datastream})/Observations/$ref",
                **{"$orderby": "result desc", "$top": "2", "$skip": "1", "$count": "true"})
    newest = ids(sta, f"Datastreams({datastream})/Observations", **{"$orderby": "result desc"})
    assert page["@iot.count"] == 6
    assert page["value"] == [{"@iot.selfLink": f"{sta}/Observations({o})"} for o in newest[1:3]]
    assert page["@iot.nextLink"].startswith(f"{sta}/Datastreams({datastream})/Observations/$ref?")


def test_feature_of_interest_and_sensor_and_observed_property_read_back(sta: str) -> None:
    feature = create(sta, "FeaturesOfInterest", feature_body("pond", properties={"depth": 2}))
    sensor = create(sta, "Sensors", sensor_body("thermo", metadata={"datasheet": "x"}))
    observed = create(sta, "ObservedProperties", observed_property_body("humidity"))
    assert read(sta, f"FeaturesOfInterest({feature})/feature") == {"feature": {"type": "Point",
                                                                               "coordinates": [10.0, 53.6]}}
    assert read(sta, f"Sensors({sensor})")["metadata"] == {"datasheet": "x"}
    assert read(sta, f"ObservedProperties({observed})")["definition"] == "https://example.org/def/humidity"


def test_member_of_a_json_property_is_addressable(sta: str) -> None:
    thing = create(sta, "Things", thing_body(properties={"owner": {"name": "city"}, "district": "Altona"}))
    assert read(sta, f"Things({thing})/properties/district") == {"district": "Altona"}
    assert read(sta, f"Things({thing})/properties/owner/name/$value") == "city"
    assert read(sta, f"Things({thing})/properties/missing") == {"missing": None}
    assert_error(get(sta, f"Things({thing})/name/first"), 400, "name")
