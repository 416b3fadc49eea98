"""The SensorThings API's OpenAPI 3.0 document (sensorthings/openapi.py), built in-process: checked against the
model it is generated from (every entity set, operation, property and relation) and for the limits it states.

Moved here from tests/sta/test_sta_openapi.py, which checks the document against the real server (and imports
`schema` from here).
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from openapi_spec_validator import validate as validate_openapi

from citystream.settings import Settings
from sensorthings.http import openapi
from sensorthings.model.entities import ENTITIES
from sensorthings.model.results import STREAMS

METHODS = ("get", "post", "put", "patch", "delete")


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    """The document as a default server configuration states it (no HTTP: the model checks need none)."""
    return openapi.document("http://localhost/v1.1")


def operations(document: dict[str, Any], path: str) -> set[str]:
    return {method for method in document["paths"].get(path, {}) if method in METHODS}


def schema(document: dict[str, Any], name: str) -> dict[str, Any]:
    return document["components"]["schemas"][name]


def test_the_document_is_valid_openapi_3(document: dict[str, Any]) -> None:
    validate_openapi(document)
    assert document["openapi"].startswith("3.0")
    assert document["servers"] == [{"url": "http://localhost/v1.1"}]
    operation_ids = [op["operationId"] for item in document["paths"].values() for m, op in item.items()
                     if m in METHODS]
    assert len(operation_ids) == len(set(operation_ids))
    linked = {link["operationId"] for item in document["paths"].values() for m, op in item.items() if m in METHODS
              for answer in op["responses"].values() for link in answer.get("links", {}).values()}
    assert linked and linked <= set(operation_ids)  # a create links to the operations on what it created


def test_every_entity_set_is_described_with_its_operations(document: dict[str, Any]) -> None:
    for entity in ENTITIES.values():
        one = f"/{entity.set_name}({{id}})"
        assert operations(document, f"/{entity.set_name}") == {"get", "post", "delete"}
        assert operations(document, one) == {"get", "patch", "put", "delete"}
        assert operations(document, f"/{entity.set_name}/$ref") == {"get"}
        assert operations(document, f"{one}/$ref") == {"get"}
        for name, relation in entity.relations.items():
            nav = operations(document, f"{one}/{name}")
            assert "get" in nav, (entity.name, name)
            assert ("post" in nav) is (relation.to_many and not relation.rank_column), (entity.name, name)
            links = operations(document, f"{one}/{name}/$ref")
            writes = set() if relation.fixed else ({"post"} if relation.to_many else {"put"})
            assert links == {"get"} | writes, (entity.name, name)
        for f in entity.fields:
            assert operations(document, f"{one}/{f.name}") == {"get"}
            assert operations(document, f"{one}/{f.name}/$value") == {"get"}
    for path in ("/", "/api"):
        assert operations(document, path) == {"get"}
    for path in ("/$batch", "/CreateObservations"):
        assert operations(document, path) == {"post"}


def test_every_property_and_relation_of_the_model_is_in_the_schemas(document: dict[str, Any]) -> None:
    for entity in ENTITIES.values():
        shown = set(schema(document, entity.name)["properties"])
        links = {f"{name}@iot.navigationLink" for name in entity.relations}
        assert {"@iot.id", "@iot.selfLink", *entity.property_names, *links, *entity.relations} <= shown
        created = schema(document, f"{entity.name}Create")
        assert set(created["properties"]) == {*entity.property_names, *entity.relations}
        assert created["additionalProperties"] is False  # writer.check_keys refuses unknown keys
        needed = {f.name for f in entity.fields if f.required and not f.server_maintained}
        assert needed <= set(created.get("required", ()))
        for kind in ("Patch", "Replace"):
            assert set(entity.property_names) <= set(schema(document, f"{entity.name}{kind}")["properties"])
        assert "required" not in schema(document, f"{entity.name}Patch")
        assert set(schema(document, f"{entity.name}Replace")["required"]) == needed


def test_a_create_inside_a_relation_leaves_out_what_the_url_gives(document: dict[str, Any]) -> None:
    body = schema(document, "DatastreamCreateWithoutThing")
    assert "Thing" not in body["properties"] and {"Sensor", "ObservedProperty"} <= set(body["required"])
    observation = schema(document, "ObservationCreateWithoutDatastream")
    assert not {stream.name for stream in STREAMS} & set(observation["properties"])  # the URL names the stream
    assert [r["required"] for r in schema(document, "ObservationCreate")["oneOf"]] == [[s.name] for s in STREAMS]
    post_body = document["paths"]["/Things({id})/Datastreams"]["post"]["requestBody"]["content"]
    assert post_body["application/json"]["schema"] == {"$ref": "#/components/schemas/DatastreamCreateWithoutThing"}


def test_query_options_state_the_limits(document: dict[str, Any]) -> None:
    parameters = document["components"]["parameters"]
    top = parameters["top"]["schema"]
    assert (top["type"], top["minimum"], top["maximum"], top["default"]) == (
        "integer", 0, Settings().max_top, Settings().default_top)
    assert parameters["count"]["schema"]["type"] == "boolean"
    assert parameters["resultFormat-Observation"]["schema"]["enum"] == ["dataArray", "CSV", "GeoJSON"]
    assert parameters["resultFormat-Thing"]["schema"]["enum"] == ["CSV", "GeoJSON"]
    select = parameters["select-Thing"]["schema"]["items"]["enum"]
    assert set(ENTITIES["Thing"].property_names) | set(ENTITIES["Thing"].relations) <= set(select)
    expand = re.compile(parameters["expand-Thing"]["schema"]["pattern"])
    assert expand.match("Datastreams($top=1;$expand=Observations),Locations")
    assert not expand.match("Sensor")
    collection = document["paths"]["/Things"]["get"]["parameters"]
    assert {p["$ref"].rsplit("/", 1)[1] for p in collection} == {
        "filter", "orderby", "top", "skip", "skiptoken", "count", "select-Thing", "expand-Thing", "resultFormat-Thing"}
    assert {p["$ref"] for p in document["paths"]["/Things"]["delete"]["parameters"]} == {
        "#/components/parameters/requiredFilter"}
