"""The SensorThings API's OpenAPI 3.0 document (`GET /v1.1/api`, sensorthings/openapi.py).

It is the input of schemathesis fuzz runs, so it is checked against the model it is generated from (every
entity set, operation, property and relation: tests/unit/test_openapi_document.py, no server needed) and
against the real server: every documented GET on a small database answers with a documented status, content
type and body, and the create schemas accept what the server accepts and refuse what it refuses.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate as validate_openapi

from sensorthings.model.entities import ENTITY_SETS, Entity
from tests.sta_helpers import (
    HTTP,
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
)
from tests.unit.test_openapi_document import schema

OPENAPI = "application/vnd.oai.openapi+json;version=3.0"
COMPLEX = "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_ComplexObservation"
MEASUREMENT = "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement"


def validator(document: dict[str, Any], target: dict[str, Any]) -> OAS30Validator:
    """A validator of `target` (a schema of the document) that resolves the document's $refs."""
    return OAS30Validator({**target, "components": document["components"]})


# ---------------------------------------------------------------------------------------------- served


def test_the_document_is_served_with_its_media_type_and_caching(server_url: str) -> None:
    sta = f"{server_url}/v1.1"
    response = HTTP.get(f"{sta}/api")
    assert response.status_code == 200
    assert response.headers["content-type"] == OPENAPI
    assert response.headers["cache-control"].startswith("public, max-age=")
    served = response.json()
    assert served["servers"] == [{"url": sta}]
    validate_openapi(served)
    again = HTTP.get(f"{sta}/api", headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304 and again.headers["etag"] == response.headers["etag"]
    forwarded = HTTP.get(f"{sta}/api", headers={"X-Forwarded-Host": "city.example", "X-Forwarded-Proto": "https"})
    assert forwarded.json()["servers"] == [{"url": "https://city.example/v1.1"}]
    assert "X-Forwarded-Host" in forwarded.headers["vary"]


def test_the_landing_page_and_the_service_root_link_it(server_url: str) -> None:
    sta = f"{server_url}/v1.1"
    links = HTTP.get(f"{server_url}/").json()["links"]
    described = [link for link in links if link["rel"] == "service-desc"]
    assert described == [{"rel": "service-desc", "href": f"{sta}/api", "type": OPENAPI,
                          "title": described[0]["title"]}]
    root = HTTP.get(sta)
    assert root.headers["link"] == f'<{sta}/api>; rel="service-desc"; type="{OPENAPI}"'
    assert set(root.json()) == {"value", "serverSettings"}


def small_city(sta: str) -> dict[str, int]:
    """One entity of every set, linked (STAplus's Party, Project and License too): {entity set: id}."""
    thing = create_thing_with_location(sta)
    datastream = create_datastream(sta, thing)
    observation = create_observation(sta, datastream, 1.5, "2024-05-01T10:00:00Z", resultTime="2024-05-01T10:00:00Z")
    sensor = read(sta, f"Datastreams({datastream})/Sensor")["@iot.id"]
    observed = read(sta, f"Datastreams({datastream})/ObservedProperty")["@iot.id"]
    multi = create(sta, "MultiDatastreams", {
        "name": "m", "description": "d", "observationType": COMPLEX, "multiObservationDataTypes": [MEASUREMENT],
        "unitOfMeasurements": [{"name": "degree Celsius"}], "Thing": ref(thing), "Sensor": ref(sensor),
        "ObservedProperties": [ref(observed)]})
    create(sta, f"MultiDatastreams({multi})/Observations", {"result": [2], "phenomenonTime": "2024-05-01T10:00:00Z"})
    staplus = {"Parties": create(sta, "Parties", {"role": "individual", "authId": "a", "displayName": "A"}),
               "Projects": create(sta, "Projects", {"name": "p", "termsOfUse": "t", "properties": {"k": 1}}),
               "Licenses": create(sta, "Licenses", {"name": "l", "definition": "https://example.org/l"})}
    links = {"Party": ref(staplus["Parties"]), "Project": ref(staplus["Projects"]), "License": ref(staplus["Licenses"])}
    for linked, body in ((f"Things({thing})", {"Party": links["Party"]}), (f"Datastreams({datastream})", links),
                         (f"MultiDatastreams({multi})", links)):
        assert patch(sta, linked, body).status_code == 200
    return {**staplus, "Things": thing, "Locations": ids(sta, f"Things({thing})/Locations")[0],
            "HistoricalLocations": ids(sta, f"Things({thing})/HistoricalLocations")[0], "Datastreams": datastream,
            "Sensors": sensor, "ObservedProperties": observed, "Observations": observation,
            "FeaturesOfInterest": read(sta, f"Observations({observation})/FeatureOfInterest")["@iot.id"],
            "MultiDatastreams": multi}


def _maybe_absent(path: str) -> bool:
    """A to-one navigation that the small city leaves empty may be a 404 (an Observation of a Datastream
    has no MultiDatastream)."""
    match = re.fullmatch(r"/(\w+)\(\{id\}\)/(\w+)(/\$ref)?", path)
    if match is None or match.group(2) not in ENTITY_SETS[match.group(1)].relations:
        return False
    relation = ENTITY_SETS[match.group(1)].relation(match.group(2))
    return not relation.to_many and not relation.required


def test_every_documented_read_answers_as_documented(sta: str) -> None:
    city = small_city(sta)
    served = read(sta, "api")
    checked = 0
    for template, item in served["paths"].items():
        if "get" not in item or template == "/api":
            continue
        set_name = template.split("(")[0].strip("/")
        path = template.replace("{id}", str(city.get(set_name, 0)))
        if "{targetId}" in template:
            target: Entity = ENTITY_SETS[set_name].relation(template.split("/")[2].split("(")[0]).target_entity
            path = path.replace("{targetId}", str(city[target.set_name]))
        response = get(sta, path.lstrip("/"))
        documented = item["get"]["responses"]
        assert str(response.status_code) in documented, (template, response.status_code, response.text)
        if not 200 <= response.status_code < 300:
            assert _maybe_absent(template), (template, response.status_code, response.text)
            continue
        checked += 1
        if response.status_code == 204:
            continue
        content = documented[str(response.status_code)]["content"]
        media_type = response.headers["content-type"].split(";")[0]
        assert media_type in {m.split(";")[0] for m in content}, (template, media_type)
        if media_type == "application/json":
            validator(served, content["application/json"]["schema"]).validate(response.json())
    assert checked > 150


@pytest.mark.parametrize("result_format, media_type", [
    ("CSV", "text/csv"), ("GeoJSON", "application/geo+json"), ("dataArray", "application/json")])
def test_result_formats_answer_with_documented_content(sta: str, result_format: str, media_type: str) -> None:
    small_city(sta)
    served = read(sta, "api")
    response = get(sta, "Observations", params={"$resultFormat": result_format})
    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] == media_type
    content = served["paths"]["/Observations"]["get"]["responses"]["200"]["content"]
    assert media_type in content
    if media_type != "text/csv":
        validator(served, content[media_type]["schema"]).validate(response.json())


