"""One parameterised SQL statement per request: items pages, one feature, counts and extents.

PostgreSQL renders each feature's GeoJSON (geometry in the requested CRS included); Python only joins the
rendered features into the FeatureCollection. Paging is keyset (`next` tokens carry the last row's sort
keys) or OFFSET when a client asks for it (OWSLib and ArcGIS Pro do).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from psycopg import sql

from geo.collections import Collection, Property
from geo.crs import Crs
from geo.params import Bbox, ItemsRequest
from geo.queryables import Queryable
from sensorthings.query.sql import SqlBuilder, id_predicate

FilterCompiler = Callable[[Any, dict[str, Queryable], Callable[[Any], sql.Composable]], sql.Composable]
"""(parsed filter, queryables, param) -> a boolean SQL expression: geo.filtering.compile_tree."""

SOURCE = sql.Identifier("c")


def _typed(b: SqlBuilder, value: Any, queryable: Queryable) -> sql.Composable:
    return sql.SQL("CAST({} AS {})").format(b.param(value), queryable.sql_type)


def sta_link(collection: Collection, b: SqlBuilder) -> sql.Composable:
    """`<service root>/Things(7)`, built in SQL from the service root bind parameter."""
    return sql.SQL("{} || {} || c.id || ')'").format(b.base, sql.Literal(f"/{collection.entity.set_name}("))


def selected_properties(collection: Collection, names: list[str] | None) -> tuple[Property, ...]:
    if names is None:
        return collection.properties
    return tuple(p for p in collection.properties if p.name in names)


def feature_json(collection: Collection, request_crs: Crs, names: list[str] | None, b: SqlBuilder) -> sql.Composable:
    """One GeoJSON Feature as text; with `properties=` only those (and no flattened extras). Built with
    row_to_json, whose output has no blanks: ~13% fewer bytes than json_build_object's, and faster."""
    columns = [sql.SQL("{} AS {}").format(p.json_sql(), sql.Identifier(p.name))
               for p in selected_properties(collection, names)]
    if names is None:
        columns.append(sql.SQL("{} AS {}").format(sta_link(collection, b), sql.Identifier("sensorThingsLink")))
    properties: sql.Composable = sql.SQL("'{}'::json")  # `properties=` with no names
    if columns:
        properties = sql.SQL("(SELECT row_to_json(p) FROM (SELECT {}) AS p)").format(sql.SQL(", ").join(columns))
    if collection.flat_properties is not None and names is None:
        properties = sql.SQL("({}::jsonb || c._flat)::json").format(properties)
    return sql.SQL(
        "(SELECT row_to_json(f) FROM (SELECT 'Feature' AS type, c.id AS id, {} AS geometry, {} AS properties) AS f)"
        "::text").format(request_crs.geojson(sql.SQL("c._geom")), properties)


def _envelope(bbox: Bbox, envelope: tuple[float, float, float, float], b: SqlBuilder) -> sql.Composable:
    if bbox.crs84 is not None:  # given in a projected CRS: transformed while parsing (Crs.envelope_in_crs84)
        return sql.SQL("ST_GeomFromWKB({}, 4326)").format(b.param(bbox.crs84))
    corners = sql.SQL(", ").join(b.param(v) for v in envelope)
    return sql.SQL("ST_MakeEnvelope({}, 4326)").format(corners)


def conditions(collection: Collection, request: ItemsRequest, b: SqlBuilder,
               compile_filter: FilterCompiler) -> list[sql.Composable]:
    """The WHERE clause's parts, all ANDed: bbox, datetime, property equality, CQL2 filter."""
    found: list[sql.Composable] = []
    if request.bbox is not None:  # features without a geometry match (OGC API – Features /req/core/fc-bbox)
        hits = [sql.SQL("ST_Intersects(c._geom, {})").format(_envelope(request.bbox, e, b))
                for e in request.bbox.envelopes]
        found.append(sql.SQL("(c._geom IS NULL OR {})").format(sql.SQL(" OR ").join(hits)))
    if request.interval is not None and collection.time_start is not None:
        start, end = request.interval
        if collection.time_end is None:  # an instant that is never NULL: plain bounds, so partitions prune
            if start is not None:
                found.append(sql.SQL("c._t0 >= {}").format(b.param(start)))
            if end is not None:
                found.append(sql.SQL("c._t0 <= {}").format(b.param(end)))
        else:  # intervals that intersect; features without a time match
            overlap: list[sql.Composable] = [sql.SQL("true")]
            if end is not None:
                overlap.append(sql.SQL("c._t0 <= {}").format(b.param(end)))
            if start is not None:
                overlap.append(sql.SQL("coalesce(c._t1, c._t0) >= {}").format(b.param(start)))
            found.append(sql.SQL("(c._t0 IS NULL OR ({}))").format(sql.SQL(" AND ").join(overlap)))
    for queryable, value in request.equals:
        found.append(sql.SQL("{} = {}").format(queryable.expression, _typed(b, value, queryable)))
    if request.filter is not None:
        assert request.filter_tree is not None, "parse the filter first (geo.api parses it, off the event loop)"
        found.append(compile_filter(request.filter_tree, collection.queryables, b.param))
    return found


