"""Edge cases found by review: each once returned a 500, a wrong status or wrong data."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.sta_helpers import (
    assert_error,
    counts,
    create,
    create_datastream,
    create_observation,
    create_thing_with_location,
    datastream_body,
    get,
    ids,
    location_body,
    patch,
    post,
    put,
    read,
    ref,
    send_raw,
    sensor_body,
    thing_body,
)


@pytest.mark.parametrize("path", ["Things(%C2%B2)", "Things?$top=%C2%B2", "Things?$skip=%C2%B2"])
def test_non_ascii_digits_are_400(sta: str, path: str) -> None:
    assert_error(httpx.get(f"{sta}/{path}"), 400)


def test_non_ascii_digit_in_a_link_is_400(sta: str) -> None:
    thing = create_thing_with_location(sta)
    assert_error(post(sta, f"Things({thing})/Locations/$ref", {"@iot.id": "²"}), 400, "@iot.id")


def test_skip_beyond_bigint_is_400_naming_skip(sta: str) -> None:
    assert_error(get(sta, "Things", params={"$skip": "99999999999999999999"}), 400, "$skip")


@pytest.mark.parametrize(("set_name", "body", "field"), [
    ("Sensors", sensor_body(metadata=None), "metadata"),
    ("Locations", location_body(location=None), "location"),
    ("Things", thing_body(name=None), "name"),
])
def test_required_property_sent_as_null_is_400(sta: str, set_name: str, body: dict[str, object], field: str) -> None:
    before = counts(sta)
    assert_error(post(sta, set_name, body), 400, field)
    assert counts(sta) == before


def test_patch_required_property_to_null_is_400(sta: str) -> None:
    sensor = create(sta, "Sensors", sensor_body())
    assert_error(patch(sta, f"Sensors({sensor})", {"metadata": None}), 400, "metadata")


def test_null_phenomenon_time_is_400_and_null_result_is_a_value(sta: str) -> None:
    datastream = create_datastream(sta)
    assert_error(post(sta, f"Datastreams({datastream})/Observations", {"result": 1, "phenomenonTime": None}),
                 400, "phenomenonTime")
    observation = create_observation(sta, datastream, None, "2024-05-01T00:00:00Z")
    assert read(sta, f"Observations({observation})")["result"] is None
    assert get(sta, f"Observations({observation})/result/$value").status_code == 204


@pytest.mark.parametrize("when", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-05:00"])
def test_times_outside_years_1_to_9999_utc_are_400(sta: str, when: str) -> None:
    datastream = create_datastream(sta)
    assert_error(post(sta, f"Datastreams({datastream})/Observations", {"result": 1, "phenomenonTime": when}),
                 400, "phenomenonTime")
    assert_error(post(sta, f"Datastreams({datastream})/Observations", {"result": 1, "resultTime": when}),
                 400, "resultTime")


@pytest.mark.parametrize("when", ["1850-06-01T00:00:00Z", "2100-06-01T00:00:00Z"])
def test_observation_moved_beyond_the_id_day_range_stays_reachable(sta: str, when: str) -> None:
    datastream = create_datastream(sta)
    observation = create_observation(sta, datastream, 1, "2024-05-01T00:00:00Z")
    assert patch(sta, f"Observations({observation})", {"phenomenonTime": when}).status_code == 200
    assert read(sta, f"Observations({observation})")["phenomenonTime"] == when


def test_integer_with_too_many_digits_is_400(sta: str) -> None:
    datastream = create_datastream(sta)
    response = send_raw("POST", sta, f"Datastreams({datastream})/Observations", '{"result": 1' + "0" * 5000 + "}")
    assert_error(response, 400)


def test_lone_surrogate_is_400(sta: str) -> None:
    response = send_raw("POST", sta, "Things", '{"name": "a", "description": "d", "properties": {"k\\ud800": 1}}')
    assert_error(response, 400, "surrogate")
    assert counts(sta)["Things"] == 0


def test_top_zero_has_no_next_link(sta: str) -> None:
    create(sta, "Things", thing_body())
    body = read(sta, "Things", **{"$top": "0", "$count": "true"})
    assert body == {"@iot.count": 1, "value": []}


def test_json_patch_media_type_is_case_insensitive(sta: str) -> None:
    thing = create(sta, "Things", thing_body())
    response = patch(sta, f"Things({thing})", [{"op": "replace", "path": "/name", "value": "renamed"}],
                     headers={"Content-Type": "Application/JSON-Patch+json"})
    assert response.status_code == 200, response.text
    assert read(sta, f"Things({thing})")["name"] == "renamed"


def test_json_patch_with_put_is_400(sta: str) -> None:
    thing = create(sta, "Things", thing_body())
    response = put(sta, f"Things({thing})", [{"op": "replace", "path": "/name", "value": "x"}],
                   headers={"Content-Type": "application/json-patch+json"})
    assert_error(response, 400, "PATCH")


def test_head_is_answered_like_get_without_a_body(sta: str) -> None:
    create(sta, "Things", thing_body())
    assert httpx.head(f"{sta}/Things").status_code == 200
    assert httpx.head(sta).status_code == 200
    assert httpx.head(f"{sta}/Things(999)").status_code == 404


def test_relinking_a_linked_location_records_no_history(sta: str) -> None:
    thing = create_thing_with_location(sta)
    location = ids(sta, f"Things({thing})/Locations")[0]
    assert post(sta, f"Things({thing})/Locations/$ref", ref(location)).status_code == 204
    assert len(ids(sta, f"Things({thing})/HistoricalLocations")) == 1


def test_concurrent_relocations_leave_one_current_location(sta: str) -> None:
    thing = create_thing_with_location(sta)
    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(lambda i: post(sta, f"Things({thing})/Locations", location_body(f"l{i}", lon=i)),
                                  range(16)))
    assert [r.status_code for r in responses] == [201] * 16, {r.text for r in responses if r.status_code != 201}
    assert len(ids(sta, f"Things({thing})/Locations")) == 1


def test_concurrent_observations_across_many_new_months_all_succeed(sta: str) -> None:
    datastream = create_datastream(sta)
    bodies = [{"result": i, "phenomenonTime": f"2031-{1 + i % 12:02d}-15T00:00:00Z"} for i in range(48)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(lambda b: post(sta, f"Datastreams({datastream})/Observations", b), bodies))
    assert [r.status_code for r in responses] == [201] * 48, {r.text for r in responses if r.status_code != 201}


def test_put_datastream_keeps_its_server_maintained_summaries(sta: str) -> None:
    datastream = create_datastream(sta)
    create_observation(sta, datastream, 1, "2024-05-01T00:00:00Z")
    before = read(sta, f"Datastreams({datastream})")
    thing = read(sta, f"Datastreams({datastream})/Thing")["@iot.id"]
    sensor = read(sta, f"Datastreams({datastream})/Sensor")["@iot.id"]
    op = read(sta, f"Datastreams({datastream})/ObservedProperty")["@iot.id"]
    body = datastream_body("replaced", Thing=ref(thing), Sensor=ref(sensor), ObservedProperty=ref(op))
    assert put(sta, f"Datastreams({datastream})", body).status_code == 200
    after = read(sta, f"Datastreams({datastream})")
    assert after["name"] == "replaced"
    assert after["phenomenonTime"] == before["phenomenonTime"] == "2024-05-01T00:00:00Z"
    assert after["observedArea"] == before["observedArea"]


@pytest.mark.parametrize("host", ["evil.com/x?y=", "a b", "<script>"])
def test_malformed_forwarded_host_is_ignored(sta: str, host: str) -> None:
    thing = create(sta, "Things", thing_body())
    link = read_with_headers(sta, f"Things({thing})", {"X-Forwarded-Host": host})["@iot.selfLink"]
    assert link == f"{sta}/Things({thing})"


def test_forwarded_prefix_is_honoured(sta: str) -> None:
    thing = create(sta, "Things", thing_body())
    body = read_with_headers(sta, f"Things({thing})", {"X-Forwarded-Host": "iot.example.org",
                                                        "X-Forwarded-Proto": "https", "X-Forwarded-Prefix": "/sta"})
    assert body["@iot.selfLink"] == f"https://iot.example.org/sta/v1.1/Things({thing})"


def read_with_headers(sta: str, path: str, headers: dict[str, str]) -> dict[str, object]:
    response = get(sta, path, headers=headers)
    assert response.status_code == 200, response.text
    result: dict[str, object] = response.json()
    return result
