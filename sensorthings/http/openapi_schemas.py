"""The JSON Schemas of the OpenAPI document (`components/schemas`), generated from the entity model: each
entity as responses render it, its pages, the bodies of its create (with deep inserts), PATCH, PUT and `$ref`
writes, and the service's other bodies (errors, `$batch`, Data Arrays, JSON Patch).

Apart from openapi.py, which assembles the paths, operations and parameters that refer to these schemas:
the schemas follow what the writer and the renderers accept and give, the paths what the handlers serve.
"""

from __future__ import annotations

from typing import Any

from sensorthings.http.batch import MAX_REQUESTS, METHODS
from sensorthings.model import LATEST, VERSIONS
from sensorthings.model.entities import Entity, Relation, entity_sets_in
from sensorthings.model.kinds import GEOJSON_ENCODINGS, Field
from sensorthings.model.results import STREAMS
from sensorthings.write.data_array import COMPONENTS
from sensorthings.write.writer import THING_LOCATIONS

DEEP_INSERT_LEVELS = 2
"""Levels of inline entities the create schemas describe (Thing > Datastreams > Observations), below them
links only. The writer takes any depth, but a recursive schema stalls schemathesis' coverage phase, and
each level triples its cases."""
_URI = {"type": "string", "format": "uri"}
_COUNT = {"type": "integer", "minimum": 0}
_ID = {"type": "integer", "format": "int64", "minimum": 0}


