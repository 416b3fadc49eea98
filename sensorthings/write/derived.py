"""Data STA derives from what is written, shared by the REST writer and bulk ingest: the Datastream
summaries (phenomenon/result time extents and observed area, widened once per stream per request or batch,
narrowed again by the REST writer where Observations left a stream), the FeaturesOfInterest generated from a
Thing's current Location, and the Observation partitions."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

import orjson
from psycopg import AsyncConnection, sql

from sensorthings.model.entities import ENTITIES, Entity, Relation
from sensorthings.model.kinds import GeoJson
from sensorthings.query.sql import SqlBuilder
from sensorthings.query.write_statements import (  # the Observation columns a stream summary is made of
    FEATURE_COLUMN,
    PHENOMENON_END,
    PHENOMENON_START,
    RESULT_TIME,
    RemovedFromStream,
)
from sensorthings.write.bodies import column_value

OBSERVATION = ENTITIES["Observation"]
LOCATION = ENTITIES["Location"]
FEATURE_OF_INTEREST = ENTITIES["FeatureOfInterest"]
HISTORICAL_LOCATION = ENTITIES["HistoricalLocation"]
_THING_LOCATIONS = ENTITIES["Thing"].relation("Locations")
_GENERATED_FROM = sql.Identifier(FEATURE_OF_INTEREST.generated_from_column)
_FEATURE_GEOMETRY = sql.Identifier(FEATURE_OF_INTEREST.fields_by_name["feature"].columns[1])


def _copied_columns(target: Entity, source: Entity) -> tuple[list[str], list[str]]:
    """Columns to copy when `target` is generated from `source` (a FeatureOfInterest from a Location):
    properties of the same name, and the GeoJSON geometry into the GeoJSON geometry."""
    source_geometry = next(f for f in source.fields if isinstance(f, GeoJson))
    targets: list[str] = []
    sources: list[str] = []
    for f in target.fields:
        match = source.field(f.name) or (source_geometry if isinstance(f, GeoJson) else None)
        if match is not None and type(match) is type(f):
            targets += f.columns
            sources += match.columns
    return targets, sources


@dataclass
class ObservationTouch:
    """What a request's new Observations add to one Datastream's summary."""

    start: datetime
    end: datetime
    result_start: datetime | None = None
    result_end: datetime | None = None
    feature_ids: set[int] = field(default_factory=set)


CURRENT_LOCATION_ID = sql.Identifier("current_location_id")
"""The column of current_location_sql."""


def current_location_sql(thing_id: sql.Composable) -> sql.Composable:
    """The id of the current Location of the Thing `thing_id` - its newest link - for a LATERAL join,
    as CURRENT_LOCATION_ID."""
    return sql.SQL("SELECT tl.{location} AS {current} FROM {links} tl WHERE tl.{thing} = {id} "
                   "ORDER BY tl.{location} DESC LIMIT 1").format(
        location=sql.Identifier(_THING_LOCATIONS.link_target_column), current=CURRENT_LOCATION_ID,
        links=sql.Identifier(_THING_LOCATIONS.link_table), thing=sql.Identifier(_THING_LOCATIONS.link_source_column),
        id=thing_id)


class StreamFacts(NamedTuple):
    """What writing an Observation needs of its stream (Datastream or MultiDatastream)."""

    result_types: Any
    """Its `result_types_field` value: an observationType, or one per component (a MultiDatastream)."""
    location_id: int | None
    """The current Location of its Thing, from which FeaturesOfInterest are generated."""
    generated_feature_id: int | None
    """The FeatureOfInterest already generated from that Location, if there is one yet."""
    rollup_of: int | None = None
    """The source of a rollup Datastream (write/rollups.py): its Observations are computed, never written."""
    has_rollups: bool = False
    """Whether rollups are computed from this stream's Observations (each write updates them)."""


