"""The SQL of the `aggregates` collection (geo/aggregates.py): one parameterised statement per page.

Rollup state comes from `rollup_buckets` (sensorthings/write/rollups.py keeps it: count, exact sum,
extremes, first/last per bucket), but only ever reached through what the principal may read: the rollup
Datastreams are taken from `visibility.source(Datastream, view)`, and a bucket counts only while its
Observation is in `visibility.source(Observation, view)`. So restricted streams, and whatever rule
visibility.py applies to Datastreams or Observations (a publication delay, a minimum aggregation), reach
the aggregates without a rule of their own here.
"""

from __future__ import annotations

from psycopg import sql

from geo.aggregate_params import AggregatesRequest
from geo.crs import Crs
from sensorthings.model.entities import ENTITIES
from sensorthings.query import visibility
from sensorthings.query.sql import SqlBuilder
from sensorthings.query.visibility import View
from sensorthings.write.derived import CURRENT_LOCATION_ID, current_location_sql

DATASTREAM, OBSERVATION, THING = ENTITIES["Datastream"], ENTITIES["Observation"], ENTITIES["Thing"]
LOCATION, OBSERVED_PROPERTY = ENTITIES["Location"], ENTITIES["ObservedProperty"]
BUCKETS = sql.Identifier("rollup_buckets")
"""The running state of each rollup bucket: the writer's table (migration 0012), not an entity of the model."""
GRID_SRID = 3035
"""ETRS89-LAEA Europe: equal-area, the CRS of the European statistical grid (INSPIRE, Eurostat GEOSTAT)."""
LONGEST_BUCKET = "32 days"
"""Longer than any bucket (P1M: 31 days and a DST hour): lets the index bound bucket starts from below."""


def _names() -> dict[str, sql.Composable]:
    """The model's tables and columns the statements name (they spell none themselves)."""
    fields = DATASTREAM.fields_by_name
    phenomenon = fields["phenomenonTime"].columns
    location = LOCATION.fields_by_name["location"]
    return {
        "of": sql.Identifier(DATASTREAM.relation("RollupOf").column),
        "rollup": sql.Identifier(fields["rollup"].column),
        "uom": sql.Identifier(fields["unitOfMeasurement"].column),
        "op_key": sql.Identifier(DATASTREAM.relation("ObservedProperty").column),
        "thing_key": sql.Identifier(DATASTREAM.relation("Thing").column),
        "ds_start": sql.Identifier(phenomenon[0]), "ds_end": sql.Identifier(phenomenon[1]),
        "obs_start": sql.Identifier(OBSERVATION.fields_by_name["phenomenonTime"].columns[0]),
        "op_name": sql.Identifier(OBSERVED_PROPERTY.fields_by_name["name"].column),
        "op_definition": sql.Identifier(OBSERVED_PROPERTY.fields_by_name["definition"].column),
        "thing_properties": sql.Identifier(THING.fields_by_name["properties"].column),
        "geom": sql.Identifier(getattr(location, "geometry_column", "") or location.column),
        "current": CURRENT_LOCATION_ID, "buckets": BUCKETS, "grid": sql.Literal(GRID_SRID),
        "longest": sql.Literal(LONGEST_BUCKET),
    }


_NAMES = _names()


def _sql(text: str, **parts: sql.Composable) -> sql.Composable:
    return sql.SQL(text).format(**_NAMES, **parts)


def _located(thing_id: sql.Composable, view: View) -> sql.Composable:
    """LEFT JOINs of the current Location (`loc`) of the Thing `thing_id`."""
    return _sql("LEFT JOIN LATERAL ({link}) cur ON true LEFT JOIN {loc_table} loc ON loc.id = cur.{current}",
                link=current_location_sql(thing_id), loc_table=visibility.source(LOCATION, view))


