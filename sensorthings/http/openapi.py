"""The OpenAPI 3.0 document of the SensorThings API (`GET /v1.1/api`), generated from the entity model.

Entity sets, their properties (typed by each kind's `json_schema`), their navigation properties and which of
those are to-one or to-many all come from sensorthings.model.entities, so a new property or relation is in the
document without a line here. The document is the input of schemathesis fuzz runs, so it states what this
server does rather than everything STA allows: the operations that can succeed, parameters with the values
that are valid, and the statuses the handlers return, errors as `{"code", "type", "message"}` (errors.py).

Enumerated: every entity set and entity, every first-level navigation property (`Things({id})/Datastreams`,
with POST where a create through it can succeed), every property and its `$value`, `$ref` reads and the
link writes that can succeed, `$batch`, `CreateObservations` and the operators' filtered DELETE. Left out:
paths of two or more navigation steps (`Things({id})/Datastreams({id})/Observations`, any depth is served),
member paths into JSON properties (`properties/owner`), filtered DELETE on navigation collections, HEAD,
link writes the writer always refuses (removing a foreign-key link, changing an ordered list), and deep
inserts below DEEP_INSERT_LEVELS.

This module assembles the paths, operations and parameters; the schemas they refer to (entities and request
bodies, `components/schemas`) are built in openapi_schemas.py.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from sensorthings.http.openapi_schemas import (
    _COUNT,
    _ID,
    _URI,
    DEEP_INSERT_LEVELS,
    _create_name,
    _creates_through,
    _may_be_null,
    _reference_body,
    _schema,
    _schemas,
    _value_schema,
)
from sensorthings.model import LATEST
from sensorthings.model.entities import Entity, Storage, entity_sets_in
from sensorthings.query.compiler import selectable_names
from sensorthings.query.options import MAX_SKIP, RESULT_FORMATS

OPENAPI_MEDIA_TYPE = "application/vnd.oai.openapi+json;version=3.0"
JSON = "application/json"
MAX_AGE_SECONDS = 300
DATA_ARRAY = "dataArray"


@dataclass(frozen=True)
class ApiSettings:
    """What of the server's configuration the document states (part of the cache key)."""

    default_top: int = 100
    max_top: int = 10_000
    create_observations: bool = True
    """The ingest path is wired, so POST CreateObservations can succeed."""
    anonymous_read: bool = True
    """Reads need no credential (CITYSTREAM_ANONYMOUS_READ); writes always need one with the role."""
    version: str = LATEST
    """The API version described (model.VERSIONS): its properties only."""