@functools.cache
def stream_facts_sql(stream: Relation) -> bytes:
    """(id, StreamFacts...) of the streams whose ids are the one parameter, KEY SHARE locked in id order (a
    concurrent DELETE waits for the writer's commit instead of breaking its foreign keys)."""
    target = stream.target_entity
    thing = sql.SQL("d.{}").format(sql.Identifier(target.relation("Thing").column))
    rollups = target.relations.get("Rollups")
    rollup_facts = sql.SQL("NULL::bigint, false") if rollups is None else sql.SQL(
        "d.{column}, EXISTS (SELECT 1 FROM {table} r WHERE r.{column} = d.id)").format(
        column=sql.Identifier(rollups.column), table=sql.Identifier(target.table))
    return sql.SQL(
        "SELECT d.id, to_jsonb(d.{types}), loc.{current}, f.id, {rollup_facts} FROM {table} d"
        " LEFT JOIN LATERAL ({location}) loc ON true"
        " LEFT JOIN {features} f ON f.{generated_from} = loc.{current}"
        " WHERE d.id = ANY(%s) ORDER BY d.id FOR KEY SHARE OF d").format(
        types=sql.Identifier(target.fields_by_name[target.result_types_field].column),
        table=sql.Identifier(target.table), location=current_location_sql(thing),
        features=sql.Identifier(FEATURE_OF_INTEREST.table), generated_from=_GENERATED_FROM,
        current=CURRENT_LOCATION_ID, rollup_facts=rollup_facts).as_bytes(None)


async def stream_facts(conn: AsyncConnection[Any], stream: Relation, stream_id: int) -> StreamFacts | None:
    cursor = await conn.execute(stream_facts_sql(stream), ([stream_id],))
    row = await cursor.fetchone()
    return None if row is None else StreamFacts(*row[1:])


async def generated_features(conn: AsyncConnection[Any], location_ids: Iterable[int]) -> dict[int, int]:
    """FeatureOfInterest id per Location id: the one generated from that Location while it stands
    unchanged, created now where there is none yet (concurrent creators agree through the unique key).
    Looked up first, so that the common case - it exists - writes nothing."""
    wanted = sorted(set(location_ids))
    if not wanted:
        return {}
    query = sql.SQL("SELECT {column}, id FROM {features} WHERE {column} = ANY(%s)").format(
        column=_GENERATED_FROM, features=sql.Identifier(FEATURE_OF_INTEREST.table))
    found = {int(loc): int(f) for loc, f in await (await conn.execute(query, (wanted,))).fetchall()}
    missing = [loc for loc in wanted if loc not in found]
    if not missing:
        return found
    targets, sources = _copied_columns(FEATURE_OF_INTEREST, LOCATION)
    await conn.execute(sql.SQL(
        "INSERT INTO {feature} ({targets}, {generated_from}) SELECT {sources}, id FROM {location} "
        "WHERE id = ANY(%(l)s) ORDER BY id ON CONFLICT ({generated_from}) DO NOTHING").format(
        feature=sql.Identifier(FEATURE_OF_INTEREST.table), location=sql.Identifier(LOCATION.table),
        generated_from=_GENERATED_FROM,
        targets=sql.SQL(", ").join(map(sql.Identifier, targets)),
        sources=sql.SQL(", ").join(map(sql.Identifier, sources))), {"l": missing})
    rows = await (await conn.execute(query, (missing,))).fetchall()
    return found | {int(loc): int(f) for loc, f in rows}


async def insert_row(conn: AsyncConnection[Any], entity: Entity, columns: dict[str, Any]) -> int:
    """INSERT one row of already validated column values (an inline FeatureOfInterest, say); returns its id.
    Ids of partitioned entities are allocated by the caller."""
    b = SqlBuilder("")
    names = list(columns)
    values = [column_value(entity, name, b.param(columns[name])) for name in names]
    statement = sql.SQL("INSERT INTO {} ({}) VALUES ({}) RETURNING id").format(
        sql.Identifier(entity.table), sql.SQL(", ").join(map(sql.Identifier, names)), sql.SQL(", ").join(values))
    row = await (await conn.execute(statement, b.params)).fetchone()
    assert row is not None  # RETURNING always yields the row
    return int(row[0])


StreamKey = tuple[Relation, int]
"""A stream of Observations: the Observation's relation to it (Datastream or MultiDatastream) and its id."""


def _stream_order(key: StreamKey) -> tuple[str, int]:
    """The order stream rows are locked in, by every writer: stream table by table, ids ascending."""
    return key[0].name, key[1]


def observed_area(collected: sql.Composable) -> sql.Composable:
    """A stream's observedArea from the geometries `collected` (ST_Collect): their convex hull, a two-point
    hull (a LineString) pointing one canonical way, so that the area does not depend on the order in which
    the geometries came (an area widened batch by batch equals one recomputed at once)."""
    return sql.SQL("(SELECT CASE WHEN ST_GeometryType(hull.g) = 'ST_LineString' THEN ST_Normalize(hull.g)"
                   " ELSE hull.g END FROM ST_ConvexHull({}) AS hull(g))").format(collected)


