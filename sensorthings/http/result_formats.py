"""`$resultFormat=CSV` and `$resultFormat=GeoJSON` (as FROST-Server offers them): a collection's JSON page,
flattened for spreadsheets and GIS tools.

Flattening names a value by its path: `name`, `Datastream/name`, `Datastreams/0/name` for the first entity
of an expanded collection. Navigation links are left out (a CSV cell cannot be followed); JSON objects that
are property values (`properties`, `unitOfMeasurement`, a geometry) stay whole, as JSON text in CSV.
The page itself comes from the one SQL statement of the normal JSON answer; this reshapes at most
`$top` entities.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from sensorthings.model.entities import ENTITIES
from sensorthings.model.json_values import dumps_exact
from sensorthings.model.kinds import GeoJson, Geometry

GEOMETRY_TYPES = frozenset({"Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon",
                            "GeometryCollection"})
GEOMETRY_PROPERTIES = frozenset(f.name for entity in ENTITIES.values() for f in entity.fields
                                if isinstance(f, GeoJson | Geometry))
"""Properties that hold a geometry (Location.location, FeatureOfInterest.feature, Datastream.observedArea)."""
RELATIONS = frozenset(name for entity in ENTITIES.values() for name in entity.relations)
"""Keys whose values are expanded entities (flattened further) rather than property values (kept whole)."""


def flatten(entity: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """One entity with its expanded relations as path -> value, in the order of the JSON."""
    flat: dict[str, Any] = {}
    for key, value in entity.items():
        if key.endswith("@iot.navigationLink") or key.endswith("@iot.nextLink"):
            continue
        if key in RELATIONS and isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}/"))
        elif key in RELATIONS and isinstance(value, list):
            for n, item in enumerate(value):
                flat.update(flatten(item, f"{prefix}{key}/{n}/"))
        else:
            flat[prefix + key] = value
    return flat


def to_csv(entities: list[dict[str, Any]]) -> bytes:
    """A header row of every path that occurs (in order of first appearance), then a row per entity."""
    rows = [flatten(e) for e in entities]
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