def _parameter(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/parameters/{name}"}


def _response(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/responses/{name}"}


def _applies_data_array(entity: Entity) -> bool:
    """As compiler.data_array_value decides: Observations (grouped by their stream) with a result."""
    return bool(entity.exactly_one_of) and entity.field("result") is not None


# ---------------------------------------------------------------------------------------------- parameters


def _query(name: str, description: str, schema: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema, **extra}


def _parameters(settings: ApiSettings) -> dict[str, Any]:
    text = {"type": "string", "minLength": 1}
    parameters: dict[str, Any] = {
        "id": {"name": "id", "in": "path", "required": True, "description": "The entity's @iot.id.",
               "schema": _ID},
        "targetId": {"name": "targetId", "in": "path", "required": True,
                     "description": "The @iot.id of the linked entity.", "schema": _ID},
        "filter": _query("$filter", "OData filter expression, e.g. `result gt 5 and Datastream/name eq 'a'`.", text,
                         example="id ge 0"),
        "orderby": _query("$orderby", "Sort keys, each with `asc` or `desc`, e.g. `phenomenonTime desc`.", text,
                          example="id desc"),
        "top": _query("$top", f"Entities per page (at most {settings.max_top}; larger values are clamped).",
                      {"type": "integer", "minimum": 0, "maximum": settings.max_top, "default": settings.default_top}),
        "skip": _query("$skip", "Entities to skip (@iot.nextLink is faster).",
                       {"type": "integer", "minimum": 0, "maximum": MAX_SKIP, "default": 0}),
        "skiptoken": _query("$skiptoken", "Opaque position of the next page; follow @iot.nextLink as it is.",
                            {"type": "string", "pattern": "^[A-Za-z0-9_-]+$"}),
        "count": _query("$count", "Add @iot.count (exact below a limit, estimated above it).",
                        {"type": "boolean", "default": False}),
        "requiredFilter": {**_query("$filter", "Only the entities that pass this filter are deleted "
                                               "(`true` for all).", text, example="false"), "required": True},
    }
    for entity in entity_sets_in(settings.version).values():
        names = list(selectable_names(entity, settings.version))
        parameters[f"select-{entity.name}"] = _query(
            "$select", f"Only these properties of each {entity.name}.",
            {"type": "array", "minItems": 1, "items": {"type": "string", "enum": names}},
            style="form", explode=False)
        relations = entity.relations_in(settings.version)
        navigation = "|".join(map(re.escape, relations))
        item = rf"({navigation})(/[A-Za-z]+)*(\(.*\))?"
        parameters[f"expand-{entity.name}"] = _query(
            "$expand", f"Related entities to include inline ({', '.join(relations)}), each with nested "
                       "options in parentheses, e.g. `Datastreams($top=1;$expand=Observations)`.",
            {"type": "string", "pattern": f"^{item}(,{item})*$"}, example=next(iter(relations)))
        formats = [f for f in RESULT_FORMATS if f != DATA_ARRAY or _applies_data_array(entity)]
        parameters[f"resultFormat-{entity.name}"] = _query(
            "$resultFormat", "Another encoding of the page: "
                             + ("a Data Array per stream, " if DATA_ARRAY in formats else "") + "CSV, or GeoJSON.",
            {"type": "string", "enum": formats})
    return parameters


def _collection_parameters(entity: Entity, *, ref: bool = False) -> list[dict[str, str]]:
    names = ["filter", "orderby", "top", "skip", "skiptoken", "count"]
    if not ref:
        names += [f"select-{entity.name}", f"expand-{entity.name}", f"resultFormat-{entity.name}"]
    return [_parameter(n) for n in names]


def _entity_parameters(entity: Entity) -> list[dict[str, str]]:
    return [_parameter(f"select-{entity.name}"), _parameter(f"expand-{entity.name}")]


# ---------------------------------------------------------------------------------------------- operations


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {JSON: {"schema": schema}}


def _errors(*codes: int) -> dict[str, Any]:
    names = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 409: "Conflict",
             413: "PayloadTooLarge", 503: "ServiceUnavailable"}
    return {str(code): _response(names[code]) for code in codes}


def _operation_id(method: str, path: str) -> str:
    return f"{method}_{re.sub(r'[^A-Za-z0-9]+', '_', path).strip('_') or 'service_root'}"


def _operation(method: str, path: str, tag: str, summary: str, responses: dict[str, Any],
               parameters: list[dict[str, Any]] | None = None, body: dict[str, Any] | None = None
               ) -> dict[str, Any]:
    operation: dict[str, Any] = {"operationId": _operation_id(method, path), "tags": [tag], "summary": summary}
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = {"required": True, "content": body}
    operation["responses"] = responses
    return {method: operation}


def _read_collection(entity: Entity, path: str, tag: str, summary: str, *, parent: bool) -> dict[str, Any]:
    page: dict[str, Any] = _schema(f"{entity.name}Collection")
    if _applies_data_array(entity):
        page = {"anyOf": [page, _schema("DataArrayCollection")]}
    content = {JSON: {"schema": page}, "text/csv": {"schema": {"type": "string"}},
               "application/geo+json": {"schema": _schema("FeatureCollection")}}
    responses = {"200": {"description": "A page of entities", "content": content},
                 **_errors(400, *((404,) if parent else ()), 503)}
    return _operation("get", path, tag, summary, responses, _collection_parameters(entity))


def _read_entity(entity: Entity, path: str, tag: str, summary: str) -> dict[str, Any]:
    responses = {"200": {"description": f"The {entity.name}", "content": _json(_schema(entity.name))},
                 **_errors(400, 404, 503)}
    return _operation("get", path, tag, summary, responses, _entity_parameters(entity))


def _links(entity: Entity, version: str) -> dict[str, Any]:
    """OpenAPI links from a created entity to the operations on it, which fuzzers follow to real ids."""
    one = f"/{entity.set_name}({{id}})"
    targets = [*((method, one) for method in ("get", "patch", "put", "delete")),
               *(("get", f"{one}/{name}") for name in entity.relations_in(version))]
    return {_operation_id(method, path): {"operationId": _operation_id(method, path),
                                          "parameters": {"id": "$response.body#/@iot.id"}}
            for method, path in targets}


def _post(entity: Entity, path: str, tag: str, summary: str, body: str, *, parent: bool, version: str
          ) -> dict[str, Any]:
    responses = {"201": {"description": f"The new {entity.name}; Location names it",
                         "headers": {"Location": {"schema": _URI, "description": "The new entity's URL"}},
                         "content": _json(_schema(entity.name)), "links": _links(entity, version)},
                 **_errors(400, *((404,) if parent else ()), 409, 413, 503)}
    return _operation("post", path, tag, summary, responses, body=_json(_schema(body)))


def _read_references(path: str, tag: str, summary: str, parameters: list[dict[str, str]] | None,
                     *, many: bool) -> dict[str, Any]:
    schema = _schema("ReferenceCollection" if many else "Reference")
    responses = {"200": {"description": "selfLinks only", "content": _json(schema)}, **_errors(400, 404, 503)}
    return _operation("get", path, tag, summary, responses, parameters)


def _link_write(method: str, path: str, tag: str, summary: str, target: Entity | None) -> dict[str, Any]:
    responses = {"204": {"description": "Done"}, **_errors(400, 404, *((409, 413) if target else ()), 503)}
    return _operation(method, path, tag, summary, responses,
                      body=_json(_reference_body(target)) if target is not None else None)


def _entity_set_paths(entity: Entity, settings: ApiSettings) -> dict[str, Any]:
    tag, name = entity.set_name, entity.name
    collection, one = f"/{entity.set_name}", f"/{entity.set_name}({{id}})"
    with_id = [_parameter("id")]
    filtered_delete = _operation(
        "delete", collection, tag, f"Delete every {name} that passes $filter, all or nothing (role delete)",
        {"200": {"description": "How many were deleted", "content": _json(
            {"type": "object", "required": ["deleted"], "properties": {"deleted": _COUNT}})},
         **_errors(400, 409, 503)},
        [_parameter("requiredFilter")])
    updated = {"200": {"description": f"The {name} as it is now", "content": _json(_schema(name))},
               **_errors(400, 404, 409, 413, 503)}
    paths: dict[str, Any] = {
        collection: {**_read_collection(entity, collection, tag, f"The {entity.set_name}", parent=False),
                     **_post(entity, collection, tag, f"Create a {name} (deep insert)", _create_name(entity),
                             parent=False, version=settings.version),
                     **filtered_delete},
        f"{collection}/$ref": _read_references(f"{collection}/$ref", tag, f"The selfLinks of the {entity.set_name}",
                                               _collection_parameters(entity, ref=True), many=True),
        one: {"parameters": with_id,
              **_read_entity(entity, one, tag, f"One {name}"),
              **_operation("patch", one, tag, f"Change the {name}'s properties that are sent", updated,
                           body={**_json(_schema(f"{name}Patch")),
                                 "application/json-patch+json": {"schema": _schema("JsonPatch")}}),
              **_operation("put", one, tag, f"Replace the {name}'s properties", updated,
                           body=_json(_schema(f"{name}Replace"))),
              **_operation("delete", one, tag, f"Delete the {name} (and what depends on it)",
                           {"200": {"description": "Deleted"}, **_errors(400, 404, 409, 503)})},
        f"{one}/$ref": {"parameters": with_id, **_read_references(f"{one}/$ref", tag, f"The {name}'s selfLink",
                                                                  None, many=False)},
    }
    for relation in entity.relations_in(settings.version).values():
        target = relation.target_entity
        nav, ref = f"{one}/{relation.name}", f"{one}/{relation.name}/$ref"
        if relation.to_many:
            item: dict[str, Any] = _read_collection(target, nav, tag, f"The {name}'s {relation.name}", parent=True)
            if _creates_through(relation):
                item |= _post(target, nav, tag, f"Create a {target.name} of the {name}",
                              _create_name(target, relation.inverse), parent=True, version=settings.version)
        else:
            item = _read_entity(target, nav, tag, f"The {name}'s {relation.name}")
        paths[nav] = {"parameters": with_id, **item}
        links = _read_references(ref, tag, f"selfLinks of the {name}'s {relation.name}",
                                 _collection_parameters(target, ref=True) if relation.to_many else None,
                                 many=relation.to_many)
        if not relation.fixed:
            links |= _link_write("post" if relation.to_many else "put", ref, tag,
                                 f"{'Add a link to' if relation.to_many else 'Set'} the {name}'s {relation.name}",
                                 target)
        paths[ref] = {"parameters": with_id, **links}
        if relation.to_many and relation.storage is Storage.LINK_TABLE and not relation.fixed:
            unlink = f"{one}/{relation.name}({{targetId}})/$ref"
            paths[unlink] = {"parameters": [*with_id, _parameter("targetId")],
                             **_read_references(unlink, tag, f"A selfLink of the {name}'s {relation.name}", None,
                                                many=False),
                             **_link_write("delete", unlink, tag, f"Remove a link from the {name}'s {relation.name}",
                                           None)}
    for f in entity.fields_in(settings.version):
        prop = f"{one}/{f.name}"
        value = _value_schema(entity, f, reading=True)
        absent = {"204": {"description": "The property has no value"}} if _may_be_null(f) and not f.null_is_a_value \
            else {}
        paths[prop] = {"parameters": with_id, **_operation(
            "get", prop, tag, f"The {name}'s {f.name}",
            {"200": {"description": f"{{\"{f.name}\": value}}", "content": _json(
                {"type": "object", "required": [f.name], "additionalProperties": False,
                 "properties": {f.name: value}})}, **absent, **_errors(400, 404, 503)})}
        raw = f.json_schema(reading=True)
        content = _json(raw) if f.is_object_value else {"text/plain": {"schema": {"type": "string"}}}
        empty = {"204": {"description": "The value is null"}} if _may_be_null(f) else {}
        paths[f"{prop}/$value"] = {"parameters": with_id, **_operation(
            "get", f"{prop}/$value", tag, f"The {name}'s {f.name}, bare",
            {"200": {"description": "The value", "content": content}, **empty, **_errors(400, 404, 503)})}
    return paths


SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "An API key (`citystream keys create`) or an "
               "OIDC access token (JWT) from the configured issuer"},
    "basic": {"type": "http", "scheme": "basic", "description": "A user (`citystream users create`), or an API "
              "key's id and secret"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "An API key"},
}
_CREDENTIALS: list[dict[str, list[str]]] = [{name: []} for name in SECURITY_SCHEMES]
_METHODS = ("get", "head", "post", "put", "patch", "delete")
_OPEN = ("/", "/api")
"""The service root and this document: discovery, open to everyone."""


