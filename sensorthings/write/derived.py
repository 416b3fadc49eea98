"""Data STA derives from what is written, shared by the REST writer and bulk ingest: the Datastream
summaries (phenomenon/result time extents, once per stream per request or batch), the FeaturesOfInterest
generated from a Thing's current Location, and the Observation partitions."""

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
from sensorthings.write.bodies import column_value

OBSERVATION = ENTITIES["Observation"]
LOCATION = ENTITIES["Location"]
FEATURE_OF_INTEREST = ENTITIES["FeatureOfInterest"]
HISTORICAL_LOCATION = ENTITIES["HistoricalLocation"]


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


def current_location_sql(thing_id: sql.Composable) -> sql.Composable:
    """The id of the current Location of the Thing `thing_id` - its newest link - for a LATERAL join."""
    return sql.SQL("SELECT tl.location_id FROM thing_locations tl WHERE tl.thing_id = {} "
                   "ORDER BY tl.location_id DESC LIMIT 1").format(thing_id)


CURRENT_LOCATION = current_location_sql(sql.SQL("d.thing_id"))
"""The current Location of the Thing of Datastream `d`."""


class StreamFacts(NamedTuple):
    """What writing an Observation needs of its stream (Datastream or MultiDatastream)."""

    result_types: Any
    """Its `result_types_field` value: an observationType, or one per component (a MultiDatastream)."""
    location_id: int | None
    """The current Location of its Thing, from which FeaturesOfInterest are generated."""
    generated_feature_id: int | None
    """The FeatureOfInterest already generated from that Location, if there is one yet."""


@functools.cache
def stream_facts_sql(stream: Relation) -> bytes:
    """(id, StreamFacts...) of the streams whose ids are the one parameter, KEY SHARE locked in id order (a
    concurrent DELETE waits for the writer's commit instead of breaking its foreign keys)."""
    target = stream.target_entity
    return sql.SQL(
        "SELECT d.id, to_jsonb(d.{types}), loc.location_id, f.id FROM {table} d"
        " LEFT JOIN LATERAL ({location}) loc ON true"
        " LEFT JOIN features_of_interest f ON f.generated_from_location_id = loc.location_id"
        " WHERE d.id = ANY(%s) ORDER BY d.id FOR KEY SHARE OF d").format(
        types=sql.Identifier(target.fields_by_name[target.result_types_field].column),
        table=sql.Identifier(target.table), location=CURRENT_LOCATION).as_bytes(None)


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
    query = "SELECT generated_from_location_id, id FROM features_of_interest WHERE generated_from_location_id = ANY(%s)"
    found = {int(loc): int(f) for loc, f in await (await conn.execute(query, (wanted,))).fetchall()}
    missing = [loc for loc in wanted if loc not in found]
    if not missing:
        return found
    targets, sources = _copied_columns(FEATURE_OF_INTEREST, LOCATION)
    await conn.execute(sql.SQL(
        "INSERT INTO {feature} ({targets}, generated_from_location_id) SELECT {sources}, id FROM {location} "
        "WHERE id = ANY(%(l)s) ORDER BY id ON CONFLICT (generated_from_location_id) DO NOTHING").format(
        feature=sql.Identifier(FEATURE_OF_INTEREST.table), location=sql.Identifier(LOCATION.table),
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


async def update_stream_summaries(conn: AsyncConnection[Any], touched: dict[StreamKey, ObservationTouch]) -> None:
    """Widen the phenomenon/result time extents and the observed area of each touched stream: one
    statement per stream table (always in the same order), rows locked in id order so that concurrent
    batches cannot deadlock here."""
    by_stream: dict[Relation, list[dict[str, Any]]] = {}
    for (stream, stream_id), t in sorted(touched.items(), key=lambda item: (item[0][0].name, item[0][1])):
        # One JSON parameter rather than six arrays: psycopg dumps arrays of timestamps element by element in
        # Python (~3x the CPU of this statement for a batch); orjson writes the rows at C speed.
        by_stream.setdefault(stream, []).extend(
            {"id": stream_id, "ps": t.start, "pe": t.end, "rs": t.result_start, "re": t.result_end, "fid": f}
            for f in (list[int | None](sorted(t.feature_ids)) or [None]))
    for stream, rows in by_stream.items():
        await conn.execute(_summary_update(stream.target_entity.table), (orjson.dumps(rows).decode(),))


@functools.cache
def _summary_update(table: str) -> bytes:
    return sql.SQL(
        "WITH u AS (SELECT v.id, min(ps) ps, max(pe) pe, min(rs) rs, max(re) re, ST_Collect(f.feature_geom) area"
        "       FROM json_to_recordset(%s::json) AS v(id bigint, ps timestamptz, pe timestamptz,"
        "                                             rs timestamptz, re timestamptz, fid bigint)"
        "       LEFT JOIN features_of_interest f ON f.id = v.fid GROUP BY v.id),"
        " locked AS (SELECT d.id FROM {table} d WHERE d.id IN (SELECT id FROM u) ORDER BY d.id"
        "            FOR NO KEY UPDATE)"
        " UPDATE {table} d SET"
        "  phenomenon_time_start = LEAST(d.phenomenon_time_start, u.ps),"
        "  phenomenon_time_end = GREATEST(d.phenomenon_time_end, u.pe),"
        "  result_time_start = LEAST(d.result_time_start, u.rs),"
        "  result_time_end = GREATEST(d.result_time_end, u.re),"
        "  observed_area = CASE WHEN u.area IS NULL THEN d.observed_area"
        "                  ELSE ST_ConvexHull(ST_Collect(d.observed_area, u.area)) END"
        " FROM u JOIN locked USING (id) WHERE d.id = u.id").format(table=sql.Identifier(table)).as_bytes(None)


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


async def create_partition(conn: AsyncConnection[Any], time: datetime) -> None:
    """Create the month partition for `time`. Call outside any transaction that touches observations."""
    await conn.execute("SELECT sta_ensure_observation_partition(%s)", (time,))