def _rollups(request: AggregatesRequest, view: View, b: SqlBuilder) -> sql.Composable:
    """The visible rollup Datastreams the request selects, one per source and definition (a duplicate rollup
    of the same source would count its Observations twice), with their ObservedProperty's definition (`op`):
    what they observe, however many ObservedProperty entities name it."""
    op_table = visibility.source(OBSERVED_PROPERTY, view)
    selection: list[sql.Composable] = [sql.SQL("true")]
    if request.observed_property is not None:
        column = "id" if isinstance(request.observed_property, int) else OBSERVED_PROPERTY.fields_by_name["name"].column
        selection.append(_sql("x.op IN (SELECT q.{op_definition} FROM {op_table} q WHERE q.{column} = {value})",
                              op_table=op_table, column=sql.Identifier(column),
                              value=b.param(request.observed_property)))
    for name, value in (("w", request.width), ("fn", request.function), ("z", request.time_zone)):
        if value is not None:
            selection.append(sql.SQL("x.{} = {}").format(sql.Identifier(name), b.param(value)))
    if request.only is not None:
        selection.append(sql.SQL("x.op = {} AND x.unit = {}").format(b.param(request.only.definition),
                                                                     b.param(request.only.unit)))
    return _sql(
        "SELECT DISTINCT ON (x.source, x.w, x.fn, x.z) x.* FROM ("
        "SELECT d.id, d.{of} AS source, p.{op_definition} AS op, d.{thing_key} AS thing, "
        "coalesce(d.{uom} ->> 'symbol', '') AS unit, d.{rollup} ->> 'width' AS w, d.{rollup} ->> 'function' AS fn, "
        "coalesce(d.{rollup} ->> 'timeZone', 'UTC') AS z "
        "FROM {ds_table} d JOIN {op_table} p ON p.id = d.{op_key} WHERE d.{of} IS NOT NULL) x "
        "WHERE {selection} ORDER BY x.source, x.w, x.fn, x.z, x.id",
        ds_table=visibility.source(DATASTREAM, view), op_table=op_table, selection=sql.SQL(" AND ").join(selection))


def _groups(request: AggregatesRequest, view: View, b: SqlBuilder) -> tuple[sql.Composable, sql.Composable]:
    """(each rollup with its group `key`, each group's `geom`): a grid cell (by the centroid of its Thing's
    Location, in the grid's CRS) or a Thing property's value (the convex hull of the Locations of every
    Thing with that value)."""
    grouping = request.grouping
    if grouping.cell is not None:
        size = b.param(grouping.cell)
        keyed = _sql(
            "SELECT r.*, 'CRS3035RES' || {size}::int || 'mN' || c.y0 || 'E' || c.x0 AS key, c.x0, c.y0 FROM r "
            "{located} CROSS JOIN LATERAL (SELECT ST_Transform(ST_Centroid(loc.{geom}), {grid}) AS p) pt "
            "CROSS JOIN LATERAL (SELECT (floor(ST_X(pt.p) / {size}::int) * {size}::int)::bigint AS x0, "
            "(floor(ST_Y(pt.p) / {size}::int) * {size}::int)::bigint AS y0) c WHERE c.x0 IS NOT NULL",
            size=size, located=_located(sql.SQL("r.thing"), view))
        shapes = _sql(
            "SELECT DISTINCT ON (g.key) g.key, ST_Transform(ST_MakeEnvelope(g.x0, g.y0, g.x0 + {size}::int, "
            "g.y0 + {size}::int, {grid}), 4326) AS geom FROM g", size=size)
        return keyed, shapes
    path = b.param(list(grouping.path))
    value = _sql("t.{thing_properties} #>> {path}::text[]", path=path)
    things = visibility.source(THING, view)
    keyed = _sql("SELECT r.*, k.key FROM r CROSS JOIN LATERAL (SELECT {value} AS key FROM {thing_table} t "
                 "WHERE t.id = r.thing) k WHERE k.key IS NOT NULL", value=value, thing_table=things)
    shapes = _sql("SELECT {value} AS key, ST_ConvexHull(ST_Collect(loc.{geom})) AS geom FROM {thing_table} t {located} "
                  "WHERE {value} IN (SELECT g.key FROM g) GROUP BY 1",
                  value=value, thing_table=things, located=_located(sql.SQL("t.id"), view))
    return keyed, shapes