def _secured(paths: dict[str, Any], anonymous_read: bool) -> dict[str, Any]:
    """Every operation with the credentials it takes: writes need one (401 without, 403 without the role);
    reads too unless anonymous read is on, where no credential (`{}`) is one of the choices."""
    for path, operations in paths.items():
        if path in _OPEN:
            continue
        for method, operation in operations.items():
            if method not in _METHODS:
                continue  # path-level `parameters`
            reads = method in ("get", "head")
            operation["security"] = [*_CREDENTIALS, {}] if reads and anonymous_read else _CREDENTIALS
            errors = _errors(401, 403) if not reads or not anonymous_read else {}
            operation["responses"] = {**operation["responses"], **errors}
    return paths


def _paths(settings: ApiSettings) -> dict[str, Any]:
    tag = "Service"
    paths: dict[str, Any] = {
        "/": _operation("get", "/", tag, "The entity sets and the conformance classes",
                        {"200": {"description": "The service root", "content": _json(_schema("ServiceRoot"))}}),
        "/api": _operation("get", "/api", tag, "This API definition",
                           {"200": {"description": "The OpenAPI document",
                                    "content": {OPENAPI_MEDIA_TYPE: {"schema": {"type": "object"}}}},
                            "304": {"description": "Not modified (If-None-Match)"}}),
    }
    for entity in entity_sets_in(settings.version).values():
        paths.update(_entity_set_paths(entity, settings))
    paths["/$batch"] = _operation(
        "post", "/$batch", tag, "Several requests in one; a change set (atomicityGroup) all or nothing",
        {"200": {"description": "One answer per request",
                 "content": {**_json(_schema("BatchResponse")), "multipart/mixed": {"schema": {"type": "string"}}}},
         **_errors(400, 409, 413, 503)},
        body={**_json(_schema("BatchRequest")), "multipart/mixed": {"schema": {"type": "string"}}})
    if settings.create_observations:
        paths["/CreateObservations"] = _operation(
            "post", "/CreateObservations", tag, "Create Observations from Data Arrays",
            {"201": {"description": "Per row, in order: the new Observation's selfLink, or `error` and why",
                     "content": _json({"type": "array", "items": {"type": "string"}})},
             **_errors(400, 413, 503)},
            body=_json({"type": "array", "items": _schema("DataArrayCreate")}))
    return paths


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": _json(_schema("Error"))}