async def update_stream_summaries(conn: AsyncConnection[Any], touched: dict[StreamKey, ObservationTouch]) -> None:
    """Widen the phenomenon/result time extents and the observed area of each touched stream: one
    statement per stream table (always in the same order), rows locked in id order so that concurrent
    batches cannot deadlock here."""
    by_stream: dict[Relation, list[dict[str, Any]]] = {}
    for (stream, stream_id), t in sorted(touched.items(), key=lambda item: _stream_order(item[0])):
        # One JSON parameter rather than six arrays: psycopg dumps arrays of timestamps element by element in
        # Python (~3x the CPU of this statement for a batch); orjson writes the rows at C speed.
        by_stream.setdefault(stream, []).extend(
            {"id": stream_id, "ps": t.start, "pe": t.end, "rs": t.result_start, "re": t.result_end, "fid": f}
            for f in (list[int | None](sorted(t.feature_ids)) or [None]))
    for stream, rows in by_stream.items():
        await conn.execute(_summary_update(stream.target_entity), (orjson.dumps(rows).decode(),))


@functools.cache
def _summary_update(stream: Entity) -> bytes:
    phenomenon_start, phenomenon_end = stream.fields_by_name["phenomenonTime"].columns
    result_start, result_end = stream.fields_by_name["resultTime"].columns
    area = stream.fields_by_name["observedArea"].column
    return sql.SQL(
        "WITH u AS (SELECT v.id, min(ps) ps, max(pe) pe, min(rs) rs, max(re) re, ST_Collect(f.{geometry}) area"
        "       FROM json_to_recordset(%s::json) AS v(id bigint, ps timestamptz, pe timestamptz,"
        "                                             rs timestamptz, re timestamptz, fid bigint)"
        "       LEFT JOIN {features} f ON f.id = v.fid GROUP BY v.id),"
        " locked AS (SELECT d.id FROM {table} d WHERE d.id IN (SELECT id FROM u) ORDER BY d.id"
        "            FOR NO KEY UPDATE)"
        " UPDATE {table} d SET"
        "  {ps} = LEAST(d.{ps}, u.ps),"
        "  {pe} = GREATEST(d.{pe}, u.pe),"
        "  {rs} = LEAST(d.{rs}, u.rs),"
        "  {re} = GREATEST(d.{re}, u.re),"
        "  {area} = CASE WHEN u.area IS NULL THEN d.{area} ELSE {widened} END"
        " FROM u JOIN locked USING (id) WHERE d.id = u.id").format(
        table=sql.Identifier(stream.table), features=sql.Identifier(FEATURE_OF_INTEREST.table),
        geometry=_FEATURE_GEOMETRY, ps=sql.Identifier(phenomenon_start), pe=sql.Identifier(phenomenon_end),
        rs=sql.Identifier(result_start), re=sql.Identifier(result_end), area=sql.Identifier(area),
        widened=observed_area(sql.SQL("ST_Collect(d.{}, u.area)").format(sql.Identifier(area)))).as_bytes(None)


def add_touch(touched: dict[StreamKey, ObservationTouch], stream: StreamKey, start: datetime, end: datetime | None,
              result_time: datetime | None, feature_id: int | None) -> None:
    """Widen the summary of the stream of one new or changed Observation."""
    # (Runs per row of every ingest batch: plain comparisons, no min()/max() over generators.)
    end = end or start
    touch = touched.get(stream)
    if touch is None:
        touch = touched[stream] = ObservationTouch(start, end)
    else:
        if start < touch.start:
            touch.start = start
        if end > touch.end:
            touch.end = end
    if result_time is not None:
        if touch.result_start is None or result_time < touch.result_start:
            touch.result_start = result_time
        if touch.result_end is None or result_time > touch.result_end:
            touch.result_end = result_time
    if feature_id is not None:
        touch.feature_ids.add(feature_id)