def _visible_bucket(view: View) -> sql.Composable:
    """Bucket `k` has an Observation the principal may read (the rollup's Observation of that bucket)."""
    return _sql("EXISTS (SELECT 1 FROM {obs_table} o WHERE o.id = k.observation AND o.{obs_start} = k.bucket_start)",
                obs_table=visibility.source(OBSERVATION, view))


def _window(request: AggregatesRequest, view: View, b: SqlBuilder) -> sql.Composable:
    """One row (ws, we): the request's time window, an open end closed at its longest span, no window at all
    ending with the newest visible bucket of the selected rollups."""
    start, end, span = b.param(request.start), b.param(request.end), b.param(request.span)
    newest = _sql("(SELECT max(n.be) FROM g CROSS JOIN LATERAL (SELECT k.bucket_end AS be FROM {buckets} k "
                  "WHERE k.rollup_id = g.id AND {visible} ORDER BY k.bucket_start DESC LIMIT 1) n)",
                  visible=_visible_bucket(view))
    return _sql("SELECT coalesce({start}::timestamptz, x.e - {span}::interval) AS ws, x.e AS we FROM "
                "(SELECT coalesce({end}::timestamptz, {start}::timestamptz + {span}::interval, {newest}) AS e) x",
                start=start, end=end, span=span, newest=newest)


ORDER = ("bs", "op", "unit", "w", "fn", "z", "key")
"""The collection's one order (and the keyset's): bucket, ObservedProperty, unit, width, function, zone, group."""


