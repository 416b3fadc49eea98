"""SensorThings API 1.0 at /v1.0, served from the same store as /v1.1.

STA 1.0 (OGC 15-078r6) differs from 1.1 in the data model only where 1.1 added `properties` to Location,
Sensor, ObservedProperty, Datastream and FeatureOfInterest (and the MultiDatastream extension): under /v1.0
those are not shown, not selectable, filterable or orderable, and a write that sends one is a 400 that
points to /v1.1. Everything else, links included, is the same API under its own root.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.sta_helpers import (
    ENTITY_SETS,
    HTTP,
    assert_error,
    create,
    create_datastream,
    datastream_body,
    feature_body,
    get,
    location_body,
    observed_property_body,
    patch,
    post,
    put,
    read,
    sensor_body,
    thing_body,
    values,
)

NEWER = ("Locations", "Sensors", "ObservedProperties", "Datastreams", "FeaturesOfInterest", "MultiDatastreams")
"""Entity sets whose `properties` STA 1.1 added."""


@pytest.fixture
def v10(sta: str) -> str:
    return sta.removesuffix("/v1.1") + "/v1.0"


def _links(document: Any) -> list[str]:
    """Every self, navigation and next link in a JSON document."""
    found: list[str] = []
    if isinstance(document, dict):
        for key, value in document.items():
            if key.endswith(("@iot.selfLink", "@iot.navigationLink", "@iot.nextLink")):
                found.append(value)
            else:
                found += _links(value)
    elif isinstance(document, list):
        for item in document:
            found += _links(item)
    return found


def _all_under(document: Any, root: str) -> None:
    links = _links(document)
    assert links, document
    wrong = [link for link in links if not link.startswith(root + "/")]
    assert not wrong, wrong


def test_service_roots_name_both_versions(sta: str, v10: str) -> None:
    root10, root11 = read(v10, ""), read(sta, "")
    assert [e["name"] for e in root10["value"]] == list(ENTITY_SETS)
    assert all(e["url"] == f"{v10}/{e['name']}" for e in root10["value"])
    versions = [{"name": "v1.0", "url": v10}, {"name": "v1.1", "url": sta}]
    assert root10["serverSettings"] == {"versions": versions}  # no 1.1 conformance classes in a 1.0 root
    assert root11["serverSettings"]["versions"] == versions
    conformance = root11["serverSettings"]["conformance"]
    base = "http://www.opengis.net/spec/iot_sensing/1.1/req/"
    for cls in ("datamodel", "resource-path/resource-path-to-entities", "request-data", "create-update-delete",
                "batch-request/batch-request", "multi-datastream", "data-array/data-array",
                "create-observations-via-mqtt/observations-creation", "receive-updates-via-mqtt/receive-updates"):
        assert base + cls in conformance
    assert get(v10, "").headers["Link"].startswith(f"<{v10}/api>")


def test_openapi_document_of_v10(sta: str, v10: str) -> None:
    doc10, doc11 = read(v10, "api"), read(sta, "api")
    assert doc10["info"]["version"] == "1.0" and doc11["info"]["version"] == "1.1"
    assert doc10["servers"] == [{"url": v10}]
    schemas10, schemas11 = doc10["components"]["schemas"], doc11["components"]["schemas"]
    assert "properties" in schemas10["Thing"]["properties"]
    assert "properties" not in schemas10["Location"]["properties"]
    assert "properties" in schemas11["Location"]["properties"]
    assert "properties" not in schemas10["LocationCreate"]["properties"]
    assert "/Sensors({id})/properties" not in doc10["paths"] and "/Sensors({id})/properties" in doc11["paths"]


def test_crud_and_deep_insert_under_v10_link_to_v10(v10: str) -> None:
    response = post(v10, "Things", thing_body("t", properties={"owner": "city"}, Locations=[location_body()],
                                              Datastreams=[datastream_body(Sensor=sensor_body(),
                                                                           ObservedProperty=observed_property_body())]))
    assert response.status_code == 201, response.text
    assert response.headers["Location"].startswith(f"{v10}/Things(")
    thing = response.json()
    assert thing["properties"] == {"owner": "city"}
    _all_under(thing, v10)
    tid = thing["@iot.id"]
    expanded = read(v10, f"Things({tid})", **{"$expand": "Locations,Datastreams($expand=Sensor,ObservedProperty)"})
    _all_under(expanded, v10)
    assert "properties" not in expanded["Locations"][0]
    assert "properties" not in expanded["Datastreams"][0]["Sensor"]
    ds = expanded["Datastreams"][0]["@iot.id"]
    obs = post(v10, f"Datastreams({ds})/Observations", {"result": 21.5, "phenomenonTime": "2024-05-01T00:00:00Z"})
    assert obs.status_code == 201, obs.text
    assert obs.headers["Location"].startswith(f"{v10}/Observations(")
    _all_under(obs.json(), v10)
    changed = patch(v10, f"Things({tid})", {"name": "renamed"})
    assert changed.status_code == 200 and changed.json()["name"] == "renamed"
    _all_under(changed.json(), v10)
    assert HTTP.delete(f"{v10}/Things({tid})").status_code == 200
    assert get(v10, f"Things({tid})").status_code == 404


def test_next_links_under_v10(v10: str) -> None:
    ds = create_datastream(v10)
    for i in range(3):
        create(v10, f"Datastreams({ds})/Observations", {"result": i, "phenomenonTime": f"2024-05-01T00:0{i}:00Z"})
    page = read(v10, "Observations", **{"$top": "2", "$orderby": "phenomenonTime"})
    assert page["@iot.nextLink"].startswith(f"{v10}/Observations?")
    rest = HTTP.get(page["@iot.nextLink"]).json()
    assert [o["result"] for o in rest["value"]] == [2] and "@iot.nextLink" not in rest
    nested = read(v10, f"Datastreams({ds})", **{"$expand": "Observations($top=1)"})
    assert nested["Observations@iot.nextLink"].startswith(f"{v10}/Datastreams({ds})/Observations?")


def test_v11_properties_shown_under_v11_only(sta: str, v10: str) -> None:
    """The same entities: 1.1 shows the properties a 1.1 client gave them, 1.0 leaves them out everywhere."""
    tid = create(sta, "Things", thing_body(Locations=[location_body(properties={"k": 1})]))
    ds = create(sta, f"Things({tid})/Datastreams", datastream_body(
        properties={"k": 1}, Sensor=sensor_body(properties={"k": 1}),
        ObservedProperty=observed_property_body(properties={"k": 1})))
    create(sta, f"Datastreams({ds})/Observations",
           {"result": 1, "FeatureOfInterest": feature_body(properties={"k": 1})})
    for name in NEWER[:-1]:
        assert all(e["properties"] == {"k": 1} for e in values(sta, name)), name
        assert all("properties" not in e for e in values(v10, name)), name
        entity_id = values(v10, name)[0]["@iot.id"]
        assert "properties" not in read(v10, f"{name}({entity_id})")
        assert read(sta, f"{name}({entity_id})/properties") == {"properties": {"k": 1}}
        assert_error(get(v10, f"{name}({entity_id})/properties"), 404, "v1.1 property", "/v1.1")
        assert_error(get(v10, name, params={"$select": "id,properties"}), 400, "v1.1 property", "/v1.1")
        assert_error(get(v10, name, params={"$filter": "properties/k eq 1"}), 400, "v1.1 property", "/v1.1")
        assert_error(get(v10, name, params={"$orderby": "properties/k"}), 400, "v1.1 property")
        assert len(values(sta, name, **{"$filter": "properties/k eq 1"})) == 1
    assert_error(get(v10, "Things", params={"$expand": "Locations($select=properties)"}), 400, "v1.1 property")
    assert_error(get(v10, "Observations", params={"$filter": "FeatureOfInterest/properties/k eq 1"}), 400,
                 "v1.1 property")
    # a Thing has properties in 1.0 too
    assert values(v10, "Things", **{"$filter": "properties/k eq 1"}) == []
    geojson = get(v10, "Locations", params={"$resultFormat": "GeoJSON"}).json()
    assert '"k"' not in json.dumps(geojson["features"][0]["properties"])
    csv = get(v10, "Sensors", params={"$resultFormat": "CSV"}).text
    assert "properties" not in csv.splitlines()[0]


def test_v11_properties_in_v10_writes_are_stored(sta: str, v10: str) -> None:
    """A client of FROST's /v1.0 may send a 1.1 `properties` (FROST has one model for both): it is stored,
    shown under /v1.1 and left out under /v1.0, whatever way it came (create, deep insert, PATCH, JSON Patch)."""
    created = post(v10, "Locations", location_body(properties={"k": 1}))
    assert created.status_code == 201, created.text
    assert "properties" not in created.json()
    assert read(sta, f"Locations({created.json()['@iot.id']})")["properties"] == {"k": 1}
    deep = thing_body(Datastreams=[datastream_body(Sensor=sensor_body(properties={"k": 2}),
                                                   ObservedProperty=observed_property_body())])
    assert post(v10, "Things", deep).status_code == 201
    assert [s["properties"] for s in read(sta, "Sensors")["value"]] == [{"k": 2}]
    ds = create_datastream(v10)
    assert patch(v10, f"Datastreams({ds})", {"properties": {"k": 3}}).status_code == 200
    assert read(sta, f"Datastreams({ds})")["properties"] == {"k": 3}
    observation = post(v10, f"Datastreams({ds})/Observations",
                       {"result": 1, "FeatureOfInterest": feature_body(properties={"k": 4})})
    assert observation.status_code == 201, observation.text
    assert read(sta, f"Observations({observation.json()['@iot.id']})/FeatureOfInterest")["properties"] == {"k": 4}
    json_patch = HTTP.patch(f"{v10}/Datastreams({ds})", content=json.dumps(
        [{"op": "add", "path": "/properties", "value": {"k": 5}}]),
        headers={"Content-Type": "application/json-patch+json"})
    assert json_patch.status_code == 200, json_patch.text
    assert "properties" not in json_patch.json()
    assert read(sta, f"Datastreams({ds})")["properties"] == {"k": 5}


def test_put_under_v10_keeps_v11_properties(sta: str, v10: str) -> None:
    sensor = create(sta, "Sensors", sensor_body(properties={"k": 1}))
    replaced = put(v10, f"Sensors({sensor})", sensor_body("replaced"))
    assert replaced.status_code == 200, replaced.text
    assert "properties" not in replaced.json()
    after = read(sta, f"Sensors({sensor})")
    assert after["name"] == "replaced" and after["properties"] == {"k": 1}


def test_batch_under_v10(sta: str, v10: str) -> None:
    body = {"requests": [
        {"id": "1", "atomicityGroup": "g", "method": "post", "url": "Things", "body": thing_body("batched")},
        {"id": "2", "atomicityGroup": "g", "method": "post", "url": "$1/Locations", "body": location_body()},
        {"id": "3", "method": "get", "url": "/v1.0/Things?$expand=Locations"},
        {"id": "4", "method": "post", "url": "Sensors", "body": sensor_body(properties={"k": 1})},
    ]}
    response = HTTP.post(f"{v10}/$batch", json=body)
    assert response.status_code == 200, response.text
    answers = {a["id"]: a for a in response.json()["responses"]}
    assert answers["1"]["status"] == 201 and answers["2"]["status"] == 201
    assert answers["1"]["headers"]["location"].startswith(f"{v10}/Things(")
    listed = answers["3"]["body"]
    assert answers["3"]["status"] == 200
    _all_under(listed, v10)
    assert "properties" not in listed["value"][0]["Locations"][0]
    assert answers["4"]["status"] == 201 and "properties" not in answers["4"]["body"]
    assert [s["properties"] for s in read(sta, "Sensors")["value"]] == [{"k": 1}]


def test_create_observations_under_v10(v10: str) -> None:
    ds = create_datastream(v10)
    response = post(v10, "CreateObservations", [{
        "Datastream": {"@iot.id": ds}, "components": ["result", "phenomenonTime"],
        "dataArray": [[1, "2024-05-01T00:00:00Z"], [2, "2024-05-01T00:01:00Z"]]}])
    assert response.status_code == 201, response.text
    assert all(link.startswith(f"{v10}/Observations(") for link in response.json())
    data = read(v10, f"Datastreams({ds})/Observations", **{"$resultFormat": "dataArray"})
    assert data["value"][0]["Datastream@iot.navigationLink"] == f"{v10}/Datastreams({ds})"
