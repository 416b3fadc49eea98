"""The OpenAPI 3.0 document (`service-desc`), generated from the collection declarations.

The OGC test suite and QGIS read parameter declarations from it: `limit` is an integer query parameter
(form style, not exploded) with minimum, default and maximum under `components.parameters.limit`; `bbox`
is an array of 4 to 6 numbers.
"""

from __future__ import annotations

import functools
from typing import Any

from geo import aggregates
from geo.aggregate_params import DEFAULT_CELL, GROUP_BY, MAX_BUCKETS, MAX_CELL, MIN_CELL
from geo.collections import COLLECTIONS, Collection
from geo.crs import URIS
from geo.params import DEFAULT_LIMIT, FILTER_LANGS, ITEMS_PARAMETERS, MAX_LIMIT
from geo.queryables import Queryable
from sensorthings.model.rollups import FUNCTIONS, WIDTHS

GEOJSON = "application/geo+json"


def schema_of(queryable: Queryable) -> dict[str, Any]:
    """JSON Schema of one queryable or sortable (OGC API – Features Part 3)."""
    schema: dict[str, Any] = {"title": queryable.name}
    if queryable.description:
        schema["description"] = queryable.description
    if queryable.kind == "datetime":
        schema.update(type="string", format="date-time")
    elif queryable.kind == "geometry":
        schema.update(format="geometry-any")
    else:
        schema["type"] = queryable.kind
    return schema


def _query(name: str, description: str, schema: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "style": "form",
            "explode": False, "schema": schema, **extra}