def items_sql(request: AggregatesRequest, view: View, b: SqlBuilder, *, csv: bool = False) -> sql.Composable:
    """Up to limit + 1 features (one more says there is a next page): their ORDER keys, then bucket end, the
    ObservedProperty (the first with the definition: name, id), the summed state (n, s, integral, lo, hi, fv,
    lv), how many Datastreams, and the geometry (GeoJSON, or WKT for CSV) in the request's CRS."""
    keyed, shapes = _groups(request, view, b)
    bucket_conditions: list[sql.Composable] = []
    outer: list[sql.Composable] = []
    if request.after is not None:
        after = request.after
        bucket_conditions.append(sql.SQL("k.bucket_start >= {}").format(b.param(after.bucket_start)))
        outer.append(sql.SQL("(a.bs, a.op, a.unit, a.w, a.fn, a.z, a.key) > "
                             "({}::timestamptz, {}::text, {}::text, {}::text, {}::text, {}::text, {}::text)").format(
            *(b.param(v) for v in (after.bucket_start, after.definition, after.unit, after.width,
                                   after.function, after.time_zone, after.group))))
    if request.only is not None:
        bucket_conditions.append(sql.SQL("k.bucket_start = {} AND g.key = {}").format(
            b.param(request.only.bucket_start), b.param(request.only.group)))
    if request.bbox is not None:
        envelopes = [_envelope(request, e, b) for e in request.bbox.envelopes]
        outer.append(sql.SQL("(s.geom IS NULL OR {})").format(
            sql.SQL(" OR ").join(sql.SQL("ST_Intersects(s.geom, {})").format(e) for e in envelopes)))
    geometry = _geometry_text(request.crs, csv)
    offset = sql.SQL(" OFFSET {}").format(b.param(request.offset)) if request.offset else sql.SQL("")
    return _sql(
        "WITH r AS ({rollups}), g AS ({keyed}), win AS ({window}), "
        "a AS (SELECT k.bucket_start AS bs, g.op, g.unit, g.w, g.fn, g.z, g.key, k.bucket_end AS be, "
        "sum(k.count) AS n, sum(k.sum) AS s, bool_and(k.integral) AS i, min(k.min) AS lo, max(k.max) AS hi, "
        "(array_agg(k.first_value ORDER BY k.first_time, k.first_id))[1] AS fv, "
        "(array_agg(k.last_value ORDER BY k.last_time DESC, k.last_id DESC))[1] AS lv, count(*) AS streams, "
        "bool_and(k.final) AS fin "
        "FROM g CROSS JOIN win JOIN {buckets} k ON k.rollup_id = g.id "
        "WHERE k.bucket_start <= win.we AND k.bucket_end > win.ws "
        "AND k.bucket_start > win.ws - {longest}::interval AND k.count > 0 AND {visible} {bucket_conditions} "
        "GROUP BY k.bucket_start, g.op, g.unit, g.w, g.fn, g.z, g.key, k.bucket_end), "
        "s AS ({shapes}) "
        "SELECT a.bs, a.op, a.unit, a.w, a.fn, a.z, a.key, a.be, p.{op_name}, p.id, a.n, a.s, a.i, a.lo, a.hi, "
        "a.fv, a.lv, a.streams, a.fin, {geometry} "
        "FROM a LEFT JOIN s ON s.key = a.key CROSS JOIN LATERAL (SELECT q.id, q.{op_name} FROM {op_table} q "
        "WHERE q.{op_definition} = a.op ORDER BY q.id LIMIT 1) p {where} "
        "ORDER BY a.bs, a.op, a.unit, a.w, a.fn, a.z, a.key LIMIT {limit}{offset}",
        rollups=_rollups(request, view, b), keyed=keyed, window=_window(request, view, b),
        visible=_visible_bucket(view),
        bucket_conditions=sql.SQL("").join(sql.SQL(" AND {}").format(c) for c in bucket_conditions),
        shapes=shapes, geometry=geometry, op_table=visibility.source(OBSERVED_PROPERTY, view),
        where=sql.SQL("WHERE {}").format(sql.SQL(" AND ").join(outer)) if outer else sql.SQL(""),
        limit=b.param(request.limit + 1), offset=offset)


def _envelope(request: AggregatesRequest, envelope: tuple[float, float, float, float],
              b: SqlBuilder) -> sql.Composable:
    assert request.bbox is not None
    if request.bbox.crs84 is not None:  # given in a projected CRS: transformed while parsing
        return sql.SQL("ST_GeomFromWKB({}, 4326)").format(b.param(request.bbox.crs84))
    return sql.SQL("ST_MakeEnvelope({}, 4326)").format(sql.SQL(", ").join(b.param(v) for v in envelope))


def _geometry_text(crs: Crs, csv: bool) -> sql.Composable:
    if csv:
        return sql.SQL("ST_AsText({}, {})").format(crs.output(sql.SQL("s.geom")), sql.Literal(crs.decimals))
    return sql.SQL("({})::text").format(crs.geojson(sql.SQL("s.geom")))


def extent_sql(view: View) -> sql.Composable:
    """xmin, ymin, xmax, ymax (CRS84) of the visible rollups' Things, the first and last time of their
    Datastreams (phenomenonTime, the summary each batch keeps); NULLs when there are none."""
    return _sql(
        "SELECT ST_XMin(x.geom), ST_YMin(x.geom), ST_XMax(x.geom), ST_YMax(x.geom), x.t0, x.t1 FROM "
        "(SELECT ST_Extent(loc.{geom}) AS geom, min(d.{ds_start}) AS t0, max(coalesce(d.{ds_end}, d.{ds_start})) AS t1 "
        "FROM {ds_table} d {located} WHERE d.{of} IS NOT NULL) x",
        ds_table=visibility.source(DATASTREAM, view), located=_located(_sql("d.{thing_key}"), view))