def test_create_schemas_accept_what_the_server_accepts_and_refuse_the_rest(sta: str) -> None:
    served = read(sta, "api")
    # As deep as the schemas describe (openapi.DEEP_INSERT_LEVELS); the server takes deeper ones too.
    thing = thing_body(Locations=[location_body()], Datastreams=[datastream_body(
        Sensor=sensor_body(), ObservedProperty=observed_property_body(),
        Observations=[{"result": 1, "phenomenonTime": "2024-05-01T10:00:00Z"}])])
    things = validator(served, schema(served, "ThingCreate"))
    things.validate(thing)
    assert post(sta, "Things", thing).status_code == 201
    observation = {"result": 2, "Datastream": ref(ids(sta, "Datastreams")[0]), "FeatureOfInterest": feature_body()}
    validator(served, schema(served, "ObservationCreate")).validate(observation)
    assert post(sta, "Observations", observation).status_code == 201
    unknown = {**thing_body(), "colour": "red"}
    assert not things.is_valid(unknown)
    assert post(sta, "Things", unknown).status_code == 400
    wrong_encoding = location_body(encodingType="text/plain")
    assert not validator(served, schema(served, "LocationCreate")).is_valid(wrong_encoding)
    assert post(sta, "Locations", wrong_encoding).status_code == 400
    both_streams = {"result": 1, "Datastream": ref(1), "MultiDatastream": ref(1)}
    assert not validator(served, schema(served, "ObservationCreate")).is_valid(both_streams)
    assert post(sta, "Observations", both_streams).status_code == 400