PARAMETERS: dict[str, dict[str, Any]] = {
    "limit": _query("limit", f"Features per page: 1 to {MAX_LIMIT} (larger values are clamped).",
                    {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT}),
    "offset": _query("offset", "Features to skip (for clients that page by offset; `next` links are faster).",
                     {"type": "integer", "minimum": 0, "default": 0}),
    "next": _query("next", "Opaque position of the next page; follow the `next` link as it is.", {"type": "string"}),
    "bbox": _query("bbox", "Only features whose geometry intersects this box: minx,miny,maxx,maxy (or 6 numbers "
                   "with heights), in CRS84 unless bbox-crs says otherwise.",
                   {"type": "array", "minItems": 4, "maxItems": 6, "items": {"type": "number"}}),
    "bbox-crs": _query("bbox-crs", "CRS of bbox.", {"type": "string", "format": "uri", "enum": list(URIS)}),
    "datetime": _query("datetime", "An RFC 3339 instant or interval (`a/b`, `../b`, `a/..`).", {"type": "string"}),
    "crs": _query("crs", "CRS of the returned geometries (the Content-Crs header names it).",
                  {"type": "string", "format": "uri", "enum": list(URIS)}),
    "filter": _query("filter", "A CQL2 filter over the collection's queryables.", {"type": "string"}),
    "filter-lang": _query("filter-lang", "Language of filter.",
                          {"type": "string", "enum": list(FILTER_LANGS), "default": "cql2-text"}),
    "filter-crs": _query("filter-crs", "CRS of geometries in filter (CRS84 only).",
                         {"type": "string", "format": "uri", "enum": [URIS[0]]}),
    "f": _query("f", "Encoding of the response (instead of an Accept header).",
                {"type": "string", "enum": ["json", "html"]}),
    "f-items": _query("f", "Encoding of the response (instead of an Accept header).",
                      {"type": "string", "enum": ["json", "geojson", "html", "csv"]}),
    "featureId": {"name": "featureId", "in": "path", "required": True, "description": "The SensorThings @iot.id.",
                  "schema": {"type": "integer"}},
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/parameters/{name}"}


def _ok(description: str, media_types: tuple[str, ...], schema_ref: str = "") -> dict[str, Any]:
    schema = {"$ref": f"#/components/schemas/{schema_ref}"} if schema_ref else {"type": "object"}
    return {"200": {"description": description, "content": {m: {"schema": schema} for m in media_types}},
            "400": {"$ref": "#/components/responses/BadRequest"},
            "404": {"$ref": "#/components/responses/NotFound"}}


def _get(summary: str, operation_id: str, parameters: list[dict[str, Any]], responses: dict[str, Any],
         tag: str = "Capabilities") -> dict[str, Any]:
    return {"get": {"summary": summary, "operationId": operation_id, "tags": [tag], "parameters": parameters,
                    "responses": responses}}


def _collection_paths(collection: Collection) -> dict[str, Any]:
    base = f"/collections/{collection.id}"
    names = [p.name for p in collection.properties]
    sortables = list(collection.sortables)
    equality = [_query(name, f"Only features whose {name} equals this value.", schema_of(q))
                for name, q in collection.queryables.items() if q.kind != "geometry" and name not in ITEMS_PARAMETERS]
    items_parameters = [
        _ref("limit"), _ref("offset"), _ref("next"), _ref("bbox"), _ref("bbox-crs"), _ref("datetime"), _ref("crs"),
        _ref("filter"), _ref("filter-lang"), _ref("filter-crs"), _ref("f-items"),
        _query("properties", "Only these properties.", {"type": "array", "items": {"type": "string", "enum": names}}),
        _query("sortby", "Sort keys: property names, each with an optional + (ascending) or - (descending).",
               {"type": "array", "items": {"type": "string",
                                           "pattern": f"^[+-]?({'|'.join(sortables)})$"}}),
        *equality,
    ]
    tag = collection.title
    return {
        base: _get(f"About {collection.title}", f"describe_{collection.id}", [_ref("f")],
                   _ok("the collection", ("application/json", "text/html")), tag),
        f"{base}/items": _get(f"{collection.title}: {collection.description}", f"items_{collection.id}",
                              items_parameters,
                              _ok("a page of features", (GEOJSON, "text/html", "text/csv"), "FeatureCollection"), tag),
        f"{base}/items/{{featureId}}": _get(f"One of {collection.title}", f"item_{collection.id}",
                                            [_ref("featureId"), _ref("crs"), _ref("f")],
                                            _ok("the feature", (GEOJSON, "text/html"), "Feature"), tag),
        f"{base}/queryables": _get(f"What {collection.title} can be filtered by", f"queryables_{collection.id}",
                                   [_ref("f")], _ok("a JSON Schema", ("application/schema+json",)), tag),
        f"{base}/sortables": _get(f"What {collection.title} can be sorted by", f"sortables_{collection.id}",
                                  [_ref("f")], _ok("a JSON Schema", ("application/schema+json",)), tag),
    }


def _aggregates_paths() -> dict[str, Any]:
    """The aggregates collection (geo/aggregates.py): its selection and grouping parameters instead of
    filter, sortby and properties."""
    base = f"/collections/{aggregates.ID}"
    tag = aggregates.TITLE
    items_parameters = [
        _ref("limit"), _ref("offset"), _ref("next"), _ref("bbox"), _ref("bbox-crs"),
        _query("datetime", f"The buckets that intersect this RFC 3339 instant or interval (`a/b`, `../b`, `a/..`), "
               f"at most {MAX_BUCKETS} buckets of `width` long (of PT1M without it); an open end is closed at "
               f"that length; without datetime, the latest such span.", {"type": "string"}),
        _ref("crs"), _ref("f-items"),
        _query("cell", f"Group by the square cells of this size (metres) of the EPSG:3035 statistical grid "
               f"(the default, {DEFAULT_CELL} m).",
               {"type": "integer", "minimum": MIN_CELL, "maximum": MAX_CELL, "default": DEFAULT_CELL}),
        _query("groupBy", "Group by this property of the Things (e.g. district; a.b for a nested one) instead of "
               "grid cells.", {"type": "string", "pattern": f"^{GROUP_BY.pattern}$"}),
        _query("observedProperty", "Only rollups of this ObservedProperty (its name or @iot.id).", {"type": "string"}),
        _query("width", "Only rollups of this bucket width.", {"type": "string", "enum": list(WIDTHS)}),
        _query("function", "Only rollups with this function.", {"type": "string", "enum": list(FUNCTIONS)}),
        _query("timeZone", "Only rollups in this time zone (IANA name).", {"type": "string"}),
    ]
    feature_id = {"name": "featureId", "in": "path", "required": True, "schema": {"type": "string"},
                  "description": "A feature's id, as its items give it (it names the group, selection and bucket)."}
    return {
        base: _get(f"About {aggregates.TITLE}", f"describe_{aggregates.ID}", [_ref("f")],
                   _ok("the collection", ("application/json", "text/html")), tag),
        f"{base}/items": _get(f"{aggregates.TITLE}: {aggregates.DESCRIPTION}", f"items_{aggregates.ID}",
                              items_parameters,
                              _ok("a page of features", (GEOJSON, "text/html", "text/csv"), "FeatureCollection"), tag),
        f"{base}/items/{{featureId}}": _get(f"One of {aggregates.TITLE}", f"item_{aggregates.ID}",
                                            [feature_id, _ref("crs"), _ref("f")],
                                            _ok("the feature", (GEOJSON, "text/html"), "Feature"), tag),
        f"{base}/queryables": _get(f"What {aggregates.TITLE} can be selected by", f"queryables_{aggregates.ID}",
                                   [_ref("f")], _ok("a JSON Schema", ("application/schema+json",)), tag),
        f"{base}/sortables": _get(f"{aggregates.TITLE} have one order (bucket, then group): no sortables",
                                  f"sortables_{aggregates.ID}", [_ref("f")],
                                  _ok("a JSON Schema", ("application/schema+json",)), tag),
    }


@functools.lru_cache(maxsize=16)
def document(root: str) -> dict[str, Any]:
    """The OpenAPI document for a server URL; built once per URL (read-only for callers)."""
    paths: dict[str, Any] = {
        "/": _get("Landing page", "landing", [_ref("f")], _ok("links to the API", ("application/json", "text/html"))),
        "/conformance": _get("Conformance classes", "conformance", [_ref("f")],
                             _ok("the conformance classes", ("application/json", "text/html"))),
        "/api": _get("This API definition", "api", [_ref("f")],
                     _ok("the OpenAPI document", ("application/vnd.oai.openapi+json;version=3.0", "text/html"))),
        "/collections": _get("The feature collections", "collections", [_ref("f")],
                             _ok("the collections", ("application/json", "text/html"))),
    }
    for collection in COLLECTIONS.values():
        paths.update(_collection_paths(collection))
    paths.update(_aggregates_paths())
    error = {"type": "object", "required": ["code"],
             "properties": {"code": {"type": "string"}, "description": {"type": "string"}}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "CityStream OGC API – Features", "version": "1.0.0",
                 "description": "Live features over the city's SensorThings data (Parts 1, 2 and 3).",
                 "license": {"name": "Apache-2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0"}},
        "servers": [{"url": root}],
        "paths": paths,
        "components": {
            "parameters": PARAMETERS,
            "schemas": {
                "Feature": {"type": "object", "required": ["type", "geometry", "properties"],
                            "properties": {"type": {"type": "string", "enum": ["Feature"]},
                                           "id": {"oneOf": [{"type": "integer"}, {"type": "string"}]},
                                           "geometry": {"nullable": True},
                                           "properties": {"type": "object", "nullable": True}}},
                "FeatureCollection": {"type": "object", "required": ["type", "features"],
                                      "properties": {"type": {"type": "string", "enum": ["FeatureCollection"]},
                                                     "features": {"type": "array",
                                                                  "items": {"$ref": "#/components/schemas/Feature"}},
                                                     "links": {"type": "array", "items": {"type": "object"}},
                                                     "timeStamp": {"type": "string", "format": "date-time"},
                                                     "numberMatched": {"type": "integer", "minimum": 0},
                                                     "numberReturned": {"type": "integer", "minimum": 0}}},
                "Exception": error,
            },
            "responses": {
                "BadRequest": {"description": "an invalid or unknown parameter; the body says which",
                               "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Exception"}}}},
                "NotFound": {"description": "no such collection or feature",
                             "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Exception"}}}},
            },
        },
    }
