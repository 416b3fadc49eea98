"""POST /v1.1/$batch (issue 6, part 2): OData JSON and multipart/mixed batches, atomic change sets with
`$<id>` references, GET requests, per-request statuses."""

from __future__ import annotations

import email.parser
import email.policy
import json
from typing import Any

import pytest

from tests.sta_helpers import (
    HTTP,
    assert_error,
    count,
    counts,
    create,
    datastream_body,
    location_body,
    observed_property_body,
    read,
    sensor_body,
    thing_body,
)


def json_batch(sta: str, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    response = HTTP.post(f"{sta}/$batch", json={"requests": requests})
    assert response.status_code == 200, response.text
    return response.json()["responses"]


def new_datastream() -> dict[str, Any]:
    return datastream_body(Sensor=sensor_body(), ObservedProperty=observed_property_body())


def test_json_batch_runs_each_request_like_a_request_of_its_own(sta: str) -> None:
    thing = create(sta, "Things", thing_body("existing"))
    responses = json_batch(sta, [
        {"id": "read", "method": "get", "url": f"Things({thing})"},
        {"id": "make", "method": "post", "url": "Things", "body": thing_body("new")},
        {"id": "missing", "method": "get", "url": "Things(999)"},
        {"id": "change", "method": "patch", "url": f"/v1.1/Things({thing})", "body": {"name": "renamed"}},
    ])
    assert [(r["id"], r["status"]) for r in responses] == [("read", 200), ("make", 201), ("missing", 404),
                                                          ("change", 200)]
    assert responses[0]["body"]["name"] == "existing"
    assert responses[1]["headers"]["location"].startswith(f"{sta}/Things(")
    assert responses[2]["body"]["code"] == 404
    assert read(sta, f"Things({thing})")["name"] == "renamed"


def test_a_change_set_refers_to_what_it_created(sta: str) -> None:
    responses = json_batch(sta, [
        {"id": "thing", "atomicityGroup": "g", "method": "post", "url": "Things",
         "body": thing_body("station", Locations=[location_body()])},
        {"id": "stream", "atomicityGroup": "g", "method": "post", "url": "$thing/Datastreams",
         "body": new_datastream()},
        {"id": "obs", "atomicityGroup": "g", "method": "post", "url": "$stream/Observations",
         "body": {"result": 21.5, "phenomenonTime": "2024-05-01T10:00:00Z"}},
    ])
    assert [r["status"] for r in responses] == [201, 201, 201]
    assert all(r["atomicityGroup"] == "g" for r in responses)
    observation = HTTP.get(responses[2]["headers"]["location"], params={
        "$expand": "Datastream($expand=Thing),FeatureOfInterest"}).json()
    assert observation["Datastream"]["Thing"]["name"] == "station"
    assert observation["FeatureOfInterest"]["name"] == "location"  # generated from the Thing's Location


def test_a_body_may_link_what_the_change_set_created(sta: str) -> None:
    responses = json_batch(sta, [
        {"id": "sensor", "atomicityGroup": "g", "method": "post", "url": "Sensors", "body": sensor_body("shared")},
        {"id": "prop", "atomicityGroup": "g", "method": "post", "url": "ObservedProperties",
         "body": observed_property_body()},
        {"id": "thing", "atomicityGroup": "g", "method": "post", "url": "Things", "body": thing_body()},
        {"id": "stream", "atomicityGroup": "g", "method": "post", "url": "Datastreams",
         "body": datastream_body(Thing={"@iot.id": "$thing"}, Sensor={"@iot.id": "$sensor"},
                                 ObservedProperty={"@iot.id": "$prop"})},
        {"id": "bad", "method": "post", "url": "Datastreams",
         "body": datastream_body(Thing={"@iot.id": "$thing"}, Sensor={"@iot.id": "$sensor"},
                                 ObservedProperty={"@iot.id": "$prop"})},
    ])
    assert [r["status"] for r in responses] == [201, 201, 201, 201, 400]  # references live in their change set
    stream = HTTP.get(responses[3]["headers"]["location"], params={"$expand": "Sensor"}).json()
    assert stream["Sensor"]["name"] == "shared"


def test_a_failing_change_set_leaves_nothing_and_says_which_request_failed(sta: str) -> None:
    before = counts(sta)
    responses = json_batch(sta, [
        {"id": "1", "atomicityGroup": "g", "method": "post", "url": "Things", "body": thing_body("a")},
        {"id": "2", "atomicityGroup": "g", "method": "post", "url": "$1/Datastreams", "body": {"name": "x"}},
        {"id": "3", "atomicityGroup": "g", "method": "post", "url": "Things", "body": thing_body("b")},
        {"id": "4", "method": "post", "url": "Things", "body": thing_body("outside")},
    ])
    statuses = {r["id"]: r["status"] for r in responses}
    assert statuses == {"2": 400, "1": 424, "3": 424, "4": 201}
    assert "424" not in json.dumps(responses[0]["body"])
    assert count(sta, "Things") == before["Things"] + 1  # only the request outside the change set


def test_a_reference_to_nothing_fails_the_change_set(sta: str) -> None:
    responses = json_batch(sta, [
        {"id": "1", "atomicityGroup": "g", "method": "post", "url": "Things", "body": thing_body()},
        {"id": "2", "atomicityGroup": "g", "method": "post", "url": "$9/Datastreams", "body": new_datastream()},
    ])
    assert {r["id"]: r["status"] for r in responses} == {"2": 400, "1": 424}
    assert count(sta, "Things") == 0


def test_get_is_refused_inside_a_change_set(sta: str) -> None:
    responses = json_batch(sta, [
        {"id": "1", "atomicityGroup": "g", "method": "post", "url": "Things", "body": thing_body()},
        {"id": "2", "atomicityGroup": "g", "method": "get", "url": "Things"},
    ])
    assert {r["id"]: r["status"] for r in responses} == {"2": 400, "1": 424}
    assert count(sta, "Things") == 0


MULTIPART = """--batch_1
Content-Type: application/http
Content-Transfer-Encoding: binary

GET Things?$select=name HTTP/1.1
Host: example.org


--batch_1
Content-Type: multipart/mixed; boundary=changeset_1

--changeset_1
Content-Type: application/http
Content-Transfer-Encoding: binary
Content-ID: 1

POST Things HTTP/1.1
Content-Type: application/json

{THING}
--changeset_1
Content-Type: application/http
Content-Transfer-Encoding: binary
Content-ID: 2

POST $1/Datastreams HTTP/1.1
Content-Type: application/json

{DATASTREAM}
--changeset_1--

--batch_1--
"""


def multipart_batch(sta: str, thing: dict[str, Any], datastream: dict[str, Any]) -> list[Any]:
    body = (MULTIPART.replace("{THING}", json.dumps(thing)).replace("{DATASTREAM}", json.dumps(datastream))
            .replace("\n", "\r\n"))
    response = HTTP.post(f"{sta}/$batch", content=body.encode(),
                         headers={"Content-Type": "multipart/mixed; boundary=batch_1"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("multipart/mixed; boundary=")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {response.headers['content-type']}\r\n\r\n".encode() + response.content)
    return list(message.iter_parts())


def status_of(part: Any) -> int:
    return int(part.get_payload(decode=True).split(b" ", 2)[1])


def test_multipart_batch_with_a_change_set(sta: str) -> None:
    parts = multipart_batch(sta, thing_body("mp"), new_datastream())
    assert status_of(parts[0]) == 200
    assert parts[1].get_content_type() == "multipart/mixed"
    inner = list(parts[1].iter_parts())
    assert [status_of(p) for p in inner] == [201, 201]
    assert [str(p["Content-ID"]) for p in inner] == ["1", "2"]
    assert read(sta, "Things", **{"$expand": "Datastreams"})["value"][0]["Datastreams"][0]["name"] == "datastream"


def test_a_failed_multipart_change_set_is_one_error_answer(sta: str) -> None:
    parts = multipart_batch(sta, thing_body("mp"), {"name": "incomplete"})
    assert status_of(parts[1]) == 400
    assert parts[1].get_content_type() == "application/http"
    assert count(sta, "Things") == 0


def test_batches_do_not_nest_and_create_observations_stays_outside_change_sets(sta: str) -> None:
    responses = json_batch(sta, [
        {"id": "inner", "method": "post", "url": "$batch", "body": {"requests": []}},
        {"id": "1", "atomicityGroup": "g", "method": "post", "url": "CreateObservations", "body": []},
    ])
    assert {r["id"]: r["status"] for r in responses} == {"inner": 400, "1": 400}
    assert "nested" in responses[0]["body"]["message"]


@pytest.mark.parametrize(("content", "content_type", "fragment"), [
    (b"[]", "application/json", "requests"),
    (b'{"requests": []}', "application/json", "requests"),
    (b'{"requests": [{"id": "1", "method": "TRACE", "url": "Things"}]}', "application/json", "method"),
    (b'{"requests": [{"id": "1", "method": "get"}]}', "application/json", "url"),
    (b'{"requests": [{"id": "1", "method": "get", "url": "/other/Things"}]}', "application/json", "service root"),
    (b'{"requests": [{"atomicityGroup": "a", "method": "get", "url": "Things"}, {"method": "get", "url": "Things"},'
     b' {"atomicityGroup": "a", "method": "get", "url": "Things"}]}', "application/json", "adjacent"),
    (b'{"requests": [{"method": "get", "url": "Things", "headers": ["x"]}]}', "application/json", "headers"),
    (b'{"requests": ["get Things"]}', "application/json", "must be an object"),
    (b"<xml/>", "text/xml", "multipart/mixed"),
    (b"--x\r\nContent-Type: application/http\r\n\r\n\r\n--x--\r\n", "multipart/mixed; boundary=x", "HTTP request"),
    (b"--x\r\nContent-Type: application/http\r\n\r\nGET\r\n--x--\r\n", "multipart/mixed; boundary=x", "request line"),
    (b"--x\r\nContent-Type: text/plain\r\n\r\nhello\r\n--x--\r\n", "multipart/mixed; boundary=x", "application/http"),
])
def test_malformed_batches_are_400(sta: str, content: bytes, content_type: str, fragment: str) -> None:
    response = HTTP.post(f"{sta}/$batch", content=content, headers={"Content-Type": content_type})
    assert_error(response, 400, fragment)