@functools.lru_cache(maxsize=16)
def document(root: str, settings: ApiSettings = ApiSettings()) -> dict[str, Any]:
    """The OpenAPI document for a service root URL; built once per URL and settings (read-only for callers)."""
    components: dict[str, Any] = {
        "parameters": _parameters(settings),
        "schemas": _schemas(settings.version),
        "responses": {
            "BadRequest": _error_response("The request is invalid; the message says what to fix"),
            "Unauthorized": _error_response("A credential is needed, or the one sent does not verify "
                                            "(WWW-Authenticate says which kinds are taken)"),
            "Forbidden": _error_response("The credential is valid but lacks the role this needs"),
            "NotFound": _error_response("An entity the path names does not exist"),
            "Conflict": _error_response("The change conflicts with the current data"),
            "PayloadTooLarge": _error_response("The body is larger than the server's limit"),
            "ServiceUnavailable": _error_response("Timed out or collided with a concurrent change; send it again"),
        },
    }
    components["securitySchemes"] = SECURITY_SCHEMES
    return {
        "openapi": "3.0.3",
        "info": {"title": "CityStream SensorThings API", "version": settings.version.removeprefix("v"),
                 "description": f"OGC SensorThings API {settings.version.removeprefix('v')} (with MultiDatastream, "
                                "Data Array and batch requests), generated from the entity model.",
                 "license": {"name": "Apache-2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0"}},
        "servers": [{"url": root}],
        "tags": [{"name": "Service"}, *({"name": n} for n in entity_sets_in(settings.version))],
        "paths": _secured(_paths(settings), settings.anonymous_read),
        "components": components,
    }


@functools.lru_cache(maxsize=16)
def _encoded(root: str, settings: ApiSettings) -> tuple[bytes, str]:
    body = orjson.dumps(document(root, settings))
    return body, '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'


def response(request: Request, root: str, settings: ApiSettings) -> Response:
    """`GET /v1.1/api`: the document, with an ETag (304 for a matching If-None-Match) and Cache-Control. It
    changes only with the server URL, which the forwarding headers may set (hence Vary)."""
    body, etag = _encoded(root, settings)
    headers = {"ETag": etag, "Cache-Control": f"public, max-age={MAX_AGE_SECONDS}",
               "Vary": "X-Forwarded-Proto, X-Forwarded-Host, X-Forwarded-Prefix"}
    given = request.headers.get("if-none-match", "")
    if any(tag.strip() in (etag, f"W/{etag}", "*") for tag in given.split(",")):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=OPENAPI_MEDIA_TYPE, headers=headers)


__all__ = ["DATA_ARRAY", "DEEP_INSERT_LEVELS", "JSON", "MAX_AGE_SECONDS", "OPENAPI_MEDIA_TYPE", "ApiSettings",
           "document", "response"]