def note_removed(removed: dict[StreamKey, ObservationTouch], items: Iterable[RemovedFromStream]) -> None:
    """Record what Observations that left their streams (deleted, or moved to other times, features or
    streams) had contributed to those streams' summaries, for narrow_stream_summaries."""
    for item in items:
        key = (item.stream, item.stream_id)
        add_touch(removed, key, item.start, item.end, item.result_start, None)
        add_touch(removed, key, item.start, item.end, item.result_end, None)
        removed[key].feature_ids.update(item.feature_ids)


async def lock_streams(conn: AsyncConnection[Any], streams: Iterable[StreamKey]) -> None:
    """Lock the rows of `streams` (FOR NO KEY UPDATE, as update_stream_summaries does, and in its order), so
    that the statements after this one see every Observation committed to them and no summary changes
    under them. Concurrent ingest batches keep writing: their summaries widen ours after our commit."""
    by_stream: dict[Relation, list[int]] = {}
    for stream, stream_id in sorted(set(streams), key=_stream_order):
        by_stream.setdefault(stream, []).append(stream_id)
    for stream, ids in by_stream.items():
        await conn.execute(sql.SQL("SELECT id FROM {} WHERE id = ANY(%s) ORDER BY id FOR NO KEY UPDATE").format(
            sql.Identifier(stream.target_entity.table)), (ids,))


async def narrow_stream_summaries(conn: AsyncConnection[Any], removed: dict[StreamKey, ObservationTouch],
                                  reshaped: Iterable[StreamKey] = ()) -> None:
    """Make the summaries of the streams Observations left (`removed`: what they had contributed) exact
    again, and recompute those of `reshaped` streams (a FeatureOfInterest of theirs changed its geometry),
    per stream table: one statement finds what is at stake, at most two more make it exact. Call after
    lock_streams and update_stream_summaries in the same transaction.

    A stream is only read where a removed Observation may have held one of its bounds: its earliest
    phenomenon time alone is found again in the stream's (stream, phenomenon time) index; its latest
    phenomenon time, its result times, or the geometry of a FeatureOfInterest that no other Observation of
    the stream has and that is not inside the observed area take one pass over the stream's Observations."""
    rows: dict[StreamKey, dict[str, Any]] = {}
    for key, t in removed.items():
        rows[key] = {"id": key[1], "ps": t.start, "pe": t.end, "rs": t.result_start, "re": t.result_end,
                     "fids": sorted(t.feature_ids), "force": False}
    for key in reshaped:
        rows.setdefault(key, {"id": key[1], "fids": []})["force"] = True
    by_stream: dict[Relation, list[dict[str, Any]]] = {}
    for key in sorted(rows, key=_stream_order):
        by_stream.setdefault(key[0], []).append(rows[key])
    if not by_stream:
        return
    # Without JIT: the planner's guess for the JSON rows (100) makes these index probes look costly enough to
    # compile, which took 25 ms (and 3.6 s in one statement) for work of well under a millisecond.
    jit = await (await conn.execute(_JIT_OFF)).fetchone()
    assert jit is not None  # one row
    for stream, stream_rows in by_stream.items():
        statements = _summary_narrowing(stream)
        stakes = await (await conn.execute(statements.stakes, (orjson.dumps(stream_rows).decode(),))).fetchall()
        earliest = [int(i) for i, start, whole in stakes if start and not whole]
        recount = [int(i) for i, _, whole in stakes if whole]
        if earliest:
            await conn.execute(statements.earliest, (earliest,))
        if recount:
            await conn.execute(statements.recount, (recount,))
    await conn.execute(_JIT_AGAIN, (jit[0],))


_JIT_OFF = b"SELECT current_setting('jit'), set_config('jit', 'off', true)"
_JIT_AGAIN = b"SELECT set_config('jit', %s, true)"


class _Narrowing(NamedTuple):
    stakes: bytes
    """(id, earliest time at stake, anything else at stake) of the streams of the JSON rows."""
    earliest: bytes
    """The earliest phenomenon time of the streams whose ids are the parameter, from the index."""
    recount: bytes
    """The whole summary of the streams whose ids are the parameter, from all their Observations."""