def _schema(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _may_be_null(f: Field) -> bool:
    """Null is a value of `f` in requests and responses: it is neither required nor filled in by the server
    (writer.parse_fields refuses null for those), or null is one of its values (an Observation's result)."""
    return f.null_is_a_value or not (f.required or f.defaults_to_now)


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        return {"allOf": [schema], "nullable": True}
    return {**schema, "nullable": True}


def _value_schema(entity: Entity, f: Field, *, reading: bool) -> dict[str, Any]:
    schema = f.json_schema(reading=reading)
    if f.name == "encodingType" and entity.has_geojson_encoding and not reading:
        schema = {**schema, "enum": list(GEOJSON_ENCODINGS)}  # writer._check_geojson_encoding
    return _nullable(schema) if _may_be_null(f) else schema


def _creates_through(relation: Relation) -> bool:
    """POST into the to-many `relation` (or an inline entity in it) can succeed: the writer creates the
    target linked through the inverse, which an ordered list only allows from its ranked side."""
    via = relation.inverse
    return relation.to_many and (not via.fixed or bool(via.rank_column))


def _create_name(entity: Entity, via: Relation | None = None, level: int = 0) -> str:
    """Schema name of a create of `entity` at `level` of a deep insert; with `via`, inside a to-many relation
    (or POSTed into it), without the inverse relation `via` that the URL or the enclosing entity gives."""
    name = f"{entity.name}Create" + (f"Without{via.name}" if via is not None else "")
    return f"{name}_{level}" if level else name


# ---------------------------------------------------------------------------------------------- schemas


def _entity_schema(entity: Entity, version: str) -> dict[str, Any]:
    properties: dict[str, Any] = {"@iot.id": _ID, "@iot.selfLink": _URI}
    properties |= {f.name: _value_schema(entity, f, reading=True) for f in entity.fields_in(version)}
    for relation in entity.relations_in(version).values():
        properties[f"{relation.name}@iot.navigationLink"] = _URI
        target = _schema(relation.target)
        if relation.to_many:  # as $expand gives it
            properties[relation.name] = {"type": "array", "items": target}
            properties[f"{relation.name}@iot.count"] = _COUNT
            properties[f"{relation.name}@iot.nextLink"] = _URI
        else:
            properties[relation.name] = _nullable(target)
    return {"type": "object", "description": f"A {entity.name}; $select and $expand choose what is in it.",
            "properties": properties}


def _collection_schema(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": ["value"],
            "properties": {"@iot.count": _COUNT, "@iot.nextLink": _URI, "value": {"type": "array", "items": items}}}


def _inline(relation: Relation, level: int, schemas: dict[str, Any], version: str) -> dict[str, Any]:
    """A related entity in a create at `level`: a link to an existing one, or a new one (deep insert)."""
    item: dict[str, Any] = _schema("Link")
    if level < DEEP_INSERT_LEVELS:
        # A to-one target, or an item of an ordered list, is created on its own and then linked.
        via = relation.inverse if relation.to_many and not relation.rank_column else None
        item = {"anyOf": [item, _schema(_create(relation.target_entity, via, level + 1, schemas, version))]}
    if not relation.to_many:
        return item
    return {"type": "array", "items": item, **({"minItems": 1} if relation.required else {})}


def _create(entity: Entity, via: Relation | None, level: int, schemas: dict[str, Any], version: str) -> str:
    """Add the create schema of `entity` (with the ones it nests) to `schemas`; return its name."""
    name = _create_name(entity, via, level)
    if name not in schemas:
        schemas[name] = _create_schema(entity, via, level, schemas, version)
    return name


def _create_schema(entity: Entity, via: Relation | None, level: int, schemas: dict[str, Any], version: str
                   ) -> dict[str, Any]:
    """The body of a create (writer.create): properties, relations linked or inline, no other key."""
    given = {via.name} if via is not None else set()
    if via is not None and via.name in entity.exactly_one_of:
        given |= set(entity.exactly_one_of)  # the stream is the URL's; naming the other one too is a 400
    properties = {f.name: _value_schema(entity, f, reading=False) for f in entity.fields_in(version)}
    required = [f.name for f in entity.fields if f.required and not f.server_maintained]
    for relation in entity.relations_in(version).values():
        if relation.name in given:
            continue
        properties[relation.name] = _inline(relation, level, schemas, version)
        if relation.required and relation.name not in entity.exactly_one_of and not relation.generated:
            required.append(relation.name)
    schema: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": properties}
    if required:
        schema["required"] = required
    streams = [name for name in entity.exactly_one_of if name not in given]
    if streams:
        schema["oneOf"] = [{"required": [name]} for name in streams]
    return schema


def _update_schema(entity: Entity, version: str, *, replace: bool) -> dict[str, Any]:
    """The body of a PATCH or (`replace`) PUT (writer.update): properties, and links to existing entities
    for to-one relations and a Thing's Locations."""
    properties = {f.name: _value_schema(entity, f, reading=False) for f in entity.fields_in(version)}
    for relation in entity.relations_in(version).values():
        if not relation.to_many:  # null clears an optional link
            properties[relation.name] = _nullable(_schema("Link")) if relation.optional else _schema("Link")
        elif relation is THING_LOCATIONS:
            properties[relation.name] = {"type": "array", "items": _schema("Link")}
    schema: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": properties}
    if replace:
        schema["required"] = [f.name for f in entity.fields if f.required and not f.server_maintained]
    if len(entity.exactly_one_of) > 1:
        schema["not"] = {"required": list(entity.exactly_one_of)}
    return schema


def _reference_body(target: Entity) -> dict[str, Any]:
    """A `$ref` write body (write.bodies.referenced_id): the target's selfLink or its id."""
    link = {"type": "object", "required": ["@iot.selfLink"],
            "properties": {"@iot.selfLink": {"type": "string", "pattern": rf"/{target.set_name}\([0-9]+\)/?$"}}}
    return {"anyOf": [_schema("Link"), link]}


def _schemas(version: str = LATEST) -> dict[str, Any]:
    """The schemas of the document of API `version` (without the properties a later version added)."""
    schemas: dict[str, Any] = {
        "Error": {"type": "object", "required": ["code", "type", "message"],
                  "properties": {"code": {"type": "integer"}, "type": {"type": "string", "enum": ["error"]},
                                 "message": {"type": "string"}, "field": {"type": "string"}}},
        "Link": {"type": "object", "required": ["@iot.id"], "properties": {"@iot.id": _ID},
                 "description": "An existing entity, by id (other keys are ignored)."},
        "Reference": {"type": "object", "required": ["@iot.selfLink"], "additionalProperties": False,
                      "properties": {"@iot.selfLink": _URI}},
        "ReferenceCollection": _collection_schema(_schema("Reference")),
        "ServiceRoot": {
            "type": "object", "required": ["value", "serverSettings"] if version == LATEST else ["value"],
            "properties": {
                "value": {"type": "array", "items": {
                    "type": "object", "required": ["name", "url"],
                    "properties": {"name": {"type": "string", "enum": list(entity_sets_in(version))},
                                   "url": _URI}}},
                "serverSettings": {
                    "type": "object", "required": ["conformance", "versions"] if version == LATEST else ["versions"],
                    "properties": {**({"conformance": {"type": "array", "items": _URI}} if version == LATEST else {}),
                                   "versions": {"type": "array", "items": {
                                       "type": "object", "required": ["name", "url"],
                                       "properties": {"name": {"type": "string", "enum": list(VERSIONS)},
                                                      "url": _URI}}}}}}},
        "DataArrayCollection": _collection_schema({
            "type": "object", "required": ["components", "dataArray"],
            "properties": {**{f"{s.name}@iot.navigationLink": _URI for s in STREAMS},
                           "components": {"type": "array", "items": {"type": "string"}},
                           "dataArray@iot.count": _COUNT,
                           "dataArray": {"type": "array", "items": {"type": "array"}}}}),
        "DataArrayCreate": {
            "type": "object", "additionalProperties": False, "required": ["components", "dataArray"],
            "properties": {**{s.name: _schema("Link") for s in STREAMS},
                           "components": {"type": "array", "minItems": 1, "uniqueItems": True,
                                          "items": {"type": "string", "enum": sorted(COMPONENTS)}},
                           "dataArray": {"type": "array", "items": {"type": "array"}},
                           "dataArray@iot.count": _COUNT},
            "oneOf": [{"required": [s.name]} for s in STREAMS]},
        "FeatureCollection": {"type": "object", "required": ["type", "features"],
                              "properties": {"type": {"type": "string", "enum": ["FeatureCollection"]},
                                             "features": {"type": "array", "items": {"type": "object"}}}},
        "JsonPatch": {"type": "array", "items": {
            "type": "object", "required": ["op", "path"],
            "properties": {"op": {"type": "string", "enum": ["add", "remove", "replace", "move", "copy", "test"]},
                           "path": {"type": "string"}, "from": {"type": "string"}, "value": {}}}},
        "BatchRequest": {"type": "object", "required": ["requests"], "properties": {"requests": {
            "type": "array", "minItems": 1, "maxItems": MAX_REQUESTS, "items": {
                "type": "object", "required": ["method", "url"],
                "properties": {"id": {"type": "string"}, "method": {"type": "string", "enum": sorted(METHODS)},
                               "url": {"type": "string", "minLength": 1}, "body": {},
                               "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                               "atomicityGroup": {"type": "string"}}}}}},
        "BatchResponse": {"type": "object", "required": ["responses"], "properties": {"responses": {
            "type": "array", "items": {
                "type": "object", "required": ["id", "status"],
                "properties": {"id": {"type": "string"}, "status": {"type": "integer"},
                               "headers": {"type": "object"}, "body": {}, "atomicityGroup": {"type": "string"}}}}}},
    }
    for entity in entity_sets_in(version).values():
        schemas[entity.name] = _entity_schema(entity, version)
        schemas[f"{entity.name}Collection"] = _collection_schema(_schema(entity.name))
        _create(entity, None, 0, schemas, version)
        schemas[f"{entity.name}Patch"] = _update_schema(entity, version, replace=False)
        schemas[f"{entity.name}Replace"] = _update_schema(entity, version, replace=True)
        for relation in entity.relations_in(version).values():
            if _creates_through(relation):
                _create(relation.target_entity, relation.inverse, 0, schemas, version)
    return schemas