def _keyset(request: ItemsRequest, after: list[Any], b: SqlBuilder) -> sql.Composable:
    """Rows after the `next` token's position in ORDER BY keys NULLS LAST, then id (unique, ascending)."""
    predicate: sql.Composable = sql.SQL("c.id > {}").format(b.param(after[-1]))
    for key, value in reversed(list(zip(request.sortby, after[:-1], strict=True))):
        column = key.queryable.expression
        if value is None:  # NULLs come last: only more NULLs can follow
            predicate = sql.SQL("({} IS NULL AND {})").format(column, predicate)
            continue
        typed = _typed(b, value, key.queryable)
        beyond = sql.SQL("({} {} {} OR {} IS NULL)").format(
            column, sql.SQL("<" if key.descending else ">"), typed, column)
        predicate = sql.SQL("({} OR ({} = {} AND {}))").format(beyond, column, typed, predicate)
    return predicate


def _where(parts: list[sql.Composable]) -> sql.Composable:
    return sql.SQL("WHERE {}").format(sql.SQL(" AND ").join(parts)) if parts else sql.SQL("")


def items_sql(collection: Collection, request: ItemsRequest, b: SqlBuilder, compile_filter: FilterCompiler,
              *, csv: bool = False) -> sql.Composable:
    """Up to limit + 1 rows (the extra one says there is a next page): the feature (GeoJSON text, or the CSV
    cells), then the sort keys and the id for the next token."""
    parts = conditions(collection, request, b, compile_filter)
    if request.after is not None:
        parts.append(_keyset(request, request.after, b))
    keys = [k.queryable.expression for k in request.sortby]
    order: list[sql.Composable] = [
        sql.SQL("{} {} NULLS LAST").format(k.queryable.expression, sql.SQL("DESC" if k.descending else "ASC"))
        for k in request.sortby]
    order.append(sql.SQL("c.id"))
    if csv:
        output = csv_columns(collection, request)
    else:
        output = [feature_json(collection, request.crs, request.properties, b)]
    offset = sql.SQL(" OFFSET {}").format(b.param(request.offset)) if request.offset else sql.SQL("")
    return sql.SQL("SELECT {} FROM {} {} ORDER BY {} LIMIT {}{}").format(
        sql.SQL(", ").join([*output, *keys, sql.SQL("c.id")]), collection.source, _where(parts),
        sql.SQL(", ").join(order), b.param(request.limit + 1), offset)


def csv_columns(collection: Collection, request: ItemsRequest) -> list[sql.Composable]:
    """id, the properties as text, then the geometry as WKT in the requested CRS."""
    return [sql.SQL("c.id::text"), *(p.text_sql() for p in selected_properties(collection, request.properties)),
            sql.SQL("ST_AsText({}, {})").format(request.crs.output(sql.SQL("c._geom")),
                                                 sql.Literal(request.crs.decimals))]


def csv_header(collection: Collection, request: ItemsRequest) -> list[str]:
    return ["id", *(p.name for p in selected_properties(collection, request.properties)), "geometry"]


def count_sql(collection: Collection, request: ItemsRequest, b: SqlBuilder,
              compile_filter: FilterCompiler) -> sql.Composable:
    """numberMatched; without a filter on properties, over the collection's lean source (same rows)."""
    source = collection.source if request.filter is not None or request.equals else collection.lean_source
    return sql.SQL("SELECT count(*) FROM {} {}").format(source, _where(conditions(collection, request, b,
                                                                                     compile_filter)))


def feature_sql(collection: Collection, feature_id: int, request_crs: Crs, names: list[str] | None,
                b: SqlBuilder) -> sql.Composable:
    return sql.SQL("SELECT {} FROM {} WHERE {}").format(
        feature_json(collection, request_crs, names, b), collection.source,
        id_predicate(collection.entity, SOURCE, feature_id, b))


def extent_sql(collection: Collection) -> sql.Composable:
    """xmin, ymin, xmax, ymax (CRS84) and the first and last time; NULLs for an empty collection."""
    return sql.SQL("SELECT ST_XMin(x.geom), ST_YMin(x.geom), ST_XMax(x.geom), ST_YMax(x.geom), x.t0, x.t1 "
                   "FROM {}").format(collection.extent_source)
