"""`$resultFormat=CSV` and `$resultFormat=GeoJSON` (as FROST-Server offers them): a collection's JSON page,
flattened for spreadsheets and GIS tools.

Flattening names a value by its path: `name`, `Datastream/name`, `Datastreams/0/name` for the first entity
of an expanded collection. Navigation links are left out (a CSV cell cannot be followed); JSON objects that
are property values (`properties`, `unitOfMeasurement`, a geometry) stay whole, as JSON text in CSV.
An optional property without a value is absent from the JSON (a GeoJSON Feature leaves it out too); in
CSV it is an empty cell, and an entity shown whole (no `$select`) has a column for each of its properties
even where no row has a value, so that every page of a collection has the same header.
The page itself comes from the one SQL statement of the normal JSON answer; this reshapes at most
`$top` entities.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from sensorthings.model import LATEST
from sensorthings.model.entities import ENTITIES, ENTITY_SETS, Entity
from sensorthings.model.json_values import dumps_exact
from sensorthings.model.kinds import GeoJson, Geometry

GEOMETRY_TYPES = frozenset({"Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon",
                            "GeometryCollection"})
GEOMETRY_PROPERTIES = frozenset(f.name for entity in ENTITIES.values() for f in entity.fields
                                if isinstance(f, GeoJson | Geometry))
"""Properties that hold a geometry (Location.location, FeatureOfInterest.feature, Datastream.observedArea)."""
RELATIONS = frozenset(name for entity in ENTITIES.values() for name in entity.relations)
"""Keys whose values are expanded entities (flattened further) rather than property values (kept whole)."""


def flatten(entity: dict[str, Any], prefix: str = "", *, every_property: bool = False, version: str = LATEST
            ) -> dict[str, Any]:
    """One entity with its expanded relations as path -> value, in the order of the JSON; `every_property`:
    with a None value for each absent property (that API `version` has) of an entity shown whole, in the
    model's order."""
    if every_property:
        entity = _with_absent_properties(entity, version)
    flat: dict[str, Any] = {}
    for key, value in entity.items():
        if key.endswith("@iot.navigationLink") or key.endswith("@iot.nextLink"):
            continue
        if key in RELATIONS and isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}/", every_property=every_property, version=version))
        elif key in RELATIONS and isinstance(value, list):
            for n, item in enumerate(value):
                flat.update(flatten(item, f"{prefix}{key}/{n}/", every_property=every_property, version=version))
        else:
            flat[prefix + key] = value
    return flat


def _with_absent_properties(entity: dict[str, Any], version: str) -> dict[str, Any]:
    """`entity` with its absent properties as None, in the model's order, when it is shown whole; as it is
    otherwise (a `$select` names what it wants, and no more columns are made up for it)."""
    kind = _shown_whole(entity, version)
    names = kind.property_names_in(version) if kind is not None else []
    if kind is None or all(name in entity for name in names):
        return entity
    complete = {key: entity[key] for key in ("@iot.id", "@iot.selfLink")}
    complete.update((name, entity.get(name)) for name in names)
    complete.update((key, value) for key, value in entity.items() if key not in complete)
    return complete


def _shown_whole(entity: dict[str, Any], version: str) -> Entity | None:
    """The entity type of `entity` when it is rendered without `$select`: its id, its selfLink (which names
    its entity set) and every navigation property that API `version` has (as a link or expanded; of an
    Observation's two streams, the one it has). None otherwise."""
    link = entity.get("@iot.selfLink")
    if "@iot.id" not in entity or not isinstance(link, str):
        return None
    kind = ENTITY_SETS.get(link.rsplit("/", 1)[-1].split("(", 1)[0])
    if kind is None:
        return None
    relations = kind.relations_in(version)
    shown = {name for name in relations if name in entity or f"{name}@iot.navigationLink" in entity}
    streams = set(kind.exactly_one_of)
    if not set(relations) - streams <= shown or (streams and not streams & shown):
        return None
    return kind


def to_csv(entities: list[dict[str, Any]], version: str = LATEST) -> bytes:
    """A header row of every path that occurs (in order of first appearance), then a row per entity."""
    rows = [flatten(e, every_property=True, version=version) for e in entities]
    columns = list(dict.fromkeys(key for row in rows for key in row))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    writer.writerows([_cell(row.get(c)) for c in columns] for row in rows)
    return out.getvalue().encode()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return dumps_exact(value).decode()  # numbers as they were sent, objects and arrays as JSON text


def to_geojson(entities: list[dict[str, Any]], head: dict[str, Any]) -> bytes:
    """A FeatureCollection: one Feature per entity, its geometry the first geometry among its (flattened)
    values, the other values as properties. `head` carries @iot.count / @iot.nextLink along."""
    features = []
    for entity in entities:
        properties = flatten(entity)
        geometry_key = next((k for k, v in properties.items()
                             if k.rsplit("/", 1)[-1] in GEOMETRY_PROPERTIES and _geometry(v) is not None), None)
        geometry = _geometry(properties.pop(geometry_key)) if geometry_key is not None else None
        features.append({"type": "Feature", "id": entity.get("@iot.id"), "geometry": geometry,
                         "properties": properties})
    return dumps_exact({"type": "FeatureCollection", **head, "features": features})


def _geometry(value: Any) -> dict[str, Any] | None:
    """A GeoJSON geometry, or the geometry of a GeoJSON Feature (a Location may hold either)."""
    if not isinstance(value, dict):
        return None
    if value.get("type") == "Feature":
        return _geometry(value.get("geometry"))
    return value if value.get("type") in GEOMETRY_TYPES else None
