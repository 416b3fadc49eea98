"""Request bodies read with the entity model: which keys an entity takes, its fields parsed by their
kinds, `@iot.id` links. Shared by the REST writer and MQTT ingest, so a payload is judged the same way on
both paths."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from psycopg import sql

from sensorthings.model import LATEST
from sensorthings.model.access import Role, require
from sensorthings.model.entities import Entity
from sensorthings.model.errors import BadRequest
from sensorthings.model.kinds import GEOJSON_ENCODINGS, Field
from sensorthings.model.results import STREAMS
from sensorthings.model.times import is_ascii_digits

IGNORED_SUFFIXES = ("@iot.selfLink", "@iot.navigationLink")


def _is_ignored(key: str) -> bool:
    return key.endswith(IGNORED_SUFFIXES)


def link_id(value: Any, where: str) -> int | None:
    """The id of `{"@iot.id": n}` (a link to an existing entity), None for an inline entity."""
    if not isinstance(value, dict):
        raise BadRequest(f"{where} must be a JSON object (an entity, or {{\"@iot.id\": n}} to link one)",
                         field=where)
    if "@iot.id" not in value:
        return None
    # Other keys beside @iot.id are ignored, as FROST does: clients such as frost-sta-client send the whole
    # related entity when they mean to link it.
    raw = value["@iot.id"]
    if type(raw) is int and raw >= 0:  # the common case, first
        return raw
    if isinstance(raw, bool) or not isinstance(raw, int | str) or not is_ascii_digits(str(raw)):
        raise BadRequest(f"{where}.@iot.id must be a positive integer", field=where)
    return int(raw)




def check_keys(entity: Entity, body: dict[str, Any], where: str) -> None:
    """Reject keys that are neither a property nor a relation of `entity`, saying which ones exist."""
    allowed = entity.json_keys
    for key in body:
        if key in allowed or _is_ignored(key):
            continue
        if key == "@iot.id":
            raise BadRequest(f"{where}: @iot.id is assigned by the server; leave it out "
                             f"(to link an existing entity, send only {{\"@iot.id\": n}})", field=where)
        raise BadRequest(
            f"{where}: {entity.name} has no property {key!r}; properties: "
            f"{', '.join(entity.property_names)}; relations: {', '.join(entity.relations)}",
            field=f"{where}.{key}")


def parse_fields(entity: Entity, body: dict[str, Any], where: str, *, complete: bool, now: datetime | None,
                 version: str = LATEST) -> dict[str, Any]:
    """Column values for the fields in `body`; with `complete`, every field that API `version` has (create,
    PUT: a PUT under v1.0 leaves the properties only v1.1 shows as they are).
    (On the ingest hot path: it walks the body's few keys, not all fields, and optional fields that are
    absent come from one precomputed dict.)"""
    columns: dict[str, Any] = dict(entity.absent_optional_columns) if complete else {}
    if complete and version != LATEST:
        for newer in (f for f in entity.fields if f not in entity.fields_in(version)):
            for column in newer.columns:
                columns.pop(column, None)
    fields = entity.fields_by_name
    for name, value in body.items():
        f = fields.get(name)
        if f is None:
            continue  # a relation or an ignored annotation (check_keys has rejected anything else)
        if f.admin_only:
            require(Role.ADMIN)
        if value is None and (f.required or f.defaults_to_now) and not f.null_is_a_value:
            raise BadRequest(f"{where}.{name} cannot be null; a {entity.name} requires it", field=f"{where}.{name}")
        if value is None and not f.null_is_a_value:  # an optional property cleared (PATCH), or given as null
            columns.update(dict.fromkeys(f.columns))
            continue
        columns.update(f.parse(value, f"{where}.{name}"))
    if complete:
        for f in entity.needed_on_create:
            if f.name not in body:
                columns.update(_absent(entity, f, where, now))
    if entity.has_geojson_encoding:
        _check_geojson_encoding(entity, columns, where)
    return columns


def _absent(entity: Entity, f: Field, where: str, now: datetime | None) -> dict[str, Any]:
    if f.defaults_to_now:
        return f.parse((now or datetime.now(UTC)).isoformat(), f.name)
    if f.required:
        raise BadRequest(f"{where}: {entity.name} requires {f.name!r}", field=f"{where}.{f.name}")
    return f.null_columns()


def _check_geojson_encoding(entity: Entity, columns: dict[str, Any], where: str) -> None:
    encoding = entity.field("encodingType")
    if encoding is None or encoding.column not in columns:
        return
    if columns[encoding.column] not in GEOJSON_ENCODINGS:
        raise BadRequest(f"{where}.encodingType must be one of {', '.join(GEOJSON_ENCODINGS)} "
                         f"(the only encoding this server stores)", field=f"{where}.encodingType")


def column_value(entity: Entity, column: str, placeholder: sql.Composable) -> sql.Composable:
    """How a bound value becomes the stored value of `column` (its field kind decides)."""
    for f in entity.fields:
        if column in f.columns:
            return f.column_sql(column, placeholder)
    return placeholder


_SELF_LINK = re.compile(r"/(?P<set>[A-Za-z]+)\((?P<id>\d+)\)/?$")


def creates_stream(body: Any) -> bool:
    """True for an Observation whose Datastream or MultiDatastream is given inline (a deep insert): the REST
    writer's transaction creates those; the ingest path only links existing ones."""
    if not isinstance(body, dict):
        return False
    return any(isinstance(s, dict) and "@iot.id" not in s for s in (body.get(r.name) for r in STREAMS))


def referenced_id(body: Any, target: Entity) -> int:
    """The id in a `$ref` body: {"@iot.id": n} or {"@iot.selfLink": ".../Things(n)"}."""
    if isinstance(body, dict) and "@iot.selfLink" in body:
        link = body["@iot.selfLink"]
        match = _SELF_LINK.search(link) if isinstance(link, str) else None
        if match is None or match.group("set") != target.set_name:
            raise BadRequest(f"@iot.selfLink must end in /{target.set_name}(id)")
        return int(match.group("id"))
    found = link_id(body, "body")
    if found is None:
        raise BadRequest('a $ref body is {"@iot.selfLink": url} or {"@iot.id": n}')
    return found
