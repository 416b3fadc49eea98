"""SensorThings API 1.1 writes: create (plain, deep, linked, via navigation), generated FeaturesOfInterest,
HistoricalLocations, PATCH / PUT / JSON-Patch, DELETE with every cascade, and `$ref` link management.

Effects are checked by reading back over HTTP (counts via `$count=true`), never by trusting the response.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.sta_helpers import (
    HTTP,
    assert_error,
    count,
    counts,
    create,
    create_datastream,
    create_observation,
    create_thing_with_location,
    datastream_body,
    delete,
    feature_body,
    get,
    id_from_location,
    ids,
    location_body,
    observed_property_body,
    patch,
    point,
    post,
    put,
    read,
    ref,
    send_raw,
    sensor_body,
    thing_body,
    values,
)


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def feature_of(sta: str, observation: int) -> int:
    return read(sta, f"Observations({observation})/FeatureOfInterest")["@iot.id"]


def location_ids(sta: str, thing: int) -> list[int]:
    return ids(sta, f"Things({thing})/Locations")


def history(sta: str, thing: int) -> list[list[int]]:
    """The Location ids of each HistoricalLocation of a Thing, oldest first."""
    return [ids(sta, f"HistoricalLocations({h})/Locations")
            for h in ids(sta, f"Things({thing})/HistoricalLocations", **{"$orderby": "time,id"})]


# ------------------------------------------------------------------ create


def test_post_returns_201_with_location_header_and_the_entity(sta: str) -> None:
    response = post(sta, "Things", thing_body("lamp", properties={"k": "v"}))
    assert response.status_code == 201
    assert response.headers["Location"].startswith(f"{sta}/Things(")
    new_id = id_from_location(response)
    assert response.headers["Location"] == f"{sta}/Things({new_id})"
    assert response.json() == read(sta, f"Things({new_id})")
    assert response.json()["name"] == "lamp"


@pytest.mark.parametrize(("set_name", "body"), [
    ("Things", thing_body()),
    ("Locations", location_body()),
    ("Sensors", sensor_body()),
    ("ObservedProperties", observed_property_body()),
    ("FeaturesOfInterest", feature_body()),
])
def test_every_independent_entity_type_can_be_created(sta: str, set_name: str, body: dict[str, object]) -> None:
    response = post(sta, set_name, body)
    assert response.status_code == 201, response.text
    created = read(sta, f"{set_name}({id_from_location(response)})")
    assert {k: created[k] for k in body} == body


def test_ids_are_numeric_and_increase(sta: str) -> None:
    first, second = create(sta, "Things", thing_body()), create(sta, "Things", thing_body())
    assert isinstance(first, int)
    assert second > first


def test_deep_insert_creates_a_whole_thing_tree(sta: str) -> None:
    def datastream(name: str) -> dict[str, object]:
        return datastream_body(name, Sensor=sensor_body(f"{name} sensor"),
                               ObservedProperty=observed_property_body(f"{name} property"),
                               Observations=[{"result": i, "phenomenonTime": f"2024-05-01T0{i}:00:00Z"}
                                             for i in range(3)])

    thing = create(sta, "Things", thing_body("station", Locations=[location_body("corner")],
                                             Datastreams=[datastream("air"), datastream("noise")]))
    assert counts(sta) == {"Things": 1, "Locations": 1, "HistoricalLocations": 1, "Datastreams": 2,
                           "Sensors": 2, "ObservedProperties": 2, "Observations": 6, "FeaturesOfInterest": 1,
                           "MultiDatastreams": 0}
    datastreams = ids(sta, f"Things({thing})/Datastreams")
    assert len(datastreams) == 2
    for d in datastreams:
        assert count(sta, f"Datastreams({d})/Observations") == 3
        assert read(sta, f"Datastreams({d})/Sensor")["name"].endswith("sensor")
    assert read(sta, f"Things({thing})/Locations")["value"][0]["name"] == "corner"


def test_deep_insert_of_an_observation_with_its_feature_of_interest(sta: str) -> None:
    datastream = create_datastream(sta)
    observation = create(sta, "Observations", {"result": 1, "Datastream": ref(datastream),
                                               "FeatureOfInterest": feature_body("pond")})
    assert read(sta, f"Observations({observation})/FeatureOfInterest")["name"] == "pond"


def test_deep_insert_of_a_datastream_with_a_new_thing(sta: str) -> None:
    datastream = create(sta, "Datastreams", datastream_body(Thing=thing_body("new"), Sensor=sensor_body(),
                                                            ObservedProperty=observed_property_body()))
    assert read(sta, f"Datastreams({datastream})/Thing")["name"] == "new"


def test_create_links_existing_entities_by_id(sta: str) -> None:
    thing = create(sta, "Things", thing_body())
    sensor = create(sta, "Sensors", sensor_body())
    observed = create(sta, "ObservedProperties", observed_property_body())
    datastream = create(sta, "Datastreams", datastream_body(Thing=ref(thing), Sensor=ref(sensor),
                                                            ObservedProperty=ref(observed)))
    assert read(sta, f"Datastreams({datastream})/Thing")["@iot.id"] == thing
    assert read(sta, f"Datastreams({datastream})/Sensor")["@iot.id"] == sensor
    assert read(sta, f"Datastreams({datastream})/ObservedProperty")["@iot.id"] == observed
    assert counts(sta)["Sensors"] == 1


def test_link_by_id_ignores_other_properties_sent_with_the_id(sta: str) -> None:
    # What FROST-Server does and what its clients (frost_sta_client) rely on: they send the whole linked
    # entity, id included. The id links; the other properties neither create nor change anything.
    thing = create(sta, "Things", thing_body("existing"))
    sensor = create(sta, "Sensors", sensor_body("existing sensor"))
    datastream = create(sta, "Datastreams", datastream_body(
        Thing={"@iot.id": thing, **thing_body("other name")},
        Sensor={"@iot.id": sensor, **sensor_body("other sensor")},
        ObservedProperty=observed_property_body()))
    assert read(sta, f"Datastreams({datastream})/Thing")["@iot.id"] == thing
    assert read(sta, f"Datastreams({datastream})/Sensor")["@iot.id"] == sensor
    assert read(sta, f"Things({thing})")["name"] == "existing"
    assert read(sta, f"Sensors({sensor})")["name"] == "existing sensor"
    assert (count(sta, "Things"), count(sta, "Sensors")) == (1, 1)


def test_links_by_id_may_be_given_as_numeric_strings(sta: str) -> None:
    thing = create(sta, "Things", thing_body())
    location = create(sta, "Locations", location_body(Things=[{"@iot.id": str(thing)}]))
    assert location_ids(sta, thing) == [location]


def test_deep_insert_may_link_existing_locations_by_id(sta: str) -> None:
    location = create(sta, "Locations", location_body())
    thing = create(sta, "Things", thing_body(Locations=[ref(location)]))
    assert location_ids(sta, thing) == [location]
    assert counts(sta)["Locations"] == 1
    assert history(sta, thing) == [[location]]


def test_deep_insert_from_a_location_down_to_observations_generates_their_feature(sta: str) -> None:
    datastream = datastream_body(Sensor=sensor_body(), ObservedProperty=observed_property_body(),
                                 Observations=[{"result": 1}, {"result": 2}])
    location = create(sta, "Locations", location_body(lon=8.5, lat=47.4,
                                                      Things=[thing_body(Datastreams=[datastream])]))
    assert count(sta, "Observations") == 2
    assert count(sta, "FeaturesOfInterest") == 1
    assert values(sta, "FeaturesOfInterest")[0]["feature"] == point(8.5, 47.4)
    assert len(history(sta, ids(sta, f"Locations({location})/Things")[0])) == 1


def test_deep_insert_of_a_datastream_whose_new_thing_has_a_location_generates_features(sta: str) -> None:
    datastream = create(sta, "Datastreams", datastream_body(
        Thing=thing_body(Locations=[location_body()]), Sensor=sensor_body(),
        ObservedProperty=observed_property_body(), Observations=[{"result": 1}]))
    assert count(sta, f"Datastreams({datastream})/Observations") == 1
    assert count(sta, "FeaturesOfInterest") == 1


def test_historical_location_can_be_created_directly(sta: str) -> None:
    thing = create(sta, "Things", thing_body())
    location = create(sta, "Locations", location_body())
    entry = create(sta, "HistoricalLocations", {"time": "2020-01-01T00:00:00Z", "Thing": ref(thing),
                                                "Locations": [ref(location)]})
    assert read(sta, f"HistoricalLocations({entry})")["time"] == "2020-01-01T00:00:00Z"
    assert ids(sta, f"HistoricalLocations({entry})/Locations") == [location]
    assert ids(sta, f"Things({thing})/HistoricalLocations") == [entry]


def test_post_into_things_datastreams_links_the_thing(sta: str) -> None:
    thing = create(sta, "Things", thing_body())
    datastream = create(sta, f"Things({thing})/Datastreams",
                        datastream_body(Sensor=sensor_body(), ObservedProperty=observed_property_body()))
    assert read(sta, f"Datastreams({datastream})/Thing")["@iot.id"] == thing


def test_post_into_datastreams_observations_links_the_datastream(sta: str) -> None:
    datastream = create_datastream(sta)
    response = post(sta, f"Datastreams({datastream})/Observations", {"result": 3})
    assert response.status_code == 201
    assert response.headers["Location"].startswith(f"{sta}/Observations(")
    assert read(sta, f"Observations({id_from_location(response)})/Datastream")["@iot.id"] == datastream


def test_post_into_things_locations_links_the_location_and_records_history(sta: str) -> None:
    thing = create(sta, "Things", thing_body())
    location = create(sta, f"Things({thing})/Locations", location_body())
    assert location_ids(sta, thing) == [location]
    assert history(sta, thing) == [[location]]


def test_post_into_feature_observations_links_the_feature(sta: str) -> None:
    datastream = create_datastream(sta)
    feature = create(sta, "FeaturesOfInterest", feature_body())
    observation = create(sta, f"FeaturesOfInterest({feature})/Observations", {"result": 1,
                                                                           "Datastream": ref(datastream)})
    assert feature_of(sta, observation) == feature


def test_post_into_a_navigation_collection_of_a_missing_parent_is_404_and_creates_nothing(sta: str) -> None:
    assert_error(post(sta, "Things(77)/Datastreams",
                      datastream_body(Sensor=sensor_body(), ObservedProperty=observed_property_body())), 404)
    assert set(counts(sta).values()) == {0}


def test_create_response_of_an_observation_is_complete(sta: str) -> None:
    datastream = create_datastream(sta)
    response = post(sta, f"Datastreams({datastream})/Observations",
                    {"result": 1, "phenomenonTime": "2024-05-01T00:00:00Z", "parameters": {"q": 1}})
    body = response.json()
    assert body["result"] == 1
    assert body["phenomenonTime"] == "2024-05-01T00:00:00Z"
    assert body["parameters"] == {"q": 1}
    assert body == read(sta, f"Observations({id_from_location(response)})")


def test_concurrent_observation_creates_each_answer_with_links_under_their_own_host(sta: str) -> None:
    """The 201 bodies of one ingest batch are rendered together; each keeps the service URL of its request."""
    datastream = create_datastream(sta)
    hosts = [f"host{n}.example.org" for n in range(4)] * 6

    def create_via(host: str) -> tuple[str, httpx.Response]:
        return host, post(sta, f"Datastreams({datastream})/Observations", {"result": 1},
                          headers={"X-Forwarded-Host": host})

    with ThreadPoolExecutor(len(hosts)) as pool:
        responses = list(pool.map(create_via, hosts))
    for host, response in responses:
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["@iot.selfLink"] == f"http://{host}/v1.1/Observations({body['@iot.id']})"
        assert response.headers["location"] == body["@iot.selfLink"]
        assert body["Datastream@iot.navigationLink"].startswith(f"http://{host}/v1.1/")


# ------------------------------------------------------------------ generated FeatureOfInterest


def test_feature_of_interest_is_generated_from_the_things_location(sta: str) -> None:
    thing = create_thing_with_location(sta, "station", lon=10.5, lat=53.1)
    observation = create_observation(sta, create_datastream(sta, thing), 1)
    feature = read(sta, f"FeaturesOfInterest({feature_of(sta, observation)})")
    assert feature["feature"] == point(10.5, 53.1)
    assert feature["encodingType"] == "application/geo+json"


def test_generated_feature_of_interest_is_reused_for_the_next_observation(sta: str) -> None:
    datastream = create_datastream(sta)
    first = create_observation(sta, datastream, 1)
    second = create_observation(sta, datastream, 2)
    assert feature_of(sta, first) == feature_of(sta, second)
    assert count(sta, "FeaturesOfInterest") == 1


def test_generated_feature_of_interest_is_shared_by_datastreams_of_the_same_thing(sta: str) -> None:
    thing = create_thing_with_location(sta)
    first = create_observation(sta, create_datastream(sta, thing, "a"), 1)
    second = create_observation(sta, create_datastream(sta, thing, "b"), 2)
    assert feature_of(sta, first) == feature_of(sta, second)


def test_a_new_feature_of_interest_is_generated_after_the_location_moves(sta: str) -> None:
    thing = create_thing_with_location(sta, lon=10.0, lat=53.0)
    datastream = create_datastream(sta, thing)
    before = create_observation(sta, datastream, 1)
    location = location_ids(sta, thing)[0]
    assert patch(sta, f"Locations({location})", {"location": point(11.0, 54.0)}).status_code == 200
    after = create_observation(sta, datastream, 2)
    assert feature_of(sta, before) != feature_of(sta, after)
    assert read(sta, f"Observations({before})/FeatureOfInterest")["feature"] == point(10.0, 53.0)
    assert read(sta, f"Observations({after})/FeatureOfInterest")["feature"] == point(11.0, 54.0)
    assert feature_of(sta, create_observation(sta, datastream, 3)) == feature_of(sta, after)


def test_a_new_feature_of_interest_is_generated_after_the_thing_gets_another_location(sta: str) -> None:
    thing = create_thing_with_location(sta, lon=10.0, lat=53.0)
    datastream = create_datastream(sta, thing)
    before = create_observation(sta, datastream, 1)
    create(sta, f"Things({thing})/Locations", location_body("moved", lon=12.0, lat=52.0))
    after = create_observation(sta, datastream, 2)
    assert read(sta, f"Observations({after})/FeatureOfInterest")["feature"] == point(12.0, 52.0)
    assert feature_of(sta, before) != feature_of(sta, after)


def test_patching_only_the_name_of_a_location_keeps_reusing_its_feature(sta: str) -> None:
    thing = create_thing_with_location(sta)
    datastream = create_datastream(sta, thing)
    before = create_observation(sta, datastream, 1)
    patch(sta, f"Locations({location_ids(sta, thing)[0]})", {"name": "renamed"})
    assert feature_of(sta, create_observation(sta, datastream, 2)) == feature_of(sta, before)


def test_given_feature_of_interest_is_used_instead_of_a_generated_one(sta: str) -> None:
    datastream = create_datastream(sta)
    feature = create(sta, "FeaturesOfInterest", feature_body())
    observation = create_observation(sta, datastream, 1, FeatureOfInterest=ref(feature))
    assert feature_of(sta, observation) == feature
    assert count(sta, "FeaturesOfInterest") == 1


def post_concurrently(sta: str, path: str, bodies: list[dict[str, object]]) -> list[httpx.Response]:
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(lambda body: post(sta, path, body), bodies))


def test_concurrent_observations_share_one_generated_feature_of_interest(sta: str) -> None:
    datastream = create_datastream(sta)
    # The month's partition exists first (explicit feature), so only the feature generation races.
    create_observation(sta, datastream, 0, "2024-06-01T00:00:00Z",
                       FeatureOfInterest=feature_body("explicit"))
    responses = post_concurrently(sta, f"Datastreams({datastream})/Observations",
                                  [{"result": i, "phenomenonTime": "2024-06-02T00:00:00Z"} for i in range(16)])
    assert [r.status_code for r in responses] == [201] * 16, {r.text for r in responses if r.status_code != 201}
    assert count(sta, "FeaturesOfInterest") == 2


def test_concurrent_first_observations_of_a_new_month_are_all_created(sta: str) -> None:
    # Devices report without a FeatureOfInterest; the generated one already exists. At a month change all
    # of them write the first Observations of a month whose partition does not exist yet.
    datastream = create_datastream(sta)
    create_observation(sta, datastream, 0, "2024-06-01T00:00:00Z")
    responses = post_concurrently(sta, f"Datastreams({datastream})/Observations",
                                  [{"result": i, "phenomenonTime": f"2033-07-01T00:00:{i:02d}Z"} for i in range(16)])
    assert [r.status_code for r in responses] == [201] * 16, {r.text for r in responses if r.status_code != 201}
    assert count(sta, f"Datastreams({datastream})/Observations") == 17


# ------------------------------------------------------------------ HistoricalLocations


def test_deep_insert_of_a_thing_with_a_location_records_a_historical_location(sta: str) -> None:
    before = datetime.now(UTC) - timedelta(seconds=5)
    thing = create_thing_with_location(sta)
    location = location_ids(sta, thing)[0]
    assert history(sta, thing) == [[location]]
    entry = read(sta, f"Things({thing})/HistoricalLocations")["value"][0]
    assert before <= parse_time(entry["time"]) <= datetime.now(UTC) + timedelta(seconds=5)
    assert read(sta, f"HistoricalLocations({entry['@iot.id']})/Thing")["@iot.id"] == thing
    assert ids(sta, f"Locations({location})/HistoricalLocations") == [entry["@iot.id"]]


def test_thing_without_location_has_no_historical_location(sta: str) -> None:
    thing = create(sta, "Things", thing_body())
    assert history(sta, thing) == []


def test_location_created_with_things_links_them_and_records_history(sta: str) -> None:
    thing = create(sta, "Things", thing_body())
    location = create(sta, "Locations", location_body(Things=[ref(thing)]))
    assert location_ids(sta, thing) == [location]
    assert ids(sta, f"Locations({location})/Things") == [thing]
    assert history(sta, thing) == [[location]]


def test_patch_thing_locations_by_id_links_and_records_history(sta: str) -> None:
    thing = create(sta, "Things", thing_body())
    location = create(sta, "Locations", location_body())
    response = patch(sta, f"Things({thing})", {"Locations": [ref(location)]})
    assert response.status_code == 200, response.text
    assert location_ids(sta, thing) == [location]
    assert history(sta, thing) == [[location]]


def test_new_location_of_an_existing_thing_replaces_the_old_link(sta: str) -> None:
    thing = create_thing_with_location(sta)
    old = location_ids(sta, thing)[0]
    new = create(sta, "Locations", location_body("new"))
    assert patch(sta, f"Things({thing})", {"Locations": [ref(new)]}).status_code == 200
    assert location_ids(sta, thing) == [new]
    assert history(sta, thing) == [[old], [new]]
    assert read(sta, f"Locations({old})")["name"] == "thing location"  # the Location itself stays


def test_post_into_things_locations_of_a_located_thing_replaces_the_old_link(sta: str) -> None:
    thing = create_thing_with_location(sta)
    old = location_ids(sta, thing)[0]
    new = create(sta, f"Things({thing})/Locations", location_body("new"))
    assert location_ids(sta, thing) == [new]
    assert history(sta, thing) == [[old], [new]]


def test_thing_created_with_two_locations_gets_one_historical_location_with_both(sta: str) -> None:
    thing = create(sta, "Things", thing_body(Locations=[location_body("a"), location_body("b", lon=1, lat=2)]))
    both = sorted(location_ids(sta, thing))
    assert len(both) == 2
    assert [sorted(h) for h in history(sta, thing)] == [both]


# ------------------------------------------------------------------ PATCH


def test_patch_changes_only_the_fields_sent(sta: str) -> None:
    thing = create(sta, "Things", thing_body("old", properties={"a": 1}))
    response = patch(sta, f"Things({thing})", {"name": "new"})
    assert response.status_code == 200
    assert response.json() == read(sta, f"Things({thing})")
    body = read(sta, f"Things({thing})")
    assert (body["name"], body["description"], body["properties"]) == ("new", "old description", {"a": 1})


def test_patch_replaces_a_json_property_as_a_whole(sta: str) -> None:
    thing = create(sta, "Things", thing_body(properties={"a": 1, "b": 2}))
    patch(sta, f"Things({thing})", {"properties": {"c": 3}})
    assert read(sta, f"Things({thing})")["properties"] == {"c": 3}


def test_patch_of_an_observation_result_and_times(sta: str) -> None:
    datastream = create_datastream(sta)
    observation = create_observation(sta, datastream, 1, "2024-05-01T00:00:00Z")
    patch(sta, f"Observations({observation})", {"result": "x", "resultTime": "2024-05-01T00:00:01Z"})
    body = read(sta, f"Observations({observation})")
    assert (body["result"], body["resultTime"], body["phenomenonTime"]) == (
        "x", "2024-05-01T00:00:01Z", "2024-05-01T00:00:00Z")


def test_patch_with_an_inline_related_entity_is_400_and_changes_nothing(sta: str) -> None:
    datastream = create_datastream(sta)
    sensor = read(sta, f"Datastreams({datastream})/Sensor")["@iot.id"]
    before = counts(sta)
    response = patch(sta, f"Datastreams({datastream})", {"name": "renamed", "Sensor": sensor_body("inline")})
    assert_error(response, 400, "Sensor")
    assert counts(sta) == before
    assert read(sta, f"Datastreams({datastream})/Sensor")["@iot.id"] == sensor
    assert read(sta, f"Datastreams({datastream})")["name"] == "datastream"


def test_patch_with_an_inline_location_is_400(sta: str) -> None:
    thing = create(sta, "Things", thing_body())
    assert_error(patch(sta, f"Things({thing})", {"Locations": [location_body()]}), 400, "Locations")
    assert count(sta, "Locations") == 0


def test_patch_of_a_to_one_link_by_id(sta: str) -> None:
    datastream = create_datastream(sta)
    other = create(sta, "Sensors", sensor_body("other"))
    response = patch(sta, f"Datastreams({datastream})", {"Sensor": ref(other)})
    assert response.status_code == 200, response.text
    assert read(sta, f"Datastreams({datastream})/Sensor")["@iot.id"] == other
    assert ids(sta, f"Sensors({other})/Datastreams") == [datastream]


def test_patch_of_an_observation_to_another_datastream(sta: str) -> None:
    thing = create_thing_with_location(sta)
    first, second = create_datastream(sta, thing, "a"), create_datastream(sta, thing, "b")
    observation = create_observation(sta, first, 1)
    assert patch(sta, f"Observations({observation})", {"Datastream": ref(second)}).status_code == 200
    assert ids(sta, f"Datastreams({second})/Observations") == [observation]
    assert ids(sta, f"Datastreams({first})/Observations") == []


def test_patch_with_a_matching_iot_id_is_accepted(sta: str) -> None:
    thing = create(sta, "Things", thing_body())
    assert patch(sta, f"Things({thing})", {"@iot.id": thing, "name": "x"}).status_code == 200


def test_patch_of_a_missing_entity_is_404(sta: str) -> None:
    assert_error(patch(sta, "Things(404)", {"name": "x"}), 404)


# ------------------------------------------------------------------ PUT


def test_put_replaces_the_entity_and_clears_missing_optional_fields(sta: str) -> None:
    thing = create(sta, "Things", thing_body("old", properties={"a": 1}))
    response = put(sta, f"Things({thing})", {"name": "new", "description": "new description"})
    assert response.status_code == 200, response.text
    body = read(sta, f"Things({thing})")
    assert (body["name"], body["description"], "properties" in body) == ("new", "new description", False)


def test_put_without_a_required_field_is_400_and_changes_nothing(sta: str) -> None:
    thing = create(sta, "Things", thing_body("old"))
    assert_error(put(sta, f"Things({thing})", {"name": "new"}), 400, "description")
    assert read(sta, f"Things({thing})")["name"] == "old"


def test_put_keeps_relations_that_are_not_sent(sta: str) -> None:
    thing = create_thing_with_location(sta)
    datastream = create_datastream(sta, thing)
    body = datastream_body("replaced")
    assert put(sta, f"Datastreams({datastream})", body).status_code == 200
    assert read(sta, f"Datastreams({datastream})/Thing")["@iot.id"] == thing
    assert read(sta, f"Datastreams({datastream})")["name"] == "replaced"


# ------------------------------------------------------------------ JSON-Patch


def json_patch(sta: str, path: str, operations: list[dict[str, object]]) -> httpx.Response:
    return send_raw("PATCH", sta, path, json.dumps(operations), "application/json-patch+json")


def test_json_patch_replace_add_and_remove_on_properties(sta: str) -> None:
    thing = create(sta, "Things", thing_body(properties={"owner": "a", "old": True, "keep": [1]}))
    response = json_patch(sta, f"Things({thing})", [
        {"op": "replace", "path": "/properties/owner", "value": "b"},
        {"op": "add", "path": "/properties/new", "value": {"x": 1}},
        {"op": "remove", "path": "/properties/old"},
    ])
    assert response.status_code == 200, response.text
    assert read(sta, f"Things({thing})")["properties"] == {"owner": "b", "new": {"x": 1}, "keep": [1]}


def test_json_patch_replace_of_a_top_level_property(sta: str) -> None:
    thing = create(sta, "Things", thing_body("old"))
    assert json_patch(sta, f"Things({thing})", [{"op": "replace", "path": "/name", "value": "new"}]
                      ).status_code == 200
    body = read(sta, f"Things({thing})")
    assert (body["name"], body["description"]) == ("new", "old description")


def test_json_patch_add_to_null_properties(sta: str) -> None:
    thing = create(sta, "Things", thing_body())
    json_patch(sta, f"Things({thing})", [{"op": "add", "path": "/properties", "value": {"a": 1}}])
    assert read(sta, f"Things({thing})")["properties"] == {"a": 1}


def test_json_patch_that_cannot_apply_is_400_and_changes_nothing(sta: str) -> None:
    thing = create(sta, "Things", thing_body(properties={"a": 1}))
    response = json_patch(sta, f"Things({thing})", [
        {"op": "replace", "path": "/name", "value": "changed"},
        {"op": "remove", "path": "/properties/missing"},
    ])
    assert_error(response, 400)
    assert read(sta, f"Things({thing})")["name"] == "thing"


def test_json_patch_may_not_remove_a_required_property(sta: str) -> None:
    thing = create(sta, "Things", thing_body())
    assert_error(json_patch(sta, f"Things({thing})", [{"op": "remove", "path": "/name"}]), 400, "name")
    assert read(sta, f"Things({thing})")["name"] == "thing"


# ------------------------------------------------------------------ DELETE and cascades


def test_delete_returns_200_then_the_entity_is_gone(sta: str) -> None:
    thing = create(sta, "Things", thing_body())
    assert delete(sta, f"Things({thing})").status_code == 200
    assert_error(get(sta, f"Things({thing})"), 404)
    assert_error(delete(sta, f"Things({thing})"), 404)


def test_deleting_a_thing_deletes_its_datastreams_observations_and_historical_locations(sta: str) -> None:
    thing = create_thing_with_location(sta)
    datastream = create_datastream(sta, thing)
    create_observation(sta, datastream, 1)
    other = create_datastream(sta, name="other thing's")
    create_observation(sta, other, 2)
    assert delete(sta, f"Things({thing})").status_code == 200
    assert counts(sta) == {"Things": 1, "Locations": 2, "HistoricalLocations": 1, "Datastreams": 1,
                           "Sensors": 2, "ObservedProperties": 2, "Observations": 1, "FeaturesOfInterest": 2,
                           "MultiDatastreams": 0}
    assert ids(sta, "Datastreams") == [other]


def test_deleting_a_location_deletes_its_historical_locations(sta: str) -> None:
    thing = create_thing_with_location(sta)
    location = location_ids(sta, thing)[0]
    assert delete(sta, f"Locations({location})").status_code == 200
    assert count(sta, "HistoricalLocations") == 0
    assert ids(sta, "Things") == [thing]
    assert location_ids(sta, thing) == []


def test_deleting_one_of_two_locations_deletes_their_shared_historical_location(sta: str) -> None:
    thing = create(sta, "Things", thing_body(Locations=[location_body("a"), location_body("b", lon=1, lat=2)]))
    first = location_ids(sta, thing)[0]
    assert delete(sta, f"Locations({first})").status_code == 200
    assert count(sta, "HistoricalLocations") == 0
    assert count(sta, "Locations") == 1


def test_deleting_a_datastream_deletes_its_observations(sta: str) -> None:
    thing = create_thing_with_location(sta)
    datastream, other = create_datastream(sta, thing, "a"), create_datastream(sta, thing, "b")
    create_observation(sta, datastream, 1)
    kept = create_observation(sta, other, 2)
    assert delete(sta, f"Datastreams({datastream})").status_code == 200
    assert ids(sta, "Observations") == [kept]
    assert count(sta, "Things") == 1
    assert count(sta, "Sensors") == 2


@pytest.mark.parametrize("nav", ["Sensor", "ObservedProperty"])
def test_deleting_a_sensor_or_observed_property_deletes_its_datastreams_and_their_observations(
        sta: str, nav: str) -> None:
    thing = create_thing_with_location(sta)
    datastream, other = create_datastream(sta, thing, "a"), create_datastream(sta, thing, "b")
    create_observation(sta, datastream, 1)
    kept = create_observation(sta, other, 2)
    target = read(sta, f"Datastreams({datastream})/{nav}")["@iot.selfLink"]
    assert HTTP.delete(target).status_code == 200
    assert ids(sta, "Datastreams") == [other]
    assert ids(sta, "Observations") == [kept]
    assert count(sta, "Things") == 1


def test_deleting_a_feature_of_interest_deletes_its_observations(sta: str) -> None:
    datastream = create_datastream(sta)
    feature = create(sta, "FeaturesOfInterest", feature_body())
    create_observation(sta, datastream, 1, FeatureOfInterest=ref(feature))
    kept = create_observation(sta, datastream, 2)  # generated feature
    assert delete(sta, f"FeaturesOfInterest({feature})").status_code == 200
    assert ids(sta, "Observations") == [kept]
    assert ids(sta, "Datastreams") == [datastream]


def test_deleting_an_observation_leaves_everything_else(sta: str) -> None:
    datastream = create_datastream(sta)
    observation = create_observation(sta, datastream, 1)
    before = counts(sta)
    assert delete(sta, f"Observations({observation})").status_code == 200
    assert counts(sta) == {**before, "Observations": 0}


def test_deleting_a_historical_location_leaves_thing_and_location(sta: str) -> None:
    thing = create_thing_with_location(sta)
    entry = ids(sta, f"Things({thing})/HistoricalLocations")[0]
    assert delete(sta, f"HistoricalLocations({entry})").status_code == 200
    assert (count(sta, "Things"), count(sta, "Locations"), count(sta, "HistoricalLocations")) == (1, 1, 0)


def test_delete_through_a_navigation_path(sta: str) -> None:
    thing = create_thing_with_location(sta)
    datastream = create_datastream(sta, thing)
    assert delete(sta, f"Things({thing})/Datastreams({datastream})").status_code == 200
    assert count(sta, "Datastreams") == 0


# ------------------------------------------------------------------ $ref


def test_post_ref_with_iot_id_links_a_location(sta: str) -> None:
    thing = create(sta, "Things", thing_body())
    location = create(sta, "Locations", location_body())
    response = post(sta, f"Things({thing})/Locations/$ref", {"@iot.id": location})
    assert response.status_code == 204, response.text
    assert location_ids(sta, thing) == [location]
    assert history(sta, thing) == [[location]]


def test_post_ref_with_a_self_link_links_a_location(sta: str) -> None:
    thing = create(sta, "Things", thing_body())
    location = create(sta, "Locations", location_body())
    response = post(sta, f"Things({thing})/Locations/$ref", {"@iot.selfLink": f"{sta}/Locations({location})"})
    assert response.status_code == 204, response.text
    assert location_ids(sta, thing) == [location]


def test_post_ref_to_a_missing_target_is_rejected_and_links_nothing(sta: str) -> None:
    thing = create(sta, "Things", thing_body())
    response = post(sta, f"Things({thing})/Locations/$ref", {"@iot.id": 999})
    assert 400 <= response.status_code < 500
    assert_error(response, response.status_code, "999")
    assert location_ids(sta, thing) == []


def test_post_ref_with_a_self_link_of_the_wrong_set_is_400(sta: str) -> None:
    thing = create(sta, "Things", thing_body())
    other = create(sta, "Things", thing_body())
    assert_error(post(sta, f"Things({thing})/Locations/$ref", {"@iot.selfLink": f"{sta}/Things({other})"}), 400)


def test_delete_ref_unlinks_without_deleting(sta: str) -> None:
    thing = create_thing_with_location(sta)
    location = location_ids(sta, thing)[0]
    assert delete(sta, f"Things({thing})/Locations({location})/$ref").status_code == 204
    assert location_ids(sta, thing) == []
    assert read(sta, f"Locations({location})")["@iot.id"] == location
    assert read(sta, f"Things({thing})")["@iot.id"] == thing


def test_delete_ref_of_an_unlinked_entity_is_404(sta: str) -> None:
    thing = create(sta, "Things", thing_body())
    location = create(sta, "Locations", location_body())
    assert_error(delete(sta, f"Things({thing})/Locations({location})/$ref"), 404)


@pytest.mark.parametrize("path", ["Datastreams({d})/Thing/$ref", "Datastreams({d})/Sensor/$ref",
                                  "Observations({o})/Datastream/$ref"])
def test_delete_ref_of_a_required_link_is_400(sta: str, path: str) -> None:
    datastream = create_datastream(sta)
    observation = create_observation(sta, datastream, 1)
    before = counts(sta)
    assert_error(delete(sta, path.format(d=datastream, o=observation)), 400)
    assert counts(sta) == before
    assert read(sta, f"Observations({observation})/Datastream/Thing/$ref")


def test_delete_ref_from_the_required_side_of_a_to_many_link_is_400(sta: str) -> None:
    datastream = create_datastream(sta)
    thing = read(sta, f"Datastreams({datastream})/Thing")["@iot.id"]
    assert_error(delete(sta, f"Things({thing})/Datastreams({datastream})/$ref"), 400)
    assert ids(sta, f"Things({thing})/Datastreams") == [datastream]


def test_put_ref_relinks_a_to_one_relation_by_id(sta: str) -> None:
    datastream = create_datastream(sta)
    other = create(sta, "Sensors", sensor_body("other"))
    assert put(sta, f"Datastreams({datastream})/Sensor/$ref", {"@iot.id": other}).status_code == 204
    assert read(sta, f"Datastreams({datastream})/Sensor")["@iot.id"] == other


def test_put_ref_relinks_a_to_one_relation_by_self_link(sta: str) -> None:
    datastream = create_datastream(sta)
    other = create(sta, "Sensors", sensor_body("other"))
    response = put(sta, f"Datastreams({datastream})/Sensor/$ref", {"@iot.selfLink": f"{sta}/Sensors({other})"})
    assert response.status_code == 204, response.text
    assert read(sta, f"Datastreams({datastream})/Sensor")["@iot.id"] == other


def test_put_ref_to_a_missing_target_is_rejected_and_keeps_the_link(sta: str) -> None:
    datastream = create_datastream(sta)
    sensor = read(sta, f"Datastreams({datastream})/Sensor")["@iot.id"]
    response = put(sta, f"Datastreams({datastream})/Sensor/$ref", {"@iot.id": sensor + 100})
    assert 400 <= response.status_code < 500
    assert_error(response, response.status_code)
    assert read(sta, f"Datastreams({datastream})/Sensor")["@iot.id"] == sensor