@functools.cache
def _summary_narrowing(relation: Relation) -> _Narrowing:
    stream = relation.target_entity
    phenomenon_start, phenomenon_end = stream.fields_by_name["phenomenonTime"].columns
    result_start, result_end = stream.fields_by_name["resultTime"].columns
    names = dict(
        table=sql.Identifier(stream.table), observation_table=sql.Identifier(OBSERVATION.table),
        features=sql.Identifier(FEATURE_OF_INTEREST.table), geometry=_FEATURE_GEOMETRY,
        stream=sql.Identifier(relation.column), feature=sql.Identifier(FEATURE_COLUMN),
        ops=sql.Identifier(PHENOMENON_START), ope=sql.Identifier(PHENOMENON_END), ort=sql.Identifier(RESULT_TIME),
        ps=sql.Identifier(phenomenon_start), pe=sql.Identifier(phenomenon_end),
        rs=sql.Identifier(result_start), re=sql.Identifier(result_end),
        area=sql.Identifier(stream.fields_by_name["observedArea"].column),
        hull=observed_area(sql.SQL("ST_Collect(f.{})").format(_FEATURE_GEOMETRY)))
    # What the removed Observations may have been the bounds of. A removed FeatureOfInterest moves the area
    # only when no Observation of the stream keeps it and it is not strictly inside the area (an area that is
    # a point has no inside: its one vertex is its interior).
    stakes = sql.SQL(
        "SELECT d.id,"
        " r.ps IS NOT NULL AND NOT coalesce(d.{ps} < r.ps, false),"
        " coalesce(r.force, false)"
        " OR r.pe IS NOT NULL AND NOT coalesce(d.{pe} > r.pe, false)"
        " OR r.rs IS NOT NULL AND NOT coalesce(d.{rs} < r.rs AND d.{re} > r.re, false)"
        " OR EXISTS (SELECT 1 FROM unnest(r.fids) AS gone(fid) LEFT JOIN {features} f ON f.id = gone.fid"
        "            WHERE NOT coalesce(f.id IS NOT NULL AND (f.{geometry} IS NULL OR ST_Dimension(d.{area}) > 0"
        "                                 AND ST_ContainsProperly(d.{area}, f.{geometry})), false)"
        "              AND NOT EXISTS (SELECT 1 FROM {observation_table} o"
        "                              WHERE o.{stream} = d.id AND o.{feature} = gone.fid))"
        " FROM json_to_recordset(%s::json) AS r(id bigint, ps timestamptz, pe timestamptz, rs timestamptz,"
        "                                       re timestamptz, fids bigint[], force boolean)"
        " JOIN {table} d ON d.id = r.id ORDER BY d.id").format(**names)
    # A stream left without Observations has no summary at all, as a new one.
    earliest = sql.SQL(
        "UPDATE {table} d SET {ps} = x.start,"
        "  {pe} = CASE WHEN x.start IS NOT NULL THEN d.{pe} END, {rs} = CASE WHEN x.start IS NOT NULL THEN d.{rs} END,"
        "  {re} = CASE WHEN x.start IS NOT NULL THEN d.{re} END,"
        "  {area} = CASE WHEN x.start IS NOT NULL THEN d.{area} END"
        " FROM (SELECT s.id, (SELECT o.{ops} FROM {observation_table} o WHERE o.{stream} = s.id"
        "                     ORDER BY o.{ops} LIMIT 1) AS start FROM unnest(%s::bigint[]) AS s(id)) x"
        " WHERE d.id = x.id").format(**names)
    recount = sql.SQL(
        "UPDATE {table} d SET {ps} = a.ps, {pe} = a.pe, {rs} = a.rs, {re} = a.re, {area} = a.area"
        " FROM unnest(%s::bigint[]) AS s(id) CROSS JOIN LATERAL ("
        "   SELECT min(g.ps) ps, max(g.pe) pe, min(g.rs) rs, max(g.re) re, {hull} area"
        "   FROM (SELECT o.{feature} fid, min(o.{ops}) ps, max(coalesce(o.{ope}, o.{ops})) pe, min(o.{ort}) rs,"
        "                max(o.{ort}) re"
        "         FROM {observation_table} o WHERE o.{stream} = s.id GROUP BY o.{feature}) g"
        "   LEFT JOIN {features} f ON f.id = g.fid) a"
        " WHERE d.id = s.id").format(**names)
    return _Narrowing(stakes.as_bytes(None), earliest.as_bytes(None), recount.as_bytes(None))


async def create_partition(conn: AsyncConnection[Any], time: datetime) -> None:
    """Create the month partition for `time`. Call outside any transaction that touches observations."""
    await conn.execute("SELECT sta_ensure_observation_partition(%s)", (time,))


